"""
Execution module for cjdns nodes: keys and addresses, the cjdroute.conf dialect with
comment-preserving edits, peer validation and merging, and safe writes.

It imports and tests as plain Python; Salt's dunders are used only in the public Salt
functions at the bottom of the file. No function returns a private key or a password.
Only X25519 (a new key, the public key of a private one) needs the `cryptography` library,
imported on first use; without it those raise CryptographyMissing, and the rest works.

CLI examples::

    salt-call cjdns.address 0ccvtu9w6dd9qus12pqzsc37rp16p8vcptzx75wkm64406y6g9k0.k
    salt-call cjdns.check_config /etc/cjdns/cjdroute.conf
    salt-call cjdns.identity
    salt-call cjdns.peers
"""

import contextlib
import errno
import fcntl
import hashlib
import importlib
import ipaddress
import json
import os
import re
import secrets
import socket
import stat
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

__virtualname__ = "cjdns"

# The formula's defaults live in cjdns/defaults.yaml; these mirror the ones the module
# needs when called without pillar (tests/unit/test_defaults.py keeps them equal).
DEFAULT_CONFIG = "/etc/cjdns/cjdroute.conf"
HIDDEN = "<hidden>"


def __virtual__():
    # No library check: only X25519 needs `cryptography`, which Salt's thin (salt-ssh, so
    # qubesctl in a qube) does not carry. Parsing, peers, status and pillar checks work
    # without it, and the formula's package states install it before the key states run.
    return __virtualname__


class CjdnsError(Exception):
    """An error with the field it concerns and the reason, ready for a state comment."""


class KeyFormatError(CjdnsError):
    """A public or private key that cjdns (or this module, which is stricter) refuses.

    ``code`` is the name cjdns's Key_parse gives the same failure (TOO_SHORT, MALFORMED,
    DECODE_FAILED, INVALID) or NOT_CANONICAL where cjdns accepts a spelling we refuse.
    """

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class ConfigSyntaxError(CjdnsError):
    """cjdroute.conf text that cjdroute's strict parser refuses; line and column are 1-based."""

    def __init__(self, reason: str, line: int, column: int) -> None:
        super().__init__(f"line {line}, column {column}: {reason}")
        self.reason = reason
        self.line = line
        self.column = column


class ConfigError(CjdnsError):
    """A config that parses but cannot be used or edited as asked."""


class CryptographyMissing(CjdnsError):
    """X25519 (making a key, or the public key of a private one) without `cryptography`."""


CRYPTOGRAPHY_MISSING = (
    "cjdns keys (X25519) need the Python library 'cryptography', which cannot be imported here: "
    "install the Debian package python3-cryptography (apt-get install python3-cryptography) "
    "or the pip package cryptography (pip install cryptography)"
)


