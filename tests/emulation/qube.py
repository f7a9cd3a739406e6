"""Emulated Qubes qubes for tests: a TemplateVM and template-based AppVMs in Linux namespaces.

Storage follows Qubes (QubesOS/qubes-core-agent-linux v4.2.x: init/setup-rw.sh, vm-systemd/
mount-dirs.sh, vm-systemd/bind-dirs.sh, vm-systemd/qubes-sysinit.sh):

* root volume: an overlayfs over the host's `/` (read-only lower layer). A Template's upper layer
  persists across boots; an AppVM's root is the Template's root (a snapshot of the Template's upper
  layer taken when the AppVM boots) plus a VOLATILE upper layer that shutdown/reboot discards.
* private volume: a per-qube host directory mounted at /rw; /home and /usr/local are bind mounts of
  /rw/home and /rw/usrlocal (Qubes' fstab), so neither is inherited from the Template.
* /run and /tmp are fresh tmpfs per boot; /run/qubes-service/<name> flags come from the qube's
  services (the defaults per qube type, then the `service.<name>` features), QubesDB is
  /run/qubes-emulation/qubesdb.json (read by the emulated qubesdb-read).
* bind-dirs runs at boot in qubes whose persistence is not `full` (AppVMs), after /rw is mounted.
* systemd is the stand-in in systemd_emul.py; at boot, units wanted by the boot targets are started,
  except those the host itself enables (the host's own services are not part of the emulation).
* each qube has its own mount, PID, UTS (hostname = qube name), IPC and (by default) network
  namespace with only `lo`; kernel-wide sysctls and /sys are read-only inside.

Nothing is written to the host's /, /etc, /usr, /var, /opt, /run or /rw: every mount happens in a
private mount namespace; the host only sees the directories under `workdir`.
The repository (read-only) and `shared` directories (read-write) are visible at their host paths.

API (root only; a qube boots on first use):
    tpl = Template("cjdns-gw", workdir, shared=[tmp])          # storage in workdir/cjdns-gw/
    vm = AppVM("sys-cjdns", workdir, tpl, services={"cjdns"}, vm_type="ProxyVM")
    vm.run(argv, env=None, input=None, timeout=120, cwd=None, check=False) -> CompletedProcess
    vm.sh("shell script") ; vm.salt_call(conf_dir, "state.apply", "x") -> (rc, data)
    vm.path("/etc/x")        host path of what the running qube sees at /etc/x
    vm.private_dir           host dir of /rw ; tpl.root_upper: host dir of the template's writes
    vm.testinfra_host()      testinfra Host running inside ; vm.console: boot log
    vm.reboot() ; vm.shutdown() ; vm.cleanup() ; vm.pid (PID 1, e.g. `ip link set X netns PID`)
SaltEnv(...).call(..., runner=vm.run) from tests/support/saltenv.py also works.
"""

from __future__ import annotations

import atexit
import ctypes
import importlib.util
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
BIN_DIR = EMULATION_DIR / "bin"
REPO = EMULATION_DIR.parents[1]
PYTHON = sys.executable
SALT_CALL = Path(sys.executable).with_name("salt-call")
BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "USER": "root",
    "LOGNAME": "root",
    "SHELL": "/bin/bash",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
}
# Default services per qube type: QubesOS/qubes-core-agent-linux:vm-systemd/qubes-sysinit.sh.
_APPVM_SERVICES = ("qubes-update-check", "meminfo-writer", "tracker", "evolution-data-server",
                   "software-rendering")
