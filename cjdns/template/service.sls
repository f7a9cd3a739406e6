## cjdns.template.service: the cjdns unit, enabled in the template but started only in qubes
## whose Qubes service flag is on (sys-cjdns). It never runs --genconf.
## Execute: qubesctl --skip-dom0 --targets=cjdns-gw state.apply cjdns.template.service
{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import cjdns, cjdns_public, target with context %}
{%- from tplroot ~ "/libguard.jinja" import refuse %}
{%- if target != "template" %}
{{ refuse(sls, "the Qubes template (" ~ cjdns.qubes.template ~ ")", target) }}
{%- else %}
include:
  - {{ tplroot }}.pillar
  - .manual

cjdns-template-unit:
  file.managed:
    - name: {{ cjdns.paths.unit | json }}
    - source: salt://{{ tplroot }}/files/cjdns.service.jinja
    - template: jinja
    - context:
        cjdns: {{ cjdns_public | json }}
        qubes: true
    - user: root
    - group: root
    - mode: '0644'
    - require:
      - sls: {{ tplroot }}.template.manual
      - cjdns: cjdns-pillar-valid

cjdns-template-unit-enabled:
  service.enabled:
    - name: {{ cjdns.node.service | json }}
    - require:
      - cjdns: cjdns-pillar-valid
      - file: cjdns-template-unit
{%- endif %}