class PeerError(CjdnsError):
    """One or more invalid peers; ``problems`` lists every "field: reason"."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


# --------------------------------------------------------------------------------------
# Keys and addresses (reference/cjdns.md §1; checked against the v20.7 vectors)
# --------------------------------------------------------------------------------------

BASE32_ALPHABET = "0123456789bcdfghjklmnpqrstuvwxyz"
_BASE32_VALUE = {c: i for i, c in enumerate(BASE32_ALPHABET)}
_PUBLIC_KEY_CHARS = 52
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


def base32_encode(raw: bytes) -> str:
    """cjdns base32: 5-bit groups taken least-significant bit first."""
    number = int.from_bytes(raw, "little")
    count = (len(raw) * 8 + 4) // 5
    return "".join(BASE32_ALPHABET[(number >> (5 * i)) & 31] for i in range(count))


_BASE32_RE = re.compile("[" + BASE32_ALPHABET + "]*")
_TO_INT32 = str.maketrans(BASE32_ALPHABET, "0123456789abcdefghijklmnopqrstuv")


def base32_decode(text: str, nbytes: int = 32) -> bytes:
    """Inverse of base32_encode; refuses other characters and non-zero leftover bits."""
    number = 0
    if text and _BASE32_RE.fullmatch(text):  # int() reads most-significant digit first
        number = int(text[::-1].translate(_TO_INT32), 32)
        text = ""
    for i, char in enumerate(text):
        value = _BASE32_VALUE.get(char)
        if value is None:
            raise KeyFormatError(
                f"character {char!r} at position {i + 1} is not cjdns base32 "
                f"({BASE32_ALPHABET}: digits and lowercase letters without a, e, i, o)",
                "DECODE_FAILED",
            )
        number |= value << (5 * i)
    if number >> (8 * nbytes):
        raise KeyFormatError(
            "the last base32 character carries bits beyond the key's 256 "
            "(a public key ends in 0 or 1 before '.k')",
            "DECODE_FAILED",
        )
    return number.to_bytes(nbytes, "little")


def _address_bytes(raw_public: bytes) -> bytes:
    return hashlib.sha512(hashlib.sha512(raw_public).digest()).digest()[:16]


def _format_ip6(raw16: bytes) -> str:
    hexed = raw16.hex()
    return ":".join(hexed[i : i + 4] for i in range(0, 32, 4))


def parse_public_key(text: Any) -> bytes:
    """Return the 32 raw bytes of a canonical cjdns public key, or raise KeyFormatError."""
    return _parse_key(text)[0]


def _parse_key(text: Any) -> tuple[bytes, bytes]:
    """The 32 raw bytes of a canonical cjdns public key and its 16 address bytes, or KeyFormatError.

    Stricter than cjdns's Key_parse: upper case and text after '.k' are refused.
    """
    if not isinstance(text, str):
        raise KeyFormatError(f"must be a string, not {type(text).__name__}", "MALFORMED")
    if len(text) < _PUBLIC_KEY_CHARS:
        raise KeyFormatError(
            f"too short: {len(text)} characters; a public key is 52 base32 characters and '.k'",
            "TOO_SHORT",
        )
    if not text.isascii():
        raise KeyFormatError("contains non-ASCII characters", "MALFORMED")
    body, suffix, rest = text[:_PUBLIC_KEY_CHARS], text[52:54], text[54:]
    if suffix != ".k":
        raise KeyFormatError(
            f"must be 52 base32 characters followed by '.k' (found {text[52:56]!r} after "
            f"character 52; length {len(text)})",
            "MALFORMED",
        )
    if rest:
        raise KeyFormatError(
            f"trailing text after '.k': {rest!r} (cjdns ignores it; we refuse it)", "NOT_CANONICAL"
        )
    if body != body.lower():
        raise KeyFormatError(
            "upper-case base32 (cjdns reads it, but keys are written in lower case; "
            "use the lower-case spelling)",
            "NOT_CANONICAL",
        )
    raw = base32_decode(body)
    ip6 = _address_bytes(raw)
    if ip6[0] != 0xFC:
        raise KeyFormatError(
            f"not a cjdns key: its address {_format_ip6(ip6)} is not in fc00::/8", "INVALID"
        )
    return raw, ip6


def address(public_key: str) -> str:
    """The fc00::/8 address of a public key, 8 groups of 4 lowercase hex digits.

    CLI Example::

        salt-call cjdns.address 0ccvtu9w6dd9qus12pqzsc37rp16p8vcptzx75wkm64406y6g9k0.k
    """
    return _format_ip6(_parse_key(public_key)[1])


def _private_bytes(private_key: Any) -> bytes:
    if not isinstance(private_key, str) or not _HEX64.fullmatch(private_key):
        raise KeyFormatError("privateKey must be 64 hexadecimal characters", "MALFORMED")
    return bytes.fromhex(private_key)


_X25519: tuple | None = None


def _x25519() -> tuple:
    """(X25519PrivateKey.from_private_bytes, Encoding.Raw, PublicFormat.Raw), imported on first
    use; CryptographyMissing without the library."""
    global _X25519
    if _X25519 is None:
        # The library may have been installed since this process started (pkg.installed
        # earlier in the same run): do not trust the import system's cached directory listings.
        importlib.invalidate_caches()
        try:
            from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
            from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
        except ImportError:
            raise CryptographyMissing(CRYPTOGRAPHY_MISSING) from None
        _X25519 = (X25519PrivateKey.from_private_bytes, Encoding.Raw, PublicFormat.Raw)
    return _X25519


def _raw_public(private_raw: bytes) -> bytes:
    from_private_bytes, raw, raw_format = _X25519 or _x25519()
    return from_private_bytes(private_raw).public_key().public_bytes(raw, raw_format)


def public_key(private_key: str) -> str:
    """The ".k" public key of a 64-hex private key (cjdns stores private keys unclamped)."""
    raw = _raw_public(_private_bytes(private_key))
    if _address_bytes(raw)[0] != 0xFC:
        raise KeyFormatError(
            f"privateKey gives the address {_format_ip6(_address_bytes(raw))}, which is not in "
            "fc00::/8: cjdns refuses such keys",
            "INVALID",
        )
    return base32_encode(raw) + ".k"


@dataclass(frozen=True)
class Identity:
    private_key: str = field(repr=False)
    public_key: str
    ipv6: str


def identity_of(private_key: str) -> Identity:
    """Public key and address of a private key (raises KeyFormatError if unusable)."""
    pub = public_key(private_key)
    return Identity(private_key.lower(), pub, address(pub))


def _keypair() -> Identity:
    """A fresh key whose address is in fc00::/8 (about one try in 256, as cjdns's Key_gen)."""
    while True:
        private_raw = secrets.token_bytes(32)
        raw = _raw_public(private_raw)
        ip6 = _address_bytes(raw)
        if ip6[0] == 0xFC:
            return Identity(private_raw.hex(), base32_encode(raw) + ".k", _format_ip6(ip6))


def random_password(length: int = 31) -> str:
    """A password in the style of genconf: cjdns base32 characters."""
    return "".join(secrets.choice(BASE32_ALPHABET) for _ in range(length))


# --------------------------------------------------------------------------------------
# The cjdroute.conf dialect (reference/cjdns.md §2; vectors/genconf/cleanconf_parse_cases)
#
# Values are dicts, lists, strings and integers; comments are // and /* */; strings are raw
# bytes between quotes whose only escape is \xHH. With "version" >= 2 cjdroute parses
# strictly (commas required, none trailing); an older file falls back to a reader that
# tolerates missing and trailing commas. We parse into a tree that remembers where every
# value sits, so edits can rewrite just that span.
# --------------------------------------------------------------------------------------

Value = Union[dict, list, str, int]
_WHITESPACE = " \t\n"
_DIGITS = "0123456789"
_MAX_DEPTH = 64
_INT64 = (-(2**63), 2**63 - 1)


@dataclass
class Node:
    start: int
    end: int


@dataclass
class StrNode(Node):
    value: str


@dataclass
class IntNode(Node):
    value: int


@dataclass
class ListNode(Node):
    items: list[Node]


@dataclass
class Entry:
    key: StrNode
    value: Node


@dataclass
class DictNode(Node):
    entries: list[Entry]

    def get(self, key: str) -> Entry | None:
        found = [entry for entry in self.entries if entry.key.value == key]
        if len(found) > 1:
            raise ConfigError(f"key {key!r} appears {len(found)} times in one object; fix it by hand")
        return found[0] if found else None


@dataclass
class Document:
    """A parsed cjdroute.conf: the text, its tree, and whether the strict parser took it."""

    text: str
    root: DictNode
    strict: bool
    strict_error: ConfigSyntaxError | None = None

    def data(self) -> dict:
        return _to_python(self.root)


def _to_python(node: Node) -> Value:
    if isinstance(node, DictNode):
        return {entry.key.value: _to_python(entry.value) for entry in node.entries}
    if isinstance(node, ListNode):
        return [_to_python(item) for item in node.items]
    return node.value  # type: ignore[attr-defined]


def _position(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return line, column


def _describe(char: str) -> str:
    if char == "":
        return "end of file"
    if char == "\r":
        return "a carriage return (CRLF line ends: cjdroute v22 accepts only LF)"
    return repr(char)


_SKIP_RE = re.compile(r"(?:[ \t\n]+|//[^\n]*\n?|/\*.*?\*/)*", re.S)
_PLAIN_KEY_RE = re.compile(r'"([^"\\\n\0]*)"[ \t\n]*:[ \t\n]*')
_SKIP_FIRST = frozenset(" \t\n/")
_PLAIN_RUN_RE = re.compile(r'[^"\\\n\0]*')
_INTEGER_RE = re.compile(r"-?[0-9]+")


class _Parser:
    def __init__(self, text: str, strict: bool) -> None:
        self.text = text
        self.pos = 0
        self.strict = strict

    def fail(self, expected: str, offset: int | None = None) -> ConfigSyntaxError:
        offset = self.pos if offset is None else offset
        found = self.text[offset : offset + 1]
        line, column = _position(self.text, offset)
        return ConfigSyntaxError(f"expected {expected}, found {_describe(found)}", line, column)

    def unterminated(self, what: str, closer: str) -> ConfigSyntaxError:
        line, column = _position(self.text, self.pos)
        return ConfigSyntaxError(f"expected '{closer}' to close the {what} opened here, found end of file", line, column)

    def peek(self) -> str:
        return self.text[self.pos : self.pos + 1]

    def skip(self) -> None:
        """Skip whitespace and comments."""
        if self.text[self.pos : self.pos + 1] not in _SKIP_FIRST:
            return
        self.pos = _SKIP_RE.match(self.text, self.pos).end()
        if self.text.startswith("/*", self.pos):
            raise self.unterminated("comment", "*/")

    def document(self) -> DictNode:
        self.skip()
        if self.peek() != "{":
            raise self.fail("'{' (the file must be one object)")
        # Text after the closing brace is ignored by cjdroute (a parse case shows it).
        return self.dict(0)

    def value(self, depth: int) -> Node:
        if depth > _MAX_DEPTH:
            raise self.fail(f"at most {_MAX_DEPTH} levels of nesting")
        char = self.peek()
        if char == "{":
            return self.dict(depth + 1)
        if char == "[":
            return self.list(depth + 1)
        if char == '"':
            return self.string()
        if char == "-" or char in _DIGITS:
            return self.integer()
        raise self.fail("a value: an object, a list, a \"string\" or an integer")

    def separator(self, close: str, what: str) -> bool:
        """After an item: True if another item follows, False at the closing bracket."""
        self.skip()
        char = self.peek()
        if char == close:
            return False
        if char == ",":
            comma = self.pos
            self.pos += 1
            self.skip()
            if self.peek() == close:
                if self.strict:
                    raise self.fail(f"another {what} after ','; a trailing comma is not allowed", comma)
                return False
            return True
        if self.strict:
            raise self.fail(f"',' or '{close}'")
        return True

    def dict(self, depth: int) -> DictNode:
        start = self.pos
        self.pos += 1
        entries: list[Entry] = []
        self.skip()
        if self.peek() == "}":
            self.pos += 1
            return DictNode(start, self.pos, entries)
        while True:
            self.skip()
            plain = _PLAIN_KEY_RE.match(self.text, self.pos)
            if plain:  # "key": with no escapes or comments around the colon
                key = StrNode(self.pos, plain.end(1) + 1, plain.group(1))
                self.pos = plain.end()
            else:
                if self.peek() != '"':
                    raise self.fail("a \"key\" in double quotes")
                key = self.string()
                self.skip()
                if self.peek() != ":":
                    raise self.fail("':' after the key")
                self.pos += 1
            self.skip()
            entries.append(Entry(key, self.value(depth)))
            if not self.separator("}", "key"):
                break
        self.pos += 1
        return DictNode(start, self.pos, entries)

    def list(self, depth: int) -> ListNode:
        start = self.pos
        self.pos += 1
        items: list[Node] = []
        self.skip()
        if self.peek() == "]":
            self.pos += 1
            return ListNode(start, self.pos, items)
        while True:
            self.skip()
            items.append(self.value(depth))
            if not self.separator("]", "value"):
                break
        self.pos += 1
        return ListNode(start, self.pos, items)

    def string(self) -> StrNode:
        start = self.pos
        text = self.text
        end = _PLAIN_RUN_RE.match(text, start + 1).end()
        if text[end : end + 1] == '"':  # no escapes: the value is the text between the quotes
            self.pos = end + 1
            return StrNode(start, self.pos, text[start + 1 : end])
        self.pos += 1
        out = bytearray()
        while True:
            if self.pos >= len(text):
                self.pos = start
                raise self.unterminated("string", '"')
            char = text[self.pos]
            if char == '"':
                self.pos += 1
                break
            if char == "\\":
                digits = text[self.pos + 2 : self.pos + 4]
                if text[self.pos + 1 : self.pos + 2] != "x" or not re.fullmatch(r"[0-9a-fA-F]{2}", digits):
                    raise self.fail(
                        "an escape of the form \\xHH (cjdroute knows no other: write \" as \\x22 "
                        "and \\ as \\x5c)"
                    )
                out.append(int(digits, 16))
                self.pos += 4
                continue
            if char in "\n\0":
                raise self.fail("'\"' before the end of the line (strings cannot span lines)")
            out += char.encode("utf-8", "surrogateescape")
            self.pos += 1
        return StrNode(start, self.pos, out.decode("utf-8", "surrogateescape"))

    def integer(self) -> IntNode:
        match = _INTEGER_RE.match(self.text, self.pos)
        if not match:
            raise self.fail("a digit after '-'", self.pos + 1)
        value = int(match.group())
        if not _INT64[0] <= value <= _INT64[1]:
            raise self.fail("an integer that fits in 64 bits")
        start, self.pos = self.pos, match.end()
        return IntNode(start, self.pos, value)


def parse(text: str) -> Document:
    """Parse cjdroute.conf text the way cjdroute does; raise ConfigSyntaxError if it would refuse.

    A file without "version" >= 2 that only the lenient reader accepts is returned with
    ``strict=False``; editing such a file is refused (see edit functions).
    """
    try:
        root = _Parser(text, strict=True).document()
    except ConfigSyntaxError as strict_error:
        try:
            root = _Parser(text, strict=False).document()
        except ConfigSyntaxError:
            raise strict_error from None
        if _version_of(root) >= 2:
            raise strict_error from None
        return Document(text, root, strict=False, strict_error=strict_error)
    if _version_of(root) >= 2 and not text.startswith("{"):
        # cjdroute v20.7's strict reader wants "{" as the very first byte (measured with the
        # real cjdroute); only the old reader of version-less files skips what comes before.
        raise ConfigSyntaxError(
            "expected '{' as the very first character: with \"version\": 2 cjdroute refuses "
            f"anything before it, found {_describe(text[:1])}", 1, 1)
    return Document(text, root, strict=True)


def _version_of(root: DictNode) -> int:
    """The first "version" key counts: cjdroute v20.7 looks it up from the head of the object."""
    version = [e.value for e in root.entries if e.key.value == "version"]
    if version and isinstance(version[0], IntNode):
        return version[0].value
    return 0


def loads(text: str) -> dict:
    """cjdroute.conf text to Python data (a repeated key: the last one wins, as in cjdns v22)."""
    return parse(text).data()


def read_text(path: str) -> str:
    with open(path, "rb") as handle:
        raw = handle.read()
    if b"\0" in raw:
        raise ConfigError(f"{path}: contains NUL bytes; not a cjdroute.conf")
    return raw.decode("utf-8", "surrogateescape")


def read_config(path: str) -> Document:
    """Read and parse a config file; errors name the path, line and column."""
    text = read_text(path)
    try:
        return parse(text)
    except ConfigSyntaxError as error:
        raise ConfigSyntaxError(f"{path}: {error.reason}", error.line, error.column) from None


# --------------------------------------------------------------------------------------
# Writing values in the dialect
# --------------------------------------------------------------------------------------

_INDENT = "    "


_QUOTE_PLAIN_RE = re.compile(r'[\x20\x21\x23-\x5b\x5d-\x7e]*')


def _quote(value: str) -> str:
    if _QUOTE_PLAIN_RE.fullmatch(value):
        return '"' + value + '"'
    out = ['"']
    for byte in value.encode("utf-8", "surrogateescape"):
        if 0x20 <= byte <= 0x7E and byte not in (0x22, 0x5C):
            out.append(chr(byte))
        else:
            out.append(f"\\x{byte:02x}")
    out.append('"')
    return "".join(out)


def dumps(value: Value, indent: str = "", unit: str = _INDENT) -> str:
    """Serialize for cjdroute: dicts one key a line, `"key": value`, \\xHH escapes only."""
    if isinstance(value, bool) or value is None or isinstance(value, float):
        raise ConfigError(f"cjdroute.conf cannot hold {value!r}: only objects, lists, strings, integers")
    if isinstance(value, int):
        if not _INT64[0] <= value <= _INT64[1]:
            raise ConfigError(f"integer {value} does not fit in 64 bits")
        return str(value)
    if isinstance(value, str):
        return _quote(value)
    inner = indent + unit
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = [f"{inner}{_quote(str(k))}: {dumps(v, inner, unit)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    if isinstance(value, (list, tuple)):
        if not value:
            return "[]"
        items = [inner + dumps(v, inner, unit) for v in value]
        return "[\n" + ",\n".join(items) + "\n" + indent + "]"
    raise ConfigError(f"cjdroute.conf cannot hold a {type(value).__name__}")


def cleanconf(text: str) -> str:
    """What cjdroute v20.7 `--cleanconf` prints for a config it accepts (tests compare bytes):
    2-space indent, `"key" : value`, \\xHH for bytes outside 0x20-0x7d, the first "version"
    set to 2, or, when there is none, a "version" put before the first top-level key that sorts
    after it (at the end if none does), as v20.7 inserts it."""
    root = parse(text).root
    entries = []
    has_version = any(e.key.value == "version" for e in root.entries)
    seen_version = False
    for entry in root.entries:
        key = entry.key.value
        if not has_version and not seen_version and key.encode("utf-8", "surrogateescape") > b"version":
            entries.append('  "version" : 2')
            seen_version = True
        first_version = key == "version" and not seen_version
        seen_version = seen_version or key == "version"
        value = "2" if first_version else _clean_node(entry.value, "  ")
        entries.append(f"  {_clean_string(key)} : {value}")
    if not seen_version:
        entries.append('  "version" : 2')
    return _clean_container("{", "}", entries, "") + "\n"


def _clean_string(value: str) -> str:
    out = ['"']
    for byte in value.encode("utf-8", "surrogateescape"):
        out.append(chr(byte) if 0x20 <= byte < 0x7E and byte not in (0x22, 0x5C) else f"\\x{byte:02X}")
    return "".join(out) + '"'


def _clean_container(open_: str, close: str, items: list, indent: str) -> str:
    if not items:
        return f"{open_}\n\n{indent}{close}"
    return open_ + "\n" + ",\n".join(items) + "\n" + indent + close


def _clean_node(node: Node, indent: str) -> str:
    inner = indent + "  "
    if isinstance(node, StrNode):
        return _clean_string(node.value)
    if isinstance(node, IntNode):
        return str(node.value)
    if isinstance(node, ListNode):
        return _clean_container("[", "]", [inner + _clean_node(item, inner) for item in node.items], indent)
    assert isinstance(node, DictNode)
    entries = [f"{inner}{_clean_string(e.key.value)} : {_clean_node(e.value, inner)}" for e in node.entries]
    return _clean_container("{", "}", entries, indent)


# --------------------------------------------------------------------------------------
# Comment-preserving edits
#
# An edit changes only the spans of the values it manages: a changed value is replaced in
# place, a removed entry takes its own line(s) and one comma with it, new entries are added
# after the last one with the indentation of their siblings. Comments stay where they are.
# Unchanged input gives identical bytes; every result is re-parsed strictly.
# --------------------------------------------------------------------------------------

Path = tuple  # of str (object keys) and int (list indexes)
DELETE = object()


@dataclass
class _Item:
    start: int
    end: int
    value: Node


def _items(node: Node) -> list[_Item]:
    if isinstance(node, DictNode):
        return [_Item(e.key.start, e.value.end, e.value) for e in node.entries]
    if isinstance(node, ListNode):
        return [_Item(i.start, i.end, i) for i in node.items]
    raise ConfigError("internal: not a container")


def _line_start(text: str, offset: int) -> int:
    return text.rfind("\n", 0, offset) + 1


def _indent_at(text: str, offset: int) -> str | None:
    """Leading whitespace of offset's line if only whitespace precedes offset on it."""
    start = _line_start(text, offset)
    prefix = text[start:offset]
    return prefix if prefix.strip(" \t") == "" else None


def _line_indent(text: str, offset: int) -> str:
    start = _line_start(text, offset)
    line = text[start:offset]
    return line[: len(line) - len(line.lstrip(" \t"))]


def _rest_of_line(text: str, offset: int) -> int:
    """End of offset's line if only spaces and a // comment follow; else -1."""
    pos = offset
    while pos < len(text) and text[pos] in " \t":
        pos += 1
    if text.startswith("//", pos):
        newline = text.find("\n", pos)
        return len(text) if newline < 0 else newline
    if pos >= len(text) or text[pos] == "\n":
        return pos
    return -1


def _next_comma(text: str, offset: int) -> int:
    scanner = _Parser(text, strict=True)
    scanner.pos = offset
    scanner.skip()
    if scanner.peek() != ",":
        raise ConfigError("internal: expected a comma between items")
    return scanner.pos


def _removal_span(text: str, item: _Item, with_comma: bool) -> tuple[int, int]:
    """The span to cut to remove one item (and the comma after it when asked)."""
    indent = _indent_at(text, item.start)
    end = item.end
    if with_comma:
        comma = _next_comma(text, end)
        if text[end:comma].strip(" \t") != "":
            return item.start, comma + 1  # comma on another line: cut just item..comma
        end = comma + 1
    line_end = _rest_of_line(text, end)
    if indent is not None and line_end >= 0:
        return _line_start(text, item.start), min(line_end + 1, len(text))
    return item.start, end


def _child_indent(text: str, node: Node, items: list[_Item], unit: str) -> str:
    if items:
        indent = _indent_at(text, items[-1].start)
        if indent is not None:
            return indent
    body = text[node.start + 1 : node.end - 1]
    lines = [line for line in body.split("\n")[1:] if line.strip()]
    closing = _indent_at(text, node.end - 1)
    if lines and closing is not None:
        last = lines[-1]
        return last[: len(last) - len(last.lstrip(" \t"))]
    return _line_indent(text, node.start) + unit


def _render_item(key: str | None, value: Value, indent: str, unit: str) -> str:
    rendered = dumps(value, indent, unit)
    return rendered if key is None else f"{_quote(key)}: {rendered}"


def _apply(text: str, edits: list[tuple[int, int, str]]) -> str:
    out, last = [], 0
    for start, end, replacement in sorted(edits, key=lambda e: (e[0], e[1])):
        if start < last:
            raise ConfigError("internal: overlapping edits")
        out.append(text[last:start])
        out.append(replacement)
        last = end
    out.append(text[last:])
    return "".join(out)


def _container_edits(
    text: str, node: Node, changes: dict, unit: str
) -> tuple[list[tuple[int, int, str]], list[tuple[str | None, Value]]]:
    """Edits for updates and deletions in one object or list; additions are returned apart."""
    items = _items(node)
    keys: list[Any]
    if isinstance(node, DictNode):
        keys = [e.key.value for e in node.entries]
        if len(set(keys)) != len(keys):
            dup = next(k for k in keys if keys.count(k) > 1)
            raise ConfigError(f"key {dup!r} appears twice in the object being edited; fix it by hand")
    else:
        keys = list(range(len(items)))
    edits: list[tuple[int, int, str]] = []
    deleted = {i for i, k in enumerate(keys) if changes.get(k, None) is DELETE}
    survivors = [i for i in range(len(items)) if i not in deleted]
    last_survivor = survivors[-1] if survivors else -1
    for i, (key, item) in enumerate(zip(keys, items)):
        if key not in changes or i in deleted:
            continue
        new = changes[key]
        if _to_python(item.value) == new and _same_type(item.value, new):
            continue
        indent = _indent_at(text, item.start)
        indent = _line_indent(text, item.start) if indent is None else indent
        edits.append((item.value.start, item.value.end, dumps(new, indent, unit)))
    for i in sorted(deleted):
        trailing = i > last_survivor
        last = i == len(items) - 1
        edits.append((*_removal_span(text, items[i], with_comma=not last), ""))
        if trailing and i == last_survivor + 1 and last_survivor >= 0:
            comma = _next_comma(text, items[last_survivor].end)
            edits.append((comma, comma + 1, ""))
    present = set(keys)
    additions = [
        (k if isinstance(node, DictNode) else None, v)
        for k, v in changes.items()
        if k not in present and v is not DELETE and not isinstance(k, int)
    ]
    return edits, additions


def _same_type(node: Node, value: Any) -> bool:
    kinds = {StrNode: str, IntNode: int, DictNode: dict, ListNode: list}
    return isinstance(value, kinds[type(node)]) and not isinstance(value, bool)


def _addition_edits(text: str, node: Node, additions: list, unit: str) -> list[tuple[int, int, str]]:
    if not additions:
        return []
    items = _items(node)
    indent = _child_indent(text, node, items, unit)
    rendered = [indent + _render_item(k, v, indent, unit) for k, v in additions]
    if items:
        end = items[-1].end
        line_end = _rest_of_line(text, end)
        block = "\n" + ",\n".join(rendered)
        if line_end < 0:
            return [(end, end, "," + block)]
        return [(end, end, ","), (line_end, line_end, block)]
    closing = node.end - 1
    if _indent_at(text, closing) is not None:
        at = _line_start(text, closing)
        return [(at, at, ",\n".join(rendered) + "\n")]
    close_indent = _line_indent(text, node.start)
    return [(node.start + 1, closing, "\n" + ",\n".join(rendered) + "\n" + close_indent)]


def _collapse_empty(text: str, path: Path, unit: str) -> str:
    """An object or list whose last entry was removed and that holds only whitespace: {} / []."""
    node = _lookup(parse(text).root, path)
    if _items(node) == [] and text[node.start + 1 : node.end - 1].strip() == "":
        return text[: node.start + 1] + text[node.end - 1 :]
    return text


def _lookup(root: DictNode, path: Path) -> Node:
    node: Node = root
    for depth, step in enumerate(path):
        where = "/".join(str(p) for p in path[: depth + 1])
        if isinstance(step, int):
            if not isinstance(node, ListNode) or not -len(node.items) <= step < len(node.items):
                raise ConfigError(f"{where}: no such list item")
            node = node.items[step]
        else:
            if not isinstance(node, DictNode):
                raise ConfigError(f"{where}: parent is not an object")
            entry = node.get(step)
            if entry is None:
                raise ConfigError(f"{where}: missing")
            node = entry.value
    return node


def _require_strict(doc: Document) -> None:
    if not doc.strict:
        assert doc.strict_error is not None
        raise ConfigSyntaxError(
            "the file has no \"version\": 2 and only cjdroute's old lenient reader accepts it ("
            + doc.strict_error.reason
            + "); fix this spot or add the missing commas before it can be edited safely",
            doc.strict_error.line,
            doc.strict_error.column,
        )


def edit(text: str, path: Path, changes: dict, unit: str = _INDENT) -> str:
    """Apply changes to the object or list at path: {key: new value | DELETE}.

    For lists, keys are indexes to replace or delete; new items go in ``changes[None]``
    as a list to append. Returns text identical to the input when nothing changes.
    """
    doc = parse(text)
    _require_strict(doc)
    node = _lookup(doc.root, path)
    appends = changes.pop(None, []) if isinstance(node, ListNode) else []
    edits, additions = _container_edits(text, node, changes, unit)
    additions += [(None, v) for v in appends]
    removed_any = any(v is DELETE for v in changes.values())
    if edits:
        text = _apply(text, edits)
        if removed_any:
            text = _collapse_empty(text, path, unit)
        node = _lookup(parse(text).root, path)
    if additions:
        text = _apply(text, _addition_edits(text, node, additions, unit))
    if edits or additions:
        parse(text)  # what we write must pass the strict parser
    return text


def set_path(text: str, path: Path, value: Value, unit: str = _INDENT) -> str:
    """Set one value, creating missing parent objects."""
    root = parse(text).root
    for depth in range(len(path) - 1, -1, -1):
        try:
            parent = _lookup(root, path[:depth])
        except ConfigError:
            continue
        nested: Any = value
        for step in reversed(path[depth + 1 :]):
            nested = {step: nested}
        if not isinstance(parent, (DictNode, ListNode)):
            where = "/".join(str(p) for p in path[:depth]) or "top level"
            raise ConfigError(f"{where}: is not an object, cannot set {'/'.join(map(str, path))}")
        return edit(text, path[:depth], {path[depth]: nested}, unit)
    raise ConfigError("internal: empty path")


def delete_path(text: str, path: Path) -> str:
    """Remove one key or list item; a missing one is not an error (nothing changes)."""
    try:
        _lookup(parse(text).root, path)
    except ConfigError:
        return text
    return edit(text, path[:-1], {path[-1]: DELETE})


def get_path(data: Any, path: Path, default: Any = None) -> Any:
    for step in path:
        if isinstance(step, int) and isinstance(data, list) and -len(data) <= step < len(data):
            data = data[step]
        elif isinstance(step, str) and isinstance(data, dict) and step in data:
            data = data[step]
        else:
            return default
    return data


# --------------------------------------------------------------------------------------
# Peers (connectTo entries)
# --------------------------------------------------------------------------------------

PEER_FIELDS = ("password", "publicKey", "login", "peerName")
_MESH = ipaddress.ip_network("fc00::/8")


def _split_endpoint(endpoint: Any) -> tuple[int, Any, int]:
    """(family, address, port) of a connectTo key `a.b.c.d:port` / `[v6]:port`; raises CjdnsError."""
    if not isinstance(endpoint, str):
        raise CjdnsError(f"must be a string 'a.b.c.d:port' or '[ipv6]:port', not {type(endpoint).__name__}")
    match = re.fullmatch(r"\[([^\]]*)\]:(\d{1,5})|([^:\[\]]+):(\d{1,5})", endpoint)
    if not match:
        if endpoint.count(":") > 1 and not endpoint.startswith("["):
            raise CjdnsError("an IPv6 endpoint needs brackets: '[2001:db8::1]:port'")
        raise CjdnsError("must be 'a.b.c.d:port' or '[ipv6]:port' with a port in 1-65535")
    host6, port6, host4, port4 = match.groups()
    port = int(port6 or port4)
    if not 1 <= port <= 65535:
        raise CjdnsError(f"port {port} is not in 1-65535")
    if host4 is not None:
        if not re.fullmatch(r"[0-9.]+", host4):
            raise CjdnsError(f"{host4!r} is not an IP address; cjdroute does not resolve hostnames")
        try:
            return 4, ipaddress.IPv4Address(host4), port
        except ValueError:
            raise CjdnsError(f"{host4!r} is not an IPv4 address") from None
    if "%" in host6:
        # libuv's inet_pton, which cjdroute's Sockaddr_parse uses, drops the zone silently.
        raise CjdnsError(f"{host6!r} has a zone id (%...), which cjdroute ignores; give an address without one")
    try:
        ip = ipaddress.IPv6Address(host6)
    except ValueError:
        raise CjdnsError(f"{host6!r} is not an IPv6 address") from None
    if ip in _MESH:
        raise CjdnsError(
            f"{ip} is a cjdns (fc00::/8) address; a peer is reached over the internet or LAN, "
            "not over cjdns itself"
        )
    return 6, ip, port


def endpoint_family(endpoint: Any) -> int:
    """4 or 6 for a connectTo key `a.b.c.d:port` / `[v6]:port`; raises CjdnsError with the reason."""
    return _split_endpoint(endpoint)[0]


_NOT_A_PEERS = ", not a peer's"


def peer_endpoint(endpoint: Any) -> str:
    """A peer's endpoint in one spelling (IPv6 compressed lower case, port without leading
    zeros), so two spellings of one peer compare equal; refuses addresses no peer can have."""
    family, ip, port = _split_endpoint(endpoint)
    plain = ip.ipv4_mapped or ip if family == 6 else ip
    if plain.is_unspecified:
        raise CjdnsError(f"{ip} is the unspecified address{_NOT_A_PEERS}")
    if plain.is_multicast:
        raise CjdnsError(f"{ip} is a multicast address{_NOT_A_PEERS}")
    if plain == ipaddress.IPv4Address("255.255.255.255"):
        raise CjdnsError(f"{ip} is the broadcast address{_NOT_A_PEERS}")
    return f"{ip}:{port}" if family == 4 else f"[{ip.compressed}]:{port}"


def endpoint_key(endpoint: Any) -> Any:
    """What two connectTo keys are compared by: the normal spelling, or the key itself when
    it is not a valid peer endpoint (a hand-added entry is compared as written)."""
    try:
        return peer_endpoint(endpoint)
    except CjdnsError:
        return endpoint


# Configurator.c hands each connectTo entry to the core as one admin request, and the core
# refuses requests over 512 bytes (ADMIN_MAX_REQUEST_BYTES): these bounds keep an entry well
# inside that.
_PEER_FIELD_BYTES = {"password": 256, "login": 64, "peerName": 64}


def _check_text_field(value: Any, what: str, max_bytes: int = 256) -> str | None:
    """cjdroute takes any string; written with \\xHH escapes for `"`, `\\` and non-ASCII.
    Refused: empty, too long, and control characters (v20.7 refuses a raw newline or NUL and
    a peer could not type them)."""
    if not isinstance(value, str):
        return f"must be a string, not {type(value).__name__}"
    if value == "":
        return "must not be empty"
    if len(value.encode("utf-8", "surrogateescape")) > max_bytes:
        return f"longer than {max_bytes} bytes"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return f"{what} must not contain control characters (newline, tab, NUL...)"
    return None


def peer_problems(endpoint: Any, peer: Any, prefix: str = "peers") -> list[str]:
    """Every problem of one peer as "field: reason" (empty when the peer is valid)."""
    where = f"{prefix}.{endpoint}"
    problems: list[str] = []
    try:
        peer_endpoint(endpoint)
    except CjdnsError as error:
        problems.append(f"{where}: {error}")
    if not isinstance(peer, dict):
        return problems + [f"{where}: must be a mapping of {', '.join(PEER_FIELDS)}, not {type(peer).__name__}"]
    for name in sorted(set(peer) - set(PEER_FIELDS), key=str):
        problems.append(f"{where}.{name}: unknown field (allowed: {', '.join(PEER_FIELDS)})")
    if "publicKey" not in peer:
        problems.append(f"{where}.publicKey: missing")
    else:
        try:
            parse_public_key(peer["publicKey"])
        except KeyFormatError as error:
            problems.append(f"{where}.publicKey: {error}")
    if "password" not in peer:
        problems.append(f"{where}.password: missing")
    for name, limit in _PEER_FIELD_BYTES.items():
        if name in peer:
            reason = _check_text_field(peer[name], "a password" if name == "password" else name, limit)
            if reason:
                problems.append(f"{where}.{name}: {reason}")
    return problems


def _duplicate_endpoints(endpoints: list) -> dict:
    """{later spelling: first spelling} for endpoints that name the same peer."""
    first: dict = {}
    duplicates = {}
    for endpoint in endpoints:
        key = endpoint_key(endpoint)
        if key in first:
            duplicates[endpoint] = first[key]
        else:
            first[key] = endpoint
    return duplicates


def validate_peers(peers: Any, prefix: str = "peers") -> dict:
    """Check every peer; raise PeerError listing all problems; return the peers in field order."""
    if not isinstance(peers, dict):
        raise PeerError([f"{prefix}: must be a mapping of 'address:port' to peer settings, not {type(peers).__name__}"])
    problems = [p for endpoint, peer in peers.items() for p in peer_problems(endpoint, peer, prefix)]
    for endpoint, first in _duplicate_endpoints(list(peers)).items():
        problems.append(f"{prefix}.{endpoint}: the same peer as {first} (one address and port, spelled twice)")
    if problems:
        raise PeerError(problems)
    return {
        endpoint: {name: peer[name] for name in PEER_FIELDS if name in peer}
        for endpoint, peer in peers.items()
    }


def _udp_interfaces(data: dict) -> tuple[Path, list]:
    """Path prefix and list of UDPInterface blocks (cjdroute also accepts a single object)."""
    block = get_path(data, ("interfaces", "UDPInterface"))
    if isinstance(block, dict):
        return ("interfaces", "UDPInterface"), [block]
    if isinstance(block, list):
        return ("interfaces", "UDPInterface"), block
    return ("interfaces", "UDPInterface"), []


def _block_path(data: dict, index: int) -> Path:
    prefix, _ = _udp_interfaces(data)
    return prefix if isinstance(get_path(data, prefix), dict) else prefix + (index,)


def _bind_family(bind: Any) -> int | None:
    if not isinstance(bind, str):
        return None
    return 6 if bind.startswith("[") else 4


def configured_peers(data: dict) -> dict:
    """{endpoint: {"interface": index, **fields}} for every UDP connectTo entry."""
    found: dict = {}
    _, blocks = _udp_interfaces(data)
    for index, block in enumerate(blocks):
        connect_to = block.get("connectTo") if isinstance(block, dict) else None
        if isinstance(connect_to, dict):
            for endpoint, peer in connect_to.items():
                found[endpoint] = {"interface": index, **(peer if isinstance(peer, dict) else {})}
    return found


def connect_to_problems(data: dict) -> list[str]:
    """Warnings: a connectTo that is not an object (cjdroute skips it, peers and all), and
    one peer listed twice under two spellings."""
    warnings = []
    _, blocks = _udp_interfaces(data)
    for index, block in enumerate(blocks):
        connect_to = block.get("connectTo") if isinstance(block, dict) else None
        where = "/".join(map(str, _block_path(data, index) + ("connectTo",)))
        if connect_to is not None and not isinstance(connect_to, dict):
            warnings.append(f"{where}: is {_kind(connect_to)}, not an object; cjdroute ignores it "
                            "(peers go in an object keyed \"address:port\")")
    for endpoint, first in _duplicate_endpoints(list(configured_peers(data))).items():
        warnings.append(f"connectTo.{endpoint}: the same peer as {first} (one address and port, spelled twice); keep one")
    return warnings


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return "an empty list" if not value else "a list"
    return {str: "a string", int: "an integer"}.get(type(value), type(value).__name__)


def _peer_block(data: dict, family: int) -> tuple[Path, Any]:
    """The path of the UDPInterface block of this family, and its connectTo value."""
    _, blocks = _udp_interfaces(data)
    for index, block in enumerate(blocks):
        if isinstance(block, dict) and _bind_family(block.get("bind")) == family:
            return _block_path(data, index), block.get("connectTo")
    bind = "0.0.0.0:<port>" if family == 4 else "[::]:<port>"
    raise ConfigError(
        f"no interfaces.UDPInterface entry is bound to IPv{family} (\"bind\": \"{bind}\"); "
        f"an IPv{family} peer needs one"
    )


@dataclass
class PeerPlan:
    text: str
    added: list[str]
    updated: list[str]
    removed: list[str]


def merge_peers(text: str, peers: dict, exclusive: bool = False, prune: tuple = ()) -> PeerPlan:
    """Merge validated peers into the UDPInterface of their address family.

    Endpoints are compared in one spelling (``peer_endpoint``): a pillar peer that a file
    entry already names under another spelling updates that entry, which keeps its key.
    Hand-added peers are kept unless ``exclusive``; endpoints in ``prune`` (peers this
    formula added earlier and pillar no longer lists) are removed either way. A missing or
    empty (``[]``) connectTo is filled; any other non-object one is an error.
    """
    doc = parse(text)
    _require_strict(doc)
    data = doc.data()
    current = configured_peers(data)
    by_key: dict = {}
    for endpoint in current:
        by_key.setdefault(endpoint_key(endpoint), endpoint)
    plan: dict[Path, dict] = {}
    fresh: dict[Path, dict] = {}  # blocks whose connectTo is written whole
    added, updated, removed = [], [], []
    kept: set = set()

    def where(old: dict) -> Path:
        return _block_path(data, old["interface"]) + ("connectTo",)

    blocks: dict[int, tuple[Path, Any]] = {}  # per family: the config is edited only at the end
    for endpoint, peer in peers.items():
        normal = peer_endpoint(endpoint)
        family = 6 if normal.startswith("[") else 4
        if family not in blocks:
            blocks[family] = _peer_block(data, family)
        block, connect_to = blocks[family]
        path = block + ("connectTo",)
        if connect_to is not None and not isinstance(connect_to, dict) and connect_to != []:
            raise ConfigError(f"{'/'.join(map(str, path))}: is {_kind(connect_to)}, not an object; "
                              "cjdroute ignores it: make it an object keyed \"address:port\" (or remove it)")
        existing = by_key.get(normal)
        old = current.get(existing) if existing else None
        key = existing or endpoint
        if old is None:
            added.append(endpoint)
        elif where(old) != path:  # hand-placed in the wrong family's interface: move it
            plan.setdefault(where(old), {})[key] = DELETE
            updated.append(endpoint)
        elif {k: v for k, v in old.items() if k != "interface"} == peer:
            kept.add(key)
            continue
        else:
            updated.append(endpoint)
        kept.add(key)
        if isinstance(connect_to, dict):
            plan.setdefault(path, {})[key] = peer
        else:
            fresh.setdefault(block, {})[key] = peer
    pruned = {endpoint_key(e) for e in prune}
    for endpoint, old in current.items():
        if endpoint in kept or not (exclusive or endpoint_key(endpoint) in pruned):
            continue
        plan.setdefault(where(old), {})[endpoint] = DELETE
        removed.append(endpoint)
    for block, entries in fresh.items():
        plan.setdefault(block, {})["connectTo"] = entries
    text = _edit_paths(text, plan, doc)
    return PeerPlan(text, sorted(added), sorted(updated), sorted(removed))


def _edit_paths(text: str, plan: dict, doc: Document) -> str:
    """edit() for several objects of the parsed ``doc`` of ``text`` at once, without parsing
    again when nothing is deleted. The result is checked by write_config before it is written."""
    if any(value is DELETE for changes in plan.values() for value in changes.values()):
        for path, changes in plan.items():
            text = edit(text, path, changes)
        return text
    edits: list = []
    for path, changes in plan.items():
        node = _lookup(doc.root, path)
        updates, additions = _container_edits(text, node, changes, _INDENT)
        edits += updates + _addition_edits(text, node, additions, _INDENT)
    return _apply(text, edits) if edits else text


# --------------------------------------------------------------------------------------
# Files: atomic writes and a lock per config directory
# --------------------------------------------------------------------------------------


def _refuse_special(path: str) -> None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode):
        raise ConfigError(f"{path}: is a symbolic link; refusing to replace it (point the formula at the real file)")
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"{path}: is not a regular file")


def atomic_write(path: str, data: bytes, mode: int = 0o600) -> None:
    """Write data to path so that readers see the old or the new file, whole, never a mix.

    The temporary file is created in the same directory with its final mode, synced,
    renamed over path, and the directory is synced. Any failure leaves the old file as it was.
    """
    _refuse_special(path)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        owner = os.stat(path)
    except FileNotFoundError:
        owner = None
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # the umask must not widen or narrow it
        if owner is not None:
            os.fchown(fd, owner.st_uid, owner.st_gid)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_config(path: str, text: str) -> None:
    """Atomically write config text after checking that cjdroute's strict parser accepts it."""
    doc = parse(text)
    _require_strict(doc)
    atomic_write(path, text.encode("utf-8", "surrogateescape"), 0o600)


@contextlib.contextmanager
def locked(path: str, timeout: float = 60.0) -> Iterator[None]:
    """Serialize read-modify-write cycles on one config (two applies at once).

    The lock is an flock on the config's directory itself, so it leaves no file behind.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as error:
                if error.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                    raise ConfigError(f"{path}: another run is editing it (waited {timeout:.0f} s)") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------
# Modes and owners the formula guarantees (checked on every apply, not only at creation)
# --------------------------------------------------------------------------------------


def mode_drift(path: str, mode: int, directory: bool = False, uid: int = 0, gid: int = 0) -> dict:
    """How ``path`` differs from a real file (or directory) with ``mode`` owned by uid:gid:
    ``{"mode": {"old", "new"}, "owner": {"old", "new"}}``, only what differs; {} when it is
    as wanted or absent. A symbolic link or the wrong kind of file is refused (ConfigError):
    a link could send a private key wherever it points, so it is never followed or replaced.
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return {}
    kind = "directory" if directory else "regular file"
    if stat.S_ISLNK(info.st_mode):
        raise ConfigError(f"{path}: is a symbolic link (to {os.readlink(path)}); refusing to use it, "
                          f"make it a real {kind} owned by root")
    if not (stat.S_ISDIR if directory else stat.S_ISREG)(info.st_mode):
        raise ConfigError(f"{path}: is not a {kind}")
    drift = {}
    if stat.S_IMODE(info.st_mode) != mode:
        drift["mode"] = {"old": f"{stat.S_IMODE(info.st_mode):04o}", "new": f"{mode:04o}"}
    if (info.st_uid, info.st_gid) != (uid, gid):
        drift["owner"] = {"old": f"{info.st_uid}:{info.st_gid}", "new": f"{uid}:{gid}"}
    return drift


def repair_mode(path: str, mode: int, uid: int = 0, gid: int = 0) -> None:
    """Set owner then mode (chown clears setuid/setgid, so the mode comes last), without
    following a link that appeared since mode_drift looked."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------
# The fail-closed firewall of a gateway qube, as the running system has it
# (cjdns/files/proxy/firewall.jinja loads it; these functions only read)
# --------------------------------------------------------------------------------------

MESH = "fc00::/8"
FIREWALL_TABLE = "qubes"


def _match(op: str, left: dict, right: Any) -> dict:
    return {"match": {"op": op, "left": left, "right": right}}


def firewall_chains(udp_port: int, tun_device: str) -> dict:
    """The formula's own chains, ``{(family, chain): [rule expressions]}`` in nft's JSON form:
    the peering port open except from the qubes behind (interface group 2) and from the mesh
    itself (the tun device), and mesh destinations forwarded only through the tun device."""
    peering = [_match("!=", {"meta": {"key": "iifgroup"}}, 2),
               _match("!=", {"meta": {"key": "iifname"}}, tun_device),
               _match("==", {"payload": {"protocol": "udp", "field": "dport"}}, int(udp_port)),
               {"accept": None}]
    net, length = MESH.split("/")
    mesh_forward = [_match("==", {"payload": {"protocol": "ip6", "field": "daddr"}},
                           {"prefix": {"addr": net, "len": int(length)}}),
                    _match("!=", {"meta": {"key": "oifname"}}, tun_device),
                    {"counter": None}, {"drop": None}]
    return {("ip", "cjdns-input"): [peering], ("ip6", "cjdns-input"): [peering],
            ("ip6", "cjdns-forward"): [mesh_forward]}


# (family, Qubes' chain, our chain, must be the chain's first rule): the mesh drop must come
# before any accept other users put in custom-forward.
FIREWALL_JUMPS = (("ip", "custom-input", "cjdns-input", False),
                  ("ip6", "custom-input", "cjdns-input", False),
                  ("ip6", "custom-forward", "cjdns-forward", True))


def _canonical(value: Any) -> Any:
    """nft's JSON without what changes on its own (counter values) or by version (numbers
    printed as strings)."""
    if isinstance(value, dict):
        if set(value) == {"counter"}:
            return {"counter": None}
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value if value is None else str(value)


def _nft_chains(listing: dict) -> dict:
    """{chain name: [rule expressions]} from ``nft -j list table``."""
    chains: dict = {}
    for item in listing.get("nftables", []):
        if "chain" in item:
            chains.setdefault(item["chain"]["name"], [])
        elif "rule" in item:
            chains.setdefault(item["rule"]["chain"], []).append(item["rule"].get("expr", []))
    return chains


def firewall_drift(tables: dict, routes: list, udp_port: int, tun_device: str, metric: int) -> list[str]:
    """What is missing or different in the live ruleset and routes, one line each ([] when all
    is in place). ``tables``: {family: ``nft -j list table <family> qubes`` or None when the
    table is missing}; ``routes``: ``ip -j -6 route show``."""
    problems = []
    chains = {family: _nft_chains(listing) if listing is not None else None for family, listing in tables.items()}
    for family in sorted({f for f, _ in firewall_chains(udp_port, tun_device)}):
        if chains.get(family) is None:
            problems.append(f"table {family} {FIREWALL_TABLE}: missing (is qubes-iptables running?)")
    for (family, chain), rules in firewall_chains(udp_port, tun_device).items():
        live = chains.get(family)
        if live is None:
            continue
        if chain not in live:
            problems.append(f"chain {family} {FIREWALL_TABLE} {chain}: missing")
        elif _canonical(live[chain]) != _canonical(rules):
            problems.append(f"chain {family} {FIREWALL_TABLE} {chain}: its rules differ from the formula's")
    for family, chain, target, first in FIREWALL_JUMPS:
        live = chains.get(family)
        if live is None:
            continue
        rules = live.get(chain)
        where = f"chain {family} {FIREWALL_TABLE} {chain}"
        if rules is None:
            problems.append(f"{where}: missing (Qubes' own chain; is qubes-iptables running?)")
            continue
        jumps = [i for i, expr in enumerate(rules) if _canonical(expr) == _canonical([{"jump": {"target": target}}])]
        if not jumps:
            problems.append(f"{where}: no jump to {target}")
        elif len(jumps) > 1:
            problems.append(f"{where}: {len(jumps)} jumps to {target}, not one")
        elif first and jumps != [0]:
            problems.append(f"{where}: the jump to {target} is not its first rule")
    wanted = {"type": "blackhole", "dst": MESH, "metric": str(metric)}
    if not any({k: str(route.get(k)) for k in wanted} == wanted for route in routes):
        problems.append(f"route blackhole {MESH} metric {metric}: missing")
    return problems


def _run_json(argv: list) -> Any:
    """The JSON a command prints, or None when it fails (a missing table, say)."""
    import json
    import subprocess

    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env, check=False)
    except FileNotFoundError:
        raise CjdnsError(f"`{argv[0]}` is not installed") from None
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout or "null")


def live_firewall_drift(udp_port: int, tun_device: str, metric: int) -> list[str]:
    """firewall_drift against the running system (nft and ip of this network namespace)."""
    tables = {family: _run_json(["nft", "-j", "list", "table", family, FIREWALL_TABLE]) for family in ("ip", "ip6")}
    routes = _run_json(["ip", "-j", "-6", "route", "show", "table", "main"])
    if routes is None:
        raise CjdnsError("`ip -j -6 route show` failed")
    return firewall_drift(tables, routes, udp_port, tun_device, metric)


# --------------------------------------------------------------------------------------
# A new node's config (what `cjdroute --genconf` would write, with the formula's choices)
# --------------------------------------------------------------------------------------

_NEW_CONFIG = """{
    // Private key: your confidentiality and data integrity depend on it, keep it secret!
    // Made on this node by cjdns-formula; only its public half is ever shown.
    "privateKey": @PRIVATE@,

    // The public key and ipv6 address of this node (informational; cjdroute derives them).
    "publicKey": @PUBLIC@,
    "ipv6": @IPV6@,

    // Anyone connecting and offering these passwords on connection will be allowed.
    // Managed entries come from pillar cjdns:node:authorized_passwords.
    "authorizedPasswords": [
    ],

    // The admin RPC interface (UDP); tools such as `salt-call cjdns.status` use it.
    "admin": {
        "bind": @ADMIN_BIND@,
        "password": @ADMIN_PASSWORD@
    },

    "interfaces": {
        "UDPInterface": [
            {
                // IPv4 peers.
                "bind": @BIND4@,
                "beacon": 0,
                "connectTo": {
                }
            },
            {
                // IPv6 peers.
                "bind": @BIND6@,
                "connectTo": {
                }
            }
        ]
    },

    "router": {
        "supernodes": [
        ],
        "interface": {
            "type": "TUNInterface",
            "tunDevice": @TUN@
        },
        "ipTunnel": {
            "allowedConnections": [
            ],
            "outgoingConnections": [
            ]
        }
    },

    // cjdroute drops its privileges after setting up the TUN device.
    "security": [
        { "setuser": "nobody", "keepNetAdmin": 1 },
        { "chroot": "/var/run/" },
        { "nofiles": 0 },
        { "noforks": 1 },
        { "seccomp": 1 },
        { "setupComplete": 1 }
    ],

    "logging": {
    },

    "noBackground": 0,

    // Strict parsing: the file can be edited by tools without losing comments.
    "version": 2
}
"""


def new_config(ident: Identity, port: int, admin_bind: str, admin_password: str, tun: str) -> str:
    """The text of a fresh config for ident (settings are then managed by the states)."""
    values = {
        "@PRIVATE@": ident.private_key,
        "@PUBLIC@": ident.public_key,
        "@IPV6@": ident.ipv6,
        "@ADMIN_BIND@": admin_bind,
        "@ADMIN_PASSWORD@": admin_password,
        "@BIND4@": f"0.0.0.0:{port}",
        "@BIND6@": f"[::]:{port}",
        "@TUN@": tun,
    }
    text = _NEW_CONFIG
    for marker, value in values.items():
        text = text.replace(marker, _quote(value))
    parse(text)
    return text


# --------------------------------------------------------------------------------------
# Checks of a parsed config (what cjdroute would refuse at start beyond syntax)
# --------------------------------------------------------------------------------------


def _stated_identity_problems(private: Any, data: dict) -> list[str]:
    """What can be checked of a config's identity without X25519: the private key's format,
    and that ipv6 is publicKey's address (SHA-512 only)."""
    errors = []
    try:
        _private_bytes(private)
    except KeyFormatError as error:
        errors.append(f"privateKey: {error}")
    if "publicKey" in data:
        try:
            ip6 = address(data["publicKey"])
        except KeyFormatError as error:
            errors.append(f"publicKey: {error}")
        else:
            if "ipv6" in data and data["ipv6"] != ip6:
                errors.append(f"ipv6: {data['ipv6']!r} does not belong to publicKey (it gives {ip6})")
    return errors


