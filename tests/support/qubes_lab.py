"""An emulated Qubes host for the formula, driven the way qubesctl drives a real one.

* dom0: `salt-call --local` with the formula and the `qvm` test double (tests/emulation/qubes),
  pillar = pillar.example + overrides, given to every minion id, plus what Qubes' own pillar
  says of each qube (`qubes:type`, `qubes:template`).
* cjdns-gw (TemplateVM) and sys-cjdns (AppVM, ProxyVM type, Qubes service `cjdns`): Debian 13
  systems booted under their own systemd (tests/emulation/qube.py), reached only by salt-ssh
  from an emulated management DispVM (tests/support/qubesctl.py), with their pillar rendered by
  dom0 per target. Like qubesctl, an apply starts a halted qube and shuts it down afterwards.
* upstream cjdns: a local git repository (fake_cjdns_repo.py) the template builds from.

`lab.use_built_template()` gives cjdns-gw its volumes as `cjdns.template` leaves them, from a
cache under rootfs.CACHE/templates (one real apply per formula version, pillar, root filesystem
and Salt version): for tests that need a built template but do not test the template SLS.
"""

import copy
import fcntl
import hashlib
import os
import shutil
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
import rootfs  # noqa: E402  (tests/emulation/vm, on sys.path through qube)

PILLAR_EXAMPLE = yaml.safe_load((REPO / "pillar.example").read_text())
QUBE_PYTHON = "/usr/bin/python3"
TEMPLATES = rootfs.CACHE / "templates"
# What a built template depends on besides its pillar and the root filesystem: the formula, and
# the fake upstream the template builds cjdroute from.
TEMPLATE_INPUTS = ("cjdns", "_modules", "_states", "tests/emulation/fake_cjdns_repo.py",
                   "tests/emulation/fake_cjdroute.py", "tests/emulation/admin_server.py")


def containers_work() -> bool:
    """Root, with systemd-nspawn and debootstrap: what the booted qubes need."""
    return os.geteuid() == 0 and all(
        subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True).returncode == 0
        for tool in ("systemd-nspawn", "debootstrap", "nsenter"))


namespaces_work = containers_work  # the old name, still used by tests/demo.py and others


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


class Lab:
    """dom0 + cjdns-gw + sys-cjdns under one directory; pillar = pillar.example + overrides."""

    def __init__(self, workdir: Path, pillar: dict | None = None, version: str = "4.2",
                 wipe: bool = True) -> None:
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
        self.dispvm = ManagementDispVM(self.dir / "disp-mgmt", self.dom0, qubes, wipe=wipe)
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

    def template_key(self) -> str:
        """Cache key of cjdns-gw after `cjdns.template`: the formula's files, the template's
        pillar as dom0 renders it (this lab's upstream path made neutral: the build depends
        on the tag only), the root filesystem, and Salt's version (salt-ssh's thin)."""
        import salt.version  # noqa: PLC0415

        digest = hashlib.sha256(f"{rootfs.cache_key()}\0{salt.version.__version__}\0".encode())
        for name in TEMPLATE_INPUTS:
            top = REPO / name
            for path in sorted([top] if top.is_file() else top.rglob("*")):
                if path.is_file() and "__pycache__" not in path.parts:
                    digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes() + b"\0")
        pillar = yaml.safe_dump(self.dispvm.render_pillar(self.template.name), sort_keys=True)
        digest.update(pillar.replace(str(self.repo), "@UPSTREAM@").encode())
        return digest.hexdigest()[:16]

    def use_built_template(self) -> str:
        """Give cjdns-gw the volumes it has after `state.apply cjdns.template` with this lab's
        pillar: a copy of a cached one, or a real apply (whose result is cached) the first time.
        For tests that need a built template but do not test the template SLS. The template must
        not have been used yet (its root and private volumes are replaced). Returns "cached" or "applied"."""
        if self.template.running:
            raise RuntimeError("use_built_template: the template is running")
        key = self.template_key()
        TEMPLATES.mkdir(parents=True, exist_ok=True)
        cached = TEMPLATES / key
        with open(TEMPLATES / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one builder per key across xdist workers
            if not (cached / ".complete").exists():
                result = self.apply("template", "cjdns.template")
                states = result.data.values() if isinstance(result.data, dict) else []
                if result.rc != 0 or not states or any(r["result"] is False for r in states):
                    raise AssertionError("cjdns.template failed:\n" + result.stdout[-3000:] + result.stderr[-3000:])
                shutil.rmtree(cached, ignore_errors=True)
                work = TEMPLATES / f"tmp-{key}-{os.getpid()}"
                shutil.rmtree(work, ignore_errors=True)
                work.mkdir()
                for part, path in self._template_volumes():
                    subprocess.run(["cp", "-a", str(path), str(work / part)], check=True)
                (work / ".complete").write_text(time.strftime("%F %T\n"))
                work.rename(cached)
                self._prune_templates(keep=cached)
                return "applied"
            for path in (self.template.dir / "root.work", *(p for _, p in self._template_volumes())):
                if path.exists():
                    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=True)
            for part, path in self._template_volumes():
                subprocess.run(["cp", "-a", str(cached / part), str(path)], check=True)
            os.utime(cached)  # recently used: kept by _prune_templates
        return "cached"

    def _template_volumes(self) -> tuple[tuple[str, Path], ...]:
        """What a built template is made of: its root volume (the overlay's upper layer, with
        its whiteouts) and its private volume (/rw: /usr/local, where cjdns is built, is
        /rw/usrlocal in every qube)."""
        return (("root", self.template.root_upper), ("private", self.template.private_dir))

    @staticmethod
    def _prune_templates(keep: Path, count: int = 6) -> None:
        """Built templates of other formula versions go (the `count` last used stay)."""
        built = sorted((p for p in TEMPLATES.iterdir() if p.is_dir() and p != keep),
                       key=lambda p: p.stat().st_mtime, reverse=True)
        for old in built[count - 1:]:
            shutil.rmtree(old, ignore_errors=True)

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
