"""
Master-side ext_pillar for cjdns fleets: one fleet file names the members and how they link;
each member publishes a public "card" (key, address, endpoints) through the Salt mine; this
module gives each minion only its own edges, with per-pair passwords derived on the master
from a key that never leaves it.

Master config::

    ext_pillar:
      - cjdns_fleet:
          fleet_file: /etc/salt/cjdns/fleet.yaml
          key_file: /etc/salt/cjdns/fleet.key

The compiler (fleet file -> validated Fleet -> one member's edges -> pillar) is plain Python
that imports and tests without a master; Salt is used only at the edges: the master's cache
(where the mine keeps cards) and `__opts__` in ext_pillar. The runner `cjdns_fleet` loads this
module through Salt's loader, so both use one copy of the compiler.

    salt-run cjdns_fleet.render vps1
"""

import base64
import errno
import hashlib
import hmac
import ipaddress
import json
import os
import re
import secrets
import stat
import sys
import types
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Union

import yaml

__virtualname__ = "cjdns_fleet"

CARD_FUNCTION = "cjdns.card"
CARD_VERSION = 1
FLEET_VERSION = 1
KEY_BYTES = 32
MAX_CARD_ENDPOINTS = 16
DERIVATION_LABEL = "cjdns-fleet-v1"
# salt/utils/mine.py: an entry sent with allow_tgt is stored wrapped.
MINE_ACL_ID = "__saltmine_acl__"
MINE_ACL_DATA = "__data__"

_MEMBER_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_FLEET_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
_KINDS = ("mesh", "hubs", "edge")
_BASE32_ALPHABET = "0123456789bcdfghjklmnpqrstuvwxyz"
_BASE32_RE = re.compile("[" + _BASE32_ALPHABET + "]{52}")
_TO_INT32 = str.maketrans(_BASE32_ALPHABET, "0123456789abcdefghijklmnopqrstuv")
_MESH = ipaddress.ip_network("fc00::/8")


def __virtual__():
    return __virtualname__


class FleetError(Exception):
    """The fleet file, the key file or the ext_pillar config is unusable; the message names
    the field and the reason, never a secret."""


class CardError(Exception):
    """A card the master refuses; the message is the reason (public data only)."""


class KeyExists(FleetError):
    """keygen found a key file already there."""


# --------------------------------------------------------------------------------------
# Keys, addresses and endpoints: the few lines of _modules/cjdns.py the master needs (an
# ext_pillar cannot import an execution module). The node spells endpoints the same way.
# --------------------------------------------------------------------------------------


def key_address(text: Any) -> str:
    """The fc00::/8 address of a canonical cjdns public key; ValueError with the reason."""
    if not isinstance(text, str):
        raise ValueError(f"must be a string, not {_kind(text)}")
    body, suffix = text[:52], text[52:]
    if suffix != ".k" or not _BASE32_RE.fullmatch(body):
        raise ValueError(f"{_short(text)} is not 52 cjdns base32 characters (lower case) and '.k'")
    number = int(body[::-1].translate(_TO_INT32), 32)
    if number >> 256:
        raise ValueError(f"{_short(text)} carries bits beyond 256 (not a key)")
    raw = number.to_bytes(32, "little")
    digest = hashlib.sha512(hashlib.sha512(raw).digest()).digest()[:16]
    if digest[0] != 0xFC:
        raise ValueError(f"{_short(text)} gives an address outside fc00::/8 (not a cjdns key)")
    hexed = digest.hex()
    return ":".join(hexed[i : i + 4] for i in range(0, 32, 4))


_ENDPOINT_RE = re.compile(r"\[([^\]]*)\]:(\d{1,5})|([^:\[\]]+):(\d{1,5})")


def normal_endpoint(text: Any) -> str:
    """An "a.b.c.d:port" / "[v6]:port" literal in the node's spelling; ValueError with the
    reason for names, zone ids, fc00::/8, unspecified, multicast and broadcast addresses."""
    if not isinstance(text, str):
        raise ValueError(f"must be a string 'a.b.c.d:port' or '[ipv6]:port', not {_kind(text)}")
    match = _ENDPOINT_RE.fullmatch(text)
    if not match:
        if text.count(":") > 1 and not text.startswith("["):
            raise ValueError(f"{_short(text)}: an IPv6 endpoint needs brackets: '[2001:db8::1]:port'")
        raise ValueError(f"{_short(text)} is not 'a.b.c.d:port' or '[ipv6]:port'")
    host6, port6, host4, port4 = match.groups()
    port = int(port6 or port4)
    if not 1 <= port <= 65535:
        raise ValueError(f"{_short(text)}: port {port} is not in 1-65535")
    ip: Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
    if host4 is not None:
        if not re.fullmatch(r"[0-9.]+", host4):
            raise ValueError(f"{_short(host4)} is not an IP address (cjdroute does not resolve names)")
        try:
            ip = ipaddress.IPv4Address(host4)
        except ValueError:
            raise ValueError(f"{_short(host4)} is not an IPv4 address") from None
    else:
        if "%" in host6:
            raise ValueError(f"{_short(host6)} has a zone id (%...), which cjdroute ignores")
        try:
            ip = ipaddress.IPv6Address(host6)
        except ValueError:
            raise ValueError(f"{_short(host6)} is not an IPv6 address") from None
        if ip in _MESH:
            raise ValueError(f"{ip} is a cjdns (fc00::/8) address, not one a peer is reached at")
    plain = (ip.ipv4_mapped or ip) if isinstance(ip, ipaddress.IPv6Address) else ip
    if plain.is_unspecified or plain.is_multicast or plain == ipaddress.IPv4Address("255.255.255.255"):
        raise ValueError(f"{ip} is an unspecified, multicast or broadcast address, not a peer's")
    return f"{ip}:{port}" if isinstance(ip, ipaddress.IPv4Address) else f"[{ip.compressed}]:{port}"


