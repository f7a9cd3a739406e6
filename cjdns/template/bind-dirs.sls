## cjdns.template.bind-dirs: each qube keeps its own config directory in /rw/bind-dirs.
## The empty directory in the template is what bind-dirs copies on a qube's first boot.
## Execute: qubesctl --skip-dom0 --targets=cjdns-gw state.apply cjdns.template.bind-dirs
{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import cjdns, cjdns_public, target with context %}
{%- from tplroot ~ "/libguard.jinja" import refuse %}
{%- if target != "template" %}
{{ refuse(sls, "the Qubes template (" ~ cjdns.qubes.template ~ ")", target) }}
{%- else %}
include:
  - {{ tplroot }}.pillar

cjdns-template-confdir:
  file.directory:
    - name: {{ cjdns.paths.confdir | json }}
    - user: root
    - group: root
    - mode: '0700'
    - require:
      - cjdns: cjdns-pillar-valid

cjdns-template-bind-dirs:
  file.managed:
    - name: {{ cjdns.paths.bind_dirs | json }}
    - source: salt://{{ tplroot }}/files/bind-dirs.conf.jinja
    - template: jinja
    - context:
        cjdns: {{ cjdns_public | json }}
    - makedirs: true
    - user: root
    - group: root
    - mode: '0644'
    - require:
      - cjdns: cjdns-pillar-valid
{%- endif %}
