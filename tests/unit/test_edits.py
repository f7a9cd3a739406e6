"""Comment-preserving edits of the genconf files: only the managed spans change."""

import difflib
import re

import pytest

from support.saltenv import VECTORS, load_module

cj = load_module()
CONNECT_TO_V4 = ("interfaces", "UDPInterface", 0, "connectTo")
KEYS = [
    "0ccvtu9w6dd9qus12pqzsc37rp16p8vcptzx75wkm64406y6g9k0.k",
    "91uwd02p004x7z036y7ml0svcrttm554bbyvguxv6wrdj0wfvvv0.k",
    "qnljywctn37rslqshk4krgxcxh46zrwl4dx7hzmkz45v1lv2fbg0.k",
]
PEERS = {
    "192.0.2.10:4001": {"password": "pw-one", "publicKey": KEYS[0]},
    "192.0.2.11:4002": {"password": "pw-two", "publicKey": KEYS[1], "login": "me", "peerName": "bob"},
    "[2001:db8::3]:4003": {"password": "pw-three", "publicKey": KEYS[2], "peerName": "carol"},
}


def genconf(n="1"):
    return (VECTORS / f"genconf/genconf-{n}.conf").read_text()


def changed_lines(old: str, new: str) -> list[int]:
    """Line numbers (1-based, in old) that the diff touches."""
    lines = []
    for tag, i1, i2, _, _ in difflib.SequenceMatcher(a=old.splitlines(), b=new.splitlines()).get_opcodes():
        if tag != "equal":
            lines.extend(range(i1 + 1, max(i2, i1 + 1) + 1))
    return lines


def span_lines(text: str, path) -> range:
    node = cj._lookup(cj.parse(text).root, path)
    return range(text.count("\n", 0, node.start) + 1, text.count("\n", 0, node.end) + 2)


def comments(text: str) -> list[str]:
    return re.findall(r"//[^\n]*|/\*.*?\*/", text, re.S)


@pytest.mark.parametrize("n", ["1", "2", "3", "seed"])
def test_merge_three_peers_then_remove_one_changes_only_connect_to(n):
    original = genconf(n)
    merged = cj.merge_peers(original, PEERS)
    assert merged.added == sorted(PEERS)
    pruned = cj.merge_peers(merged.text, {k: v for k, v in PEERS.items() if k != "192.0.2.11:4002"},
                            prune=("192.0.2.11:4002",))
    assert pruned.removed == ["192.0.2.11:4002"]
    text = pruned.text
    allowed = set(span_lines(original, CONNECT_TO_V4)) | set(
        span_lines(original, ("interfaces", "UDPInterface", 1, "connectTo")))
    assert set(changed_lines(original, text)) <= allowed
    assert cj.parse(text).strict
    assert comments(text) == comments(original)
    data = cj.loads(text)
    assert set(data["interfaces"]["UDPInterface"][0]["connectTo"]) == {"192.0.2.10:4001"}
    assert set(data["interfaces"]["UDPInterface"][1]["connectTo"]) == {"[2001:db8::3]:4003"}
    # Everything outside connectTo is as it was.
    data["interfaces"]["UDPInterface"][0]["connectTo"] = {}
    data["interfaces"]["UDPInterface"][1]["connectTo"] = {}
    assert data == cj.loads(original)


def test_adding_then_removing_every_peer_restores_the_original_bytes():
    original = genconf()
    merged = cj.merge_peers(original, PEERS).text
    restored = cj.merge_peers(merged, {}, exclusive=True)
    assert restored.removed == sorted(PEERS)
    assert restored.text == original


def test_new_peers_are_indented_like_their_siblings():
    text = cj.merge_peers(genconf(), {"192.0.2.10:4001": PEERS["192.0.2.10:4001"]}).text
    line = next(l for l in text.splitlines() if "192.0.2.10:4001" in l)
    comment = next(l for l in text.splitlines() if "Ask somebody who is already connected" in l)
    assert len(line) - len(line.lstrip()) == len(comment) - len(comment.lstrip()) == 20
    again = cj.merge_peers(text, {"192.0.2.11:4002": PEERS["192.0.2.11:4002"]}).text
    second = next(l for l in again.splitlines() if "192.0.2.11:4002" in l)
    assert second.startswith(" " * 20 + '"')


def test_an_edit_that_changes_nothing_returns_identical_bytes():
    original = genconf()
    merged = cj.merge_peers(original, PEERS).text
    again = cj.merge_peers(merged, PEERS)
    assert again.text == merged and not (again.added or again.updated or again.removed)
    assert cj.set_path(original, ("admin", "password"), "NONE") == original
    assert cj.edit(original, ("router",), {}) == original


