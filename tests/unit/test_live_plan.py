"""cjdns.live's plan: which admin calls bring a running node to its file, and when only a
restart can (_modules/cjdns.py plan_live, live_view, live_baseline)."""

import json

from support.saltenv import VECTORS, load_module

cj = load_module()
KEYS = json.loads((VECTORS / "keys.json").read_text())["keys"]
CONF = cj.loads((VECTORS / "admin" / "node-c.conf").read_text())
SALT = "s"
A, B, E = KEYS[0], KEYS[1], KEYS[2]


def conf(peers=None, users=None, **top):
    data = json.loads(json.dumps(CONF))
    data["interfaces"]["UDPInterface"][0]["connectTo"] = peers or {}
    data["authorizedPasswords"] = [{"user": u, **e} for u, e in (users or {"default-login": {"password": "x"}}).items()]
    data.update(top)
    return data


def running(data, peers=(), users=None, key=None, binds=None):
    return {
        "pid": 1,
        "public_key": key or data["publicKey"],
        "interfaces": [f"UDP/IPv4/{b}" for b in (binds or ["127.0.0.1:21242"])],
        "users": (users if users is not None else [e["user"] for e in data["authorizedPasswords"]]) + ["Local Peers"],
        "peers": list(peers),
    }


def peer(key, incoming=False, user="x"):
    return {"public_key": key["public_key"], "ipv6": key["ipv6"], "incoming": incoming, "user": user,
            "lladdr": "127.0.0.1:1", "state": "ESTABLISHED"}


PEER_A = {"password": "pa", "publicKey": A["public_key"], "peerName": "a"}


def test_nothing_differs_nothing_planned():
    data = conf(peers={"127.0.0.1:9": PEER_A})
    view = cj.live_view(data, SALT)
    plan = cj.plan_live(view, view, running(data, [peer(A)]))
    assert plan.empty()


def test_new_peer_is_connected_only_when_not_in_peer_stats():
    old = conf()
    new = conf(peers={"127.0.0.1:9": PEER_A})
    plan = cj.plan_live(cj.live_view(new, SALT), cj.live_view(old, SALT), running(old))
    assert plan.connect == [A["public_key"]] and not plan.disconnect and not plan.restart
    # Already connected (incoming from that node): beginConnection would leak a session.
    plan = cj.plan_live(cj.live_view(new, SALT), cj.live_view(old, SALT), running(old, [peer(A, incoming=True)]))
    assert plan.empty()


def test_a_link_that_changes_direction_is_disconnected_then_connected():
    """A was our client (its user tied to its address); now we connect to A (fleet: mesh to
    hubs). Its incoming session goes with its user, so a session of ours must follow."""
    old = conf(users={"a": {"password": "x", "ipv6": A["ipv6"]}})
    new = conf(peers={"127.0.0.1:9": PEER_A}, users={})
    plan = cj.plan_live(cj.live_view(new, SALT), cj.live_view(old, SALT), running(old, [peer(A, incoming=True, user="a")]))
    assert plan.remove_users == ["a"] and plan.disconnect == [A["public_key"]] and plan.connect == [A["public_key"]]


def test_changed_peer_credentials_disconnect_then_connect():
    old = conf(peers={"127.0.0.1:9": PEER_A})
    new = conf(peers={"127.0.0.1:9": {**PEER_A, "password": "pa2"}})
    plan = cj.plan_live(cj.live_view(new, SALT), cj.live_view(old, SALT), running(old, [peer(A)]))
    assert plan.disconnect == [A["public_key"]] and plan.connect == [A["public_key"]] and plan.reconnect == [A["public_key"]]


def test_removed_peer_is_disconnected_but_hand_made_sessions_are_left():
    old = conf(peers={"127.0.0.1:9": PEER_A})
    plan = cj.plan_live(cj.live_view(conf(), SALT), cj.live_view(old, SALT), running(old, [peer(A), peer(B)]))
    assert plan.disconnect == [A["public_key"]] and not plan.connect


def test_password_change_is_remove_then_add_and_revokes_the_old_one():
    old = conf(users={"default-login": {"password": "x"}, "e": {"password": "1", "ipv6": E["ipv6"]}})
    new = conf(users={"default-login": {"password": "x"}, "e": {"password": "2", "ipv6": E["ipv6"]}})
    plan = cj.plan_live(cj.live_view(new, SALT), cj.live_view(old, SALT), running(old, [peer(E, incoming=True), peer(A, incoming=True)]))
    assert plan.remove_users == ["e"] and plan.add_users == ["e"] and plan.changed_users == ["e"]
    assert plan.disconnect == [E["public_key"]] and plan.reset_incoming == []


def test_removed_user_without_address_makes_every_incoming_peer_reauthenticate():
    old = conf(users={"default-login": {"password": "x"}, "f": {"password": "1"}})
    plan = cj.plan_live(cj.live_view(conf(), SALT), cj.live_view(old, SALT), running(old, [peer(A, incoming=True), peer(B)]))
    assert plan.remove_users == ["f"] and plan.reset_incoming == [A["public_key"]] and not plan.disconnect


def test_a_user_listed_twice_is_made_one_entry():
    data = conf()
    view = cj.live_view(data, SALT)
    plan = cj.plan_live(view, view, running(data, users=["default-login", "default-login"]))
    assert plan.remove_users == ["default-login"] and plan.add_users == ["default-login"]


