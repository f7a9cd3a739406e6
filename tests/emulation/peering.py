"""UDP peering between emulated cjdroute nodes (tests only), on with CJDNS_FAKE_PEERING=udp.

Without it the fake cjdroute shows every connectTo peer ESTABLISHED at once, whether or not anything
answers (admin_server.py). With it, a node's peers are decided by real datagrams between nodes:

- The node binds one UDP socket per UDPInterface `bind` of its config (v4 and v6 blocks; a bind that
  fails stops the node, so a port clash shows at once) and every HELLO_INTERVAL_MS sends a hello to each
  outgoing peer: the connectTo entries of the config and the peers of UDPInterface_beginConnection,
  less those InterfaceController_disconnectPeer removed.
- A hello is a bencoded dict {"fake": MAGIC, "type": "hello", "key": sender publicKey, "login": login
  (only if the peer has one), "nonce": 16 fresh random bytes, "proof": HMAC-SHA256(password, nonce |
  sender key | receiver key)}, the keys as their ".k" text. The password itself never goes on the wire.
- The receiver takes a hello when one of its authorizedPasswords (the config's, plus
  AuthorizedPasswords_add, less AuthorizedPasswords_remove; read at every hello) gives that proof:
  with a login only the entry whose `user` is the login, without one any entry; an entry with `ipv6`
  only for a sender whose key derives that address; and the proof covers the receiver's own key, so a
  peer configured with a wrong publicKey for the endpoint is never taken. It then answers a welcome
  {"type": "welcome", "key": its key, "nonce": the hello's nonce, "proof": HMAC-SHA256(password,
  "welcome" | nonce | its key | sender key)} and lists the sender as an incoming peer: ESTABLISHED,
  `user` the entry's user, `lladdr` the hello's source ("ip:port", "[ip6]:port"). A hello it does not
  take gets no answer and lists nothing.
- The sender shows its outgoing peer ESTABLISHED only after a welcome for one of its last
  RECENT_NONCES hellos, from the configured key, whose proof checks. Before that the peer is INIT
  (v0), and UNRESPONSIVE once NEVER_ANSWERED_MS passed (the states and timeout the emulation has
  always shown; v20.7 recorded INIT for an outgoing peer that gets no answer).
- A session that no accepted datagram refreshed for SESSION_TIMEOUT_MS (hellos stopped, password
  removed, remote down) is UNRESPONSIVE; an incoming one is forgotten FORGET_MS after its last
  accepted hello, an outgoing one stays listed (cjdroute keeps trying its peers). InterfaceController_resetPeering starts the matching
  sessions over: INIT until the next accepted hello or welcome.
- peerStats fields are those of admin_server.peer_entry: addr "v<version>.<label>.<key>" (version 20
  once a session was up, 0 while INIT or never up), labels from 0000.0000.0000.0013 up, byte and packet counters of the
  real datagrams of the session, `last` the time of the last accepted one.

What differs from cjdns: this is a stand-in protocol, not CryptoAuth and not cjdns's wire format. No
key exchange, no encryption, no traffic but hellos and welcomes; a hello is a fresh authentication
every time, so a password removed live ends the sessions that use it within SESSION_TIMEOUT_MS (v20.7
keeps a connected peer until it re-handshakes); an incoming peer's `user` is the authorizedPasswords
user (v20.7 shows "outer"); a node that has a peer both in its connectTo and as an incoming sender
lists it once, as outgoing, decided by its own welcomes. Hellos are not protected against replay.

The fleet lab turns it on with a drop-in for the cjdns unit:
    [Service]
    Environment=CJDNS_FAKE_PEERING=udp
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import selectors
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import admin_server

MODE = "udp"
MAGIC = b"cjdns-fake-peering/1"
NONCE_BYTES = 16
RECENT_NONCES = 8
HELLO_INTERVAL_MS = 500
SESSION_TIMEOUT_MS = 3000
FORGET_MS = 20000
NEVER_ANSWERED_MS = admin_server.UNRESPONSIVE_MS
MAX_DATAGRAM = 2048

Entry = dict[str, Any]  # an authorizedPasswords entry: {"user", "password", "ipv6"}


class PeeringError(RuntimeError):
    """The peering engine cannot run (a UDPInterface bind that fails)."""


# --- the stand-in protocol ------------------------------------------------------------------------

def hello_proof(password: str, nonce: bytes, sender: str, receiver: str) -> bytes:
    return hmac.new(password.encode("utf-8"), nonce + sender.encode() + receiver.encode(),
                    hashlib.sha256).digest()


def welcome_proof(password: str, nonce: bytes, sender: str, receiver: str) -> bytes:
    # "welcome" keeps a hello from passing for a welcome (same nonce, keys swapped).
    return hmac.new(password.encode("utf-8"), b"welcome" + nonce + sender.encode() + receiver.encode(),
                    hashlib.sha256).digest()


def encode_hello(sender: str, login: Optional[str], nonce: bytes, proof: bytes) -> bytes:
    message: dict[str, Any] = {"fake": MAGIC, "type": "hello", "key": sender, "nonce": nonce, "proof": proof}
    if login is not None:
        message["login"] = login
    return admin_server.benc(message)


def encode_welcome(sender: str, nonce: bytes, proof: bytes) -> bytes:
    return admin_server.benc({"fake": MAGIC, "type": "welcome", "key": sender, "nonce": nonce, "proof": proof})


@dataclass(frozen=True)
class Message:
    kind: str  # "hello" or "welcome"
    key: str
    login: Optional[str]
    nonce: bytes
    proof: bytes


def decode(data: bytes) -> Optional[Message]:
    """The hello or welcome in a datagram; None for anything else (it is ignored, as noise is)."""
    try:
        raw = admin_server.read_request(data)
    except (admin_server.BencError, RecursionError):
        return None
    kind, key, login = raw.get(b"type"), raw.get(b"key"), raw.get(b"login")
    nonce, proof = raw.get(b"nonce"), raw.get(b"proof")
    if raw.get(b"fake") != MAGIC or kind not in (b"hello", b"welcome") or not isinstance(key, bytes):
        return None
    if not isinstance(nonce, bytes) or len(nonce) != NONCE_BYTES or not isinstance(proof, bytes):
        return None
    if login is not None and not isinstance(login, bytes):
        return None
    text_key = key.decode("ascii", "replace")
    if admin_server.parse_key(text_key) is None:
        return None
    return Message(kind.decode(), text_key, None if login is None else login.decode("utf-8", "replace"),
                   nonce, proof)


def _same_ipv6(entry_ipv6: str, key: str) -> bool:
    try:
        return ipaddress.IPv6Address(entry_ipv6) == ipaddress.IPv6Address(admin_server.key_ipv6(key))
    except ValueError:
        return False


def accepting_entry(entries: list[Entry], hello: Message, receiver: str) -> Optional[Entry]:
    """The authorizedPasswords entry that takes this hello addressed to `receiver`, or None."""
    for entry in entries:
        password = entry.get("password")
        if password is None:
            continue
        if hello.login is not None and entry.get("user") != hello.login:
            continue
        if entry.get("ipv6") and not _same_ipv6(entry["ipv6"], hello.key):
            continue
        if hmac.compare_digest(hello_proof(password, hello.nonce, hello.key, receiver), hello.proof):
            return entry
    return None


# --- addresses --------------------------------------------------------------------------------------

def sockaddr(address: str) -> tuple[int, tuple[Any, ...]]:
    """(family, socket address) of "a.b.c.d:port" or "[v6]:port"."""
    host, _, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        return socket.AF_INET6, (host[1:-1], int(port), 0, 0)
    return socket.AF_INET, (host, int(port))


def lladdr(source: tuple[Any, ...]) -> str:
    """A datagram's source as cjdroute prints it: "ip:port", "[ip6]:port"."""
    host, port = source[0], source[1]
    return "[{}]:{}".format(host, port) if ":" in host else "{}:{}".format(host, port)


