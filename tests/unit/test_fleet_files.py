"""The fleet file and the key file on the master: every bad case names the field and the
reason, a key's content never shows, and a fleet file is parsed once per content."""

import multiprocessing
import os
import pathlib

import pytest

from support.fleet_compiler import load_compiler, sample_fleet_text

HEAD = "version: 1\nfleet: home\n"
MEMBERS = "members:\n  vps1: {}\n  home: {}\n  laptop: {nat: true}\n"


@pytest.fixture(scope="module")
def cf():
    return load_compiler()


# One case per malformed fleet file: (id, text, the exact field and reason expected).
BAD_FLEETS = [
    ("not-yaml", "version: 1\nmembers: [a\n", "not valid YAML at line 3, column 1"),
    ("not-a-mapping", "- a\n", "the fleet file: must be a mapping, not a list"),
    ("duplicate-member-id", HEAD + "members:\n  vps1: {}\n  home: {}\n  vps1: {nat: true}\n",
     "members: duplicate key 'vps1' (line 4 column 3 and line 6 column 3)"),
    ("duplicate-top-level-key", HEAD + MEMBERS + "fleet: other\n",
     "top level: duplicate key 'fleet' (line 2 column 1 and line 7 column 1)"),
    ("unknown-top-level-key", HEAD + MEMBERS + "topolgy: []\n",
     "topolgy: unknown key (allowed: version, fleet, members, epoch, groups, topology, edge_epochs, compromised_keys)"),
    ("unknown-member-option", HEAD + "members:\n  vps1: {nta: true}\n", "members.vps1.nta: unknown key (allowed: endpoints, nat, public_key)"),
    ("missing-members", HEAD, "members: missing"),
    ("wrong-version", "version: 2\nfleet: home\n" + MEMBERS, "version: 2 is not a fleet file version this module reads (1)"),
    ("bad-fleet-name", "version: 1\nfleet: Home\n" + MEMBERS, "fleet: 'Home' must be 1-32 of a-z 0-9 -"),
    ("negative-epoch", HEAD + "epoch: -1\n" + MEMBERS, "epoch: -1 must be an integer >= 0"),
    ("bad-member-id", HEAD + "members:\n  'vps/1': {}\n", "members: 'vps/1' is not a minion id"),
    ("dotdot-member-id", HEAD + "members:\n  '..': {}\n", "members: '..' is not a minion id"),
    ("nat-not-bool", HEAD + "members:\n  vps1: {nat: 'yes'}\n", "members.vps1.nat: 'yes' must be true or false"),
    ("member-endpoint-hostname", HEAD + "members:\n  vps1: {endpoints: ['vps1.example.net:47300']}\n",
     "members.vps1.endpoints[0]: 'vps1.example.net' is not an IP address (cjdroute does not resolve names)"),
    ("member-endpoint-twice", HEAD + "members:\n  vps1: {endpoints: ['192.0.2.1:1', '192.0.2.1:01']}\n",
     "members.vps1.endpoints[1]: 192.0.2.1:1 is listed twice"),
    ("unknown-member-in-group", HEAD + MEMBERS + "groups:\n  servers: [vps1, vps9]\n",
     "groups.servers[1]: 'vps9' is neither a member nor a group"),
    ("group-cycle", HEAD + MEMBERS + "groups:\n  a: [vps1, b]\n  b: [home, c]\n  c: [a]\n",
     "groups.a: cycle a -> b -> c -> a"),
    ("group-named-like-a-member", HEAD + MEMBERS + "groups:\n  home: [vps1]\n",
     "groups.home: 'home' is also a member id"),
    ("unknown-group-in-topology", HEAD + MEMBERS + "topology:\n  - mesh: servers\n",
     "topology[0].mesh: 'servers' is neither a member nor a group"),
    ("unknown-topology-kind", HEAD + MEMBERS + "topology:\n  - star: [vps1, home]\n",
     "topology[0]: unknown kind 'star' (one of mesh, hubs, edge)"),
    ("two-kinds-in-one-item", HEAD + MEMBERS + "topology:\n  - {mesh: [vps1, home], edge: {client: home, server: vps1}}\n",
     "topology[0]: must be a mapping with exactly one of mesh, hubs, edge, not 2 keys"),
    ("hub-not-a-member", HEAD + MEMBERS + "topology:\n  - mesh: [vps1]\n  - mesh: [home]\n"
     "  - hubs: {hubs: [vps9], members: [home]}\n", "topology[2].hubs.hubs[0]: 'vps9' is not a member"),
    ("hub-behind-nat", HEAD + MEMBERS + "topology:\n  - hubs: {hubs: [laptop], members: [home]}\n",
     "topology[0].hubs.hubs[0]: 'laptop' is behind NAT (nat: true), and a hub must accept connections"),
    ("hubs-unknown-key", HEAD + MEMBERS + "topology:\n  - hubs: {hubs: [vps1], member: [home]}\n",
     "topology[0].hubs.member: unknown key (allowed: hubs, members)"),
    ("hubs-without-members", HEAD + MEMBERS + "topology:\n  - hubs: {hubs: [vps1]}\n",
     "topology[0].hubs.members: missing"),
    ("edge-server-behind-nat", HEAD + MEMBERS + "topology:\n  - edge: {client: home, server: laptop}\n",
     "topology[0].edge.server: 'laptop' is behind NAT (nat: true), so it can only be a client"),
    ("edge-unknown-client", HEAD + MEMBERS + "topology:\n  - edge: {client: lapto, server: home}\n",
     "topology[0].edge.client: 'lapto' is not a member"),
    ("edge-twice", HEAD + MEMBERS + "topology:\n  - edge: {client: home, server: vps1}\n"
     "  - edge: {client: vps1, server: home}\n",
     "topology[1].edge: vps1 and home are already linked by topology[0].edge"),
    ("edge-to-itself", HEAD + MEMBERS + "topology:\n  - edge: {client: home, server: home}\n",
     "topology[0].edge: client and server are both 'home'"),
    ("edge-epoch-unknown-member", HEAD + MEMBERS + "edge_epochs:\n  - {between: [home, vps9], epoch: 2}\n",
     "edge_epochs[0].between[1]: 'vps9' is not a member"),
    ("edge-epoch-bad-epoch", HEAD + MEMBERS + "edge_epochs:\n  - {between: [home, vps1], epoch: two}\n",
     "edge_epochs[0].epoch: 'two' must be an integer >= 0"),
    ("compromised-key-not-a-key", HEAD + MEMBERS + "compromised_keys: [abc.k]\n",
     "compromised_keys[0]: 'abc.k' is not 52 cjdns base32 characters (lower case) and '.k'"),
]


