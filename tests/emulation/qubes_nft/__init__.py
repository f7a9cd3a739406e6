"""Test-only emulation of Qubes OS networking inside a network-providing qube.

Reproduces what QubesOS/qubes-core-agent-linux v4.3.46 (R4.3) does, as nftables text and `ip`
command lines to run inside network namespaces:

- `BASE_RULESET` (base.nft): the tables a provider has before any downstream qube connects
  (qubes-antispoof.service, qubes-iptables, qubes-firewall's init, qubes-setup-dnat-to-ns).
- `setup_ip`: network/setup-ip for a qube's uplink `eth0` (group 1, /32 and /128 addresses, the
  netvm as a permanent neighbour with MAC fe:ff:ff:ff:ff:ff, on-link default routes).
- `vif_online` + `vif_online_nft`: network/vif-route-qubes `online` for one downstream qube.
- `qubes_firewall_for`: what qubes-firewall (qubesagent/firewall.py) loads for that qube when
  dom0 lists it with the default qvm-firewall policy (accept everything).
- `network_proxy_setup`: vm-systemd/network-proxy-setup.sh's forwarding switches.

Deliberate differences, all for speed or this kernel: IPv6 addresses get `nodad` (Xen's vif needs
no DAD wait); no conntrack purge (namespaces start empty); no inet qubes-nat-accel flowtable.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

BASE_RULESET = Path(__file__).with_name("base.nft")

# The MAC every qube sees for its netvm (setup-ip `netvm_mac`; Xen's backend vif address).
NETVM_MAC = "fe:ff:ff:ff:ff:ff"
# vif-route-qubes: route metric = MAX_DOMID - domid, so later interfaces win.
MAX_DOMID = 32752

Command = list[str]


@dataclass(frozen=True)
class Qube:
    """A qube's addresses as dom0 assigns them (qubes/vm/mix/net.py)."""

    name: str
    qid: int
    domid: int

    @property
    def ip4(self) -> str:
        return f"10.137.{self.qid >> 8}.{self.qid & 0xFF}"

    @property
    def ip6(self) -> str:
        return f"fd09:24ef:4179::a89:{self.qid:x}"

    @property
    def mac(self) -> str:
        return f"00:16:3e:5e:6c:{self.qid:02x}"

    @property
    def vif(self) -> str:
        """Name of this qube's (first) interface inside its netvm."""
        return f"vif{self.domid}.0"


def _proc_write(path: str, value: str) -> Command:
    return ["sh", "-c", f"echo {value} > /proc/sys/{path}"]


def setup_ip(qube: Qube, gateway: Qube, iface: str = "eth0") -> list[Command]:
    """network/setup-ip configure_network() for `qube`, whose netvm is `gateway`."""
    return [
        ["ip", "address", "replace", f"{qube.ip4}/32", "dev", iface],
        ["ip", "neighbour", "replace", "to", gateway.ip4, "dev", iface,
         "lladdr", NETVM_MAC, "nud", "permanent"],
        ["ip", "address", "replace", f"{qube.ip6}/128", "dev", iface, "nodad"],
        ["ip", "neighbour", "replace", "to", gateway.ip6, "dev", iface,
         "lladdr", NETVM_MAC, "nud", "permanent"],
        ["ip", "link", "set", "dev", iface, "group", "1", "up"],
        ["ip", "route", "replace", "to", "unicast", gateway.ip4, "dev", iface, "scope", "link"],
        ["ip", "-6", "route", "replace", "to", "unicast", f"{gateway.ip6}/128", "dev", iface,
         "scope", "link"],
        ["ip", "route", "replace", "to", "unicast", "default", "via", gateway.ip4, "dev", iface,
         "onlink"],
        ["ip", "-6", "route", "replace", "to", "unicast", "default", "via", gateway.ip6,
         "dev", iface, "onlink"],
    ]


