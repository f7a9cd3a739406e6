#!/usr/bin/env python3
"""A stand-in for cjdroute (tests only): enough of it for the systemd unit and the formula.

fake_cjdns_repo.py's `./do` installs this file as `cjdroute` with BUILT_FROM (the tag built) and
EMULATION_DIR filled in, and the shebang set to the test venv's Python (it needs `cryptography`).

  cjdroute --genconf           print a new config (JSON with comments, v22.3 layout, real key)
  cjdroute --cleanconf < conf  print the config without comments (sorted keys)
  cjdroute --nobg < conf       check the config, refuse a bad one, then run in the foreground:
                               create the TUN device (if the config asks for one and the qube can)
                               and answer the admin API on admin.bind
  cjdroute --version           "Cjdns version: 22" and the tag it was built from

Test knobs (environment): CJDNS_FAKE_NO_TUN=1 makes no TUN device (as in a qube without
/dev/net/tun; for tests on the host); CJDNS_FAKE_INCOMING names a JSON list of remote nodes that
peer with this one at start ({"publicKey", "lladdr", "login", "password"}; refused unless the
config authorizes them). CJDNS_FAKE_LEAKS names a file that gets one line per session a
repeated beginConnection leaked (the key), so a test sees that the formula never does it.
CJDNS_FAKE_FAULTS names a JSON file read at start: {"no_reply": [function, ...]}, for an admin
API that fails half-way. A beginConnection without password ends the process as v20.7's core
dies (exit status 128+31: it was killed by signal 31).

CJDNS_FAKE_PEERING=udp: peers are decided by real datagrams between emulated nodes instead of shown
ESTABLISHED at once: the node binds each UDPInterface `bind`, sends hellos to its peers and takes
those its authorizedPasswords accept (tests/emulation/peering.py says what is emulated and what
differs from cjdns). A bind that fails, or another value of the variable, stops the node (exit 1).
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import re
import secrets
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping, NoReturn

BUILT_FROM = "source"
EMULATION_DIR = ""
PARSE_ERROR_EXIT = 101  # v22 panics ("Error reading conf from stdin: ...") on a malformed config
ALPHABET = "0123456789bcdfghjklmnpqrstuvwxyz"


# -- keys and the config dialect: the formula's own module, whose parser gives cjdroute's
# verdicts on the recorded cases (tests/unit/test_dialect.py) --------------------------------

def _load(name: str, path: Path) -> Any:
    """Import `name`: beside this file in the zipapp `./do` builds, else from `path`."""
    if name not in sys.modules:
        try:
            importlib.import_module(name)
        except ImportError:
            spec = importlib.util.spec_from_file_location(name, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
    return sys.modules[name]


def _emulation_dir() -> Path:
    return Path(EMULATION_DIR) if EMULATION_DIR else Path(__file__).resolve().parent


def _module() -> Any:
    """The formula's module (tests/../_modules/cjdns.py in the checkout)."""
    return _load("cjdns_module", _emulation_dir().parents[1] / "_modules" / "cjdns.py")


def public_key(private_hex: str) -> tuple[str, str]:
    """(public key text, ipv6 text) of a 64-hex private key."""
    public = _module().public_key(private_hex)
    return public, _module().address(public)


def keypair() -> tuple[str, str, str]:
    """A new (private hex, public key, ipv6) whose address is in fc00::/8."""
    ident = _module()._keypair()
    return ident.private_key, ident.public_key, ident.ipv6


# -- config -----------------------------------------------------------------------------------

