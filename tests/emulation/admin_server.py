"""Emulated cjdroute v20.7 admin API (test-only).

A UDP server that answers byte for byte as the recorded transcripts in tests/vectors/admin show,
following cjdns v20.7 admin/Admin.c: the cookie is floor(unix_ms / 1024); auth accepts cookies in
[now-20, now], hashes only the first 63 bytes of password + cookie, and checks the hash by writing
its own h1 over the submitted hash in the raw datagram; requests over 512 bytes get the static
"Request too big." reply; malformed requests, trailing garbage, or no "q" get no reply; replies are
bencode with sorted keys whose first length prefix is zero-padded to make the whole reply a multiple
of 8 bytes long (BencMessageWriter aligns the message start; the buffer end is aligned).

It shares no code with the product client on purpose, so a bug in one is caught by the other.

The calls that change a running node answer as transcript-live-changes.json records (cjdns v20.7):
AuthorizedPasswords_add refuses only an exact repeat (same user, same password), so a user with a new
password becomes a second entry; _remove drops every entry of the user ("Unknown error." for none) and
leaves connected peers alone; UDPInterface_beginConnection answers "none" at once, lists the peer as
INIT v0 and ESTABLISHED about 10 ms later (when the remote takes the credentials), and for a peer that
is already listed replaces its session under a new label with counters from 0 and keeps the old one
inside (counted in `leaked_sessions`; no call frees it); without a password the core dies (no reply,
nothing answers afterwards, `on_core_death` runs); disconnectPeer drops a peer at once;
resetPeering makes an incoming peer re-authenticate, and one whose credentials were removed stops
passing traffic (UNRESPONSIVE 27 s later). ESTABLISHED peers made here have byte counters that grow
with time, so a test sees a session stay up. Everything is in memory: a restart loses it.

With a peering engine attached (peering.py, CJDNS_FAKE_PEERING=udp in the fake cjdroute) the peers
are decided by datagrams between nodes instead: peerStats lists the engine's sessions first,
beginConnection starts an outgoing session that establishes only if the remote takes it (same
checks and replies, same leak accounting for a repeated call), disconnectPeer and resetPeering act
on the engine's sessions, and AuthorizedPasswords_add/_remove change what the engine accepts from
the next hello on.

In-process:
    with AdminServer(password="pw", peers=synthetic_peers(20)) as server:
        server.port  # ephemeral port on 127.0.0.1
        server.faults.no_reply = True

As a fake cjdroute (serves admin.bind of a cjdroute.conf; prints the bound port on stdout):
    python admin_server.py --config cjdroute.conf [--port 0] [--synthetic-peers N] [--fault-...]
"""

import argparse
import hashlib
import hmac
import ipaddress
import json
import os
import random
import re
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

MAX_REQUEST_SIZE = 512
MAX_RESPONSE_SIZE = 65536
TOO_BIG = b"d5:error16:Request too big.e"
NO_MATCH = b"No functions matched your request, try Admin_availableFunctions()"
AUTH_FAILED = b"Auth failed."
COOKIE_WINDOW = 20
HASHED_BYTES = 63
PROTOCOL_VERSION = 20
PEERS_PER_PAGE = 6
FUNCTIONS_PER_PAGE = 8
USERS_PER_PAGE = 16

NODE_A_PUBLIC_KEY = "91uwd02p004x7z036y7ml0svcrttm554bbyvguxv6wrdj0wfvvv0.k"
FUNCTIONS_FILE = Path(__file__).resolve().parent.parent / "vectors" / "admin" / "available_functions.json"

# Functions registered with needsAuth=false in cjdns v20.7.
NO_AUTH = frozenset({
    "ping", "Admin_asyncEnabled", "Admin_availableFunctions", "Core_nodeInfo", "Core_pid",
    "InterfaceController_peerStats", "NodeStore_dumpTable", "NodeStore_getFullVerify", "NodeStore_getLink",
    "NodeStore_nodeForAddr", "Sign_checkSig", "SupernodeHunter_listSnodes", "SupernodeHunter_status",
})

# Registration order decides paging. Page 0 as recorded from node A; the rest of the order is unknown
# (the vector file is sorted), so the remaining functions follow alphabetically.
FIRST_PAGE = (
    "Admin_asyncEnabled", "Admin_availableFunctions", "Admin_exportFd", "Admin_importFd",
    "RouteGen_getPrefixes", "UpperDistributor_listHandlers", "UpperDistributor_registerHandler",
    "UpperDistributor_unregisterHandler",
)

# Argument specs of the functions emulated here, used when the vector file is not available.
BUILTIN_SPECS: Dict[str, Dict[str, Dict[str, Any]]] = {
    "Admin_asyncEnabled": {},
    "Admin_availableFunctions": {"page": {"required": 0, "type": "Int"}},
    "AuthorizedPasswords_add": {"ipv6": {"required": 0, "type": "String"}, "password": {"required": 1, "type": "String"},
                                "user": {"required": 0, "type": "String"}},
    "AuthorizedPasswords_list": {"page": {"required": 0, "type": "Int"}},
    "AuthorizedPasswords_remove": {"user": {"required": 1, "type": "String"}},
    "Core_nodeInfo": {},
    "Core_pid": {},
    "InterfaceController_disconnectPeer": {"pubkey": {"required": 1, "type": "String"}},
    "InterfaceController_interfaces": {"page": {"required": 0, "type": "Int"}},
    "InterfaceController_peerStats": {"page": {"required": 0, "type": "Int"}},
    "InterfaceController_resetPeering": {"pubkey": {"required": 0, "type": "String"}},
    "UDPInterface_beginConnection": {
        "address": {"required": 1, "type": "String"}, "interfaceNumber": {"required": 0, "type": "Int"},
        "login": {"required": 0, "type": "String"}, "password": {"required": 0, "type": "String"},
        "peerName": {"required": 0, "type": "String"}, "publicKey": {"required": 1, "type": "String"}},
    "ping": {},
}

