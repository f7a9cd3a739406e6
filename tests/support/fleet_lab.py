"""A fleet for tests: one real salt-master and real salt-minion daemons, each minion in its own
booted Debian 13 machine (tests/emulation/qube.py) and network namespace.

    master netns  cjfl<N>-<pid>-m   bridge br0 10.213.N.1/24; salt-master bound there
    member netns  cjfl<N>-<pid>-<i> eth0 10.213.N.(10+i)/24 ==veth== v<i> on br0
                                    the machine boots here (systemd-nspawn --network-namespace-path)

N is unique per running lab (chosen under a lock among the namespaces that exist); nothing is
added to the host's own network namespace. Namespaces left by a lab whose process is gone are
removed (their processes killed) when the next lab starts.

The master runs on the host (`ip netns exec`), with the checkout's Salt venv. Each minion is a
systemd service of its machine's own systemd, running the host's Python 3.11 and the same Salt
venv, both bound read-only into the machine at their host paths (the machines are Debian 13, with
Python 3.13 and no Salt): the venv's bin/ is remade in the machine (its `python` points at the
host's /usr/bin/python3, which is 3.13 there) and its site-packages is the host's. So the
formula's modules run on Python 3.11 in a minion; the node states still install Debian's
packages (apt, from the machines' local repository) for the machine's own Python.

API (root only):
    lab = FleetLab(workdir, minions=["n1", "n2"], ext_pillar=False, reactor=False)
    lab.start()                       # network, master, machines, minions, keys accepted, synced
    lab.salt("*", "test.ping") -> {minion: return}      lab.apply("*", "cjdns.node", test=True)
    lab.salt_run("manage.up") -> return                 lab.keys() -> {"minions": [...], ...}
    lab.add_minion("n3")              # a join: boot, start, accept, sync
    lab.machine("n1") -> Template     lab.address("n1") -> "10.213.N.11"
    lab.set_pillar(pillar, minion=None)   lab.write_fleet(data, key=None)
    lab.master_log, lab.master_cachedir, lab.minion_log("n1"), lab.minion_cachedir("n1")
    with lab.events() as events: ... events.wait("salt/job/*/ret/n1")  # master events, timestamped
    lab.fire_master_event("cjdns/fleet/card", {...})    # an event put on the master's bus
    lab.cleanup()                     # daemons, machines, namespaces; safe after any failure
"""

from __future__ import annotations

import atexit
import fcntl
import fnmatch
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from support.qubes_lab import PILLAR_EXAMPLE, QUBE_PYTHON, Template, deep_merge, make_repo
from support.saltenv import REPO

NS_PREFIX = "cjfl"
SUBNET = "10.213"
LOCK = Path("/run/cjdns-fleet-lab.lock")
FORMULA_PARTS = ("cjdns", "_modules", "_states", "_pillar", "_runners")
SALT_BIN = Path(sys.executable).parent
MINION_UNIT = "salt-minion.service"
READY_TIMEOUT = 90.0
FIND_JOB_AFTER = 20.0
# salt's target-type options (tgt_type= as Salt's Python API spells it).
TARGET_FLAGS = {"list": "-L", "pcre": "-E", "grain": "-G", "pillar": "-I", "compound": "-C",
                "nodegroup": "-N", "ipcidr": "-S"}
# Written into each machine before its first apply: the emulated cjdroute peers over real UDP.
FAKE_PEERING_DROPIN = "[Service]\nEnvironment=CJDNS_FAKE_PEERING=udp\n"


class FleetLabError(Exception):
    """The lab could not be built or a Salt command gave no usable answer."""


