"""Rows 5 and 6: the fleet ext_pillar (_pillar/cjdns_fleet.py) on a master config.

Row 5: one spoke's pillar in a 1,000-member fleet with 4 hubs (every member connects to the
4 hubs, plus a mesh among the hubs; every card in a real Salt localfs cache), compiled by
Salt's own Pillar class with the ext_pillar configured, against the same Pillar class
compiling the identical pillar from a static SLS in pillar_roots. A new Pillar per render,
as the master makes one per request; reps alternate product/baseline.

Row 6: the time of one spoke's render through the ext_pillar function (loaded by Salt's
loader, reading the master cache) in a hub-and-spoke fleet of 1,000 members against one of
10: the spoke has the same 4 edges in both, so the ratio shows what the fleet's size costs.
"""

import atexit
import os
import shutil
import tempfile
from typing import Any, Callable

import yaml

from common import OUT, REPO, Row, markdown_table, median, seconds, timed  # first: sets sys.path
from merge import peer_keys  # noqa: E402

HUBS = 4
MEMBERS = 1000
SMALL = 10
REPS = 15
SCALING_REPS = 201
TARGET = 2.0
SCALING_TARGET = 2.0
SPOKE = "m0500"


def load_compiler() -> Any:
    from support.fleet_compiler import load_compiler as load

    return load("cjdns_fleet_bench")


def member_ids(count: int) -> list[str]:
    return [f"hub{n}" for n in range(HUBS)] + [f"m{n:04d}" for n in range(HUBS, count)]


def fleet_text(count: int) -> str:
    ids = member_ids(count)
    hubs = ids[:HUBS]
    return yaml.safe_dump({
        "version": 1, "fleet": "bench", "epoch": 1,
        "members": {member: {} for member in ids},
        "groups": {"hubs": hubs, "everyone": ids},
        "topology": [{"hubs": {"hubs": hubs, "members": "everyone"}}, {"mesh": "hubs"}],
    }, sort_keys=False)


class FleetMaster:
    """A master config dir in bench/out: the fleet file, the key, every member's card in the
    master's localfs cache, the ext_pillar configured; and the same config without the
    ext_pillar but with a static pillar SLS, for the baseline."""

    def __init__(self, workdir: str, count: int, keys: list[str]) -> None:
        import salt.config

        cf = load_compiler()
        self.base = workdir
        self.fleet_file = os.path.join(workdir, "fleet.yaml")
        self.key_file = os.path.join(workdir, "secret", "fleet.key")
        mods = os.path.join(workdir, "mods")
        os.makedirs(mods)
        os.symlink(REPO / "_pillar", os.path.join(mods, "_pillar"))
        os.makedirs(os.path.dirname(self.key_file), mode=0o700)
        for directory in ("empty", "static", "root"):
            os.makedirs(os.path.join(workdir, directory))
        with open(self.fleet_file, "w", encoding="utf-8") as handle:
            handle.write(fleet_text(count))
        cf.create_key(self.key_file)
        config = {
            "root_dir": os.path.join(workdir, "root"),
            "module_dirs": [mods],
            "file_roots": {"base": [os.path.join(workdir, "empty")]},
            "pillar_roots": {"base": [os.path.join(workdir, "empty")]},
            "ext_pillar": [{"cjdns_fleet": {"fleet_file": self.fleet_file, "key_file": self.key_file}}],
        }
        with open(os.path.join(workdir, "master"), "w", encoding="utf-8") as handle:
            yaml.safe_dump(config, handle)
        self.ext_opts = salt.config.master_config(os.path.join(workdir, "master"))
        self.static_opts = {**self.ext_opts, "ext_pillar": [],
                            "pillar_roots": {"base": [os.path.join(workdir, "static")]}}
        self._store_cards(cf, member_ids(count), keys)

    def _store_cards(self, cf: Any, ids: list[str], keys: list[str]) -> None:
        import salt.cache

        cache = salt.cache.factory(self.ext_opts)
        for number, member in enumerate(ids):
            key = keys[number % len(keys)]
            card = {"version": 1, "id": member, "publicKey": key, "ipv6": cf.key_address(key),
                    "endpoints": [f"10.{number >> 8}.{number & 255}.1:47300"], "udp_port": 47300, "epoch": 0}
            cache.store(f"minions/{member}", "mine", {"cjdns.card": card})

    def write_static(self, pillar: dict) -> None:
        """The baseline's pillar_roots: a top file and one SLS holding `pillar` as it is."""
        static = os.path.join(self.base, "static")
        with open(os.path.join(static, "top.sls"), "w", encoding="utf-8") as handle:
            handle.write("base:\n  '*':\n    - fleet\n")
        with open(os.path.join(static, "fleet.sls"), "w", encoding="utf-8") as handle:
            yaml.safe_dump(pillar, handle)

    def compile(self, opts: dict, minion: str) -> dict:
        import salt.pillar

        return salt.pillar.Pillar(opts, {}, minion, "base").compile_pillar()

    def ext_pillar(self) -> Callable[[str], dict]:
        """The ext_pillar function as Salt's loader loads it for a Pillar."""
        import salt.loader

        function = salt.loader.pillars(self.ext_opts, {})["cjdns_fleet"]
        return lambda minion: function(minion, {}, fleet_file=self.fleet_file, key_file=self.key_file)


