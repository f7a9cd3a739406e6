"""An emulated Qubes host for the formula, driven the way qubesctl drives a real one.

* dom0: `salt-call --local` with the formula and the `qvm` test double (tests/emulation/qubes),
  pillar = pillar.example + overrides, given to every minion id, plus what Qubes' own pillar
  says of each qube (`qubes:type`, `qubes:template`).
* cjdns-gw (TemplateVM) and sys-cjdns (AppVM, ProxyVM type, Qubes service `cjdns`): Debian 13
  systems booted under their own systemd (tests/emulation/qube.py), reached only by salt-ssh
  from an emulated management DispVM (tests/support/qubesctl.py), with their pillar rendered by
  dom0 per target. Like qubesctl, an apply starts a halted qube and shuts it down afterwards.
* upstream cjdns: a local git repository (fake_cjdns_repo.py) the template builds from.
"""

import copy
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from support.qubesctl import ManagementDispVM
from support.saltenv import REPO, TESTS, SaltEnv, SaltResult

EMULATION = TESTS / "emulation"
for extra in (EMULATION, EMULATION / "qubes"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

import qubes_db  # noqa: E402
from fake_cjdns_repo import make_repo  # noqa: E402
from qube import AppVM, Template  # noqa: E402

PILLAR_EXAMPLE = yaml.safe_load((REPO / "pillar.example").read_text())
QUBE_PYTHON = "/usr/bin/python3"


def containers_work() -> bool:
    """Root, with systemd-nspawn and debootstrap: what the booted qubes need."""
    return os.geteuid() == 0 and all(
        subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True).returncode == 0
        for tool in ("systemd-nspawn", "debootstrap", "nsenter"))


namespaces_work = containers_work


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


class Lab:
    """dom0 + cjdns-gw + sys-cjdns under one directory; pillar = pillar.example + overrides."""

    def __init__(self, workdir: Path, pillar: dict | None = None, version: str = "4.2") -> None:
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        upstream = self.dir / "upstream"
        upstream.mkdir(exist_ok=True)
        self.repo = make_repo(upstream / "cjdns", python=QUBE_PYTHON)
        base = deep_merge(PILLAR_EXAMPLE, {"cjdns": {
            "qubes": {"clients": ["personal"]},
            "install": {"source": {"repo": f"file://{self.repo}", "proxy": "", "build_deps": ["git"]}},
        }})
        self.pillar = deep_merge(base, pillar or {})
        self.db = str(self.dir / "qubes.json")
        qubes_db.new_db(self.db, version=version)
        qubes_db.Qubesd(self.db).run_tool("/usr/bin/qvm-create personal --class=AppVM --label=yellow")
        self.dom0 = SaltEnv(self.dir / "salt-dom0", pillar=self.pillar, minion_id="dom0",
                            extra_module_dirs=[EMULATION / "qubes"],
                            opts={"qvm_emulation_db": self.db, "qvm_emulation_version": version})
        qubes = self.dir / "qubes"
        self.template = Template("cjdns-gw", qubes, shared=[upstream])
        self.proxy = AppVM("sys-cjdns", qubes, self.template, services={"cjdns"},
                           vm_type="ProxyVM", shared=[upstream])
        self.dispvm = ManagementDispVM(self.dir / "disp-mgmt", self.dom0, qubes)
        self._write_qubes_pillar()

    def _write_qubes_pillar(self) -> None:
        """What Qubes' dom0 pillar says of each qube, beside the user's pillar `test`."""
        top = {"base": {"*": ["test"]}}
        for qube, qtype in (("cjdns-gw", "template"), ("sys-cjdns", "app")):
            sls = f"qubes-{qube}"
            facts = {"type": qtype, "template": "cjdns-gw" if qtype == "app" else ""}
            (self.dom0.pillar_dir / f"{sls}.sls").write_text(yaml.safe_dump({"qubes": facts}))
            top["base"][qube] = [sls]
        (self.dom0.pillar_dir / "top.sls").write_text(yaml.safe_dump(top))

    def qube(self, where: str) -> Template | AppVM:
        return {"template": self.template, "proxy": self.proxy}[where]

    def set_pillar(self, override: dict) -> None:
        self.pillar = deep_merge(self.pillar, override)
        self.dom0.set_pillar(self.pillar)
        self._write_qubes_pillar()

    def apply(self, where: str, *args: str, log_level: str = "quiet") -> SaltResult:
        """`qubesctl state.apply ARGS` in dom0, or `qubesctl --skip-dom0 --targets=QUBE …`."""
        if where == "dom0":
            return self.dom0.call("state.apply", *args, log_level=log_level)
        return self.call(where, "state.apply", *args, log_level=log_level)

    def call(self, where: str, *args: str, log_level: str = "quiet") -> SaltResult:
        """Any Salt function in the template or sys-cjdns, through salt-ssh as qubesctl does."""
        qube = self.qube(where)
        was_running = qube.running
        qube.boot()
        try:
            return self.dispvm.salt_ssh(qube.name, *args, log_level=log_level)
        finally:
            if not was_running:
                qube.shutdown()

    def cleanup(self) -> None:
        for qube in (self.proxy, self.template):
            qube.cleanup()


def wait_for_output(qube: Any, argv: list, text: str, timeout: float = 10.0) -> str:
    """Run argv in the qube until its output contains text (services start asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        output = qube.run(argv).stdout
        if text in output or time.monotonic() > deadline:
            return output
        time.sleep(0.1)