# --- sessions ---------------------------------------------------------------------------------------

@dataclass
class Counters:
    bytes_in: int = 0
    bytes_out: int = 0
    packets_in: int = 0


@dataclass
class Outgoing:
    """A peer this node sends hellos to."""

    key: str
    address: str
    if_num: int
    login: Optional[str]
    password: str = field(repr=False)
    name: Optional[str]
    label: str
    since_ms: int
    welcomed_ms: Optional[int] = None  # the last accepted welcome since the session (re)started
    ever_up: bool = False
    nonces: deque = field(default_factory=lambda: deque(maxlen=RECENT_NONCES))
    counters: Counters = field(default_factory=Counters)


@dataclass
class Incoming:
    """A node whose hellos this node took."""

    key: str
    lladdr: str
    if_num: int
    user: Optional[str]
    label: str
    last_ms: int  # the last accepted hello
    up: bool = True  # False after resetPeering, until the next accepted hello
    counters: Counters = field(default_factory=Counters)


def outgoing_state(peer: Outgoing, now: int, session_timeout: int, never_answered: int) -> str:
    if peer.welcomed_ms is None:
        return "INIT" if now - peer.since_ms < never_answered else "UNRESPONSIVE"
    return "ESTABLISHED" if now - peer.welcomed_ms < session_timeout else "UNRESPONSIVE"


