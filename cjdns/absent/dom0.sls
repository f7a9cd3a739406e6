## cjdns.absent.dom0: the clients get back the netvm they had before the formula moved them
## (only those still on sys-cjdns; the others are left alone and named in the comment);
## sys-cjdns no longer runs cjdns (service flag off, no autostart). With cjdns:wipe_identity,
## sys-cjdns (and with it its key) and cjdns-gw are removed: only if the formula made them
## (or pillar adopts them), and sys-cjdns only once no client it knows of uses it.
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

cjdns-absent-qubes-owned:
  cjdns.qubes_owned:
    - name: cjdns
    - template: {{ q.template | json }}
    - proxy: {{ q.proxy | json }}
    - adopt: {{ q.adopt | json }}
    - clients: {{ q.clients | json }}
    - install: false
    - wipe: {{ cjdns.wipe_identity | to_bool | json }}
    - require:
      - cjdns: cjdns-pillar-valid

cjdns-absent-clients-restored:
  cjdns.qvm_clients:
    - name: {{ q.proxy | json }}
    - clients: {{ q.clients | json }}
    - restore_all: true
    - require:
      - cjdns: cjdns-absent-qubes-owned

cjdns-absent-proxy-stopped-running-cjdns:
  cjdns.qvm_settings:
    - name: {{ q.proxy | json }}
    - missing_ok: true
    - prefs:
        autostart: false
    - services_disable:
      - {{ q.service_flag | json }}
    - require:
      - cjdns: cjdns-absent-qubes-owned
{%- if cjdns.wipe_identity %}

cjdns-absent-proxy-removed:
  cjdns.qube_absent:
    - name: {{ q.proxy | json }}
    - pillar_key: cjdns.qubes.proxy
    - adopt: {{ q.adopt | json }}
    - clients: {{ q.clients | json }}
    - require:
      - cjdns: cjdns-absent-clients-restored
      - cjdns: cjdns-absent-proxy-stopped-running-cjdns

cjdns-absent-template-removed:
  cjdns.qube_absent:
    - name: {{ q.template | json }}
    - pillar_key: cjdns.qubes.template
    - adopt: {{ q.adopt | json }}
    - require:
      - cjdns: cjdns-absent-proxy-removed
{%- endif %}
{%- endif %}
