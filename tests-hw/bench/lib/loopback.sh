#!/usr/bin/env bash
# Shared by the loopback benchmarks (sourced, not run; tests-hw/bench/run runs only bench/*.sh):
# a temporary directory $T, processes in $pids killed on exit, free ports and waiting for them,
# CPU seconds of a process, percentages.
T=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$T"
}
trap cleanup EXIT

# A port free on 127.0.0.1 now (the kernel's pick; a benchmark binds it right after).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits up to 5 s for something to listen on 127.0.0.1:$1.
wait_port() {
    for _ in $(seq 1 50); do
        if python3 -c "import socket; socket.create_connection(('127.0.0.1',$1),0.2)" 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "nothing listens on 127.0.0.1:$1" >&2
    return 1
}

# CPU seconds (user + system, waited-for children included) of process $1 so far; 0 without one.
cpu() {
    if [ -z "${1:-}" ]; then echo 0; return; fi
    python3 -c "import os; f=open('/proc/$1/stat').read().rsplit(')',1)[1].split(); print(sum(int(x) for x in f[11:15])/os.sysconf('SC_CLK_TCK'))"
}
# cpu_user PID: the user-space part of the above (utime and cutime).
cpu_user() {
    if [ -z "${1:-}" ]; then echo 0; return; fi
    python3 -c "import os; f=open('/proc/$1/stat').read().rsplit(')',1)[1].split(); print((int(f[11])+int(f[13]))/os.sysconf('SC_CLK_TCK'))"
}

# percent PART WHOLE: 100 * PART / WHOLE, each a Python expression of numbers ("$after-$before"),
# a WHOLE of 0 taken as 1e-9. For a process's CPU use over a run (PART its CPU seconds, WHOLE the
# run's seconds) and the user-space share of it (PART its user seconds, WHOLE its CPU seconds).
percent() { python3 -c "print(100*($1)/max($2,1e-9))"; }
