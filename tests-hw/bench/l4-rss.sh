#!/usr/bin/env bash
# Memory of the agent's TCP relay (agent/examples/l4_relay.rs: forward::tcp on a current-thread
# runtime, as in the agent) holding CONNS (default 1000) open idle relayed connections to an echo
# server on loopback; each connection carried one small round trip first.
# Target (issue 4): <= 16 MiB with 1,000 idle relayed TCP connections. Run by hand.
set -euo pipefail
cd "$(dirname "$0")/../.."
CONNS=${CONNS:-1000}
PROFILE=${PROFILE:-release}
cargo build -q --profile "$PROFILE" -p gatelet-agent --example l4_relay
RELAY=${CARGO_TARGET_DIR:-target}/$PROFILE/examples/l4_relay

pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ECHO=$(free_port)
LISTEN=$(free_port)
python3 - "$ECHO" "$CONNS" <<'PY' & pids+=($!)
import resource, selectors, socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port)); srv.listen(4096); srv.setblocking(False)
sel = selectors.DefaultSelector(); sel.register(srv, selectors.EVENT_READ)
while True:
    for key, _ in sel.select():
        if key.fileobj is srv:
            c, _ = srv.accept(); c.setblocking(False); sel.register(c, selectors.EVENT_READ)
        else:
            try:
                d = key.fileobj.recv(65536)
            except OSError:
                d = b""
            if d:
                key.fileobj.send(d)
            else:
                sel.unregister(key.fileobj); key.fileobj.close()
PY
"$RELAY" "127.0.0.1:$LISTEN" "127.0.0.1:$ECHO" 2>/dev/null & pids+=($!)
RELAY_PID=$!
sleep 0.5
rss() { awk -v k="$1" '$1 == k":" {print $2}' "/proc/$RELAY_PID/status"; }
echo "relay idle, no connections: VmRSS $(rss VmRSS) KiB"
python3 - "$LISTEN" "$CONNS" "$RELAY_PID" <<'PY'
import resource, socket, sys, time
port, n, pid = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
conns = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"x" * 100)
    got = b""
    while len(got) < 100:
        got += s.recv(100 - len(got))
    conns.append(s)
time.sleep(1)
st = dict(l.split(":", 1) for l in open(f"/proc/{pid}/status"))
kib = lambda k: int(st[k].split()[0])
fds = len(__import__("os").listdir(f"/proc/{pid}/fd"))
print(f"relay with {n} open idle relayed connections: VmRSS {kib('VmRSS')} KiB, "
      f"VmHWM {kib('VmHWM')} KiB, {fds} file descriptors "
      f"(target <= 16384 KiB: {'ok' if kib('VmHWM') <= 16384 else 'OVER'})")
PY