def config_problems(data: dict) -> tuple[list[str], list[str]]:
    """(errors, warnings) for a parsed config: what would stop cjdroute, and what is odd."""
    errors: list[str] = []
    warnings: list[str] = []
    private = data.get("privateKey")
    if private is None:
        errors.append("privateKey: missing")
    else:
        try:
            ident = identity_of(private)
        except KeyFormatError as error:
            errors.append(f"privateKey: {error}")
        except CryptographyMissing:
            errors += _stated_identity_problems(private, data)
            warnings.append(f"publicKey: not checked against privateKey: {CRYPTOGRAPHY_MISSING}")
        else:
            for name, expected in (("publicKey", ident.public_key), ("ipv6", ident.ipv6)):
                if name in data and data[name] != expected:
                    errors.append(f"{name}: {data[name]!r} does not belong to privateKey (it gives {expected})")
    if not isinstance(get_path(data, ("admin", "bind")), str):
        errors.append("admin.bind: missing (cjdroute needs it)")
    password = get_path(data, ("admin", "password"))
    if isinstance(password, str) and len(password.encode()) > 53:
        warnings.append("admin.password: longer than 53 bytes; cjdroute's admin auth only hashes 63 bytes of password+cookie, so no client can log in")
    for index, entry in enumerate(data.get("authorizedPasswords", []) or []):
        if not isinstance(entry, dict) or not isinstance(entry.get("password"), str):
            errors.append(f"authorizedPasswords[{index}]: needs a \"password\" string")
    for endpoint, peer in configured_peers(data).items():
        fields = {k: v for k, v in peer.items() if k != "interface"}
        extra = sorted(set(fields) - set(PEER_FIELDS) - {"version"})
        for problem in peer_problems(endpoint, {k: v for k, v in fields.items() if k not in extra and k != "version"}, "connectTo"):
            # cjdroute starts with an address no peer can have (it just never connects): a warning.
            (warnings if problem.endswith(_NOT_A_PEERS) else errors).append(problem)
        if extra:
            warnings.append(f"connectTo.{endpoint}: fields {', '.join(extra)} are ignored by cjdroute")
    warnings += connect_to_problems(data)
    return errors, warnings


