## cjdns.proxy: sys-cjdns, the qube that provides cjdns to the qubes behind it: its own
## identity (never the template's key), its managed settings and peers, the firewall rules
## for the peering port and fail-closed mesh routing, and cjdroute running.
## Pillar: cjdns:node, cjdns:paths.
## Execute: qubesctl --skip-dom0 --targets=sys-cjdns state.apply cjdns.proxy
include:
  - .identity
  - .config
  - .firewall
  - .service
