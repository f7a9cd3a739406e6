#!/usr/bin/env python3
"""Test-only stand-in for cjdroute's tun side: a tun device that answers ICMPv6 echo.

Sets the device up as cjdroute v22.3 does on Linux (interface/tuntap/TUNInterface_linux.c,
admin/angel/Core.c): TUNSETIFF with the configured name, link up, the node's address with
prefix /8 (the kernel then routes fc00::/8 to the device at metric 256), MTU 1304. It answers
echo requests addressed to the node itself or to any --remote address, as if the mesh had
carried them there and back, and logs each one on stdout:

    READY tun0 fc74:...:6f9d/8 mtu 1304
    echo fc74:...:6f9d -> fc0f:...:1 id=17 seq=1
    bad-checksum fd09:... -> fc0f:...   (request dropped: its ICMPv6 checksum is wrong)

Frames carry the 4-byte tun packet-information header, because cjdroute opens the device with
IFF_TUN alone (no IFF_NO_PI); pass --no-pi for the headerless variant. SIGTERM/SIGINT: close
the device (the kernel removes it and its routes) and exit 0.

Run as root inside the network namespace that plays the gateway qube:
    ip netns exec sys-cjdns python3 tun_responder.py --name tun0 --address fc.. --remote fc..
"""

from __future__ import annotations

import argparse
import fcntl
import ipaddress
import os
import signal
import struct
import subprocess
import sys
from types import FrameType

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
ETH_P_IPV6 = 0x86DD
IPPROTO_ICMPV6 = 58
ECHO_REQUEST = 128
ECHO_REPLY = 129
MTU = 1304  # cjdns DEFAULT_MTU: 1492 minus its worst-case per-packet overhead
PREFIX_LEN = 8
IPV6_HEADER = 40


class Stop(Exception):
    """Raised from the signal handler to leave the blocking read."""


def inet_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def icmpv6_checksum(src: bytes, dst: bytes, message: bytes) -> int:
    """RFC 4443 §2.3: over the pseudo-header (RFC 8200 §8.1) and the message."""
    pseudo = src + dst + struct.pack("!I3xB", len(message), IPPROTO_ICMPV6)
    return inet_checksum(pseudo + message)


def echo_reply(packet: bytes, answer_for: frozenset[bytes]) -> tuple[str, bytes | None]:
    """Returns (log line or "", reply packet or None) for one IPv6 packet read from the tun."""
    if len(packet) < IPV6_HEADER + 8 or packet[0] >> 4 != 6 or packet[6] != IPPROTO_ICMPV6:
        return "", None
    payload_len = struct.unpack_from("!H", packet, 4)[0]
    src, dst = packet[8:24], packet[24:40]
    message = packet[IPV6_HEADER:IPV6_HEADER + payload_len]
    if message[0] != ECHO_REQUEST or dst not in answer_for:
        return "", None
    pair = f"{ipaddress.IPv6Address(src)} -> {ipaddress.IPv6Address(dst)}"
    if icmpv6_checksum(src, dst, message) != 0:
        return f"bad-checksum {pair}", None
    ident, seq = struct.unpack_from("!HH", message, 4)
    reply = bytes([ECHO_REPLY, 0, 0, 0]) + message[4:]
    reply = reply[:2] + struct.pack("!H", icmpv6_checksum(dst, src, reply)) + reply[4:]
    header = struct.pack("!IHBB", 6 << 28, len(reply), IPPROTO_ICMPV6, 64) + dst + src
    return f"echo {pair} id={ident} seq={seq}", header + reply


def open_tun(name: str, packet_info: bool) -> int:
    flags = IFF_TUN if packet_info else IFF_TUN | IFF_NO_PI
    fd = os.open("/dev/net/tun", os.O_RDWR)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), flags))
    except OSError:
        os.close(fd)
        raise
    return fd


def configure(name: str, address: str, mtu: int) -> None:
    """Same order as cjdroute: up, address/8, MTU."""
    for argv in (
        ["ip", "link", "set", "dev", name, "up"],
        ["ip", "-6", "address", "add", f"{address}/{PREFIX_LEN}", "dev", name],
        ["ip", "link", "set", "dev", name, "mtu", str(mtu)],
    ):
        subprocess.run(argv, check=True)


def serve(fd: int, answer_for: frozenset[bytes], packet_info: bool) -> None:
    pi = struct.pack("!HH", 0, ETH_P_IPV6)
    while True:
        frame = os.read(fd, 65536)
        packet = frame[4:] if packet_info else frame
        line, reply = echo_reply(packet, answer_for)
        if line:
            print(line, flush=True)
        if reply is not None:
            os.write(fd, pi + reply if packet_info else reply)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="tun0", help="tun device name (router.interface.tunDevice)")
    parser.add_argument("--address", required=True, help="the node's fc00::/8 address")
    parser.add_argument("--remote", action="append", default=[], help="another fc address to answer for")
    parser.add_argument("--mtu", type=int, default=MTU)
    parser.add_argument("--no-pi", action="store_true", help="open with IFF_NO_PI")
    args = parser.parse_args(argv)
    for text in [args.address, *args.remote]:
        if ipaddress.IPv6Address(text) not in ipaddress.IPv6Network("fc00::/8"):
            parser.error(f"{text}: not in fc00::/8")
    return args


def _raise_stop(_signum: int, _frame: FrameType | None) -> None:
    raise Stop


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    packet_info = not args.no_pi
    answer_for = frozenset(ipaddress.IPv6Address(a).packed for a in [args.address, *args.remote])
    fd = open_tun(args.name, packet_info)
    try:
        configure(args.name, args.address, args.mtu)
        print(f"READY {args.name} {args.address}/{PREFIX_LEN} mtu {args.mtu}", flush=True)
        serve(fd, answer_for, packet_info)
    except Stop:
        pass
    finally:
        os.close(fd)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
