"""A small systemd stand-in for emulated Qubes qubes (tests only; see qube.py).

Runs *inside* a qube's namespaces, where qube.py links it over /usr/bin/systemctl,
/usr/bin/systemd-run and /usr/bin/journalctl. It covers what Salt's systemd_service module and
testinfra call, and the parts of systemd a cjdns unit depends on:

* unit files from /etc, /run, /usr/local/lib, /lib systemd dirs, drop-ins `<unit>.d/*.conf`,
  masks (`-> /dev/null`), enable/disable symlinks in `<target>.wants/`;
* `start` honours Condition*= (an unmet condition skips the unit: exit 0, unit stays inactive),
  runs ExecStartPre= and ExecStart= (prefix `-` ignores failure, `StandardInput=file:`),
  Type=simple|exec|notify|oneshot|forking, Restart=, RestartSec=, start rate limiting,
  ProtectSystem=true|full, ProtectHome=, PrivateTmp= (own mount namespace per service);
* a started service is watched by a detached supervisor process; its state lives in
  /run/systemd-emul (a tmpfs in the qube, so it is gone after a reboot, like systemd's memory);
* an active unit keeps the definition it was started with until `daemon-reload`, and `status`
  then warns that the unit file changed on disk, as systemd does.

Not emulated: dependencies and ordering (Wants=/After= are ignored by `start`), sockets, timers,
D-Bus, cgroups (a service's processes are tracked by process group), user units.
"""

from __future__ import annotations

import ctypes
import fcntl
import fnmatch
import glob
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

UNIT_DIRS = (
    "/etc/systemd/system",
    "/run/systemd/system",
    "/usr/local/lib/systemd/system",
    "/lib/systemd/system",
    "/usr/lib/systemd/system",
)
CONFIG_DIR = "/etc/systemd/system"
RUNTIME_DIR = "/run/systemd/system"
UNIT_SUFFIXES = (".service", ".socket", ".device", ".mount", ".automount", ".swap", ".target",
                 ".path", ".timer", ".slice", ".scope")
EMUL_DIR = Path("/run/systemd-emul")
STATE_DIR = EMUL_DIR / "state"
LOCK_DIR = EMUL_DIR / "lock"
JOURNAL_DIR = EMUL_DIR / "journal"
SERVICE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
VERSION_TEXT = (
    "systemd 252 (252.38-1~deb12u1)\n"
    "+PAM +AUDIT +SELINUX +APPARMOR +IMA +SMACK +SECCOMP +GCRYPT -GNUTLS +OPENSSL +ACL +BLKID "
    "+CURL +ELFUTILS +FIDO2 +IDN2 -IDN +IPTC +KMOD +LIBCRYPTSETUP +LIBFDISK +PCRE2 -PWQUALITY "
    "+P11KIT +QRENCODE +TPM2 +BZIP2 +LZ4 +XZ +ZLIB +ZSTD -BPF_FRAMEWORK -XKBCOMMON +UTMP +SYSVINIT "
    "default-hierarchy=unified\n"
)
# Targets a booted qube reaches; units wanted by them are started at boot.
BOOT_TARGETS = ("sysinit.target", "basic.target", "network-pre.target", "network.target",
                "network-online.target", "multi-user.target", "default.target")
CLEAN_SIGNALS = {signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE}
DEFAULT_STOP_TIMEOUT = 10.0  # systemd's default is 90 s; tests should not wait that long
CLONE_NEWNS = 0x00020000


class EmulationError(Exception):
    """Something a real systemd would do that this stand-in does not."""


# ---------------------------------------------------------------- unit files

def canonical(name: str) -> str:
    return name if name.endswith(UNIT_SUFFIXES) else f"{name}.service"


def _template_name(name: str) -> str | None:
    prefix, at, rest = name.partition("@")
    if not at or not rest or rest.startswith("."):
        return None
    return f"{prefix}@{rest[rest.rfind('.'):]}"


@dataclass
class Unit:
    name: str
    fragment: str | None = None
    dropins: list[str] = field(default_factory=list)
    sections: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    masked: bool = False
    fingerprint: dict[str, int] = field(default_factory=dict)

    def get(self, section: str, key: str, default: str = "") -> str:
        values = self.sections.get(section, {}).get(key, [])
        return values[-1] if values else default

    def getall(self, section: str, key: str) -> list[str]:
        return list(self.sections.get(section, {}).get(key, []))

    def words(self, section: str, key: str) -> list[str]:
        return [word for value in self.getall(section, key) for word in value.split()]

    def flag(self, section: str, key: str, default: bool = False) -> bool:
        value = self.get(section, key)
        return default if not value else value.lower() in ("1", "yes", "true", "on")

    @property
    def description(self) -> str:
        return self.get("Unit", "Description", self.name)

    @property
    def kind(self) -> str:
        return self.name.rsplit(".", 1)[-1]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "fragment": self.fragment, "dropins": self.dropins,
                "sections": self.sections, "masked": self.masked, "fingerprint": self.fingerprint}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Unit":
        return cls(**data)


def _logical_lines(text: str) -> Iterator[str]:
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if pending and stripped[:1] in ("#", ";"):
            continue  # comments inside a continuation are skipped, as systemd does
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        yield pending + stripped
        pending = ""
    if pending:
        yield pending


def parse_unit_text(text: str, sections: dict[str, dict[str, list[str]]]) -> None:
    """Merge one unit file or drop-in into `sections`; an empty assignment resets a key."""
    section = ""
    for line in _logical_lines(text):
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        if not sep:
            continue
        values = sections.setdefault(section, {}).setdefault(key.strip(), [])
        value = value.strip()
        if value:
            values.append(value)
        else:
            values.clear()


