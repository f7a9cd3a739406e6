"""Keys and addresses against the vectors made by the real cjdns v20.7 tools."""

import json

import pytest

from support.saltenv import VECTORS, load_module

cj = load_module()
KEYS = json.loads((VECTORS / "keys.json").read_text())
INVALID = json.loads((VECTORS / "invalid_public_keys.json").read_text())


def test_all_48_key_vectors_are_present():
    assert len(KEYS["keys"]) == 48


@pytest.mark.parametrize("vector", KEYS["keys"], ids=lambda v: v["ipv6"])
def test_private_key_gives_the_tools_public_key_and_address(vector):
    assert cj.public_key(vector["private_key"]) == vector["public_key"]
    assert cj.address(vector["public_key"]) == vector["ipv6"]
    assert cj.parse_public_key(vector["public_key"]).hex() == vector["public_key_bytes_hex"]
    assert cj.base32_encode(bytes.fromhex(vector["public_key_bytes_hex"])) + ".k" == vector["public_key"]
    assert vector["makekeys_line"] == f"{vector['private_key']} {vector['ipv6']} {vector['public_key']}"


@pytest.mark.parametrize("entry", KEYS["non_fc"]["entries"], ids=lambda e: e["ipv6"])
def test_private_key_with_non_fc_address_is_refused(entry):
    with pytest.raises(cj.KeyFormatError, match="not in fc00::/8") as error:
        cj.public_key(entry["private_key"])
    assert error.value.code == "INVALID"
    with pytest.raises(cj.KeyFormatError) as error:
        cj.address(entry["public_key"])
    assert error.value.code == "INVALID"


@pytest.mark.parametrize("entry", KEYS["equivalent_private_keys"]["entries"], ids=lambda e: e["ipv6"])
def test_private_keys_equal_after_clamping_give_the_same_key(entry):
    assert cj.public_key(entry["private_key"]) == entry["public_key"]
    assert cj.public_key(entry["same_as_private_key"]) == entry["public_key"]


def test_upper_case_private_key_is_read_like_cjdns_does():
    variant = KEYS["privatetopublic_input_variants"]["entries"][0]
    assert cj.public_key(variant["stdin"].strip()) == KEYS["keys"][0]["public_key"]


@pytest.mark.parametrize("bad", ["", "5eb1", "zz" * 32, KEYS["keys"][0]["private_key"] + "deadbeef", None, 42])
def test_malformed_private_key_is_refused_with_a_reason(bad):
    with pytest.raises(cj.KeyFormatError, match="64 hexadecimal"):
        cj.public_key(bad)


def _tool_code(case):
    return case["stderr"].strip().removeprefix("ERROR: Key_parse_") if case["exit_code"] else None


@pytest.mark.parametrize("case", INVALID["cases"], ids=lambda c: c["label"])
def test_public_key_cases_get_the_tools_verdict_or_a_stricter_one(case):
    tool = _tool_code(case)
    if tool is None and case["input"] == case["input"].lower() and case["input"].endswith(".k"):
        assert cj.address(case["input"]) == case["stdout"].strip()
        return
    with pytest.raises(cj.KeyFormatError) as error:
        cj.address(case["input"])
    reason = str(error.value)
    assert reason and len(reason) > 15
    if tool is None:
        # Accepted by publictoip6, refused by us: upper-case base32 or text after ".k".
        assert error.value.code == "NOT_CANONICAL"
    else:
        assert error.value.code == tool


def test_a_reason_names_what_is_wrong():
    key = KEYS["keys"][0]["public_key"]
    cases = {
        key[:10] + "a" + key[11:]: "character 'a' at position 11",
        key.upper()[:52] + ".k": "upper-case",
        key + "xyz": "trailing text",
        key[:50]: "too short",
        key[:51] + "2.k": "beyond the key's 256",
    }
    for text, reason in cases.items():
        with pytest.raises(cj.KeyFormatError, match=reason):
            cj.parse_public_key(text)


def test_generated_keys_are_in_fc00_and_consistent():
    seen = set()
    for _ in range(20):
        ident = cj._keypair()
        assert ident.ipv6.startswith("fc") and len(ident.ipv6) == 39
        assert cj.public_key(ident.private_key) == ident.public_key
        assert cj.address(ident.public_key) == ident.ipv6
        assert ident.private_key not in repr(ident)
        seen.add(ident.private_key)
    assert len(seen) == 20