# Node A's Core_nodeInfo encoding scheme (the default cjdns v20 scheme).
COMPRESSED_SCHEME_HEX = "6114458100"
ENCODING_SCHEME = [
    {"bitCount": 3, "prefix": "01", "prefixLen": 1},
    {"bitCount": 5, "prefix": "02", "prefixLen": 2},
    {"bitCount": 8, "prefix": "00", "prefixLen": 2},
]

BASE32_ALPHABET = "0123456789bcdfghjklmnpqrstuvwxyz"

# Timings recorded on loopback (observations in transcript-live-changes.json).
ESTABLISH_MS = 10
UNRESPONSIVE_MS = 24000
REFUSED_UNRESPONSIVE_MS = 27000
BYTES_PER_MS = 2  # traffic on an established emulated session, so counters visibly grow


# --- bencode, the cjdns way -------------------------------------------------------------------------

class BencError(ValueError):
    pass


def benc(obj: Any) -> bytes:
    """Plain bencode with sorted keys (str -> UTF-8)."""
    if isinstance(obj, bool):
        obj = int(obj)
    if isinstance(obj, int):
        return b"i%de" % obj
    if isinstance(obj, str):
        obj = obj.encode("utf-8")
    if isinstance(obj, (bytes, bytearray)):
        return b"%d:%s" % (len(obj), bytes(obj))
    if isinstance(obj, (list, tuple)):
        return b"l" + b"".join(benc(item) for item in obj) + b"e"
    if isinstance(obj, dict):
        pairs = sorted(((k.encode("utf-8") if isinstance(k, str) else bytes(k), v) for k, v in obj.items()),
                       key=lambda pair: pair[0])
        return b"d" + b"".join(benc(k) + benc(v) for k, v in pairs) + b"e"
    raise BencError("cannot bencode {}".format(type(obj).__name__))


def benc_reply(reply: Dict[Any, Any]) -> bytes:
    """A reply as cjdroute's BencMessageWriter emits it: the first key's length prefix gets leading
    zeros until the total length is a multiple of 8 (0..7 zeros; none if already aligned)."""
    raw = benc(reply)
    pad = -len(raw) % 8
    if pad == 0:
        return raw
    if not raw[1:2].isdigit() or raw[1:2] == b"0":
        raise BencError("cjdns cannot serialize an empty dict or an empty first key")
    return b"d" + b"0" * pad + raw[1:]


def read_request(data: bytes) -> Dict[bytes, Any]:
    """Parse a request as BencMessageReader does: a dict at the top, leading zeros allowed in numbers,
    any key order, a repeated key keeps its last value, nothing may follow the dict."""
    if data[:1] != b"d":
        raise BencError("Message does not begin with a 'd' to open the dictionary")
    value, end = _read_value(data, 0)
    if end != len(data):
        raise BencError("garbage after byte {}".format(end))
    return value


_NUMBER_RE = re.compile(rb"-?[0-9]+")


def _read_number(data: bytes, pos: int) -> Tuple[int, int]:
    match = _NUMBER_RE.match(data, pos)
    if not match:
        raise BencError("No base10 characters found at byte {}".format(pos))
    return int(match.group()), match.end()


def _read_value(data: bytes, pos: int) -> Tuple[Any, int]:
    lead = data[pos:pos + 1]
    if lead == b"i":
        number, end = _read_number(data, pos + 1)
        if data[end:end + 1] != b"e":
            raise BencError("Int not terminated with 'e'")
        return number, end + 1
    if lead and lead in b"0123456789":
        return _read_string(data, pos)
    if lead == b"l":
        items = []
        pos += 1
        while data[pos:pos + 1] != b"e":
            if pos >= len(data):
                raise BencError("truncated list")
            item, pos = _read_value(data, pos)
            items.append(item)
        return items, pos + 1
    if lead == b"d":
        result: Dict[bytes, Any] = {}
        pos += 1
        while data[pos:pos + 1] != b"e":
            if pos >= len(data):
                raise BencError("truncated dict")
            key, pos = _read_string(data, pos)
            result[key], pos = _read_value(data, pos)
        return result, pos + 1
    raise BencError("Unexpected character in message at byte {}".format(pos))


def _read_string(data: bytes, pos: int) -> Tuple[bytes, int]:
    length, colon = _read_number(data, pos)
    if length < 0:
        raise BencError("Negative string length")
    if data[colon:colon + 1] != b":":
        raise BencError("String not deliniated with a ':'")
    start = colon + 1
    if start + length > len(data):
        raise BencError("String too long")
    return data[start:start + length], start + length


# --- keys and addresses -----------------------------------------------------------------------------

def base32_encode(raw: bytes) -> str:
    out, work, bits = [], 0, 0
    for byte in raw:
        work |= byte << bits
        bits += 8
        while bits >= 5:
            out.append(BASE32_ALPHABET[work & 31])
            work >>= 5
            bits -= 5
    if bits:
        out.append(BASE32_ALPHABET[work & 31])
    return "".join(out)


