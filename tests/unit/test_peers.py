"""Peer validation (one case per bad field) and merging by address family."""

import re

import pytest

from support.saltenv import VECTORS, load_module

cj = load_module()
KEY = "0ccvtu9w6dd9qus12pqzsc37rp16p8vcptzx75wkm64406y6g9k0.k"
GOOD = {"password": "secret", "publicKey": KEY, "login": "me", "peerName": "bob"}


def problems(endpoint, peer):
    return cj.peer_problems(endpoint, peer)


@pytest.mark.parametrize("endpoint", ["192.0.2.1:1", "192.0.2.1:65535", "[2001:db8::1]:443", "[::ffff:1.2.3.4]:9"])
def test_valid_endpoints(endpoint):
    assert problems(endpoint, GOOD) == []


@pytest.mark.parametrize(
    "endpoint, reason",
    [
        ("example.org:443", "not an IP address; cjdroute does not resolve hostnames"),
        ("192.0.2.1", "must be 'a.b.c.d:port'"),
        ("192.0.2.1:0", "port 0 is not in 1-65535"),
        ("192.0.2.1:65536", "port 65536 is not in 1-65535"),
        ("[2001:db8::1]:0", "port 0 is not in 1-65535"),
        ("2001:db8::1:443", "needs brackets"),
        ("999.0.2.1:1", "'999.0.2.1' is not an IPv4 address"),
        ("[2001:db8::zz]:1", "is not an IPv6 address"),
        ("[fc00::1]:1", "is a cjdns (fc00::/8) address"),
        ("0.0.0.0:1", "0.0.0.0 is the unspecified address, not a peer's"),
        ("[::]:1", ":: is the unspecified address, not a peer's"),
        ("[::ffff:0.0.0.0]:1", "is the unspecified address, not a peer's"),
        ("255.255.255.255:1", "is the broadcast address, not a peer's"),
        ("224.0.0.1:1", "is a multicast address, not a peer's"),
        ("[ff02::1]:1", "is a multicast address, not a peer's"),
        ("[fe80::1%eth0]:1", "has a zone id"),
        ("192.0.2.09:1", "is not an IPv4 address"),
        (42, "must be a string"),
    ],
)
def test_bad_endpoint_is_named_with_its_reason(endpoint, reason):
    found = problems(endpoint, GOOD)
    assert len(found) == 1 and found[0].startswith(f"peers.{endpoint}: ") and reason in found[0]


@pytest.mark.parametrize(
    "field, value, reason",
    [
        ("publicKey", None, "publicKey: missing"),
        ("publicKey", KEY.upper()[:52] + ".k", "publicKey: upper-case"),
        ("publicKey", "xcd7r4hsmybvkd68nqrkdp8trskfqmbg4vy65lgjx8l622qbf9n0.k", "publicKey: not a cjdns key"),
        ("password", None, "password: missing"),
        ("password", "", "password: must not be empty"),
        ("password", "tab\there", "password: a password must not contain control characters"),
        ("password", "new\nline", "password: a password must not contain control characters"),
        ("password", "x" * 257, "password: longer than 256 bytes"),
        ("peerName", "bob\x00", "peerName: peerName must not contain control characters"),
        ("password", 1234, "password: must be a string, not int"),
        ("login", "", "login: must not be empty"),
        ("login", "x" * 65, "login: longer than 64 bytes"),
        ("login", "é" * 33, "login: longer than 64 bytes"),
        ("peerName", ["bob"], "peerName: must be a string, not list"),
        ("contact", "me@example.org", "contact: unknown field (allowed: password, publicKey, login, peerName)"),
    ],
)
def test_bad_peer_field_is_named_with_its_reason(field, value, reason):
    peer = dict(GOOD)
    if value is None:
        peer.pop(field)
    else:
        peer[field] = value
    found = problems("192.0.2.1:9", peer)
    assert found == [f"peers.192.0.2.1:9.{reason.split(':')[0]}: {reason.split(': ', 1)[1]}"] or (
        len(found) == 1 and reason in found[0] and found[0].startswith(f"peers.192.0.2.1:9.{field}")
    ), found


