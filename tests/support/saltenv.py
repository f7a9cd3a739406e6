"""Real Salt for tests: a minion config per test, salt-call --local, and Salt's loader."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"
VECTORS = TESTS / "vectors"
SALT_CALL = pathlib.Path(sys.executable).with_name("salt-call")


def load_file(name: str, relative: str) -> Any:
    """A file of the checkout imported as plain Python under `name` (no Salt loader), once."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / relative)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_module(name: str = "cjdns_module") -> Any:
    """_modules/cjdns.py imported as plain Python (no Salt loader)."""
    return load_file(name, "_modules/cjdns.py")


@dataclass
class SaltResult:
    rc: int
    data: Any
    stdout: str
    stderr: str


class SaltEnv:
    """A private minion config dir (root_dir, pillar, file_roots = the checkout)."""

    def __init__(self, base: pathlib.Path, pillar: dict | None = None, extra_module_dirs=(), opts=None,
                 minion_id: str = "cjdns-test") -> None:
        self.base = base
        self.conf = base / "conf"
        self.pillar_dir = base / "pillar"
        self.root = base / "root"
        for directory in (self.conf, self.pillar_dir, self.root / "var/cache/salt/minion"):
            directory.mkdir(parents=True, exist_ok=True)
        # The formula as a user installs it (not the whole checkout: Salt's file server would
        # walk .venv on every run).
        formula = base / "formula"
        formula.mkdir(exist_ok=True)
        for part in ("cjdns", "_modules", "_states"):
            if not (formula / part).exists():
                (formula / part).symlink_to(REPO / part)
        config = {
            "id": minion_id,
            "file_client": "local",
            "root_dir": str(self.root),
            "file_roots": {"base": [str(formula)]},
            "pillar_roots": {"base": [str(self.pillar_dir)]},
            "module_dirs": [str(formula), *map(str, extra_module_dirs)],
            "grains_cache": True,
            "enable_fqdns_grains": False,
            "log_level_logfile": "debug",
        }
        config.update(opts or {})
        (self.conf / "minion").write_text(yaml.safe_dump(config))
        self.set_pillar(pillar or {})

    @property
    def log_file(self) -> pathlib.Path:
        return self.root / "var/log/salt/minion"

    @property
    def cachedir(self) -> pathlib.Path:
        return self.root / "var/cache/salt/minion"

    def set_pillar(self, pillar: dict) -> None:
        (self.pillar_dir / "top.sls").write_text("base:\n  '*':\n    - test\n")
        (self.pillar_dir / "test.sls").write_text(yaml.safe_dump(pillar))

    def command(self, *args: str, log_level: str = "quiet") -> list[str]:
        return [str(SALT_CALL), "--local", "-c", str(self.conf), "--out=json", "-l", log_level,
                "--retcode-passthrough", *args]

    def call(self, *args: str, log_level: str = "quiet", env: dict | None = None,
             timeout: float = 120, runner=None) -> SaltResult:
        argv = self.command(*args, log_level=log_level)
        if runner is not None:
            proc = runner(argv)
        else:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                  env={**os.environ, **(env or {})})
        data = None
        if proc.stdout.strip():
            try:
                data = json.loads(proc.stdout)["local"]
            except (ValueError, KeyError):
                data = None
        return SaltResult(proc.returncode, data, proc.stdout, proc.stderr)

    def loader(self) -> tuple[Any, Any]:
        """(execution modules, state modules) from Salt's real loader, with this config."""
        import salt.config
        import salt.loader

        opts = salt.config.minion_config(str(self.conf / "minion"))
        opts["grains"] = salt.loader.grains(opts)
        opts["pillar"] = yaml.safe_load((self.pillar_dir / "test.sls").read_text()) or {}
        utils = salt.loader.utils(opts)
        mods = salt.loader.minion_mods(opts, utils=utils)
        states = salt.loader.states(opts, mods, utils, {})
        return mods, states


def state_results(data: Any) -> list[dict]:
    """The state returns of a state.apply, in run order; fails loudly on render errors."""
    if not isinstance(data, dict):
        raise AssertionError(f"state run did not return states: {data!r}")
    return sorted(data.values(), key=lambda r: r["__run_num__"])


def changed(data: Any) -> dict:
    return {r["__id__"]: r["changes"] for r in state_results(data) if r["changes"]}
