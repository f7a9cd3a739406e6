## cjdns.dom0: the qubes of the manual, made in dom0: the template cjdns-gw (a clone of the
## Debian template, installed first if missing), the network-providing sys-cjdns with IPv6
## and the Qubes service flag that lets cjdns run, and the AppVMs routed through it.
## It touches only qubes it made (marked with the feature cjdns-formula-owned) or that pillar
## adopts, and the clients' netvm (recorded first, given back on uninstall).
## A dry run (test=True) writes nothing (see README "Dry runs in dom0").
## Pillar: cjdns:qubes.
## Execute: qubesctl state.apply cjdns.dom0
include:
  - .owned
  - .template
  - .proxy
  - .clients