def _alternate(product: Callable[[], Any], baseline: Callable[[], Any], reps: int) -> tuple[list[float], list[float]]:
    products, baselines = [], []
    for rep in range(reps):
        order = [(products, product), (baselines, baseline)]
        for times, func in order if rep % 2 == 0 else reversed(order):
            times.append(timed(func)[0])
    return products, baselines


def _row5(lab: FleetMaster) -> Row:
    pillar = lab.compile(lab.ext_opts, SPOKE)  # also parses the fleet file: once per content
    assert "_errors" not in pillar and len(pillar["cjdns"]["node"]["peers"]) == HUBS, pillar.get("_errors")
    lab.write_static(pillar)
    assert lab.compile(lab.static_opts, SPOKE) == pillar
    products, baselines = _alternate(lambda: lab.compile(lab.ext_opts, SPOKE),
                                     lambda: lab.compile(lab.static_opts, SPOKE), REPS)
    ratios = [p / b for p, b in zip(products, baselines)]
    return Row(
        f"5. Fleet pillar of one spoke, {MEMBERS:,} members, {HUBS} hubs (ext_pillar via salt.pillar.Pillar)",
        seconds(median(products)),
        f"{seconds(median(baselines))} (the same pillar from a static SLS, same Pillar class)",
        median(ratios), TARGET,
        notes=[f"row 5: {REPS} reps, a new Pillar each; the spoke's pillar has {HUBS} peers and the "
               f"{MEMBERS:,} member ids twice (fleet members, mine allow_tgt); per-rep ratios "
               f"{', '.join(f'{r:.2f}' for r in ratios)}"],
    )


def _row6(labs: dict[int, FleetMaster]) -> tuple[Row, str]:
    cf = load_compiler()
    renders = {count: lab.ext_pillar() for count, lab in labs.items()}
    parse = {count: timed(lambda lab=lab: cf.parse_fleet(open(lab.fleet_file, encoding="utf-8").read()))[0]
             for count, lab in labs.items()}
    for count, render in renders.items():
        assert len(render(SPOKE if count > SMALL else "m0005")["cjdns"]["node"]["peers"]) == HUBS
    large, small = _alternate(lambda: renders[MEMBERS](SPOKE), lambda: renders[SMALL]("m0005"), SCALING_REPS)
    ratio = median([one / other for one, other in zip(large, small)])
    table = markdown_table(
        ["Members", "spoke's edges", "render (median)", "parse + validate the fleet file (once per content)"],
        [[f"{count:,}", str(HUBS), seconds(median(large if count == MEMBERS else small)), seconds(parse[count])]
         for count in (SMALL, MEMBERS)],
    )
    row = Row(
        f"6. Scaling: one spoke's render at {MEMBERS:,} / at {SMALL} members (hub-and-spoke, {HUBS} edges)",
        f"{seconds(median(large))} at {MEMBERS:,}",
        f"{seconds(median(small))} at {SMALL}",
        ratio, SCALING_TARGET,
        notes=[f"row 6: {SCALING_REPS} renders each, alternating; the ext_pillar function as Salt's loader "
               "loads it, fleet file cached, cards read from the master's localfs cache"],
    )
    return row, f"### Row 6: one spoke's render by fleet size\n\n{table}"


def run() -> tuple[list[Row], list[str]]:
    keys = peer_keys()
    OUT.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=OUT, prefix="fleet-") as workdir:
        labs = {count: FleetMaster(os.path.join(workdir, str(count)), count, keys) for count in (SMALL, MEMBERS)}
        row5 = _row5(labs[MEMBERS])
        row6, section = _row6(labs)
    return [row5, row6], [section]


def profile_target(row: str) -> Callable[[], None]:
    """A prepared product run for the profiler (setup done outside the profile)."""
    OUT.mkdir(exist_ok=True)
    workdir = tempfile.mkdtemp(dir=OUT, prefix="fleet-profile-")
    atexit.register(shutil.rmtree, workdir, True)
    lab = FleetMaster(os.path.join(workdir, "lab"), MEMBERS, peer_keys())
    lab.compile(lab.ext_opts, SPOKE)
    if row == "5":
        return lambda: [lab.compile(lab.ext_opts, SPOKE) for _ in range(REPS)] and None
    render = lab.ext_pillar()
    return lambda: [render(SPOKE) for _ in range(SCALING_REPS)] and None