def base32_decode(text: str) -> Optional[bytes]:
    out, work, bits = bytearray(), 0, 0
    for char in text.lower():
        index = BASE32_ALPHABET.find(char)
        if index < 0:
            return None
        work |= index << bits
        bits += 5
        if bits >= 8:
            out.append(work & 0xFF)
            work >>= 8
            bits -= 8
    return bytes(out)


def key_address(key_bytes: bytes) -> bytes:
    return hashlib.sha512(hashlib.sha512(key_bytes).digest()).digest()[:16]


def parse_key(key: str) -> Optional[bytes]:
    """Key_parse(): 52 base32 chars + ".k" whose address is in fc00::/8, else None."""
    if len(key) < 54 or key[52:54] != ".k":
        return None
    raw = base32_decode(key[:52])
    if raw is None or len(raw) != 32 or key_address(raw)[0] != 0xFC:
        return None
    return raw


def key_ipv6(key: str) -> str:
    raw = parse_key(key)
    if raw is None:
        raise ValueError("not a cjdns public key: {!r}".format(key))
    return ":".join(key_address(raw)[i:i + 2].hex() for i in range(0, 16, 2))


def random_public_key(rng: random.Random) -> str:
    while True:
        raw = bytes(rng.getrandbits(8) for _ in range(32))
        if key_address(raw)[0] == 0xFC:
            return base32_encode(raw) + ".k"


def peer_entry(public_key: str, lladdr: str, *, state: str = "ESTABLISHED", label: str = "0000.0000.0000.0013",
               version: Optional[int] = None, user: Optional[str] = None, is_incoming: int = 0,
               last_ms: int = 0, if_num: int = 0, bytes_in: int = 0, bytes_out: int = 0) -> Dict[str, Any]:
    """One peerStats peer dict, with the fields cjdns v20.7 sends."""
    if version is None:
        version = PROTOCOL_VERSION if state == "ESTABLISHED" else 0
    peer: Dict[str, Any] = {
        "addr": "v{}.{}.{}".format(version, label, public_key),
        "bytesIn": bytes_in, "bytesOut": bytes_out,
        "duplicates": 0, "ifNum": if_num, "isIncoming": is_incoming, "last": last_ms,
        "lladdr": lladdr, "lostPackets": 0, "receivedOutOfRange": 0, "receivedPackets": 0,
        "recvKbps": 0, "sendKbps": 0, "state": state,
    }
    if user is not None:
        peer["user"] = user
    return peer


def synthetic_peers(count: int, seed: int = 0, state: str = "ESTABLISHED", base_port: int = 30000,
                    last_ms: int = 1795592694507) -> List[Dict[str, Any]]:
    """`count` peers with valid keys (fc00::/8 addresses), distinct labels and ports; deterministic."""
    rng = random.Random(seed)
    return [
        peer_entry(random_public_key(rng), "127.0.0.1:{}".format(base_port + i), state=state,
                   label="0000.0000.0000.{:04x}".format(0x13 + 2 * i), user="peer-{}".format(i),
                   last_ms=last_ms, bytes_in=1000 * i, bytes_out=1000 * i + 20)
        for i in range(count)
    ]


# --- configuration ------------------------------------------------------------------------------------

def strip_json_comments(text: str) -> str:
    """cjdroute.conf is JSON with // and /* */ comments."""
    out, i, in_string = [], 0, False
    while i < len(text):
        char = text[i]
        if in_string:
            out.append(char)
            if char == "\\":
                out.append(text[i + 1:i + 2])
                i += 1
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
            out.append(char)
        elif text.startswith("//", i):
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
            continue
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = len(text) if end < 0 else end + 2
            continue
        else:
            out.append(char)
        i += 1
    return "".join(out)


def split_bind(bind: str) -> Tuple[str, int]:
    host, _, port = bind.rpartition(":")
    return host.strip("[]"), int(port)


def load_cjdroute_conf(path: str) -> Dict[str, Any]:
    return json.loads(strip_json_comments(Path(path).read_text(encoding="utf-8")))


def _udp_interfaces(conf: Dict[str, Any]) -> List[Dict[str, Any]]:
    udp = conf.get("interfaces", {}).get("UDPInterface", [])
    return [udp] if isinstance(udp, dict) else list(udp)


