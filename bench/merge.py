"""Row 2: parse + merge N peers + write (cjdns.merge_peers, cjdns.write_config) against stdlib JSON.

The product starts from genconf-1.conf (cjdroute's own --genconf output, comments and all,
one IPv4 and one IPv6 UDPInterface) and merges N validated peers, half IPv4 and half IPv6,
then writes the result with write_config (strict re-check + atomic, fsynced write).
The baseline is the least a JSON tool could do for the same result: json.loads of the
resulting config as plain JSON, json.dumps(indent=4) and the same durable write (temp file
in the directory, fsync, rename, fsync of the directory), implemented here with plain os calls.
"""

import atexit
import json
import os
import secrets
import shutil
import tempfile
from types import ModuleType
from typing import Callable

from common import OUT, VECTORS, Row, markdown_table, median, seconds, timed  # first: sets sys.path
from admin_server import synthetic_peers  # noqa: E402 (tests/emulation)

PEERS = 1000
REPS = 9
TARGET = 5.0
SCALING = {10: 15, 100: 9, 1000: 5, 10000: 3}  # peers: reps
SCALING_TARGET = 2.0
GENCONF = VECTORS / "genconf" / "genconf-1.conf"


def peer_keys(count: int = 1000) -> list[str]:
    """Valid public keys (fc00::/8 addresses) from the admin emulator's deterministic generator."""
    return [peer["addr"].split(".", 5)[5] for peer in synthetic_peers(count)]


def make_peers(cj: ModuleType, keys: list[str], count: int) -> dict:
    """count peers as pillar would give them, validated (and field-ordered) by the module.

    Keys repeat past len(keys): the merge never compares keys, only endpoints.
    """
    peers = {}
    for i in range(count):
        if i % 2:
            endpoint = f"[2001:db8::{i:x}]:{10000 + i % 50000}"
        else:
            endpoint = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}:{10000 + i % 50000}"
        peer = {"password": f"pw{i:06d}{secrets.token_hex(10)}", "publicKey": keys[i % len(keys)],
                "peerName": f"peer-{i}"}
        if i % 3 == 0:
            peer["login"] = f"login-{i}"
        peers[endpoint] = peer
    return cj.validate_peers(peers)


def durable_write(path: str, data: bytes) -> None:
    """What any careful tool does to replace a config: temp file, fsync, rename, fsync dir."""
    directory = os.path.dirname(path)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class Case:
    """One peer count: the product and baseline operations, ready to time."""

    def __init__(self, cj: ModuleType, text: str, peers: dict, workdir: str) -> None:
        self.cj, self.text, self.peers = cj, text, peers
        self.product_path = os.path.join(workdir, "cjdroute.conf")
        self.baseline_path = os.path.join(workdir, "cjdroute.json")
        plan = cj.merge_peers(text, peers)
        assert len(plan.added) == len(peers), (len(plan.added), len(peers))
        self.result_json = json.dumps(cj.loads(plan.text), indent=4)

    def product(self) -> None:
        plan = self.cj.merge_peers(self.text, self.peers)
        self.cj.write_config(self.product_path, plan.text)

    def baseline(self) -> None:
        data = json.loads(self.result_json)
        durable_write(self.baseline_path, json.dumps(data, indent=4).encode())


def _measure(case: Case, reps: int) -> tuple[list[float], list[float]]:
    case.product()
    case.baseline()
    products, baselines = [], []
    for rep in range(reps):
        order: list[tuple[list[float], Callable[[], None]]] = [(products, case.product), (baselines, case.baseline)]
        for times, func in order if rep % 2 == 0 else reversed(order):
            times.append(timed(func)[0])
    return products, baselines


def run(cj: ModuleType) -> tuple[list[Row], list[str]]:
    text = GENCONF.read_text(encoding="utf-8")
    keys = peer_keys()
    OUT.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=OUT, prefix="merge-") as workdir:
        case = Case(cj, text, make_peers(cj, keys, PEERS), workdir)
        products, baselines = _measure(case, REPS)
        ratios = [p / b for p, b in zip(products, baselines)]
        size = os.path.getsize(case.product_path)
        main = Row(
            f"2. Parse + merge {PEERS:,} peers + write (merge_peers + write_config)",
            seconds(median(products)),
            f"{seconds(median(baselines))} (json.loads + json.dumps + durable write)",
            median(ratios), TARGET,
            notes=[f"row 2: {REPS} reps; the written config is {size / 1024:.0f} KiB; per-rep ratios "
                   f"{', '.join(f'{r:.1f}' for r in ratios)}"],
        )
        scaling = []
        for count, reps in SCALING.items():
            sized = case if count == PEERS else Case(cj, text, make_peers(cj, keys, count), workdir)
            p, b = (products, baselines) if count == PEERS else _measure(sized, reps)
            scaling.append((count, median(p), median(b), len(p)))
    per_peer = {count: product / count for count, product, _, _ in scaling}
    growth = per_peer[10000] / per_peer[1000]
    rows = [main, Row(
        "2b. Scaling: time per peer at 10,000 / at 1,000 peers",
        f"{seconds(per_peer[10000])}/peer at 10,000",
        f"{seconds(per_peer[1000])}/peer at 1,000",
        growth, SCALING_TARGET,
        notes=["row 2b: near-linear" if growth <= SCALING_TARGET else
               "row 2b: NOT near-linear (per-peer cost grows with the peer count)"],
    )]
    table = markdown_table(
        ["Peers", "merge + write", "per peer", "JSON baseline", "ratio", "reps"],
        [[f"{count:,}", seconds(product), seconds(product / count), seconds(base), f"{product / base:.1f}x", str(reps)]
         for count, product, base, reps in scaling],
    )
    return rows, ["### Row 2b: merge_peers + write_config scaling\n\n" + table]


def profile_target(cj: ModuleType, count: int = PEERS) -> Callable[[], None]:
    """A prepared product run for the profiler (setup done outside the profile)."""
    OUT.mkdir(exist_ok=True)
    workdir = tempfile.mkdtemp(dir=OUT, prefix="merge-profile-")
    atexit.register(shutil.rmtree, workdir, True)
    case = Case(cj, GENCONF.read_text(encoding="utf-8"), make_peers(cj, peer_keys(), count), workdir)
    return case.product
