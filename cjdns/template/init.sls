## cjdns.template: the TemplateVM cjdns-gw gets cjdroute, its systemd unit (gated on the Qubes
## service flag) and the bind-dirs entry for the config directory, and holds no private key.
## Pillar: cjdns:install, cjdns:paths, cjdns:qubes:service_flag.
## Execute: qubesctl --skip-dom0 --targets=cjdns-gw state.apply cjdns.template
include:
  - .install
  - .manual
  - .no-keys
  - .service
  - .bind-dirs
