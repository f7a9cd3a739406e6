## cjdns.template.manual: retires what the Qubes manual left in the template: the stock unit
## is stopped (the formula's unit replaces it, gated so it never runs here), the stock
## cjdns-resume unit goes, and so does the single-file bind-dirs entry for /etc/cjdroute.conf.
## The template's key and config go in cjdns.template.no-keys.
## Execute: qubesctl --skip-dom0 --targets=cjdns-gw state.apply cjdns.template.manual
{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import cjdns, target with context %}
{%- from tplroot ~ "/libguard.jinja" import refuse %}
{%- if target != "template" %}
{{ refuse(sls, "the Qubes template (" ~ cjdns.qubes.template ~ ")", target) }}
{%- else %}
include:
  - {{ tplroot }}.pillar
{%- set unit = cjdns.paths.unit %}
{%- if salt["file.file_exists"](unit) and not salt["file.search"](unit, "Managed by cjdns-formula") %}

cjdns-template-stock-unit-stopped:
  service.dead:
    - name: {{ cjdns.node.service | json }}
    - require:
      - cjdns: cjdns-pillar-valid
{%- endif %}
{%- if salt["file.file_exists"](cjdns.paths.manual_resume_unit) %}

cjdns-template-stock-resume-unit-disabled:
  service.disabled:
    - name: {{ salt["file.basename"](cjdns.paths.manual_resume_unit) | json }}
    - require:
      - cjdns: cjdns-pillar-valid

cjdns-template-stock-resume-unit-removed:
  file.absent:
    - name: {{ cjdns.paths.manual_resume_unit | json }}
    - require:
      - service: cjdns-template-stock-resume-unit-disabled
{%- endif %}

cjdns-template-manual-bind-retired:
  cjdns.bind_entry_absent:
    - name: {{ cjdns.paths.template_bind_dirs_dir | json }}
    - path: {{ cjdns.paths.manual_config | json }}
    - require:
      - cjdns: cjdns-pillar-valid
{%- endif %}