# ------------------------------------------------------------------ the host's Python, lent to machines
@dataclass(frozen=True)
class HostPython:
    """The interpreter, standard library and Salt venv this test run uses, as host paths."""

    interpreter: Path
    stdlib: Path
    venv: Path
    site_packages: Path

    @classmethod
    def detect(cls) -> HostPython:
        if sys.prefix == sys.base_prefix:
            raise FleetLabError("the fleet lab lends its Salt venv to the minions: run the tests "
                                "with a venv's Python (make test uses .venv)")
        version = f"python{sys.version_info.major}.{sys.version_info.minor}"
        venv = Path(sys.prefix).resolve()
        return cls(interpreter=Path(sys.base_prefix) / "bin" / version,
                   stdlib=Path(sysconfig.get_paths()["stdlib"]).resolve(),
                   venv=venv,
                   site_packages=Path(sysconfig.get_paths()["purelib"]).resolve())

    def binds(self, shim: Path) -> list[Path | tuple[Path, Path]]:
        """What a machine gets read-only: the venv's skeleton (`shim`) at the venv's path, then
        the host's interpreter, standard library and site-packages at their own paths. A bind,
        not files in the machine's root: systemd-nspawn mounts a tmpfs on /tmp, which would hide
        a venv under /tmp (a CI clone there)."""
        return [(shim, self.venv), self.interpreter, self.stdlib, self.site_packages]

    def install_shim(self, shim: Path) -> None:
        """The venv's skeleton in the host directory `shim`: pyvenv.cfg, bin/python* -> the
        host's interpreter, Salt's scripts, and an empty site-packages that its bind covers."""
        site = shim / self.site_packages.relative_to(self.venv)
        site.mkdir(parents=True, exist_ok=True)
        (shim / "bin").mkdir(parents=True, exist_ok=True)
        shutil.copy(self.venv / "pyvenv.cfg", shim / "pyvenv.cfg")
        for name in ("python", "python3", self.interpreter.name):
            link = shim / "bin" / name
            link.unlink(missing_ok=True)
            link.symlink_to(self.interpreter)
        for script in ("salt-minion", "salt-call"):
            text = (self.venv / "bin" / script).read_text()
            (shim / "bin" / script).write_text(re.sub(r"^#!.*", f"#!{self.venv}/bin/python", text, count=1))
            (shim / "bin" / script).chmod(0o755)


# ------------------------------------------------------------------ network namespaces
def _ip(*argv: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    command = ["ip", "netns", "exec", ns, "ip", *argv] if ns else ["ip", *argv]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise FleetLabError(f"{' '.join(command)}: {result.stderr.strip()}")
    return result


def _namespaces() -> list[str]:
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in listing.splitlines() if line.strip()]


def _delete_namespace(name: str) -> None:
    """Kill what still runs in the namespace (a machine, a master), then delete it."""
    pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    subprocess.run(["ip", "netns", "delete", name], capture_output=True)


