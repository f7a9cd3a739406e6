## cjdns.template: the TemplateVM cjdns-gw gets the packages the formula and sys-cjdns need,
## cjdroute, its systemd unit (gated on the Qubes service flag) and the bind-dirs entry for the
## config directory, and holds no private key.
## Pillar: cjdns:packages, cjdns:install, cjdns:paths, cjdns:qubes:service_flag.
## Execute: qubesctl --skip-dom0 --targets=cjdns-gw state.apply cjdns.template
include:
  - .packages
  - .install
  - .manual
  - .no-keys
  - .service
  - .bind-dirs
