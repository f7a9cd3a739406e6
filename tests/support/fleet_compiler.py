"""The fleet compiler for tests: the pillar module as plain Python, the sample fleet and its
cards, and a private salt-master config dir for real salt-run and Pillar compilation."""

import copy
import json
import os
import pathlib
import subprocess
import sys
from typing import Any

import yaml

from support.saltenv import REPO, TESTS, SaltResult, load_file

FLEET_DATA = TESTS / "data" / "fleet"
SALT_RUN = pathlib.Path(sys.executable).with_name("salt-run")


def load_compiler(name: str = "cjdns_fleet_pillar") -> Any:
    """_pillar/cjdns_fleet.py imported as plain Python (no Salt loader)."""
    return load_file(name, "_pillar/cjdns_fleet.py")


def sample_fleet_text() -> str:
    return (FLEET_DATA / "fleet.yaml").read_text()


def sample_fleet_data() -> dict:
    return yaml.safe_load(sample_fleet_text())


def sample_cards() -> dict:
    """Member id -> its card (a fresh copy each call)."""
    return json.loads((FLEET_DATA / "cards.json").read_text())


def fetcher(mines: dict) -> Any:
    """A fetch_mine over a dict of minion id -> mine data (missing minions: {} as Salt's
    localfs cache gives)."""
    return lambda minion: copy.deepcopy(mines.get(minion, {}))


def mines_of(cards: dict) -> dict:
    """Mine data as the master stores it when the card is sent without allow_tgt."""
    return {minion: {"cjdns.card": card} for minion, card in cards.items()}


class MasterDir:
    """A private salt-master config dir: root_dir in the test's tmp, file_roots holding the
    formula's _pillar and _runners, and the cjdns_fleet ext_pillar pointing at files here."""

    def __init__(self, base: pathlib.Path, fleet_text: str | None = None, extra: dict | None = None) -> None:
        self.base = base
        self.conf = base / "conf"
        self.root = base / "root"
        self.srv = base / "srv"
        self.secret_dir = base / "secret"
        # proc: the running master makes it; salt-run 3008 writes its job there and fails without it.
        for directory in (self.conf, self.srv, self.root / "var/cache/salt/master/proc"):
            directory.mkdir(parents=True, exist_ok=True)
        self.secret_dir.mkdir(mode=0o700, exist_ok=True)
        for part in ("_pillar", "_runners"):
            if not (self.srv / part).exists():
                (self.srv / part).symlink_to(REPO / part)
        self.fleet_file = base / "fleet.yaml"
        self.key_file = self.secret_dir / "fleet.key"
        self.fleet_file.write_text(fleet_text if fleet_text is not None else sample_fleet_text())
        config = {
            "root_dir": str(self.root),
            "file_roots": {"base": [str(self.srv)]},
            "pillar_roots": {"base": [str(base / "pillar")]},
            "ext_pillar": [{"cjdns_fleet": {"fleet_file": str(self.fleet_file), "key_file": str(self.key_file)}}],
            "log_level_logfile": "debug",
        }
        config.update(extra or {})
        (self.conf / "master").write_text(yaml.safe_dump(config))

    def opts(self) -> dict:
        import salt.config

        return salt.config.master_config(str(self.conf / "master"))

    def run(self, *args: str, timeout: float = 180) -> SaltResult:
        """salt-run with this config, --out=json."""
        proc = subprocess.run([str(SALT_RUN), "-c", str(self.conf), "--out=json", "-l", "quiet", *args],
                              capture_output=True, text=True, timeout=timeout, env=os.environ.copy())
        data = None
        if proc.stdout.strip():
            try:
                data = json.loads(proc.stdout)
            except ValueError:
                data = None
        return SaltResult(proc.returncode, data, proc.stdout, proc.stderr)

    def store_mine(self, minion: str, mine: Any) -> None:
        """Mine data into the master's cache, through Salt's cache API (as the master's _mine)."""
        import salt.cache

        salt.cache.factory(self.opts()).store(f"minions/{minion}", "mine", mine)

    def fetch_mine(self, minion: str) -> Any:
        import salt.cache

        return salt.cache.factory(self.opts()).fetch(f"minions/{minion}", "mine")

    def pillar(self, minion: str) -> dict:
        """The pillar Salt's own Pillar class compiles for `minion` with this master config."""
        import salt.pillar

        return salt.pillar.Pillar(self.opts(), {}, minion, "base").compile_pillar()
