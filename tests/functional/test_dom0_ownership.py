"""dom0 touches only what the formula owns: refusals before anything changes, clients' netvm
recorded and given back, removals shown in `changes`, and dry runs that predict all of it
(issue 11). The emulated dom0 is the qvm test double (tests/emulation/qubes)."""

import json

import pytest

from functional.test_dom0_sls import db_digest, dom0_env
from support.saltenv import changed, state_results

import qubes_db  # noqa: E402  (tests/emulation/qubes, on sys.path through test_dom0_sls)

OWNED = "cjdns-formula-owned"


def lab(tmp_path, applied=False):
    """dom0 with the user's own qubes: work (AppVM), vault (no netvm), sys-vpn (a halted netvm)."""
    env, db = dom0_env(tmp_path)
    qd = qubes_db.Qubesd(db)
    qd.run_tool("/usr/bin/qvm-create work --class=AppVM --label=red")
    qd.run_tool("/usr/bin/qvm-create vault --class=AppVM --label=black --property=netvm=")
    qd.run_tool("/usr/bin/qvm-create sys-vpn --class=AppVM --label=blue --property=provides_network=True")
    if applied:
        assert env.call("state.apply", "cjdns.dom0").rc == 0
    return env, db, qd


def pillar(**qubes):
    extra = {k: qubes.pop(k) for k in ("wipe_identity",) if k in qubes}
    return "pillar=" + json.dumps({"cjdns": {"qubes": {"clients": ["personal"], **qubes}, **extra}})


def result_of(run, state_id):
    return next(r for r in state_results(run.data) if r["__id__"] == state_id)


def assert_refused(env, db, sls, args, state_id, message):
    """Refused in a real run and in a dry run, with the same message, and nothing written."""
    before, journal = db_digest(db), qubes_db.journal(db)
    for extra in ((), ("test=True",)):
        run = env.call("state.apply", sls, *args, *extra)
        assert run.rc == 2, run.stdout[-2000:]
        check = result_of(run, state_id)
        assert check["result"] is False and message in check["comment"], check["comment"]
        assert all(r["result"] is False and not r["changes"] for r in state_results(run.data)
                   if r["__id__"] not in ("cjdns-pillar-valid", "cjdns-absent-qubes-owned", "cjdns-dom0-qubes-owned"))
        assert db_digest(db) == before and qubes_db.journal(db) == journal
    return check["comment"]


REFUSALS = [
    ({"proxy": "work"}, "cjdns.qubes.proxy: qube 'work' exists and was not made by this formula "
                        "(no feature cjdns-formula-owned=work). Choose a name no qube has, or list it in "
                        "cjdns:qubes:adopt to let the formula manage work from now on"),
    ({"template": "debian-13-xfce"}, "cjdns.qubes.template: qube 'debian-13-xfce' exists and was not made by this formula"),
    ({"template": "personal", "clients": []}, "cjdns.qubes.template: qube 'personal' is an AppVM, not a TemplateVM"),
    ({"proxy": "debian-13-xfce"}, "cjdns.qubes.proxy: qube 'debian-13-xfce' is a TemplateVM, not an AppVM"),
    ({"source_template": "work"}, "cjdns.qubes.source_template: qube 'work' is an AppVM, not a TemplateVM"),
    ({"clients": ["default-dvm"]}, "cjdns.qubes.clients: qube 'default-dvm' is a disposable template"),
    ({"clients": ["default-mgmt-dvm"]}, "cjdns.qubes.clients: qube 'default-mgmt-dvm' is a disposable template"),
    ({"clients": ["sys-firewall"]}, "cjdns.qubes.clients: qube 'sys-firewall' is on sys-cjdns's own way out "
                                    "(sys-cjdns -> sys-firewall -> sys-net): it cannot use sys-cjdns"),
    ({"clients": ["sys-vpn"]}, "cjdns.qubes.clients: qube 'sys-vpn' provides network to other qubes"),
    ({"clients": ["nosuch"]}, "cjdns.qubes.clients: qube 'nosuch' does not exist"),
    ({"proxy_netvm": "work"}, "cjdns.qubes.proxy_netvm: qube 'work' does not provide network"),
]


@pytest.mark.parametrize("qubes, message", REFUSALS, ids=[f"{next(iter(q))}-{i}" for i, (q, _) in enumerate(REFUSALS)])
def test_install_refuses_qubes_it_must_not_touch(tmp_path, qubes, message):
    env, db, _qd = lab(tmp_path)
    assert_refused(env, db, "cjdns.dom0", [pillar(**qubes)], "cjdns-dom0-qubes-owned", message)


def test_a_netvm_loop_through_sys_cjdns_is_refused(tmp_path):
    env, db, qd = lab(tmp_path, applied=True)
    qd.set("sys-vpn", "netvm", "sys-cjdns")
    assert_refused(env, db, "cjdns.dom0", [pillar(proxy_netvm="sys-vpn")], "cjdns-dom0-qubes-owned",
                   "cjdns.qubes.proxy_netvm: qube 'sys-vpn' reaches the network through sys-cjdns "
                   "(sys-vpn -> sys-cjdns): Qubes refuses netvm loops")


