#!/usr/bin/env python3
"""systemd's part for the fake cjdroute in `salt-call --local` tests (no init system there):
start or restart `fake_cjdroute.py --nobg < CONF` in the background, its PID in PIDFILE.

  fake_service.py start|restart|stop CONF PIDFILE

The environment passes through (CJDNS_FAKE_* knobs). `restart` is what the unit's restart does:
the old process ends, a new one reads the config file as it is now.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _admin_answers(conf: Path) -> bool:
    sys.path.insert(0, str(HERE))
    import admin_server

    host, port = admin_server.split_bind(admin_server.load_cjdroute_conf(str(conf))["admin"]["bind"])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        try:
            sock.sendto(b"d1:q4:pinge", (host, port))
            return b"pong" in sock.recv(100)
        except OSError:
            return False


def stop(pidfile: Path) -> None:
    try:
        pid = int(pidfile.read_text())
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)


def start(conf: Path, pidfile: Path) -> None:
    log = open(str(pidfile) + ".log", "ab")
    with open(conf, "rb") as stdin:
        proc = subprocess.Popen([sys.executable, str(HERE / "fake_cjdroute.py"), "--nobg"], stdin=stdin,
                                stdout=log, stderr=log, start_new_session=True)
    pidfile.write_text(str(proc.pid))
    for _ in range(200):
        if _admin_answers(conf):
            return
        if proc.poll() is not None:
            sys.exit(f"fake cjdroute exited with {proc.returncode}")
        time.sleep(0.05)
    sys.exit("fake cjdroute did not answer on its admin port")


def main(argv: list[str]) -> int:
    action, conf, pidfile = argv[0], Path(argv[1]), Path(argv[2])
    if action in ("stop", "restart"):
        stop(pidfile)
    if action in ("start", "restart"):
        start(conf, pidfile)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