@pytest.mark.parametrize("text, message", [case[1:] for case in BAD_FLEETS], ids=[case[0] for case in BAD_FLEETS])
def test_a_bad_fleet_file_names_the_field_and_the_reason(cf, tmp_path, text, message):
    path = tmp_path / "fleet.yaml"
    path.write_text(text)
    with pytest.raises(cf.FleetError) as raised:
        cf.load_fleet(str(path))
    assert str(raised.value).startswith(f"fleet_file {path}: ")
    assert message in str(raised.value)
    assert path.read_text() == text


def test_every_problem_of_a_file_is_named_at_once(cf):
    text = HEAD + MEMBERS + "groups:\n  g: [vps9]\ntopology:\n  - star: g\n  - hubs: {hubs: [laptop], members: g}\n"
    with pytest.raises(cf.FleetError) as raised:
        cf.parse_fleet(text)
    assert str(raised.value).split("; ") == [
        "groups.g[0]: 'vps9' is neither a member nor a group",
        "topology[0]: unknown kind 'star' (one of mesh, hubs, edge)",
        "topology[1].hubs.hubs[0]: 'laptop' is behind NAT (nat: true), and a hub must accept connections",
    ]


def test_the_sample_fleet_file_is_valid(cf):
    fleet = cf.parse_fleet(sample_fleet_text())
    assert fleet.name == "home" and fleet.epoch == 1 and len(fleet.members) == 9


def test_a_fleet_file_is_parsed_once_per_content(cf, tmp_path, monkeypatch):
    path = tmp_path / "fleet.yaml"
    path.write_text(sample_fleet_text())
    parsed = []
    real = cf.parse_fleet
    monkeypatch.setattr(cf, "parse_fleet", lambda text: parsed.append(1) or real(text))
    first = cf.load_fleet(str(path))
    assert cf.load_fleet(str(path)) is first and len(parsed) == 1
    path.write_text(sample_fleet_text().replace("epoch: 1", "epoch: 2"))
    second = cf.load_fleet(str(path))
    assert second.epoch == 2 and len(parsed) == 2
    replacement = tmp_path / "new.yaml"  # same size, new inode (an editor's rename)
    replacement.write_text(sample_fleet_text().replace("epoch: 1", "epoch: 3"))
    replacement.rename(path)
    assert cf.load_fleet(str(path)).epoch == 3 and len(parsed) == 3


# --- the key file ----------------------------------------------------------------------


@pytest.fixture
def key_dir(tmp_path):
    directory = tmp_path / "secret"
    directory.mkdir(mode=0o700)
    return directory


def assert_key_error(cf, path, reason, secret=b""):
    with pytest.raises(cf.FleetError) as raised:
        cf.ensure_key(str(path))
    message = str(raised.value)
    assert message == f"key_file {path}: {reason}"
    if secret:
        assert secret.hex() not in message and secret.decode("latin-1") not in message


