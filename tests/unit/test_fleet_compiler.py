"""The fleet compiler (_pillar/cjdns_fleet.py) as plain Python: topologies, directions,
precedence, epochs, cards, and what each member's pillar holds (and does not)."""

import base64
import hashlib
import hmac
import itertools
import json

import pytest
import yaml

from support.fleet_compiler import fetcher, load_compiler, mines_of, sample_cards, sample_fleet_data, sample_fleet_text
from support.saltenv import VECTORS

KEY = bytes(range(32))
KEYS = json.loads((VECTORS / "keys.json").read_text())["keys"]


@pytest.fixture(scope="module")
def cf():
    return load_compiler()


def fleet_of(cf, data):
    return cf.compile_fleet(yaml.safe_load(data) if isinstance(data, str) else data)


def directions(cf, fleet, member):
    """{other: (client, server)} of one member's edges."""
    return {other: (edge.client, edge.server) for other, edge in cf.member_edges(fleet, member).edges.items()}


def pillar_of(cf, fleet, member, cards=None, key=KEY):
    cards = sample_cards() if cards is None else cards
    found = {other: cf.lookup_card(fetcher(mines_of(cards)), other, fleet.compromised_keys)
             for other in cf.member_edges(fleet, member).edges}
    return cf.render(fleet, key, member, found)


def small(members, topology, **extra):
    return {"version": 1, "fleet": "t", "members": members, "topology": topology, **extra}


# --- topology and direction ------------------------------------------------------------


def test_mesh_links_every_pair_once_smaller_id_connects(cf):
    fleet = fleet_of(cf, small({"a": {}, "b": {}, "c": {}}, [{"mesh": ["a", "b", "c"]}]))
    assert directions(cf, fleet, "a") == {"b": ("a", "b"), "c": ("a", "c")}
    assert directions(cf, fleet, "b") == {"a": ("a", "b"), "c": ("b", "c")}
    assert directions(cf, fleet, "c") == {"a": ("a", "c"), "b": ("b", "c")}


def test_nat_member_is_always_the_client_in_a_mesh(cf):
    fleet = fleet_of(cf, small({"a": {"nat": True}, "z": {}}, [{"mesh": ["a", "z"]}]))
    assert directions(cf, fleet, "z") == {"a": ("a", "z")}
    fleet = fleet_of(cf, small({"a": {}, "z": {"nat": True}}, [{"mesh": ["a", "z"]}]))
    assert directions(cf, fleet, "a") == {"z": ("z", "a")}


def test_two_nat_members_in_a_mesh_get_no_edge_and_are_listed_for_both(cf):
    fleet = fleet_of(cf, sample_fleet_data())
    for member, other in (("laptop", "phone"), ("phone", "laptop")):
        assert other not in cf.member_edges(fleet, member).edges
        assert pillar_of(cf, fleet, member)["cjdns"]["fleet"]["unreachable"] == [other]


def test_an_explicit_edge_makes_two_nat_members_of_a_mesh_reachable(cf):
    data = small({"a": {"nat": True}, "b": {"nat": True}, "c": {}}, [{"mesh": ["a", "b"]}])
    assert cf.member_edges(fleet_of(cf, data), "a").unreachable == ("b",)
    data = small({"a": {"nat": True}, "b": {}}, [{"mesh": ["a", "b"]}, {"edge": {"client": "b", "server": "a"}}])
    with pytest.raises(cf.FleetError, match=r"topology\[1\]\.edge\.server: 'a' is behind NAT"):
        fleet_of(cf, data)


def test_hubs_every_member_connects_to_every_hub(cf):
    fleet = fleet_of(cf, small({"h1": {}, "h2": {}, "m1": {}, "m2": {"nat": True}},
                               [{"hubs": {"hubs": ["h1", "h2"], "members": ["m1", "m2"]}}]))
    assert directions(cf, fleet, "m1") == {"h1": ("m1", "h1"), "h2": ("m1", "h2")}
    assert directions(cf, fleet, "m2") == {"h1": ("m2", "h1"), "h2": ("m2", "h2")}
    assert directions(cf, fleet, "h1") == {"m1": ("m1", "h1"), "m2": ("m2", "h1")}  # hubs are not linked


def test_a_hub_that_connects_to_a_hub_with_a_larger_id_than_itself_follows_its_own_item(cf):
    # vps3 is a spoke of hub vps1: vps3 connects to vps1, though the mesh rule says vps1 -> vps3.
    fleet = fleet_of(cf, sample_fleet_data())
    assert directions(cf, fleet, "vps3")["vps1"] == ("vps3", "vps1")


