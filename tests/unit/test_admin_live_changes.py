"""The emulated admin server against transcript-live-changes.json (cjdns v20.7): node C's calls
replayed in order, byte for byte where the reply does not depend on time, and peerStats by what
it shows of each peer (state, version, label, key, direction, user, address)."""

import json
import socket
import sys

import pytest

from support.saltenv import TESTS, VECTORS, load_module

sys.path.insert(0, str(TESTS / "emulation"))
import admin_server as emu  # noqa: E402

cj = load_module()
ADMIN = VECTORS / "admin"
LIVE = json.loads((ADMIN / "transcript-live-changes.json").read_text())
EXCHANGES = LIVE["exchanges"]
NODES = LIVE["nodes"]
RESTART_AT = next(i for i, e in enumerate(EXCHANGES) if e["name"] == "InterfaceController_peerStats_after_restart")


class Clock:
    def __init__(self):
        self.ms = 0

    def __call__(self):
        return self.ms


def _node(name, clock):
    conf = emu.load_cjdroute_conf(ADMIN / NODES[name]["config"])
    kwargs = emu.server_kwargs_from_conf(conf)
    kwargs.update(port=0, clock_ms=clock, functions=emu.load_function_specs(ADMIN / "available_functions.json"))
    server = emu.AdminServer(**kwargs)
    # D checks the credentials it is offered (its default-login), as the real D did.
    server.remotes[NODES["D"]["publicKey"]] = [("default-login", NODES["D"]["default_login_password"])]
    return server


def _send(server, payload):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.5)
        sock.sendto(payload, ("127.0.0.1", server.port))
        try:
            return sock.recv(70000)
        except socket.timeout:
            return None


def _shown(reply):
    """peerStats as far as it does not depend on traffic: each peer's identity and state."""
    fields = ("addr", "state", "isIncoming", "user", "lladdr", "ifNum")
    return {"total": reply["total"], "peers": [{k: p.get(k) for k in fields} for p in reply["peers"]]}


def _call_clock(cookie, clock):
    """The emulator's clock at a recorded call: inside its cookie's window, and never before an
    earlier poll (calls made within one cookie unit keep their order)."""
    return max(int(cookie) * 1024 + 512, clock.ms + 50)


def _replay(server, clock, exchanges):
    """Send each recorded request of node C; yield (exchange, recorded reply, emulated reply)."""
    call_ms, call_unix = 0, 0
    for exchange in exchanges:
        if exchange["node"] == "E" and exchange["name"] == "auth_UDPInterface_beginConnection_E_to_C":
            args = exchange["request"]["decoded"]["args"]
            call_ms, call_unix = _call_clock(exchange["auth"]["cookie"], clock), exchange["unix_time_at_call"]
            clock.ms = call_ms
            # E peers with C: C sees an incoming peer using those credentials.
            assert server.add_incoming(NODES["E"]["publicKey"], "127.0.0.1:21244", args["login"], args["password"])
            continue
        if exchange["node"] != "C":
            continue
        auth = exchange.get("auth")
        if auth:
            call_ms, call_unix = _call_clock(auth["cookie"], clock), exchange["unix_time_at_call"]
            clock.ms = call_ms
        else:
            timing = (exchange.get("timing") or {}).get("request_sent_ms_after_call")
            clock.ms = call_ms + int(timing if timing is not None else (exchange["unix_time_at_call"] - call_unix) * 1000 + 500)
        reply = _send(server, exchange["request"]["benc"].encode())
        yield exchange, exchange["response"]["benc"].encode(), reply


@pytest.fixture(scope="module")
def replayed():
    clock = Clock()
    with _node("C", clock) as server:
        before = list(_replay(server, clock, EXCHANGES[:RESTART_AT]))
        leaked = list(server.leaked_sessions)
    with _node("C", clock) as restarted:
        after = list(_replay(restarted, clock, EXCHANGES[RESTART_AT:]))
    return before + after, leaked


