## cjdns.dom0.owned: before anything changes in dom0, refuses qubes the formula must not touch:
## a cjdns-gw or sys-cjdns that exists without the formula's mark (feature cjdns-formula-owned,
## set when the formula makes them) unless pillar adopts it, qubes of the wrong class, a netvm
## loop, and clients that are templates, disposable templates, netvms or missing.
## Pillar: cjdns:qubes (source_template, template, proxy, proxy_netvm, clients, adopt).
## Execute: qubesctl state.apply cjdns.dom0.owned
{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import cjdns, target with context %}
{%- from tplroot ~ "/libguard.jinja" import refuse %}
{%- set q = cjdns.qubes %}
{%- if target != "dom0" %}
{{ refuse(sls, "dom0", target) }}
{%- else %}
include:
  - {{ tplroot }}.pillar

cjdns-dom0-qubes-owned:
  cjdns.qubes_owned:
    - name: cjdns
    - template: {{ q.template | json }}
    - proxy: {{ q.proxy | json }}
    - source_template: {{ q.source_template | json }}
    - proxy_netvm: {{ q.proxy_netvm | json }}
    - clients: {{ q.clients | json }}
    - adopt: {{ q.adopt | json }}
    - require:
      - cjdns: cjdns-pillar-valid
{%- endif %}