def test_a_clone_of_sys_cjdns_is_not_the_formulas(tmp_path):
    env, db, qd = lab(tmp_path, applied=True)
    qd.run_tool("/usr/bin/qvm-clone sys-cjdns sys-cjdns2")          # qvm-clone copies features
    assert qubes_db.features(db, "sys-cjdns2")[OWNED] == "sys-cjdns"
    assert_refused(env, db, "cjdns.dom0", [pillar(proxy="sys-cjdns2")], "cjdns-dom0-qubes-owned",
                   "cjdns.qubes.proxy: qube 'sys-cjdns2' exists and was not made by this formula")


def test_uninstall_refuses_a_sys_cjdns_it_did_not_make(tmp_path):
    env, db, _qd = lab(tmp_path, applied=True)
    assert_refused(env, db, "cjdns.absent", [pillar(proxy="work", clients=["personal"], wipe_identity=True)],
                   "cjdns-absent-qubes-owned", "cjdns.qubes.proxy: qube 'work' exists and was not made by this formula")


def test_created_qubes_are_marked_and_adopt_takes_over_unmarked_ones(tmp_path):
    env, db, qd = lab(tmp_path, applied=True)
    assert qubes_db.features(db, "cjdns-gw")[OWNED] == "cjdns-gw"
    assert qubes_db.features(db, "sys-cjdns")[OWNED] == "sys-cjdns"
    for qube in ("cjdns-gw", "sys-cjdns"):                          # as an older formula left them
        qd.del_feature(qube, OWNED)
    comment = assert_refused(env, db, "cjdns.dom0", [pillar()], "cjdns-dom0-qubes-owned",
                             "cjdns.qubes.template: qube 'cjdns-gw' exists and was not made by this formula")
    assert "cjdns.qubes.proxy: qube 'sys-cjdns' exists and was not made by this formula" in comment
    adopt = pillar(adopt=["cjdns-gw", "sys-cjdns"])
    dry = env.call("state.apply", "cjdns.dom0", adopt, "test=True")
    real = env.call("state.apply", "cjdns.dom0", adopt)
    expected = {f"cjdns-dom0-{part}-marked": {OWNED: {"old": None, "new": qube}}
                for part, qube in (("template", "cjdns-gw"), ("proxy", "sys-cjdns"))}
    assert changed(dry.data) == changed(real.data) == expected
    assert changed(env.call("state.apply", "cjdns.dom0").data) == {}


def test_uninstall_gives_each_client_the_netvm_it_had(tmp_path):
    env, db, qd = lab(tmp_path)
    qd.run_tool("/usr/bin/qvm-create mail --class=AppVM --label=green --property=netvm=sys-firewall")
    clients = pillar(clients=["personal", "vault", "work", "mail"])
    first = env.call("state.apply", "cjdns.dom0", clients)
    assert first.rc == 0, first.stdout[-2000:]
    assert changed(first.data)["cjdns-dom0-clients"]["vault"] == {
        "recorded_netvm": {"old": None, "new": "none"}, "netvm": {"old": None, "new": "sys-cjdns"}}
    feats = qubes_db.features(db, "sys-cjdns")
    assert {k: v for k, v in feats.items() if k.startswith("cjdns-formula-client.")} == {
        "cjdns-formula-client.personal": "default", "cjdns-formula-client.vault": "none",
        "cjdns-formula-client.work": "default", "cjdns-formula-client.mail": "sys-firewall"}
    qd.set("work", "netvm", "sys-vpn")                             # the user moved work meanwhile
    before = db_digest(db)
    dry = env.call("state.apply", "cjdns.absent", clients, "test=True")
    assert dry.rc == 0 and db_digest(db) == before
    real = env.call("state.apply", "cjdns.absent", clients)
    assert real.rc == 0, real.stdout[-2000:]
    assert changed(real.data) == changed(dry.data)
    restored = changed(real.data)["cjdns-absent-clients-restored"]
    assert restored["personal"]["netvm"] == {"old": "sys-cjdns", "new": "*default*"}
    assert restored["work"] == {"recorded_netvm": {"old": "default", "new": None}}
    assert qubes_db.is_default(db, "personal", "netvm")
    assert qubes_db.pref(db, "vault", "netvm") is None               # no network again
    assert qubes_db.pref(db, "work", "netvm") == "sys-vpn"           # left alone
    assert qubes_db.pref(db, "mail", "netvm") == "sys-firewall" and not qubes_db.is_default(db, "mail", "netvm")
    assert "work: uses sys-vpn now, not sys-cjdns; left alone" in result_of(real, "cjdns-absent-clients-restored")["comment"]
    assert changed(env.call("state.apply", "cjdns.absent", clients).data) == {}