def test_validate_peers_lists_every_problem_at_once():
    with pytest.raises(cj.PeerError) as error:
        cj.validate_peers({
            "host:1": GOOD,
            "192.0.2.1:2": {"publicKey": "nope"},
            "192.0.2.1:3": "not a mapping",
        })
    assert len(error.value.problems) == 4
    text = str(error.value)
    for fragment in ("peers.host:1:", "peers.192.0.2.1:2.publicKey", "peers.192.0.2.1:2.password: missing",
                     "peers.192.0.2.1:3: must be a mapping"):
        assert fragment in text


def test_validate_peers_orders_fields():
    peer = {"peerName": "bob", "publicKey": KEY, "password": "x"}
    assert list(cj.validate_peers({"192.0.2.1:1": peer})["192.0.2.1:1"]) == ["password", "publicKey", "peerName"]


def test_peer_without_matching_interface_names_the_missing_interface():
    text = (VECTORS / "admin/node-a.conf").read_text() if (VECTORS / "admin/node-a.conf").exists() else (
        '{ "interfaces": { "UDPInterface": [ { "bind": "127.0.0.1:1", "connectTo": {} } ] }, "version": 2 }')
    with pytest.raises(cj.ConfigError, match=r'no interfaces.UDPInterface entry is bound to IPv6 \("bind": "\[::\]:<port>"\)'):
        cj.merge_peers(text, {"[2001:db8::1]:5": GOOD})


def test_single_object_udp_interface_is_accepted():
    text = '{\n    "interfaces": {\n        "UDPInterface": {\n            "bind": "0.0.0.0:5",\n            "connectTo": {}\n        }\n    },\n    "version": 2\n}\n'
    result = cj.merge_peers(text, {"192.0.2.1:1": GOOD})
    assert cj.loads(result.text)["interfaces"]["UDPInterface"]["connectTo"]["192.0.2.1:1"] == GOOD


def test_a_peer_in_the_wrong_family_interface_is_moved():
    text = (VECTORS / "genconf/genconf-1.conf").read_text()
    wrong = cj.edit(text, ("interfaces", "UDPInterface", 0, "connectTo"), {"[2001:db8::1]:5": GOOD})
    result = cj.merge_peers(wrong, {"[2001:db8::1]:5": GOOD})
    assert result.updated == ["[2001:db8::1]:5"]
    udp = cj.loads(result.text)["interfaces"]["UDPInterface"]
    assert udp[0]["connectTo"] == {} and udp[1]["connectTo"] == {"[2001:db8::1]:5": GOOD}


# -- strings: what cjdroute accepts, written in its dialect ------------------------------------

@pytest.mark.parametrize("field, value", [
    ("password", "with a space"), ("login", "my login"), ("peerName", "Bob's node"),
    ("password", 'a"quote'), ("password", "back\\slash"), ("peerName", "Zürich ☃"),
])
def test_strings_cjdroute_accepts_are_accepted_and_written_in_its_dialect(field, value):
    peer = {**GOOD, field: value}
    assert problems("192.0.2.1:9", peer) == []
    text = (VECTORS / "genconf/genconf-1.conf").read_text()
    written = cj.merge_peers(text, cj.validate_peers({"192.0.2.1:9": peer})).text
    assert cj.loads(written)["interfaces"]["UDPInterface"][0]["connectTo"]["192.0.2.1:9"][field] == value
    line = next(line for line in written.splitlines() if f'"{field}"' in line and "192.0.2.1:9" not in line
                and (value[:3] in line or "\\x" in line))
    assert '\\"' not in line and "\\\\" not in line  # only \xHH escapes, as cjdroute reads them
    if '"' in value or "\\" in value or not value.isascii():
        assert "\\x" in line
    assert cj.merge_peers(written, cj.validate_peers({"192.0.2.1:9": peer})).text == written


# -- one peer, many spellings -------------------------------------------------------------------

SPELLINGS = [("[2001:db8::1]:1", "[2001:0db8::1]:1"), ("[2001:db8::1]:1", "[2001:DB8::1]:1"),
             ("192.0.2.9:80", "192.0.2.9:0080"), ("[2001:db8::1]:443", "[2001:db8:0:0:0:0:0:1]:443")]


