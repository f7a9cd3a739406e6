"""The execution module through Salt's real loader."""

import pytest
import yaml

from support.saltenv import REPO, VECTORS, load_module


@pytest.fixture(scope="module")
def mods(tmp_path_factory):
    from support.saltenv import SaltEnv

    env = SaltEnv(tmp_path_factory.mktemp("loader"))
    return env.loader()[0]


def test_functions_are_exposed(mods):
    for name in ("address", "check_config", "identity", "peers"):
        assert f"cjdns.{name}" in mods
    assert "cjdns._keypair" not in mods


def test_address_through_the_loader(mods):
    assert mods["cjdns.address"]("0ccvtu9w6dd9qus12pqzsc37rp16p8vcptzx75wkm64406y6g9k0.k") == (
        "fc74:b0f1:46d7:eb4c:ff3c:64b4:b6a7:6f9d")


def test_identity_through_the_loader(mods):
    result = mods["cjdns.identity"](str(VECTORS / "genconf/genconf-2.conf"))
    text = (VECTORS / "genconf/genconf-2.conf").read_text()
    assert result["public_key"] in text and result["ipv6"] in text
    assert "privateKey" not in str(result)


def test_errors_are_command_execution_errors(mods, tmp_path):
    from salt.exceptions import CommandExecutionError

    bad = tmp_path / "bad.conf"
    bad.write_text('{ "privateKey": "x", "version": 2, }')
    with pytest.raises(CommandExecutionError, match=r"bad.conf:1:34: expected another key after ','"):
        mods["cjdns.check_config"](str(bad))


def test_module_defaults_agree_with_defaults_yaml():
    defaults = yaml.safe_load((REPO / "cjdns/defaults.yaml").read_text())["cjdns"]
    assert load_module().DEFAULT_CONFIG == defaults["paths"]["config"]
