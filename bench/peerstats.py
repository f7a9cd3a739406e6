"""Row 4: cjdns.peer_stats over 1,000 peers against the same UDP round trips done raw.

The emulated cjdroute admin API (tests/emulation/admin_server.py: AdminServer serving
synthetic_peers(1000)) runs in its own process, as cjdroute does; in-process its thread
would share the GIL with the client being measured. peer_stats(path) is called in-process
with a config whose admin.bind and admin.password point at it.

Baseline: one raw round trip per peer: 1,000 unauthenticated `d1:q4:pinge` requests and
their replies over one connected socket (blocking recv, no decoding), to the same server.

Also measured, in the notes: exactly the datagrams peer_stats exchanges (counted by wrapping
the client's _exchange; peerStats needs no auth, so one request per page of 6 peers), sent
raw as the same page requests (same size, same txid length, so the server does identical
work and sends identical replies). peer_stats over that is the client's own cost (config
read, sockets, bencode decoding, peer views) relative to the wire and the server.
"""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from types import ModuleType
from typing import Callable

from common import EMULATION, OUT, VECTORS, Row, median, seconds, timed

PEERS = 1000
REPS = 9
TARGET = 2.0
PASSWORD = "bench-admin-password"


def page_request(page: int) -> bytes:
    txid = os.urandom(8).hex().encode()
    return b"d4:argsd4:pagei%dee1:q29:InterfaceController_peerStats4:txid16:%se" % (page, txid)


class Server:
    """admin_server.py as a separate process serving PEERS synthetic peers on an ephemeral port."""

    def __init__(self, cj: ModuleType, workdir: str) -> None:
        text = (VECTORS / "genconf" / "genconf-1.conf").read_text(encoding="utf-8")
        text = cj.set_path(text, ("admin", "password"), PASSWORD)
        self.config = os.path.join(workdir, "cjdroute.conf")
        with open(self.config, "w", encoding="utf-8") as handle:
            handle.write(text)
        self.proc = subprocess.Popen(
            [sys.executable, str(EMULATION / "admin_server.py"), "--config", self.config, "--port", "0",
             "--synthetic-peers", str(PEERS)],
            stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.strip().isdigit():
            self.stop()
            raise RuntimeError(f"admin_server.py did not start: {line!r}")
        self.port = int(line)
        with open(self.config, "w", encoding="utf-8") as handle:
            handle.write(cj.set_path(text, ("admin", "bind"), f"127.0.0.1:{self.port}"))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def count_exchanges(cj: ModuleType, config: str) -> tuple[int, int]:
    """(datagrams peer_stats sends, peers it returns), counted on an untimed call."""
    original = cj.AdminClient._exchange
    calls = 0

    def counting(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        return original(self, *args, **kwargs)

    cj.AdminClient._exchange = counting
    try:
        peers = cj.peer_stats(config)
    finally:
        cj.AdminClient._exchange = original
    return calls, len(peers)


def raw_round_trips(sock: socket.socket, requests: list[bytes]) -> None:
    for request in requests:
        sock.send(request)
        sock.recv(65536)


def run(cj: ModuleType) -> list[Row]:
    OUT.mkdir(exist_ok=True)
    workdir = tempfile.mkdtemp(dir=OUT, prefix="peerstats-")
    server = Server(cj, workdir)
    try:
        datagrams, returned = count_exchanges(cj, server.config)
        assert returned == PEERS, f"peer_stats returned {returned} peers, expected {PEERS}"
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.connect(("127.0.0.1", server.port))
        sock.settimeout(5)
        last = page_request(datagrams - 1)
        sock.send(last)
        reply = sock.recv(65536)
        assert b"5:peersl" in reply and b"4:more" not in reply, reply[:200]  # the last page, as peer_stats saw it
        pings = [b"d1:q4:pinge"] * PEERS
        products, baselines, page_times = [], [], []
        for rep in range(REPS + 1):
            requests = [page_request(page) for page in range(datagrams)]
            steps: list[tuple[list[float], Callable[[], object]]] = [
                (products, lambda: cj.peer_stats(server.config)),
                (baselines, lambda: raw_round_trips(sock, pings)),
            ]
            for times, func in steps if rep % 2 == 0 else reversed(steps):
                times.append(timed(func)[0])
            page_times.append(timed(lambda: raw_round_trips(sock, requests))[0])
        sock.close()
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    products, baselines, page_times = products[1:], baselines[1:], page_times[1:]  # rep 0 warms up
    ratios = [p / b for p, b in zip(products, baselines)]
    page_ratio = median([p / t for p, t in zip(products, page_times)])
    return [Row(
        f"4. cjdns.peer_stats over {PEERS:,} emulated peers",
        seconds(median(products)),
        f"{seconds(median(baselines))} ({PEERS:,} raw ping round trips)",
        median(ratios), TARGET,
        notes=[f"row 4: {REPS} reps; per-rep ratios {', '.join(f'{r:.2f}' for r in ratios)}",
               f"row 4: peer_stats sends {datagrams} datagrams (pages of 6 peers, no auth needed); the same "
               f"{datagrams} page requests sent raw take {seconds(median(page_times))}, so peer_stats costs "
               f"{page_ratio:.2f}x the wire and server time of its own requests"],
    )]


def profile_target(cj: ModuleType) -> Callable[[], None]:
    import atexit

    OUT.mkdir(exist_ok=True)
    workdir = tempfile.mkdtemp(dir=OUT, prefix="peerstats-profile-")
    server = Server(cj, workdir)
    atexit.register(shutil.rmtree, workdir, True)
    atexit.register(server.stop)
    return lambda: cj.peer_stats(server.config) and None