# --------------------------------------------------------------------------------------
# Salt functions (the boundary: defaults from config/pillar, errors as CommandExecutionError)
# --------------------------------------------------------------------------------------


def _command_error(message: str) -> Exception:
    try:
        from salt.exceptions import CommandExecutionError
    except ImportError:  # plain-Python use
        return CjdnsError(message)
    return CommandExecutionError(message)


def _require_x25519() -> None:
    """For the Salt functions that make or check keys: a missing library is their error."""
    try:
        _x25519()
    except CryptographyMissing as error:
        raise _command_error(str(error)) from None


def _config_path(path: str | None) -> str:
    if path:
        return path
    try:
        return __salt__["config.get"]("cjdns:paths:config", DEFAULT_CONFIG)  # type: ignore[name-defined]
    except NameError:
        return DEFAULT_CONFIG


def _load(path: str) -> Document:
    try:
        return read_config(path)
    except FileNotFoundError:
        raise _command_error(f"{path}: no such file") from None
    except PermissionError:
        raise _command_error(f"{path}: permission denied (run as root)") from None
    except IsADirectoryError:
        raise _command_error(f"{path}: is a directory, not a config file") from None
    except ConfigSyntaxError as error:
        raise _command_error(f"{path}:{error.line}:{error.column}: {error.reason.split(': ', 1)[-1]}") from None
    except CjdnsError as error:
        raise _command_error(str(error)) from None


