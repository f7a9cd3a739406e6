"""cjdns.dom0 on an emulated dom0 (the qvm test double), with real Salt (salt-call --local)."""

import hashlib
import json
import sys

import pytest
import yaml

from support.saltenv import REPO, TESTS, SaltEnv, changed, state_results

sys.path.insert(0, str(TESTS / "emulation" / "qubes"))
import qubes_db  # noqa: E402

PILLAR = yaml.safe_load((REPO / "pillar.example").read_text())


def dom0_env(tmp_path, version="4.2", pillar=None, installed=("debian-13-xfce", "debian-13-minimal")):
    db = tmp_path / "qubes.json"
    qubes_db.new_db(str(db), version=version, installed=installed)
    qubes_db.Qubesd(str(db)).run_tool("/usr/bin/qvm-create personal --class=AppVM --label=yellow")
    pillar = pillar or json.loads(json.dumps(PILLAR))
    pillar.setdefault("cjdns", {}).setdefault("qubes", {})["clients"] = ["personal"]
    env = SaltEnv(tmp_path / "salt", pillar=pillar, minion_id="dom0",
                  extra_module_dirs=[TESTS / "emulation" / "qubes"],
                  opts={"qvm_emulation_db": str(db), "qvm_emulation_version": version})
    return env, str(db)


def db_digest(db: str) -> str:
    return hashlib.sha256(open(db, "rb").read()).hexdigest()


@pytest.mark.parametrize("version", ["4.2", "4.3"])
def test_first_apply_makes_the_manuals_qubes_and_second_changes_nothing(tmp_path, version):
    env, db = dom0_env(tmp_path, version)
    first = env.call("state.apply", "cjdns.dom0")
    assert first.rc == 0, first.stdout + first.stderr
    assert all(r["result"] is True for r in state_results(first.data))
    assert qubes_db.exists(db, "cjdns-gw") and qubes_db.exists(db, "sys-cjdns")
    assert qubes_db.pref(db, "sys-cjdns", "template") == "cjdns-gw"
    for prop, value in {"netvm": "sys-firewall", "provides_network": True, "memory": 400, "maxmem": 800,
                        "vcpus": 1, "autostart": True, "include_in_backups": True, "label": "orange"}.items():
        assert qubes_db.pref(db, "sys-cjdns", prop) == value, prop
    assert qubes_db.features(db, "sys-cjdns")["ipv6"] == "1"
    assert qubes_db.services(db, "sys-cjdns") == {"cjdns": "1"} or qubes_db.features(db, "sys-cjdns")["service.cjdns"] == "1"
    assert qubes_db.pref(db, "personal", "netvm") == "sys-cjdns"
    assert "service.cjdns" not in qubes_db.features(db, "cjdns-gw")
    second = env.call("state.apply", "cjdns.dom0")
    assert second.rc == 0 and changed(second.data) == {}


@pytest.mark.parametrize("version", ["4.2", "4.3"])
def test_dry_run_writes_nothing_and_predicts_the_real_run(tmp_path, version):
    env, db = dom0_env(tmp_path, version)
    before, journal = db_digest(db), qubes_db.journal(db)
    dry = env.call("state.apply", "cjdns.dom0", "test=True")
    assert dry.rc == 0, dry.stdout + dry.stderr
    assert db_digest(db) == before and qubes_db.journal(db) == journal
    predicted = {r["__id__"]: r for r in state_results(dry.data) if r["result"] is None}
    real = env.call("state.apply", "cjdns.dom0")
    real_changed = changed(real.data)
    # Qubes' own create/clone report no changes; every state we predict as changing runs.
    ours = {i: r["changes"] for i, r in predicted.items() if r["changes"]}
    for state_id, changes in ours.items():
        assert real_changed[state_id] == changes, state_id
    assert set(real_changed) <= set(predicted)


def test_dry_run_after_apply_predicts_no_change(tmp_path):
    env, db = dom0_env(tmp_path)
    assert env.call("state.apply", "cjdns.dom0").rc == 0
    before = db_digest(db)
    dry = env.call("state.apply", "cjdns.dom0", "test=True")
    assert dry.rc == 0 and changed(dry.data) == {} and db_digest(db) == before
    # Qubes' qvm states turn every passing result into None under test=True (upstream quirk);
    # ours say True when nothing would change.
    for r in state_results(dry.data):
        assert r["result"] is (None if r["__id__"] in ("cjdns-dom0-template-cloned", "cjdns-dom0-proxy-present") else True), r