def server_kwargs_from_conf(conf: Dict[str, Any], peer_state: str = "ESTABLISHED",
                            now_ms: Optional[int] = None) -> Dict[str, Any]:
    """AdminServer arguments for a cjdroute.conf: admin bind and password, identity, users, interfaces,
    and one peer per UDP connectTo entry (outgoing, user = peerName)."""
    host, port = split_bind(conf.get("admin", {}).get("bind", "127.0.0.1:11234"))
    last_ms = int(time.time() * 1000) if now_ms is None else now_ms
    interfaces, peers = [], []
    for if_num, iface in enumerate(_udp_interfaces(conf)):
        bind = iface.get("bind", "0.0.0.0:0")
        family = "IPv6" if bind.startswith("[") else "IPv4"
        beacon = {0: "DISABLED", 1: "ACCEPTING", 2: "SENDING"}.get(iface.get("beacon", 0), "INVALID")
        interfaces.append({"ifNum": if_num, "name": "UDP/{}/{}".format(family, bind), "beaconState": beacon})
        for index, (address, entry) in enumerate(sorted(iface.get("connectTo", {}).items())):
            peer = peer_entry(entry["publicKey"], address, state=peer_state,
                              label="0000.0000.0000.{:04x}".format(0x13 + 2 * len(peers)),
                              user=entry.get("peerName"), last_ms=last_ms, if_num=if_num)
            if peer_state == "ESTABLISHED":
                peer["_since"] = last_ms
            peers.append(peer)
    entries = [{"user": entry.get("user", "Anon #{}".format(i + 1)), "password": entry.get("password"),
                "ipv6": entry.get("ipv6")}
               for i, entry in enumerate(conf.get("authorizedPasswords", []))]
    users = [entry["user"] for entry in entries]
    return {
        "host": host, "port": port, "password": conf.get("admin", {}).get("password", "NONE"),
        "public_key": conf.get("publicKey", NODE_A_PUBLIC_KEY), "ipv6": conf.get("ipv6"),
        # v20.7 node A listed its users newest first, then the built-in "Local Peers".
        "users": list(reversed(users)) + ["Local Peers"],
        "auth_entries": entries,
        "interfaces": interfaces, "peers": peers,
    }


def load_function_specs(path: Path = FUNCTIONS_FILE) -> List[Tuple[str, Dict[str, Any]]]:
    """(name, argument spec) in registration order: the recorded page 0 first, then alphabetical."""
    try:
        specs: Dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))["functions"]
    except (OSError, ValueError, KeyError):
        specs = dict(BUILTIN_SPECS)
    first = [name for name in FIRST_PAGE if name in specs]
    rest = sorted(name for name in specs if name not in FIRST_PAGE)
    return [(name, specs[name]) for name in first + rest]


# --- the server ---------------------------------------------------------------------------------------

@dataclass
class Faults:
    """Misbehaviour knobs; `only` limits them to these function names (q, or aq for auth calls)."""

    no_reply: bool = False
    delay: float = 0.0
    garbage: bool = False
    truncate: bool = False
    wrong_txid: bool = False
    oversize: int = 0  # pad the reply to at least this many bytes
    stale_duplicate: bool = False  # send an older/mismatched reply first, then the right one
    always_more: bool = False  # paged functions claim another page forever
    only: Optional[Set[str]] = None

    def applies_to(self, function: str) -> bool:
        return self.only is None or function in self.only


def _default_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def _strtoll_uint32(raw: bytes) -> int:
    match = re.match(rb"[ \t\n\v\f\r]*([+-]?[0-9]+)", raw)
    if not match:
        return 0
    value = max(min(int(match.group(1)), 2**63 - 1), -2**63)
    return value & 0xFFFFFFFF


