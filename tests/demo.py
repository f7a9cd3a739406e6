"""`make demo`: the formula's main job on an emulated Qubes host, with pillar.example.

dom0 (salt-call --local with a test double of Qubes' qvm Salt module) makes cjdns-gw and
sys-cjdns; cjdns-gw and sys-cjdns are Debian 13 systems booted under their own systemd, with
Qubes' storage model, reached by salt-ssh as qubesctl reaches real qubes (tests/support/).
Replaced, because they cannot run here: Xen and qrexec (containers and nsenter), the upstream
cjdns repository (a local one whose ./do builds a stand-in cjdroute in no time), cjdroute.
"""

import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support.qubes_lab import Lab, namespaces_work  # noqa: E402
from support.saltenv import changed, state_results  # noqa: E402

import qubes_db  # noqa: E402  (on sys.path through qubes_lab)


def step(title: str) -> None:
    print(f"\n== {title}")


def applied(lab: Lab, where: str, sls: str, *args: str) -> dict:
    started = time.monotonic()
    result = lab.apply(where, sls, *args)
    results = state_results(result.data) if isinstance(result.data, dict) else []
    failed = [r for r in results if r["result"] is False]
    if result.rc != 0 or failed:
        print(result.stdout[-4000:], result.stderr[-2000:], file=sys.stderr)
        raise SystemExit(f"{where}: state.apply {sls} failed")
    print(f"   {where:9} state.apply {sls:14} {len(results)} states, {len(changed(result.data))} changed "
          f"({time.monotonic() - started:.1f} s)")
    return changed(result.data)


def main() -> int:
    if not namespaces_work():
        print("make demo needs root, systemd-nspawn and debootstrap (apt-get install systemd-container "
              "debootstrap): run it as root.", file=sys.stderr)
        return 2
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cjdns-demo-") as tmp:
        lab = Lab(Path(tmp) / "lab")
        try:
            step("1. dom0: qubesctl state.apply cjdns.dom0 (made: cjdns-gw, sys-cjdns; personal now uses sys-cjdns)")
            applied(lab, "dom0", "cjdns.dom0")
            for name in ("cjdns-gw", "sys-cjdns", "personal"):
                print(f"   {name}:")
                keys = ["template", "label", "netvm", "provides_network", "memory", "maxmem", "vcpus",
                        "autostart", "include_in_backups"]
                prefs = {k: qubes_db.pref(lab.db, name, k) for k in keys if name != "cjdns-gw" or k in ("label",)}
                print("     prefs   " + ", ".join(f"{k}={v}" for k, v in prefs.items()))
                feats = qubes_db.features(lab.db, name)
                shown = {k: v for k, v in feats.items() if k == "ipv6" or k.startswith("service.")}
                if shown:
                    print("     features " + ", ".join(f"{k}={v!r}" for k, v in shown.items()))

            step("2. template: qubesctl --skip-dom0 --targets=cjdns-gw state.apply cjdns.template")
            applied(lab, "template", "cjdns.template")

            step("3. sys-cjdns: qubesctl --skip-dom0 --targets=sys-cjdns state.apply cjdns.proxy")
            started_at = time.monotonic()
            lab.proxy.boot()  # autostart, as qvm-start would
            print(f"   sys-cjdns booted in {time.monotonic() - started_at:.1f} s "
                  f"(systemd: {lab.proxy.run(['systemctl', 'is-system-running']).stdout.strip()})")
            applied(lab, "proxy", "cjdns.proxy")
            ident = lab.call("proxy", "cjdns.identity").data
            print(f"   public key  {ident['public_key']}")
            print(f"   fc address  {ident['ipv6']}")
            peers = lab.call("proxy", "cjdns.peers").data
            print("   configured peers (passwords never shown):")
            for endpoint, peer in peers.items():
                print(f"     {endpoint:24} {peer.get('peerName', ''):8} {peer['ipv6']}  password={peer['password']}")

            step("4. second apply everywhere: nothing to change")
            total = 0
            for where, sls in (("dom0", "cjdns.dom0"), ("template", "cjdns.template"), ("proxy", "cjdns.proxy")):
                total += len(applied(lab, where, sls))
            print(f"   changes on the second apply: {total}")

            step("5. status: qubesctl --skip-dom0 --targets=sys-cjdns cjdns.status")
            status = lab.call("proxy", "cjdns.status").data
            print(f"   address {status['ipv6']} up on {', '.join(status['address_on']) or 'nothing'}")
            admin = status["admin"]
            print(f"   admin API {'answers' if admin['reachable'] else 'does not answer: ' + admin.get('error', '')}")
            if status.get("peers"):
                print(f"   peers: {status['peers_configured']} configured, {status['peers']['established']} established, "
                      f"by state {json.dumps(status['peers']['by_state'])}")
            if total:
                raise SystemExit("the second apply changed something")
        finally:
            lab.cleanup()
    print(f"\ndemo finished in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
