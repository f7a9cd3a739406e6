"""Tests of the emulated qubes themselves (tests/emulation/qube.py, vm/agent/): Debian 13 systems
booted under their own systemd with systemd-nspawn, with Qubes' storage and agent emulated.

They need root, systemd-nspawn and debootstrap; without them they are skipped. The qubes are
shared by the module (a boot takes about a second once the root filesystem is cached).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

EMULATION = Path(__file__).resolve().parents[1] / "emulation"
sys.path.insert(0, str(EMULATION))

from fake_cjdns_repo import make_repo  # noqa: E402
from qube import AppVM, Template  # noqa: E402


def _containers_work() -> bool:
    return os.geteuid() == 0 and all(
        subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True).returncode == 0
        for tool in ("systemd-nspawn", "debootstrap", "nsenter"))


pytestmark = pytest.mark.skipif(not _containers_work(), reason="needs root, systemd-nspawn and debootstrap")

DEMO_UNIT = """[Unit]
Description=demo service gated on a Qubes service flag
ConditionPathExists=/run/qubes-service/demo

[Service]
ExecStart=/bin/sleep 1000

[Install]
WantedBy=multi-user.target
"""

TEMPLATE_SETUP = f"""set -e
mkdir -p /etc/cjdns /etc/qubes-bind-dirs.d
echo template-dir-key > /etc/cjdns/cjdroute.conf
chmod 0600 /etc/cjdns/cjdroute.conf
echo template-file-key > /etc/cjdroute.conf
cat > /etc/qubes-bind-dirs.d/50_test.conf <<'EOF'
binds+=( '/etc/cjdns' )
binds+=( '/etc/cjdroute.conf' )
EOF
cat > /etc/systemd/system/demo.service <<'EOF'
{DEMO_UNIT}EOF
systemctl enable --quiet demo
echo from-template > /etc/template-only
echo template-usrlocal > /usr/local/in-template-private
"""


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("qubes")


@pytest.fixture(scope="module")
def template(base: Path) -> Template:
    tpl = Template("tpl", base)
    tpl.sh(TEMPLATE_SETUP, check=True)
    tpl.shutdown()
    yield tpl
    tpl.cleanup()


@pytest.fixture(scope="module")
def appvm(template: Template, base: Path) -> AppVM:
    template.shutdown()  # an AppVM gets the template's root as the template left it
    vm = AppVM("sys-test", base, template, services={"demo"})
    vm.boot()
    yield vm
    vm.cleanup()


def journal(qube, unit: str) -> str:
    """This boot's messages of a unit (the qube's journal)."""
    return qube.run(["journalctl", "-b", "-o", "cat", "--no-pager", "-u", unit]).stdout


def test_template_writes_persist_across_boots_and_never_reach_the_host(base: Path) -> None:
    tpl = Template("persist", base)
    try:
        marker = f"qube-emulation-{os.getpid()}"
        tpl.sh(f"for d in /etc /usr/lib /opt /var/lib /root /srv; do echo x > $d/{marker}; done",
               check=True)
        tpl.reboot()
        seen = tpl.sh(f"cat /etc/{marker} /usr/lib/{marker} /opt/{marker} /var/lib/{marker}")
        assert seen.stdout == "x\n" * 4
        for directory in ("/etc", "/usr/lib", "/opt", "/var/lib", "/root", "/srv"):
            assert not Path(directory, marker).exists()
            assert (tpl.root_upper / directory.lstrip("/") / marker).exists()
        assert not Path("/rw").exists()
        assert tpl.sh("test -d /run/qubes-service && test -d /run/systemd/system").returncode == 0
        assert tpl.sh("hostname").stdout.strip() == "persist"
        # Its own systemd is PID 1 inside, the host's is not visible.
        assert tpl.run(["cat", "/proc/1/comm"]).stdout.strip() == "systemd"
        assert tpl.path("/etc/" + marker).read_text() == "x\n"
    finally:
        tpl.cleanup()


def test_appvm_sees_template_root_but_not_its_private_volume(template: Template, appvm: AppVM) -> None:
    assert appvm.sh("cat /etc/template-only").stdout == "from-template\n"
    assert (template.private_dir / "usrlocal/in-template-private").read_text() == "template-usrlocal\n"
    assert appvm.sh("test -e /usr/local/in-template-private").returncode != 0
    appvm.sh("echo mine > /etc/appvm-only", check=True)
    assert not (template.root_upper / "etc/appvm-only").exists()
    assert not Path("/etc/appvm-only").exists()
    assert appvm.path("/etc/appvm-only").read_text() == "mine\n"
    flags = appvm.sh("ls /run/qubes-service; cat /run/qubes/persistent-rw-only && echo rw-only")
    assert "demo\n" in flags.stdout and "rw-only" in flags.stdout
    assert appvm.run(["qubesdb-read", "/qubes-vm-persistence"]).stdout == "rw-only\n"


def test_bind_dir_directory_is_copied_once_and_survives_reboot(appvm: AppVM) -> None:
    copy = appvm.private_dir / "bind-dirs/etc/cjdns/cjdroute.conf"
    assert copy.read_text() == "template-dir-key\n"
    assert oct(copy.stat().st_mode & 0o777) == "0o600"
    assert "Initializing /rw/bind-dirs/etc/cjdns" in journal(appvm, "qubes-mount-dirs")
    appvm.sh("echo own-key > /etc/cjdns/cjdroute.conf; echo volatile > /etc/scratch", check=True)
    appvm.reboot()
    assert appvm.sh("cat /etc/cjdns/cjdroute.conf").stdout == "own-key\n"
    assert appvm.sh("test -e /etc/scratch").returncode != 0
    after = journal(appvm, "qubes-mount-dirs")
    assert "Bind mounting /rw/bind-dirs/etc/cjdns onto /etc/cjdns" in after
    assert "Initializing /rw/bind-dirs/etc/cjdns" not in after  # copied once, at the first boot


def test_single_file_bind_copies_template_bytes_and_refuses_rename(appvm: AppVM) -> None:
    assert appvm.sh("cat /etc/cjdroute.conf").stdout == "template-file-key\n"
    assert (appvm.private_dir / "bind-dirs/etc/cjdroute.conf").read_text() == "template-file-key\n"
    rename = appvm.run(["python3", "-c", (
        "import errno, os\n"
        "open('/etc/cjdroute.conf.new', 'w').write('new')\n"
        "try:\n    os.rename('/etc/cjdroute.conf.new', '/etc/cjdroute.conf')\n"
        "except OSError as exc:\n    print(errno.errorcode[exc.errno])\n")])
    assert rename.stdout.strip() == "EBUSY"


def test_bind_dirs_removal_idiom_aborts_later_entries(template: Template, base: Path) -> None:
    template.shutdown()
    vm = AppVM("sys-idiom", base, template)
    try:
        vm.boot()
        vm.sh("mkdir -p /rw/config/qubes-bind-dirs.d /rw/bind-dirs/etc/later && "
              "echo \"binds=( \\\"\\${binds[@]/'/etc/cjdroute.conf'}\\\" ); binds+=( '/etc/later' )\""
              " > /rw/config/qubes-bind-dirs.d/20.conf", check=True)
        vm.reboot()
        mounts = vm.run(["findmnt", "-rn", "-o", "TARGET"]).stdout.split()
        assert "/etc/cjdns" in mounts
        assert "/etc/later" not in mounts  # bash -e stops at the empty entry left behind
        assert "bind-dirs: aborted" in journal(vm, "qubes-mount-dirs")
    finally:
        vm.cleanup()


def test_condition_path_exists_gates_on_qubes_service_flag(template: Template, appvm: AppVM,
                                                          base: Path) -> None:
    # The qubes' own systemd evaluates the condition: started at boot only where the flag is.
    assert appvm.run(["systemctl", "is-active", "demo"]).stdout == "active\n"
    assert template.run(["systemctl", "is-enabled", "demo"]).stdout == "enabled\n"
    assert template.run(["systemctl", "is-active", "demo"]).stdout == "inactive\n"
    start = template.run(["systemctl", "start", "demo"])
    assert start.returncode == 0  # an unmet condition is not a failure
    assert template.run(["systemctl", "is-active", "demo"]).returncode == 3
    assert template.run(["systemctl", "show", "-p", "ConditionResult", "--value", "demo"]).stdout == "no\n"
    status = template.run(["systemctl", "status", "--no-pager", "demo"]).stdout
    assert "ConditionPathExists=/run/qubes-service/demo was not met" in status
    template.shutdown()
    unflagged = AppVM("sys-noflag", base, template)
    try:
        assert unflagged.run(["systemctl", "is-active", "demo"]).returncode == 3
        unflagged.run(["touch", "/run/qubes-service/demo"], check=True)
        assert unflagged.run(["systemctl", "start", "demo"]).returncode == 0
        assert unflagged.run(["systemctl", "is-active", "demo"]).stdout == "active\n"
    finally:
        unflagged.cleanup()


def test_testinfra_host_runs_inside_the_qube(appvm: AppVM) -> None:
    appvm.sh("install -m 0640 /dev/null /etc/testinfra-probe", check=True)
    host = appvm.testinfra_host()
    probe = host.file("/etc/testinfra-probe")
    assert probe.exists and probe.mode == 0o640 and probe.user == "root"
    assert host.file("/etc/cjdns").is_directory
    assert host.service("demo").is_running
    assert host.service("demo").is_enabled
    assert host.check_output("hostname") == "sys-test"
    assert not Path("/etc/testinfra-probe").exists()


def test_fake_cjdns_repo_builds_the_checked_out_tag(base: Path) -> None:
    share = base / "share"
    url = make_repo(share / "cjdns", python="/usr/bin/python3")
    tpl = Template("builder", base, shared=[share])
    try:
        # From the local repository: git to clone, python3-cryptography for cjdroute's keys.
        tpl.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "git", "python3-cryptography"],
                check=True, timeout=300)
        build = tpl.sh(f"git clone -q {url} /opt/cjdns && cd /opt/cjdns && "
                       "git checkout -q cjdns-v22.3 && ./do && ./cjdroute --version && "
                       "install -m 0755 cjdroute /usr/bin/cjdroute && "
                       "cp contrib/systemd/cjdns.service contrib/systemd/cjdns-resume.service "
                       "/etc/systemd/system/ && systemctl enable --quiet cjdns && systemctl start cjdns")
        assert build.returncode == 0, build.stderr
        assert "Built from: cjdns-v22.3" in build.stdout
        assert (tpl.root_upper / "opt/cjdns/.built-from").read_text() == "cjdns-v22.3\n"
        # The stock unit generates a key wherever it first starts: here, in the template.
        conf = tpl.path("/etc/cjdroute.conf")
        assert conf.stat().st_mode & 0o777 == 0o600
        ping = ("import socket, time\n"
                "for _ in range(50):\n"
                "    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.1)\n"
                "    s.sendto(b'd1:q4:pinge', ('127.0.0.1', 11234))\n"
                "    try:\n        print(s.recv(100)); break\n"
                "    except OSError:\n        time.sleep(0.05)\n")
        assert "4:pong" in tpl.run(["python3", "-c", ping]).stdout
        assert "fc00::/8 dev tun0" in tpl.run(["ip", "-6", "route"]).stdout
    finally:
        tpl.cleanup()


def _fake_cjdroute():
    spec = importlib.util.spec_from_file_location("fake_cjdroute", EMULATION / "fake_cjdroute.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fake_cjdroute_keys_follow_cjdns_rules() -> None:
    cjdroute = _fake_cjdroute()
    assert cjdroute.public_key(
        "9b5520e11b4e1aac4e54cf8382ca219b6942f75519dbe7cc71fc6c4bb636a2db") == (
        "x70u0x6sfh0yuushlq7wvcdxj8rgb8lvss9t6f42zp60ftq71cm0.k",
        "fca1:43dc:9e20:68dc:df3f:6bf1:fbf9:37ab")
    conf = cjdroute.parse_conf(cjdroute.genconf())
    assert (conf["publicKey"], conf["ipv6"]) == cjdroute.public_key(conf["privateKey"])
    assert conf["ipv6"].startswith("fc") and conf["version"] == 2
    bad = subprocess.run([sys.executable, str(EMULATION / "fake_cjdroute.py"), "--nobg"],
                         input='{ "privateKey": "00", "version": 2, }', capture_output=True, text=True)
    assert bad.returncode == 101 and "Error reading conf from stdin" in bad.stderr
