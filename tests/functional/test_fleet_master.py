"""The fleet compiler on a real master config: the runner through `salt-run` (modules synced
with saltutil.sync_all, as a user installs them), the ext_pillar through Salt's own Pillar
class (what the master runs for each minion), its errors as pillar `_errors` that stop a
state.apply, and a failing wait_card failing an orchestrate `salt.runner` state.

The tests are numbered: they share one master dir and run in order (keygen first)."""

import json
import subprocess
import sys

import pytest
import salt.utils.mine

from support.fleet_compiler import SALT_RUN, MasterDir, load_compiler, sample_cards
from support.saltenv import REPO, SaltEnv

LAPTOP_NEIGHBOURS = ["home", "office", "pi", "vps1", "vps2"]


@pytest.fixture(scope="module")
def master(tmp_path_factory):
    lab = MasterDir(tmp_path_factory.mktemp("fleet-master"))
    synced = lab.run("saltutil.sync_all")
    assert synced.rc == 0 and "pillar.cjdns_fleet" in synced.data["pillar"], synced.stderr
    assert "runners.cjdns_fleet" in synced.data["runners"]
    cards = sample_cards()
    for minion, card in cards.items():
        if minion == "pi":
            continue  # pi has not published its card yet
        # vps2 sent its card with allow_tgt, as the fleet's mine_functions say: stored wrapped
        entry = (salt.utils.mine.wrap_acl_structure(card, allow_tgt=["vps1"], allow_tgt_type="list")
                 if minion == "vps2" else card)
        lab.store_mine(minion, {"cjdns.card": entry, "test.ping": True})
    return lab


def test_1_keygen_makes_the_key_and_refuses_to_overwrite_it(master):
    made = master.run("cjdns_fleet.keygen")
    assert (made.rc, made.data) == (0, {"key_file": str(master.key_file), "created": True})
    key = master.key_file.read_bytes()
    assert len(key) == 32 and master.key_file.stat().st_mode & 0o777 == 0o600
    again = master.run("cjdns_fleet.keygen")
    assert again.rc == 1 and again.data["Error"].startswith(f"key_file {master.key_file}: exists already")
    assert master.key_file.read_bytes() == key
    for result in (made, again):
        assert key.hex() not in result.stdout + result.stderr


def test_2_render_is_what_the_masters_pillar_gives_the_minion(master):
    rendered = master.run("cjdns_fleet.render", "laptop")
    assert rendered.rc == 0, rendered.stderr
    compiled = master.pillar("laptop")
    assert "_errors" not in compiled
    assert rendered.data == compiled
    cf = load_compiler()
    fleet = cf.load_fleet(str(master.fleet_file))
    key = master.key_file.read_bytes()
    assert rendered.data == cf.member_pillar(cf.config_of(str(master.fleet_file), str(master.key_file)),
                                             "laptop", master.fetch_mine)
    fleet_part = rendered.data["cjdns"]["fleet"]
    assert fleet_part["neighbours"] == ["home", "office", "vps1", "vps2"] and fleet_part["pending"] == ["pi"]
    peer = rendered.data["cjdns"]["node"]["peers"]["192.0.2.2:47300"]  # vps2's wrapped card was read
    assert peer["password"] == cf.derive_password(key, "home", "vps2", "laptop", fleet.epoch, 0)


def test_3_a_non_member_gets_nothing(master):
    assert master.pillar("stranger") == {}


def test_3_the_fleet_file_is_parsed_once_across_the_masters_pillars(master):
    """Salt's loader runs the module again for each Pillar; the parsed fleet must survive."""
    master.pillar("home")
    kept = sys.modules["cjdns_fleet_process_cache"].fleets[str(master.fleet_file)]
    master.pillar("vps1")
    master.pillar("laptop")
    assert sys.modules["cjdns_fleet_process_cache"].fleets[str(master.fleet_file)] is kept


def test_4_neighbours(master):
    found = master.run("cjdns_fleet.neighbours", "laptop")
    assert (found.rc, found.data) == (0, LAPTOP_NEIGHBOURS)


