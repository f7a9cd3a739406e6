"""An emulated Qubes host for the formula: dom0 (the qvm test double), the template cjdns-gw
and the AppVM sys-cjdns (mount namespaces, tests/emulation/qube.py), each with its own Salt
minion config and pillar as qubesctl would render it."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from support.saltenv import REPO, TESTS, SaltEnv

EMULATION = TESTS / "emulation"
for extra in (EMULATION, EMULATION / "qubes"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

import qubes_db  # noqa: E402
from fake_cjdns_repo import make_repo  # noqa: E402
from qube import AppVM, Template  # noqa: E402

PILLAR_EXAMPLE = yaml.safe_load((REPO / "pillar.example").read_text())
QUBES_NFT = EMULATION / "qubes_nft" / "base.nft"


def namespaces_work() -> bool:
    if os.geteuid() != 0:
        return False
    probe = subprocess.run(["unshare", "--mount", "--pid", "--fork", "--net", "true"], capture_output=True)
    return probe.returncode == 0


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
        self.repo = make_repo(self.dir / "upstream-cjdns")
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
        self.template = Template("cjdns-gw", self.dir / "qubes", shared=[self.dir])
        self.proxy = AppVM("sys-cjdns", self.dir / "qubes", self.template, services={"cjdns"},
                           vm_type="ProxyVM", shared=[self.dir])
        self.template_salt = self._qube_salt("cjdns-gw", "template")
        self.proxy_salt = self._qube_salt("sys-cjdns", "app")

    def _qube_salt(self, name: str, qtype: str) -> SaltEnv:
        pillar = deep_merge(self.pillar, {"qubes": {"type": qtype, "template": "cjdns-gw" if qtype == "app" else ""}})
        return SaltEnv(self.dir / f"salt-{name}", pillar=pillar, minion_id=name)

    def set_pillar(self, override: dict) -> None:
        self.pillar = deep_merge(self.pillar, override)
        self.dom0.set_pillar(self.pillar)
        for env, qtype in ((self.template_salt, "template"), (self.proxy_salt, "app")):
            env.set_pillar(deep_merge(self.pillar, {"qubes": {"type": qtype}}))

    def apply(self, where: str, *args: str, log_level: str = "quiet") -> Any:
        """state.apply in dom0, the template or sys-cjdns; returns the SaltResult."""
        if where == "dom0":
            return self.dom0.call("state.apply", *args, log_level=log_level)
        qube, env = (self.template, self.template_salt) if where == "template" else (self.proxy, self.proxy_salt)
        if where == "proxy":
            self.load_qubes_firewall()
        return env.call("state.apply", *args, log_level=log_level, runner=lambda argv: qube.run(argv, timeout=300))

    def load_qubes_firewall(self) -> None:
        """Qubes' own nftables ruleset of a network-providing qube, as qubes-iptables loads it."""
        if not self.proxy.running or self.proxy.run(["nft", "list", "table", "ip6", "qubes"]).returncode != 0:
            result = self.proxy.run(["nft", "-f", str(QUBES_NFT)])
            assert result.returncode == 0, result.stderr

    def cleanup(self) -> None:
        for qube in (self.proxy, self.template):
            qube.cleanup()


def wait_for_output(qube: Any, argv: list, text: str, timeout: float = 10.0) -> str:
    """Run argv in the qube until its output contains text (services start asynchronously)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        output = qube.run(argv).stdout
        if text in output or time.monotonic() > deadline:
            return output
        time.sleep(0.1)