def _kind(value: Any) -> str:
    if isinstance(value, Mapping):
        return "a mapping"
    return {bool: "true/false", int: "an integer", str: "a string", list: "a list", float: "a number",
            type(None): "null"}.get(type(value), type(value).__name__)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# --------------------------------------------------------------------------------------
# The fleet file
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Member:
    nat: bool
    endpoints: tuple[str, ...]  # empty: the card's own
    public_key: str = ""  # a member without a master (a Qubes sys-cjdns): its card from here


@dataclass(frozen=True)
class Edge:
    server: str
    client: str


@dataclass(frozen=True)
class HubItem:
    hubs: frozenset[str]
    members: frozenset[str]


@dataclass(frozen=True)
class Fleet:
    """A validated fleet file with indexes from each member to the topology items it is in,
    so that one member's edges cost what that member has, not the fleet's size."""

    name: str
    epoch: int
    members: Mapping[str, Member]
    member_ids: tuple[str, ...]  # sorted
    compromised_keys: frozenset[str]
    edge_epochs: Mapping[frozenset[str], int]
    meshes: tuple[frozenset[str], ...]
    hub_items: tuple[HubItem, ...]
    explicit: Mapping[str, Mapping[str, Edge]]
    mesh_index: Mapping[str, tuple[int, ...]]
    hub_index: Mapping[str, tuple[int, ...]]


class _DuplicateKeyFinder:
    """Walks a composed YAML tree, naming each mapping key that appears twice by its path
    (PyYAML keeps the last value of a duplicate key without a word)."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def walk(self, node: yaml.Node, where: str) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, str] = {}
            for key_node, value_node in node.value:
                key = str(key_node.value)
                mark = f"line {key_node.start_mark.line + 1} column {key_node.start_mark.column + 1}"
                if key in seen:
                    self.problems.append(f"{where or 'top level'}: duplicate key {key!r} ({seen[key]} and {mark})")
                else:
                    seen[key] = mark
                self.walk(value_node, _path(where, key))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self.walk(item, f"{where}[{index}]")


def _loader() -> type:
    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_yaml(text: str) -> Any:
    """The fleet file's data; FleetError for YAML errors and duplicate keys."""
    try:
        root = yaml.compose(text, Loader=_loader())
        finder = _DuplicateKeyFinder()
        if root is not None:
            finder.walk(root, "")
        if finder.problems:
            raise FleetError("; ".join(finder.problems))
        return yaml.load(text, Loader=_loader())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise FleetError(f"not valid YAML{where}: {getattr(error, 'problem', None) or error}") from None