def _mtime(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return -1


def find_fragment(name: str) -> tuple[str | None, bool]:
    """(path of the unit file, masked?) for `name`; (None, False) when there is none."""
    candidates = [name]
    template = _template_name(name)
    if template:
        candidates.append(template)
    for candidate in candidates:
        for directory in UNIT_DIRS:
            path = os.path.join(directory, candidate)
            if os.path.islink(path) and os.readlink(path) == "/dev/null":
                return path, True
            if os.path.isfile(path):
                return path, os.path.realpath(path) == "/dev/null" or (
                    os.path.getsize(path) == 0 and directory == CONFIG_DIR)
    return None, False


def find_dropins(name: str) -> list[str]:
    names = [name]
    template = _template_name(name)
    if template:
        names.insert(0, template)
    chosen: dict[str, str] = {}
    for unit_name in names:
        for directory in UNIT_DIRS:
            for path in sorted(glob.glob(os.path.join(directory, f"{unit_name}.d", "*.conf"))):
                chosen.setdefault(os.path.basename(path), path)
    return [chosen[key] for key in sorted(chosen)]


def load_unit(name: str) -> Unit | None:
    name = canonical(name)
    fragment, masked = find_fragment(name)
    if fragment is None:
        return None
    unit = Unit(name=name, fragment=fragment, masked=masked)
    if masked:
        return unit
    dropins = find_dropins(name)
    unit.dropins = dropins
    for path in [fragment, *dropins]:
        parse_unit_text(Path(path).read_text(), unit.sections)
        unit.fingerprint[path] = _mtime(path)
    for directory in UNIT_DIRS:
        dropin_dir = os.path.join(directory, f"{name}.d")
        unit.fingerprint[dropin_dir] = _mtime(dropin_dir)
    return unit


def changed_on_disk(unit: Unit) -> bool:
    fresh = load_unit(unit.name)
    return fresh is None or fresh.fingerprint != unit.fingerprint


def all_unit_files() -> dict[str, str]:
    found: dict[str, str] = {}
    for directory in UNIT_DIRS:
        try:
            entries = sorted(os.listdir(directory))
        except OSError:
            continue
        for entry in entries:
            path = os.path.join(directory, entry)
            if entry.endswith(UNIT_SUFFIXES) and not os.path.isdir(path):
                found.setdefault(entry, path)
    return found


# ---------------------------------------------------------------- enablement

def _install_links(name: str, dirs: tuple[str, ...] = (CONFIG_DIR, RUNTIME_DIR)) -> list[str]:
    links = []
    for directory in dirs:
        for path in glob.glob(os.path.join(directory, "*.wants", name)) + glob.glob(
                os.path.join(directory, "*.requires", name)):
            if os.path.islink(path):
                links.append(path)
    return links


def _alias_links(unit: Unit) -> list[str]:
    links = []
    for alias in unit.words("Install", "Alias"):
        path = os.path.join(CONFIG_DIR, alias)
        if os.path.islink(path):
            links.append(path)
    return links


def enablement(name: str) -> str:
    name = canonical(name)
    fragment, masked = find_fragment(name)
    if fragment is None:
        return "not-found"
    if masked:
        return "masked-runtime" if fragment.startswith(RUNTIME_DIR) else "masked"
    unit = load_unit(name)
    assert unit is not None
    if any(link.startswith(CONFIG_DIR) for link in _install_links(name)) or _alias_links(unit):
        return "enabled"
    if _install_links(name, (RUNTIME_DIR,)):
        return "enabled-runtime"
    install = unit.sections.get("Install", {})
    if not any(install.get(key) for key in ("WantedBy", "RequiredBy", "Alias", "Also")):
        return "static"
    if not any(install.get(key) for key in ("WantedBy", "RequiredBy", "Alias")):
        return "indirect"
    return "disabled"


ENABLED_OK = {"enabled", "enabled-runtime", "static", "indirect", "alias", "generated", "transient"}


def wanted_at_boot() -> list[str]:
    names: set[str] = set()
    for directory in UNIT_DIRS:
        for target in BOOT_TARGETS:
            for kind in ("wants", "requires"):
                for path in glob.glob(os.path.join(directory, f"{target}.{kind}", "*")):
                    names.add(os.path.basename(path))
    return sorted(names)


# ---------------------------------------------------------------- runtime state

def _ensure_dirs() -> None:
    for directory in (STATE_DIR, LOCK_DIR, JOURNAL_DIR):
        directory.mkdir(parents=True, exist_ok=True)


@contextmanager
def _locked(name: str, kind: str) -> Iterator[None]:
    _ensure_dirs()
    with open(LOCK_DIR / f"{name}.{kind}", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def read_state(name: str) -> dict[str, Any]:
    try:
        return json.loads((STATE_DIR / f"{name}.json").read_text())
    except (OSError, ValueError):
        return {}


def write_state(name: str, **changes: Any) -> dict[str, Any]:
    with _locked(name, "state"):
        state = read_state(name)
        state.update(changes)
        tmp = STATE_DIR / f".{name}.json.tmp"
        tmp.write_text(json.dumps(state))
        os.replace(tmp, STATE_DIR / f"{name}.json")
    return state


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def active_state(name: str) -> tuple[str, str]:
    """(ActiveState, SubState), checking that the recorded processes still exist."""
    state = read_state(name)
    active = state.get("active", "inactive")
    sub = state.get("sub", "dead")
    if active in ("active", "activating", "deactivating", "reloading") and not pid_alive(
            state.get("supervisor_pid")):
        return "failed", "failed"
    if active == "active" and state.get("sub") == "running" and not pid_alive(state.get("main_pid")):
        return "activating", "auto-restart"
    return active, sub


def journal(name: str, message: str) -> None:
    _ensure_dirs()
    stamp = time.strftime("%b %d %H:%M:%S")
    with open(JOURNAL_DIR / f"{name}.log", "a") as handle:
        handle.write(f"{stamp} {os.uname().nodename} systemd[1]: {message}\n")


def loaded_unit(name: str) -> Unit | None:
    """The definition systemd would use: the one in memory while the unit is loaded."""
    state = read_state(name)
    if state.get("definition") and state.get("active", "inactive") != "inactive":
        return Unit.from_json(state["definition"])
    return load_unit(name)


# ---------------------------------------------------------------- conditions

def _condition(kind: str, value: str) -> bool:
    if kind == "PathExists":
        return os.path.exists(value)
    if kind == "PathExistsGlob":
        return bool(glob.glob(value))
    if kind == "PathIsDirectory":
        return os.path.isdir(value)
    if kind == "PathIsSymbolicLink":
        return os.path.islink(value)
    if kind == "PathIsMountPoint":
        return os.path.ismount(value)
    if kind == "PathIsReadWrite":
        return os.access(value, os.W_OK)
    if kind == "FileNotEmpty":
        return os.path.isfile(value) and os.path.getsize(value) > 0
    if kind == "DirectoryNotEmpty":
        return os.path.isdir(value) and bool(os.listdir(value))
    if kind == "FileIsExecutable":
        return os.path.isfile(value) and os.access(value, os.X_OK)
    if kind == "Virtualization":
        return value.lower() in ("yes", "true", "1", "xen", "vm")
    raise EmulationError(f"Condition{kind}= is not emulated")


def check_conditions(unit: Unit, prefix: str = "Condition") -> str | None:
    """None if the unit may start, else the failed `ConditionX=value` text."""
    triggers: list[tuple[bool, str]] = []
    for key, values in unit.sections.get("Unit", {}).items():
        if not key.startswith(prefix):
            continue
        for raw in values:
            value = raw
            trigger = value.startswith("|")
            value = value.lstrip("|")
            negate = value.startswith("!")
            value = specifiers(value.lstrip("!"), unit)
            passed = _condition(key[len(prefix):], value) != negate
            if trigger:
                triggers.append((passed, f"{key}={raw}"))
            elif not passed:
                return f"{key}={raw}"
    if triggers and not any(passed for passed, _ in triggers):
        return triggers[0][1]
    return None


# ---------------------------------------------------------------- command lines

def specifiers(text: str, unit: Unit) -> str:
    prefix = unit.name.rsplit(".", 1)[0]
    table = {"n": unit.name, "N": prefix, "p": prefix.split("@")[0], "i": prefix.partition("@")[2],
             "I": prefix.partition("@")[2], "t": "/run", "S": "/var/lib", "C": "/var/cache",
             "L": "/var/log", "E": "/etc", "T": "/tmp", "V": "/var/tmp", "h": "/root", "u": "root",
             "H": os.uname().nodename, "%": "%"}
    out, i = [], 0
    while i < len(text):
        if text[i] == "%" and i + 1 < len(text) and text[i + 1] in table:
            out.append(table[text[i + 1]])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


@dataclass
class ExecCommand:
    path: str
    argv: list[str]
    ignore_failure: bool
    line: str


def _expand_env(words: list[str], env: dict[str, str]) -> list[str]:
    out: list[str] = []
    for word in words:
        if word.startswith("$") and word[1:].isidentifier():
            out.extend(env.get(word[1:], "").split())
            continue
        for key, value in env.items():
            word = word.replace("${" + key + "}", value)
        out.append(word)
    return out


def parse_exec(line: str, unit: Unit, env: dict[str, str]) -> ExecCommand:
    rest, flags = line.strip(), ""
    while rest[:1] in ("@", "-", ":", "+", "!"):
        flags, rest = flags + rest[0], rest[1:]
    words = shlex.split(specifiers(rest, unit))
    if ":" not in flags:
        words = _expand_env(words, env)
    if not words:
        raise EmulationError(f"empty command line: {line!r}")
    path = words[0]
    argv = words[1:] if "@" in flags else words
    if not path.startswith("/"):
        for directory in SERVICE_PATH.split(":"):
            if os.access(os.path.join(directory, path), os.X_OK):
                path = os.path.join(directory, path)
                break
    return ExecCommand(path=path, argv=argv, ignore_failure="-" in flags, line=line)


def service_env(unit: Unit) -> dict[str, str]:
    env = {"PATH": SERVICE_PATH, "LANG": "C.UTF-8", "INVOCATION_ID": uuid.uuid4().hex}
    for path_spec in unit.getall("Service", "EnvironmentFile"):
        optional = path_spec.startswith("-")
        path = specifiers(path_spec.lstrip("-"), unit)
        try:
            text = Path(path).read_text()
        except OSError:
            if optional:
                continue
            raise
        for raw in text.splitlines():
            raw = raw.strip()
            if raw and not raw.startswith(("#", ";")) and "=" in raw:
                key, _, value = raw.partition("=")
                env[key.strip()] = value.strip().strip("\"'")
    for value in unit.getall("Service", "Environment"):
        for assignment in shlex.split(specifiers(value, unit)):
            key, _, val = assignment.partition("=")
            env[key] = val
    if unit.get("Service", "User"):
        env["USER"] = unit.get("Service", "User")
    return env


# ---------------------------------------------------------------- sandboxing

def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


def _mountpoints_under(path: str) -> list[str]:
    points = []
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            point = line.split()[4].replace("\\040", " ")
            if point == path or point.startswith(path.rstrip("/") + "/"):
                points.append(point)
    return points


def _read_only(path: str) -> None:
    if not os.path.isdir(path):
        return
    _mount("--rbind", path, path)
    for point in _mountpoints_under(path):
        _mount("-o", "remount,bind,ro", point)


def apply_sandbox(unit: Unit) -> None:
    """ProtectSystem=, ProtectHome=, PrivateTmp= in a mount namespace of the service's own."""
    protect_system = unit.get("Service", "ProtectSystem", "no").lower()
    protect_home = unit.get("Service", "ProtectHome", "no").lower()
    private_tmp = unit.flag("Service", "PrivateTmp")
    if protect_system in ("no", "false", "0", "off") and protect_home in (
            "no", "false", "0", "off") and not private_tmp:
        return
    if protect_system == "strict":
        raise EmulationError("ProtectSystem=strict is not emulated")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
    _mount("--make-rslave", "/")
    if protect_system in ("yes", "true", "1", "on", "full"):
        for path in ("/usr", "/boot", "/efi"):
            _read_only(path)
    if protect_system == "full":
        _read_only("/etc")
    if protect_home in ("yes", "true", "1", "on", "tmpfs"):
        for path in ("/home", "/root", "/run/user"):
            if os.path.isdir(path):
                _mount("-t", "tmpfs", "-o", "mode=0755" + (",ro" if protect_home != "tmpfs" else ""),
                       "tmpfs", path)
    elif protect_home == "read-only":
        for path in ("/home", "/root", "/run/user"):
            _read_only(path)
    if private_tmp:
        # The test harness itself (this checkout and its venv, which the fake cjdroute runs
        # on) may live under /tmp; it stands for the host's software, so it stays visible.
        harness = {str(Path(__file__).resolve().parents[2]), sys.prefix}
        kept = [(p, os.open(p, os.O_PATH)) for p in sorted(harness)
                if p.startswith(("/tmp/", "/var/tmp/")) and os.path.isdir(p)]
        for path in ("/tmp", "/var/tmp"):
            if os.path.isdir(path):
                _mount("-t", "tmpfs", "-o", "mode=1777", "tmpfs", path)
        for path, fd in kept:
            os.makedirs(path, exist_ok=True)
            _mount("--no-canonicalize", "--bind", f"/proc/{os.getpid()}/fd/{fd}", path)
            os.close(fd)


# ---------------------------------------------------------------- the supervisor

def _signal_number(name: str, default: int) -> int:
    if not name:
        return default
    name = name.upper()
    return int(name) if name.isdigit() else int(getattr(signal, name if name.startswith("SIG") else
                                                        f"SIG{name}"))


def _seconds(value: str, default: float) -> float:
    if not value:
        return default
    value = value.strip().lower()
    if value in ("infinity", "0"):
        return default if value == "infinity" else 0.0
    total, number = 0.0, ""
    units = {"ms": 0.001, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600}
    for token in value.replace(" ", "").replace("min", "min ").split():
        number = token.rstrip("abcdefghijklmnopqrstuvwxyz")
        suffix = token[len(number):] or "s"
        total += float(number) * units.get(suffix, 1)
    return total


class Supervisor:
    """Runs one service: ExecStartPre=, ExecStart=, restarts; reports the first start."""

    def __init__(self, name: str, ready_fd: int) -> None:
        self.name = name
        self.ready_fd = ready_fd
        state = read_state(name)
        self.unit = Unit.from_json(state["definition"])
        self.stopping = False
        self.stop_ran = False
        self.main_running = False
        self.current: subprocess.Popen[bytes] | None = None
        self.log = open(JOURNAL_DIR / f"{name}.log", "ab", buffering=0)

    # -- helpers
    def report(self, ok: bool, message: str = "") -> None:
        if self.ready_fd >= 0:
            os.write(self.ready_fd, json.dumps({"ok": ok, "message": message}).encode() + b"\n")
            os.close(self.ready_fd)
            self.ready_fd = -1

    def set(self, **changes: Any) -> None:
        write_state(self.name, **changes)

    def kill_current(self, sig: int) -> None:
        if self.current is not None and self.current.poll() is None:
            mode = self.unit.get("Service", "KillMode", "control-group")
            try:
                if mode == "process":
                    os.kill(self.current.pid, sig)
                elif mode != "none":
                    os.killpg(self.current.pid, sig)
            except ProcessLookupError:
                pass

    def on_term(self, _signum: int, _frame: Any) -> None:
        if self.stopping:
            return
        self.stopping = True
        if self.main_running and not self.stop_ran:
            # ExecStop= runs while the main process still lives, then KillSignal= (systemd order).
            self.stop_ran = True
            env = service_env(self.unit)
            env["MAINPID"] = str(self.current.pid if self.current else "")
            main, self.current = self.current, None
            self.run_control("ExecStop", env, abortable=False)
            self.current = main
        self.kill_current(_signal_number(self.unit.get("Service", "KillSignal"), signal.SIGTERM))

    def spawn(self, command: ExecCommand, env: dict[str, str], main: bool) -> subprocess.Popen[bytes]:
        stdin: Any = subprocess.DEVNULL
        spec = self.unit.get("Service", "StandardInput", "null")
        if main and spec.startswith("file:"):
            stdin = open(spec[5:], "rb")
        elif spec not in ("null", "") and main:
            raise EmulationError(f"StandardInput={spec} is not emulated")
        stdout = self._output(self.unit.get("Service", "StandardOutput", "journal"), self.log)
        stderr = self._output(self.unit.get("Service", "StandardError", "inherit"), stdout)
        workdir = specifiers(self.unit.get("Service", "WorkingDirectory", "/"), self.unit)
        umask = int(self.unit.get("Service", "UMask", "0022"), 8)
        user, group = self.unit.get("Service", "User"), self.unit.get("Service", "Group")

        def preexec() -> None:
            os.umask(umask)
            if group:
                os.setgid(_gid(group))
            if user:
                import pwd
                entry = pwd.getpwnam(user) if not user.isdigit() else pwd.getpwuid(int(user))
                if not group:
                    os.setgid(entry.pw_gid)
                os.initgroups(entry.pw_name, entry.pw_gid)
                os.setuid(entry.pw_uid)

        return subprocess.Popen(command.argv, executable=command.path, env=env, stdin=stdin,
                                stdout=stdout, stderr=stderr, cwd=workdir.lstrip("-") or "/",
                                start_new_session=True, preexec_fn=preexec)

    def _output(self, spec: str, default: Any) -> Any:
        if spec in ("journal", "syslog", "kmsg", "journal+console", "inherit", ""):
            return default
        if spec == "null":
            return subprocess.DEVNULL
        for prefix, mode in (("file:", "wb"), ("append:", "ab"), ("truncate:", "wb")):
            if spec.startswith(prefix):
                return open(specifiers(spec[len(prefix):], self.unit), mode)
        raise EmulationError(f"output {spec!r} is not emulated")

    def run_control(self, key: str, env: dict[str, str], abortable: bool = True
                    ) -> tuple[bool, int]:
        """Run every `key=` command line to completion: (success, last status)."""
        for line in self.unit.getall("Service", key):
            command = parse_exec(line, self.unit, env)
            try:
                self.current = self.spawn(command, env, main=False)
            except OSError as exc:
                journal(self.name, f"{self.name}: Failed to execute {command.path}: {exc.strerror}")
                status = 203
            else:
                status = _exit_status(self.current.wait())
            if self.stopping and abortable:
                return False, status
            if status != 0 and not command.ignore_failure:
                journal(self.name, f"{self.name}: Control process exited, code=exited, "
                        f"status={status}/FAILURE")
                return False, status
        return True, 0

    def start_limit_hit(self) -> bool:
        interval = _seconds(self.unit.get("Unit", "StartLimitIntervalSec",
                                          self.unit.get("Service", "StartLimitInterval", "10")), 10)
        burst = int(self.unit.get("Unit", "StartLimitBurst", "5"))
        now = time.time()
        starts = [t for t in read_state(self.name).get("starts", []) if interval == 0 or
                  now - t < interval] + [now]
        self.set(starts=starts)
        return interval > 0 and len(starts) > burst

    # -- the life cycle
    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.on_term)
        try:
            apply_sandbox(self.unit)
        except (EmulationError, OSError, subprocess.CalledProcessError) as exc:
            self.set(active="failed", sub="failed", result="resources", main_pid=0)
            journal(self.name, f"{self.name}: Failed to set up mount namespacing: {exc}")
            self.report(False, "resources")
            return 1
        service_type = self.unit.get("Service", "Type", "simple")
        restart = self.unit.get("Service", "Restart", "no")
        restart_sec = _seconds(self.unit.get("Service", "RestartSec"), 0.1)
        while True:
            if self.start_limit_hit():
                self.set(active="failed", sub="failed", result="start-limit-hit", main_pid=0)
                journal(self.name, f"{self.name}: Start request repeated too quickly.")
                journal(self.name, f"{self.name}: Failed with result 'start-limit-hit'.")
                self.report(False, "start-limit-hit")
                return 0
            result, status, signalled = self.run_once(service_type)
            if self.stopping:
                break
            if result == "success" and service_type == "oneshot":
                return 0
            clean = (status == 0 and not signalled) or (signalled and status in CLEAN_SIGNALS)
            again = {"always": True, "on-success": clean, "on-failure": not clean,
                     "on-abnormal": signalled and not clean,
                     "on-abort": signalled and not clean}.get(restart, False)
            if not again:
                failed = not clean
                self.set(active="failed" if failed else "inactive",
                         sub="failed" if failed else "dead",
                         result=result if failed else "success", main_pid=0)
                if failed:
                    journal(self.name, f"{self.name}: Failed with result '{result}'.")
                self.report(not failed, result)
                return 0
            self.set(active="activating", sub="auto-restart", main_pid=0, result=result,
                     n_restarts=read_state(self.name).get("n_restarts", 0) + 1)
            journal(self.name, f"{self.name}: Scheduled restart job.")
            deadline = time.monotonic() + restart_sec
            while time.monotonic() < deadline and not self.stopping:
                time.sleep(0.02)
            if self.stopping:
                break
            condition = check_conditions(self.unit)
            if condition:
                self.set(active="inactive", sub="dead", condition_result=False,
                         condition_failed=condition)
                return 0
        self.stop_sequence()
        return 0

    def run_once(self, service_type: str) -> tuple[str, int, bool]:
        """One start: (result, exit status or signal, killed by a signal?)."""
        env = service_env(self.unit)
        self.set(active="activating", sub="start-pre", main_pid=0)
        ok, status = self.run_control("ExecStartPre", env)
        if not ok:
            if not self.stopping:
                self.report(False, "exit-code")
            return "exit-code", status, False
        if service_type == "oneshot":
            self.set(active="activating", sub="start")
            ok, status = self.run_control("ExecStart", env)
            if not ok:
                self.report(False, "exit-code")
                return "exit-code", status, False
            self.run_control("ExecStartPost", env)
            journal(self.name, f"Finished {self.unit.description}.")
            if self.unit.flag("Service", "RemainAfterExit"):
                self.set(active="active", sub="exited", main_pid=0, result="success")
                self.report(True)
                while not self.stopping:
                    time.sleep(0.05)
            else:
                self.set(active="inactive", sub="dead", main_pid=0, result="success")
                self.report(True)
            return "success", 0, False
        lines = self.unit.getall("Service", "ExecStart")
        if len(lines) != 1:
            raise EmulationError(f"{self.name}: Type={service_type} needs exactly one ExecStart=")
        command = parse_exec(lines[0], self.unit, env)
        try:
            self.current = self.spawn(command, env, main=True)
        except OSError as exc:
            journal(self.name, f"{self.name}: Failed to execute {command.path}: {exc.strerror}")
            self.report(service_type != "exec", "exit-code")
            return "exit-code", 203, False
        main_pid = self.current.pid
        if service_type == "forking":
            status = _exit_status(self.current.wait())
            if status != 0:
                self.report(False, "exit-code")
                return "exit-code", status, False
            main_pid = self.forked_main_pid(main_pid)
        env["MAINPID"] = str(main_pid)
        self.main_running = True
        self.set(active="active", sub="running", main_pid=main_pid, result="success",
                 since=time.time())
        journal(self.name, f"Started {self.unit.description}.")
        self.run_control("ExecStartPost", env)
        self.report(True)
        if service_type == "forking":
            while pid_alive(main_pid) and not self.stopping:
                time.sleep(0.1)
            self.main_running = False
            return "success", 0, False
        raw = self.current.wait()
        self.main_running = False
        signalled = raw < 0
        status = -raw if signalled else raw
        how = f"code=killed, status={status}" if signalled else f"code=exited, status={status}"
        journal(self.name, f"{self.name}: Main process exited, {how}")
        self.set(exec_main_status=status, exec_main_code="killed" if signalled else "exited")
        if signalled and status not in CLEAN_SIGNALS:
            return "signal", status, True
        if signalled:
            return "success", status, True
        return ("success" if status == 0 else "exit-code"), status, False

    def forked_main_pid(self, fallback: int) -> int:
        pid_file = self.unit.get("Service", "PIDFile")
        deadline = time.monotonic() + 5
        while pid_file and time.monotonic() < deadline:
            try:
                return int(Path(specifiers(pid_file, self.unit)).read_text().split()[0])
            except (OSError, ValueError, IndexError):
                time.sleep(0.05)
        return fallback

    def stop_sequence(self) -> None:
        state = read_state(self.name)
        env = service_env(self.unit)
        env["MAINPID"] = str(state.get("main_pid") or "")
        self.set(active="deactivating", sub="stop")
        if not self.stop_ran:
            self.stop_ran = True
            self.run_control("ExecStop", env, abortable=False)
        timeout = _seconds(self.unit.get("Service", "TimeoutStopSec"), DEFAULT_STOP_TIMEOUT)
        group = state.get("main_pid")
        for sig in (_signal_number(self.unit.get("Service", "KillSignal"), signal.SIGTERM),
                    signal.SIGKILL):
            if not group or not _group_alive(group, self.current):
                break
            try:
                os.killpg(group, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + timeout
            while _group_alive(group, self.current) and time.monotonic() < deadline:
                time.sleep(0.02)
        self.run_control("ExecStopPost", env, abortable=False)
        self.set(active="inactive", sub="dead", main_pid=0, result="success")
        journal(self.name, f"Stopped {self.unit.description}.")
        self.report(False, "canceled")


def _group_alive(pgid: int, child: subprocess.Popen[bytes] | None) -> bool:
    if child is not None:
        child.poll()  # reap our own child so it does not linger as a zombie
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.getpgid(int(entry)) == pgid and pid_alive(int(entry)):
                return True
        except (ProcessLookupError, PermissionError):
            continue
    return False


def _gid(group: str) -> int:
    import grp
    return int(group) if group.isdigit() else grp.getgrnam(group).gr_gid


def _exit_status(raw: int) -> int:
    return 128 - raw if raw < 0 else raw


# ---------------------------------------------------------------- systemctl verbs

@dataclass
class Options:
    quiet: bool = False
    no_block: bool = False
    now: bool = False
    legend: bool = True
    all: bool = False
    value: bool = False
    runtime: bool = False
    plain: bool = False
    properties: list[str] = field(default_factory=list)
    types: list[str] = field(default_factory=list)
    states: list[str] = field(default_factory=list)
    signal: str = "SIGTERM"
    lines: int = 10


def _err(message: str) -> None:
    print(message, file=sys.stderr)


def start_unit(name: str, opts: Options) -> int:
    name = canonical(name)
    unit = loaded_unit(name)
    if unit is None:
        _err(f"Failed to start {name}: Unit {name} not found.")
        return 5
    if unit.masked:
        _err(f"Failed to start {name}: Unit {name} is masked.")
        return 1
    if unit.kind == "target":
        return 0
    if unit.kind != "service":
        _err(f"Failed to start {name}: starting .{unit.kind} units is not emulated.")
        return 1
    with _locked(name, "job"):
        active, _ = active_state(name)
        if active in ("active", "activating", "reloading"):
            return 0
        assertion = check_conditions(unit, "Assert")
        if assertion:
            journal(name, f"{name}: Assertion failed ({assertion}).")
            _err(f"Assertion failed on job for {name}.")
            return 1
        condition = check_conditions(unit)
        if condition:
            write_state(name, active="inactive", sub="dead", condition_result=False,
                        condition_failed=condition, condition_time=time.time(), main_pid=0)
            journal(name, f"{unit.description} was skipped because of an unmet condition check "
                          f"({condition}).")
            return 0
        write_state(name, active="activating", sub="start-pre", definition=unit.to_json(),
                    condition_result=True, condition_failed="", result="success", main_pid=0)
        return _spawn_supervisor(name, opts)


def _spawn_supervisor(name: str, opts: Options) -> int:
    read_end, write_end = os.pipe()
    log = open(JOURNAL_DIR / f"{name}.log", "ab")
    supervisor = subprocess.Popen(
        [sys.executable, "-I", os.path.abspath(__file__), "__supervise", name, str(write_end)],
        pass_fds=(write_end,), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
        start_new_session=True)
    os.close(write_end)
    write_state(name, supervisor_pid=supervisor.pid)
    if opts.no_block:
        os.close(read_end)
        return 0
    with os.fdopen(read_end) as reader:
        line = reader.readline()
    try:
        answer = json.loads(line) if line else {"ok": False, "message": "supervisor died"}
    except ValueError:
        answer = {"ok": False, "message": line.strip()}
    if answer["ok"]:
        return 0
    reasons = {"exit-code": "the control process exited with error code",
               "start-limit-hit": "start of the service was attempted too often",
               "resources": "of unavailable resources or another system error",
               "canceled": "the job was canceled"}
    reason = reasons.get(answer["message"], answer["message"])
    _err(f"Job for {name} failed because {reason}.\n"
         f"See \"systemctl status {name}\" and \"journalctl -xeu {name}\" for details.")
    return 1


def stop_unit(name: str, opts: Options) -> int:
    name = canonical(name)
    if loaded_unit(name) is None and not read_state(name):
        _err(f"Failed to stop {name}: Unit {name} not loaded.")
        return 5
    with _locked(name, "job"):
        state = read_state(name)
        supervisor = state.get("supervisor_pid")
        if not pid_alive(supervisor):
            if state.get("active") not in (None, "inactive", "failed"):
                write_state(name, active="inactive", sub="dead", main_pid=0)
            return 0
        os.kill(supervisor, signal.SIGTERM)
        if opts.no_block:
            return 0
        deadline = time.monotonic() + DEFAULT_STOP_TIMEOUT * 2 + 5
        while pid_alive(supervisor) and time.monotonic() < deadline:
            time.sleep(0.02)
        if pid_alive(supervisor):
            os.kill(supervisor, signal.SIGKILL)
            main_pid = read_state(name).get("main_pid")
            if main_pid:
                try:
                    os.killpg(main_pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            write_state(name, active="inactive", sub="dead", main_pid=0)
    return 0


def restart_unit(name: str, opts: Options, only_if_active: bool = False) -> int:
    active, _ = active_state(canonical(name))
    if only_if_active and active not in ("active", "activating"):
        return 0
    if active in ("active", "activating", "failed", "deactivating"):
        stop_unit(name, Options(quiet=True))
    if active == "failed":
        write_state(canonical(name), active="inactive", sub="dead")
    return start_unit(name, opts)


def reload_unit(name: str, opts: Options, or_restart: bool = False) -> int:
    name = canonical(name)
    unit = loaded_unit(name)
    if unit is None:
        _err(f"Failed to reload {name}: Unit {name} not found.")
        return 5
    lines = unit.getall("Service", "ExecReload")
    if not lines:
        if or_restart:
            return restart_unit(name, opts)
        _err(f"Failed to reload {name}: Job type reload is not applicable for unit {name}.")
        return 1
    active, _ = active_state(name)
    if active != "active":
        if or_restart:
            return start_unit(name, opts)
        _err(f"{name} is not active, cannot reload.")
        return 1
    env = service_env(unit)
    env["MAINPID"] = str(read_state(name).get("main_pid") or "")
    for line in lines:
        command = parse_exec(line, unit, env)
        proc = subprocess.run(command.argv, executable=command.path, env=env,
                              stdout=open(JOURNAL_DIR / f"{name}.log", "ab"),
                              stderr=subprocess.STDOUT)
        if proc.returncode != 0 and not command.ignore_failure:
            _err(f"Job for {name} failed because the control process exited with error code.")
            return 1
    return 0


def _link(path: str, target: str, created: list[str]) -> None:
    if os.path.islink(path) and os.readlink(path) == target:
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.lexists(path):
        os.unlink(path)
    os.symlink(target, path)
    created.append(f"Created symlink {path} \u2192 {target}.")


def enable_unit(name: str, opts: Options, seen: set[str] | None = None) -> int:
    name = canonical(name)
    seen = seen if seen is not None else set()
    if name in seen:
        return 0
    seen.add(name)
    unit = load_unit(name)
    if unit is None:
        _err(f"Failed to enable unit: Unit file {name} does not exist.")
        return 1
    if unit.masked:
        _err(f"Failed to enable unit: Unit file {unit.fragment} is masked.")
        return 1
    assert unit.fragment is not None
    base = RUNTIME_DIR if opts.runtime else CONFIG_DIR
    messages: list[str] = []
    for key, kind in (("WantedBy", "wants"), ("RequiredBy", "requires")):
        for target in unit.words("Install", key):
            _link(os.path.join(base, f"{target}.{kind}", name), unit.fragment, messages)
    for alias in unit.words("Install", "Alias"):
        _link(os.path.join(base, alias), unit.fragment, messages)
    for line in messages:
        _err(line)
    for also in unit.words("Install", "Also"):
        if enable_unit(also, Options(runtime=opts.runtime), seen) != 0:
            return 1
    if not unit.sections.get("Install") and not opts.quiet:
        _err(f"The unit files have no installation config (WantedBy=, RequiredBy=, Also=,\n"
             f"Alias= settings in the [Install] section, and DefaultInstance= for template\n"
             f"units). This means they are not meant to be enabled using systemctl.")
    if opts.now:
        return start_unit(name, opts)
    return 0


def disable_unit(name: str, opts: Options, seen: set[str] | None = None) -> int:
    name = canonical(name)
    seen = seen if seen is not None else set()
    if name in seen:
        return 0
    seen.add(name)
    unit = load_unit(name)
    if unit is None:
        _err(f"Failed to disable unit: Unit file {name} does not exist.")
        return 1
    links = _install_links(name) + ([] if unit.masked else _alias_links(unit))
    for link in links:
        os.unlink(link)
        _err(f'Removed "{link}".')
    if not unit.masked:
        for also in unit.words("Install", "Also"):
            disable_unit(also, Options(), seen)
    if opts.now:
        return stop_unit(name, opts)
    return 0


def mask_unit(name: str, opts: Options) -> int:
    name = canonical(name)
    path = os.path.join(RUNTIME_DIR if opts.runtime else CONFIG_DIR, name)
    if os.path.lexists(path) and not (os.path.islink(path) and os.readlink(path) == "/dev/null"):
        _err(f"Failed to mask unit: File {path} already exists.")
        return 1
    messages: list[str] = []
    _link(path, "/dev/null", messages)
    for line in messages:
        _err(line)
    return 0


def unmask_unit(name: str, opts: Options) -> int:
    name = canonical(name)
    for directory in (CONFIG_DIR, RUNTIME_DIR):
        path = os.path.join(directory, name)
        if os.path.islink(path) and os.readlink(path) == "/dev/null":
            os.unlink(path)
            _err(f'Removed "{path}".')
    return 0


def daemon_reload() -> int:
    _ensure_dirs()
    for path in STATE_DIR.glob("*.json"):
        name = path.stem
        with _locked(name, "job"):
            state = read_state(name)
            if not state.get("definition"):
                continue
            fresh = load_unit(name)
            write_state(name, definition=fresh.to_json() if fresh else None)
    return 0


def is_active(names: list[str], opts: Options, want: tuple[str, ...] = ("active",)) -> int:
    if not names:
        _err("Too few arguments.")
        return 1
    rc = 3
    for name in names:
        active, _ = active_state(canonical(name))
        if not opts.quiet:
            print(active)
        if active in want:
            rc = 0
    return rc


def is_enabled(names: list[str], opts: Options) -> int:
    rc = 0
    for name in names:
        state = enablement(name)
        if state == "not-found":
            _err(f"Failed to get unit file state for {canonical(name)}: No such file or directory")
            return 4 if len(names) == 1 else 1
        if not opts.quiet:
            print(state)
        if state not in ENABLED_OK:
            rc = 1
    return rc


def _since_text(stamp: float | None) -> str:
    if not stamp:
        return ""
    return time.strftime(" since %a %Y-%m-%d %H:%M:%S %Z", time.localtime(stamp))


def status(names: list[str], opts: Options) -> int:
    if not names:
        print(f"\u25cf {os.uname().nodename}\n    State: running\n     Jobs: 0 queued\n   "
              f"Failed: 0 units")
        return 0
    rc = 0
    for index, raw in enumerate(names):
        name = canonical(raw)
        unit = loaded_unit(name)
        state = read_state(name)
        if unit is None and not state:
            _err(f"Unit {name} could not be found.")
            rc = 4
            continue
        if index:
            print()
        active, sub = active_state(name)
        if unit is not None and not unit.masked and state.get("definition") and \
                active != "inactive" and changed_on_disk(unit):
            print(f"Warning: The unit file, source configuration file or drop-ins of {name} changed "
                  f"on disk. Run 'systemctl daemon-reload' to reload units.")
        description = unit.description if unit else name
        print(f"{'×' if active == 'failed' else '●'} {name} - {description}")
        if unit is None:
            print(f"     Loaded: not-found (Reason: Unit {name} not found.)")
        elif unit.masked:
            print(f"     Loaded: masked (Reason: Unit {name} is masked.)")
        else:
            print(f"     Loaded: loaded ({unit.fragment}; {enablement(name)}; preset: enabled)")
            dirs: dict[str, list[str]] = {}
            for path in unit.dropins:
                dirs.setdefault(os.path.dirname(path), []).append(os.path.basename(path))
            for number, (directory, files) in enumerate(dirs.items()):
                print(f"    {'Drop-In: ' if number == 0 else '         '}{directory}")
                print(f"             \u2514\u2500{', '.join(files)}")
        result = state.get("result", "")
        detail = f"{active} ({sub})" + (f" (Result: {result})" if active == "failed" else "")
        print(f"     Active: {detail}{_since_text(state.get('since'))}")
        if state.get("condition_result") is False:
            print(f"  Condition: start condition failed{_since_text(state.get('condition_time'))}")
            print(f"             \u2514\u2500 {state.get('condition_failed')} was not met")
        if state.get("main_pid") and active == "active":
            comm = _comm(state["main_pid"])
            print(f"   Main PID: {state['main_pid']} ({comm})")
        if opts.lines:
            print()
            for line in _journal_tail(name, opts.lines):
                print(line)
        if active != "active":
            rc = rc or 3
    return rc


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def _journal_tail(name: str, lines: int) -> list[str]:
    try:
        text = (JOURNAL_DIR / f"{name}.log").read_text(errors="replace")
    except OSError:
        return []
    return text.splitlines()[-lines:] if lines > 0 else []


def show(names: list[str], opts: Options) -> int:
    for index, raw in enumerate(names or ["__manager__"]):
        if index:
            print()
        if raw == "__manager__":
            props = {"Version": "252.38-1~deb12u1", "SystemState": "running", "NNames": "0"}
        else:
            props = _properties(canonical(raw))
        for key, value in props.items():
            if opts.properties and key not in opts.properties:
                continue
            print(value if opts.value else f"{key}={value}")
    return 0


def _exec_property(unit: Unit, key: str) -> str:
    parts = []
    for line in unit.getall("Service", key):
        try:
            command = parse_exec(line, unit, {})
        except (EmulationError, ValueError):
            continue
        parts.append("{ path=%s ; argv[]=%s ; ignore_errors=%s ; start_time=[n/a] ; "
                     "stop_time=[n/a] ; pid=0 ; code=(null) ; status=0/0 }"
                     % (command.path, " ".join(command.argv), "yes" if command.ignore_failure
                        else "no"))
    return " ".join(parts)


def _properties(name: str) -> dict[str, str]:
    unit = loaded_unit(name)
    state = read_state(name)
    active, sub = active_state(name)
    load_state = "not-found" if unit is None else "masked" if unit.masked else "loaded"
    props = {
        "Type": unit.get("Service", "Type", "simple") if unit else "",
        "Restart": unit.get("Service", "Restart", "no") if unit else "no",
        "MainPID": str(state.get("main_pid") or 0) if active == "active" else "0",
        "ExecMainPID": str(state.get("main_pid") or 0),
        "ExecMainStatus": str(state.get("exec_main_status", 0)),
        "NRestarts": str(state.get("n_restarts", 0)),
        "Result": state.get("result", "success"),
        "Id": name,
        "Names": name,
        "Description": unit.description if unit else name,
        "LoadState": load_state,
        "ActiveState": active,
        "SubState": sub,
        "FragmentPath": (unit.fragment or "") if unit else "",
        "DropInPaths": " ".join(unit.dropins) if unit else "",
        "UnitFileState": enablement(name) if unit else "",
        "ConditionResult": "no" if state.get("condition_result") is False else "yes",
        "NeedDaemonReload": "yes" if unit and state.get("definition") and active != "inactive"
        and changed_on_disk(unit) else "no",
    }
    if unit is not None and not unit.masked:
        for key in ("Wants", "Requires", "After", "Before", "WantedBy"):
            section = "Install" if key == "WantedBy" else "Unit"
            props[key] = " ".join(unit.words(section, key))
        for key in ("ExecStartPre", "ExecStart", "ExecStartPost", "ExecReload", "ExecStop"):
            value = _exec_property(unit, key)
            if value:
                props[key] = value
        for key in ("ProtectSystem", "ProtectHome", "PrivateTmp", "User", "Group",
                    "StandardInput", "RemainAfterExit"):
            if unit.get("Service", key):
                props[key] = unit.get("Service", key)
    return props


def list_unit_files(patterns: list[str], opts: Options) -> int:
    rows = []
    for name, _path in sorted(all_unit_files().items()):
        if patterns and not any(fnmatch.fnmatch(name, p) for p in patterns):
            continue
        if opts.types and name.rsplit(".", 1)[-1] not in opts.types:
            continue
        state = enablement(name)
        if opts.states and state not in opts.states:
            continue
        rows.append((name, state))
    if opts.legend:
        print(f"{'UNIT FILE':<40} {'STATE':<15} VENDOR PRESET")
    for name, state in rows:
        print(f"{name:<40} {state:<15} enabled")
    if opts.legend:
        print(f"\n{len(rows)} unit files listed.")
    return 0


def list_units(patterns: list[str], opts: Options) -> int:
    _ensure_dirs()
    rows = []
    for path in sorted(STATE_DIR.glob("*.json")):
        name = path.stem
        if patterns and not any(fnmatch.fnmatch(name, p) for p in patterns):
            continue
        active, sub = active_state(name)
        if active == "inactive" and not opts.all:
            continue
        if opts.states and active not in opts.states and sub not in opts.states:
            continue
        unit = loaded_unit(name)
        rows.append((name, active, sub, unit.description if unit else name))
    if opts.legend:
        print(f"  {'UNIT':<40} LOAD   ACTIVE SUB     DESCRIPTION")
    for name, active, sub, description in rows:
        bullet = "\u25cf " if active == "failed" and not opts.plain else "  "
        print(f"{bullet}{name:<40} loaded {active:<6} {sub:<7} {description}")
    if opts.legend:
        print(f"\n{len(rows)} loaded units listed.")
    return 0


def cat(names: list[str]) -> int:
    rc = 0
    for name in names:
        unit = load_unit(name)
        if unit is None or unit.fragment is None:
            _err(f"No files found for {canonical(name)}.")
            rc = 1
            continue
        for path in [unit.fragment, *unit.dropins]:
            print(f"# {path}")
            print(Path(path).read_text().rstrip("\n"))
            print()
    return rc


def kill_unit(names: list[str], opts: Options) -> int:
    sig = _signal_number(opts.signal, signal.SIGTERM)
    for name in names:
        main_pid = read_state(canonical(name)).get("main_pid")
        if main_pid and pid_alive(main_pid):
            try:
                os.killpg(main_pid, sig)
            except ProcessLookupError:
                pass
    return 0


def reset_failed(names: list[str]) -> int:
    _ensure_dirs()
    targets = [canonical(n) for n in names] or [p.stem for p in STATE_DIR.glob("*.json")]
    for name in targets:
        if read_state(name).get("active") == "failed":
            write_state(name, active="inactive", sub="dead", starts=[], result="success")
        else:
            write_state(name, starts=[])
    return 0


def autostart(exclude: set[str]) -> int:
    """Start what the boot targets want, except the host's own services (see qube.py)."""
    rc = 0
    for name in wanted_at_boot():
        if name in exclude or not name.endswith(".service"):
            continue
        if start_unit(name, Options()) != 0:
            rc = 1
    return rc


def shutdown_all() -> int:
    _ensure_dirs()
    for path in sorted(STATE_DIR.glob("*.json"), reverse=True):
        if active_state(path.stem)[0] in ("active", "activating", "reloading"):
            stop_unit(path.stem, Options(quiet=True))
    return 0


# ---------------------------------------------------------------- command line

FLAGS_WITH_VALUE = {"-p", "--property", "-t", "--type", "--state", "-n", "--lines", "-o",
                    "--output", "-s", "--signal", "--root", "-H", "--host", "-M", "--machine",
                    "--kill-whom", "--job-mode", "--what"}


def parse_args(argv: list[str]) -> tuple[Options, list[str]]:
    opts, args = Options(), []
    i = 0
    while i < len(argv):
        arg = argv[i]
        key, eq, inline = arg.partition("=")
        if arg.startswith("-") and arg != "-":
            value = inline if eq else None
            if key in FLAGS_WITH_VALUE and value is None:
                i += 1
                value = argv[i] if i < len(argv) else ""
            if key in ("-q", "--quiet"):
                opts.quiet = True
            elif key == "--no-block":
                opts.no_block = True
            elif key == "--now":
                opts.now = True
            elif key == "--no-legend":
                opts.legend = False
            elif key in ("-a", "--all"):
                opts.all = True
            elif key == "--value":
                opts.value = True
            elif key == "--runtime":
                opts.runtime = True
            elif key == "--plain":
                opts.plain = True
            elif key in ("-p", "--property"):
                opts.properties += (value or "").split(",")
            elif key in ("-t", "--type"):
                opts.types += (value or "").split(",")
            elif key == "--state":
                opts.states += (value or "").split(",")
            elif key in ("-n", "--lines"):
                opts.lines = int(value or 0)
            elif key in ("-s", "--signal"):
                opts.signal = value or "SIGTERM"
            elif key == "--root" and value not in ("/", ""):
                raise EmulationError("systemctl --root is not emulated")
            elif key in ("-H", "--host", "-M", "--machine", "--user"):
                raise EmulationError(f"systemctl {key} is not emulated")
        else:
            args.append(arg)
        i += 1
    return opts, args


def systemctl(argv: list[str]) -> int:
    if "--version" in argv:
        sys.stdout.write(VERSION_TEXT)
        return 0
    opts, args = parse_args(argv)
    verb, names = (args[0], args[1:]) if args else ("list-units", [])
    for_each = {
        "start": start_unit, "stop": stop_unit, "enable": enable_unit, "disable": disable_unit,
        "mask": mask_unit, "unmask": unmask_unit,
        "restart": restart_unit, "reload": reload_unit,
        "try-restart": lambda n, o: restart_unit(n, o, only_if_active=True),
        "reload-or-restart": lambda n, o: reload_unit(n, o, or_restart=True),
        "force-reload": lambda n, o: reload_unit(n, o, or_restart=True),
        "reenable": lambda n, o: disable_unit(n, Options(quiet=True)) or enable_unit(n, o),
    }
    if verb in for_each:
        if not names:
            _err(f"Too few arguments.")
            return 1
        rc = 0
        for name in names:
            rc = for_each[verb](name, opts) or rc
        return rc
    if verb in ("daemon-reload", "daemon-reexec"):
        return daemon_reload()
    if verb == "is-active":
        return is_active(names, opts)
    if verb == "is-failed":
        return is_active(names, opts, ("failed",)) if names else 1
    if verb == "is-enabled":
        return is_enabled(names, opts)
    if verb == "is-system-running":
        print("running")
        return 0
    if verb == "status":
        return status(names, opts)
    if verb == "show":
        return show(names, opts)
    if verb == "cat":
        return cat(names)
    if verb == "list-unit-files":
        return list_unit_files(names, opts)
    if verb == "list-units":
        return list_units(names, opts)
    if verb == "kill":
        return kill_unit(names, opts)
    if verb == "reset-failed":
        return reset_failed(names)
    if verb == "__autostart":
        return autostart(set(names))
    if verb == "__shutdown":
        return shutdown_all()
    _err(f"Unknown command verb {verb} (emulated systemctl).")
    return 1


def systemd_run(argv: list[str]) -> int:
    """`systemd-run --scope CMD...` (what Salt uses): run CMD in the foreground."""
    i, scope = 0, False
    with_value = {"--unit", "-u", "--description", "-p", "--property", "--slice", "-E",
                  "--setenv", "--uid", "--gid", "--nice", "--working-directory", "-t",
                  "--service-type"}
    while i < len(argv) and argv[i].startswith("-"):
        key = argv[i].split("=", 1)[0]
        if key == "--scope":
            scope = True
        if key in with_value and "=" not in argv[i]:
            i += 1
        i += 1
    command = argv[i:]
    if not command:
        _err("Command line to execute required.")
        return 1
    if not scope:
        _err("Running as unit: run-emulated.service")
        subprocess.Popen(command, start_new_session=True, stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return 0
    os.execvp(command[0], command)
    return 127


def journalctl(argv: list[str]) -> int:
    units: list[str] = []
    lines = 0
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-u", "--unit"):
            i += 1
            units.append(canonical(argv[i]))
        elif arg.startswith("--unit="):
            units.append(canonical(arg.split("=", 1)[1]))
        elif arg in ("-n", "--lines"):
            i += 1
            lines = int(argv[i])
        elif arg.startswith("--lines="):
            lines = int(arg.split("=", 1)[1])
        i += 1
    _ensure_dirs()
    paths = [JOURNAL_DIR / f"{u}.log" for u in units] or sorted(JOURNAL_DIR.glob("*.log"))
    out: list[str] = []
    for path in paths:
        try:
            out += path.read_text(errors="replace").splitlines()
        except OSError:
            pass
    if lines:
        out = out[-lines:]
    if not out:
        print("-- No entries --")
    for line in out:
        print(line)
    return 0


def main(argv: list[str]) -> int:
    program = os.path.basename(argv[0])
    try:
        if len(argv) > 1 and argv[1] == "__supervise":
            return Supervisor(argv[2], int(argv[3])).run()
        if program == "systemd-run":
            return systemd_run(argv[1:])
        if program == "journalctl":
            return journalctl(argv[1:])
        return systemctl(argv[1:])
    except EmulationError as exc:
        _err(f"{program} (emulated): {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