@pytest.mark.parametrize("one, other", SPELLINGS)
def test_two_spellings_of_one_peer_in_pillar_are_refused(one, other):
    with pytest.raises(cj.PeerError, match=rf"peers\.{re.escape(other)}: the same peer as {re.escape(one)}"):
        cj.validate_peers({one: GOOD, other: GOOD})


@pytest.mark.parametrize("hand, pillar", SPELLINGS + [(b, a) for a, b in SPELLINGS])
def test_a_hand_added_peer_under_another_spelling_is_the_same_peer(hand, pillar):
    text = (VECTORS / "genconf/genconf-1.conf").read_text()
    family = 1 if hand.startswith("[") else 0
    with_hand = cj.edit(text, ("interfaces", "UDPInterface", family, "connectTo"), {hand: GOOD})
    same = cj.merge_peers(with_hand, {pillar: GOOD})
    assert same.text == with_hand and (same.added, same.updated, same.removed) == ([], [], [])
    changed = cj.merge_peers(with_hand, {pillar: {**GOOD, "password": "new one"}})
    assert changed.updated == [pillar] and changed.added == []
    connect_to = cj.loads(changed.text)["interfaces"]["UDPInterface"][family]["connectTo"]
    assert connect_to == {hand: {**GOOD, "password": "new one"}}  # the user's spelling stays
    pruned = cj.merge_peers(with_hand, {}, prune=(pillar,))
    assert pruned.removed == [hand]
    assert cj.loads(pruned.text)["interfaces"]["UDPInterface"][family]["connectTo"] == {}


def test_check_config_warns_about_one_peer_spelled_twice():
    text = (VECTORS / "genconf/genconf-1.conf").read_text()
    text = cj.edit(text, ("interfaces", "UDPInterface", 0, "connectTo"), {"192.0.2.9:80": GOOD, "192.0.2.9:0080": GOOD})
    errors, warnings = cj.config_problems(cj.loads(text))
    assert "connectTo.192.0.2.9:0080: the same peer as 192.0.2.9:80 (one address and port, spelled twice); keep one" in warnings


# -- connectTo that is empty, missing or not an object ----------------------------------------

def _udp0(text):
    return cj.loads(text)["interfaces"]["UDPInterface"][0]


@pytest.mark.parametrize("empty", ["[]", "[ ]", "[\n                ]"])
def test_an_empty_list_connect_to_is_filled_with_the_peers(empty):
    text = (VECTORS / "genconf/genconf-1.conf").read_text()
    text = cj.set_path(text, ("interfaces", "UDPInterface", 0, "connectTo"), [])
    text = text.replace('"connectTo": []', f'"connectTo": {empty}', 1)
    first = cj.merge_peers(text, {"192.0.2.1:1": GOOD})
    assert first.added == ["192.0.2.1:1"]
    assert _udp0(first.text)["connectTo"] == {"192.0.2.1:1": GOOD}
    again = cj.merge_peers(first.text, {"192.0.2.1:1": GOOD})
    assert again.text == first.text and (again.added, again.updated) == ([], [])


def test_a_missing_connect_to_is_added():
    text = (VECTORS / "genconf/genconf-1.conf").read_text()
    text = cj.delete_path(text, ("interfaces", "UDPInterface", 0, "connectTo"))
    first = cj.merge_peers(text, {"192.0.2.1:1": GOOD})
    assert _udp0(first.text)["connectTo"] == {"192.0.2.1:1": GOOD}
    assert cj.merge_peers(first.text, {"192.0.2.1:1": GOOD}).text == first.text


@pytest.mark.parametrize("value, kind", [(["x"], "a list"), ("peers", "a string"), (5, "an integer")])
def test_a_connect_to_of_another_type_is_a_clear_error(value, kind):
    text = (VECTORS / "genconf/genconf-1.conf").read_text()
    text = cj.set_path(text, ("interfaces", "UDPInterface", 0, "connectTo"), value)
    with pytest.raises(cj.ConfigError, match=f"interfaces/UDPInterface/0/connectTo: is {kind}, not an object"):
        cj.merge_peers(text, {"192.0.2.1:1": GOOD})
    errors, warnings = cj.config_problems(cj.loads(text))
    assert any(w.startswith(f"interfaces/UDPInterface/0/connectTo: is {kind}, not an object; cjdroute ignores it") for w in warnings)
