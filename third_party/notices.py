#!/usr/bin/env python3
"""The license notices of every crate built into gatelet's binaries: THIRD-PARTY-LICENSES.txt.

gatelet's binaries are static: each one carries the code of about a hundred crates, and the
licenses of most of them (MIT, BSD, ISC, CDLA-Permissive) ask that their text go wherever the
binary goes. This script writes that text, one file for every way gatelet ships (the arm64 and
Raspberry Pi image, the container, the Buildroot and OpenWrt packages).

Which crates: those `cargo tree --locked` shows under the packages whose binaries ship
(gatelet-agent, and gatelet-companion, which also holds gatelet-update) along normal dependencies
only (build scripts and dev-dependencies run on the build machine and ship nothing), for each
target gatelet is built for (the union: one file covers every board). Procedural macros are
kept: their expansions are in the binary.

What of each crate: its name, version, SPDX expression and repository as Cargo.toml declares
them, then the text of every license, copyright or notice file at the top of its package
(LICENSE*, LICENCE*, COPYING*, COPYRIGHT*, NOTICE*, UNLICENSE*, and `license-file`). A text
that several crates ship word for word, line breaks aside (the Apache-2.0 licence, mostly), is
printed once and the others refer to it.

Policy, checked every time: each crate must ship at least one such file, and its expression must
be satisfiable with the licenses in ALLOWED (permissive ones; no copyleft). A crate that breaks
it stops the script with its name and reason, so a dependency update cannot bring in a license
without someone reading it.

    python3 third_party/notices.py                 # writes THIRD-PARTY-LICENSES.txt
    python3 third_party/notices.py --check         # exit 1 if that file is not what it would write
    python3 third_party/notices.py -o FILE         # elsewhere; "-" for stdout
    python3 third_party/notices.py --self-test     # the policy's parser, as a table

It needs the crates' sources: cargo fetches them (or give --offline when they are there already).
"""

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys

# The Rust targets gatelet ships binaries for (image, container, Buildroot, OpenWrt, NAS).
TARGETS = [
    "x86_64-unknown-linux-musl",
    "aarch64-unknown-linux-musl",
    "armv7-unknown-linux-gnueabihf",
    "armv7-unknown-linux-musleabihf",
]
# The workspace packages whose binaries ship.
SHIPPED = ["gatelet-agent", "gatelet-companion"]
# Licenses a shipped crate may be used under: all permissive, none asks for source to be offered.
ALLOWED = {
    "0BSD",
    "Apache-2.0",
    "Apache-2.0 WITH LLVM-exception",
    "BSD-1-Clause",
    "BSD-2-Clause",
    "BSD-3-Clause",
    "CDLA-Permissive-2.0",
    "ISC",
    "MIT",
    "Unicode-3.0",
    "Unlicense",
    "Zlib",
}
NOTICE_FILE = re.compile(r"^(LICEN[CS]E|COPYING|COPYRIGHT|NOTICE|UNLICENSE)", re.IGNORECASE)
# What the file says about parts of a crate that its Cargo.toml does not name.
REMARKS = {
    "libsqlite3-sys": "Bundles SQLite (sqlite3/sqlite3.c), which its authors dedicated to the "
    "public domain; the notice in that file is reproduced under this crate.",
}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(ROOT, "THIRD-PARTY-LICENSES.txt")


class PolicyError(Exception):
    pass


def cargo(args, offline):
    cmd = ["cargo", *args, "--locked", "--manifest-path", os.path.join(ROOT, "Cargo.toml")]
    if offline:
        cmd.append("--offline")
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout


def shipped(target, offline):
    """(name, version) of every crate built into the shipped binaries for `target`.

    `cargo tree` and not `cargo metadata`'s resolve graph: only the former resolves features the
    way a build of these packages does (resolver 2), so an optional dependency that only a test
    crate turns on is not counted.
    """
    out = cargo(["tree", "--edges", "normal", "--target", target, "--prefix", "none",
                 "--format", "{p}", *[a for name in SHIPPED for a in ("-p", name)]], offline)
    crates = set()
    for line in out.splitlines():
        if line.strip():
            name, version = line.split()[:2]
            crates.add((name, version.removeprefix("v")))
    return crates