def test_two_hubs_that_are_each_others_spokes_follow_the_mesh_rule(cf):
    fleet = fleet_of(cf, sample_fleet_data())
    assert directions(cf, fleet, "vps1")["vps2"] == ("vps1", "vps2")
    assert directions(cf, fleet, "vps2")["vps1"] == ("vps1", "vps2")


def test_explicit_edge_wins_over_hubs(cf):
    fleet = fleet_of(cf, sample_fleet_data())
    assert directions(cf, fleet, "home")["vps1"] == ("vps1", "home")
    assert directions(cf, fleet, "vps1")["home"] == ("vps1", "home")


def test_hubs_win_over_mesh(cf):
    data = small({"a": {}, "b": {}}, [{"mesh": ["a", "b"]}, {"hubs": {"hubs": ["a"], "members": ["b"]}}])
    assert directions(cf, fleet_of(cf, data), "a") == {"b": ("b", "a")}
    data["topology"].reverse()
    assert directions(cf, fleet_of(cf, data), "b") == {"a": ("b", "a")}


def test_a_member_in_no_topology_item_has_no_edges(cf):
    fleet = fleet_of(cf, sample_fleet_data())
    pillar = pillar_of(cf, fleet, "spare")
    assert pillar["cjdns"]["node"]["peers"] == {} and pillar["cjdns"]["node"]["authorized_passwords"] == {}
    assert pillar["cjdns"]["fleet"]["neighbours"] == [] and "spare" in pillar["cjdns"]["fleet"]["members"]


def test_edges_are_symmetric_in_the_sample_fleet(cf):
    fleet = fleet_of(cf, sample_fleet_data())
    for member in fleet.members:
        for other, edge in cf.member_edges(fleet, member).edges.items():
            assert cf.member_edges(fleet, other).edges[member] == edge


def test_neighbours_are_sorted_and_ignore_cards(cf):
    fleet = fleet_of(cf, sample_fleet_data())
    assert cf.neighbours(fleet, "laptop") == ["home", "office", "pi", "vps1", "vps2"]
    assert cf.neighbours(fleet, "spare") == []


# --- the pillar ------------------------------------------------------------------------


def expected_password(server, client, fleet_epoch=1, edge_epoch=0, fleet="home", key=KEY):
    message = f"cjdns-fleet-v1|{fleet}|{server}|{client}|{fleet_epoch}|{edge_epoch}".encode()
    return base64.b32encode(hmac.new(key, message, hashlib.sha256).digest()).decode().rstrip("=").lower()


def test_a_client_gets_one_peer_per_endpoint_of_each_server(cf):
    fleet = fleet_of(cf, sample_fleet_data())
    cards = sample_cards()
    node = pillar_of(cf, fleet, "laptop")["cjdns"]["node"]
    assert node["peers"]["192.0.2.1:47300"] == node["peers"]["[2001:db8::1]:47300"] == {
        "password": expected_password("vps1", "laptop"), "publicKey": cards["vps1"]["publicKey"],
        "login": "laptop", "peerName": "vps1"}
    # home's endpoints come from the fleet file, not from its card
    assert node["peers"]["198.51.100.7:47300"]["peerName"] == "home"
    assert "203.0.113.70:47300" not in node["peers"]
    assert set(node["peers"]) == {"192.0.2.1:47300", "[2001:db8::1]:47300", "192.0.2.2:47300",
                                  "198.51.100.7:47300", "198.51.100.20:47300", "198.51.100.30:47300"}
    assert node["authorized_passwords"] == {}


def test_a_server_accepts_each_client_with_its_address(cf):
    fleet = fleet_of(cf, sample_fleet_data())
    cards = sample_cards()
    node = pillar_of(cf, fleet, "vps2")["cjdns"]["node"]
    assert node["authorized_passwords"]["laptop"] == {"password": expected_password("vps2", "laptop"),
                                                      "ipv6": cards["laptop"]["ipv6"]}
    assert node["authorized_passwords"]["office"]["password"] == expected_password("vps2", "office", edge_epoch=2)
    # vps1 too: two hubs, each a spoke of the other, link by the mesh rule (smaller id connects)
    assert sorted(node["authorized_passwords"]) == ["home", "laptop", "office", "phone", "pi", "vps1", "vps3"]
    assert node["peers"] == {}


def test_both_ends_of_an_edge_hold_the_same_password(cf):
    fleet = fleet_of(cf, sample_fleet_data())
    client = pillar_of(cf, fleet, "home")["cjdns"]["node"]
    server = pillar_of(cf, fleet, "office")["cjdns"]["node"]
    assert client["peers"]["198.51.100.20:47300"]["password"] == server["authorized_passwords"]["home"]["password"]


