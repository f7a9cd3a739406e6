## cjdns.dom0.clients: the AppVMs listed in pillar use sys-cjdns as their netvm.
## Pillar: cjdns:qubes:clients (list of qube names).
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
  - .proxy
{%- for client in q.clients %}

cjdns-dom0-client-{{ client }}-netvm:
  cjdns.qvm_settings:
    - name: {{ client }}
    - prefs:
        netvm: {{ q.proxy }}
    - require:
      - cjdns: cjdns-pillar-valid
      - cjdns: cjdns-dom0-proxy-settings
{%- endfor %}
{%- endif %}