class AdminServer:
    """A cjdroute admin endpoint on UDP. Not thread-safe to reconfigure except `faults` and `peers`."""

    def __init__(self, password: Optional[str], *, host: str = "127.0.0.1", port: int = 0,
                 public_key: str = NODE_A_PUBLIC_KEY, ipv6: Optional[str] = None,
                 peers: Optional[List[Dict[str, Any]]] = None, users: Optional[List[str]] = None,
                 auth_entries: Optional[List[Dict[str, Any]]] = None,
                 interfaces: Optional[List[Dict[str, Any]]] = None,
                 functions: Optional[List[Tuple[str, Dict[str, Any]]]] = None,
                 clock_ms: Callable[[], int] = _default_clock_ms, faults: Optional[Faults] = None) -> None:
        self.password = None if password is None else password.encode("utf-8")
        self.host = host
        self.requested_port = port
        self.public_key = public_key
        self.ipv6 = ipv6 or key_ipv6(public_key)
        self.peers: List[Dict[str, Any]] = list(peers or [])
        # authorizedPasswords, oldest first: {"user", "password", "ipv6"}; "Local Peers" is built in.
        self.auth: List[Dict[str, Any]] = []
        self.builtin_users = ["Local Peers"]
        if auth_entries is not None:
            self.auth = [dict(entry) for entry in auth_entries]
        elif users is not None:
            self.users = users
        # Remote nodes that check credentials: {public key: [(login, password), ...]}; a key not
        # listed stands for a remote that takes what it is given.
        self.remotes: Dict[str, List[Tuple[Optional[str], str]]] = {}
        self.leaked_sessions: List[str] = []  # keys whose replaced session stayed inside
        self.core_dead = False
        self.on_core_death: Optional[Callable[[], None]] = None
        self.on_leak: Optional[Callable[[str], Any]] = None
        self._leaked_labels: List[str] = []
        self.peering: Optional[Any] = None  # a peering.UdpPeering, see attach_peering()
        self.interfaces: List[Dict[str, Any]] = list(interfaces or [])
        self.functions = functions if functions is not None else load_function_specs()
        self.specs = dict(self.functions)
        self.clock_ms = clock_ms
        self.faults = faults or Faults()
        self.requests: List[bytes] = []  # every datagram received, in order
        self._known_sources: Set[Any] = set()
        self.async_enabled = False
        self._last_reply: Dict[Any, bytes] = {}
        self._sock: Optional[socket.socket] = None
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._timers: List[threading.Timer] = []

    @property
    def users(self) -> List[str]:
        """What AuthorizedPasswords_list shows: newest first, then "Local Peers"."""
        return [entry["user"] for entry in reversed(self.auth)] + self.builtin_users

    @users.setter
    def users(self, names: List[str]) -> None:
        """Names as listed (tests of the list call); "Local Peers" last is cjdroute's own."""
        names = list(names)
        self.builtin_users = names[-1:] if names[-1:] == ["Local Peers"] else []
        self.auth = [{"user": name, "password": None, "ipv6": None}
                     for name in reversed(names[:len(names) - len(self.builtin_users)])]

    # lifecycle

    def attach_peering(self, engine: Any) -> None:
        """Let `engine` (peering.UdpPeering) decide the peers; it starts and stops with the server."""
        engine.authorized = lambda: list(self.auth)
        engine.reserved = lambda: {".".join(p["addr"].split(".")[1:5]) for p in self.peers} | set(self._leaked_labels)
        self.peering = engine

    def start(self) -> "AdminServer":
        if self.peering is not None:
            self.peering.start()  # first: a UDPInterface that cannot bind stops the node
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.bind((self.host, self.requested_port))
        sock.settimeout(0.05)
        self._sock = sock
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name="admin-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for timer in self._timers:
            timer.cancel()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self._sock is not None:
            self._sock.close()
        if self.peering is not None:
            self.peering.stop()
        self._sock = None
        self._thread = None

    def __enter__(self) -> "AdminServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._sock is not None, "server not started"
        return self._sock.getsockname()[1]

    def cookie_now(self) -> int:
        return (self.clock_ms() // 1024) & 0xFFFFFFFF

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                data, source = self._sock.recvfrom(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            self.requests.append(data)
            function, reply = self.handle(data, source)
            if reply is not None:
                self._send(reply, source, function)

    # protocol

    def handle(self, data: bytes, source: Any = None) -> Tuple[str, Optional[bytes]]:
        """(function name, reply datagram or None) for one request datagram, without faults."""
        if self.core_dead:
            return "", None
        if len(data) > MAX_REQUEST_SIZE:
            return "", TOO_BIG
        try:
            message = read_request(data)
        except (BencError, RecursionError):
            return "", None
        query = message.get(b"q")
        if not isinstance(query, bytes):
            return "", None
        txid = message.get(b"txid")
        function, reply = self._dispatch(message, query, data, source)
        if reply is None:
            return function, None
        if isinstance(txid, bytes) and txid:
            reply[b"txid"] = txid
        return function, benc_reply(reply)

    def _dispatch(self, message: Dict[bytes, Any], query: bytes, raw: bytes,
                  source: Any) -> Tuple[str, Dict[bytes, Any]]:
        if query == b"cookie":
            return "cookie", {b"cookie": str(self.cookie_now()).encode()}
        authed = False
        if query == b"auth":
            if not self._auth_valid(message, raw):
                aq = message.get(b"aq")
                return (aq.decode("utf-8", "replace") if isinstance(aq, bytes) else "auth"), {b"error": AUTH_FAILED}
            query = message.get(b"aq")
            authed = True
        # Admin.c: the source counts as async-enabled once it has made an authenticated call.
        self.async_enabled = source in self._known_sources or authed
        if authed:
            self._known_sources.add(source)
        if self.password == b"NONE":
            authed = True
        name = query.decode("utf-8", "replace") if isinstance(query, bytes) else ""
        spec = self.specs.get(name)
        if spec is None or (name not in NO_AUTH and not authed):
            return name, {b"error": NO_MATCH}
        args = message.get(b"args")
        args = args if isinstance(args, dict) else None
        missing = _missing_arg(args, spec)
        if missing is not None:
            return name, {b"error": missing}
        handler = getattr(self, "_fn_" + name, None)
        if handler is None:
            return name, {b"error": "emulator: {} is not implemented".format(name).encode()}
        return name, handler(args or {})

    def _auth_valid(self, message: Dict[bytes, Any], raw: bytes) -> bool:
        submitted_cookie = message.get(b"cookie")
        cookie = _strtoll_uint32(submitted_cookie) if isinstance(submitted_cookie, bytes) else 0
        if cookie == 0 and isinstance(submitted_cookie, int):
            cookie = submitted_cookie & 0xFFFFFFFF
        now = self.cookie_now()
        submitted_hash = message.get(b"hash")
        if cookie > now or cookie < now - COOKIE_WINDOW:
            return False
        if not isinstance(submitted_hash, bytes) or len(submitted_hash) != 64:
            return False
        # CString_strstr(): both sides end at the first NUL.
        position = raw.split(b"\0", 1)[0].find(submitted_hash.split(b"\0", 1)[0])
        if position < 0 or self.password is None:
            return False
        material = (self.password.split(b"\0", 1)[0] + str(cookie).encode())[:HASHED_BYTES]
        overwritten = bytearray(raw)
        overwritten[position:position + 64] = hashlib.sha256(material).hexdigest().encode()
        expected = hashlib.sha256(bytes(overwritten)).hexdigest().encode()
        return hmac.compare_digest(expected, submitted_hash)

    # functions

    def _page(self, args: Dict[bytes, Any]) -> int:
        page = args.get(b"page")
        return page if isinstance(page, int) else 0

    def _fn_ping(self, args: Dict[bytes, Any]) -> Dict[bytes, Any]:
        return {b"q": b"pong"}

    def _fn_Admin_asyncEnabled(self, args: Dict[bytes, Any]) -> Dict[bytes, Any]:
        return {b"asyncEnabled": int(self.async_enabled)}

    def _fn_Admin_availableFunctions(self, args: Dict[bytes, Any]) -> Dict[bytes, Any]:
        start = max(self._page(args), 0) * FUNCTIONS_PER_PAGE
        chunk = self.functions[start:start + FUNCTIONS_PER_PAGE]
        reply: Dict[bytes, Any] = {b"availableFunctions": {name: spec for name, spec in chunk}}
        # v20.7 says "more" whenever the page is full, even when it is the last one.
        if len(chunk) >= FUNCTIONS_PER_PAGE or self.faults.always_more:
            reply[b"more"] = 1
        return reply

    def _fn_InterfaceController_peerStats(self, args: Dict[bytes, Any]) -> Dict[bytes, Any]:
        # Views only for the page asked for, as cjdroute pages its own list: a view of every
        # peer for every page made the emulator, not the client, the cost of a paged read.
        now = self.clock_ms()
        sessions = self.peering.peer_entries(now) if self.peering is not None else []
        start = max(self._page(args), 0) * PEERS_PER_PAGE
        end = start + PEERS_PER_PAGE
        ours = self.peers[max(start - len(sessions), 0):max(end - len(sessions), 0)]
        total = len(sessions) + len(self.peers)
        reply: Dict[bytes, Any] = {b"peers": sessions[start:end] + [self._peer_view(p, now) for p in ours],
                                   b"total": total}
        if end < total or self.faults.always_more:
            reply[b"more"] = 1
        return reply

    def _peer_view(self, peer: Dict[str, Any], now: int) -> Dict[str, Any]:
        """A peer as peerStats shows it at `now`: sessions made here move through their states
        and count bytes while they pass traffic; "_" fields are the emulator's own."""
        view = {key: value for key, value in peer.items() if not key.startswith("_")}
        if "_since" not in peer:
            return view
        key = peer["addr"].split(".", 5)[-1]
        label = peer["addr"].split(".")[1:5]
        established_at = peer.get("_established_at", peer["_since"])
        stopped_at = peer.get("_stopped_at")
        if established_at is None or now < established_at:
            state, version = "INIT", 0
            if now - peer["_since"] >= UNRESPONSIVE_MS:
                state = "UNRESPONSIVE"
        else:
            state, version = "ESTABLISHED", PROTOCOL_VERSION
            if stopped_at is not None and now - stopped_at >= REFUSED_UNRESPONSIVE_MS:
                state = "UNRESPONSIVE"
        end = now if stopped_at is None else min(now, stopped_at)
        flowing = max(end - max(established_at or end, peer["_since"]), 0) * BYTES_PER_MS
        view.update(addr="v{}.{}.{}".format(version, ".".join(label), key), state=state,
                    bytesIn=peer.get("_base_in", 0) + flowing, bytesOut=peer.get("_base_out", 0) + flowing)
        if flowing:
            view["last"] = end
        return view

    def _fn_Core_pid(self, args: Dict[bytes, Any]) -> Dict[bytes, Any]:
        return {b"pid": os.getpid()}

    def _new_label(self) -> str:
        """The lowest label no session holds, leaked ones included (recorded: 0013, 0015, 0017,
        0019 for four sessions with D; 0019 again after D was disconnected; then 001b)."""
        used = {".".join(peer["addr"].split(".")[1:5]) for peer in self.peers} | set(self._leaked_labels)
        if self.peering is not None:
            used |= self.peering.labels()
        number = 0x13
        while "0000.0000.0000.{:04x}".format(number) in used:
            number += 2
        return "0000.0000.0000.{:04x}".format(number)

    def _session(self, key: str, lladdr: str, if_num: int, user: Optional[str], accepted: bool,
                 incoming: int = 0, login: Optional[str] = None, password: Optional[str] = None) -> Dict[str, Any]:
        now = self.clock_ms()
        peer = peer_entry(key, lladdr, state="INIT", label=self._new_label(), version=0, user=user,
                          is_incoming=incoming, last_ms=now, if_num=if_num)
        peer["_since"] = now
        peer["_established_at"] = now + ESTABLISH_MS if accepted else None
        if incoming:
            peer["_login"], peer["_password"] = login, password
        return peer

    def _credentials_valid(self, login: Optional[str], password: Optional[str]) -> bool:
        return any(entry["password"] == password and (login is None or entry["user"] == login)
                   for entry in self.auth if entry.get("password") is not None)

    def add_incoming(self, key: str, lladdr: str, login: Optional[str], password: str,
                     if_num: int = 0) -> bool:
        """A remote node peers with this one using these credentials (refused unless valid)."""
        if not self._credentials_valid(login, password):
            return False
        peer = self._session(key, lladdr, if_num, "outer", True, incoming=1, login=login, password=password)
        peer["_established_at"] = peer["_since"]
        self.peers.insert(0, peer)
        return True

    def _fn_AuthorizedPasswords_add(self, args: Dict[bytes, Any]) -> Dict[bytes, Any]:
        password = args[b"password"].decode("utf-8", "replace")
        user = args.get(b"user")
        user = user.decode("utf-8", "replace") if isinstance(user, bytes) else None
        ipv6 = args.get(b"ipv6")
        if isinstance(ipv6, bytes):
            try:
                ipaddress.IPv6Address(ipv6.decode("utf-8", "replace"))
            except ValueError:
                return {b"error": b"Invalid IPv6 Address"}
            ipv6 = ipv6.decode()
        else:
            ipv6 = None
        name = user if user is not None else "Anon #{}".format(len(self.auth) + 1)
        if any(entry["user"] == name and entry["password"] == password for entry in self.auth):
            return {b"error": b"Password already added."}
        self.auth.append({"user": name, "password": password, "ipv6": ipv6})
        return {b"error": b"none"}

    def _fn_AuthorizedPasswords_remove(self, args: Dict[bytes, Any]) -> Dict[bytes, Any]:
        user = args[b"user"].decode("utf-8", "replace")
        remaining = [entry for entry in self.auth if entry["user"] != user]
        if len(remaining) == len(self.auth):
            return {b"error": b"Unknown error."}
        self.auth = remaining  # a connected peer keeps its session (recorded)
        return {b"error": b"none"}

    def _fn_UDPInterface_beginConnection(self, args: Dict[bytes, Any]) -> Optional[Dict[bytes, Any]]:
        if_num = args.get(b"interfaceNumber", 0)
        if not isinstance(if_num, int) or not 0 <= if_num < len(self.interfaces):
            return {b"error": b"no such interface for interfaceNumber"}
        address = args[b"address"].decode("utf-8", "replace")
        family = _address_family(address)
        if family is None:
            return {b"error": b"unable to parse ip address and port."}
        if family != self.interfaces[if_num]["name"].split("/")[1]:
            return {b"error": b"different address type than this socket is bound to."}
        key = args[b"publicKey"].decode("utf-8", "replace")
        if len(key) < 52:
            return {b"error": b"key must be 52 characters long"}
        if parse_key(key) is None or key == self.public_key:
            return {b"error": b"invalid cjdns public key."}
        password = args.get(b"password")
        if not isinstance(password, bytes):
            # Recorded: no reply, and the core process died (signal 31).
            self.core_dead = True
            if self.on_core_death is not None:
                self.on_core_death()
            return None
        login = args.get(b"login")
        login = login.decode("utf-8", "replace") if isinstance(login, bytes) else None
        name = args.get(b"peerName")
        name = name.decode("utf-8", "replace") if isinstance(name, bytes) else None
        if self.peering is not None:
            replaced = self.peering.connect(key, address, if_num, login, password.decode("utf-8", "replace"), name)
            if replaced is not None:
                self._leak(key, replaced)
            return {b"error": b"none"}
        wanted = self.remotes.get(key)
        accepted = wanted is None or (login, password.decode("utf-8", "replace")) in wanted
        for index, peer in enumerate(self.peers):
            if peer["addr"].endswith("." + key):
                # Recorded: the entry gets a new session (new label, counters from 0); the old
                # session is not freed and stays out of reach of every admin call.
                self._leak(key, ".".join(peer["addr"].split(".")[1:5]))
                self.peers[index] = self._session(key, address, if_num, name, accepted)
                return {b"error": b"none"}
        # Newest first, as C listed E (001b) before D (0019) in the one recorded case.
        self.peers.insert(0, self._session(key, address, if_num, name, accepted))
        return {b"error": b"none"}

    def _leak(self, key: str, label: str) -> None:
        self.leaked_sessions.append(key)
        self._leaked_labels.append(label)
        if self.on_leak is not None:
            self.on_leak(key)

    def _fn_InterfaceController_resetPeering(self, args: Dict[bytes, Any]) -> Dict[bytes, Any]:
        key = args.get(b"pubkey")
        key = key.decode("utf-8", "replace") if isinstance(key, bytes) else None
        now = self.clock_ms()
        if self.peering is not None:
            self.peering.reset(key)
        for peer in self.peers:
            if key is not None and not peer["addr"].endswith("." + key):
                continue
            # A new handshake: an incoming peer answers with the credentials it has; refused ones
            # stop the traffic (recorded: bytesIn froze, UNRESPONSIVE 27 s later, still listed).
            if peer.get("isIncoming") and "_since" in peer and peer.get("_stopped_at") is None \
                    and not self._credentials_valid(peer.get("_login"), peer.get("_password")):
                peer["_stopped_at"] = now
        return {b"success": 1}

    def _fn_InterfaceController_interfaces(self, args: Dict[bytes, Any]) -> Dict[bytes, Any]:
        return self._paged(b"ifaces", self.interfaces, PEERS_PER_PAGE, args)

    def _paged(self, key: bytes, items: List[Any], per_page: int, args: Dict[bytes, Any]) -> Dict[bytes, Any]:
        start = max(self._page(args), 0) * per_page
        reply: Dict[bytes, Any] = {key: items[start:start + per_page], b"total": len(items)}
        if start + per_page < len(items) or self.faults.always_more:
            reply[b"more"] = 1
        return reply

    def _fn_AuthorizedPasswords_list(self, args: Dict[bytes, Any]) -> Dict[bytes, Any]:
        # Pages of 16 with no "more" key: only "total" tells there is another page.
        start = max(self._page(args), 0) * USERS_PER_PAGE
        return {b"total": len(self.users), b"users": self.users[start:start + USERS_PER_PAGE]}

    def _fn_Core_nodeInfo(self, args: Dict[bytes, Any]) -> Dict[bytes, Any]:
        return {
            b"compressedSchemeHex": COMPRESSED_SCHEME_HEX,
            b"encodingScheme": ENCODING_SCHEME,
            b"error": b"none",
            b"myAddr": "v{}.0000.0000.0000.0001.{}".format(PROTOCOL_VERSION, self.public_key),
            b"myIp6": self.ipv6,
            b"version": PROTOCOL_VERSION,
        }

    def _fn_InterfaceController_disconnectPeer(self, args: Dict[bytes, Any]) -> Dict[bytes, Any]:
        key = args[b"pubkey"].decode("utf-8", "replace")
        if parse_key(key) is None:
            return {b"error": b"bad key", b"success": 0}
        remaining = [peer for peer in self.peers if not peer["addr"].endswith("." + key)]
        in_engine = self.peering is not None and self.peering.disconnect(key)
        if len(remaining) == len(self.peers) and not in_engine:
            return {b"error": b"no peer found for that key", b"success": 0}
        self.peers = remaining
        return {b"success": 1}

    # faults

    def _send(self, reply: bytes, source: Any, function: str) -> None:
        faults = self.faults
        if reply is TOO_BIG or not faults.applies_to(function):
            self._sendto([reply], source)
            return
        if faults.no_reply:
            return
        datagrams = [self._faulty(reply, faults)]
        if faults.stale_duplicate:
            datagrams.insert(0, self._last_reply.get(source) or _with_txid(reply, b"stale"))
        self._last_reply[source] = reply
        if faults.delay > 0:
            timer = threading.Timer(faults.delay, self._sendto, (datagrams, source))
            timer.daemon = True
            self._timers.append(timer)
            timer.start()
        else:
            self._sendto(datagrams, source)

    def _faulty(self, reply: bytes, faults: Faults) -> bytes:
        if faults.garbage:
            return b"\xffnot bencode\x00"
        if faults.wrong_txid:
            reply = _with_txid(reply, b"wrong")
        if faults.oversize:
            decoded = read_request(reply)
            decoded[b"zpad"] = b"x" * max(faults.oversize - len(reply), 0)
            reply = benc_reply(decoded)
        if faults.truncate:
            reply = reply[:len(reply) // 2]
        return reply

    def _sendto(self, datagrams: List[bytes], source: Any) -> None:
        sock = self._sock
        for datagram in datagrams:
            try:
                if sock is not None:
                    sock.sendto(datagram, source)
            except OSError as exc:  # e.g. EMSGSIZE: IPv4 UDP carries at most 65507 bytes
                print("admin_server: cannot send {} bytes: {}".format(len(datagram), exc), file=sys.stderr)


def _with_txid(reply: bytes, suffix: bytes) -> bytes:
    decoded = read_request(reply)
    decoded[b"txid"] = decoded.get(b"txid", b"") + b"-" + suffix
    return benc_reply(decoded)


def _address_family(address: str) -> Optional[str]:
    """ "IPv4"/"IPv6" of "a.b.c.d:port" or "[v6]:port"; None when it does not parse as an IP."""
    host, _, port = address.rpartition(":")
    if not port.isdigit() or not host:
        return None
    try:
        parsed = ipaddress.ip_address(host[1:-1] if host.startswith("[") and host.endswith("]") else host)
    except ValueError:
        return None
    if parsed.version == 6 and not host.startswith("["):
        return None
    return "IPv{}".format(parsed.version)


def _missing_arg(args: Optional[Dict[bytes, Any]], spec: Dict[str, Any]) -> Optional[bytes]:
    """checkArgs(): the first required argument that is absent or of the wrong type."""
    kinds = {"String": bytes, "Int": int, "Dict": dict, "List": list}
    for name, arg in spec.items():
        if not arg.get("required"):
            continue
        value = None if args is None else args.get(name.encode())
        if not isinstance(value, kinds[arg["type"]]):
            return "Entry [{}] is required and must be of type [{}]".format(name, arg["type"]).encode()
    return None


# --- command line -------------------------------------------------------------------------------------

def _parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Emulated cjdroute admin API (test-only).")
    parser.add_argument("--config", required=True, help="cjdroute.conf to take admin.bind, password, keys from")
    parser.add_argument("--port", type=int, help="override the admin.bind port (0 = ephemeral)")
    parser.add_argument("--peer-state", default="ESTABLISHED", help="state of the peers made from connectTo")
    parser.add_argument("--peers-json", help="JSON list of peer dicts, replacing the connectTo peers")
    parser.add_argument("--synthetic-peers", type=int, default=0, help="add N generated peers")
    parser.add_argument("--fault-no-reply", action="store_true")
    parser.add_argument("--fault-delay", type=float, default=0.0)
    parser.add_argument("--fault-garbage", action="store_true")
    parser.add_argument("--fault-truncate", action="store_true")
    parser.add_argument("--fault-wrong-txid", action="store_true")
    parser.add_argument("--fault-oversize", type=int, default=0)
    parser.add_argument("--fault-stale-duplicate", action="store_true")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    options = _parse_args(argv)
    kwargs = server_kwargs_from_conf(load_cjdroute_conf(options.config), peer_state=options.peer_state)
    if options.port is not None:
        kwargs["port"] = options.port
    if options.peers_json:
        kwargs["peers"] = json.loads(Path(options.peers_json).read_text(encoding="utf-8"))
    kwargs["peers"] += synthetic_peers(options.synthetic_peers)
    kwargs["faults"] = Faults(no_reply=options.fault_no_reply, delay=options.fault_delay,
                              garbage=options.fault_garbage, truncate=options.fault_truncate,
                              wrong_txid=options.fault_wrong_txid, oversize=options.fault_oversize,
                              stale_duplicate=options.fault_stale_duplicate)
    server = AdminServer(**kwargs).start()
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    print(server.port, flush=True)
    try:
        while not stopped.wait(0.2):
            pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
