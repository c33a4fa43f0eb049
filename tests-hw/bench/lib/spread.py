#!/usr/bin/env python3
"""Summary of interleaved benchmark rounds (used by the loopback benchmarks; not run alone).

Input file: one line per round and path, "<case> <path> <metric>=<value> ... cpu=<percent>".
For each case and metric it prints, per path: the median, the spread (min-max) over the rounds,
the median CPU use of the process under test and the metric per CPU-second of it (for rates
only). Then the ratio of each path to the baseline path, claimed only when the two spreads do
not overlap.

For each rate with a ">=" goal, and each metric named "*_rps" (a rate without a goal, such as
the answered rate of a fixed-rate load), "<rate>/cpu-s" (the rate per CPU-second of the process
under test, computed per round) is summarized the same way; its ratio is printed without a
target.

Usage: spread.py RESULTS BASELINE TARGETS
  BASELINE: the path the others are compared with (e.g. nginx)
  TARGETS:  "metric:op:value,..." goals for the ratio path/baseline, op ">=" or "<=" (e.g.
            "rps:>=:1.2,p99_ms:<=:1.0"); a metric with "<=" is lower-is-better.
"""
import statistics
import sys

path, baseline, targets = sys.argv[1:4]
goals = {}
for t in filter(None, targets.split(",")):
    metric, op, value = t.split(":")
    goals[metric] = (op, float(value))

rows = []
for line in open(path):
    parts = line.split()
    if len(parts) < 3:
        continue
    fields = dict(p.split("=", 1) for p in parts[2:])
    values = {k: float(v) for k, v in fields.items()}
    # The cost of each rate: per CPU-second of the process under test, per round (a loaded
    # machine moves the rate much more than the cost).
    if values.get("cpu", 0) > 0:
        rates = [k for k, (op, _) in goals.items() if op == ">="]
        rates += [k for k in values if k.endswith("_rps") and k not in goals]
        for k in rates:
            if k in values:
                values[k + "/cpu-s"] = values[k] / (values["cpu"] / 100)
    rows.append((parts[0], parts[1], values))

cases = list(dict.fromkeys(r[0] for r in rows))
for case in cases:
    paths = list(dict.fromkeys(r[1] for r in rows if r[0] == case))
    metrics = [m for m in dict.fromkeys(k for r in rows if r[0] == case for k in r[2]) if m != "cpu"]
    print(f"case {case}")
    print(f"  {'metric':<12} {'path':<8} {'median':>10} {'spread (min-max)':>22} {'CPU%':>5}")
    stats = {}
    for m in metrics:
        for p in paths:
            vals = [r[2][m] for r in rows if r[0] == case and r[1] == p and m in r[2]]
            cpus = [r[2]["cpu"] for r in rows if r[0] == case and r[1] == p and "cpu" in r[2]]
            if not vals:
                continue
            med = statistics.median(vals)
            stats[(m, p)] = (med, min(vals), max(vals))
            cpu = statistics.median(cpus) if cpus else 0.0
            cpu_s = f"{cpu:>5.0f}" if cpus and cpu > 0 else f"{'-':>5}"
            print(f"  {m:<12} {p:<8} {med:>10.2f} {min(vals):>10.2f}-{max(vals):<11.2f} {cpu_s}")
    for m in metrics:
        if (m, baseline) not in stats:
            continue
        b = stats[(m, baseline)]
        for p in paths:
            if p == baseline or (m, p) not in stats or p == "direct":
                continue
            if m not in goals and not m.endswith("/cpu-s"):
                continue
            s = stats[(m, p)]
            ratio = s[0] / b[0] if b[0] else float("inf")
            overlap = not (s[1] > b[2] or s[2] < b[1])
            verdict = ""
            if m in goals:
                op, want = goals[m]
                ok = ratio >= want if op == ">=" else ratio <= want
                verdict = f" (target {op} {want:.2f}: {'ok' if ok else 'MISSED'})"
            note = " spreads overlap: not a claim" if overlap else " spreads apart"
            print(f"  {p}/{baseline} {m}: {ratio:.2f}{verdict};{note}")
