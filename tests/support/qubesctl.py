"""What `qubesctl --skip-dom0 --targets=QUBE state.apply …` does for a qube, with real salt-ssh.

QubesOS/qubes-mgmt-salt (qubessalt/__init__.py, qubes.SaltLinuxVM, ssh-wrapper): dom0 renders
the target's pillar (`qubesctl --dom0-only --id=QUBE pillar.items`), copies its Salt tree and
that pillar into a management DisposableVM, which runs `salt-ssh -w QUBE …` with a roster naming
the qube and an `ssh` on PATH that is really the qube's root shell over qrexec. The formula's
_modules/_states travel in salt-ssh's ext_mods, and run on the qube's own /usr/bin/python3 with
Salt's thin. Here the DispVM is a directory with the master config, the rendered pillar and the
roster; salt-ssh is the test venv's (Qubes' Salt version and patches); the qrexec side is
tests/emulation/vm/bin/ (ssh wrapper, qrexec-client-vm into the booted qube).
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from support.saltenv import TESTS, SaltEnv, SaltResult

SALT_SSH = Path(sys.executable).with_name("salt-ssh")
WRAPPERS = TESTS / "emulation" / "vm" / "bin"
# Salt's thin tarball, made once per Salt install and shared by every DispVM of the suite (a
# real DispVM makes its own; the tarball is the same, making it costs ~20 s).
THIN_CACHE = Path(os.environ.get("CJDNS_TEST_CACHE", "/var/cache/cjdns-formula-tests")) / "thin"
PATCH = TESTS / "support" / "patch_salt.py"


def _thin_key() -> str:
    """Salt's version, where it is installed, and the patch applied to it (the thin is its code)."""
    import salt.version  # noqa: PLC0415

    digest = hashlib.sha256(f"{salt.version.__version__}\0{SALT_SSH}\0{sys.version_info[:2]}\0".encode())
    digest.update(PATCH.read_bytes())
    return digest.hexdigest()[:16]


class ManagementDispVM:
    """One DispVM's worth of salt-ssh configuration for one target qube."""

    def __init__(self, base: Path, dom0: SaltEnv, qubes_dir: Path, wipe: bool = True) -> None:
        self.base = base
        # qubes.SaltLinuxVM runs `salt-ssh -w`: Salt's thin is deployed and wiped on every call.
        # wipe=False keeps it in the qube between calls, for tests that only need speed.
        self.wipe = wipe
        self.dom0 = dom0
        self.qubes_dir = qubes_dir
        self.conf = base / "conf"
        self.pillar_dir = base / "pillar"
        self.root = base / "root"
        for directory in (self.conf, self.pillar_dir, self.root / "pki" / "ssh"):
            directory.mkdir(parents=True, exist_ok=True)
        # salt-ssh makes a key pair with ssh-keygen unless one exists; qrexec needs none.
        for name in ("salt-ssh.rsa", "salt-ssh.rsa.pub"):
            (self.root / "pki" / "ssh" / name).touch(mode=0o600)
        dom0_opts = yaml.safe_load((dom0.conf / "minion").read_text())
        config = {
            "root_dir": str(self.root),
            "pki_dir": str(self.root / "pki"),
            "cachedir": str(self.root / "cache"),
            "sock_dir": str(self.root / "sock"),
            "log_file": str(self.root / "log" / "master"),
            "ssh_log_file": str(self.root / "log" / "ssh"),
            "file_roots": dom0_opts["file_roots"],
            "pillar_roots": {"base": [str(self.pillar_dir)]},
            "verify_env": False,
            "log_level_logfile": "debug",
        }
        (self.conf / "master").write_text(yaml.safe_dump(config))
        self._pillars: dict[str, dict[str, Any]] = {}

    def _pillar_key(self, qube: str) -> str | None:
        """What dom0's rendering of a pillar depends on: its pillar tree and its config (None
        for a dom0 whose pillar tree is not one directory: rendered every time)."""
        if not hasattr(self.dom0, "pillar_dir"):
            return None
        digest = hashlib.sha256(qube.encode() + b"\0" + (self.dom0.conf / "minion").read_bytes())
        for path in sorted(self.dom0.pillar_dir.rglob("*")):
            if path.is_file():
                digest.update(str(path).encode() + b"\0" + path.read_bytes() + b"\0")
        return digest.hexdigest()

    def _thin_from_cache(self) -> None:
        """Seed this DispVM's salt-ssh cache with the suite's thin (salt-ssh reuses a thin whose
        version files match), or keep the one salt-ssh made for the next DispVMs."""
        mine = self.root / "cache" / "thin"
        shared = THIN_CACHE / _thin_key()
        if (mine / "thin.tgz").exists():
            if not (shared / "thin.tgz").exists():
                THIN_CACHE.mkdir(parents=True, exist_ok=True)
                work = THIN_CACHE / f"tmp-{os.getpid()}"
                shutil.rmtree(work, ignore_errors=True)
                shutil.copytree(mine, work)
                with open(THIN_CACHE / ".lock", "w") as lock:
                    fcntl.flock(lock, fcntl.LOCK_EX)
                    if (shared / "thin.tgz").exists():
                        shutil.rmtree(work)
                    else:
                        work.rename(shared)
            return
        if (shared / "thin.tgz").exists():
            shutil.copytree(shared, mine, dirs_exist_ok=True)

    def render_pillar(self, qube: str) -> dict[str, Any]:
        """The target's pillar as dom0 renders it, without dom0's `master` key (as qubesctl).
        Rendered again only when dom0's pillar tree or config changed since the last time."""
        key = self._pillar_key(qube)
        if key is None or key not in self._pillars:
            result = self.dom0.call(f"--id={qube}", "pillar.items")
            if result.rc != 0 or not isinstance(result.data, dict):
                raise AssertionError(f"dom0 could not render the pillar of {qube}: {result.stderr[-2000:]}")
            rendered = {k: v for k, v in result.data.items() if k != "master"}
            if key is None:
                return self._write_pillar(qube, rendered)
            self._pillars[key] = rendered
        return self._write_pillar(qube, copy.deepcopy(self._pillars[key]))

    def _write_pillar(self, qube: str, pillar: dict[str, Any]) -> dict[str, Any]:
        """The DispVM's pillar tree and roster for one target."""
        (self.pillar_dir / "combined.sls").write_text(yaml.safe_dump(pillar))
        (self.pillar_dir / "top.sls").write_text(yaml.safe_dump({"base": {qube: ["combined"]}}))
        (self.base / "roster").write_text(yaml.safe_dump({qube: {"host": qube}}))
        return pillar

    def salt_ssh(self, qube: str, *args: str, log_level: str = "quiet", timeout: float = 600,
                 out: str = "json") -> SaltResult:
        """`salt-ssh -w QUBE ARGS` as the DispVM runs it; data is QUBE's return (out=json)."""
        self.render_pillar(qube)
        self._thin_from_cache()
        env = {**os.environ, "PATH": f"{WRAPPERS}:{SALT_SSH.parent}:{os.environ.get('PATH', '')}",
               "QUBES_EMULATION_RUN": str(self.qubes_dir)}
        argv = [str(SALT_SSH), "-c", str(self.conf), f"--roster-file={self.base / 'roster'}",
                *(["-w"] if self.wipe else []),
                f"--out={out}", "-l", log_level, qube, *args]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
        self._thin_from_cache()
        data = None
        if out == "json" and proc.stdout.strip():
            try:
                data = json.loads(proc.stdout).get(qube)
            except ValueError:
                data = None
        return SaltResult(proc.returncode, data, proc.stdout, proc.stderr)
