## cjdns.proxy.service: cjdroute running in sys-cjdns, restarted when its config changes.
## Execute: qubesctl --skip-dom0 --targets=sys-cjdns state.apply cjdns.proxy.service
{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import cjdns, target with context %}
{%- from tplroot ~ "/libguard.jinja" import refuse %}
{%- if target != "app" %}
{{ refuse(sls, "the Qubes AppVM " ~ cjdns.qubes.proxy, target) }}
{%- else %}
include:
  - {{ tplroot }}.pillar
  - .config

cjdns-proxy-running:
  service.running:
    - name: {{ cjdns.node.service }}
    - watch:
      - cjdns: cjdns-proxy-identity
      - cjdns: cjdns-proxy-config
      - cjdns: cjdns-proxy-peers
    - require:
      - cjdns: cjdns-pillar-valid
{%- endif %}
