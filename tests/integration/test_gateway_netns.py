"""Real packets through sys-cjdns: Qubes' own nftables rules plus cjdns/files/proxy/firewall.jinja.

One network namespace per qube, names unique per run:

    personal eth0 ==veth== vif12.0 (group 2)  sys-cjdns  eth0 (group 1) ==veth== vif7.0  uplink
                                              tun0 (tests/emulation/tun_responder.py)

sys-cjdns gets Qubes' ruleset (tests/emulation/qubes_nft, R4.3 v4.3.46) in Qubes' order, then the
rendered firewall script as qubes-firewall runs it, then forwarding, then personal's vif comes
online. `uplink` plays sys-firewall with IPv6, so sys-cjdns has a default IPv6 route out of eth0:
mesh traffic WOULD leak there if the gateway's guards failed, and an nft counter in `uplink` sees it.

Needs root, iproute2, nftables, ping (iputils-ping) and /dev/net/tun; skips with the reason
otherwise. About 6 s.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import jinja2
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def _load_emulation(name: str) -> ModuleType:
    """tests/emulation/<name> by path, whatever sys.path the run has."""
    spec = importlib.util.spec_from_file_location(
        f"cjdns_tests_{name}", REPO / "tests" / "emulation" / name / "__init__.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


qubes_nft = _load_emulation("qubes_nft")

TEMPLATE = REPO / "cjdns" / "files" / "proxy" / "firewall.jinja"
DEFAULTS = REPO / "cjdns" / "defaults.yaml"
RESPONDER = REPO / "tests" / "emulation" / "tun_responder.py"
KEYS = REPO / "tests" / "vectors" / "keys.json"

NS_PREFIX = "cjgw"
SYS_FIREWALL = qubes_nft.Qube("sys-firewall", qid=6, domid=2)
SYS_CJDNS = qubes_nft.Qube("sys-cjdns", qid=20, domid=7)
PERSONAL = qubes_nft.Qube("personal", qid=9, domid=12)
MESH = "fc00::/8"

# Inside sys-cjdns: echo UDP datagrams on every given port, accept and close TCP on the last one.
SERVER = r"""
import selectors, socket, sys
udp_ports, tcp_port = [int(p) for p in sys.argv[1].split(",")], int(sys.argv[2])
sel = selectors.DefaultSelector()
def bound(kind, port):
    s = socket.socket(socket.AF_INET6, kind)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", port))
    return s
for port in udp_ports:
    sel.register(bound(socket.SOCK_DGRAM, port), selectors.EVENT_READ)
tcp = bound(socket.SOCK_STREAM, tcp_port)
tcp.listen()
sel.register(tcp, selectors.EVENT_READ)
print("READY", flush=True)
while True:
    for key, _ in sel.select():
        s = key.fileobj
        if s is tcp:
            s.accept()[0].close()
        else:
            data, peer = s.recvfrom(2048)
            s.sendto(data, peer)
"""

# Anywhere: run the probes given as JSON concurrently, print one verdict each as JSON:
# "reply" (UDP echoed), "connected" (TCP), "timeout" (silently dropped) or "error:<ERRNO>".
PROBE = r"""
import concurrent.futures, errno, json, socket, sys
def probe(spec):
    family = socket.AF_INET6 if ":" in spec["host"] else socket.AF_INET
    kind = socket.SOCK_DGRAM if spec["proto"] == "udp" else socket.SOCK_STREAM
    with socket.socket(family, kind) as s:
        s.settimeout(spec["timeout"])
        try:
            s.connect((spec["host"], spec["port"]))
            if kind == socket.SOCK_STREAM:
                return "connected"
            s.send(b"cjdns-probe")
            return "reply" if s.recv(64) == b"cjdns-probe" else "garbled"
        except socket.timeout:
            return "timeout"
        except OSError as e:
            return "error:" + errno.errorcode.get(e.errno, str(e.errno))
specs = json.loads(sys.argv[1])
with concurrent.futures.ThreadPoolExecutor(len(specs)) as pool:
    print(json.dumps(list(pool.map(probe, specs))))