def _duplicate_keys(node: Node, where: str) -> list[str]:
    """Keys given twice in one object: cjdroute v20.7 takes the first, v22 the last."""
    problems = []
    if isinstance(node, DictNode):
        keys = [e.key.value for e in node.entries]
        for key in sorted({k for k in keys if keys.count(k) > 1}):
            problems.append(f"{where + '.' if where else ''}{key}: given {keys.count(key)} times "
                            "(cjdroute v20.7 uses the first, v22 the last); keep one")
        for entry in node.entries:
            problems += _duplicate_keys(entry.value, f"{where + '.' if where else ''}{entry.key.value}")
    elif isinstance(node, ListNode):
        for index, item in enumerate(node.items):
            problems += _duplicate_keys(item, f"{where}[{index}]")
    return problems


def check_config(path: str | None = None) -> dict:
    """Check a cjdroute.conf the way cjdroute would read it.

    Returns ``{"path", "ok": True, "strict", "warnings"}``; a file cjdroute would refuse
    raises an error ``path:line:column: reason`` (or ``path: field: reason``).

    CLI Example::

        salt-call cjdns.check_config /etc/cjdns/cjdroute.conf
    """
    path = _config_path(path)
    doc = _load(path)
    errors, warnings = config_problems(doc.data())
    errors += _duplicate_keys(doc.root, "")
    if errors:
        raise _command_error(f"{path}: " + "; ".join(errors))
    if not doc.strict:
        assert doc.strict_error is not None
        warnings.insert(0, f"no \"version\": 2: cjdroute reads it leniently; strict parsing fails at line {doc.strict_error.line}, column {doc.strict_error.column}: {doc.strict_error.reason}")
    return {"path": path, "ok": True, "strict": doc.strict, "warnings": warnings}


def identity(path: str | None = None) -> dict:
    """The node's public key and address, after checking them against its private key.

    CLI Example::

        salt-call cjdns.identity
    """
    path = _config_path(path)
    ident = _checked_identity(path, _load(path).data())
    return {"path": path, "public_key": ident.public_key, "ipv6": ident.ipv6}


def _checked_identity(path: str, data: dict) -> Identity:
    """The identity of a loaded config whose key fields agree with its private key."""
    errors = [e for e in config_problems(data)[0] if e.split(":")[0] in ("privateKey", "publicKey", "ipv6")]
    if errors:
        raise _command_error(f"{path}: " + "; ".join(errors))
    _require_x25519()
    return identity_of(data["privateKey"])


def peers(path: str | None = None) -> dict:
    """The configured UDP peers, passwords hidden.

    CLI Example::

        salt-call cjdns.peers
    """
    path = _config_path(path)
    result = {}
    for endpoint, peer in configured_peers(_load(path).data()).items():
        shown = {k: (HIDDEN if k == "password" else v) for k, v in peer.items()}
        try:
            shown["ipv6"] = address(peer.get("publicKey"))
        except KeyFormatError as error:
            shown["ipv6"] = f"invalid publicKey: {error}"
        result[endpoint] = shown
    return result


# --------------------------------------------------------------------------------------
# The admin API client (bencoded UDP; vectors/admin transcripts of cjdroute v20.7)
# --------------------------------------------------------------------------------------
# cjdns v20.7 admin/Admin.h: requests over 512 bytes get "Request too big."; replies are built in a
# 65536-byte buffer.
ADMIN_MAX_REQUEST_BYTES = 512
ADMIN_MAX_REPLY_BYTES = 65536
# Admin.c authValid() snprintf()s password + cookie into a 64-byte buffer: only 63 bytes are hashed.
ADMIN_HASHED_BYTES = 63
# 63 minus a 10-digit cookie: longer passwords lose cookie digits, or all of them past 63 bytes.
ADMIN_PASSWORD_MAX_BYTES = 53
ADMIN_DEFAULT_MAX_PAGES = 1000
BENCODE_MAX_DEPTH = 32
# Digits allowed in one length prefix / integer (cjdns pads the first length with up to 7 zeros).
_BENCODE_MAX_DIGITS = 32

# Functions registered with needsAuth=false in cjdns v20.7 (plus "cookie", handled by Admin.c itself).
ADMIN_NO_AUTH_FUNCTIONS = frozenset({
    "cookie",
    "ping",
    "Admin_asyncEnabled",
    "Admin_availableFunctions",
    "Core_nodeInfo",
    "Core_pid",
    "InterfaceController_peerStats",
    "NodeStore_dumpTable",
    "NodeStore_getFullVerify",
    "NodeStore_getLink",
    "NodeStore_nodeForAddr",
    "Sign_checkSig",
    "SupernodeHunter_listSnodes",
    "SupernodeHunter_status",
})

_PEER_ADDR_RE = re.compile(
    r"v(?P<version>[0-9]+)\."
    r"(?P<label>[0-9a-f]{4}\.[0-9a-f]{4}\.[0-9a-f]{4}\.[0-9a-f]{4})\."
    r"(?P<key>[0-9b-df-hj-np-z]{52}\.k)"
)


class AdminError(CjdnsError):
    """Base class of every admin API failure."""


class AdminTimeout(AdminError):
    """No reply from cjdroute within the timeout."""


class AdminConnectionRefused(AdminTimeout):
    """The kernel reported nothing listening at the admin address (ICMP port unreachable)."""


class AdminAuthError(AdminError):
    """cjdroute answered "Auth failed.", or the password cannot ever authenticate."""


class AdminProtocolError(AdminError):
    """Malformed, oversize or mismatched reply; a request that cannot be encoded or sent."""


class AdminCallError(AdminError):
    """cjdroute answered with an "error" other than "none"."""

    def __init__(self, function: str, error: str, reply: Dict[str, Any]) -> None:
        super().__init__("{}: {}".format(function, error))
        self.function = function
        self.error = error
        self.reply = reply


# --- bencode ------------------------------------------------------------------------------------

def _bencode(obj: Any) -> bytes:
    """Encode int/bool, bytes/str, list/tuple and dict (keys sorted as bytes), as cjdns sends."""
    out: List[bytes] = []
    _bencode_into(obj, out, "value", 0)
    return b"".join(out)


def _bencode_into(obj: Any, out: List[bytes], path: str, depth: int) -> None:
    if depth > BENCODE_MAX_DEPTH:
        raise AdminProtocolError("cannot bencode {}: nested deeper than {}".format(path, BENCODE_MAX_DEPTH))
    if isinstance(obj, bool):
        obj = int(obj)
    if isinstance(obj, int):
        out.append(b"i%de" % obj)
    elif isinstance(obj, (bytes, bytearray, str)):
        raw = _to_bytes(obj)
        out.append(b"%d:" % len(raw))
        out.append(raw)
    elif isinstance(obj, (list, tuple)):
        out.append(b"l")
        for index, item in enumerate(obj):
            _bencode_into(item, out, "{}[{}]".format(path, index), depth + 1)
        out.append(b"e")
    elif isinstance(obj, dict):
        items: Dict[bytes, Any] = {}
        for key, value in obj.items():
            if not isinstance(key, (bytes, bytearray, str)):
                raise AdminProtocolError("cannot bencode {}: key {!r} is not a string".format(path, key))
            raw_key = _to_bytes(key)
            if raw_key in items:
                raise AdminProtocolError("cannot bencode {}: duplicate key {!r}".format(path, key))
            items[raw_key] = value
        out.append(b"d")
        for raw_key in sorted(items):
            out.append(b"%d:" % len(raw_key))
            out.append(raw_key)
            name = raw_key.decode("utf-8", "surrogateescape")
            _bencode_into(items[raw_key], out, "{}.{}".format(path, name), depth + 1)
        out.append(b"e")
    else:
        raise AdminProtocolError("cannot bencode {}: unsupported type {}".format(path, type(obj).__name__))


def _to_bytes(value: Union[bytes, bytearray, str]) -> bytes:
    if isinstance(value, str):
        # surrogateescape: a str that _bdecode() made from non-UTF-8 key bytes encodes back unchanged.
        return value.encode("utf-8", "surrogateescape")
    return bytes(value)