def satisfiable(expr):
    """True when one OR branch of the SPDX expression is made of ALLOWED licenses only.

    Handles what crates.io has here: OR, AND, WITH, one level of parentheses, and the old
    "MIT/Apache-2.0" slash for OR.
    """
    expr = expr.replace("/", " OR ")
    # Expand "(A OR B) AND C" into "A AND C OR B AND C" (one level is all crates use).
    m = re.fullmatch(r"\s*\(([^()]*)\)\s*AND\s*(.+)", expr)
    if m:
        rest = m.group(2)
        expr = " OR ".join(f"{alt.strip()} AND {rest}" for alt in m.group(1).split(" OR "))
    if "(" in expr:
        return False
    for branch in expr.split(" OR "):
        terms = [t.strip() for t in branch.split(" AND ")]
        if all(t in ALLOWED for t in terms):
            return True
    return False


def notice_files(pkg):
    base = os.path.dirname(pkg["manifest_path"])
    names = sorted(f for f in os.listdir(base)
                   if NOTICE_FILE.match(f) and os.path.isfile(os.path.join(base, f)))
    if pkg.get("license_file"):
        lf = os.path.normpath(pkg["license_file"])
        if lf not in names and os.path.isfile(os.path.join(base, lf)):
            names.append(lf)
    return [(n, os.path.join(base, n)) for n in names]


def sqlite_notice(pkg):
    """The public-domain notice at the top of the SQLite amalgamation libsqlite3-sys bundles."""
    path = os.path.join(os.path.dirname(pkg["manifest_path"]), "sqlite3", "sqlite3.c")
    with open(path, encoding="utf-8", errors="replace") as f:
        head = f.read(4096)
    m = re.search(r"^\*\* (The author disclaims copyright.*?never taking more than you give\.)$",
                  head, re.DOTALL | re.MULTILINE)
    if not m:
        raise PolicyError("libsqlite3-sys: no public-domain notice at the top of sqlite3/sqlite3.c")
    return "\n".join(line.removeprefix("**").strip() for line in m.group(1).splitlines()) + "\n"


def collect(offline):
    meta = json.loads(cargo(["metadata", "--format-version", "1"], offline))
    workspace = {p["name"] for p in meta["packages"] if p["id"] in meta["workspace_members"]}
    details = {(p["name"], p["version"]): p for p in meta["packages"]}
    packages = {}
    for target in TARGETS:
        for key in shipped(target, offline):
            if key[0] not in workspace:
                packages[key] = details[key]
    errors = []
    crates = []
    for key in sorted(packages):
        pkg = packages[key]
        name = f"{pkg['name']} {pkg['version']}"
        expr = pkg.get("license")
        files = notice_files(pkg)
        if not expr:
            errors.append(f"{name}: Cargo.toml declares no license")
        elif not satisfiable(expr):
            errors.append(f"{name}: '{expr}' has no branch made only of the allowed licenses "
                          f"({', '.join(sorted(ALLOWED))})")
        if not files:
            errors.append(f"{name}: ships no license or notice file")
        texts = []
        for fname, path in files:
            with open(path, encoding="utf-8", errors="replace") as f:
                texts.append((fname, f.read().replace("\r\n", "\n").strip() + "\n"))
        if pkg["name"] == "libsqlite3-sys":
            texts.append(("sqlite3/sqlite3.c (the notice atop each of its parts)", sqlite_notice(pkg)))
        crates.append((pkg, texts))
    if errors:
        raise PolicyError("\n".join(errors))
    return crates


def same(text):
    """Texts that differ only in line breaks and spacing are one text."""
    return " ".join(text.split())