def test_a_client_dropped_from_pillar_gets_its_netvm_back(tmp_path):
    env, db, _qd = lab(tmp_path)
    assert env.call("state.apply", "cjdns.dom0", pillar(clients=["personal", "vault"])).rc == 0
    assert qubes_db.pref(db, "vault", "netvm") == "sys-cjdns"
    before = db_digest(db)
    dry = env.call("state.apply", "cjdns.dom0", pillar(clients=["personal"]), "test=True")
    assert db_digest(db) == before
    real = env.call("state.apply", "cjdns.dom0", pillar(clients=["personal"]))
    assert changed(real.data) == changed(dry.data) == {"cjdns-dom0-clients": {"vault": {
        "netvm": {"old": "sys-cjdns", "new": None}, "recorded_netvm": {"old": "none", "new": None}}}}
    assert qubes_db.pref(db, "vault", "netvm") is None
    assert qubes_db.pref(db, "personal", "netvm") == "sys-cjdns"
    assert changed(env.call("state.apply", "cjdns.dom0", pillar(clients=["personal"])).data) == {}


def test_a_deleted_client_does_not_stop_the_uninstall_and_wipe_shows_each_removal(tmp_path):
    env, db, qd = lab(tmp_path)
    clients = pillar(clients=["personal", "work"], wipe_identity=True)
    assert env.call("state.apply", "cjdns.dom0", clients).rc == 0
    qd.run_tool("/usr/bin/qvm-remove work")
    before = db_digest(db)
    dry = env.call("state.apply", "cjdns.absent", clients, "test=True")
    assert dry.rc == 0 and db_digest(db) == before, dry.stdout[-2000:]
    real = env.call("state.apply", "cjdns.absent", clients)
    assert real.rc == 0, real.stdout[-2000:]
    assert changed(real.data) == changed(dry.data)
    assert changed(real.data)["cjdns-absent-proxy-removed"] == {"removed": "sys-cjdns"}
    assert changed(real.data)["cjdns-absent-template-removed"] == {"removed": "cjdns-gw"}
    assert result_of(real, "cjdns-absent-proxy-removed")["comment"] == "removed sys-cjdns"
    assert "work: no longer exists; skipped" in result_of(real, "cjdns-absent-clients-restored")["comment"]
    assert not qubes_db.exists(db, "sys-cjdns") and not qubes_db.exists(db, "cjdns-gw")
    assert qubes_db.is_default(db, "personal", "netvm")


def test_wipe_is_refused_while_a_client_would_stay_on_sys_cjdns(tmp_path):
    env, db, qd = lab(tmp_path, applied=True)
    qd.set("vault", "netvm", "sys-cjdns")          # by hand: the formula never recorded its netvm
    message = assert_refused(env, db, "cjdns.absent", [pillar(clients=["personal", "vault"], wipe_identity=True)],
                             "cjdns-absent-qubes-owned", "cjdns.wipe_identity: sys-cjdns cannot be removed: it "
                             "would still be the netvm of vault. Give them another netvm first")
    assert "vault: uses sys-cjdns, but its earlier netvm was never recorded" in message
    assert qubes_db.exists(db, "sys-cjdns") and qubes_db.pref(db, "personal", "netvm") == "sys-cjdns"


def test_a_running_client_waits_until_sys_cjdns_runs(tmp_path):
    """qubes-core-admin refuses a running qube on a halted netvm, and sys-cjdns is made halted."""
    env, db, qd = lab(tmp_path)
    with qubes_db.transaction(db) as raw:
        raw["domains"]["personal"]["power"] = "Running"
    for _ in range(2):                              # deferred, not an error; and nothing to repeat
        run = env.call("state.apply", "cjdns.dom0")
        assert run.rc == 0, run.stdout[-2000:]
        assert "cjdns-dom0-clients" not in changed(run.data)
        assert ("personal: running, and sys-cjdns is not (Qubes cannot attach a running qube to a halted netvm): "
                "it keeps netvm *default* for now") in result_of(run, "cjdns-dom0-clients")["comment"]
    assert qubes_db.is_default(db, "personal", "netvm")
    qd.run_tool("/usr/bin/qvm-start sys-cjdns")
    dry = env.call("state.apply", "cjdns.dom0", "test=True")
    real = env.call("state.apply", "cjdns.dom0")
    assert changed(real.data) == changed(dry.data) == {"cjdns-dom0-clients": {"personal": {
        "recorded_netvm": {"old": None, "new": "default"}, "netvm": {"old": "*default*", "new": "sys-cjdns"}}}}
    assert qubes_db.pref(db, "personal", "netvm") == "sys-cjdns"


def test_a_standalone_client_is_accepted_and_moved(tmp_path):
    env, db, qd = lab(tmp_path)
    qd.run_tool("/usr/bin/qvm-create solo --class=StandaloneVM --template=debian-13-xfce --label=purple")
    run = env.call("state.apply", "cjdns.dom0", pillar(clients=["personal", "solo"]))
    assert run.rc == 0, run.stdout[-2000:]
    assert "clients checked: personal, solo" in result_of(run, "cjdns-dom0-qubes-owned")["comment"]
    assert qubes_db.pref(db, "solo", "netvm") == "sys-cjdns"
