## cjdns.dom0.proxy: sys-cjdns, an AppVM of cjdns-gw that provides network, with the ipv6
## feature (the manual's `qvm-features sys-cjdns ipv6 1`) and the Qubes service flag that lets
## the cjdns unit start there and nowhere else; marked as the formula's right after creation.
## Pillar: cjdns:qubes (proxy, proxy_label, proxy_netvm, proxy_memory, proxy_maxmem,
## proxy_vcpus, proxy_autostart, proxy_include_in_backups, service_flag, adopt).
## Execute: qubesctl state.apply cjdns.dom0.proxy
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
  - .template

cjdns-dom0-proxy-present:
  qvm.present:
    - name: {{ q.proxy | json }}
    - template: {{ q.template | json }}
    - label: {{ q.proxy_label | json }}
    - require:
      - cjdns: cjdns-dom0-qubes-owned
      - cjdns: cjdns-dom0-template-marked

{#- qvm.present says result True even when qvm-create failed: marking then fails on a
    qube that does not exist, and stops what follows. #}
cjdns-dom0-proxy-marked:
  cjdns.qube_marked:
    - name: {{ q.proxy | json }}
    - require:
      - qvm: cjdns-dom0-proxy-present

cjdns-dom0-proxy-settings:
  cjdns.qvm_settings:
    - name: {{ q.proxy | json }}
    - created_with:
        label: {{ q.proxy_label | json }}
    - prefs:
        label: {{ q.proxy_label | json }}
        netvm: {{ q.proxy_netvm | json }}
        provides-network: true
        memory: {{ q.proxy_memory | int }}
        maxmem: {{ q.proxy_maxmem | int }}
        vcpus: {{ q.proxy_vcpus | int }}
        autostart: {{ q.proxy_autostart | to_bool | json }}
        include-in-backups: {{ q.proxy_include_in_backups | to_bool | json }}
    - features_enable:
      - ipv6
    - services_enable:
      - {{ q.service_flag | json }}
    - require:
      - cjdns: cjdns-dom0-proxy-marked
{%- endif %}