def test_what_the_api_cannot_change_restarts_with_the_reason():
    data = conf()
    view = cj.live_view(data, SALT)
    assert cj.plan_live(view, view, running(data, key=A["public_key"])).restart == ["the node's key changed"]
    assert cj.plan_live(view, view, running(data, binds=["127.0.0.1:1"])).restart == [
        "UDP interfaces changed (running 127.0.0.1:1; file 127.0.0.1:21242)"]
    changed = cj.live_view(conf(logging={}, admin={"bind": "127.0.0.1:1", "password": "p"}), SALT)
    assert cj.plan_live(changed, view, running(data)).restart == ["admin, logging changed (only a restart applies them)"]
    plan = cj.plan_live(view, None, running(data), "unknown because")
    assert plan.restart == ["unknown because"] and not plan.connect


def test_ipv6_binds_compare_in_one_spelling():
    assert cj._interface_bind("UDP/IPv6/[0:0::0]:47300") == "[::]:47300"
    assert cj._interface_bind("ETH/eth0") == ""


def test_the_view_holds_no_password():
    data = conf(peers={"127.0.0.1:9": PEER_A}, users={"u": {"password": "secret-pw"}})
    text = json.dumps(cj.live_view(data, SALT))
    assert "secret-pw" not in text and "pa" not in text.replace("peers", "").replace("password", "")


def test_baseline_from_the_record_of_this_process_or_of_the_start_it_asked_for():
    view = {"v": 1}
    assert cj.live_baseline({"view": view, "process": [5, 100]}, 5, 100, {"f": 1}, 0) == (view, "")
    assert cj.live_baseline({"view": view, "process": None, "replaced": [5, 100]}, 6, 200, {"f": 1}, 0) == (view, "")
    # The restart asked for did not happen: the same process still runs an older file.
    base, why = cj.live_baseline({"view": view, "process": None, "replaced": [5, 100]}, 5, 100, {"f": 1}, 4e9)
    assert base is None and "pid 5" in why


def test_a_user_the_file_does_not_have_is_removed():
    data = conf()
    view = cj.live_view(data, SALT)
    plan = cj.plan_live(view, view, running(data, users=["stray", "default-login"]))
    assert plan.remove_users == ["stray"] and not plan.add_users


def test_an_entry_without_user_is_applied_by_a_restart():
    base = conf()
    data = conf()
    data["authorizedPasswords"].append({"password": "anon-pw"})
    plan = cj.plan_live(cj.live_view(data, SALT), cj.live_view(base, SALT), running(base))
    assert plan.restart == ["authorizedPasswords (entries without user) changed (only a restart applies it)"]


class Recorder:
    """An admin client that records calls and lists every peer it was asked to connect."""

    def __init__(self):
        self.calls = []

    def call(self, function, args=None, auth=None):
        self.calls.append((function, args))
        return {"error": "none"} if function != "InterfaceController_disconnectPeer" else {"success": 1}

    def call_paged(self, function, args=None, list_key="peers", auth=None):
        keys = [a["publicKey"] for f, a in self.calls if f == "UDPInterface_beginConnection"]
        return [{"addr": f"v20.0000.0000.0000.0013.{k}", "state": "ESTABLISHED"} for k in keys]


def test_calls_go_revoke_first_and_peers_on_the_interface_of_their_family():
    data = conf(users={"default-login": {"password": "x"}, "new": {"password": "np"}})
    data["interfaces"]["UDPInterface"].append({"bind": "[::]:21242", "connectTo": {
        "[2001:db8::1]:9": {"password": "p6", "publicKey": B["public_key"]}}})
    data["interfaces"]["UDPInterface"][0]["connectTo"] = {"127.0.0.1:9": PEER_A}
    plan = cj.LivePlan(remove_users=["old"], add_users=["new"], connect=[A["public_key"], B["public_key"]])
    client = Recorder()
    states = cj.apply_live(client, data, plan, wait=0)
    assert [f for f, _ in client.calls] == ["AuthorizedPasswords_remove", "AuthorizedPasswords_add",
                                          "UDPInterface_beginConnection", "UDPInterface_beginConnection"]
    assert client.calls[2][1] == {"address": "127.0.0.1:9", "publicKey": A["public_key"], "password": "pa",
                                  "interfaceNumber": 0, "peerName": "a"}
    assert client.calls[3][1]["interfaceNumber"] == 1 and client.calls[3][1]["address"] == "[2001:db8::1]:9"
    assert states == {A["public_key"]: "ESTABLISHED", B["public_key"]: "ESTABLISHED"}


def test_begin_connection_is_never_sent_without_a_password():
    data = conf(peers={"127.0.0.1:9": {"publicKey": A["public_key"], "password": ""}})
    client = Recorder()
    try:
        cj.apply_live(client, data, cj.LivePlan(connect=[A["public_key"]]), wait=0)
    except cj.ConfigError as error:
        assert "no password" in str(error)
    else:
        raise AssertionError("beginConnection without a password was sent")
    assert client.calls == []


class Gone(Recorder):
    def call(self, function, args=None, auth=None):
        self.calls.append((function, args))
        raise cj.AdminCallError(function, {"AuthorizedPasswords_remove": "Unknown error.",
                                           "InterfaceController_disconnectPeer": "no peer found for that key"}[function], {})


def test_a_user_or_peer_already_gone_is_not_a_failure():
    client = Gone()
    cj.apply_live(client, conf(), cj.LivePlan(remove_users=["u"], disconnect=[A["public_key"]]), wait=0)
    assert [f for f, _ in client.calls] == ["AuthorizedPasswords_remove", "InterfaceController_disconnectPeer"]