def _bdecode(data: bytes, max_depth: int = BENCODE_MAX_DEPTH) -> Any:
    """Decode one bencoded value, tolerating what cjdroute sends.

    Accepts zero-padded length prefixes (cjdns pads the first one: ``d000001:q4:ponge``), leading
    zeros in integers, and unsorted dict keys. Dict keys come back as str (UTF-8, surrogateescape,
    so they are lossless); string values come back as str when they are valid UTF-8 and as bytes
    otherwise, so no value is silently altered and every str is safe to print or serialize.
    Raises AdminProtocolError naming the problem and its byte offset.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise AdminProtocolError("bencode: expected bytes, got {}".format(type(data).__name__))
    raw = bytes(data)
    if not raw:
        raise AdminProtocolError("bencode: empty input")
    try:
        value, end = _bdecode_fast(raw, 0, 0, max_depth)
    except _NotPlain:  # the careful decoder names the problem and where it is
        value, end = _bdecode_at(raw, 0, 0, max_depth)
    if end != len(raw):
        raise AdminProtocolError(
            "bencode: trailing garbage at byte {} ({} bytes after the value)".format(end, len(raw) - end))
    return value


class _NotPlain(Exception):
    """Input _bdecode_fast does not handle: malformed, or too deep."""


_BHEAD_RE = re.compile(rb"([0-9]{1,32}):|i(-?[0-9]{1,32})e|([ld])")
_BKEY_RE = re.compile(rb"([0-9]{1,32}):")
_BINT_RE = re.compile(rb"i(-?[0-9]{1,32})e")


def _bdecode_fast(data: bytes, pos: int, depth: int, max_depth: int) -> Tuple[Any, int]:
    """_bdecode_at for well-formed input: one regex match per value; raises _NotPlain otherwise."""
    head = _BHEAD_RE.match(data, pos)
    if head is None:
        raise _NotPlain
    length, number, lead = head.groups()
    pos = head.end()
    if length is not None:
        end = pos + int(length)
        if end > len(data):
            raise _NotPlain
        return _text_value(data[pos:end]), end
    if number is not None:
        return int(number), pos
    if depth >= max_depth:
        raise _NotPlain
    if lead == b"l":
        items = []
        while data[pos : pos + 1] != b"e":
            item, pos = _bdecode_fast(data, pos, depth + 1, max_depth)
            items.append(item)
        return items, pos + 1
    result: Dict[str, Any] = {}
    size = len(data)
    while data[pos : pos + 1] != b"e":
        key_head = _BKEY_RE.match(data, pos)
        if key_head is None:
            raise _NotPlain
        start = key_head.end()
        end = start + int(key_head.group(1))
        if end > size:
            raise _NotPlain
        key = data[start:end].decode("utf-8", "surrogateescape")
        if key in result:
            raise _NotPlain
        leaf = _BKEY_RE.match(data, end)  # most values are strings or integers: no call for them
        if leaf is not None:
            start = leaf.end()
            pos = start + int(leaf.group(1))
            if pos > size:
                raise _NotPlain
            result[key] = _text_value(data[start:pos])
            continue
        leaf = _BINT_RE.match(data, end)
        if leaf is not None:
            result[key] = int(leaf.group(1))
            pos = leaf.end()
            continue
        result[key], pos = _bdecode_fast(data, end, depth + 1, max_depth)
    return result, pos + 1


def _bdecode_at(data: bytes, pos: int, depth: int, max_depth: int) -> Tuple[Any, int]:
    if pos >= len(data):
        raise AdminProtocolError("bencode: truncated at byte {}: expected a value".format(pos))
    lead = data[pos:pos + 1]
    if lead == b"i":
        return _bdecode_int(data, pos)
    if lead.isdigit():
        raw, end = _bdecode_bytes(data, pos)
        return _text_value(raw), end
    if lead in (b"l", b"d"):
        if depth >= max_depth:
            raise AdminProtocolError("bencode: nesting deeper than {} levels at byte {}".format(max_depth, pos))
        if lead == b"l":
            return _bdecode_list(data, pos, depth, max_depth)
        return _bdecode_dict(data, pos, depth, max_depth)
    raise AdminProtocolError("bencode: unexpected byte {!r} at byte {}".format(lead, pos))


_BDIGITS_RE = re.compile(rb"[0-9]*")


def _scan_digits(data: bytes, pos: int) -> int:
    return _BDIGITS_RE.match(data, pos).end()


def _bdecode_int(data: bytes, pos: int) -> Tuple[int, int]:
    start = pos + 1
    if data[start:start + 1] == b"-":
        start += 1
    end = _scan_digits(data, start)
    if end >= len(data):
        raise AdminProtocolError("bencode: truncated integer starting at byte {}".format(pos))
    if end == start or data[end:end + 1] != b"e":
        raise AdminProtocolError("bencode: bad integer at byte {}: unexpected {!r} at byte {}".format(
            pos, data[end:end + 1], end))
    if end - start > _BENCODE_MAX_DIGITS:
        raise AdminProtocolError("bencode: bad integer at byte {}: more than {} digits".format(
            pos, _BENCODE_MAX_DIGITS))
    return int(data[pos + 1:end]), end + 1


def _bdecode_bytes(data: bytes, pos: int) -> Tuple[bytes, int]:
    colon = _scan_digits(data, pos)
    if colon >= len(data):
        raise AdminProtocolError("bencode: truncated string length starting at byte {}".format(pos))
    if data[colon:colon + 1] != b":":
        raise AdminProtocolError("bencode: bad string length at byte {}: expected ':' at byte {}, got {!r}".format(
            pos, colon, data[colon:colon + 1]))
    if colon - pos > _BENCODE_MAX_DIGITS:
        raise AdminProtocolError("bencode: bad string length at byte {}: more than {} digits".format(
            pos, _BENCODE_MAX_DIGITS))
    length = int(data[pos:colon])
    start = colon + 1
    if start + length > len(data):
        raise AdminProtocolError("bencode: truncated string at byte {}: length {} but only {} bytes left".format(
            pos, length, len(data) - start))
    return data[start:start + length], start + length


def _bdecode_list(data: bytes, pos: int, depth: int, max_depth: int) -> Tuple[List[Any], int]:
    items: List[Any] = []
    cursor = pos + 1
    while True:
        if cursor >= len(data):
            raise AdminProtocolError("bencode: truncated list starting at byte {}".format(pos))
        if data[cursor:cursor + 1] == b"e":
            return items, cursor + 1
        item, cursor = _bdecode_at(data, cursor, depth + 1, max_depth)
        items.append(item)


def _bdecode_dict(data: bytes, pos: int, depth: int, max_depth: int) -> Tuple[Dict[str, Any], int]:
    result: Dict[str, Any] = {}
    cursor = pos + 1
    while True:
        if cursor >= len(data):
            raise AdminProtocolError("bencode: truncated dict starting at byte {}".format(pos))
        if data[cursor:cursor + 1] == b"e":
            return result, cursor + 1
        if not data[cursor:cursor + 1].isdigit():
            raise AdminProtocolError("bencode: non-string dict key at byte {}".format(cursor))
        raw_key, value_pos = _bdecode_bytes(data, cursor)
        key = raw_key.decode("utf-8", "surrogateescape")
        if key in result:
            raise AdminProtocolError("bencode: duplicate dict key {!r} at byte {}".format(key, cursor))
        result[key], cursor = _bdecode_at(data, value_pos, depth + 1, max_depth)


def _text_value(raw: bytes) -> Union[str, bytes]:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


# --- request building (pure) --------------------------------------------------------------------

def _admin_password_hash(password: str, cookie: Union[str, int]) -> str:
    """h1: sha256 hex of the first 63 bytes of password + cookie, exactly as cjdroute computes it."""
    # The server hashes its own "%u" rendering of the cookie number, not the submitted text.
    cookie_text = str(int(cookie)) if str(cookie).isdigit() else str(cookie)
    material = (password.encode("utf-8") + cookie_text.encode("ascii"))[:ADMIN_HASHED_BYTES]
    return hashlib.sha256(material).hexdigest()


def _build_request(function: str,
                  args: Optional[Dict[str, Any]],
                  txid: Optional[str],
                  cookie: Optional[Union[str, int]] = None,
                  password: Optional[str] = None) -> bytes:
    """The exact datagram for one call: plain, or authenticated when cookie and password are given.

    args None leaves out "args" (an empty dict is sent as ``4:argsde``); txid None leaves out "txid".
    """
    if (cookie is None) != (password is None):
        raise ValueError("build_request: cookie and password go together")
    if cookie is None or password is None:
        message: Dict[str, Any] = {"q": function}
    else:
        message = {"q": "auth", "aq": function, "cookie": cookie, "hash": _admin_password_hash(password, cookie)}
    if args is not None:
        message["args"] = args
    if txid is not None:
        message["txid"] = txid
    encoded = _bencode(message)
    if cookie is None:
        return encoded
    # The server overwrites the first occurrence of the submitted hash with h1 and hashes the whole
    # datagram, so h1 must occur exactly once, in the "hash" field (always true unless args contain it).
    first_hash = message["hash"].encode("ascii")
    if encoded.count(first_hash) != 1:
        raise AdminProtocolError("cannot sign {}: the password hash also occurs in args".format(function))
    return encoded.replace(first_hash, hashlib.sha256(encoded).hexdigest().encode("ascii"))


def _parse_peer_addr(addr: str) -> Tuple[int, str, str]:
    """Split a peerStats "addr" (v20.0000.0000.0000.0013.<key>.k) into (version, label, public_key).

    public_key keeps its ".k" suffix, as in cjdroute.conf.
    """
    match = _PEER_ADDR_RE.fullmatch(addr) if isinstance(addr, str) else None
    if match is None:
        raise AdminProtocolError(
            "bad peer addr {!r}: expected v<version>.<xxxx.xxxx.xxxx.xxxx>.<52 base32>.k".format(addr))
    return int(match.group("version")), match.group("label"), match.group("key")


def _new_txid() -> str:
    return os.urandom(8).hex()


# --- UDP client ---------------------------------------------------------------------------------

class AdminClient:
    """cjdroute admin API over UDP. Each call() opens its own socket and never runs past `timeout`."""

    def __init__(self,
                 host: str,
                 port: int,
                 password: Optional[str],
                 timeout: float = 2.0,
                 refuse_long_password: bool = True,
                 max_reply_bytes: int = ADMIN_MAX_REPLY_BYTES,
                 max_request_bytes: int = ADMIN_MAX_REQUEST_BYTES) -> None:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise AdminError("admin port must be 1..65535, got {!r}".format(port))
        if not timeout > 0:
            raise AdminError("admin timeout must be positive, got {!r}".format(timeout))
        self.host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        self.port = port
        self.timeout = float(timeout)
        self.refuse_long_password = refuse_long_password
        self.max_reply_bytes = max_reply_bytes
        self.max_request_bytes = max_request_bytes
        self._password = password

    def __repr__(self) -> str:
        # Never show the password.
        return "AdminClient({!r}, {})".format(self.host, self.port)

    @property
    def address(self) -> str:
        return "[{}]:{}".format(self.host, self.port) if ":" in self.host else "{}:{}".format(self.host, self.port)

    def call(self, function: str, args: Optional[Dict[str, Any]] = None,
             auth: Optional[bool] = None) -> Dict[str, Any]:
        """Call one admin function and return its reply without "txid".

        auth None: authenticate unless the function needs no auth or no password was given
        (a router whose admin password is "NONE" treats every call as authenticated).
        """
        deadline = time.monotonic() + self.timeout
        use_auth = self._wants_auth(function, auth)
        password = self._usable_password() if use_auth else None
        with self._open_socket() as sock:
            txid = _new_txid()
            if password is None:
                request = _build_request(function, args, txid)
            else:
                cookie = self._fetch_cookie(sock, deadline)
                request = _build_request(function, args, txid, cookie=cookie, password=password)
            reply = self._exchange(sock, request, txid, deadline, function)
        return _checked_reply(function, reply, self.address)

    def call_paged(self, function: str, args: Optional[Dict[str, Any]] = None, list_key: str = "peers",
                   auth: Optional[bool] = None, max_pages: int = ADMIN_DEFAULT_MAX_PAGES) -> List[Any]:
        """Concatenate `list_key` over page 0, 1, ... until the reply stops saying there is more.

        "more" is how peerStats, interfaces and availableFunctions page; AuthorizedPasswords_list
        sends only "total", so a full page below "total" also continues.
        """
        items: List[Any] = []
        for page in range(max_pages):
            page_args = dict(args or {})
            page_args["page"] = page
            reply = self.call(function, page_args, auth=auth)
            chunk = reply.get(list_key)
            if not isinstance(chunk, list):
                raise AdminProtocolError("{} page {}: reply has no list {!r}".format(function, page, list_key))
            items.extend(chunk)
            total = reply.get("total")
            if reply.get("more") or (chunk and isinstance(total, int) and len(items) < total):
                continue
            return items
        raise AdminProtocolError("{}: {} still reports more after {} pages; giving up".format(
            function, self.address, max_pages))

    def available_functions(self, max_pages: int = ADMIN_DEFAULT_MAX_PAGES) -> Dict[str, Any]:
        """All functions with their argument specs, merged over Admin_availableFunctions pages."""
        functions: Dict[str, Any] = {}
        for page in range(max_pages):
            reply = self.call("Admin_availableFunctions", {"page": page})
            chunk = reply.get("availableFunctions")
            if not isinstance(chunk, dict):
                raise AdminProtocolError("Admin_availableFunctions page {}: no availableFunctions dict".format(page))
            functions.update(chunk)
            if not reply.get("more"):
                return functions
        raise AdminProtocolError("Admin_availableFunctions: {} still reports more after {} pages".format(
            self.address, max_pages))

    def _wants_auth(self, function: str, auth: Optional[bool]) -> bool:
        if auth is None:
            return function not in ADMIN_NO_AUTH_FUNCTIONS and self._password is not None
        if auth and self._password is None:
            raise AdminAuthError("{}: authentication requested but no admin password was given".format(function))
        return auth

    def _usable_password(self) -> str:
        password = self._password
        assert password is not None
        raw = password.encode("utf-8")
        if b"\0" in raw:
            raise AdminAuthError("admin password contains a NUL byte; cjdroute can never match it")
        if self.refuse_long_password and len(raw) > ADMIN_PASSWORD_MAX_BYTES:
            raise AdminAuthError(
                "admin password is {} bytes; cjdroute hashes only the first {} bytes of password+cookie, so "
                "passwords over {} bytes are refused (use a shorter admin.password)".format(
                    len(raw), ADMIN_HASHED_BYTES, ADMIN_PASSWORD_MAX_BYTES))
        return password

    def _open_socket(self) -> socket.socket:
        try:
            infos = socket.getaddrinfo(self.host, self.port, 0, socket.SOCK_DGRAM)
        except OSError as exc:
            raise AdminError("cannot resolve admin address {}: {}".format(self.address, exc)) from exc
        family, kind, proto, _, sockaddr = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            # connect(): the kernel drops datagrams from anyone but the router, and reports ICMP errors.
            sock.connect(sockaddr)
        except OSError as exc:
            sock.close()
            raise AdminError("cannot open UDP socket to {}: {}".format(self.address, exc)) from exc
        return sock

    def _fetch_cookie(self, sock: socket.socket, deadline: float) -> str:
        txid = _new_txid()
        reply = self._exchange(sock, _build_request("cookie", None, txid), txid, deadline, "cookie")
        cookie = reply.get("cookie")
        if isinstance(cookie, int) and not isinstance(cookie, bool):
            cookie = str(cookie)
        if not isinstance(cookie, str) or not cookie.isdigit():
            raise AdminProtocolError("cookie reply from {} has no decimal cookie: {!r}".format(self.address, reply))
        return cookie

    def _exchange(self, sock: socket.socket, request: bytes, txid: str, deadline: float,
                  function: str) -> Dict[str, Any]:
        if len(request) > self.max_request_bytes:
            raise AdminProtocolError("{}: request is {} bytes; cjdroute refuses requests over {} bytes".format(
                function, len(request), self.max_request_bytes))
        try:
            sock.send(request)
        except ConnectionRefusedError as exc:
            raise self._refused(function) from exc
        except OSError as exc:
            raise AdminError("{}: cannot send to {}: {}".format(function, self.address, exc)) from exc
        mismatched = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            sock.settimeout(remaining)
            try:
                data = sock.recv(self.max_reply_bytes + 1)
            except socket.timeout:
                break
            except ConnectionRefusedError as exc:
                raise self._refused(function) from exc
            except OSError as exc:
                raise AdminError("{}: cannot receive from {}: {}".format(function, self.address, exc)) from exc
            reply = self._decode_reply(data, function)
            if reply.get("txid") == txid:
                return reply
            if "txid" not in reply and reply.get("error") == "Request too big.":
                raise AdminProtocolError("{}: {} answered 'Request too big.'".format(function, self.address))
            mismatched += 1  # a stale reply to an earlier request: keep waiting for ours
        if mismatched:
            raise AdminProtocolError("{}: wrong txid: {} replies from {} within {:g} s, none for this request".format(
                function, mismatched, self.address, self.timeout))
        raise AdminTimeout("{}: no reply from {} within {:g} s (is cjdroute running, is admin.bind right?)".format(
            function, self.address, self.timeout))

    def _decode_reply(self, data: bytes, function: str) -> Dict[str, Any]:
        if len(data) > self.max_reply_bytes:
            raise AdminProtocolError("{}: reply from {} exceeds {} bytes".format(
                function, self.address, self.max_reply_bytes))
        try:
            reply = _bdecode(data)
        except AdminProtocolError as exc:
            raise AdminProtocolError("{}: malformed reply from {}: {}".format(function, self.address, exc)) from exc
        if not isinstance(reply, dict):
            raise AdminProtocolError("{}: reply from {} is not a dict".format(function, self.address))
        return reply

    def _refused(self, function: str) -> AdminConnectionRefused:
        return AdminConnectionRefused("{}: nothing listening at {} (connection refused)".format(
            function, self.address))


def _checked_reply(function: str, reply: Dict[str, Any], address: str) -> Dict[str, Any]:
    reply = dict(reply)
    reply.pop("txid", None)
    error = reply.get("error")
    if error is None or error == "none":
        return reply
    if error == "Auth failed.":
        raise AdminAuthError("Auth failed. ({} at {}: wrong admin password, or clock trouble)".format(
            function, address))
    raise AdminCallError(function, str(error), reply)
# --- end of admin API client ---------------------------------------------------------------------


# --------------------------------------------------------------------------------------
# The template's key beneath a bind mount (Qubes bind-dirs)
# --------------------------------------------------------------------------------------


def _mount_points() -> list[str]:
    points = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as handle:
        for line in handle:
            point = line.split()[4]
            points.append(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), point))
    return points


def _mount_of(path: str, points: list[str], exclude: str | None = None) -> str:
    candidates = [p for p in points if p != exclude and (path == p or path.startswith(p.rstrip("/") + "/"))]
    return max(candidates, key=len) if candidates else "/"


def file_beneath_mount(path: str, timeout: float = 10.0) -> str | None:
    """The text that lies at ``path`` in the qube's root filesystem, under a bind mount.

    In a Qubes AppVM, bind-dirs mounts /rw/bind-dirs/etc/cjdns over /etc/cjdns; the root
    beneath it is the template's. A non-recursive bind of the parent mount, made in a
    private mount namespace of a child process, shows what the template has there. Returns
    None when path is not under a bind mount or nothing lies beneath.
    """
    import subprocess
    import tempfile

    path = os.path.abspath(path)
    points = _mount_points()
    mounted = _mount_of(path, points)
    if mounted not in (path, os.path.dirname(path)):
        return None
    parent = _mount_of(os.path.dirname(mounted) or "/", points, exclude=mounted)
    relative = os.path.relpath(path, parent)
    with tempfile.TemporaryDirectory(prefix="cjdns-beneath-") as view:
        script = 'mount --bind -- "$1" "$2" && exec cat -- "$2/$3"'
        proc = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh", parent, view, relative],
            capture_output=True, timeout=timeout, check=False,
        )
    if proc.returncode != 0:
        return None
    return proc.stdout.decode("utf-8", "surrogateescape")


def private_key_in(text: str) -> str | None:
    """The privateKey of config text, if it parses and has one (used to compare, never shown)."""
    try:
        value = parse(text).data().get("privateKey")
    except CjdnsError:
        match = re.search(r'"privateKey"\s*:\s*"([0-9a-fA-F]{64})"', text)
        value = match.group(1) if match else None
    return value.lower() if isinstance(value, str) else None


def read_public_keys(path: str) -> set[str]:
    """Public keys listed one per line in a file (comments with #); missing file: empty."""
    try:
        with open(path, encoding="utf-8") as handle:
            return {line.split("#")[0].strip() for line in handle if line.split("#")[0].strip()}
    except FileNotFoundError:
        return set()


# --------------------------------------------------------------------------------------
# More Salt functions
# --------------------------------------------------------------------------------------


def regenerate_identity(path: str | None = None) -> dict:
    """Give the node a new key pair (a deliberate act: its address changes for every peer).

    Returns the old and new public key and address, never the private key.

    CLI Example::

        salt-call cjdns.regenerate_identity
    """
    path = _config_path(path)
    _require_x25519()
    with locked(path):
        doc = _load(path)
        _require_strict(doc)
        old = doc.data().get("privateKey")
        try:
            before = identity_of(old) if isinstance(old, str) else None
        except KeyFormatError:
            before = None
        ident = _keypair()
        text = set_path(doc.text, ("privateKey",), ident.private_key)
        text = set_path(text, ("publicKey",), ident.public_key)
        text = set_path(text, ("ipv6",), ident.ipv6)
        write_config(path, text)
    old_view = {"public_key": before.public_key, "ipv6": before.ipv6} if before else None
    return {"path": path, "old": old_view, "new": {"public_key": ident.public_key, "ipv6": ident.ipv6}}


def credentials(user: str | None = None, path: str | None = None, endpoint: str = "your.address.here:PORT") -> dict:
    """What a peer needs to connect to this node, per authorizedPasswords user.

    This shows passwords on purpose: run it in the qube and hand the block to that peer.

    CLI Example::

        salt-call cjdns.credentials alice
    """
    path = _config_path(path)
    data = _load(path).data()
    _require_x25519()
    ident = identity_of(data["privateKey"])
    port = None
    for block in _udp_interfaces(data)[1]:
        bind = block.get("bind") if isinstance(block, dict) else None
        if isinstance(bind, str) and ":" in bind:
            port = bind.rsplit(":", 1)[1]
            break
    if port and endpoint.endswith(":PORT"):
        endpoint = endpoint[:-4] + port
    result = {}
    for entry in data.get("authorizedPasswords", []) or []:
        if not isinstance(entry, dict) or (user and entry.get("user") != user):
            continue
        block = {"password": entry.get("password"), "publicKey": ident.public_key}
        if entry.get("user"):
            block["login"] = entry["user"]
        result[entry.get("user", "(no user)")] = {endpoint: block}
    if user and not result:
        raise _command_error(f"{path}: no authorizedPasswords entry with user {user!r}")
    return result


# --------------------------------------------------------------------------------------
# Status of the running node (admin API), for people and for requisites
# --------------------------------------------------------------------------------------

ADMIN_TIMEOUT = 2.0


def _admin_client(data: dict, path: str, timeout: float) -> "AdminClient":
    """A client for the node's admin API, address and password taken from its config."""
    bind = get_path(data, ("admin", "bind"))
    if not isinstance(bind, str) or ":" not in bind:
        raise _command_error(f"{path}: admin.bind is missing; cannot reach the admin API")
    host, port = bind.rsplit(":", 1)
    host = host.strip("[]")
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    password = get_path(data, ("admin", "password"))
    return AdminClient(host, int(port), password if isinstance(password, str) else None, timeout=float(timeout))


def _peer_view(raw: dict) -> dict:
    version, label, key = _parse_peer_addr(str(raw.get("addr", "")))
    try:
        ip6 = address(key)
    except KeyFormatError:
        ip6 = None
    return {
        "public_key": key,
        "ipv6": ip6,
        "version": version,
        "label": label,
        "lladdr": raw.get("lladdr"),
        "state": raw.get("state"),
        "bytes_in": raw.get("bytesIn", 0),
        "bytes_out": raw.get("bytesOut", 0),
        "recv_kbps": raw.get("recvKbps", 0),
        "send_kbps": raw.get("sendKbps", 0),
        "lost_packets": raw.get("lostPackets", 0),
        "duplicates": raw.get("duplicates", 0),
        "received_out_of_range": raw.get("receivedOutOfRange", 0),
        "incoming": bool(raw.get("isIncoming", 0)),
        "user": raw.get("user"),
        "last_ms": raw.get("last"),
    }


def _admin_error(error: Exception, path: str) -> Exception:
    return _command_error(f"cjdroute admin API ({path}): {error}")


def peer_stats(path: str | None = None, timeout: float = ADMIN_TIMEOUT) -> list:
    """Every peer cjdroute knows, across all pages: what cjdns's peerStats prints, as data.

    CLI Example::

        salt-call cjdns.peer_stats
    """
    path = _config_path(path)
    client = _admin_client(_load(path).data(), path, timeout)
    try:
        return [_peer_view(p) for p in client.call_paged("InterfaceController_peerStats")]
    except AdminError as error:
        raise _admin_error(error, path) from None


def ping(path: str | None = None, timeout: float = ADMIN_TIMEOUT) -> dict:
    """Ping cjdroute's admin API (authenticated, so the configured password is checked too).

    CLI Example::

        salt-call cjdns.ping
    """
    path = _config_path(path)
    client = _admin_client(_load(path).data(), path, timeout)
    started = time.monotonic()
    try:
        reply = client.call("ping", auth=client._password is not None)
    except AdminError as error:
        raise _admin_error(error, path) from None
    return {"reply": reply.get("q"), "ms": round((time.monotonic() - started) * 1000, 2)}


def _tun_addresses() -> dict:
    """{interface: [ipv6, ...]} from /proc/net/if_inet6."""
    found: dict = {}
    try:
        with open("/proc/net/if_inet6", encoding="ascii") as handle:
            for line in handle:
                fields = line.split()
                if len(fields) >= 6:
                    found.setdefault(fields[5], []).append(_format_ip6(bytes.fromhex(fields[0])))
    except FileNotFoundError:
        pass
    return found


def _stated_identity(data: dict) -> Identity | None:
    """The identity a config states (publicKey, and its address), unchecked against privateKey."""
    try:
        return Identity("", data["publicKey"], address(data["publicKey"]))
    except (KeyError, KeyFormatError):
        return None


def status(path: str | None = None, timeout: float = ADMIN_TIMEOUT) -> dict:
    """The node at a glance: identity, peers configured and established, admin API, TUN address.

    Without the ``cryptography`` library the identity is the one the config states
    (``identity_checked: False``).

    CLI Example::

        salt-call cjdns.status
    """
    path = _config_path(path)
    data = _load(path).data()
    checked = isinstance(data.get("privateKey"), str)
    try:
        ident = identity_of(data["privateKey"]) if checked else None
    except CryptographyMissing:
        ident, checked = _stated_identity(data), False
    configured = configured_peers(data)
    tun = get_path(data, ("router", "interface", "tunDevice"))
    addresses = _tun_addresses()
    up_on = sorted(dev for dev, ips in addresses.items() if ident and ident.ipv6 in ips)
    result: dict = {
        "path": path,
        "public_key": ident.public_key if ident else None,
        "ipv6": ident.ipv6 if ident else None,
        # False: public key and address as the file states them, not derived from privateKey.
        "identity_checked": checked,
        "tun_device": tun,
        "address_up": bool(up_on),
        "address_on": up_on,
        "peers_configured": len(configured),
        "admin": {"reachable": False},
        "peers": {},
    }
    try:
        client = _admin_client(data, path, timeout)
        info = client.call("Core_nodeInfo")
        stats = [_peer_view(p) for p in client.call_paged("InterfaceController_peerStats")]
    except AdminError as error:
        result["admin"] = {"reachable": False, "error": str(error)}
        return result
    result["admin"] = {"reachable": True, "version": info.get("version"), "node_ipv6": info.get("myIp6")}
    states: dict = {}
    for peer in stats:
        states[peer["state"]] = states.get(peer["state"], 0) + 1
    result["peers"] = {"total": len(stats), "established": states.get("ESTABLISHED", 0), "by_state": states}
    return result


def health(path: str | None = None, min_established: int | None = None, timeout: float = ADMIN_TIMEOUT) -> dict:
    """Healthy when the node's fc address is up, the admin API answers and at least
    ``min_established`` peers are ESTABLISHED (default: pillar
    ``cjdns:node:min_established_peers``, else 1 when peers are configured, else 0).

    Returns ``{"healthy", "problems", "status"}``.

    CLI Example::

        salt-call cjdns.health min_established=2
    """
    current = status(path, timeout)
    wanted = min_established
    if wanted is None:
        try:
            wanted = __salt__["config.get"]("cjdns:node:min_established_peers", None)  # type: ignore[name-defined]
        except NameError:
            wanted = None
    if wanted in (None, ""):
        wanted = 1 if current["peers_configured"] else 0
    problems = []
    if not current["address_up"]:
        problems.append(f"the node's address {current['ipv6']} is not up on any interface (expected on {current['tun_device'] or 'the TUN device'})")
    if not current["admin"]["reachable"]:
        problems.append(f"the admin API does not answer: {current['admin'].get('error')}")
    elif current["peers"]["established"] < int(wanted):
        problems.append(f"{current['peers']['established']} peers ESTABLISHED, at least {wanted} wanted")
    return {"healthy": not problems, "problems": problems, "status": current}


# --------------------------------------------------------------------------------------
# Live changes: the running node brought to what its config file says, through the admin API
# --------------------------------------------------------------------------------------
# What cjdroute v20.7 does with these calls (tests/vectors/admin/README.md, "Admin calls that
# change a running node") shapes the plan: AuthorizedPasswords_add refuses only an exact repeat
# (a new password for a user is a second entry: change = remove, then add); _remove drops every
# entry of the user but not a connected peer (revoke = remove, then disconnect); a repeated
# beginConnection for a connected peer leaks its old session (connect only peers not in
# peerStats; change = disconnectPeer, then beginConnection); beginConnection without a password
# kills the core. Everything added live is gone after a restart, so the file holds it first.

LIVE_RECORD = ".cjdns-formula-live.json"
# Users cjdroute lists that no config entry names: its own, and entries without a user.
_BUILTIN_USER_RE = re.compile(r"Local Peers|Anon #[0-9]+")
_LIVE_SECTIONS_SKIPPED = ("authorizedPasswords", "interfaces", "privateKey", "publicKey", "ipv6")
ESTABLISH_WAIT = 1.0


class LiveApplyError(CjdnsError):
    """An admin call failed half-way; ``done`` lists the changes that are live."""

    def __init__(self, message: str, done: list[str]) -> None:
        super().__init__(message)
        self.done = done


def _fingerprint(salt: str, value: Any) -> str:
    """A salted digest of credentials, so the record never holds a password."""
    import json

    return hashlib.sha256((salt + json.dumps(value, sort_keys=True)).encode()).hexdigest()


def _live_users(data: dict) -> dict:
    """{user: entry} of the authorizedPasswords entries that have a user (the API's handle)."""
    users: dict = {}
    for entry in data.get("authorizedPasswords") or []:
        if isinstance(entry, dict) and isinstance(entry.get("user"), str) and entry.get("password"):
            users.setdefault(entry["user"], entry)
    return users


def _live_peers(data: dict) -> dict:
    """{publicKey: {endpoint, interface, fields}} of the UDP connectTo entries (first per key)."""
    found: dict = {}
    for endpoint, peer in configured_peers(data).items():
        key = peer.get("publicKey")
        if isinstance(key, str) and key not in found:
            found[key] = {"endpoint": endpoint, **peer}
    return found


def _restart_sections(data: dict) -> dict:
    """{section: value} of everything only a restart applies (the API cannot change it)."""
    sections = {k: v for k, v in data.items() if k not in _LIVE_SECTIONS_SKIPPED}
    sections["authorizedPasswords (entries without user)"] = [
        e for e in data.get("authorizedPasswords") or [] if not (isinstance(e, dict) and isinstance(e.get("user"), str))
    ]
    interfaces = data.get("interfaces") if isinstance(data.get("interfaces"), dict) else {}
    for kind, value in interfaces.items():
        blocks = value if isinstance(value, list) else [value]
        for index, block in enumerate(blocks):
            rest = {k: v for k, v in block.items() if k != "connectTo"} if isinstance(block, dict) else block
            if kind != "UDPInterface":
                rest = block
            sections[f"interfaces.{kind}[{index}]"] = rest
    return sections


def live_view(data: dict, salt: str) -> dict:
    """What the file asks of the running node, with credentials as salted fingerprints."""
    users = {
        user: {"fp": _fingerprint(salt, [entry.get("password"), entry.get("ipv6")]), "ipv6": entry.get("ipv6")}
        for user, entry in _live_users(data).items()
    }
    peers = {
        key: {
            "fp": _fingerprint(salt, [p["endpoint"], p.get("password"), p.get("login"), p.get("peerName"), p["interface"]]),
            "endpoint": p["endpoint"],
        }
        for key, p in _live_peers(data).items()
    }
    sections = {name: _fingerprint(salt, value) for name, value in _restart_sections(data).items()}
    binds = [b.get("bind") for b in _udp_interfaces(data)[1] if isinstance(b, dict)]
    return {"public_key": data.get("publicKey"), "udp_binds": binds, "users": users, "peers": peers, "sections": sections}


def _normal_bind(bind: Any) -> str:
    """ "127.0.0.1:1" and "[::]:1" in one spelling, so the API's names compare with the file's."""
    if not isinstance(bind, str) or ":" not in bind:
        return str(bind)
    host, port = bind.rsplit(":", 1)
    host = host.strip("[]")
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        pass
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _interface_bind(name: Any) -> str:
    """ "UDP/IPv4/127.0.0.1:21240" (InterfaceController_interfaces) -> "127.0.0.1:21240"."""
    parts = str(name).split("/", 2)
    return _normal_bind(parts[2]) if len(parts) == 3 and parts[0] == "UDP" else ""


@dataclass
class LivePlan:
    restart: list[str] = field(default_factory=list)
    remove_users: list[str] = field(default_factory=list)
    add_users: list[str] = field(default_factory=list)
    disconnect: list[str] = field(default_factory=list)  # peer keys (revoked incoming ones too)
    reset_incoming: list[str] = field(default_factory=list)  # incoming keys to re-authenticate
    connect: list[str] = field(default_factory=list)
    changed_users: list[str] = field(default_factory=list)
    reconnect: list[str] = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.restart or self.remove_users or self.add_users or self.disconnect
                    or self.reset_incoming or self.connect)


