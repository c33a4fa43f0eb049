#!/usr/bin/env python3
"""Runs one shell command in the guest of image/boot-test.sh and prints its output.

    console.py SOCKET TIMEOUT_S COMMAND

SOCKET is the host end of the guest's virtio console /dev/hvc0 (qemu
-chardev socket,server=on), on which gatelet-test-console.service runs a root shell. Each call
connects, waits until the shell answers (it is not there until the guest has booted, and input
that arrives before it starts may be discarded), sends the command once, and reads until the
end marker carrying the command's exit status, which becomes this program's exit status.
Exit 124 when the guest does not answer within TIMEOUT_S.
"""

import os
import re
import socket
import sys
import time


def main() -> int:
    path, timeout, command = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    deadline = time.monotonic() + timeout
    nonce = os.urandom(6).hex()
    hello = f"GL_HELLO_{nonce}"
    done = f"GL_DONE_{nonce}"

    sock = None
    while sock is None:
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(path)
            sock = s
        except OSError:
            if time.monotonic() > deadline:
                print(f"console.py: cannot connect to {path}", file=sys.stderr)
                return 124
            time.sleep(0.5)

    buf = b""

    def read_until(pattern: re.Pattern, resend: bytes | None) -> re.Match | None:
        nonlocal buf
        next_send = 0.0
        while True:
            m = pattern.search(buf)
            if m:
                return m
            now = time.monotonic()
            if now > deadline:
                return None
            if resend is not None and now >= next_send:
                # qemu reads the socket only while the guest has the port open: never block
                # on a full socket buffer (what is queued reaches the shell once it opens it).
                try:
                    sock.send(resend, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    pass
                next_send = now + 5.0
            sock.settimeout(min(1.0, max(0.05, deadline - now)))
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                # qemu closed the connection (the guest is resetting): no answer.
                return None
            buf += chunk

    # The shell may not be reading yet: repeat a harmless echo until it answers.
    # The typed text `echo "GL_HELLO_"<nonce>` differs from what the shell prints, so a terminal's
    # echo of the input (before the shell turned it off) does not count as an answer.
    if not read_until(re.compile(hello.encode()), f'echo "GL_HELLO_"{nonce}\n'.encode()):
        print(f"console.py: the guest shell did not answer within {timeout:.0f}s", file=sys.stderr)
        return 124
    buf = b""
    sock.sendall(f"{{ {command}\n}} </dev/null 2>&1; echo \"{done} $?\"\n".encode())
    m = read_until(re.compile(done.encode() + rb" (\d+)\n"), None)
    # Leftover hello lines (sent before the first answer) are not the command's output.
    out = buf[: m.start()] if m else buf
    lines = [ln for ln in out.decode(errors="replace").splitlines(True) if hello not in ln]
    sys.stdout.write("".join(lines))
    sock.close()
    if not m:
        print(f"console.py: no end of `{command}` within {timeout:.0f}s", file=sys.stderr)
        return 124
    return int(m.group(1))


if __name__ == "__main__":
    sys.exit(main())
