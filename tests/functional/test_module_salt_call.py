"""The execution functions through `salt-call --local`, as the README shows them."""

import shutil

import pytest

from support.saltenv import VECTORS, SaltEnv

PRIVATE_KEYS = [line.split('"')[3] for n in "123" for line in
                (VECTORS / f"genconf/genconf-{n}.conf").read_text().splitlines() if '"privateKey"' in line]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return SaltEnv(tmp_path_factory.mktemp("module"))


def test_address(env):
    result = env.call("cjdns.address", "0ccvtu9w6dd9qus12pqzsc37rp16p8vcptzx75wkm64406y6g9k0.k")
    assert (result.rc, result.data) == (0, "fc74:b0f1:46d7:eb4c:ff3c:64b4:b6a7:6f9d")


def test_address_of_a_bad_key_says_why(env):
    result = env.call("cjdns.address", "0ccvtu9w6dd9qus12pqzsc37rp16p8vcptzx75wkm64406y6g9k0.kxyz")
    assert result.rc == 1 and "trailing text after '.k'" in result.stderr


@pytest.mark.parametrize("n", ["1", "2", "3"])
def test_check_config_identity_and_peers_on_genconf(env, n):
    path = str(VECTORS / f"genconf/genconf-{n}.conf")
    check = env.call("cjdns.check_config", path)
    assert check.rc == 0 and check.data == {"path": path, "ok": True, "strict": True, "warnings": []}
    ident = env.call("cjdns.identity", path)
    text = (VECTORS / f"genconf/genconf-{n}.conf").read_text()
    assert ident.rc == 0 and set(ident.data) == {"path", "public_key", "ipv6"}
    assert f'"publicKey": "{ident.data["public_key"]}"' in text and f'"ipv6": "{ident.data["ipv6"]}"' in text
    peers = env.call("cjdns.peers", path)
    assert (peers.rc, peers.data) == (0, {})
    for output in (check.stdout, ident.stdout, peers.stdout):
        assert not any(key in output for key in PRIVATE_KEYS)


def test_peers_hide_passwords(env):
    result = env.call("cjdns.peers", str(VECTORS / "admin/node-b.conf"))
    assert result.rc == 0
    assert result.data["127.0.0.1:21240"] == {
        "interface": 0, "login": "default-login", "password": "<hidden>", "peerName": "node-a",
        "publicKey": "91uwd02p004x7z036y7ml0svcrttm554bbyvguxv6wrdj0wfvvv0.k",
        "ipv6": "fc9b:3de4:3a59:7135:ecc6:434f:be3c:ef72"}
    assert "qr8vlkqscuvff2khc5t4pbqhz0u67tt" not in result.stdout + result.stderr


def test_check_config_names_line_and_column(env, tmp_path):
    bad = tmp_path / "cjdroute.conf"
    text = (VECTORS / "genconf/genconf-1.conf").read_text()
    bad.write_text(text.replace('"beaconPort": 64512,', '"beaconPort": 64512,,'))
    result = env.call("cjdns.check_config", str(bad))
    assert result.rc == 1 and result.stdout == ""
    assert f'{bad}:89:37: expected a "key" in double quotes, found \',\'' in result.stderr


def test_default_path_comes_from_pillar(tmp_path):
    conf = tmp_path / "node.conf"
    shutil.copy(VECTORS / "genconf/genconf-3.conf", conf)
    env = SaltEnv(tmp_path / "salt", pillar={"cjdns": {"paths": {"config": str(conf)}}})
    result = env.call("cjdns.identity")
    assert result.rc == 0 and result.data["path"] == str(conf)