def test_changed_pillar_is_predicted_exactly(tmp_path):
    env, db = dom0_env(tmp_path)
    assert env.call("state.apply", "cjdns.dom0").rc == 0
    override = json.dumps({"cjdns": {"qubes": {"proxy_memory": 500, "proxy_autostart": False, "clients": ["personal"]}}})
    dry = env.call("state.apply", "cjdns.dom0", "test=True", f"pillar={override}")
    expected = {"cjdns-dom0-proxy-settings": {"qvm.prefs": {"qvm.create": {
        "memory": {"old": 400, "new": 500}, "autostart": {"old": True, "new": False}}}}}
    assert changed(dry.data) == expected
    real = env.call("state.apply", "cjdns.dom0", f"pillar={override}")
    assert changed(real.data) == expected
    assert qubes_db.pref(db, "sys-cjdns", "memory") == 500


@pytest.mark.parametrize("qubes, reason", [
    ({"proxy_label": "pink"}, "cjdns.qubes.proxy_label: 'pink' is not a Qubes label"),
    ({"proxy_netvm": "sys-nosuch"}, "cjdns.qubes.proxy_netvm: qube 'sys-nosuch' does not exist"),
    ({"proxy": "sys cjdns"}, "cjdns.qubes.proxy: 'sys cjdns' is not a valid qube name"),
    ({"proxy_lable": "red"}, "cjdns.qubes.proxy_lable: unknown key (did you mean proxy_label?)"),
    ({"proxy_memory": "400"}, "cjdns.qubes.proxy_memory: '400' must be an integer"),
    ({"clients": ["nosuch"]}, "cjdns.qubes.clients: qube 'nosuch' does not exist"),
])
def test_bad_pillar_fails_before_anything_changes(tmp_path, qubes, reason):
    env, db = dom0_env(tmp_path)
    before, journal = db_digest(db), qubes_db.journal(db)
    override = json.dumps({"cjdns": {"qubes": qubes}})
    result = env.call("state.apply", "cjdns.dom0", f"pillar={override}")
    assert result.rc == 2
    # Pillar values are checked by cjdns-pillar-valid; what exists in dom0 by cjdns-dom0-qubes-owned.
    check = next(r for r in state_results(result.data) if r["__id__"] in ("cjdns-pillar-valid", "cjdns-dom0-qubes-owned")
                 and r["result"] is False and "requisite" not in r["comment"])
    assert reason in check["comment"], check["comment"]
    assert all(r["result"] is False for r in state_results(result.data) if r["__id__"] != "cjdns-pillar-valid")
    assert db_digest(db) == before and qubes_db.journal(db) == journal


def test_missing_source_template_is_installed_first(tmp_path):
    env, db = dom0_env(tmp_path, installed=("debian-13-xfce",))
    result = env.call("state.apply", "cjdns.dom0")
    assert result.rc == 0, result.stdout
    assert qubes_db.exists(db, "debian-13-minimal") and qubes_db.exists(db, "cjdns-gw")
    assert "cjdns-dom0-source-template-installed" in changed(result.data)


def test_template_and_proxy_sls_are_a_no_op_in_dom0(tmp_path):
    env, db = dom0_env(tmp_path)
    before = db_digest(db)
    for sls in ("cjdns.template", "cjdns.proxy"):
        result = env.call("state.apply", sls)
        assert result.rc == 0, result.stdout
        results = state_results(result.data)
        assert results and all(r["result"] is True and "not in dom0" in r["comment"] and not r["changes"]
                               for r in results)
    assert db_digest(db) == before


def test_absent_disconnects_and_keeps_sys_cjdns_unless_wiping(tmp_path):
    env, db = dom0_env(tmp_path)
    assert env.call("state.apply", "cjdns.dom0").rc == 0
    before = db_digest(db)
    dry = env.call("state.apply", "cjdns.absent", "test=True")
    assert dry.rc == 0 and db_digest(db) == before
    real = env.call("state.apply", "cjdns.absent")
    assert real.rc == 0, real.stdout
    ours = {i for i, c in changed(dry.data).items()}
    assert {i: c for i, c in changed(real.data).items() if i in ours} == changed(dry.data)
    assert qubes_db.exists(db, "sys-cjdns")
    assert qubes_db.services(db, "sys-cjdns").get("cjdns") in ("", None)
    assert qubes_db.pref(db, "sys-cjdns", "autostart") is False
    assert qubes_db.is_default(db, "personal", "netvm")
    assert changed(env.call("state.apply", "cjdns.absent").data) == {}
    wipe = json.dumps({"cjdns": {"wipe_identity": True, "qubes": {"clients": ["personal"]}}})
    gone = env.call("state.apply", "cjdns.absent", f"pillar={wipe}")
    assert gone.rc == 0, gone.stdout
    assert not qubes_db.exists(db, "sys-cjdns") and not qubes_db.exists(db, "cjdns-gw")