def test_hand_added_peers_and_their_comments_survive_a_merge():
    hand = genconf().replace(
        "                    // Ask somebody who is already connected.\n",
        "                    // Ask somebody who is already connected.\n"
        "                    // my friend's node, added by hand\n"
        '                    "198.51.100.7:9999": { "password": "hand", "publicKey": "%s" } // keep me\n' % KEYS[2],
    )
    result = cj.merge_peers(hand, {"192.0.2.10:4001": PEERS["192.0.2.10:4001"]})
    assert "// my friend's node, added by hand" in result.text
    assert '"198.51.100.7:9999": { "password": "hand", "publicKey": "%s" }, // keep me' % KEYS[2] in result.text
    assert set(cj.loads(result.text)["interfaces"]["UDPInterface"][0]["connectTo"]) == {
        "198.51.100.7:9999", "192.0.2.10:4001"}
    exclusive = cj.merge_peers(result.text, {"192.0.2.10:4001": PEERS["192.0.2.10:4001"]}, exclusive=True)
    assert exclusive.removed == ["198.51.100.7:9999"]
    assert "// my friend's node, added by hand" in exclusive.text


def test_updating_a_peer_rewrites_only_its_value():
    merged = cj.merge_peers(genconf(), PEERS).text
    new = dict(PEERS, **{"192.0.2.10:4001": {"password": "rotated", "publicKey": KEYS[0]}})
    result = cj.merge_peers(merged, new)
    assert result.updated == ["192.0.2.10:4001"] and not result.added
    assert len(changed_lines(merged, result.text)) == 1


def test_set_path_edits_admin_password_in_place_and_keeps_its_comments():
    original = genconf()
    text = cj.set_path(original, ("admin", "password"), "s3cret-admin")
    assert changed_lines(original, text) == [62]
    assert comments(text) == comments(original)


def test_set_path_creates_missing_keys_with_sibling_indentation():
    original = genconf()
    text = cj.set_path(original, ("router", "interface", "tunDevice"), "tun0")
    assert '            "type": "TUNInterface",\n            "tunDevice": "tun0"\n' in text
    text = cj.set_path(text, ("logging", "logTo"), "stdout")
    assert cj.loads(text)["logging"] == {"logTo": "stdout"}
    text = cj.set_path(text, ("router", "publicPeer", "id"), "x")
    assert cj.loads(text)["router"]["publicPeer"] == {"id": "x"}
    assert comments(text) == comments(original)


def test_removing_a_key_takes_its_line_and_comma_only():
    original = genconf()
    text = cj.delete_path(original, ("router", "supernodes"))
    assert "supernodes" not in cj.loads(text)["router"] and cj.parse(text).strict
    assert '"supernodes": [' not in text and "// supernodes, if none are specified" in text
    assert cj.delete_path(original, ("router", "dnsSeeds")) == original


def test_list_items_can_be_appended_replaced_and_removed():
    original = genconf()
    text = cj.edit(original, ("authorizedPasswords",), {None: [{"password": "alicepw", "user": "alice"}]})
    assert [e["user"] for e in cj.loads(text)["authorizedPasswords"]] == ["default-login", "alice"]
    text = cj.edit(text, ("authorizedPasswords",), {1: {"password": "alice2", "user": "alice"}})
    assert cj.loads(text)["authorizedPasswords"][1]["password"] == "alice2"
    text = cj.edit(text, ("authorizedPasswords",), {1: cj.DELETE})
    assert text == original


def test_empty_inline_object_grows_and_shrinks_back():
    text = '{\n    "c": {},\n    "version": 2\n}\n'
    grown = cj.edit(text, ("c",), {"k": 1})
    assert grown == '{\n    "c": {\n        "k": 1\n    },\n    "version": 2\n}\n'
    assert cj.edit(grown, ("c",), {"k": cj.DELETE}) == text


def test_one_line_objects_stay_valid():
    text = '{ "c": { "a": 1, "b": 2 }, "version": 2 }'
    for changes in ({"z": 3}, {"a": cj.DELETE}, {"b": cj.DELETE}, {"a": cj.DELETE, "b": cj.DELETE}):
        result = cj.edit(text, ("c",), dict(changes))
        expected = {**{"a": 1, "b": 2}, **{k: v for k, v in changes.items() if v is not cj.DELETE}}
        for k, v in changes.items():
            if v is cj.DELETE:
                expected.pop(k)
        assert cj.loads(result)["c"] == expected


def test_a_lenient_only_file_is_not_edited():
    with pytest.raises(cj.ConfigSyntaxError, match="no \"version\": 2") as error:
        cj.set_path('{ "a": 1, }', ("a",), 2)
    assert (error.value.line, error.value.column) == (1, 9)


def test_strings_we_write_use_only_hex_escapes():
    text = cj.set_path(genconf(), ("admin", "password"), 'we"ird\\pass é')
    assert '"we\\x22ird\\x5cpass \\xc3\\xa9"' in text
    assert cj.loads(text)["admin"]["password"] == 'we"ird\\pass é'