DEFAULT_SERVICES = {
    "AppVM": _APPVM_SERVICES,
    "ProxyVM": ("qubes-network", "qubes-firewall", "qubes-update-check", "meminfo-writer",
                "software-rendering"),
    "NetVM": ("network-manager", "qubes-network", "qubes-update-check", "qubes-updates-proxy",
              "meminfo-writer", "qubes-firewall", "software-rendering"),
    "TemplateVM": (*_APPVM_SERVICES, "updates-proxy-setup"),
    "DispVM": ("meminfo-writer", "software-rendering"),
}
# The parts of the Qubes agent packages a formula can see in a template's root.
AGENT_LINKS = ("systemctl", "systemd-run", "journalctl", "qubesdb-read", "qubesdb-multiread")
AGENT_DIRS = ("rw", "etc/qubes", "etc/qubes/autostart", "var/lib/qubes", "usr/lib/qubes",
              "usr/share/qubes", "usr/lib/qubes-bind-dirs.d")
AGENT_FILES = {"usr/lib/qubes-bind-dirs.d/30_cron.conf": "binds+=( '/var/spool/cron' )\n"}
BIND_DIRS_VERSIONS = ("4.2", "4.3.19")

# Runs as PID 1 of the qube's namespaces: builds the root, pivots into it, then reaps orphans.
INIT_SCRIPT = r"""
set -euo pipefail
read -r hostpid _ < /proc/self/stat
N="$QUBE_MNT"
# overlayfs refuses a lower layer that lies inside another one ("/"): copy them to a tmpfs.
mount -t tmpfs -o mode=0755 tmpfs "$QUBE_STAGE"
lower=/
layer=0
while IFS= read -r dir; do
    [ -n "$dir" ] || continue
    layer=$((layer + 1))
    mkdir "$QUBE_STAGE/$layer"
    cp -a "$dir/." "$QUBE_STAGE/$layer/"
done <<< "$QUBE_LAYERS"
while [ "$layer" -gt 0 ]; do
    lower="$QUBE_STAGE/$layer:$lower"
    layer=$((layer - 1))
done
mount -t overlay overlay -o "lowerdir=$lower,upperdir=$QUBE_UPPER,workdir=$QUBE_WORK" "$N"
mount -t tmpfs -o mode=0755,nosuid tmpfs "$N/dev"
for dev in null zero full random urandom tty net/tun; do
    [ -e "/dev/$dev" ] || continue
    mkdir -p "$(dirname "$N/dev/$dev")"
    touch "$N/dev/$dev"
    mount --bind "/dev/$dev" "$N/dev/$dev"
done
mkdir "$N/dev/pts" "$N/dev/shm" "$N/dev/mqueue"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$N/dev/pts"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$N/dev/shm"
ln -s pts/ptmx "$N/dev/ptmx"
ln -s /proc/self/fd "$N/dev/fd"
ln -s /proc/self/fd/0 "$N/dev/stdin"
ln -s /proc/self/fd/1 "$N/dev/stdout"
ln -s /proc/self/fd/2 "$N/dev/stderr"
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$N/run"
mount -t tmpfs -o mode=1777,nosuid,nodev,size=1G tmpfs "$N/tmp"
mount --bind "$QUBE_PRIVATE" "$N/rw"
while IFS= read -r path; do
    [ -n "$path" ] || continue
    mkdir -p "$N$path"
    mount --bind "$path" "$N$path"
    mount -o remount,bind,ro "$N$path"
done <<< "$QUBE_RO_BINDS"
while IFS= read -r path; do
    [ -n "$path" ] || continue
    mkdir -p "$N$path"
    mount --bind "$path" "$N$path"
done <<< "$QUBE_RW_BINDS"
mkdir "$N/run/.oldroot"
exec 3> "$QUBE_READY"
cd "$N"
pivot_root . run/.oldroot
cd /
mount -t proc -o nosuid,nodev,noexec proc /proc
umount -l /run/.oldroot
rmdir /run/.oldroot
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs /sys
mount --bind /proc/sys /proc/sys
mount -o remount,bind,ro /proc/sys
if [ "$QUBE_NET" = 1 ]; then
    mount --bind /proc/sys/net /proc/sys/net
    mount -o remount,bind,rw /proc/sys/net
    ip link set lo up
fi
hostname "$QUBE_NAME"
mount --make-rshared /
echo "$hostpid" >&3
exec 3>&-
exec "$QUBE_PYTHON" -I -c '
import os, time
while True:
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(0.1)
'
"""


