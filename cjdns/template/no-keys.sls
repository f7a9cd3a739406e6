## cjdns.template.no-keys: the template holds no cjdns private key. Any key found (the
## manual's /etc/cjdroute.conf, or the config directory) is removed and its public half
## recorded, so qubes made from the template can tell it is not theirs.
## Execute: qubesctl --skip-dom0 --targets=cjdns-gw state.apply cjdns.template.no-keys
{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import cjdns, target with context %}
{%- from tplroot ~ "/libguard.jinja" import refuse %}
{%- if target != "template" %}
{{ refuse(sls, "the Qubes template (" ~ cjdns.qubes.template ~ ")", target) }}
{%- else %}
include:
  - {{ tplroot }}.pillar
  - .packages

cjdns-template-no-private-keys:
  cjdns.template_keys_absent:
    - name: {{ cjdns.paths.template_keys | json }}
    - paths:
      - {{ cjdns.paths.manual_config | json }}
      - {{ cjdns.paths.config | json }}
    - confdir: {{ cjdns.paths.confdir | json }}
    - require:
      - cjdns: cjdns-pillar-valid
      # The public half is found with X25519 (python3-cryptography).
      - pkg: cjdns-template-packages
{%- endif %}
