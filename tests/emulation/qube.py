"""Emulated Qubes qubes for tests: Debian 13 systems booted under their own systemd.

Each qube is a container (systemd-nspawn) of the root filesystem built by vm/rootfs.py: Debian 13
trixie with the packages of a Qubes minimal template and our emulation of Qubes' agent
(vm/agent/), which the qube's systemd runs at boot like the real one (qubes-sysinit, then
qubes-mount-dirs with bind-dirs). Storage follows Qubes (QubesOS/qubes-core-agent-linux v4.2.x):

* root volume: an overlay over the cached root filesystem. A Template's upper layer persists
  across boots. An AppVM's root is its Template's root as it is when the AppVM boots (a copy of
  the Template's upper layer) plus a VOLATILE upper layer that every boot starts empty.
* private volume: a per-qube directory mounted at /rw; the agent makes /home and /usr/local
  /rw/home and /rw/usrlocal.
* QubesDB is /run/qubes-emulation/qubesdb.json (read-only, from here): name, type, persistence,
  the Qubes services of the qube (its `service.*` features) and the base template.
* network: a private network namespace with only `lo` (or a named one, `netns=`, for gateway
  and fleet tests).
* host paths: `shared=` directories bound read-write at the same path, `shared_ro=` files or
  directories bound read-only at the same path, or (host path, path in the machine) pairs (the
  fleet lab lends the host's Python and venv).
* apt: the qube's only archive is the local repository (vm/rootfs.py) mounted read-only.

Nothing is mounted on this machine's own mount table: the overlay is made in a private mount
namespace in which systemd-nspawn runs; the host sees only the directories under `workdir`.

API (root only; a qube boots on first use):
    tpl = Template("cjdns-gw", workdir, shared=[tmp])     # storage in workdir/cjdns-gw/
    Template("m1", workdir, netns="lab-m1", shared_ro=["/usr/lib/python3.11"])
    vm = AppVM("sys-cjdns", workdir, tpl, services={"cjdns"}, vm_type="ProxyVM")
    vm.run(argv, env=None, input=None, timeout=120, cwd=None, check=False) -> CompletedProcess
    vm.sh("shell script") ; vm.path("/etc/x") (what the running qube sees at /etc/x)
    vm.private_dir (/rw) ; tpl.root_upper (the template's writes) ; vm.console (boot log)
    vm.testinfra_host() ; vm.boot() ; vm.reboot() ; vm.shutdown() ; vm.cleanup()
    vm.leader (PID of the qube's systemd) ; vm.running
Commands run as root through nsenter into all of the qube's namespaces; `qrexec` (vm/bin/)
runs them as a service of the qube's own systemd, as qrexec-agent does.
"""

from __future__ import annotations

import atexit
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

EMULATION_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(EMULATION_DIR / "vm"))
import rootfs  # noqa: E402

BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "USER": "root",
    "LOGNAME": "root",
    "SHELL": "/bin/bash",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
}
VM_TYPES = ("AppVM", "ProxyVM", "NetVM", "TemplateVM", "DispVM")
BOOT_TIMEOUT = 60.0

# Runs in a private mount namespace: makes the overlay root, then becomes systemd-nspawn.
LAUNCH = r"""
set -eu
mount -t overlay overlay -o "lowerdir=$QUBE_LOWER,upperdir=$QUBE_UPPER,workdir=$QUBE_WORK" "$QUBE_MNT"
exec systemd-nspawn "$@"
"""


class QubeError(Exception):
    """The emulated qube could not boot or run something."""


_RUNNING: set["Qube"] = set()


@atexit.register
def _kill_leftovers() -> None:
    """A test that forgot cleanup() must not leave a qube running."""
    for qube in list(_RUNNING):
        qube._kill()