class Network:
    """The master's namespace with the bridge, and one namespace per member, wired to it."""

    def __init__(self) -> None:
        self.lab: int = 0
        self.members: dict[int, str] = {}
        with open(LOCK, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.lab = self._free_lab_number()
            self.master_ns = f"{NS_PREFIX}{self.lab}-{os.getpid()}-m"
            _ip("netns", "add", self.master_ns)
        try:
            _ip("link", "set", "lo", "up", ns=self.master_ns)
            _ip("link", "add", "br0", "type", "bridge", ns=self.master_ns)
            _ip("addr", "add", f"{self.master_address}/24", "dev", "br0", ns=self.master_ns)
            _ip("link", "set", "br0", "up", ns=self.master_ns)
        except BaseException:
            _delete_namespace(self.master_ns)
            raise

    @staticmethod
    def _free_lab_number() -> int:
        """The lowest N no live lab uses; namespaces of labs whose process is gone are removed."""
        used = set()
        for name in _namespaces():
            match = re.fullmatch(rf"{NS_PREFIX}(\d+)-(\d+)-\w+", name)
            if not match:
                continue
            if Path(f"/proc/{match[2]}").exists():
                used.add(int(match[1]))
            else:
                _delete_namespace(name)
        free = [n for n in range(1, 255) if n not in used]
        if not free:
            raise FleetLabError("no free 10.213.N.0/24: 254 fleet labs are running")
        return free[0]

    @property
    def master_address(self) -> str:
        return f"{SUBNET}.{self.lab}.1"

    def address(self, index: int) -> str:
        return f"{SUBNET}.{self.lab}.{10 + index}"

    def add_member(self, index: int) -> str:
        """A namespace whose eth0 has the member's address, its veth peer on the bridge."""
        ns = f"{NS_PREFIX}{self.lab}-{os.getpid()}-{index}"
        _ip("netns", "add", ns)
        self.members[index] = ns
        _ip("link", "add", f"v{index}", "netns", self.master_ns, "type", "veth",
            "peer", "name", "eth0", "netns", ns)
        _ip("link", "set", f"v{index}", "master", "br0", "up", ns=self.master_ns)
        _ip("link", "set", "lo", "up", ns=ns)
        _ip("addr", "add", f"{self.address(index)}/24", "dev", "eth0", ns=ns)
        _ip("link", "set", "eth0", "up", ns=ns)
        return ns

    def destroy(self) -> None:
        for ns in [*self.members.values(), self.master_ns]:
            _delete_namespace(ns)
        self.members.clear()


# ------------------------------------------------------------------ master events
@dataclass
class Event:
    received: float  # time.time() when the listener read it
    tag: str
    data: dict[str, Any]


@dataclass
class EventListener:
    """`salt-run state.event` on the master's bus, read by a thread; events kept in order."""

    process: subprocess.Popen[str]
    events: list[Event] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def start_reading(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            tag, _, body = line.rstrip("\n").partition("\t")
            try:
                data = json.loads(body) if body else {}
            except ValueError:
                data = {"raw": body}
            with self._cond:
                self.events.append(Event(time.time(), tag, data))
                self._cond.notify_all()

    def wait(self, tag: str, timeout: float = 30.0, since: int = 0, where: Any = None) -> Event:
        """The first event at index >= since whose tag matches the glob (and `where(data)`)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for event in self.events[since:]:
                    if fnmatch.fnmatchcase(event.tag, tag) and (where is None or where(event.data)):
                        return event
                left = deadline - time.monotonic()
                if left <= 0 or self.process.poll() is not None:
                    raise FleetLabError(f"no master event {tag!r} within {timeout:.0f} s; saw "
                                        f"{[e.tag for e in self.events[since:]][-20:]}")
                self._cond.wait(left)

    def matching(self, tag: str) -> list[Event]:
        with self._cond:
            return [e for e in self.events if fnmatch.fnmatchcase(e.tag, tag)]

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)


# ------------------------------------------------------------------ the lab
@dataclass
class Member:
    name: str
    index: int
    netns: str
    machine: Template


_LABS: set[FleetLab] = set()


@atexit.register
def _cleanup_leftovers() -> None:
    """A test that forgot cleanup() must not leave a master, machines or namespaces behind."""
    for lab in list(_LABS):
        lab.cleanup()


class FleetLab:
    """A salt-master and one booted machine per minion, under workdir; see the module docstring."""

    def __init__(self, workdir: Path, minions: Sequence[str] = ("n1", "n2", "n3", "n4", "n5"),
                 ext_pillar: bool = False, reactor: bool = False, pillar: dict | None = None,
                 master_opts: dict | None = None) -> None:
        self.dir = Path(workdir).resolve()
        self.initial = list(minions)
        self.ext_pillar = ext_pillar
        self.reactor = reactor
        self.master_opts = dict(master_opts or {})
        self.host_python = HostPython.detect()
        self.members: dict[str, Member] = {}
        self.network: Network | None = None
        self._master: subprocess.Popen[bytes] | None = None
        self.timings: dict[str, float] = {}
        for sub in ("master/conf", "master/root", "master/pillar", "machines", "upstream", "fleet"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.repo = make_repo(self.dir / "upstream" / "cjdns", python=QUBE_PYTHON)
        self.pillar = deep_merge(PILLAR_EXAMPLE, {"cjdns": {"install": {"source": {
            "repo": f"file://{self.repo}", "proxy": "", "build_deps": ["git"]}}}})
        self.pillar = deep_merge(self.pillar, pillar or {})
        self._minion_pillars: dict[str, dict] = {}
        self._write_formula_dir()
        self._write_pillar()

    # -------------------------------------------------------------- paths
    @property
    def master_conf(self) -> Path:
        return self.dir / "master" / "conf"

    @property
    def master_root(self) -> Path:
        return self.dir / "master" / "root"

    @property
    def master_log(self) -> Path:
        return self.master_root / "var/log/salt/master"

    @property
    def master_cachedir(self) -> Path:
        return self.master_root / "var/cache/salt/master"

    @property
    def pillar_dir(self) -> Path:
        return self.dir / "master" / "pillar"

    @property
    def fleet_file(self) -> Path:
        return self.dir / "fleet" / "fleet.yaml"

    @property
    def fleet_key(self) -> Path:
        return self.dir / "fleet" / "fleet.key"

    def machine(self, name: str) -> Template:
        return self.members[name].machine

    def address(self, name: str) -> str:
        assert self.network is not None
        return self.network.address(self.members[name].index)

    @property
    def master_address(self) -> str:
        assert self.network is not None
        return self.network.master_address

    def minion_log(self, name: str) -> Path:
        """The minion's log file as the host sees it (the machine's root layer: also when halted)."""
        return self.machine(name).root_upper / "var/log/salt/minion"

    def minion_cachedir(self, name: str) -> Path:
        return self.machine(name).root_upper / "var/cache/salt/minion"

    @property
    def ports(self) -> tuple[int, int]:
        """(publish_port, ret_port): per lab, though each master has a namespace of its own."""
        assert self.network is not None
        return 41000 + 2 * self.network.lab, 41001 + 2 * self.network.lab

    # -------------------------------------------------------------- configuration
    def _write_formula_dir(self) -> None:
        """file_roots: the formula as a user installs it (symlinks to the checkout's parts;
        an empty directory for a part the checkout does not have yet)."""
        formula = self.dir / "master" / "formula"
        formula.mkdir(exist_ok=True)
        for part in FORMULA_PARTS:
            target = formula / part
            if target.exists() or target.is_symlink():
                continue
            if (REPO / part).is_dir():
                target.symlink_to(REPO / part)
            else:
                target.mkdir()

    def master_config(self) -> dict[str, Any]:
        """The master's whole configuration (fleet tests extend it with master_opts)."""
        assert self.network is not None
        publish_port, ret_port = self.ports
        config: dict[str, Any] = {
            "id": "fleet-master",
            "user": "root",
            "interface": self.network.master_address,
            "publish_port": publish_port,
            "ret_port": ret_port,
            "root_dir": str(self.master_root),
            "file_roots": {"base": [str(self.dir / "master" / "formula")]},
            "pillar_roots": {"base": [str(self.pillar_dir)]},
            "auto_accept": False,
            "minion_data_cache": True,
            "worker_threads": 2,
            "reactor_worker_threads": 2,
            "log_level": "warning",
            "log_level_logfile": "debug",
            "enable_fqdns_grains": False,
            "fileserver_backend": ["roots"],
        }
        if self.ext_pillar:
            config["ext_pillar"] = [{"cjdns_fleet": {"fleet_file": str(self.fleet_file),
                                                     "key_file": str(self.fleet_key)}}]
        if self.reactor:
            config["reactor"] = [{"cjdns/fleet/card": ["salt://cjdns/fleet/reactor.sls"]}]
        config.update(self.master_opts)
        return config

    def minion_config(self, name: str) -> dict[str, Any]:
        assert self.network is not None
        publish_port, ret_port = self.ports
        return {
            "id": name,
            "master": self.network.master_address,
            "publish_port": publish_port,
            "master_port": ret_port,
            "log_level": "warning",
            "log_level_logfile": "debug",
            "acceptance_wait_time": 1,
            "acceptance_wait_time_max": 1,
            "random_reauth_delay": 0,
            "enable_fqdns_grains": False,
            "ipv6": False,
        }

    def _write_pillar(self) -> None:
        top: dict[str, list[str]] = {"*": ["lab"]}
        (self.pillar_dir / "lab.sls").write_text(yaml.safe_dump(self.pillar))
        for old in self.pillar_dir.glob("lab-*.sls"):
            old.unlink()
        for name, pillar in self._minion_pillars.items():
            (self.pillar_dir / f"lab-{name}.sls").write_text(yaml.safe_dump(pillar))
            top[name] = [f"lab-{name}"]
        (self.pillar_dir / "top.sls").write_text(yaml.safe_dump({"base": top}))

    def set_pillar(self, pillar: dict, minion: str | None = None) -> None:
        """Replace the pillar every minion gets, or (minion=) one minion's additions to it."""
        if minion is None:
            self.pillar = pillar
        else:
            self._minion_pillars[minion] = pillar
        self._write_pillar()

    def write_fleet(self, data: dict, key: str | bytes | None = None) -> None:
        """The ext_pillar's fleet file (YAML), and its key file (0600) when given."""
        self.fleet_file.write_text(yaml.safe_dump(data))
        if key is not None:
            self.fleet_key.touch(mode=0o600)
            self.fleet_key.chmod(0o600)
            if isinstance(key, str):
                self.fleet_key.write_text(key)
            else:
                self.fleet_key.write_bytes(key)

    # -------------------------------------------------------------- life cycle
    def start(self) -> None:
        """Network, master, every initial minion booted, its key accepted, the formula synced."""
        _LABS.add(self)
        started = time.monotonic()
        try:
            self.network = Network()
            self.start_master()
            self.timings["master"] = time.monotonic() - started
            self._boot_members(self.initial)
            self.timings["machines"] = time.monotonic() - started
            self.accept(self.initial)
            self.wait_responding(self.initial)
            self.timings["responding"] = time.monotonic() - started
            self.salt(self._list(self.initial), "saltutil.sync_all", tgt_type="list", timeout=120)
            self.timings["ready"] = time.monotonic() - started
            (self.dir / "timings.json").write_text(json.dumps(self.timings))
        except BaseException:
            self.cleanup()
            raise

    def add_minion(self, name: str) -> None:
        """A member joins: its machine boots, its minion starts, its key is accepted, synced."""
        self._boot_members([name])
        self.accept([name])
        self.wait_responding([name])
        self.salt(name, "saltutil.sync_all", timeout=120)

    def start_master(self) -> None:
        """Write the configuration and start salt-master in its namespace (the formula's
        _pillar and _runners synced into its extension_modules before the first start)."""
        (self.master_conf / "master").write_text(yaml.safe_dump(self.master_config()))
        if not (self.master_cachedir / "extmods").is_dir():
            self.sync_master()
        console = open(self.dir / "master" / "console.log", "ab")
        self._master = subprocess.Popen(
            self._in_master_ns("salt-master", "-c", str(self.master_conf)),
            stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT, start_new_session=True)
        console.close()
        _, ret_port = self.ports
        self._wait(lambda: self._listening(ret_port), f"salt-master listening on {ret_port}",
                   log=self.dir / "master" / "console.log")

    def sync_master(self) -> Any:
        """`salt-run saltutil.sync_all`: the formula's _modules, _states, _pillar and _runners
        into the master's extension_modules (what a user runs after installing the formula)."""
        return self.salt_run("saltutil.sync_all")

    def stop_master(self) -> None:
        if self._master is None:
            return
        if self._master.poll() is None:
            os.killpg(self._master.pid, signal.SIGTERM)
            try:
                self._master.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self._master.pid, signal.SIGKILL)  # the master's own children, if any stayed
        except ProcessLookupError:
            pass
        self._master.wait(timeout=10)
        self._master = None

    def restart_master(self) -> None:
        """Stop, rewrite the configuration (after a change of master_opts, ext_pillar or
        reactor), start, and wait until every minion answers again (they re-authenticate)."""
        self.stop_master()
        self.start_master()
        self.wait_responding(list(self.members))

    def _listening(self, port: int) -> bool:
        assert self.network is not None
        out = subprocess.run(["ip", "netns", "exec", self.network.master_ns, "ss", "-Hltn", f"sport = :{port}"],
                             capture_output=True, text=True).stdout
        return bool(out.strip())

    def _boot_members(self, names: Sequence[str]) -> None:
        """Wire and prepare each machine, then boot them all at once (boots wait on systemd)."""
        assert self.network is not None
        for name in names:
            if name in self.members:
                raise FleetLabError(f"minion {name!r} is already in the lab")
            index = max((m.index for m in self.members.values()), default=0) + 1
            netns = self.network.add_member(index)
            shim = self.dir / "venv-shim"
            if not shim.exists():
                self.host_python.install_shim(shim)
            machine = Template(name, self.dir / "machines", netns=netns, shared=[self.dir / "upstream"],
                               shared_ro=self.host_python.binds(shim))
            self.members[name] = Member(name, index, netns, machine)
            self._prepare_root(name, machine.root_upper)
        with ThreadPoolExecutor(len(names)) as pool:
            for future in [pool.submit(self.machine(n).boot) for n in names]:
                future.result()

    def _prepare_root(self, name: str, root: Path) -> None:
        """What the machine has before its first boot: the minion's configuration and unit
        (enabled), and the fake-peering drop-in for cjdns.service."""
        etc = root / "etc"
        (etc / "salt").mkdir(parents=True, exist_ok=True)
        (etc / "salt/minion").write_text(yaml.safe_dump(self.minion_config(name)))
        unit = etc / "systemd/system" / MINION_UNIT
        unit.parent.mkdir(parents=True, exist_ok=True)
        unit.write_text(
            "[Unit]\nDescription=Salt minion (fleet lab: the host's Python and Salt venv, read-only)\n"
            "After=network.target\n\n[Service]\n"
            # No keep-alive parent (systemd restarts it): one Python process less per machine,
            # and it stops in 5 s instead of 9.
            f"ExecStart={self.host_python.venv}/bin/salt-minion -c /etc/salt --disable-keepalive\n"
            "KillMode=process\nRestart=on-failure\nRestartSec=1\n\n"
            "[Install]\nWantedBy=multi-user.target\n")
        wants = etc / "systemd/system/multi-user.target.wants"
        wants.mkdir(parents=True, exist_ok=True)
        if not (wants / MINION_UNIT).is_symlink():
            (wants / MINION_UNIT).symlink_to(f"/etc/systemd/system/{MINION_UNIT}")
        dropin = etc / "systemd/system/cjdns.service.d"
        dropin.mkdir(parents=True, exist_ok=True)
        (dropin / "fake-peering.conf").write_text(FAKE_PEERING_DROPIN)

    def accept(self, names: Sequence[str], timeout: float = READY_TIMEOUT) -> None:
        """Accept each minion's key once it is pending, and only if it is the key that minion
        holds (compared with its machine's minion.pub, as a careful admin compares fingerprints)."""
        pending = self.master_root / "etc/salt/pki/master/minions_pre"
        self._wait(lambda: all((pending / n).exists() for n in names), f"pending keys of {list(names)}",
                   timeout=timeout)
        for name in names:
            own = self.machine(name).root_upper / "etc/salt/pki/minion/minion.pub"
            if (pending / name).read_text().strip() != own.read_text().strip():
                raise FleetLabError(f"{name}: the pending key is not the key of its machine")
        self.salt_key("-y", "-a", ",".join(names))

    def wait_responding(self, names: Sequence[str], timeout: float = READY_TIMEOUT) -> None:
        """Until every named minion has answered a test.ping through the master. Pings go out
        (`salt --async`) every few seconds to those not heard yet; their returns are read on the
        master's event bus (salt's CLI would wait for stragglers for its gather_job_timeout)."""
        import salt.utils.event  # noqa: PLC0415

        opts = self._master_opts()
        missing = set(names)
        deadline = time.monotonic() + timeout
        with salt.utils.event.get_master_event(opts, opts["sock_dir"], listen=True) as bus:
            while missing:
                if time.monotonic() > deadline:
                    raise FleetLabError(f"no test.ping answer from {sorted(missing)} in {timeout:.0f} s")
                self._master_cli("salt", "--async", "-L", self._list(sorted(missing)), "test.ping", timeout=60)
                round_end = time.monotonic() + 3
                while missing and time.monotonic() < round_end:
                    event = bus.get_event(wait=0.5, tag="salt/job/", full=True)
                    data = event["data"] if event else {}
                    if data.get("fun") == "test.ping" and data.get("return") is True:
                        missing.discard(data.get("id"))

    def cleanup(self) -> None:
        """Power the machines off (all at once: a minion takes seconds to stop), stop the
        master, delete the namespaces. Idempotent; each step runs even if one before failed."""
        try:
            if self.members:
                with ThreadPoolExecutor(len(self.members)) as pool:
                    for future in [pool.submit(m.machine.shutdown) for m in self.members.values()]:
                        future.exception()
        finally:
            try:
                self.stop_master()
            finally:
                if self.network is not None:
                    self.network.destroy()
                _LABS.discard(self)

    # -------------------------------------------------------------- Salt commands on the master
    def _in_master_ns(self, script: str, *args: str) -> list[str]:
        assert self.network is not None
        return ["ip", "netns", "exec", self.network.master_ns, str(SALT_BIN / script), *args]

    def _master_cli(self, script: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        argv = self._in_master_ns(script, "-c", str(self.master_conf), *args)
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)

    def salt(self, target: str, fun: str, *args: str, tgt_type: str = "glob", timeout: float = 60,
             check: bool = True) -> dict[str, Any]:
        """`salt --static --out=json TARGET FUN ARGS` -> {minion: return}. check: salt's exit
        status must be 0 (it is not when a minion did not answer or its function failed)."""
        select = [] if tgt_type == "glob" else [TARGET_FLAGS[tgt_type]]
        # salt's --timeout is how long it waits before asking the minions that have not
        # returned whether they still run the job (find_job); it waits on while they do.
        proc = self._master_cli("salt", "--show-jid", "--timeout", str(int(min(timeout, FIND_JOB_AFTER))),
                                "--static", "--out=json", "-l", "quiet", *select, target, fun, *args,
                                timeout=timeout + 60)
        jid, _, rest = proc.stdout.partition("\n") if proc.stdout.startswith("jid: ") else ("", "", proc.stdout)
        data = _json(subprocess.CompletedProcess(proc.args, proc.returncode, rest, proc.stderr), f"salt {target} {fun}")
        data = data if isinstance(data, dict) else {}
        # Salt 3007's CLI sometimes misses a return event on the master's bus that the master
        # has stored (seen here under load): such a minion "did not return"; its return is in
        # the job cache.
        lost = [m for m, v in data.items() if isinstance(v, str) and v.startswith("Minion did not return")]
        recovered = False
        if lost and jid:
            cached = self.salt_run("jobs.lookup_jid", jid.removeprefix("jid: ").strip())
            found = [m for m in lost if isinstance(cached, dict) and m in cached]
            data.update({m: cached[m] for m in found})
            recovered, lost = bool(found), [m for m in lost if m not in found]
        # The exit status says nothing once returns came from the job cache: callers check them.
        if check and proc.returncode != 0 and (lost or not recovered):
            raise FleetLabError(f"salt {target} {fun} exited {proc.returncode}:\n{proc.stdout[-4000:]}"
                                f"{proc.stderr[-2000:]}")
        return data

    def apply(self, target: str, sls: str, tgt_type: str = "glob", timeout: float = 600,
              check: bool = False, **kwargs: Any) -> dict[str, Any]:
        """state.apply SLS on the target -> {minion: {state id: state return}} (or the error
        text a minion returned). kwargs become key=value arguments (test=True, pillar=...)."""
        args = [f"{key}={json.dumps(value)}" for key, value in kwargs.items()]
        return self.salt(target, "state.apply", sls, *args, tgt_type=tgt_type, timeout=timeout, check=check)

    def salt_run(self, fun: str, *args: str, timeout: float = 120) -> Any:
        """`salt-run --out=json FUN ARGS` -> its return."""
        proc = self._master_cli("salt-run", "--out=json", "-l", "quiet", fun, *args, timeout=timeout)
        if proc.returncode != 0:
            raise FleetLabError(f"salt-run {fun} exited {proc.returncode}:\n{proc.stdout[-4000:]}"
                                f"{proc.stderr[-2000:]}")
        return _json(proc, f"salt-run {fun}")

    def salt_key(self, *args: str) -> str:
        """`salt-key ARGS` -> its output (text: its actions print more than their --out)."""
        proc = self._master_cli("salt-key", *args, timeout=60)
        if proc.returncode != 0:
            raise FleetLabError(f"salt-key {' '.join(args)} exited {proc.returncode}: {proc.stderr[-2000:]}")
        return proc.stdout

    def keys(self) -> dict[str, list[str]]:
        """`salt-key -L`: {"minions": [...], "minions_pre": [...], "minions_rejected": ..., ...}."""
        proc = self._master_cli("salt-key", "-L", "--out=json", timeout=60)
        return _json(proc, "salt-key -L")

    @contextmanager
    def events(self) -> Iterator[EventListener]:
        """Every event on the master's bus while the block runs, with the time each arrived.
        Ready when entered: a marker event fired through the master is seen first."""
        argv = self._in_master_ns("salt-run", "-c", str(self.master_conf), "-l", "quiet",
                                  "state.event", "count=-1", "pretty=False")
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL, text=True, bufsize=1, start_new_session=True)
        listener = EventListener(process)
        listener.start_reading()
        try:
            marker = f"fleet-lab/listener/{time.monotonic_ns()}"
            self._wait(lambda: self._fire_and_see(listener, marker), "the event listener to start", timeout=60)
            yield listener
        finally:
            listener.stop()

    def fire_master_event(self, tag: str, data: dict | None = None) -> None:
        """Put an event on the master's bus (its local IPC socket), as the master itself would."""
        import salt.utils.event  # noqa: PLC0415 (Salt is imported only by tests that use the lab)

        opts = self._master_opts()
        with salt.utils.event.get_master_event(opts, opts["sock_dir"], listen=False) as bus:
            if not bus.fire_event(data or {}, tag):
                raise FleetLabError(f"the master's event bus did not take {tag!r}")

    def _master_opts(self) -> dict[str, Any]:
        import salt.config  # noqa: PLC0415

        return salt.config.master_config(str(self.master_conf / "master"))

    def _fire_and_see(self, listener: EventListener, marker: str) -> bool:
        self.fire_master_event(marker)
        try:
            listener.wait(marker, timeout=3)
            return True
        except FleetLabError:
            return False

    # -------------------------------------------------------------- helpers
    @staticmethod
    def _list(names: Sequence[str]) -> str:
        return ",".join(names)

    @staticmethod
    def _wait(ready: Any, what: str, timeout: float = READY_TIMEOUT, log: Path | None = None) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline:
                tail = log.read_text()[-3000:] if log and log.exists() else ""
                raise FleetLabError(f"timed out after {timeout:.0f} s waiting for {what}\n{tail}")
            time.sleep(0.2)