def _path(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def _mapping(value: Any, where: str, required: tuple[str, ...], optional: tuple[str, ...],
             problems: list[str]) -> bool:
    """Whether value is a mapping; reports unknown and missing keys."""
    if not isinstance(value, Mapping):
        problems.append(f"{where or 'the fleet file'}: must be a mapping, not {_kind(value)}")
        return False
    allowed = required + optional
    for key in value:
        if key not in allowed:
            problems.append(f"{_path(where, key)}: unknown key (allowed: {', '.join(allowed)})")
    for key in required:
        if key not in value:
            problems.append(f"{_path(where, key)}: missing")
    return True


def _count(value: Any, where: str, problems: list[str]) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        problems.append(f"{where}: {_short(value)} must be an integer >= 0")
        return 0
    return value


def member_id_problem(value: Any) -> str | None:
    if not isinstance(value, str) or not _MEMBER_ID.fullmatch(value) or value in (".", ".."):
        return f"{_short(value)} is not a minion id (1-64 of A-Z a-z 0-9 . _ -, not '.' or '..')"
    return None


def _endpoints(value: Any, where: str, problems: list[str]) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        problems.append(f"{where}: must be a non-empty list of 'a.b.c.d:port' / '[ipv6]:port' "
                        "(leave it out to use the endpoints of the member's card)")
        return ()
    normal: list[str] = []
    for index, endpoint in enumerate(value):
        try:
            spelled = normal_endpoint(endpoint)
        except ValueError as error:
            problems.append(f"{where}[{index}]: {error}")
            continue
        if spelled in normal:
            problems.append(f"{where}[{index}]: {spelled} is listed twice")
        else:
            normal.append(spelled)
    return tuple(normal)


def _members(raw: Any, problems: list[str]) -> dict[str, Member]:
    if not isinstance(raw, Mapping) or not raw:
        problems.append(f"members: must be a mapping of minion ids to options, not {_kind(raw)}"
                        + (" (empty)" if isinstance(raw, Mapping) else ""))
        return {}
    members: dict[str, Member] = {}
    for member, options in raw.items():
        where = f"members.{member}"
        reason = member_id_problem(member)
        if reason:
            problems.append(f"members: {reason}")
            continue
        options = {} if options is None else options
        if not _mapping(options, where, (), ("endpoints", "nat", "public_key"), problems):
            continue
        public_key = options.get("public_key", "")
        try:
            if public_key:
                key_address(public_key)
        except ValueError as error:
            problems.append(f"{where}.public_key: {error}")
            public_key = ""
        nat = options.get("nat", False)
        if not isinstance(nat, bool):
            problems.append(f"{where}.nat: {_short(nat)} must be true or false")
            nat = False
        endpoints = _endpoints(options["endpoints"], f"{where}.endpoints", problems) if "endpoints" in options else ()
        members[member] = Member(nat=nat, endpoints=endpoints, public_key=public_key)
    return members


def _names(value: Any, where: str, problems: list[str]) -> list[tuple[str, str]]:
    """(path, name) of a name or a list of names."""
    if isinstance(value, str):
        return [(where, value)]
    if not isinstance(value, list) or not value:
        problems.append(f"{where}: must be a group name or a non-empty list of members and groups, not {_kind(value)}")
        return []
    named = []
    for index, name in enumerate(value):
        if isinstance(name, str):
            named.append((f"{where}[{index}]", name))
        else:
            problems.append(f"{where}[{index}]: {_short(name)} must be a member id or a group name")
    return named


def _groups(raw: Any, members: Mapping[str, Member], problems: list[str]) -> dict[str, frozenset[str]]:
    """Each group as the set of members it holds, groups within it expanded."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        problems.append(f"groups: must be a mapping of group names to lists, not {_kind(raw)}")
        return {}
    listed: dict[str, list[tuple[str, str]]] = {}
    for name, value in raw.items():
        reason = member_id_problem(name)
        if reason:
            problems.append(f"groups: {reason.replace('minion id', 'group name')}")
        elif name in members:
            problems.append(f"groups.{name}: {name!r} is also a member id (a name means one thing)")
        elif not isinstance(value, list):
            problems.append(f"groups.{name}: must be a list of members and groups, not {_kind(value)}")
        else:
            listed[name] = _names(value, f"groups.{name}", problems)
    resolved: dict[str, frozenset[str]] = {}
    for name in listed:
        _resolve(name, listed, members, resolved, [], problems)
    return resolved


def _resolve(name: str, listed: Mapping[str, list[tuple[str, str]]], members: Mapping[str, Member],
             resolved: dict[str, frozenset[str]], trail: list[str], problems: list[str]) -> frozenset[str]:
    if name in resolved:
        return resolved[name]
    if name in trail:
        cycle = trail[trail.index(name):] + [name]
        problems.append(f"groups.{cycle[0]}: cycle {' -> '.join(cycle)}")
        return frozenset()
    found: set[str] = set()
    for where, item in listed[name]:
        if item in members:
            found.add(item)
        elif item in listed:
            found |= _resolve(item, listed, members, resolved, trail + [name], problems)
        else:
            problems.append(f"{where}: {item!r} is neither a member nor a group")
    resolved[name] = frozenset(found)
    return resolved[name]


def _expand(value: Any, where: str, members: Mapping[str, Member], groups: Mapping[str, frozenset[str]],
            problems: list[str]) -> frozenset[str]:
    found: set[str] = set()
    for path, name in _names(value, where, problems):
        if name in members:
            found.add(name)
        elif name in groups:
            found |= groups[name]
        else:
            problems.append(f"{path}: {name!r} is neither a member nor a group")
    return frozenset(found)


def _member_ref(value: Any, where: str, members: Mapping[str, Member], problems: list[str]) -> str | None:
    if isinstance(value, str) and value in members:
        return value
    problems.append(f"{where}: {_short(value)} is not a member")
    return None


def _hubs(raw: Any, where: str, members: Mapping[str, Member], groups: Mapping[str, frozenset[str]],
          problems: list[str]) -> HubItem | None:
    if not _mapping(raw, where, ("hubs", "members"), (), problems):
        return None
    hub_list = raw.get("hubs")
    if not isinstance(hub_list, list) or not hub_list:
        problems.append(f"{where}.hubs: must be a non-empty list of member ids, not {_kind(hub_list)}")
        hub_list = []
    hubs: set[str] = set()
    for index, hub in enumerate(hub_list):
        at = f"{where}.hubs[{index}]"
        name = _member_ref(hub, at, members, problems)
        if name is None:
            continue
        if members[name].nat:
            problems.append(f"{at}: {name!r} is behind NAT (nat: true), and a hub must accept connections")
        elif name in hubs:
            problems.append(f"{at}: {name!r} is listed twice")
        hubs.add(name)
    spokes = frozenset()
    if "members" in raw:
        spokes = _expand(raw["members"], f"{where}.members", members, groups, problems)
    return HubItem(frozenset(hubs), spokes)


def _explicit_edge(raw: Any, where: str, members: Mapping[str, Member], problems: list[str]) -> Edge | None:
    if not _mapping(raw, where, ("client", "server"), (), problems):
        return None
    client = _member_ref(raw.get("client"), f"{where}.client", members, problems) if "client" in raw else None
    server = _member_ref(raw.get("server"), f"{where}.server", members, problems) if "server" in raw else None
    if client is None or server is None:
        return None
    if client == server:
        problems.append(f"{where}: client and server are both {client!r}")
        return None
    if members[server].nat:
        problems.append(f"{where}.server: {server!r} is behind NAT (nat: true), so it can only be a client")
        return None
    return Edge(server=server, client=client)


def _topology(raw: Any, members: Mapping[str, Member], groups: Mapping[str, frozenset[str]],
              problems: list[str]) -> tuple[list[frozenset[str]], list[HubItem], dict[frozenset[str], Edge]]:
    meshes: list[frozenset[str]] = []
    hub_items: list[HubItem] = []
    explicit: dict[frozenset[str], Edge] = {}
    explicit_at: dict[frozenset[str], str] = {}
    if raw is None:
        return meshes, hub_items, explicit
    if not isinstance(raw, list):
        problems.append(f"topology: must be a list of mesh/hubs/edge items, not {_kind(raw)}")
        return meshes, hub_items, explicit
    for index, item in enumerate(raw):
        where = f"topology[{index}]"
        if not isinstance(item, Mapping) or len(item) != 1:
            problems.append(f"{where}: must be a mapping with exactly one of {', '.join(_KINDS)}, "
                            f"not {_kind(item) if not isinstance(item, Mapping) else f'{len(item)} keys'}")
            continue
        kind, value = next(iter(item.items()))
        at = f"{where}.{kind}"
        if kind == "mesh":
            meshes.append(_expand(value, at, members, groups, problems))
        elif kind == "hubs":
            hub_item = _hubs(value, at, members, groups, problems)
            if hub_item is not None:
                hub_items.append(hub_item)
        elif kind == "edge":
            edge = _explicit_edge(value, at, members, problems)
            if edge is None:
                continue
            pair = frozenset((edge.server, edge.client))
            if pair in explicit:
                problems.append(f"{at}: {edge.client} and {edge.server} are already linked by {explicit_at[pair]}")
            else:
                explicit[pair], explicit_at[pair] = edge, at
        else:
            problems.append(f"{where}: unknown kind {kind!r} (one of {', '.join(_KINDS)})")
    return meshes, hub_items, explicit


def _edge_epochs(raw: Any, members: Mapping[str, Member], problems: list[str]) -> dict[frozenset[str], int]:
    if raw is None:
        return {}
    if not isinstance(raw, list):
        problems.append(f"edge_epochs: must be a list of {{between: [a, b], epoch: n}}, not {_kind(raw)}")
        return {}
    epochs: dict[frozenset[str], int] = {}
    for index, item in enumerate(raw):
        where = f"edge_epochs[{index}]"
        if not _mapping(item, where, ("between", "epoch"), (), problems):
            continue
        epoch = _count(item.get("epoch"), f"{where}.epoch", problems) if "epoch" in item else 0
        between = item.get("between")
        if not isinstance(between, list) or len(between) != 2:
            if "between" in item:
                problems.append(f"{where}.between: must be a list of two member ids")
            continue
        ends = [_member_ref(end, f"{where}.between[{n}]", members, problems) for n, end in enumerate(between)]
        if None in ends:
            continue
        pair = frozenset(ends)
        if len(pair) != 2:
            problems.append(f"{where}.between: names {ends[0]!r} twice")
        elif pair in epochs:
            problems.append(f"{where}.between: the pair {' - '.join(sorted(pair))} is listed twice")
        else:
            epochs[pair] = epoch
    return epochs


def _compromised(raw: Any, problems: list[str]) -> frozenset[str]:
    if raw is None:
        return frozenset()
    if not isinstance(raw, list):
        problems.append(f"compromised_keys: must be a list of public keys, not {_kind(raw)}")
        return frozenset()
    keys = set()
    for index, key in enumerate(raw):
        try:
            key_address(key)
        except ValueError as error:
            problems.append(f"compromised_keys[{index}]: {error}")
            continue
        keys.add(key)
    return frozenset(keys)


def _index(sets: Iterable[Iterable[str]]) -> dict[str, tuple[int, ...]]:
    index: dict[str, list[int]] = {}
    for number, names in enumerate(sets):
        for name in names:
            index.setdefault(name, []).append(number)
    return {name: tuple(numbers) for name, numbers in index.items()}


def compile_fleet(data: Any) -> Fleet:
    """The fleet file's data, validated and indexed; FleetError naming every bad field."""
    problems: list[str] = []
    if not _mapping(data, "", ("version", "fleet", "members"),
                    ("epoch", "groups", "topology", "edge_epochs", "compromised_keys"), problems):
        raise FleetError("; ".join(problems))
    if "version" in data and (data["version"] != FLEET_VERSION or isinstance(data["version"], bool)):
        problems.append(f"version: {_short(data['version'])} is not a fleet file version this module reads (1)")
    name = data.get("fleet")
    if "fleet" in data and (not isinstance(name, str) or not _FLEET_NAME.fullmatch(name)):
        problems.append(f"fleet: {_short(name)} must be 1-32 of a-z 0-9 -, starting with a letter or digit")
    epoch = _count(data["epoch"], "epoch", problems) if "epoch" in data else 0
    members = _members(data.get("members"), problems) if "members" in data else {}
    groups = _groups(data.get("groups"), members, problems)
    meshes, hub_items, explicit = _topology(data.get("topology"), members, groups, problems)
    edge_epochs = _edge_epochs(data.get("edge_epochs"), members, problems)
    compromised = _compromised(data.get("compromised_keys"), problems)
    if problems:
        raise FleetError("; ".join(dict.fromkeys(problems)))
    by_member: dict[str, dict[str, Edge]] = {}
    for edge in explicit.values():
        by_member.setdefault(edge.server, {})[edge.client] = edge
        by_member.setdefault(edge.client, {})[edge.server] = edge
    return Fleet(
        name=name, epoch=epoch, members=members, member_ids=tuple(sorted(members)),
        compromised_keys=compromised, edge_epochs=edge_epochs, meshes=tuple(meshes),
        hub_items=tuple(hub_items), explicit=by_member,
        mesh_index=_index(meshes), hub_index=_index(item.hubs | item.members for item in hub_items),
    )


def parse_fleet(text: str) -> Fleet:
    return compile_fleet(read_yaml(text))


# --------------------------------------------------------------------------------------
# One member's edges
# --------------------------------------------------------------------------------------


def default_edge(fleet: Fleet, one: str, other: str) -> Edge | None:
    """A mesh pair's direction: the NAT side connects; else the smaller id connects to the
    larger; two NAT members cannot reach each other (None)."""
    one_nat, other_nat = fleet.members[one].nat, fleet.members[other].nat
    if one_nat and other_nat:
        return None
    if one_nat or other_nat:
        client, server = (one, other) if one_nat else (other, one)
        return Edge(server=server, client=client)
    return Edge(server=max(one, other), client=min(one, other))


def _hub_edges(fleet: Fleet, member: str) -> dict[str, Edge]:
    claims: dict[str, set[Edge]] = {}
    for number in fleet.hub_index.get(member, ()):
        item = fleet.hub_items[number]
        if member in item.hubs:
            for spoke in item.members - {member}:
                claims.setdefault(spoke, set()).add(Edge(server=member, client=spoke))
        if member in item.members:
            for hub in item.hubs - {member}:
                claims.setdefault(hub, set()).add(Edge(server=hub, client=member))
    edges = {}
    for other, claimed in claims.items():
        # Two hubs that are each other's spoke: no direction is given, so the mesh rule decides
        # (hubs are never behind NAT, so it always gives one).
        edge = next(iter(claimed)) if len(claimed) == 1 else default_edge(fleet, member, other)
        if edge is not None:
            edges[other] = edge
    return edges


@dataclass(frozen=True)
class MemberEdges:
    edges: Mapping[str, Edge]  # the other end -> the edge
    unreachable: tuple[str, ...]


def member_edges(fleet: Fleet, member: str) -> MemberEdges:
    """Every edge of one member, one per pair: explicit over hubs over mesh."""
    edges = _hub_edges(fleet, member)
    unreachable: set[str] = set()
    for number in fleet.mesh_index.get(member, ()):
        for other in fleet.meshes[number]:
            if other == member or other in edges:
                continue
            edge = default_edge(fleet, member, other)
            if edge is None:
                unreachable.add(other)
            else:
                edges[other] = edge
    edges.update(fleet.explicit.get(member, {}))
    return MemberEdges(edges, tuple(sorted(unreachable - edges.keys())))


def neighbours(fleet: Fleet, member: str) -> list[str]:
    """Sorted ids of the members that have an edge with `member`, whether or not they have cards."""
    return sorted(member_edges(fleet, member).edges)


def derive_password(key: bytes, fleet: str, server: str, client: str, fleet_epoch: int, edge_epoch: int) -> str:
    """HMAC-SHA256 of the edge's identity under the fleet key, as RFC 4648 base32, lower case,
    unpadded (52 characters). Ids cannot hold '|', so the message is unambiguous."""
    message = f"{DERIVATION_LABEL}|{fleet}|{server}|{client}|{fleet_epoch}|{edge_epoch}".encode()
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return base64.b32encode(digest).decode("ascii").rstrip("=").lower()


def edge_password(key: bytes, fleet: Fleet, edge: Edge) -> str:
    edge_epoch = fleet.edge_epochs.get(frozenset((edge.server, edge.client)), 0)
    return derive_password(key, fleet.name, edge.server, edge.client, fleet.epoch, edge_epoch)


# --------------------------------------------------------------------------------------
# Cards
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Card:
    id: str
    public_key: str
    ipv6: str
    endpoints: tuple[str, ...]


@dataclass(frozen=True)
class Refused:
    reason: str


CardLookup = Union[Card, Refused, None]  # None: no card in the mine
_CARD_KEYS = ("version", "id", "publicKey", "ipv6", "endpoints", "udp_port", "epoch")


def check_card(value: Any, minion: str, compromised: frozenset[str]) -> Card:
    """A card from `minion`'s mine, checked; CardError with the reason."""
    if not isinstance(value, Mapping):
        raise CardError(f"must be a mapping, not {_kind(value)}")
    unknown = sorted(str(key) for key in value if key not in _CARD_KEYS)
    missing = [key for key in _CARD_KEYS if key not in value]
    if unknown or missing:
        problems = [*(f"{key}: unknown key" for key in unknown), *(f"{key}: missing" for key in missing)]
        raise CardError("; ".join(problems))
    if value["version"] != CARD_VERSION or isinstance(value["version"], bool):
        raise CardError(f"version: {_short(value['version'])} is not a card version the master reads ({CARD_VERSION})")
    if value["id"] != minion:
        raise CardError(f"id: {_short(value['id'])} is not the minion it came from ({minion!r})")
    try:
        derived = key_address(value["publicKey"])
    except ValueError as error:
        raise CardError(f"publicKey: {error}") from None
    if value["publicKey"] in compromised:
        raise CardError("publicKey: listed in compromised_keys")
    try:
        stated = ipaddress.IPv6Address(value["ipv6"]) if isinstance(value["ipv6"], str) else None
    except ValueError:
        stated = None
    if stated != ipaddress.IPv6Address(derived):
        raise CardError(f"ipv6: {_short(value['ipv6'])} is not the address of its publicKey ({derived})")
    endpoints = value["endpoints"]
    if not isinstance(endpoints, list) or len(endpoints) > MAX_CARD_ENDPOINTS:
        raise CardError(f"endpoints: must be a list of at most {MAX_CARD_ENDPOINTS} endpoints")
    normal = []
    for index, endpoint in enumerate(endpoints):
        try:
            normal.append(normal_endpoint(endpoint))
        except ValueError as error:
            raise CardError(f"endpoints[{index}]: {error}") from None
    port = value["udp_port"]
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise CardError(f"udp_port: {_short(port)} is not a port number")
    if isinstance(value["epoch"], bool) or not isinstance(value["epoch"], int) or value["epoch"] < 0:
        raise CardError(f"epoch: {_short(value['epoch'])} must be an integer >= 0")
    return Card(id=minion, public_key=value["publicKey"], ipv6=derived, endpoints=tuple(dict.fromkeys(normal)))


def mine_card(mine: Any) -> Any:
    """The cjdns.card value in one minion's mine data (unwrapped when sent with allow_tgt), or
    None when there is none.

    The master's store (salt/daemons/masterapi.py `_mine`) is not to be trusted for shape: a
    `clear=True` update fails there before storing anything (its `data` is unbound), so an
    old card outlives the minion's wish to drop it (`salt-run cjdns_fleet.forget` removes it);
    and when the stored value is not a dict, the new data is dropped and the old value stored
    again. So anything that is not a mapping holding the card counts as no card."""
    if not isinstance(mine, Mapping) or CARD_FUNCTION not in mine:
        return None
    entry = mine[CARD_FUNCTION]
    if isinstance(entry, Mapping) and MINE_ACL_ID in entry:
        return entry.get(MINE_ACL_DATA)
    return entry


def fleet_card(fleet: Fleet, fetch_mine: Callable[[str], Any], minion: str) -> CardLookup:
    """The card the fleet file gives a member without a master (members.<id>.public_key, with
    its endpoints), which no mine card overrides; else the card in the mine."""
    member = fleet.members.get(minion)
    if member is None or not member.public_key:
        return lookup_card(fetch_mine, minion, fleet.compromised_keys)
    if member.public_key in fleet.compromised_keys:
        return Refused(f"members.{minion}.public_key: listed in compromised_keys")
    return Card(id=minion, public_key=member.public_key, ipv6=key_address(member.public_key),
                endpoints=member.endpoints)


def lookup_card(fetch_mine: Callable[[str], Any], minion: str, compromised: frozenset[str]) -> CardLookup:
    """The checked card of `minion`; Refused with the reason; None when it has none."""
    try:
        value = mine_card(fetch_mine(minion))
    except Exception as error:  # a corrupt cache file of one minion must not break the others
        return Refused(f"its mine data in the master's cache cannot be read ({type(error).__name__})")
    if value is None:
        return None
    try:
        return check_card(value, minion, compromised)
    except CardError as error:
        return Refused(str(error))


# --------------------------------------------------------------------------------------
# One member's pillar
# --------------------------------------------------------------------------------------


def _server_endpoints(fleet: Fleet, card: Card) -> tuple[str, ...]:
    return fleet.members[card.id].endpoints or card.endpoints


def _claimed_twice(fleet: Fleet, servers: Iterable[Card]) -> dict[str, list[str]]:
    """Endpoints that more than one server claims: given to none of them (one card must not
    take over another member's address)."""
    claims: dict[str, list[str]] = {}
    for card in servers:
        for endpoint in _server_endpoints(fleet, card):
            claims.setdefault(endpoint, []).append(card.id)
    return {endpoint: ids for endpoint, ids in claims.items() if len(ids) > 1}


def render(fleet: Fleet, key: bytes, member: str, cards: Mapping[str, CardLookup]) -> dict:
    """The pillar of `member` (an empty dict if it is not one): its peers, the passwords it
    accepts, and what the node and the operator need to know about the rest. `cards` holds
    a lookup for every other end of its edges."""
    if member not in fleet.members:
        return {}
    found = member_edges(fleet, member)
    pending: list[str] = []
    refused: list[dict] = []
    servers: list[tuple[Edge, Card]] = []
    clients: list[tuple[Edge, Card]] = []
    for other in sorted(found.edges):
        edge, card = found.edges[other], cards.get(other)
        if isinstance(card, Refused):
            refused.append({"id": other, "reason": card.reason})
        if not isinstance(card, Card):
            pending.append(other)
        elif edge.client == member:
            servers.append((edge, card))
        else:
            clients.append((edge, card))
    conflicts = _claimed_twice(fleet, (card for _, card in servers))
    for endpoint, ids in sorted(conflicts.items()):
        for other in ids:
            refused.append({"id": other, "reason": f"endpoint {endpoint} is also claimed by "
                                                   f"{', '.join(i for i in ids if i != other)}; left out"})
    peers: dict[str, dict] = {}
    reached: list[str] = []
    for edge, card in servers:
        endpoints = [e for e in _server_endpoints(fleet, card) if e not in conflicts]
        if not endpoints:
            pending.append(card.id)
            continue
        reached.append(card.id)
        password = edge_password(key, fleet, edge)
        for endpoint in endpoints:
            peers[endpoint] = {"password": password, "publicKey": card.public_key, "login": member,
                               "peerName": card.id}
    authorized = {card.id: {"password": edge_password(key, fleet, edge), "ipv6": card.ipv6}
                  for edge, card in clients}
    return {
        "cjdns": {
            "node": {
                "peers": peers,
                "authorized_passwords": authorized,
            },
            "fleet": {
                "name": fleet.name,
                "member": member,
                "epoch": fleet.epoch,
                "endpoints": list(fleet.members[member].endpoints),
                "neighbours": sorted(reached + list(authorized)),
                "pending": sorted(pending),
                "refused": refused,
                "unreachable": list(found.unreachable),
                "members": list(fleet.member_ids),
                # Its own list, not node.compromised_keys: Salt's pillar merge replaces lists,
                # and the node replaces a key listed in either.
                "compromised_keys": sorted(fleet.compromised_keys),
            },
        },
        # The list form: Salt pops allow_tgt out of a dict form in place (salt.utils.mine
        # parse_function_definition), so a second mine.update without a new process would
        # publish the card with no ACL.
        "mine_functions": {
            CARD_FUNCTION: [{"mine_function": CARD_FUNCTION}, {"allow_tgt": list(fleet.member_ids)},
                            {"allow_tgt_type": "list"}],
        },
    }


# --------------------------------------------------------------------------------------
# Files on the master: the fleet file (parsed once per content) and the key file
# --------------------------------------------------------------------------------------

_PROCESS_CACHE = "cjdns_fleet_process_cache"


def _process_cache() -> types.ModuleType:
    """What this process keeps between renders: parsed fleet files (`fleets`) and Salt cache
    objects (`salt_caches`). Salt's loader executes this module again for every Pillar it
    builds (the master builds one per request), so a module global would last one render:
    they live in a module of their own, which no loader touches. Nothing secret is kept
    (the key file is read on every render)."""
    holder = sys.modules.get(_PROCESS_CACHE)
    if holder is None:
        holder = types.ModuleType(_PROCESS_CACHE, "cjdns_fleet: what this process keeps between renders")
        holder.fleets = {}  # type: ignore[attr-defined]
        holder.salt_caches = {}  # type: ignore[attr-defined]
        holder = sys.modules.setdefault(_PROCESS_CACHE, holder)
    return holder


def load_fleet(path: str) -> Fleet:
    """The fleet file at `path`, parsed and validated once per content (path, inode, mtime,
    size); FleetError prefixed with `fleet_file <path>`."""
    cache = _process_cache().fleets
    try:
        with open(path, "rb") as handle:
            info = os.fstat(handle.fileno())
            identity = (info.st_ino, info.st_mtime_ns, info.st_size)
            cached = cache.get(path)
            if cached is not None and cached[0] == identity:
                return cached[1]
            text = handle.read().decode("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise FleetError(f"fleet_file {path}: cannot be read: {getattr(error, 'strerror', None) or error}") from None
    try:
        fleet = parse_fleet(text)
    except FleetError as error:
        raise FleetError(f"fleet_file {path}: {error}") from None
    cache[path] = (identity, fleet)
    return fleet


def read_key(path: str) -> bytes:
    """The fleet key; FileNotFoundError when there is none; FleetError naming key_file and
    what is wrong with it (never its content)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as error:
        if error.errno == errno.ENOENT:
            raise
        if error.errno == errno.ELOOP:
            raise FleetError(f"key_file {path}: is a symbolic link; give the path of the file itself") from None
        raise FleetError(f"key_file {path}: cannot be opened: {error.strerror}") from None
    try:
        info = os.fstat(fd)
        problem = _key_file_problem(info)
        if problem:
            raise FleetError(f"key_file {path}: {problem}")
        data = os.read(fd, KEY_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) != KEY_BYTES:
        raise FleetError(f"key_file {path}: changed size while read; not {KEY_BYTES} bytes")
    return data


def _key_file_problem(info: os.stat_result) -> str | None:
    owner = os.geteuid()
    if not stat.S_ISREG(info.st_mode):
        return "is not a regular file"
    if info.st_uid != owner:
        return f"is owned by uid {info.st_uid}, not by the master's user (uid {owner})"
    if info.st_mode & 0o077:
        return f"has mode {stat.S_IMODE(info.st_mode):04o}, which gives group or others access (chmod 600)"
    if info.st_size != KEY_BYTES:
        return f"is {info.st_size} bytes, not {KEY_BYTES} (made by salt-run cjdns_fleet.keygen)"
    return None


def _directory_problem(directory: str) -> str | None:
    try:
        info = os.stat(directory)
    except OSError as error:
        return f"its directory {directory} cannot be used: {error.strerror}"
    if not stat.S_ISDIR(info.st_mode):
        return f"{directory} is not a directory"
    if info.st_uid != os.geteuid():
        return f"its directory {directory} is owned by uid {info.st_uid}, not by the master's user (uid {os.geteuid()})"
    if info.st_mode & 0o022:
        return f"its directory {directory} is writable by group or others (mode {stat.S_IMODE(info.st_mode):04o})"
    return None


def create_key(path: str) -> None:
    """Write a new random key to `path`, mode 0600, never over an existing file; KeyExists if
    there is one (another process may have just made it). The key appears at `path` complete
    or not at all: it is written to an O_EXCL temporary file, then linked (link refuses an
    existing name)."""
    problem = _directory_problem(os.path.dirname(path) or ".")
    if problem:
        raise FleetError(f"key_file {path}: {problem}")
    temporary = f"{path}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as error:
        raise FleetError(f"key_file {path}: cannot be made: {error.strerror}") from None
    try:
        try:
            if os.write(fd, secrets.token_bytes(KEY_BYTES)) != KEY_BYTES:
                raise FleetError(f"key_file {path}: short write")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(temporary, path)
    except FileExistsError:
        raise KeyExists(f"key_file {path}: exists already; a new key would rotate every password, "
                        "so keygen does not overwrite it (bump the fleet's epoch to rotate)") from None
    finally:
        os.unlink(temporary)
    directory_fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory_fd)
    finally:
        os.close(directory_fd)


def ensure_key(path: str) -> bytes:
    """The fleet key, made first if there is none (a concurrent maker's key is used)."""
    try:
        return read_key(path)
    except FileNotFoundError:
        pass
    try:
        create_key(path)
    except KeyExists:
        pass
    return read_key(path)


# --------------------------------------------------------------------------------------
# Salt's edge: the ext_pillar config and the master's cache
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    fleet_file: str
    key_file: str


def config_of(fleet_file: Any, key_file: Any, file_roots: Any = None) -> Config:
    """The ext_pillar arguments, checked: absolute paths, the key outside every file_roots
    directory (minions can fetch files from there)."""
    for name, value in (("fleet_file", fleet_file), ("key_file", key_file)):
        if not isinstance(value, str) or not os.path.isabs(value):
            raise FleetError(f"ext_pillar cjdns_fleet: {name}: {_short(value)} must be an absolute path")
    key_dir = os.path.realpath(os.path.dirname(key_file))
    for roots in (file_roots or {}).values() if isinstance(file_roots, Mapping) else ():
        for root in roots if isinstance(roots, list) else ():
            real = os.path.realpath(root)
            if key_dir == real or key_dir.startswith(real.rstrip("/") + "/"):
                raise FleetError(f"ext_pillar cjdns_fleet: key_file: {key_file} is inside file_roots ({root}), "
                                 "where minions can fetch it; keep it outside")
    return Config(fleet_file=fleet_file, key_file=key_file)


def mine_fetcher(opts: Mapping) -> Callable[[str], Any]:
    """A function giving one minion's mine data from the master's cache (bank minions/<id>,
    key mine, as salt/daemons/masterapi.py stores it). The cache object is made once per
    driver and directory in this process: making one loads Salt's cache modules, which
    would otherwise cost more than the whole render."""
    import salt.cache

    caches = _process_cache().salt_caches
    where = (opts.get("cache", "localfs"), opts.get("cachedir"), opts.get("memcache_expire_seconds", 0))
    cache = caches.get(where)
    if cache is None:
        cache = caches.setdefault(where, salt.cache.factory(opts))
    return lambda minion: cache.fetch(f"minions/{minion}", "mine")


def maybe_member(path: str, minion_id: str) -> bool:
    """Whether a fleet file that does not validate still names `minion_id` under members (True
    when that cannot be told: unreadable, not YAML, no members mapping)."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
        members = data.get("members") if isinstance(data, Mapping) else None
    except (OSError, ValueError, yaml.YAMLError):
        return True
    return not isinstance(members, Mapping) or minion_id in members


def card_fingerprint(card: Any) -> str:
    """sha256 of a card's canonical JSON: the node puts it in its event, and the orchestration
    waits for exactly that card (an older valid card of the same member is not enough)."""
    return hashlib.sha256(json.dumps(card, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def member_pillar(config: Config, minion_id: str, fetch_mine: Callable[[str], Any]) -> dict:
    """What the ext_pillar gives `minion_id`: reads the fleet file (cached), the key and only
    the cards of its neighbours."""
    try:
        fleet = load_fleet(config.fleet_file)
    except FleetError:
        if not maybe_member(config.fleet_file, minion_id):
            return {}  # a broken fleet file stops its members, not every minion of the master
        raise
    if minion_id not in fleet.members:
        return {}
    key = ensure_key(config.key_file)
    others = member_edges(fleet, minion_id).edges
    cards = {other: fleet_card(fleet, fetch_mine, other) for other in others}
    return render(fleet, key, minion_id, cards)


def ext_pillar(minion_id: str, pillar: dict,  # pylint: disable=unused-argument
               fleet_file: Any = None, key_file: Any = None) -> dict:
    """The cjdns fleet pillar of `minion_id` (nothing if it is not a member). Errors in the
    fleet file or the key file raise, and Salt puts the message in the pillar's `_errors`."""
    config = config_of(fleet_file, key_file, __opts__.get("file_roots"))
    return member_pillar(config, minion_id, mine_fetcher(__opts__))
