## cjdns.absent.dom0: the clients go back to the default netvm; sys-cjdns no longer runs cjdns
## (service flag off, no autostart). With cjdns:wipe_identity, sys-cjdns and cjdns-gw are
## removed, and with them sys-cjdns's key.
## Execute: qubesctl state.apply cjdns.absent.dom0
{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import cjdns, target with context %}
{%- from tplroot ~ "/libguard.jinja" import refuse %}
{%- set q = cjdns.qubes %}
{%- if target != "dom0" %}
{{ refuse(sls, "dom0", target) }}
{%- else %}
include:
  - {{ tplroot }}.pillar
{%- for client in q.clients %}

cjdns-absent-client-{{ client }}-netvm:
  cjdns.qvm_settings:
    - name: {{ client }}
    - prefs:
        netvm: '*default*'
    - require:
      - cjdns: cjdns-pillar-valid
{%-   if cjdns.wipe_identity %}
    - require_in:
      - qvm: cjdns-absent-proxy-removed
{%-   endif %}
{%- endfor %}
{%- if salt["qvm.check"](q.proxy) %}

cjdns-absent-proxy-stopped-running-cjdns:
  cjdns.qvm_settings:
    - name: {{ q.proxy }}
    - prefs:
        autostart: false
    - services_disable:
      - {{ q.service_flag }}
    - require:
      - cjdns: cjdns-pillar-valid
{%- endif %}
{%- if cjdns.wipe_identity %}

cjdns-absent-proxy-removed:
  qvm.absent:
    - name: {{ q.proxy }}
    - require:
      - cjdns: cjdns-pillar-valid

cjdns-absent-template-removed:
  qvm.absent:
    - name: {{ q.template }}
    - require:
      - qvm: cjdns-absent-proxy-removed
{%- endif %}
{%- endif %}