def _ids(exchanges):
    return [e["name"] for e in exchanges if e["node"] == "C"]


@pytest.mark.parametrize("name", _ids(EXCHANGES))
def test_node_c_answers_as_recorded(replayed, name):
    results, _ = replayed
    exchange, recorded, reply = next(r for r in results if r[0]["name"] == name)
    assert reply is not None, name
    if exchange["request"]["decoded"].get("q") == "InterfaceController_peerStats":
        assert _shown(cj._bdecode(reply)) == _shown(exchange["response"]["decoded"])
    else:
        assert reply == recorded


def test_repeated_begin_connection_leaks_the_replaced_sessions(replayed):
    _, leaked = replayed
    # 0013 replaced by 0015 (same call again), by 0017 (wrong password), by 0019 (right one).
    assert leaked == [NODES["D"]["publicKey"]] * 3


def test_begin_connection_without_password_kills_the_core():
    exchange = EXCHANGES[-1]
    assert exchange["name"] == "auth_UDPInterface_beginConnection_without_password" and exchange["response"] is None
    clock = Clock()
    died = []
    with _node("D", clock) as server:
        server.on_core_death = lambda: died.append(True)
        clock.ms = int(exchange["auth"]["cookie"]) * 1024 + 512
        assert _send(server, exchange["request"]["benc"].encode()) is None
        assert died == [True]
        assert _send(server, b"d1:q4:pinge") is None  # nothing answers any more


def test_sessions_made_live_count_bytes_while_established():
    clock = Clock()
    with _node("C", clock) as server:
        clock.ms = 1_000_000
        server.add_incoming(NODES["E"]["publicKey"], "127.0.0.1:21244", "default-login", NODES["C"]["default_login_password"])
        first = server._peer_view(server.peers[0], clock.ms + 100)["bytesIn"]
        second = server._peer_view(server.peers[0], clock.ms + 200)["bytesIn"]
        assert 0 < first < second


def test_builtin_specs_match_the_recorded_function_list():
    """The fake cjdroute in a machine has no vectors: its own specs must say what v20.7 says."""
    recorded = json.loads((ADMIN / "available_functions.json").read_text())["functions"]
    for name, spec in emu.BUILTIN_SPECS.items():
        assert recorded[name] == spec, name


@pytest.mark.parametrize("exchange", [e for e in EXCHANGES if e.get("auth")], ids=lambda e: e["name"])
def test_the_client_builds_each_recorded_live_change_request(exchange):
    """The product's admin client (what cjdns.live sends) makes the recorded bytes."""
    decoded, auth = exchange["request"]["decoded"], exchange["auth"]
    request = cj._build_request(decoded["aq"], decoded.get("args"), decoded["txid"],
                                cookie=auth["cookie"], password=auth["password"])
    assert request == exchange["request"]["benc"].encode()


@pytest.mark.parametrize("exchange", [e for e in EXCHANGES if e["response"]], ids=lambda e: e["name"])
def test_the_client_reads_each_recorded_reply(exchange):
    assert cj._bdecode(exchange["response"]["benc"].encode()) == exchange["response"]["decoded"]


def test_the_client_reports_call_errors_as_recorded():
    refused = next(e for e in EXCHANGES if e["name"] == "auth_AuthorizedPasswords_remove_unknown_user")
    with pytest.raises(cj.AdminCallError, match="AuthorizedPasswords_remove: Unknown error."):
        cj._checked_reply("AuthorizedPasswords_remove", refused["response"]["decoded"], "127.0.0.1:1")
    # disconnectPeer says "success": 0 with an error; apply_live treats success 0 as a failure too.
    unknown = next(e for e in EXCHANGES if e["name"] == "auth_InterfaceController_disconnectPeer_unknown_key")
    with pytest.raises(cj.AdminCallError, match="no peer found for that key"):
        cj._checked_reply("InterfaceController_disconnectPeer", unknown["response"]["decoded"], "127.0.0.1:1")