def test_the_fleet_section_and_mine_functions(cf):
    fleet = fleet_of(cf, sample_fleet_data())
    pillar = pillar_of(cf, fleet, "home")
    members = ["home", "laptop", "office", "phone", "pi", "spare", "vps1", "vps2", "vps3"]
    assert pillar["cjdns"]["fleet"] == {
        "name": "home", "member": "home", "epoch": 1, "endpoints": ["198.51.100.7:47300"],
        "neighbours": ["laptop", "office", "phone", "pi", "vps1", "vps2"], "pending": [], "refused": [],
        "unreachable": [], "members": members, "compromised_keys": []}
    # A hand-written node.compromised_keys is not replaced (Salt's merge replaces lists).
    assert "compromised_keys" not in pillar["cjdns"]["node"]
    # The list form, which Salt does not change in place (allow_tgt stays on every update).
    assert pillar["mine_functions"] == {"cjdns.card": [{"mine_function": "cjdns.card"}, {"allow_tgt": members},
                                                       {"allow_tgt_type": "list"}]}


def test_a_non_member_gets_nothing(cf):
    fleet = fleet_of(cf, sample_fleet_data())
    assert cf.render(fleet, KEY, "stranger", {}) == {}


def test_the_pillar_is_what_the_node_accepts(cf, cj):
    fleet = fleet_of(cf, sample_fleet_data())
    for member in fleet.members:
        node = pillar_of(cf, fleet, member)["cjdns"]["node"]
        assert cj.validate_peers(node["peers"]) == node["peers"]
        for user, options in node["authorized_passwords"].items():
            assert cj._check_text_field(user, "user", 64) is None
            assert cj._check_text_field(options["password"], "password") is None
            assert cj.address(sample_cards()[user]["publicKey"]) == options["ipv6"]


def test_password_derivation_follows_the_documented_formula(cf):
    assert cf.derive_password(KEY, "home", "vps1", "laptop", 1, 0) == expected_password("vps1", "laptop")
    assert len(expected_password("a", "b")) == 52
    assert cf.derive_password(bytes(32), "home", "vps1", "laptop", 1, 0) != expected_password("vps1", "laptop")


# --- epochs ----------------------------------------------------------------------------


def all_passwords(cf, data):
    """{(member, where, name): password} over the whole fleet."""
    fleet = fleet_of(cf, data)
    found = {}
    for member in fleet.members:
        node = pillar_of(cf, fleet, member)["cjdns"]["node"]
        found.update({(member, "peer", endpoint): peer["password"] for endpoint, peer in node["peers"].items()})
        found.update({(member, "auth", user): entry["password"] for user, entry in node["authorized_passwords"].items()})
    return found


def test_an_edge_epoch_rotates_exactly_that_edges_passwords(cf):
    data = sample_fleet_data()
    before = all_passwords(cf, data)
    data["edge_epochs"].append({"between": ["laptop", "vps1"], "epoch": 1})
    after = all_passwords(cf, data)
    changed = sorted(place for place in before if before[place] != after[place])
    assert changed == [("laptop", "peer", "192.0.2.1:47300"), ("laptop", "peer", "[2001:db8::1]:47300"),
                       ("vps1", "auth", "laptop")]


def test_the_fleet_epoch_rotates_every_password(cf):
    data = sample_fleet_data()
    before = all_passwords(cf, data)
    data["epoch"] = 2
    after = all_passwords(cf, data)
    assert before.keys() == after.keys() and len(before) > 20
    assert all(before[place] != after[place] for place in before)


# --- cards -----------------------------------------------------------------------------


def refused_for(cf, member, other, card, data=None):
    fleet = fleet_of(cf, data or sample_fleet_data())
    cards = sample_cards()
    cards[other] = card
    return pillar_of(cf, fleet, member, cards)["cjdns"]