def test_4_reachable_neighbours_are_accepted_minions_only(master):
    """The orchestration applies only neighbours this master has accepted (none here)."""
    found = master.run("cjdns_fleet.neighbours", "laptop", "reachable=True")
    assert (found.rc, found.data) == (0, [])


def test_5_wait_card_waits_for_the_card_announced(master):
    """An older valid card of the member is not the one its event announced."""
    card = sample_cards()["vps1"]
    cf = load_compiler()
    assert master.run("cjdns_fleet.wait_card", "vps1", f"fingerprint={cf.card_fingerprint(card)}").data is True
    stale = master.run("cjdns_fleet.wait_card", "vps1", "timeout=1", "fingerprint=" + "ab" * 32)
    assert stale.rc == 1 and "the card stored is not the one announced" in stale.data["Error"]
    wrong = master.run("cjdns_fleet.wait_card", "vps1", "timeout=1", "fingerprint=" + "0" * 64)  # YAML: a number
    assert wrong.rc == 1 and wrong.data["Error"].startswith("fingerprint: must be")


def test_5_wait_card_returns_once_the_card_arrives(master):
    waiting = subprocess.Popen([str(SALT_RUN), "-c", str(master.conf), "--out=json", "-l", "debug",
                                "cjdns_fleet.wait_card", "pi", "timeout=120", "interval=0.2"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in waiting.stderr:
        lines.append(line)
        if "cjdns_fleet.wait_card: no valid card of pi yet" in line:
            break
    else:
        pytest.fail("wait_card never polled:\n" + "".join(lines[-30:]))
    master.store_mine("pi", {"cjdns.card": sample_cards()["pi"]})
    out, _ = waiting.communicate(timeout=120)
    assert (waiting.returncode, json.loads(out)) == (0, True)


def test_6_wait_card_says_why_a_card_is_refused(master):
    master.store_mine("phone", {"cjdns.card": {**sample_cards()["phone"], "id": "laptop"}})
    refused = master.run("cjdns_fleet.wait_card", "phone", "timeout=1")
    assert refused.rc == 1 and refused.data["Error"] == (
        "phone: no valid card after 1 s (its card is refused: id: 'laptop' is not the minion it came from ('phone'))")
    master.store_mine("phone", {"cjdns.card": sample_cards()["phone"]})


def test_7_a_failing_wait_card_fails_its_orchestrate_state(master):
    (master.srv / "orch").mkdir(exist_ok=True)
    (master.srv / "orch" / "fleet.sls").write_text(
        "wait-for-vps1:\n  salt.runner:\n    - name: cjdns_fleet.wait_card\n    - minion: vps1\n    - timeout: 5\n"
        "wait-for-spare:\n  salt.runner:\n    - name: cjdns_fleet.wait_card\n    - minion: spare\n"
        "    - timeout: 1\n")
    run = master.run("state.orchestrate", "orch.fleet")
    states = {state["__id__"]: state for state in next(iter(run.data["data"].values())).values()}
    assert states["wait-for-vps1"]["result"] is True and states["wait-for-vps1"]["changes"] == {"return": True}
    assert states["wait-for-spare"]["result"] is False
    assert states["wait-for-spare"]["changes"]["return"]["Error"] == (
        "spare: no valid card after 1 s (no cjdns.card in its mine data)")
    assert run.rc != 0


def test_8_forget_removes_only_the_card(master):
    card = {**sample_cards()["office"], "id": "oldbox"}
    master.store_mine("oldbox", {"cjdns.card": card, "test.ping": True})
    forgot = master.run("cjdns_fleet.forget", "oldbox")
    assert (forgot.rc, forgot.data) == (0, {
        "minion": "oldbox", "comment": "removed cjdns.card from oldbox's mine data",
        "removed": {"cjdns.card": {"id": "oldbox", "publicKey": card["publicKey"], "ipv6": card["ipv6"]}}})
    assert master.fetch_mine("oldbox") == {"test.ping": True}


def test_9_fleet_and_key_file_errors_are_pillar_errors_on_the_master(master):
    good, key = master.fleet_file.read_text(), master.key_file.read_bytes()
    master.fleet_file.write_text(good.replace("- hubs: {hubs: [vps1, vps2]", "- hubs: {hubs: [vps1, vps9]"))
    try:
        bad_fleet = master.pillar("laptop")
    finally:
        master.fleet_file.write_text(good)
    master.key_file.chmod(0o640)
    try:
        bad_key = master.pillar("laptop")
    finally:
        master.key_file.chmod(0o600)
    assert bad_fleet == {"_errors": [
        f"Failed to load ext_pillar cjdns_fleet: fleet_file {master.fleet_file}: "
        "topology[1].hubs.hubs[1]: 'vps9' is not a member"]}
    assert bad_key == {"_errors": [
        f"Failed to load ext_pillar cjdns_fleet: key_file {master.key_file}: "
        "has mode 0640, which gives group or others access (chmod 600)"]}
    assert key.hex() not in str(bad_key) and "_errors" not in master.pillar("laptop")


def test_10_the_fleet_key_is_in_no_log_or_cache_file(master):
    key = master.key_file.read_bytes()
    spellings = [key.hex(), repr(key)[2:-1], key.decode("latin-1")]
    for path in master.root.rglob("*"):
        if path.is_file():
            data = path.read_bytes().decode("latin-1")
            assert not any(spelling in data for spelling in spellings), path


def test_an_ext_pillar_error_reaches_the_minion_and_state_apply_refuses(tmp_path):
    """salt-call compiles its pillar with the same Pillar class the master runs for it."""
    lab = MasterDir(tmp_path / "master")
    lab.fleet_file.write_text(lab.fleet_file.read_text().replace("laptop: {nat: true}", "laptop: {nat: maybe}"))
    reason = f"fleet_file {lab.fleet_file}: members.laptop.nat: 'maybe' must be true or false"
    ext = tmp_path / "ext"
    ext.mkdir()
    (ext / "_pillar").symlink_to(REPO / "_pillar")
    # pillar_mask_output: Salt 3008 shows pillar.items as ********** otherwise (3006/3007 ignore it)
    minion = SaltEnv(tmp_path / "minion", extra_module_dirs=[ext], minion_id="laptop",
                     opts={"ext_pillar": [{"cjdns_fleet": {"fleet_file": str(lab.fleet_file),
                                                           "key_file": str(lab.key_file)}}],
                           "pillar_mask_output": False})
    items = minion.call("pillar.items")
    assert items.data["_errors"] == [f"Failed to load ext_pillar cjdns_fleet: {reason}"]
    applied = minion.call("state.apply", "cjdns.pillar")
    assert applied.rc != 0
    assert "Pillar failed to render" in applied.stdout + applied.stderr and reason in applied.stdout


def test_a_members_node_pillar_passes_the_nodes_pillar_check(tmp_path):
    """cjdns:node from the fleet is what the node's own check (cjdns.pillar) accepts from a
    hand-written pillar: home has peers and authorized passwords both. cjdns:fleet is left
    out: the node side defines that key."""
    cf = load_compiler()
    fleet = cf.parse_fleet((REPO / "tests/data/fleet/fleet.yaml").read_text())
    mines = {minion: {"cjdns.card": card} for minion, card in sample_cards().items()}
    cards = {other: cf.lookup_card(lambda m: mines.get(m, {}), other, fleet.compromised_keys)
             for other in cf.member_edges(fleet, "home").edges}
    pillar = cf.render(fleet, bytes(32), "home", cards)
    assert pillar["cjdns"]["node"]["peers"] and pillar["cjdns"]["node"]["authorized_passwords"]
    env = SaltEnv(tmp_path, minion_id="home",
                  pillar={"cjdns": {"node": pillar["cjdns"]["node"]}, "mine_functions": pillar["mine_functions"]})
    result = env.call("state.apply", "cjdns.pillar", "test=True")
    assert [(state["result"], state["comment"]) for state in result.data.values()] == [(True, "pillar cjdns is valid")]