class Qube:
    """Common parts of Template and AppVM."""

    klass = ""
    persistence = "full"

    def __init__(self, name: str, workdir: os.PathLike[str] | str, *,
                 services: Iterable[str] | Mapping[str, bool] = (), vm_type: str = "",
                 shared: Sequence[os.PathLike[str] | str] = (), netns: str | None = None,
                 shared_ro: Sequence[os.PathLike[str] | str | tuple[os.PathLike[str] | str, os.PathLike[str] | str]] = (),
                 bind_dirs_version: str = "4.2") -> None:
        self.name = name
        self.dir = Path(workdir).resolve() / name
        self.vm_type = vm_type or self.klass
        if self.vm_type not in VM_TYPES:
            raise ValueError(f"unknown qube type {self.vm_type}")
        self.services = dict(services) if isinstance(services, Mapping) else {s: True for s in services}
        self.shared = [Path(p).resolve() for p in shared]
        for path in self.shared:
            if not path.is_dir():
                raise ValueError(f"shared path is not a directory: {path}")
        # A path is bound at itself; a (host path, path in the machine) pair elsewhere.
        self.shared_ro = [(Path(p[0]), Path(p[1])) if isinstance(p, tuple) else (Path(p), Path(p)) for p in shared_ro]
        for path, _ in self.shared_ro:
            if not path.exists():
                raise ValueError(f"read-only shared path does not exist: {path}")
        self.netns = netns
        self.bind_dirs_version = bind_dirs_version
        self.leader: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        for sub in ("private", "mnt", "qubesdb"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------ storage
    @property
    def private_dir(self) -> Path:
        """The private volume, mounted at /rw in the qube (persistent)."""
        return self.dir / "private"

    @property
    def console(self) -> Path:
        """Console output of every boot (systemd's messages)."""
        return self.dir / "console.log"

    def _root_layers(self) -> tuple[list[Path], Path, Path]:
        """(lower layers, top first), upper dir, work dir."""
        raise NotImplementedError

    def qubesdb(self) -> dict[str, str]:
        db = {"/name": self.name, "/type": self.klass, "/qubes-vm-type": self.vm_type,
              "/qubes-vm-persistence": self.persistence,
              "/qubes-vm-updateable": str(self.klass == "TemplateVM"),
              "/default-user": "user", "/qubes-bind-dirs-version": self.bind_dirs_version}
        for service, enabled in self.services.items():
            db[f"/qubes-service/{service}"] = "1" if enabled else "0"
        return db

    # ------------------------------------------------------------ life cycle
    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def boot(self) -> None:
        """Start the qube if it is not running, and wait until its boot has finished."""
        if self.running:
            return
        root, repo = rootfs.ensure()
        lowers, upper, work = self._root_layers()
        for path in (upper, work):
            path.mkdir(parents=True, exist_ok=True)
        for path in [*lowers, upper, work]:
            if "," in str(path) or ":" in str(path):
                raise QubeError(f"overlayfs cannot use a path with ',' or ':': {path}")
        (self.dir / "qubesdb" / "qubesdb.json").write_text(json.dumps(self.qubesdb()))
        argv = ["--keep-unit", "--register=no", "--boot", f"--directory={self.dir / 'mnt'}",
                f"--machine={self.name}", f"--hostname={self.name}", "--console=read-only",
                f"--bind={self.private_dir}:/rw",
                f"--bind-ro={repo}:{rootfs.REPO_IN_QUBE}",
                f"--bind-ro={self.dir / 'qubesdb'}:/run/qubes-emulation",
                *(f"--bind={p}" for p in self.shared),
                *(f"--bind-ro={src}:{dst}" for src, dst in self.shared_ro)]
        argv.append(f"--network-namespace-path=/run/netns/{self.netns}" if self.netns else "--private-network")
        env = {"PATH": BASE_ENV["PATH"], "QUBE_MNT": str(self.dir / "mnt"),
               "QUBE_LOWER": ":".join(str(p) for p in [*lowers, root]),
               "QUBE_UPPER": str(upper), "QUBE_WORK": str(work), "SYSTEMD_LOG_COLOR": "0"}
        with open(self.console, "ab") as console:
            console.write(f"--- boot {self.name} {time.strftime('%H:%M:%S')}\n".encode())
            self._proc = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "sh", "-c", LAUNCH, "launch", *argv],
                env=env, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                start_new_session=True)
        _RUNNING.add(self)
        try:
            self.leader = self._wait_leader()
            state = self._wait_booted()
        except BaseException:
            self._kill()
            raise
        if state not in ("running", "degraded"):
            self._kill()
            raise QubeError(f"{self.name}: boot ended in state {state!r}:\n{self.console.read_text()[-4000:]}")
        self._registry.write_text(f"{self.leader}\n")

    @property
    def _registry(self) -> Path:
        """Where vm/bin/qrexec-client-vm finds the running qube ($QUBES_EMULATION_RUN)."""
        return self.dir.parent / f"{self.name}.leader"

    def _wait_leader(self) -> int:
        """PID of the qube's systemd: the child of systemd-nspawn that runs /sbin/init."""
        deadline = time.monotonic() + BOOT_TIMEOUT
        assert self._proc is not None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            for child in _children(self._proc.pid):
                for grandchild in [child, *_children(child)]:
                    if _comm(grandchild) == "systemd" and os.readlink(f"/proc/{grandchild}/ns/pid") != os.readlink("/proc/self/ns/pid"):
                        return grandchild
            time.sleep(0.02)
        raise QubeError(f"{self.name}: the container did not start:\n{self.console.read_text()[-4000:]}")

    def _wait_booted(self) -> str:
        """The system state once boot has finished (systemd answers only after a moment)."""
        deadline = time.monotonic() + BOOT_TIMEOUT
        while True:
            state = self.run(["systemctl", "is-system-running", "--wait"], timeout=BOOT_TIMEOUT).stdout.strip()
            # Before systemd listens on its private socket, systemctl says "offline" (or nothing).
            if state not in ("", "offline") or time.monotonic() > deadline or not self.running:
                return state
            time.sleep(0.05)

    def shutdown(self) -> None:
        """A clean poweroff (services stop with their ExecStop=), then the container ends."""
        if not self.running:
            self._kill()
            return
        assert self._proc is not None
        self._proc_signal(signal.SIGTERM)  # systemd-nspawn asks the qube's systemd to power off
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        self._kill()

    def _proc_signal(self, sig: int) -> None:
        if self._proc is None:
            return
        for pid in [self._proc.pid, *_children(self._proc.pid)]:
            if _comm(pid) == "systemd-nspawn":
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass

    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGKILL)
            if self.leader:
                try:
                    os.kill(self.leader, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self._proc.wait(timeout=30)
        self._registry.unlink(missing_ok=True)
        _RUNNING.discard(self)
        self._proc = None
        self.leader = None

    def reboot(self) -> None:
        self.shutdown()
        self.boot()

    def cleanup(self) -> None:
        """Shut down and delete everything the qube stored (private volume included)."""
        self.shutdown()
        shutil.rmtree(self.dir, ignore_errors=True)

    # ------------------------------------------------------------ inside the qube
    def enter_argv(self) -> list[str]:
        """Command prefix that enters the qube's namespaces as root (boots it if needed)."""
        self.boot()
        return ["nsenter", f"--target={self.leader}", "--all", "--"]

    def run(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
            input: str | None = None, timeout: float = 120, cwd: str | None = None,
            check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run argv as root inside the qube (boots it first if needed)."""
        command = ["env", "-i", *(f"{k}={v}" for k, v in {**BASE_ENV, **(env or {})}.items())]
        if cwd:
            command.append(f"--chdir={cwd}")
        proc = subprocess.Popen([*self.enter_argv(), *command, *argv], text=True,
                                stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
        result = subprocess.CompletedProcess(list(argv), proc.returncode, out, err)
        if check and result.returncode != 0:
            raise subprocess.CalledProcessError(result.returncode, list(argv), out, err)
        return result

    def sh(self, script: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return self.run(["/bin/sh", "-c", script], **kwargs)

    def path(self, path: str) -> Path:
        """Host path that shows `path` as the running qube sees it (through /proc/PID/root)."""
        self.boot()
        return Path(f"/proc/{self.leader}/root") / path.lstrip("/")

    def testinfra_host(self) -> Any:
        """A testinfra Host whose commands run inside this qube."""
        import testinfra.host  # noqa: PLC0415 (only tests that want testinfra pay for it)
        from testinfra.backend.local import LocalBackend  # noqa: PLC0415

        qube = self
        env = [f"{key}={value}" for key, value in BASE_ENV.items()]

        class QubeBackend(LocalBackend):
            NAME = "qube"

            def get_pytest_id(self) -> str:
                return f"qube:{qube.name}"

            def run(self, command: str, *args: str, **kwargs: Any) -> Any:
                inner = self.get_command(command, *args)
                prefix = [*qube.enter_argv(), "/usr/bin/env", "-i", *env, "/bin/sh", "-c"]
                return self.run_local(shlex.join(prefix) + " " + shlex.quote(inner))

        backend = QubeBackend()
        host = testinfra.host.Host(backend)
        backend.set_host(host)
        return host


class Template(Qube):
    """A TemplateVM: persistent root (upper layer kept across boots), no bind-dirs."""

    klass = "TemplateVM"
    persistence = "full"

    @property
    def root_upper(self) -> Path:
        """Everything written to the template's root volume."""
        return self.dir / "root"

    def _root_layers(self) -> tuple[list[Path], Path, Path]:
        return [], self.root_upper, self.dir / "root.work"


class AppVM(Qube):
    """A template-based AppVM: volatile root over its Template's root, persistent /rw."""

    klass = "AppVM"
    persistence = "rw-only"

    def __init__(self, name: str, workdir: os.PathLike[str] | str, template: Template,
                 services: Iterable[str] | Mapping[str, bool] = (), *, vm_type: str = "AppVM",
                 **kwargs: Any) -> None:
        super().__init__(name, workdir, services=services, vm_type=vm_type, **kwargs)
        self.template = template

    def qubesdb(self) -> dict[str, str]:
        return {**super().qubesdb(), "/qubes-base-template": self.template.name}

    @property
    def volatile(self) -> Path:
        """This boot's writes to the root volume (gone at the next boot)."""
        return self.dir / "volatile"

    def _root_layers(self) -> tuple[list[Path], Path, Path]:
        # Qubes gives an AppVM the template's root as it is when the AppVM starts; the volatile
        # layer starts empty at every boot.
        snapshot = self.dir / "template-root"
        for path in (snapshot, self.volatile, self.dir / "volatile.work"):
            if path.exists():
                subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=True)
        self.template.root_upper.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-a", str(self.template.root_upper), str(snapshot)], check=True)
        return [snapshot], self.volatile, self.dir / "volatile.work"


def _children(pid: int) -> list[int]:
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    found: list[int] = []
    for task in tasks:
        try:
            found += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
        except OSError:
            pass
    return found


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""