@pytest.mark.parametrize("change, reason", [
    ({"ipv6": KEYS[9]["ipv6"]}, f"ipv6: '{KEYS[9]['ipv6']}' is not the address of its publicKey ({KEYS[2]['ipv6']})"),
    ({"id": "vps1"}, "id: 'vps1' is not the minion it came from ('vps3')"),
    ({"endpoints": ["vps3.example.net:47300"]}, "endpoints[0]: 'vps3.example.net' is not an IP address"),
    ({"endpoints": ["[fc00::1]:47300"]}, "endpoints[0]: fc00::1 is a cjdns (fc00::/8) address"),
    ({"endpoints": ["224.0.0.1:47300"]}, "endpoints[0]: 224.0.0.1 is an unspecified, multicast or broadcast"),
    ({"endpoints": ["0.0.0.0:47300"]}, "endpoints[0]: 0.0.0.0 is an unspecified"),
    ({"endpoints": ["[fe80::1%eth0]:47300"]}, "endpoints[0]: 'fe80::1%eth0' has a zone id"),
    ({"endpoints": ["2001:db8::1:47300"]}, "an IPv6 endpoint needs brackets"),
    ({"endpoints": ["192.0.2.3:0"]}, "port 0 is not in 1-65535"),
    ({"publicKey": KEYS[2]["public_key"].upper()[:-2] + ".k"}, "publicKey: "),
    ({"publicKey": "xcd7r4hsmybvkd68nqrkdp8trskfqmbg4vy65lgjx8l622qbf9n0.k"}, "outside fc00::/8"),
    ({"version": 2}, "version: 2 is not a card version"),
    ({"extra": 1}, "extra: unknown key"),
    ({"udp_port": "47300"}, "udp_port: '47300' is not a port number"),
])
def test_an_invalid_card_is_refused_and_its_edge_pending(cf, change, reason):
    card = {**sample_cards()["vps3"], **change}
    fleet = refused_for(cf, "vps1", "vps3", card)["fleet"]
    assert fleet["pending"] == ["vps3"] and "vps3" not in fleet["neighbours"]
    [entry] = fleet["refused"]
    assert entry["id"] == "vps3" and reason in entry["reason"], entry


def test_a_card_with_a_compromised_key_is_refused(cf):
    data = sample_fleet_data()
    data["compromised_keys"] = [sample_cards()["office"]["publicKey"]]
    fleet = fleet_of(cf, data)
    pillar = pillar_of(cf, fleet, "home")["cjdns"]
    assert pillar["fleet"]["refused"] == [{"id": "office", "reason": "publicKey: listed in compromised_keys"}]
    assert pillar["fleet"]["pending"] == ["office"]
    assert all(peer["peerName"] != "office" for peer in pillar["node"]["peers"].values())
    assert pillar["fleet"]["compromised_keys"] == data["compromised_keys"]


def test_a_missing_card_leaves_the_edge_pending_without_error(cf):
    fleet = fleet_of(cf, sample_fleet_data())
    cards = sample_cards()
    del cards["pi"]
    pillar = pillar_of(cf, fleet, "vps1", cards)["cjdns"]
    assert pillar["fleet"]["pending"] == ["pi"] and pillar["fleet"]["refused"] == []
    assert "pi" not in pillar["node"]["authorized_passwords"]
    assert "laptop" in pillar["node"]["authorized_passwords"]


def test_a_server_without_endpoints_is_pending_for_its_clients(cf):
    data = small({"a": {}, "b": {}}, [{"mesh": ["a", "b"]}])
    cards = {m: {**sample_cards()[k], "id": m, "endpoints": []} for m, k in (("a", "vps1"), ("b", "vps2"))}
    fleet = fleet_of(cf, data)
    assert pillar_of(cf, fleet, "a", cards)["cjdns"]["fleet"]["pending"] == ["b"]
    assert pillar_of(cf, fleet, "b", cards)["cjdns"]["fleet"]["neighbours"] == ["a"]


def test_a_card_sent_with_allow_tgt_is_unwrapped(cf):
    import salt.utils.mine

    fleet = fleet_of(cf, sample_fleet_data())
    wrapped = salt.utils.mine.wrap_acl_structure(sample_cards()["vps2"], allow_tgt=["vps1"], allow_tgt_type="list")
    found = cf.lookup_card(fetcher({"vps2": {"cjdns.card": wrapped, "other.fun": 1}}), "vps2", fleet.compromised_keys)
    assert found == cf.Card("vps2", sample_cards()["vps2"]["publicKey"], sample_cards()["vps2"]["ipv6"],
                            ("192.0.2.2:47300",))


def test_unreadable_or_odd_mine_data(cf):
    def broken(minion):
        raise ValueError("unpackable")

    assert cf.lookup_card(broken, "vps2", frozenset()) == cf.Refused(
        "its mine data in the master's cache cannot be read (ValueError)")
    assert cf.lookup_card(fetcher({"vps2": ["not", "a", "dict"]}), "vps2", frozenset()) is None
    assert cf.lookup_card(fetcher({"vps2": {"cjdns.card": "text"}}), "vps2", frozenset()) == cf.Refused(
        "must be a mapping, not a string")


