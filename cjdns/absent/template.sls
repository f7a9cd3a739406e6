## cjdns.absent.template: cjdroute, its unit, the bind-dirs entry and the build tree leave the
## template. The empty config directory stays (qubes keep their own copy in /rw).
## Execute: qubesctl --skip-dom0 --targets=cjdns-gw state.apply cjdns.absent.template
{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import cjdns, target with context %}
{%- from tplroot ~ "/libguard.jinja" import refuse %}
{%- if target != "template" %}
{{ refuse(sls, "the Qubes template (" ~ cjdns.qubes.template ~ ")", target) }}
{%- else %}
include:
  - {{ tplroot }}.pillar

# The packages of cjdns:packages stay installed: qubes-core-agent-networking is what any
# network-providing qube made from this template needs, and python3-cryptography is a common
# library other software may depend on; removing them could break more than cjdns.

cjdns-absent-template-unit-disabled:
  service.disabled:
    - name: {{ cjdns.node.service | json }}
    - require:
      - cjdns: cjdns-pillar-valid

cjdns-absent-template-files:
  file.absent:
    - names:
      - {{ cjdns.paths.unit | json }}
      - {{ cjdns.paths.bind_dirs | json }}
      - {{ (cjdns.install.prefix ~ "/cjdroute") | json }}
{%- for tool in cjdns.install.tools %}
      - {{ (cjdns.install.prefix ~ "/" ~ tool) | json }}
{%- endfor %}
      - {{ cjdns.install.source.builddir | json }}
    - require:
      - service: cjdns-absent-template-unit-disabled
{%- endif %}