def network_proxy_setup() -> list[Command]:
    """vm-systemd/network-proxy-setup.sh with /qubes-netvm-gateway6 set (the `ipv6` feature)."""
    return [
        _proc_write("net/ipv4/ip_forward", "1"),
        _proc_write("net/ipv6/conf/all/forwarding", "1"),
    ]


def vif_online_nft(downstream: Qube) -> str:
    """The antispoof set elements vif-route-qubes adds for one downstream qube."""
    vif = downstream.vif
    return (
        f'add element ip qubes allowed {{ "{vif}" . {downstream.ip4} }}\n'
        f"add element ip qubes downstream {{ {downstream.ip4} }}\n"
        f'add element ip6 qubes allowed {{ "{vif}" . {downstream.ip6} }}\n'
        f"add element ip6 qubes downstream {{ {downstream.ip6} }}\n"
    )


def vif_online(provider: Qube, downstream: Qube) -> list[Command]:
    """vif-route-qubes `online` in the provider, except the nft part (see vif_online_nft)."""
    vif = downstream.vif
    metric = str(MAX_DOMID - downstream.domid)
    return [
        _proc_write(f"net/ipv4/conf/{vif}/proxy_arp", "1"),
        ["ip", "neighbour", "add", "to", downstream.ip4, "dev", vif,
         "lladdr", downstream.mac, "nud", "permanent"],
        ["ip", "neighbour", "add", "to", downstream.ip6, "dev", vif,
         "lladdr", downstream.mac, "nud", "permanent"],
        ["ip", "link", "set", "dev", vif, "group", "2", "up"],
        ["ip", "route", "add", downstream.ip4, "dev", vif, "metric", metric],
        ["ip", "route", "add", downstream.ip6, "dev", vif, "metric", metric],
        ["ip", "addr", "add", f"{provider.ip4}/32", "dev", vif],
        ["ip", "addr", "add", f"{provider.ip6}/128", "dev", vif, "nodad"],
        _proc_write(f"net/ipv6/conf/{vif}/proxy_ndp", "1"),
    ]


def _firewall_chain(address: str) -> str:
    return "qbs-" + address.replace(".", "-").replace(":", "-")


def qubes_firewall_for(downstream: Qube, dns4: tuple[str, ...] = ("10.139.1.1", "10.139.1.2")) -> str:
    """qubes-firewall for one downstream qube with dom0's default rules (policy accept).

    create_chain + prepare_rules for /qubes-firewall/<ip> and /qubes-firewall/<ip6>, then
    update_connected_ips for /connected-ips and /connected-ips6. `dns4` is this qube's
    resolv.conf; it has no IPv6 nameserver, so firewall.py comments out the ip6 element line.
    """
    text = ""
    for family, address, dns in (("ip", downstream.ip4, dns4), ("ip6", downstream.ip6, ())):
        chain = _firewall_chain(address)
        elements = f"add element {family} qubes-firewall dns-addr {{ {', '.join(dns)} }}\n" if dns else ""
        text += (
            f"table {family} qubes-firewall {{\n"
            f"  chain {chain} {{\n  }}\n"
            f"  chain qubes-forward {{\n    {family} saddr {address} jump {chain}\n  }}\n"
            f"}}\n"
            f"flush set {family} qubes-firewall dns-addr\n"
            f"{elements}"
            f"flush chain {family} qubes-firewall {chain}\n"
            f"table {family} qubes-firewall {{\n  chain {chain} {{\n    accept\n  }}\n}}\n"
            f"flush chain {family} qubes-firewall prerouting\n"
            f"flush chain {family} qubes-firewall postrouting\n"
            f"table {family} qubes-firewall {{\n"
            f'  chain prerouting {{\n    iifname != "vif*" {family} saddr {{ {address} }} drop\n  }}\n'
            f'  chain postrouting {{\n    oifname != "vif*" {family} daddr {{ {address} }} drop\n  }}\n'
            f"}}\n"
        )
    return text