def test_an_endpoint_claimed_by_two_servers_goes_to_neither(cf):
    fleet = fleet_of(cf, sample_fleet_data())
    cards = sample_cards()
    cards["vps2"]["endpoints"] = ["192.0.2.1:47300"]  # vps1's
    pillar = pillar_of(cf, fleet, "laptop", cards)["cjdns"]
    assert "192.0.2.1:47300" not in pillar["node"]["peers"]
    assert pillar["node"]["peers"]["[2001:db8::1]:47300"]["peerName"] == "vps1"
    assert pillar["fleet"]["pending"] == ["vps2"]
    assert {entry["id"] for entry in pillar["fleet"]["refused"]} == {"vps1", "vps2"}


# --- isolation -------------------------------------------------------------------------


def test_a_member_holds_no_password_of_an_edge_it_is_not_on(cf):
    data = sample_fleet_data()
    fleet = fleet_of(cf, data)
    edge_epochs = [0, 2]
    every = {}
    for a, b in itertools.permutations(fleet.members, 2):
        for fleet_epoch in (0, 1, 2):
            for edge_epoch in edge_epochs:
                every[expected_password(a, b, fleet_epoch, edge_epoch)] = {a, b}
    for member in fleet.members:
        text = json.dumps(pillar_of(cf, fleet, member))
        held = {password for password in every if password in text}
        assert all(member in every[password] for password in held), member
        assert len(held) == len(cf.member_edges(fleet, member).edges)


def test_a_render_reads_only_the_cards_of_its_neighbours(cf, tmp_path):
    fleet = fleet_of(cf, sample_fleet_data())
    mines = mines_of(sample_cards())
    read = []

    def fetch(minion):
        read.append(minion)
        return mines.get(minion, {})

    (tmp_path / "fleet.yaml").write_text(sample_fleet_text())
    tmp_path.chmod(0o700)
    config = cf.config_of(str(tmp_path / "fleet.yaml"), str(tmp_path / "fleet.key"))
    cf.member_pillar(config, "laptop", fetch)
    assert sorted(read) == cf.neighbours(fleet, "laptop")


def static_pillar(cf, fleet, member, cards):
    found = {other: cf.fleet_card(fleet, fetcher(mines_of(cards)), other) for other in cf.member_edges(fleet, member).edges}
    return cf.render(fleet, KEY, member, found)["cjdns"]


def test_a_member_without_a_master_has_its_card_in_the_fleet_file(cf):
    """A Qubes sys-cjdns (qubesctl has no master): members.<id>.public_key stands for its card,
    and a card in the mine under that id does not override it."""
    key = KEYS[5]["public_key"]
    data = small({"hub": {}, "qube": {"nat": True, "public_key": key}}, [{"hubs": {"hubs": ["hub"], "members": ["qube"]}}])
    fleet = fleet_of(cf, data)
    cards = {"hub": {**sample_cards()["vps1"], "id": "hub"}, "qube": {**sample_cards()["vps2"], "id": "qube"}}
    hub = static_pillar(cf, fleet, "hub", cards)
    assert hub["node"]["authorized_passwords"]["qube"]["ipv6"] == KEYS[5]["ipv6"]
    assert hub["fleet"]["pending"] == []
    compromised = fleet_of(cf, {**data, "compromised_keys": [key]})
    hub = static_pillar(cf, compromised, "hub", cards)
    assert hub["fleet"]["pending"] == ["qube"] and "compromised" in json.dumps(hub["fleet"]["refused"])


def test_a_bad_public_key_in_the_fleet_file_names_its_field(cf):
    with pytest.raises(cf.FleetError, match=r"members\.qube\.public_key: "):
        fleet_of(cf, small({"qube": {"public_key": "not-a-key"}}, [{"mesh": ["qube"]}]))


def test_a_broken_fleet_file_stops_its_members_only(cf, tmp_path):
    """A typo in the fleet file: its members' pillar fails (Salt's _errors), every other
    minion of the master gets nothing from the fleet and applies as before."""
    path = tmp_path / "fleet.yaml"
    path.write_text("version: 1\nfleet: t\nmembers: {a: {}, b: {}}\ntopolgy: []\n")
    config = cf.Config(fleet_file=str(path), key_file=str(tmp_path / "key"))
    with pytest.raises(cf.FleetError, match="topolgy: unknown key"):
        cf.member_pillar(config, "a", lambda m: None)
    assert cf.member_pillar(config, "other", lambda m: None) == {}
    path.write_text("version: 1\nfleet: [\n")  # not YAML: members cannot be told apart
    with pytest.raises(cf.FleetError):
        cf.member_pillar(config, "other", lambda m: None)


def test_the_card_fingerprint_is_the_nodes(cf, cj):
    card = sample_cards()["vps1"]
    assert cf.card_fingerprint(card) == cj.card_fingerprint(dict(reversed(list(card.items()))))