def genconf() -> str:
    private, public, ipv6 = keypair()
    password = "".join(secrets.choice(ALPHABET) for _ in range(31))
    port = 1025 + secrets.randbelow(65535 - 1025 + 1)
    return f"""{{
    // Private key: your confidentiality and data integrity depend on this key, keep it secret!
    "privateKey": "{private}",

    // This key corresponds to the public key and ipv6 address:
    "publicKey": "{public}",
    "ipv6": "{ipv6}",

    // Anyone connecting and offering these passwords on connection will be allowed.
    "authorizedPasswords": [
        {{ "password": "{password}", "user": "default-login" }}
    ],

    // Settings for administering and extracting information from your router.
    "admin": {{
        "bind": "127.0.0.1:11234",
        "password": "NONE"
    }},

    // Interfaces to connect to the switch core.
    "interfaces": {{
        "UDPInterface": [
            {{
                "bind": "0.0.0.0:{port}",
                "beacon": 2,
                "beaconDevices": [ "all" ],
                "beaconPort": 64512,
                "connectTo": {{
                }}
            }},
            {{
                "bind": "[::]:{port}",
                "connectTo": {{
                }}
            }}
        ],
        "_disabled_ETHInterface": [
            {{ "bind": "all", "beacon": 2, "connectTo": {{ }} }}
        ]
    }},

    // Configuration for the router.
    "router": {{
        "dnsSeeds": [ "seed.pns.cjdns.fr" ],
        "publicPeer": {{ }},
        "supernodes": [ ],
        "interface": {{
            "type": "TUNInterface"
            // "tunDevice": "tun0"
        }},
        "ipTunnel": {{
            "allowedConnections": [ ],
            "outgoingConnections": [ ]
        }}
    }},

    // Dropping permissions.
    "security": [
        {{ "setuser": "nobody", "keepNetAdmin": 1 }},
        {{ "chroot": "/var/run/" }},
        {{ "nofiles": 0 }},
        {{ "noforks": 1 }},
        {{ "setupComplete": 1 }}
    ],

    "logging": {{
        // "logTo": "stdout"
    }},
    "noBackground": 0,
    "pipe": "cjdroute.sock",
    "version": 2
}}
"""


def parse_conf(text: str) -> dict[str, Any]:
    """The config as a dict; ValueError("<reason> at line N") when cjdroute would refuse it."""
    cj = _module()
    try:
        return cj.loads(text)
    except cj.ConfigSyntaxError as exc:
        raise ValueError(f"{exc.reason} at line {exc.line}") from exc


def check_conf(conf: dict[str, Any]) -> str | None:
    """The error message of cjdroute's start-up checks, or None."""
    private = conf.get("privateKey")
    if not isinstance(private, str):
        return "Need to specify privateKey."
    if not re.fullmatch(r"[0-9a-fA-F]{64}", private):
        return "privateKey must be 64 bytes of hex."
    admin = conf.get("admin")
    if not isinstance(admin, dict) or not isinstance(admin.get("bind"), str):
        return "Need to specify admin.bind."
    return None


# -- running ----------------------------------------------------------------------------------

def _split_bind(bind: str) -> tuple[int, str, int]:
    host, _, port = bind.rpartition(":")
    if host.startswith("["):
        return socket.AF_INET6, host[1:-1], int(port)
    return socket.AF_INET, host, int(port)


def already_running(bind: str) -> bool:
    family, host, port = _split_bind(bind)
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.3)
        try:
            sock.sendto(b"d1:q4:pinge", (host, port))
            sock.recvfrom(4096)
        except OSError:
            return False
    return True


def create_tun(conf: dict[str, Any]) -> str | None:
    """Create and configure the TUN device as cjdroute does (fc address /8, MTU 1304)."""
    interface = conf.get("router", {}).get("interface", {})
    if interface.get("type") != "TUNInterface":
        return None
    name = interface.get("tunDevice", "tun%d")
    try:
        tun = os.open("/dev/net/tun", os.O_RDWR)
        request = struct.pack("16sH", name.encode(), 0x0001 | 0x1000)  # IFF_TUN | IFF_NO_PI
        name = fcntl.ioctl(tun, 0x400454CA, request)[:16].rstrip(b"\0").decode()  # TUNSETIFF
    except OSError as exc:
        print(f"Failed to create TUN device: {exc}", flush=True)
        return None
    _, ipv6 = public_key(conf["privateKey"])
    for argv in (["ip", "link", "set", name, "mtu", "1304"],
                 ["ip", "-6", "addr", "add", f"{ipv6}/8", "dev", name],
                 ["ip", "link", "set", name, "up"]):
        subprocess.run(argv, check=False)
    os.set_inheritable(tun, False)
    globals()["_TUN_FD"] = tun  # keep the device for the life of the process
    return name


