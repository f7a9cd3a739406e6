## cjdns.dom0.template: cjdns-gw, cloned from the configured Debian template, which is
## installed with qvm-template when missing; marked as the formula's right after the clone.
## Pillar: cjdns:qubes:source_template, source_template_fromrepo, template, adopt.
## Execute: qubesctl state.apply cjdns.dom0.template
{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import cjdns, target with context %}
{%- from tplroot ~ "/libguard.jinja" import refuse %}
{%- set q = cjdns.qubes %}
{%- if target != "dom0" %}
{{ refuse(sls, "dom0", target) }}
{%- else %}
{#- Asked while rendering, so only for a valid qube name: the name goes into a qvm-check
    command line. A bad one is refused by cjdns-pillar-valid before anything runs. #}
{%- set source = q.source_template %}
{%- set checkable = source is string and source | regex_match("([A-Za-z][A-Za-z0-9_.-]{0,30})\Z") %}
{%- set install_source = checkable and not salt["qvm.check"](source) %}
include:
  - {{ tplroot }}.pillar
  - .owned
{%- if install_source %}

cjdns-dom0-source-template-installed:
  qvm.template_installed:
    - name: {{ source | json }}
{%-   if q.source_template_fromrepo %}
    - fromrepo: {{ q.source_template_fromrepo | json }}
{%-   endif %}
    - require:
      - cjdns: cjdns-dom0-qubes-owned
{%- endif %}

cjdns-dom0-template-cloned:
  qvm.clone:
    - name: {{ q.template | json }}
    - source: {{ source | json }}
    - require:
      - cjdns: cjdns-dom0-qubes-owned
{%- if install_source %}
      - qvm: cjdns-dom0-source-template-installed
{%- endif %}

cjdns-dom0-template-marked:
  cjdns.qube_marked:
    - name: {{ q.template | json }}
    - require:
      - qvm: cjdns-dom0-template-cloned
{%- endif %}