def _json(proc: subprocess.CompletedProcess[str], what: str) -> Any:
    try:
        return json.loads(proc.stdout)
    except ValueError:
        raise FleetLabError(f"{what}: no JSON (exit {proc.returncode}):\n{proc.stdout[-3000:]}"
                            f"{proc.stderr[-3000:]}") from None


def udp_exchange(sender: Template, receiver: Template, address: str, port: int = 47999,
                 payload: str = "fleet-lab-datagram", timeout: float = 10.0) -> dict[str, str]:
    """Send one UDP datagram from `sender` to `address`:port (the receiver's), which echoes it
    back. Returns {"received": payload as the receiver saw it, "from": sender's address as the
    receiver saw it, "echo": what came back to the sender}."""
    server = subprocess.Popen(
        [*receiver.enter_argv(), "/usr/bin/python3", "-c", UDP_ECHO_ONCE, str(port), str(timeout)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != "READY":
            raise FleetLabError(f"UDP receiver did not start: {server.stderr.read() if server.stderr else ''}")
        sent = sender.run(["/usr/bin/python3", "-c", UDP_SEND, address, str(port), payload, str(timeout)],
                          timeout=timeout + 10)
        out, err = server.communicate(timeout=timeout + 10)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    if sent.returncode != 0 or server.returncode != 0:
        raise FleetLabError(f"UDP exchange failed: sender {sent.returncode} {sent.stderr.strip()}; "
                            f"receiver {server.returncode} {err.strip()}")
    received = json.loads(out)
    return {"received": received["data"], "from": received["from"], "echo": sent.stdout.strip()}


UDP_ECHO_ONCE = r"""
import json, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.settimeout(float(sys.argv[2]))
print("READY", flush=True)
data, peer = s.recvfrom(2048)
s.sendto(data, peer)
print(json.dumps({"data": data.decode(), "from": peer[0]}))
"""

UDP_SEND = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(float(sys.argv[4]))
s.sendto(sys.argv[3].encode(), (sys.argv[1], int(sys.argv[2])))
print(s.recv(2048).decode())
"""