def render(crates):
    # A text that several crates ship is printed once, at the end, as the first crate has it.
    count = {}
    for _, texts in crates:
        for _, text in texts:
            count[same(text)] = count.get(same(text), 0) + 1
    shared = {}  # same(text) -> (label, text as first seen)
    for _, texts in crates:
        for _, text in texts:
            if count[same(text)] > 1 and same(text) not in shared:
                shared[same(text)] = (f"shared text {len(shared) + 1}", text)
    out = [
        "Third-party software in gatelet's binaries",
        "",
        "gatelet-agent, gatelet-companion and gatelet-update are built from gatelet's own code",
        "(MIT OR Apache-2.0, see LICENSE-MIT and LICENSE-APACHE) and from the Rust crates below,",
        f"{len(crates)} of them, linked statically. Each is listed with the license its Cargo.toml",
        "declares (gatelet uses each under one of the permissive choices it offers) and the text",
        "of every license or notice file it ships. boringtun and smoltcp are built from patched",
        "copies in gatelet's third_party/ directory (GATELET-PATCH.md there says what changed).",
        "",
        "Written by third_party/notices.py from Cargo.lock; do not edit by hand.",
        "",
    ]
    for pkg, texts in crates:
        out.append("=" * 78)
        out.append(f"{pkg['name']} {pkg['version']}")
        out.append(f"License: {pkg['license']}")
        if pkg.get("repository"):
            out.append(f"Source: {pkg['repository']}")
        if pkg["name"] in REMARKS:
            out.append(REMARKS[pkg["name"]])
        for fname, text in texts:
            out.append("")
            if same(text) in shared:
                out.append(f"--- {fname}: {shared[same(text)][0]}, at the end of this file")
            else:
                out.append(f"--- {fname}")
                out.append(text.rstrip("\n"))
        out.append("")
    for key, (label, text) in shared.items():
        out.append("=" * 78)
        users = [f"{p['name']} {p['version']}" for p, texts in crates
                 if any(same(t) == key for _, t in texts)]
        out.append(f"{label[0].upper()}{label[1:]}, shipped by {', '.join(users)}")
        out.append("")
        out.append(text.rstrip("\n"))
        out.append("")
    return "\n".join(out)


def self_test():
    """The policy as a table: expressions crates.io has, and ones that must be refused."""
    table = [
        ("MIT", True),
        ("MIT OR Apache-2.0", True),
        ("MIT/Apache-2.0", True),
        ("Apache-2.0 AND ISC", True),
        ("Apache-2.0 WITH LLVM-exception OR Apache-2.0 OR MIT", True),
        ("(MIT OR Apache-2.0) AND Unicode-3.0", True),
        ("MIT OR Apache-2.0 OR LGPL-2.1-or-later", True),
        ("CDLA-Permissive-2.0", True),
        ("GPL-3.0-only", False),
        ("MIT AND GPL-2.0-or-later", False),
        ("LGPL-2.1-or-later", False),
        ("MPL-2.0", False),
        ("(MIT OR GPL-3.0) AND LGPL-2.1", False),
        ("Apache-2.0 WITH Classpath-exception-2.0", False),
        ("MIT AND (Apache-2.0 OR BSD-3-Clause)", False),  # nesting we do not parse: refused
        ("", False),
    ]
    wrong = [(e, want) for e, want in table if satisfiable(e) != want]
    for e, want in wrong:
        print(f"notices.py: self-test: '{e}' should be {'allowed' if want else 'refused'}",
              file=sys.stderr)
    if not NOTICE_FILE.match("LICENSE-MIT") or not NOTICE_FILE.match("COPYING") \
            or NOTICE_FILE.match("README.md"):
        wrong.append(("file names", None))
        print("notices.py: self-test: the notice file pattern is wrong", file=sys.stderr)
    return 1 if wrong else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--output", default=DEFAULT_OUT, help="where to write ('-': stdout)")
    ap.add_argument("--check", action="store_true",
                    help="compare with the output file instead of writing it")
    ap.add_argument("--offline", action="store_true", help="cargo metadata --offline")
    ap.add_argument("--self-test", action="store_true", help="check the license policy's parser")
    args = ap.parse_args()
    if args.self_test:
        return self_test()
    try:
        text = render(collect(args.offline))
    except PolicyError as e:
        print(f"notices.py: license policy:\n{e}", file=sys.stderr)
        return 1
    if args.check:
        try:
            with open(args.output, encoding="utf-8") as f:
                old = f.read()
        except FileNotFoundError:
            old = None
        if old != text:
            print(f"notices.py: {os.path.relpath(args.output)} is not current (Cargo.lock or a crate changed): "
                  f"run python3 third_party/notices.py and commit it", file=sys.stderr)
            return 1
        digest = hashlib.sha256(text.encode()).hexdigest()[:12]
        print(f"notices.py: {os.path.relpath(args.output)} is current ({text.count(chr(10))} lines, sha256 {digest})")
        return 0
    if args.output == "-":
        sys.stdout.write(text)
    else:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
        print(f"notices.py: wrote {os.path.relpath(args.output)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