def incoming_state(peer: Incoming, now: int, session_timeout: int) -> str:
    if now - peer.last_ms >= session_timeout:
        return "UNRESPONSIVE"
    return "ESTABLISHED" if peer.up else "INIT"


# --- the engine -------------------------------------------------------------------------------------

class UdpPeering:
    """The peering of one node: its UDP sockets, its outgoing and incoming sessions, a thread.

    `authorized()` gives the node's authorizedPasswords as they are now, `reserved()` the labels that
    other sessions of the node hold (AdminServer.attach_peering sets both). Thread-safe: the admin
    server calls in from its own thread.
    """

    def __init__(self, public_key: str, binds: list[str],
                 clock_ms: Callable[[], int] = admin_server._default_clock_ms) -> None:
        self.public_key = public_key
        self.binds = binds
        self.authorized: Callable[[], list[Entry]] = list
        self.reserved: Callable[[], set[str]] = set
        self.clock_ms = clock_ms
        self.hello_interval_ms = HELLO_INTERVAL_MS
        self.session_timeout_ms = SESSION_TIMEOUT_MS
        self.forget_ms = FORGET_MS
        self.never_answered_ms = NEVER_ANSWERED_MS
        self._outgoing: dict[str, Outgoing] = {}
        self._incoming: dict[str, Incoming] = {}
        self._order: list[str] = []  # keys, newest first
        self._lock = threading.RLock()
        self._sockets: list[socket.socket] = []
        self._selector: Optional[selectors.BaseSelector] = None
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._wake: Optional[tuple[socket.socket, socket.socket]] = None  # stop() ends the select at once

    @classmethod
    def from_conf(cls, conf: dict[str, Any], public_key: str, **kwargs: Any) -> "UdpPeering":
        """The engine of a cjdroute.conf: its UDPInterface binds, its connectTo peers."""
        interfaces = admin_server._udp_interfaces(conf)
        engine = cls(public_key, [iface.get("bind", "0.0.0.0:0") for iface in interfaces], **kwargs)
        for if_num, iface in enumerate(interfaces):
            for address, peer in sorted(iface.get("connectTo", {}).items()):
                engine._add_outgoing(peer["publicKey"], address, if_num, peer.get("login"),
                                     peer.get("password", ""), peer.get("peerName"), newest_first=False)
        return engine

    # lifecycle

    def start(self) -> "UdpPeering":
        selector = selectors.DefaultSelector()
        self._selector = selector
        self._wake = socket.socketpair()
        selector.register(self._wake[0], selectors.EVENT_READ, None)
        for if_num, bind in enumerate(self.binds):
            try:
                sock = self._bind(bind)
            except PeeringError:
                self.stop()
                raise
            self._sockets.append(sock)
            selector.register(sock, selectors.EVENT_READ, if_num)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="udp-peering", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._wake is not None:
            self._wake[1].send(b"stop")
        if self._thread is not None:
            self._thread.join(timeout=2)
        for sock in self._sockets + list(self._wake or ()):
            sock.close()
        if self._selector is not None:
            self._selector.close()
        self._sockets, self._selector, self._thread, self._wake = [], None, None, None

    def bound(self) -> list[str]:
        """The address of each socket ("ip:port", "[ip6]:port"), so port 0 binds can be found."""
        return [lladdr(sock.getsockname()) for sock in self._sockets]

    @staticmethod
    def _bind(bind: str) -> socket.socket:
        try:
            family, address = sockaddr(bind)
        except ValueError:
            raise PeeringError("UDPInterface bind {}: not ip:port or [ip6]:port".format(bind)) from None
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6:
                # [::]:port and 0.0.0.0:port are two interfaces of one node, as in cjdroute.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
        except OSError as exc:
            sock.close()
            raise PeeringError("UDPInterface bind {}: {}".format(bind, exc.strerror or exc)) from None
        sock.setblocking(False)
        return sock

    def _run(self) -> None:
        assert self._selector is not None
        next_round = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_round:
                self._send_hellos()
                self._forget()
                next_round = now + self.hello_interval_ms / 1000
            ready = self._selector.select(timeout=max(next_round - time.monotonic(), 0))
            for selected, _ in ready:
                if selected.data is None:
                    return  # woken by stop()
                self._receive(selected.fileobj, selected.data)  # type: ignore[arg-type]

    # admin API

    def connect(self, key: str, address: str, if_num: int, login: Optional[str], password: str,
                name: Optional[str]) -> Optional[str]:
        """UDPInterface_beginConnection: a new outgoing session (hello at once). Returns the label of
        the session it replaced for that key (which the admin server counts as leaked), else None."""
        with self._lock:
            old = self._outgoing.get(key) or self._incoming.get(key)
            peer = self._add_outgoing(key, address, if_num, login, password, name, newest_first=True)
            self._incoming.pop(key, None)
            self._hello(peer)
            return None if old is None else old.label

    def disconnect(self, key: str) -> bool:
        """InterfaceController_disconnectPeer: forget the sessions with `key`; False if none."""
        with self._lock:
            found = self._outgoing.pop(key, None) is not None
            found = self._incoming.pop(key, None) is not None or found
            if found:
                self._order.remove(key)
            return found

    def reset(self, key: Optional[str]) -> None:
        """InterfaceController_resetPeering: the sessions (all, or with `key`) start over."""
        now = self.clock_ms()
        with self._lock:
            for peer in self._outgoing.values():
                if key is None or peer.key == key:
                    peer.welcomed_ms, peer.since_ms = None, now
                    peer.nonces.clear()
            for incoming in self._incoming.values():
                if key is None or incoming.key == key:
                    incoming.up = False

    def peer_entries(self, now: int) -> list[dict[str, Any]]:
        """The sessions as InterfaceController_peerStats lists them, newest first."""
        with self._lock:
            return [self._entry(key, now) for key in self._order if self._listed(key, now)]

    def labels(self) -> set[str]:
        with self._lock:
            return {peer.label for peer in self._outgoing.values()} | {peer.label for peer in self._incoming.values()}

    # sessions

    def _new_label(self) -> str:
        used = self.labels() | self.reserved()
        number = 0x13
        while "0000.0000.0000.{:04x}".format(number) in used:
            number += 2
        return "0000.0000.0000.{:04x}".format(number)

    def _add_outgoing(self, key: str, address: str, if_num: int, login: Optional[str], password: str,
                      name: Optional[str], newest_first: bool) -> Outgoing:
        with self._lock:
            peer = Outgoing(key, address, if_num, login, password, name, self._new_label(), self.clock_ms())
            self._outgoing[key] = peer
            if key in self._order:
                self._order.remove(key)
            self._order.insert(0 if newest_first else len(self._order), key)
            return peer

    def _listed(self, key: str, now: int) -> bool:
        incoming = self._incoming.get(key)
        return key in self._outgoing or (incoming is not None and now - incoming.last_ms < self.forget_ms)

    def _entry(self, key: str, now: int) -> dict[str, Any]:
        peer: Outgoing | Incoming
        if key in self._outgoing:
            peer = self._outgoing[key]
            state = outgoing_state(peer, now, self.session_timeout_ms, self.never_answered_ms)
            ever_up, user, address, is_incoming = peer.ever_up, peer.name, peer.address, 0
            last = peer.welcomed_ms or peer.since_ms
        else:
            peer = self._incoming[key]
            state = incoming_state(peer, now, self.session_timeout_ms)
            ever_up, user, address, is_incoming, last = True, peer.user, peer.lladdr, 1, peer.last_ms
        entry = admin_server.peer_entry(
            key, address, state=state, label=peer.label,
            version=admin_server.PROTOCOL_VERSION if ever_up and state != "INIT" else 0, user=user, is_incoming=is_incoming,
            last_ms=last, if_num=peer.if_num, bytes_in=peer.counters.bytes_in, bytes_out=peer.counters.bytes_out)
        entry["receivedPackets"] = peer.counters.packets_in
        return entry

    def _forget(self) -> None:
        now = self.clock_ms()
        with self._lock:
            for key in [k for k, p in self._incoming.items() if now - p.last_ms >= self.forget_ms]:
                del self._incoming[key]
                if key not in self._outgoing:
                    self._order.remove(key)

    # datagrams

    def _send(self, if_num: int, datagram: bytes, address: tuple[Any, ...]) -> bool:
        if not 0 <= if_num < len(self._sockets):
            return False
        try:
            self._sockets[if_num].sendto(datagram, address)
        except OSError:  # unreachable, wrong family: the peer just does not answer
            return False
        return True

    def _hello(self, peer: Outgoing) -> None:
        try:
            family, address = sockaddr(peer.address)
        except ValueError:
            return
        nonce = os.urandom(NONCE_BYTES)
        proof = hello_proof(peer.password, nonce, self.public_key, peer.key)
        datagram = encode_hello(self.public_key, peer.login, nonce, proof)
        peer.nonces.append(nonce)
        if self._send(peer.if_num, datagram, address):
            peer.counters.bytes_out += len(datagram)

    def _send_hellos(self) -> None:
        with self._lock:
            for peer in list(self._outgoing.values()):
                self._hello(peer)

    def _receive(self, sock: socket.socket, if_num: int) -> None:
        try:
            data, source = sock.recvfrom(MAX_DATAGRAM)
        except OSError:
            return
        message = decode(data)
        if message is None or message.key == self.public_key:
            return
        if message.kind == "hello":
            self._take_hello(message, len(data), source, if_num)
        else:
            self._take_welcome(message, len(data))

    def _take_hello(self, hello: Message, size: int, source: tuple[Any, ...], if_num: int) -> None:
        entry = accepting_entry(self.authorized(), hello, self.public_key)
        if entry is None:
            return
        welcome = encode_welcome(self.public_key, hello.nonce,
                                 welcome_proof(entry["password"], hello.nonce, self.public_key, hello.key))
        sent = self._send(if_num, welcome, source)
        now = self.clock_ms()
        with self._lock:
            if hello.key in self._outgoing:
                return  # listed once, as the outgoing peer it also is
            peer = self._incoming.get(hello.key)
            if peer is None:
                peer = Incoming(hello.key, lladdr(source), if_num, entry.get("user"), self._new_label(), now)
                self._incoming[hello.key] = peer
                if hello.key in self._order:
                    self._order.remove(hello.key)
                self._order.insert(0, hello.key)
            peer.lladdr, peer.if_num, peer.user, peer.last_ms, peer.up = lladdr(source), if_num, entry.get("user"), now, True
            peer.counters.bytes_in += size
            peer.counters.packets_in += 1
            if sent:
                peer.counters.bytes_out += len(welcome)

    def _take_welcome(self, welcome: Message, size: int) -> None:
        with self._lock:
            peer = self._outgoing.get(welcome.key)
            if peer is None or welcome.nonce not in peer.nonces:
                return
            expected = welcome_proof(peer.password, welcome.nonce, welcome.key, self.public_key)
            if not hmac.compare_digest(expected, welcome.proof):
                return
            peer.nonces.remove(welcome.nonce)
            peer.welcomed_ms, peer.ever_up = self.clock_ms(), True
            peer.counters.bytes_in += size
            peer.counters.packets_in += 1


def engine_for(conf: dict[str, Any], public_key: str, mode: str) -> Optional[UdpPeering]:
    """The engine CJDNS_FAKE_PEERING=`mode` asks for: None for "" (peers shown at once), else UdpPeering."""
    if mode == "":
        return None
    if mode != MODE:
        raise PeeringError("CJDNS_FAKE_PEERING: unknown mode {!r} (known: {})".format(mode, MODE))
    return UdpPeering.from_conf(conf, public_key)