def _admin_server() -> Any:
    """tests/emulation/admin_server.py, or None where there is none."""
    server = _emulation_dir() / "admin_server.py"
    try:
        return _load("admin_server", server)
    except FileNotFoundError:
        return None


def make_server(module: Any, conf: dict[str, Any], environ: Mapping[str, str]) -> Any:
    """The admin server (not started) for `conf`, with the CJDNS_FAKE_* knobs of `environ`."""
    kwargs = module.server_kwargs_from_conf(conf)
    # The identity comes from privateKey; "publicKey"/"ipv6" in a config are only comments.
    kwargs["public_key"], kwargs["ipv6"] = public_key(conf["privateKey"])
    engine = _load("peering", _emulation_dir() / "peering.py").engine_for(
        conf, kwargs["public_key"], environ.get("CJDNS_FAKE_PEERING", ""))
    if engine is not None:
        kwargs["peers"] = []  # the connectTo peers are the engine's, established only if answered
    server = module.AdminServer(**kwargs)
    if engine is not None:
        server.attach_peering(engine)
    leaks = environ.get("CJDNS_FAKE_LEAKS")
    if leaks:
        server.on_leak = lambda key: Path(leaks).open("a").write(key + "\n")
    faults = environ.get("CJDNS_FAKE_FAULTS")
    if faults and Path(faults).exists():
        only = json.loads(Path(faults).read_text()).get("no_reply") or []
        server.faults = module.Faults(no_reply=True, only=set(only))
    incoming = environ.get("CJDNS_FAKE_INCOMING")
    if incoming:
        for remote in json.loads(Path(incoming).read_text()):
            server.add_incoming(remote["publicKey"], remote["lladdr"], remote.get("login"), remote["password"])
    return server


def serve_admin(conf: dict[str, Any]) -> NoReturn:
    """Serve the admin API with tests/emulation/admin_server.py if it exists, else ping only."""
    module = _admin_server()
    if module is not None:
        peering = _load("peering", _emulation_dir() / "peering.py")
        try:
            server = make_server(module, conf, os.environ)
            server.on_core_death = lambda: os._exit(128 + signal.SIGSYS)
            server.start()
        except peering.PeeringError as exc:
            print(exc, file=sys.stderr, flush=True)
            sys.exit(1)
        while True:
            signal.pause()  # SIGTERM ends the process (handler set in run())
    family, host, port = _split_bind(conf["admin"]["bind"])
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind((host, port))
        while True:
            data, peer = sock.recvfrom(4096)
            if b"1:q4:ping" in data:
                sock.sendto(b"d1:q4:ponge", peer)


def run(text: str) -> int:
    try:
        conf = parse_conf(text)
    except ValueError as exc:
        print(f"Error reading conf from stdin: {exc}", file=sys.stderr, flush=True)
        return PARSE_ERROR_EXIT
    error = check_conf(conf)
    if error:
        print(error, file=sys.stderr, flush=True)
        return 1
    if already_running(conf["admin"]["bind"]):
        print("cjdroute is already running", file=sys.stderr, flush=True)
        return 1
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    _, ipv6 = public_key(conf["privateKey"])
    print(f"Cjdns version 22 (fake, built from {BUILT_FROM}) starting, address {ipv6}",
          flush=True)
    tun = None if os.environ.get("CJDNS_FAKE_NO_TUN") else create_tun(conf)
    if tun:
        print(f"Initialized TUN device {tun}", flush=True)
    serve_admin(conf)


def main(argv: list[str]) -> int:
    if "--genconf" in argv:
        sys.stdout.write(genconf())
        return 0
    if "--version" in argv:
        print(f"Cjdns version: 22\nBuilt from: {BUILT_FROM}")
        return 0
    if "--cleanconf" in argv:
        try:
            conf = parse_conf(sys.stdin.read())
        except ValueError as exc:
            print(f"Error reading conf from stdin: {exc}", file=sys.stderr)
            return PARSE_ERROR_EXIT
        print(json.dumps(conf, indent=2, sort_keys=True))
        return 0
    if "--nobg" in argv or (not argv and not sys.stdin.isatty()):
        return run(sys.stdin.read())
    print("Usage: cjdroute --help | --genconf | --cleanconf < conf | --nobg < conf",
          file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