"""

# In `uplink`: count every IPv6 packet for the mesh that reaches it, before anything else runs.
LEAK_WATCH = f"""
table ip6 cjdns-leak-watch {{
    counter mesh {{
    }}
    chain prerouting {{
        type filter hook prerouting priority -400; policy accept;
        ip6 daddr {MESH} counter name mesh
    }}
}}
"""


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL the helper if pytest dies, so no process outlives a killed run."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _raise(message: str) -> None:
    raise jinja2.TemplateError(message)


def render_firewall(cjdns: dict[str, Any]) -> str:
    """Render firewall.jinja as Salt would for file.managed (Salt's `raise` global included)."""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.globals["raise"] = _raise
    return env.from_string(TEMPLATE.read_text()).render(cjdns=cjdns)


def defaults() -> dict[str, Any]:
    return yaml.safe_load(DEFAULTS.read_text())["cjdns"]


def fc_addresses() -> tuple[str, str]:
    """(node, remote): two real cjdns addresses from the vectors."""
    keys = json.loads(KEYS.read_text())["keys"]
    return keys[0]["ipv6"], keys[1]["ipv6"]


def unavailable() -> str | None:
    """Why this host cannot run the namespace test, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, nftables, /dev/net/tun)"
    for tool in ("ip", "nft", "ping"):
        if shutil.which(tool) is None:
            return f"`{tool}` not installed"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun unavailable"
    probe = f"{NS_PREFIX}{os.getpid()}-probe"
    steps = (
        ["ip", "netns", "add", probe],
        ["ip", "netns", "exec", probe, "nft", "add", "table", "ip6", "probe"],
        ["ip", "netns", "exec", probe, "ip", "tuntap", "add", "dev", "tun0", "mode", "tun"],
    )
    try:
        for argv in steps:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            if result.returncode != 0:
                return f"{' '.join(argv[-4:])}: {result.stderr.strip()}"
    finally:
        subprocess.run(["ip", "netns", "delete", probe], capture_output=True)
    return None


def delete_stale_namespaces() -> None:
    """Namespaces left by earlier runs of this test whose pytest process is gone."""
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for name in re.findall(rf"^({NS_PREFIX}(\d+)-\S+)", listing, re.MULTILINE):
        if not Path(f"/proc/{name[1]}").exists():
            subprocess.run(["ip", "netns", "delete", name[0]], capture_output=True)


class Gateway:
    """The three namespaces, the firewall script and the tun responder."""

    def __init__(self, workdir: Path) -> None:
        prefix = f"{NS_PREFIX}{os.getpid()}"
        self.personal = f"{prefix}-personal"
        self.proxy = f"{prefix}-sys-cjdns"
        self.uplink = f"{prefix}-uplink"
        self.workdir = workdir
        self.script = workdir / "50-cjdns"
        self.node, self.remote = fc_addresses()
        self.conf = defaults()
        self.port = int(self.conf["node"]["udp_port"])
        self.tun = str(self.conf["node"]["tun_device"])
        self.responder: subprocess.Popen[bytes] | None = None
        self.responder_log = workdir / "tun_responder.log"
        self.server: subprocess.Popen[bytes] | None = None
        self.created: list[str] = []

    # -- running things --------------------------------------------------------------------

    def run(self, ns: str, *argv: str, check: bool = True, stdin: str | None = None,
            timeout: float = 15) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(["ip", "netns", "exec", ns, *argv], input=stdin,
                                capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{ns}: {' '.join(argv)} -> {result.returncode}\n"
                                 f"{result.stdout}{result.stderr}")
        return result

    def run_all(self, ns: str, commands: list[list[str]]) -> None:
        for argv in commands:
            self.run(ns, *argv)

    def nft(self, ns: str, text: str) -> None:
        self.run(ns, "nft", "-f", "-", stdin=text)

    def nft_json(self, ns: str, *what: str) -> list[dict[str, Any]]:
        return json.loads(self.run(ns, "nft", "-j", "list", *what).stdout)["nftables"]

    # -- building and tearing down ---------------------------------------------------------

    def build(self) -> None:
        for ns in (self.personal, self.proxy, self.uplink):
            subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
            self.created.append(ns)
            self.run(ns, "ip", "link", "set", "dev", "lo", "up")
        self.wire()
        self.script.write_text(render_firewall(self.conf))
        self.script.chmod(0o755)
        # Qubes' order in sys-cjdns: antispoof + qubes-iptables, qubes-firewall (init, then the
        # qubes-firewall.d scripts), qubes-network; later personal starts and its vif comes online.
        self.nft(self.proxy, qubes_nft.BASE_RULESET.read_text())
        self.run_firewall_script()
        self.run_all(self.proxy, qubes_nft.setup_ip(SYS_CJDNS, SYS_FIREWALL))
        self.run_all(self.proxy, qubes_nft.network_proxy_setup())
        self.nft(self.proxy, qubes_nft.vif_online_nft(PERSONAL))
        self.run_all(self.proxy, qubes_nft.vif_online(SYS_CJDNS, PERSONAL))
        self.nft(self.proxy, qubes_nft.qubes_firewall_for(PERSONAL))
        self.run_all(self.personal, qubes_nft.setup_ip(PERSONAL, SYS_CJDNS))
        self.run_all(self.uplink, qubes_nft.vif_online(SYS_FIREWALL, SYS_CJDNS))
        self.nft(self.uplink, LEAK_WATCH)
        self.start_server()
        self.start_tun()

    def wire(self) -> None:
        """Xen's vif pairs as veth pairs, each end created directly inside its namespace."""
        for (qube, netvm_ns, qube_ns) in ((PERSONAL, self.proxy, self.personal),
                                          (SYS_CJDNS, self.uplink, self.proxy)):
            subprocess.run(
                ["ip", "link", "add", qube.vif, "netns", netvm_ns, "address", "fe:ff:ff:ff:ff:ff",
                 "type", "veth", "peer", "name", "eth0", "netns", qube_ns, "address", qube.mac],
                check=True, capture_output=True)

    def destroy(self) -> None:
        for proc in (self.responder, self.server):
            if proc is None:
                continue
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=5)
            if proc.stdout is not None:
                proc.stdout.close()
        for ns in self.created:
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True)

    # -- processes in sys-cjdns ------------------------------------------------------------

    def start_server(self) -> None:
        closed = self.port + 1 if self.port < 65535 else self.port - 1
        self.closed_port = closed
        self.server = subprocess.Popen(
            ["ip", "netns", "exec", self.proxy, sys.executable, "-c", SERVER,
             f"{self.port},{closed}", str(closed)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        assert self.server.stdout is not None
        assert self.server.stdout.readline().strip() == b"READY"

    def start_tun(self) -> None:
        if self.responder is not None and self.responder.poll() is None:
            return
        log = self.responder_log.open("ab")
        self.responder = subprocess.Popen(
            ["ip", "netns", "exec", self.proxy, sys.executable, str(RESPONDER),
             "--name", self.tun, "--address", self.node, "--remote", self.remote],
            stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        log.close()
        deadline = time.monotonic() + 10
        while "READY" not in self.responder_text():
            if self.responder.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"tun_responder did not start:\n{self.responder_text()}")
            time.sleep(0.02)

    def stop_tun(self) -> None:
        if self.responder is None or self.responder.poll() is not None:
            return
        self.responder.send_signal(signal.SIGTERM)
        assert self.responder.wait(timeout=5) == 0, self.responder_text()

    def responder_text(self) -> str:
        return self.responder_log.read_text() if self.responder_log.exists() else ""

    def run_firewall_script(self) -> subprocess.CompletedProcess[str]:
        result = self.run(self.proxy, str(self.script), check=False)
        assert (result.returncode, result.stderr) == (0, ""), result.stderr
        return result

    # -- observations ----------------------------------------------------------------------

    def ping(self, address: str, count: int = 1, wait: int = 2) -> bool:
        result = self.run(self.personal, "ping", "-6", "-n", "-c", str(count), "-i", "0.2",
                          "-W", str(wait), address, check=False)
        return result.returncode == 0

    def probe(self, ns: str, specs: list[dict[str, Any]]) -> list[str]:
        return json.loads(self.run(ns, sys.executable, "-c", PROBE, json.dumps(specs)).stdout)

    def leaked(self) -> int:
        """IPv6 packets for the mesh that reached the uplink so far."""
        (counter,) = [e["counter"] for e in self.nft_json(self.uplink, "counter", "ip6",
                                                          "cjdns-leak-watch", "mesh") if "counter" in e]
        return int(counter["packets"])

    def guard_drops(self) -> int:
        """Packets dropped so far by the formula's forward rule (fc00::/8 not via the tun)."""
        rules = [e["rule"] for e in self.nft_json(self.proxy, "chain", "ip6", "qubes", "cjdns-forward")
                 if "rule" in e]
        return sum(x["counter"]["packets"] for r in rules for x in r["expr"] if "counter" in x)

    def routes(self, *selector: str) -> str:
        return self.run(self.proxy, "ip", "-6", "route", "show", *selector).stdout

    def chain(self, family: str, chain: str) -> list[str]:
        """Rule lines of one chain in Qubes' table, as nft prints them."""
        text = self.run(self.proxy, "nft", "list", "chain", family, "qubes", chain).stdout
        return [line.strip() for line in text.splitlines()
                if line.strip() and not line.strip().startswith(("table", "chain", "}"))]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)
    delete_stale_namespaces()
    gw = Gateway(tmp_path_factory.mktemp("gateway"))
    try:
        gw.build()
        yield gw
    finally:
        gw.destroy()


@pytest.fixture
def tun_up(gateway: Gateway) -> Gateway:
    gateway.start_tun()
    return gateway


@pytest.fixture
def tun_down(gateway: Gateway) -> Iterator[Gateway]:
    gateway.stop_tun()
    yield gateway
    # Whatever the test took away, the script puts back.
    gateway.run_firewall_script()


# -- the rendered script (no root needed) -----------------------------------------------------

def test_rendered_script_takes_port_and_device_from_defaults() -> None:
    conf = defaults()
    conf["node"] = {**conf["node"], "udp_port": 51234, "tun_device": "cjdns7"}
    text = render_firewall(conf)
    assert text.startswith("#!/bin/sh\n")
    assert "port='51234'" in text and "tun='cjdns7'" in text
    assert "47300" not in text and "tun0" not in text


@pytest.mark.parametrize("key, value", [("tun_device", "tun0'; reboot; '"), ("tun_device", ""),
                                        ("tun_device", "a" * 16), ("udp_port", "47300; reboot"),
                                        ("udp_port", 0), ("udp_port", 70000)])
def test_template_refuses_values_that_are_not_names_or_ports(key: str, value: Any) -> None:
    conf = defaults()
    conf["node"] = {**conf["node"], key: value}
    with pytest.raises(jinja2.TemplateError, match=f"cjdns.node.{key}"):
        render_firewall(conf)


# -- real packets -----------------------------------------------------------------------------

def test_personal_reaches_node_and_remote_through_masquerade(tun_up: Gateway) -> None:
    gw = tun_up
    before = gw.responder_text()
    # The node's own address is local to sys-cjdns: its kernel answers (Qubes' input allows ICMPv6).
    assert gw.ping(gw.node), "node address unreachable from personal"
    # The remote one goes out through tun0; the responder plays the mesh.
    assert gw.ping(gw.remote), "remote fc address unreachable from personal"
    echoes = gw.responder_text()[len(before):].splitlines()
    assert f"echo {gw.node} -> {gw.remote} id=" in "\n".join(echoes), echoes
    assert not [line for line in echoes if PERSONAL.ip6 in line or line.startswith("bad-checksum")], echoes
    assert gw.leaked() == 0


def test_peering_port_is_open_from_uplink_only(tun_up: Gateway) -> None:
    gw = tun_up
    port, closed = gw.port, gw.closed_port

    def spec(host: str, proto: str, p: int, timeout: float = 0.8) -> dict[str, Any]:
        return {"host": host, "proto": proto, "port": p, "timeout": timeout}

    from_uplink = gw.probe(gw.uplink, [
        spec(SYS_CJDNS.ip4, "udp", port), spec(SYS_CJDNS.ip6, "udp", port),
        spec(SYS_CJDNS.ip4, "udp", closed), spec(SYS_CJDNS.ip6, "udp", closed),
        spec(SYS_CJDNS.ip4, "tcp", closed), spec(SYS_CJDNS.ip6, "tcp", closed),
    ])
    assert from_uplink == ["reply", "reply", "timeout", "timeout", "timeout", "timeout"]
    # Downstream qubes stay away from their netvm's services: Qubes rejects them (ICMP
    # host-prohibited / ICMPv6 admin-prohibited) and the formula's accept excludes group 2.
    from_personal = gw.probe(gw.personal, [spec(SYS_CJDNS.ip4, "udp", port),
                                           spec(SYS_CJDNS.ip6, "udp", port)])
    assert from_personal == ["error:EHOSTUNREACH", "error:EACCES"]


def test_rerunning_the_script_keeps_one_copy_and_other_rules(tun_up: Gateway) -> None:
    gw = tun_up
    # Someone else's rules in the user chains, and a stray duplicate of our jump.
    gw.nft(gw.proxy, "add rule ip6 qubes custom-input tcp dport 2222 accept comment \"someone-else\"\n"
                     "insert rule ip6 qubes custom-forward meta mark 0x42 accept comment \"someone-else\"\n"
                     "add rule ip qubes custom-input jump cjdns-input\n")
    gw.run_firewall_script()
    gw.run_firewall_script()
    assert gw.chain("ip", "custom-input") == ["jump cjdns-input"]
    assert gw.chain("ip6", "custom-input") == ["jump cjdns-input",
                                               'tcp dport 2222 accept comment "someone-else"']
    # An accept put before the mesh drop would let mesh traffic past it: the jump moves back first.
    assert gw.chain("ip6", "custom-forward") == ["jump cjdns-forward",
                                                 'meta mark 0x00000042 accept comment "someone-else"']
    # Not from the qubes behind (group 2), nor from the mesh itself (the tun device).
    assert gw.chain("ip", "cjdns-input") == [f'iifgroup != 2 iifname != "{gw.tun}" udp dport {gw.port} accept']
    assert gw.chain("ip6", "cjdns-input") == [f'iifgroup != 2 iifname != "{gw.tun}" udp dport {gw.port} accept']
    assert [re.sub(r"packets \d+ bytes \d+", "", rule) for rule in gw.chain("ip6", "cjdns-forward")] \
        == [f'ip6 daddr {MESH} oifname != "{gw.tun}" counter  drop']
    routes = gw.routes(MESH).splitlines()
    assert len(routes) == 2, routes
    assert [r for r in routes if r.startswith(f"blackhole {MESH}") and "metric 500" in r], routes
    # The blackhole route (re)added while cjdroute runs must not shadow its tun route.
    assert gw.ping(gw.remote)


def test_mesh_traffic_is_dropped_while_tun_is_down(tun_down: Gateway) -> None:
    gw = tun_down
    assert gw.run(gw.proxy, "ip", "link", "show", gw.tun, check=False).returncode != 0
    leaked = gw.leaked()
    assert not gw.ping(gw.remote, count=2, wait=1)
    assert not gw.ping(gw.node, count=1, wait=1)
    assert gw.leaked() == leaked, "mesh traffic reached the uplink"
    # ...although the clear default route is there; the blackhole route stopped it before nft.
    assert f"default via {SYS_FIREWALL.ip6} dev eth0" in gw.routes("default")
    assert gw.routes(MESH).startswith(f"blackhole {MESH}")


def test_forward_rule_alone_still_stops_the_leak(tun_down: Gateway) -> None:
    gw = tun_down
    gw.run(gw.proxy, "ip", "-6", "route", "del", "blackhole", MESH, "metric", "500")
    leaked, drops = gw.leaked(), gw.guard_drops()
    assert not gw.ping(gw.remote, count=2, wait=1)
    assert gw.leaked() == leaked
    assert gw.guard_drops() >= drops + 2


def test_without_either_guard_the_leak_is_visible(tun_down: Gateway) -> None:
    """Control: proves the counter in `uplink` would see a leak, so the zeros above mean something."""
    gw = tun_down
    gw.run(gw.proxy, "ip", "-6", "route", "del", "blackhole", MESH, "metric", "500")
    gw.nft(gw.proxy, "flush chain ip6 qubes cjdns-forward\n")
    leaked = gw.leaked()
    assert not gw.ping(gw.remote, count=2, wait=1)
    assert gw.leaked() >= leaked + 2
