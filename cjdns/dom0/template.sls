## cjdns.dom0.template: cjdns-gw, cloned from the configured Debian template, which is
## installed with qvm-template when missing.
## Pillar: cjdns:qubes:source_template, source_template_fromrepo, template.
## Execute: qubesctl state.apply cjdns.dom0.template
{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import cjdns, target with context %}
{%- from tplroot ~ "/libguard.jinja" import refuse %}
{%- set q = cjdns.qubes %}
{%- if target != "dom0" %}
{{ refuse(sls, "dom0", target) }}
{%- else %}
include:
  - {{ tplroot }}.pillar
{%- if not salt["qvm.check"](q.source_template) %}

cjdns-dom0-source-template-installed:
  qvm.template_installed:
    - name: {{ q.source_template }}
{%-   if q.source_template_fromrepo %}
    - fromrepo: {{ q.source_template_fromrepo }}
{%-   endif %}
    - require:
      - cjdns: cjdns-pillar-valid
{%- endif %}

cjdns-dom0-template-cloned:
  qvm.clone:
    - name: {{ q.template }}
    - source: {{ q.source_template }}
    - require:
      - cjdns: cjdns-pillar-valid
{%- if not salt["qvm.check"](q.source_template) %}
      - qvm: cjdns-dom0-source-template-installed
{%- endif %}
{%- endif %}