def plan_live(wanted: dict, base: dict | None, running: dict, unknown_why: str = "") -> LivePlan:
    """The admin calls that bring ``running`` to ``wanted``, or why only a restart can.

    wanted/base: live_view() of the file now and of what the running node was given (None:
    unknown). running: {"public_key", "udp_binds", "users": [names], "peers": [peer views]}.
    """
    plan = LivePlan()
    if base is None:
        plan.restart.append(unknown_why or "what the running cjdroute was given is not known")
    if running.get("public_key") and wanted.get("public_key") != running["public_key"]:
        plan.restart.append("the node's key changed")
    file_binds = [_normal_bind(b) for b in wanted.get("udp_binds", [])]
    running_binds = [b for b in (_interface_bind(n) for n in running.get("interfaces", [])) if b]
    if file_binds != running_binds:
        plan.restart.append(f"UDP interfaces changed (running {', '.join(running_binds) or 'none'}; file {', '.join(file_binds) or 'none'})")
    if base is not None:
        names = sorted(set(wanted["sections"]) | set(base["sections"]))
        differ = [n for n in names if wanted["sections"].get(n) != base["sections"].get(n)]
        if differ:
            plan.restart.append(f"{', '.join(differ)} changed (only a restart applies {'it' if len(differ) == 1 else 'them'})")
    if plan.restart:
        return plan

    assert base is not None
    listed = [u for u in running.get("users", []) if not _BUILTIN_USER_RE.fullmatch(str(u))]
    incoming = {p["public_key"]: p for p in running.get("peers", []) if p.get("incoming")}
    present = {p["public_key"]: p for p in running.get("peers", [])}
    revoke_unknown = False

    def revoke(user: str) -> None:
        nonlocal revoke_unknown
        ipv6 = (base["users"].get(user) or {}).get("ipv6")
        if ipv6:
            plan.disconnect.extend(k for k, p in incoming.items() if p.get("ipv6") == ipv6 and k not in plan.disconnect)
        else:
            revoke_unknown = True

    for user in sorted(set(listed)):
        if user not in wanted["users"]:
            plan.remove_users.append(user)
            revoke(user)
    for user, entry in sorted(wanted["users"].items()):
        if user not in listed:
            plan.add_users.append(user)
        elif (base["users"].get(user) or {}).get("fp") != entry["fp"] or listed.count(user) > 1:
            plan.remove_users.append(user)
            plan.add_users.append(user)
            plan.changed_users.append(user)
            revoke(user)
    if revoke_unknown:
        # No ipv6 ties the entry to a key, and peerStats shows incoming peers as "outer": every
        # incoming session re-authenticates; the one using revoked credentials is refused.
        plan.reset_incoming = sorted(k for k in incoming if k not in plan.disconnect)

    for key, peer in sorted(wanted["peers"].items()):
        # An incoming session this plan drops (its user revoked: the link changed direction)
        # is no session to the peer afterwards: connect after the disconnect.
        if key not in present or (key in plan.disconnect and present[key].get("incoming")):
            plan.connect.append(key)
        elif not present[key].get("incoming") and (base["peers"].get(key) or {}).get("fp") != peer["fp"]:
            plan.disconnect.append(key)
            plan.connect.append(key)
            plan.reconnect.append(key)
    for key in sorted(set(base["peers"]) - set(wanted["peers"])):
        if key in present and not present[key].get("incoming") and key not in plan.disconnect:
            plan.disconnect.append(key)
    return plan


