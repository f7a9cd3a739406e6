## cjdns.absent.proxy: cjdroute stopped and its firewall script removed from sys-cjdns (the
## rules go at its next start). The config and key stay unless cjdns:wipe_identity.
## Execute: qubesctl --skip-dom0 --targets=sys-cjdns state.apply cjdns.absent.proxy
{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import cjdns, target with context %}
{%- from tplroot ~ "/libguard.jinja" import refuse %}
{%- if target != "app" %}
{{ refuse(sls, "the Qubes AppVM " ~ cjdns.qubes.proxy, target) }}
{%- else %}
include:
  - {{ tplroot }}.pillar

cjdns-absent-proxy-stopped:
  service.dead:
    - name: {{ cjdns.node.service | json }}
    - require:
      - cjdns: cjdns-pillar-valid

cjdns-absent-proxy-files:
  file.absent:
    - names:
      - {{ cjdns.paths.firewall | json }}
{%- if cjdns.wipe_identity %}
      - {{ cjdns.paths.confdir | json }}
{%- endif %}
    - require:
      - service: cjdns-absent-proxy-stopped
{%- endif %}
