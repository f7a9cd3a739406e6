"""Peer validation (one case per bad field) and merging by address family."""

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
        ("password", 'a"b', "password: a password must not contain a double quote"),
        ("password", "a\\b", "password: a password must not contain a double quote or a backslash"),
        ("password", "tab\there", "password: a password must be printable ASCII"),
        ("password", 1234, "password: must be a string, not int"),
        ("login", "", "login: must not be empty"),
        ("login", "x" * 65, "login: longer than 64"),
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