class QubeError(Exception):
    """The emulated qube could not boot or run something."""


_RUNNING: set["Qube"] = set()


@atexit.register
def _kill_leftovers() -> None:
    """A test that forgot cleanup() must not leave a qube's processes behind."""
    for qube in list(_RUNNING):
        qube._kill()


class Qube:
    """Common parts of Template and AppVM: namespaces, /rw, /run, boot, run, shutdown."""

    klass = ""
    persistence = "full"
    bind_dirs_version = "4.2"

    def __init__(self, name: str, workdir: os.PathLike[str] | str, *,
                 services: Iterable[str] | Mapping[str, bool] = (), vm_type: str = "",
                 shared: Sequence[os.PathLike[str] | str] = (), network: bool = True) -> None:
        self.name = name
        self.dir = Path(workdir).resolve() / name
        self.vm_type = vm_type or self.klass
        if self.vm_type not in DEFAULT_SERVICES:
            raise ValueError(f"unknown qube type {self.vm_type}")
        self.services = dict(services) if isinstance(services, Mapping) else {
            s: True for s in services}
        self.shared = [Path(p).resolve() for p in shared]
        for path in self.shared:
            if not path.is_dir():
                raise ValueError(f"shared path is not a directory: {path}")
        self.network = network
        self.pid: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._pidns = ""
        for sub in ("private", "mnt", "stage"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------ storage
    @property
    def private_dir(self) -> Path:
        """Host directory mounted at /rw in the qube (persistent)."""
        return self.dir / "private"

    @property
    def console(self) -> Path:
        """Boot messages of every boot (init, bind-dirs, unit start-up)."""
        return self.dir / "console.log"

    def _root_layers(self) -> tuple[list[Path], Path, Path]:
        """(layers between the host's / and the upper dir, top first), upper dir, work dir."""
        raise NotImplementedError

    def _qubesdb(self) -> dict[str, str]:
        db = {"/name": self.name, "/type": self.klass, "/qubes-vm-type": self.vm_type,
              "/qubes-vm-persistence": self.persistence,
              "/qubes-vm-updateable": str(self.klass == "TemplateVM"),
              "/default-user": "user"}
        for service, enabled in self.services.items():
            db[f"/qubes-service/{service}"] = "1" if enabled else "0"
        return db

    def _boot_config(self) -> dict[str, Any]:
        return {"name": self.name, "vm_type": self.vm_type, "klass": self.klass,
                "persistence": self.persistence, "qubesdb": self._qubesdb(),
                "default_services": list(DEFAULT_SERVICES[self.vm_type]),
                "bind_dirs_version": self.bind_dirs_version,
                "host_units": host_wanted_units()}

    # ------------------------------------------------------------ life cycle
    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def boot(self) -> None:
        """Start the qube if it is not running (run() does this on demand)."""
        if self.running:
            return
        lowers, upper, work = self._root_layers()
        upper.mkdir(parents=True, exist_ok=True)
        work.mkdir(parents=True, exist_ok=True)
        ready = self.dir / "ready"
        ready.unlink(missing_ok=True)
        ro_binds = sorted({str(REPO), sys.prefix} - {str(p) for p in self.shared})
        env = {
            "PATH": BASE_ENV["PATH"],
            "QUBE_NAME": self.name,
            "QUBE_MNT": str(self.dir / "mnt"),
            "QUBE_LAYERS": "\n".join(str(p) for p in lowers),
            "QUBE_STAGE": str(self.dir / "stage"),
            "QUBE_UPPER": str(upper),
            "QUBE_WORK": str(work),
            "QUBE_PRIVATE": str(self.private_dir),
            "QUBE_READY": str(ready),
            "QUBE_RO_BINDS": "\n".join(ro_binds),
            "QUBE_RW_BINDS": "\n".join(str(p) for p in self.shared),
            "QUBE_NET": "1" if self.network else "0",
            "QUBE_PYTHON": "/usr/bin/python3",
        }
        for path in [self.dir, upper, work]:
            if "," in str(path) or ":" in str(path):
                raise QubeError(f"overlayfs cannot use a path with ',' or ':': {path}")
        flags = ["--mount", "--pid", "--fork", "--kill-child", "--uts", "--ipc",
                 "--propagation", "private"]
        if self.network:
            flags.append("--net")
        with open(self.console, "ab") as console:
            console.write(f"--- boot {self.name} {time.strftime('%H:%M:%S')}\n".encode())
            self._proc = subprocess.Popen(["unshare", *flags, "bash", "-c", INIT_SCRIPT],
                                          env=env, stdin=subprocess.DEVNULL, stdout=console,
                                          stderr=subprocess.STDOUT, start_new_session=True,
                                          preexec_fn=_die_with_parent)
        _RUNNING.add(self)
        try:
            self.pid = self._wait_ready(ready)
            self._pidns = os.readlink(f"/proc/{self.pid}/ns/pid")
            result = self.run([PYTHON, "-I", str(Path(__file__).resolve()), "__boot"],
                              input=json.dumps(self._boot_config()), timeout=120)
        except BaseException:
            self._kill()
            raise
        with open(self.console, "a") as console:
            console.write(result.stdout + result.stderr)
        if result.returncode != 0:
            self._kill()
            raise QubeError(f"{self.name}: boot failed:\n{result.stdout}{result.stderr}")

    def _wait_ready(self, ready: Path) -> int:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            text = ready.read_text().strip() if ready.exists() else ""
            if text:
                return int(text)
            if self._proc is not None and self._proc.poll() is not None:
                break
            time.sleep(0.01)
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        raise QubeError(f"{self.name}: namespace set-up failed:\n{self.console.read_text()}")

    def shutdown(self) -> None:
        """Stop the services (ExecStop=), then end every process of the qube."""
        if not self.running:
            self._kill()
            return
        try:
            self.run(["systemctl", "__shutdown"], timeout=60)
        except (QubeError, subprocess.TimeoutExpired):
            pass
        self._kill()

    def _kill(self) -> None:
        """End every process of the qube: killing its PID 1 makes the kernel end the rest."""
        if self._proc is not None:
            try:
                # unshare reaps its child and exits; without a PID 1 it is killed itself.
                os.kill(self.pid if self.pid is not None else self._proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._proc.wait(timeout=30)
            if self._pidns:
                self._wait_namespace_gone()
        _RUNNING.discard(self)
        self._proc = None
        self.pid = None
        self._pidns = ""

    def _wait_namespace_gone(self) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if not any(_pidns_of(entry) == self._pidns for entry in os.listdir("/proc")
                       if entry.isdigit()):
                return
            time.sleep(0.02)
        raise QubeError(f"{self.name}: processes survived shutdown")

    def reboot(self) -> None:
        self.shutdown()
        self.boot()

    def cleanup(self) -> None:
        """Shut down and delete everything the qube stored (private volume included)."""
        self.shutdown()
        shutil.rmtree(self.dir, ignore_errors=True)

    # ------------------------------------------------------------ inside the qube
    def enter_argv(self) -> list[str]:
        """Command prefix that enters the qube's namespaces (root: nsenter)."""
        self.boot()
        argv = ["nsenter", f"--target={self.pid}", "--mount", "--pid", "--uts", "--ipc",
                "--root", "--wd"]
        if self.network:
            argv.append("--net")
        return [*argv, "--"]

    def run(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
            input: str | None = None, timeout: float = 120, cwd: str | None = None,
            check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run argv as root inside the qube (boots it first if needed)."""
        command = list(argv)
        if cwd:
            command = ["env", f"--chdir={cwd}", *command]
        full_env = {**BASE_ENV, **(env or {})}
        proc = subprocess.Popen([*self.enter_argv(), *command], env=full_env, text=True,
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
        return Path(f"/proc/{self.pid}/root") / path.lstrip("/")

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

    def salt_call(self, conf_dir: os.PathLike[str] | str, *args: str, timeout: float = 300,
                  log_level: str = "quiet") -> tuple[int, Any]:
        """`salt-call --local -c conf_dir --out=json ARGS` in the qube: (rc, data of "local").

        conf_dir and everything the minion config points at must be visible in the qube:
        under the repository or a `shared` directory.
        """
        argv = [str(SALT_CALL), "--local", "-c", str(conf_dir), "--out=json", "-l", log_level,
                "--retcode-passthrough", *args]
        result = self.run(argv, timeout=timeout)
        data = None
        if result.stdout.strip():
            try:
                data = json.loads(result.stdout).get("local")
            except ValueError:
                data = None
        return result.returncode, data


class Template(Qube):
    """A TemplateVM: persistent root (upper layer kept across boots), no bind-dirs."""

    klass = "TemplateVM"
    persistence = "full"

    def __init__(self, name: str, workdir: os.PathLike[str] | str, **kwargs: Any) -> None:
        super().__init__(name, workdir, **kwargs)

    @property
    def root_upper(self) -> Path:
        """Host directory holding everything written to the template's root volume."""
        return self.dir / "root"

    def _root_layers(self) -> tuple[list[Path], Path, Path]:
        return [build_agent_layer(self.dir / "agent")], self.root_upper, self.dir / "root.work"


class AppVM(Qube):
    """A template-based AppVM: volatile root over its Template's root, persistent /rw."""

    klass = "AppVM"
    persistence = "rw-only"

    def __init__(self, name: str, workdir: os.PathLike[str] | str, template: Template,
                 services: Iterable[str] | Mapping[str, bool] = (), *, vm_type: str = "AppVM",
                 bind_dirs_version: str = "4.2", **kwargs: Any) -> None:
        if bind_dirs_version not in BIND_DIRS_VERSIONS:
            raise ValueError(f"bind_dirs_version must be one of {BIND_DIRS_VERSIONS}")
        super().__init__(name, workdir, services=services, vm_type=vm_type, **kwargs)
        self.template = template
        self.bind_dirs_version = bind_dirs_version

    def _qubesdb(self) -> dict[str, str]:
        return {**super()._qubesdb(), "/qubes-base-template": self.template.name}

    def _root_layers(self) -> tuple[list[Path], Path, Path]:
        # Qubes gives an AppVM the template's root as it is when the AppVM starts (the copy is
        # made by the init script); the volatile layer starts empty at every boot.
        for path in (self.dir / "volatile", self.dir / "volatile.work"):
            shutil.rmtree(path, ignore_errors=True)
        self.template.root_upper.mkdir(parents=True, exist_ok=True)
        return ([self.template.root_upper, build_agent_layer(self.dir / "agent")],
                self.dir / "volatile", self.dir / "volatile.work")


def build_agent_layer(agent: Path) -> Path:
    """A read-only layer between the host and the template: what the Qubes agent installs."""
    shutil.rmtree(agent, ignore_errors=True)
    for sub in AGENT_DIRS:
        (agent / sub).mkdir(parents=True, exist_ok=True)
    (agent / "usr/bin").mkdir(parents=True, exist_ok=True)
    for prog in AGENT_LINKS:
        (agent / "usr/bin" / prog).symlink_to(BIN_DIR / prog)
    for rel, text in AGENT_FILES.items():
        (agent / rel).write_text(text)
    return agent


def host_wanted_units() -> list[str]:
    """Units the host's own boot targets want: never started in a qube."""
    module = sys.modules.get("systemd_emul")
    if module is None:
        spec = importlib.util.spec_from_file_location("systemd_emul",
                                                      EMULATION_DIR / "systemd_emul.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["systemd_emul"] = module
        spec.loader.exec_module(module)
    return list(module.wanted_at_boot())


def _die_with_parent() -> None:
    """Even if the test process is killed outright, its qubes go with it (unshare --kill-child)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _pidns_of(pid: str) -> str:
    """The PID namespace of a live process ("" for zombies: they hold no mounts any more)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            if handle.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                return ""
        return os.readlink(f"/proc/{pid}/ns/pid")
    except (OSError, IndexError):
        return ""


# ====================================================================== inside the qube, at boot
# `python qube.py __boot < config.json` runs in the qube's namespaces, in Qubes' boot order:
# qubes-sysinit (service flags), qubes-mount-dirs (/rw, /home, /usr/local, bind-dirs), then units.

class BindDirsAbort(Exception):
    """bind-dirs.sh runs under `bash -e`: the first failing command ends the whole script."""


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()


def _sysinit(config: dict[str, Any]) -> None:
    run = Path("/run")
    for sub in ("qubes", "qubes-service", "qubes-emulation", "systemd/system", "lock", "user"):
        (run / sub).mkdir(parents=True, exist_ok=True)
    (run / "lock").chmod(0o1777)
    if config["vm_type"] != "DispVM":
        _touch(run / "qubes" / f"this-is-{config['vm_type'].lower()}")
    _touch(run / "qubes" / f"persistent-{config['persistence']}")
    for service in config["default_services"]:
        _touch(run / "qubes-service" / service)
    for key, value in config["qubesdb"].items():
        if key.startswith("/qubes-service/"):
            flag = run / "qubes-service" / key.rsplit("/", 1)[1]
            if value == "1":
                _touch(flag)
            else:
                flag.unlink(missing_ok=True)
    (run / "qubes-emulation" / "qubesdb.json").write_text(json.dumps(config["qubesdb"]))
    (run / "qubes-service-environment").write_text("\n")


def _mount_dirs() -> None:
    rw = Path("/rw")
    if not (rw / "config").is_dir():
        print("Virgin boot of the VM: populating /rw/config")
        (rw / "config").mkdir()
        for script in ("rc.local", "qubes-firewall-user-script"):
            (rw / "config" / script).write_text("#!/bin/sh\n")
            (rw / "config" / script).chmod(0o755)
        (rw / "config" / "suspend-module-blacklist").write_text("")
    if not (rw / "usrlocal").is_dir():
        if Path("/usr/local.orig").is_dir():
            subprocess.run(["cp", "-af", "--", "/usr/local.orig", "/rw/usrlocal"], check=True)
        else:
            (rw / "usrlocal").mkdir()
    if not (rw / "home").is_dir():
        (rw / "home").mkdir(mode=0o755)
    import pwd  # noqa: PLC0415
    for entry in pwd.getpwall():
        if entry.pw_dir.startswith("/home/") and not (rw / entry.pw_dir[1:]).is_dir():
            home = rw / entry.pw_dir[1:]
            subprocess.run(["cp", "-a", "/etc/skel", str(home)], check=True)
            subprocess.run(["chown", "-R", f"{entry.pw_uid}:{entry.pw_gid}", str(home)],
                           check=True)
    subprocess.run(["mount", "--bind", "/rw/home", "/home"], check=True)
    subprocess.run(["mount", "--bind", "/rw/usrlocal", "/usr/local"], check=True)
    _touch(Path("/var/lib/qubes/first-boot-completed"))


READ_BINDS = r"""
set -e
shopt -s nullglob dotglob
binds=()
for dir in "$@"; do
    [ -d "$dir" ] || continue
    for conf in "$dir"/*.conf; do
        bash -n "$conf"
        source "$conf"
    done
done
[ "${#binds[@]}" -eq 0 ] || printf '%s\0' "${binds[@]}"
"""


def read_binds(version: str) -> list[str]:
    """The `binds` array after sourcing every drop-in, as bind-dirs.sh builds it."""
    sources = ["/usr/lib/qubes-bind-dirs.d", "/etc/qubes-bind-dirs.d"]
    if version == "4.2" or not Path("/run/qubes-service/custom-persist").exists():
        sources.append("/rw/config/qubes-bind-dirs.d")
    proc = subprocess.run(["bash", "-c", READ_BINDS, "bind-dirs", *sources], capture_output=True)
    if proc.returncode != 0:
        raise BindDirsAbort(proc.stderr.decode(errors="replace").strip() or "sourcing failed")
    return [item.decode() for item in proc.stdout.split(b"\0")[:-1]]


def _rw_path(ro: str, version: str) -> str:
    if version != "4.2" and ro.startswith("/home/"):
        return "/rw" + ro
    if version != "4.2" and ro.startswith("/usr/local/"):
        return "/rw/usrlocal/" + ro[len("/usr/local/"):]
    return "/rw/bind-dirs" + ro


def _must(argv: list[str]) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BindDirsAbort(f"{shlex.join(argv)}: {proc.stderr.strip()}")


def _make_parents(target: str, owner: tuple[int, int]) -> None:
    """v4.3.19+: missing parents are created owned like the /rw copy (mk_parent_dirs)."""
    if os.path.lexists(target):
        return
    _make_parents(os.path.dirname(target), owner)
    try:
        os.mkdir(target)
        os.chown(target, *owner)
    except OSError as exc:
        raise BindDirsAbort(f"mkdir {target!r}: {exc.strerror}") from exc


def bind_one(ro: str, version: str) -> None:
    for _ in range(10):  # symlinks are followed, at most 10 levels
        if not os.path.islink(ro):
            break
        ro = os.path.realpath(ro)
    rw = _rw_path(ro, version)
    subprocess.run(["umount", ro], capture_output=True)
    if os.path.isdir(rw) or os.path.isfile(rw):
        if not os.path.exists(ro):
            # An empty placeholder lets the copy in /rw be mounted where the root has nothing.
            owner = (os.stat(rw).st_uid, os.stat(rw).st_gid)
            if version == "4.2":
                if os.path.isdir(rw):
                    _must(["mkdir", "--parents", ro])
                if os.path.isfile(rw):
                    _must(["touch", ro])
            elif os.path.isdir(rw):
                _make_parents(ro, owner)
            else:
                if not os.path.isdir(os.path.dirname(ro)):
                    _make_parents(os.path.dirname(ro), owner)
                _must(["touch", ro])
    elif os.path.isdir(ro) or os.path.isfile(ro):
        print(f"Initializing {rw} with files from {ro}")
        if version == "4.2":
            _must(["cp", "--archive", "--recursive", "--parents", ro, "/rw/bind-dirs"])
        else:
            os.makedirs(os.path.dirname(rw), exist_ok=True)
            _must(["cp", "--archive", "--recursive", ro, rw])
    else:
        print(f"{ro} is neither a directory nor a file and the path does not exist below /rw, "
              "skipping.")
        return
    print(f"Bind mounting {rw} onto {ro}")
    _must(["mount", "--bind", rw, ro])


def bind_dirs(version: str) -> None:
    try:
        binds = read_binds(version)
        Path("/rw/bind-dirs").mkdir(parents=True, exist_ok=True)
        for ro in binds:
            bind_one(ro, version)
    except BindDirsAbort as exc:
        print(f"bind-dirs: aborted (bash -e): {exc}")


def boot_inside(config: dict[str, Any]) -> int:
    _sysinit(config)
    _mount_dirs()
    if config["persistence"] != "full":
        bind_dirs(config["bind_dirs_version"])
    started = subprocess.run(["systemctl", "__autostart", *config["host_units"]],
                             capture_output=True, text=True)
    sys.stdout.write(started.stdout + started.stderr)
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["__boot"]:
        sys.exit(boot_inside(json.load(sys.stdin)))
    sys.exit(f"usage: {sys.argv[0]} __boot < config.json (inside a qube)")
