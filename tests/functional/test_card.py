"""Fleet mode, node side: the card (public facts only) and cjdns.card_published, through real
salt-call --local (masterless: the card goes to the minion's own mine, no event; the master
path is tests/functional/test_fleet.py)."""

import json
import stat

import pytest

from support.saltenv import VECTORS, SaltEnv, load_module

cj = load_module()
GENCONF = (VECTORS / "genconf/genconf-1.conf").read_text()
FLEET = {"member": "cjdns-test", "members": ["cjdns-test", "peer-b"], "endpoints": ["192.0.2.1:47300"]}


def test_card_endpoints_keep_only_addresses_a_peer_can_reach():
    addresses = ["127.0.0.1", "10.1.2.3", "169.254.1.1", "fe80::1", "2001:db8::5", "fc12::1", "::1", "224.0.0.1"]
    assert cj.card_endpoints(addresses, {4: 47300, 6: 47301}) == ["10.1.2.3:47300", "[2001:db8::5]:47301"]
    # No UDP interface of a family: no endpoint of it.
    assert cj.card_endpoints(addresses, {4: 47300}) == ["10.1.2.3:47300"]


def test_bind_ports_per_family():
    data = {"interfaces": {"UDPInterface": [{"bind": "0.0.0.0:47300"}, {"bind": "[::]:47301"}]}}
    assert cj.bind_ports(data) == {4: 47300, 6: 47301}
    assert cj.bind_ports({"interfaces": {"UDPInterface": {"bind": "0.0.0.0:5"}}}) == {4: 5}


def test_a_card_holds_public_facts_only():
    data = cj.loads(GENCONF)
    card = cj.make_card("n1", cj.identity_of(data["privateKey"]), {4: 1}, ["192.0.2.1:1"], 3)
    assert set(card) == {"version", "id", "publicKey", "ipv6", "endpoints", "udp_port", "epoch"}
    assert data["privateKey"] not in json.dumps(card)
    assert cj.address(card["publicKey"]) == card["ipv6"]


@pytest.fixture
def node(tmp_path):
    directory = tmp_path / "cjdns"
    directory.mkdir(mode=0o700)
    conf = directory / "cjdroute.conf"
    conf.write_text(GENCONF)
    conf.chmod(0o600)
    return tmp_path, conf


def publish(env, conf, *args):
    result = env.call("state.single", "cjdns.card_published", str(conf), *args)
    assert result.rc in (0, 2) and isinstance(result.data, dict), result.stdout[-2000:]
    (ret,) = result.data.values()
    return ret


def test_card_published_once_then_unchanged_and_predicted(node):
    tmp_path, conf = node
    env = SaltEnv(tmp_path / "s", pillar={"cjdns": {"fleet": FLEET}})
    first = publish(env, conf)
    public = cj.identity_of(cj.loads(GENCONF)["privateKey"]).public_key
    assert first["result"] is True
    assert first["changes"] == {"card": {"old": None, "new": {"publicKey": public, "endpoints": ["192.0.2.1:47300"], "epoch": 0}}}
    record = conf.parent / ".cjdns-formula-card.json"
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    again = publish(env, conf)
    assert again["result"] is True and again["changes"] == {} and "unchanged" in again["comment"]
    # The mine entry may be read by the fleet's members only.
    mine = env.call("data.get", "mine_cache").data["cjdns.card"]
    assert mine["allow_tgt"] == FLEET["members"] and mine["allow_tgt_type"] == "list"
    assert mine["__data__"]["publicKey"] == public
    # A new endpoint: test=True predicts the new card and sends nothing.
    env.set_pillar({"cjdns": {"fleet": {**FLEET, "endpoints": ["[2001:db8::7]:47300"]}}})
    before = record.read_bytes()
    dry = publish(env, conf, "test=True")
    assert dry["result"] is None and dry["changes"]["card"]["new"]["endpoints"] == ["[2001:db8::7]:47300"]
    assert record.read_bytes() == before
    assert publish(env, conf)["changes"] == dry["changes"]
    secrets = [cj.loads(GENCONF)["privateKey"], cj.loads(GENCONF)["admin"]["password"]]
    text = conf.parent.joinpath(".cjdns-formula-card.json").read_text() + json.dumps(env.call("data.get", "mine_cache").data)
    assert not [s for s in secrets if s in text]


def test_not_a_member_publishes_nothing(node):
    tmp_path, conf = node
    env = SaltEnv(tmp_path / "s", pillar={})
    ret = publish(env, conf)
    assert ret["result"] is True and ret["changes"] == {} and "not a fleet member" in ret["comment"]
    assert not (conf.parent / ".cjdns-formula-card.json").exists()


def test_card_function_through_salt(node):
    tmp_path, conf = node
    env = SaltEnv(tmp_path / "s", pillar={})
    card = env.call("cjdns.card", str(conf)).data
    assert card["epoch"] == 0 and card["id"] == "cjdns-test" and card["udp_port"] == 25440
    assert all(cj.peer_endpoint(e) == e for e in card["endpoints"])
    # The epoch counts the keys published: the same key keeps the last card's, a new one is next.
    record = conf.parent / ".cjdns-formula-card.json"
    record.write_text(json.dumps({**card, "epoch": 3}))
    assert env.call("cjdns.card", str(conf)).data["epoch"] == 3
    record.write_text(json.dumps({**card, "epoch": 3, "publicKey": "other.k"}))
    assert env.call("cjdns.card", str(conf)).data["epoch"] == 4


def test_a_card_lost_by_the_mine_is_sent_again(node):
    tmp_path, conf = node
    env = SaltEnv(tmp_path / "s", pillar={"cjdns": {"fleet": FLEET}})
    assert publish(env, conf)["changes"]
    env.call("mine.flush")
    again = publish(env, conf)
    assert again["changes"]["card"]["old"] is None and again["changes"]["card"]["new"]["publicKey"]