def test_a_missing_key_is_made_0600_and_kept(cf, key_dir):
    path = key_dir / "fleet.key"
    key = cf.ensure_key(str(path))
    assert len(key) == 32 and path.read_bytes() == key
    assert (path.stat().st_mode & 0o777) == 0o600 and path.stat().st_uid == os.geteuid()
    assert cf.ensure_key(str(path)) == key
    assert sorted(p.name for p in key_dir.iterdir()) == ["fleet.key"]  # no temporary file left


def test_keygen_refuses_to_overwrite(cf, key_dir):
    path = key_dir / "fleet.key"
    cf.create_key(str(path))
    before = path.read_bytes()
    with pytest.raises(cf.KeyExists, match=r"exists already; .* keygen does not overwrite it"):
        cf.create_key(str(path))
    assert path.read_bytes() == before


def test_a_group_readable_key_is_refused(cf, key_dir):
    path = key_dir / "fleet.key"
    path.write_bytes(b"k" * 32)
    path.chmod(0o640)
    assert_key_error(cf, path, "has mode 0640, which gives group or others access (chmod 600)", b"k" * 32)


def test_a_key_owned_by_another_user_is_refused(cf, key_dir):
    if os.geteuid() != 0:
        pytest.skip("needs root to give the file away")
    path = key_dir / "fleet.key"
    path.write_bytes(b"k" * 32)
    path.chmod(0o600)
    os.chown(path, 65534, 65534)
    assert_key_error(cf, path, "is owned by uid 65534, not by the master's user (uid 0)", b"k" * 32)


def test_a_symlinked_key_is_refused(cf, key_dir):
    real = key_dir / "real.key"
    real.write_bytes(b"k" * 32)
    real.chmod(0o600)
    (key_dir / "fleet.key").symlink_to(real)
    assert_key_error(cf, key_dir / "fleet.key", "is a symbolic link; give the path of the file itself")


def test_a_key_of_the_wrong_size_is_refused(cf, key_dir):
    path = key_dir / "fleet.key"
    path.write_bytes(b"short-secret")
    path.chmod(0o600)
    assert_key_error(cf, path, "is 12 bytes, not 32 (made by salt-run cjdns_fleet.keygen)", b"short-secret")


def test_a_key_that_is_a_directory_is_refused(cf, key_dir):
    (key_dir / "fleet.key").mkdir(mode=0o700)
    assert_key_error(cf, key_dir / "fleet.key", "is not a regular file")


def test_a_key_is_not_made_in_a_directory_others_can_write(cf, tmp_path):
    directory = tmp_path / "shared"
    directory.mkdir()
    directory.chmod(0o777)
    assert_key_error(cf, directory / "fleet.key", f"its directory {directory} is writable by group or others (mode 0777)")
    assert not (directory / "fleet.key").exists()


def _make_key(path: str, queue) -> None:
    queue.put(load_compiler().ensure_key(path))


def test_concurrent_first_renders_agree_on_one_key(cf, key_dir):
    path = str(key_dir / "fleet.key")
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    makers = [context.Process(target=_make_key, args=(path, queue)) for _ in range(8)]
    for maker in makers:
        maker.start()
    keys = [queue.get(timeout=60) for _ in makers]
    for maker in makers:
        maker.join(timeout=60)
    assert len(set(keys)) == 1 and pathlib.Path(path).read_bytes() == keys[0]
    assert sorted(p.name for p in key_dir.iterdir()) == ["fleet.key"]


@pytest.mark.parametrize("fleet_file, key_file, message", [
    ("fleet.yaml", "/k", "ext_pillar cjdns_fleet: fleet_file: 'fleet.yaml' must be an absolute path"),
    ("/f", None, "ext_pillar cjdns_fleet: key_file: None must be an absolute path"),
])
def test_the_ext_pillar_config_is_checked(cf, fleet_file, key_file, message):
    with pytest.raises(cf.FleetError) as raised:
        cf.config_of(fleet_file, key_file)
    assert str(raised.value) == message


def test_a_key_inside_file_roots_is_refused(cf, tmp_path):
    with pytest.raises(cf.FleetError, match="is inside file_roots .* where minions can fetch it"):
        cf.config_of("/f", str(tmp_path / "srv/salt/fleet.key"), {"base": [str(tmp_path / "srv/salt")]})


def test_the_documented_example_fleet_file_is_valid(cf):
    from support.saltenv import REPO

    fleet = cf.load_fleet(str(REPO / "fleet.example.yaml"))
    assert fleet.name == "home" and sorted(fleet.members) == ["home", "laptop", "sys-cjdns", "vps1", "vps2"]
    assert cf.neighbours(fleet, "laptop") == ["home", "vps1"]
    assert cf.neighbours(fleet, "sys-cjdns") == ["vps1"] and fleet.members["sys-cjdns"].public_key
