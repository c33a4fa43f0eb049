#!/usr/bin/env bash
# HTTP reverse proxy on loopback: wrk against a small static file served by nginx on 127.0.0.1,
# in one run: direct, through nginx as a reverse proxy (keepalive upstream), and through the
# agent's proxy (agent/examples/http_proxy.rs: the same http::serve the agent runs, on a
# current-thread runtime, one route). Both proxies get one worker (one core), access logs off.
# Each path is measured ROUNDS times (default 3), interleaved; medians are printed, and the
# ratios are medians of per-round ratios.
# Prints requests/s, p99 latency and the ratios ours/nginx. Target (issue 4): requests/s >= 0.8x
# nginx, p99 <= 1.5x nginx. Needs nginx and wrk (apt-get install -y nginx-light wrk).
# Run by hand or from tests-hw/bench/run; not a timed test.
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-50}
ROUNDS=${ROUNDS:-3}
PROFILE=${PROFILE:-bench-release}

for tool in nginx wrk; do
    command -v "$tool" >/dev/null || { echo "$tool is missing: apt-get install -y nginx-light wrk" >&2; exit 1; }
done
cargo build -q --profile "$PROFILE" -p gatelet-agent --example http_proxy
PROXY=${CARGO_TARGET_DIR:-target}/$PROFILE/examples/http_proxy

source tests-hw/bench/lib/loopback.sh
chmod 755 "$T"


# A small static file (the size of nginx's default index page).
mkdir -p "$T/www"
python3 -c 'print("<html><body>" + "x" * 580 + "</body></html>")' >"$T/www/index.html"

BACKEND=$(free_port)
NGINX=$(free_port)
OURS=$(free_port)

nginx_conf() { # $1 name, $2 server block
    mkdir -p "$T/$1"
    cat >"$T/$1/nginx.conf" <<CFG
daemon off;
master_process off;
worker_processes 1;
user root;
pid $T/$1/nginx.pid;
error_log $T/$1/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $T/$1/body;
    proxy_temp_path $T/$1/proxy;
    fastcgi_temp_path $T/$1/fastcgi;
    uwsgi_temp_path $T/$1/uwsgi;
    scgi_temp_path $T/$1/scgi;
    keepalive_requests 1000000;
    $2
}
CFG
}
nginx_conf backend "server { listen 127.0.0.1:$BACKEND; root $T/www; }"
nginx_conf proxy "upstream lan { server 127.0.0.1:$BACKEND; keepalive $CONNECTIONS; }
    server {
        listen 127.0.0.1:$NGINX;
        location / {
            proxy_pass http://lan;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
        }
    }"

nginx -p "$T/backend" -c "$T/backend/nginx.conf" & pids+=($!)
nginx -p "$T/proxy" -c "$T/proxy/nginx.conf" & pids+=($!)
"$PROXY" "127.0.0.1:$OURS" "127.0.0.1:$BACKEND" bench.local & pids+=($!)
for p in "$BACKEND" "$NGINX" "$OURS"; do wait_port "$p"; done

# Sanity: the same file through every path.
for p in "$BACKEND" "$NGINX" "$OURS"; do
    out=$(python3 - "$p" <<'PY'
import http.client, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=5)
c.request("GET", "/index.html", headers={"Host": "bench.local"})
r = c.getresponse(); b = r.read()
print(r.status, len(b))
PY
)
    [ "$out" = "200 $(stat -c %s "$T/www/index.html")" ] || { echo "port $p answered: $out" >&2; exit 1; }
done

# wrk prints "Requests/sec: N" and, with --latency, "99%  1.23ms".
measure() { # $1 port -> "rps p99_ms"
    wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency -H 'Host: bench.local' "http://127.0.0.1:$1/index.html" |
        python3 -c '
import re, sys
text = sys.stdin.read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
v, unit = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", text, re.M).groups()
print(rps, float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit])
'
}

declare -A RPS P99
for round in $(seq 1 "$ROUNDS"); do
    # Alternate which proxy goes first, so neither always follows the other.
    order="direct:$BACKEND nginx:$NGINX ours:$OURS"
    [ $((round % 2)) -eq 0 ] && order="direct:$BACKEND ours:$OURS nginx:$NGINX"
    for name in $order; do
        read -r rps p99 < <(measure "${name#*:}")
        RPS[${name%%:*}]+="$rps "
        P99[${name%%:*}]+="$p99 "
    done
done
median() { python3 -c 'import statistics,sys; print("%.2f" % statistics.median(map(float, sys.argv[1:])))' "$@"; }
printf '%-8s %12s %10s   (wrk -t1 -c%s, %ss, median of %s)\n' path requests/s p99_ms "$CONNECTIONS" "$DURATION" "$ROUNDS"
declare -A M_RPS M_P99
for n in direct nginx ours; do
    # shellcheck disable=SC2086
    M_RPS[$n]=$(median ${RPS[$n]})
    # shellcheck disable=SC2086
    M_P99[$n]=$(median ${P99[$n]})
    printf '%-8s %12s %10s\n' "$n" "${M_RPS[$n]}" "${M_P99[$n]}"
done
# Ratios per round (ours and nginx measured back to back), then their median: steadier than a
# ratio of medians on a loaded machine.
python3 - "${RPS[ours]}" "${RPS[nginx]}" "${P99[ours]}" "${P99[nginx]}" <<'PY'
import statistics, sys
ours_rps, nginx_rps, ours_p99, nginx_p99 = ([float(x) for x in a.split()] for a in sys.argv[1:])
rr = [o / n for o, n in zip(ours_rps, nginx_rps)]
pr = [o / n for o, n in zip(ours_p99, nginx_p99)]
r, p = statistics.median(rr), statistics.median(pr)
fmt = lambda xs: " ".join("%.2f" % x for x in xs)
print(f"ours/nginx requests/s {r:.2f} (target >= 0.80: {'ok' if r >= 0.8 else 'MISSED'}; per round: {fmt(rr)})")
print(f"ours/nginx p99        {p:.2f} (target <= 1.50: {'ok' if p <= 1.5 else 'MISSED'}; per round: {fmt(pr)})")
PY
