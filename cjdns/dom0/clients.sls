## cjdns.dom0.clients: the AppVMs listed in pillar use sys-cjdns as their netvm; the netvm each
## had before is recorded on sys-cjdns (feature cjdns-formula-client.<qube>). A qube dropped
## from the list gets its recorded netvm back while it still uses sys-cjdns. A running client
## is not switched to a halted sys-cjdns (Qubes refuses that); the comment says what to do.
## Pillar: cjdns:qubes:clients (list of qube names), proxy.
## Execute: qubesctl state.apply cjdns.dom0.clients
{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import cjdns, target with context %}
{%- from tplroot ~ "/libguard.jinja" import refuse %}
{%- set q = cjdns.qubes %}
{%- if target != "dom0" %}
{{ refuse(sls, "dom0", target) }}
{%- else %}
include:
  - {{ tplroot }}.pillar
  - .owned
  - .proxy

cjdns-dom0-clients:
  cjdns.qvm_clients:
    - name: {{ q.proxy | json }}
    - clients: {{ q.clients | json }}
    - require:
      - cjdns: cjdns-dom0-qubes-owned
      - cjdns: cjdns-dom0-proxy-settings
{%- endif %}