def read_running(client: "AdminClient") -> dict:
    """What the running node shows of itself through the admin API."""
    info = client.call("Core_nodeInfo")
    _, _, key = _parse_peer_addr(str(info.get("myAddr", "")))
    try:
        pid = client.call("Core_pid").get("pid")
    except AdminCallError:
        pid = None
    interfaces = client.call_paged("InterfaceController_interfaces", list_key="ifaces")
    users = client.call_paged("AuthorizedPasswords_list", list_key="users")
    peers = [_peer_view(p) for p in client.call_paged("InterfaceController_peerStats")]
    return {
        "pid": pid if isinstance(pid, int) and not isinstance(pid, bool) else None,
        "public_key": key,
        "interfaces": [i.get("name") for i in interfaces if isinstance(i, dict)],
        "users": [str(u) for u in users],
        "peers": peers,
    }


def process_start(pid: int | None) -> int | None:
    """Start of process pid in clock ticks since boot (/proc/<pid>/stat field 22), or None."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            text = handle.read()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[-1].split()
    return int(fields[19]) if len(fields) > 19 and fields[19].isdigit() else None


def process_started_at(ticks: int | None) -> float | None:
    """Unix time of a start in ticks since boot (to within the second /proc/stat's btime has)."""
    if ticks is None:
        return None
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            btime = next(int(line.split()[1]) for line in handle if line.startswith("btime "))
    except (OSError, StopIteration, ValueError):
        return None
    return btime + ticks / os.sysconf("SC_CLK_TCK")


def live_baseline(record: dict, pid: int | None, start: int | None, file_view: dict, file_mtime: float) -> tuple[dict | None, str]:
    """What the running process (pid, start ticks) was given, and why when it is unknown.

    The record says what the live step gave a process, or, with no process, what the file held
    when the step asked for a (re)start: a process other than the one running then has loaded
    that file. A process started after the file's last change has loaded the file as it is.
    """
    me = [pid, start]
    if pid is not None and start is not None and isinstance(record.get("view"), dict):
        if record.get("process") == me:
            return record["view"], ""
        if record.get("process") is None and record.get("replaced") != me:
            return record["view"], ""
    started = process_started_at(start)
    # btime has whole seconds: a process counts as newer than the file only by a clear second.
    if started is not None and started - 1.0 > file_mtime:
        return file_view, ""
    return None, (f"cjdroute (pid {pid}) was started before the config last changed, and this formula "
                  "has no record of what it gave it")


def _connect_args(key: str, peer: dict) -> dict:
    password = peer.get("password")
    if not isinstance(password, str) or not password:
        # v20.7's core dies on a beginConnection without a password (recorded).
        raise ConfigError(f"peer {peer['endpoint']}: no password; refusing to call beginConnection without one")
    args = {"address": peer["endpoint"], "publicKey": key, "password": password, "interfaceNumber": peer["interface"]}
    for name in ("login", "peerName"):
        if isinstance(peer.get(name), str) and peer[name]:
            args[name] = peer[name]
    return args


def _user_args(user: str, entry: dict) -> dict:
    args = {"user": user, "password": entry["password"]}
    if isinstance(entry.get("ipv6"), str) and entry["ipv6"]:
        args["ipv6"] = entry["ipv6"]
    return args


def _wait_listed(client: "AdminClient", keys: list[str], wait: float) -> dict:
    """{key: state} of the peers just connected, polled until ESTABLISHED or ``wait`` ends.

    beginConnection answers "none" even for a wrong password; only peerStats tells."""
    deadline = time.monotonic() + wait
    while True:
        states = {p["public_key"]: p["state"] for p in (_peer_view(r) for r in client.call_paged("InterfaceController_peerStats"))}
        seen = {k: states.get(k) for k in keys}
        if all(s == "ESTABLISHED" for s in seen.values()) or time.monotonic() >= deadline:
            return seen
        time.sleep(0.02)


# The recorded answers when the user or peer is not there (any more).
_ALREADY_GONE = {
    "AuthorizedPasswords_remove": ("Unknown error.",),
    "InterfaceController_disconnectPeer": ("no peer found for that key",),
}


def apply_live(client: "AdminClient", data: dict, plan: LivePlan, wait: float = ESTABLISH_WAIT) -> dict:
    """Make the plan's calls in a safe order: revoke first, then add, then connect.

    Returns {key: peerStats state} of the peers connected. Raises LiveApplyError with the
    changes already live when a call fails or a connected peer is not listed.
    """
    users = _live_users(data)
    peers = _live_peers(data)
    # Every beginConnection is checked before the first call, so a refusal changes nothing.
    connects = [(key, _connect_args(key, peers[key])) for key in plan.connect]
    done: list[str] = []

    def call(what: str, function: str, args: dict) -> None:
        try:
            reply = client.call(function, args)
        except AdminCallError as error:
            # Gone already (between the read and this call): what the call was for.
            if error.error in _ALREADY_GONE.get(function, ()):
                done.append(what)
                return
            raise LiveApplyError(f"{what}: {error}", done) from None
        except AdminError as error:
            raise LiveApplyError(f"{what}: {error}", done) from None
        if reply.get("success") == 0:
            raise LiveApplyError(f"{what}: {function}: {reply.get('error')}", done)
        done.append(what)

    for user in plan.remove_users:
        call(f"authorized password {user} removed", "AuthorizedPasswords_remove", {"user": user})
    for key in plan.disconnect:
        call(f"peer {key} disconnected", "InterfaceController_disconnectPeer", {"pubkey": key})
    for key in plan.reset_incoming:
        call(f"incoming peer {key} re-authenticated", "InterfaceController_resetPeering", {"pubkey": key})
    for user in plan.add_users:
        call(f"authorized password {user} added", "AuthorizedPasswords_add", _user_args(user, users[user]))
    for key, args in connects:
        call(f"peer {peers[key]['endpoint']} ({key}) connected", "UDPInterface_beginConnection", args)
    if not plan.connect:
        return {}
    try:
        states = _wait_listed(client, plan.connect, wait)
    except AdminError as error:
        raise LiveApplyError(f"peerStats after beginConnection: {error}", done) from None
    missing = [k for k, s in states.items() if s is None]
    if missing:
        raise LiveApplyError(f"peers not in peerStats after beginConnection: {', '.join(missing)}", done)
    return states


# --------------------------------------------------------------------------------------
# Fleet mode: the node's card (public facts only), published through the Salt mine
# --------------------------------------------------------------------------------------

CARD_VERSION = 1
# Beside the config: the card this node last sent (public facts only).
CARD_RECORD = ".cjdns-formula-card.json"


def reachable_address(text: str) -> bool:
    """An address a peer elsewhere could send to: not loopback, link-local, multicast,
    unspecified, or cjdns's own fc00::/8 (private IPv4 ranges are fine: LANs peer too)."""
    ip = ipaddress.ip_address(text.split("%", 1)[0])
    return not (ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified
                or ip.is_reserved or (ip.version == 6 and ip in _MESH))


def _interface_addresses() -> list[str]:
    """Every address of this network namespace (`ip -j address show`)."""
    listing = _run_json(["ip", "-j", "address", "show"]) or []
    return [a["local"] for link in listing for a in link.get("addr_info", []) if a.get("local")]


def bind_ports(data: dict) -> dict:
    """{4: port, 6: port} of the config's UDP interfaces (the first bind of each family)."""
    ports: dict = {}
    for block in _udp_interfaces(data)[1]:
        bind = block.get("bind") if isinstance(block, dict) else None
        family = _bind_family(bind)
        if family and family not in ports:
            ports[family] = int(str(bind).rsplit(":", 1)[1])
    return ports


def card_endpoints(addresses: list[str], ports: dict) -> list[str]:
    """One endpoint per reachable address, on the UDP port of its family (none without one)."""
    endpoints = []
    for text in addresses:
        if not reachable_address(text):
            continue
        ip = ipaddress.ip_address(text.split("%", 1)[0])
        port = ports.get(ip.version)
        if port:
            endpoints.append(f"{ip}:{port}" if ip.version == 4 else f"[{ip.compressed}]:{port}")
    return sorted(set(endpoints), key=lambda e: (e.startswith("["), e))


def make_card(node_id: str, ident: Identity, ports: dict, endpoints: list[str], epoch: int) -> dict:
    """What a node publishes: nothing from it that is secret. ``epoch`` counts the keys this
    node has published (0 for the first): a new key, a new epoch."""
    return {"version": CARD_VERSION, "id": node_id, "publicKey": ident.public_key, "ipv6": ident.ipv6,
            "endpoints": endpoints, "udp_port": ports.get(4) or ports.get(6), "epoch": epoch}


def _pillar_value(key: str, default: Any) -> Any:
    """Pillar ``key`` as given (not ``pillar.get``, which masks strings on Salt 3008)."""
    try:
        pillar: Any = __pillar__  # type: ignore[name-defined]
    except NameError:
        return default
    import salt.utils.data

    return salt.utils.data.traverse_dict_and_list(pillar, key, default)


def card(path: str | None = None) -> dict:
    """This node's card for fleet mode: public key, cjdns address, the endpoints peers reach
    it at (pillar ``cjdns:fleet:endpoints``, else every reachable address of the node on the
    config's UDP ports), the UDP port and the fleet epoch it was made for. Public facts only;
    the mine function ``cjdns.card``.

    CLI Example::

        salt-call cjdns.card
    """
    path = _config_path(path)
    return card_from(path, _load(path).data())


def card_from(path: str, data: dict) -> dict:
    """The card of the config ``data`` read from ``path`` (see ``card``)."""
    ident = _checked_identity(path, data)
    ports = bind_ports(data)
    given = _pillar_value("cjdns:fleet:endpoints", []) or []
    endpoints = sorted({peer_endpoint(e) for e in given}) if given else card_endpoints(_interface_addresses(), ports)
    return make_card(_minion_id(), ident, ports, endpoints, key_epoch(path, ident.public_key))


def key_epoch(path: str, public_key: str) -> int:
    """The epoch of this key: the last card sent has it for the same key, one more for a new key."""
    record = os.path.join(os.path.dirname(os.path.abspath(path)), CARD_RECORD)
    try:
        with open(record, encoding="utf-8") as handle:
            last = json.load(handle)
    except (OSError, ValueError):
        return 0
    epoch = last.get("epoch") if isinstance(last, dict) else None
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        return 0
    return epoch if last.get("publicKey") == public_key else epoch + 1


def card_fingerprint(card: Any) -> str:
    """sha256 of a card's canonical JSON (the master's cjdns_fleet.card_fingerprint is the same)."""
    return hashlib.sha256(json.dumps(card, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _minion_id() -> str:
    try:
        return str(__opts__["id"])  # type: ignore[name-defined]
    except NameError:
        return socket.gethostname()
