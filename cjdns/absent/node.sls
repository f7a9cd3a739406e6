## cjdns.absent.node: cjdroute stopped, disabled and removed with its unit from a plain minion.
## The config and key stay unless cjdns:wipe_identity.
## Execute: salt '<minion>' state.apply cjdns.absent.node
{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import cjdns, target with context %}
{%- from tplroot ~ "/libguard.jinja" import refuse %}
{%- if target != "node" %}
{{ refuse(sls, "a plain minion without Qubes", target) }}
{%- else %}
include:
  - {{ tplroot }}.pillar

# python3-cryptography (cjdns:packages) stays installed: it is a common library other
# software on the machine may depend on.

cjdns-absent-node-stopped:
  service.dead:
    - name: {{ cjdns.node.service | json }}
    - enable: false
    - require:
      - cjdns: cjdns-pillar-valid

cjdns-absent-node-files:
  file.absent:
    - names:
      - {{ cjdns.paths.unit | json }}
      - {{ (cjdns.install.prefix ~ "/cjdroute") | json }}
{%- for tool in cjdns.install.tools %}
      - {{ (cjdns.install.prefix ~ "/" ~ tool) | json }}
{%- endfor %}
      - {{ cjdns.install.source.builddir | json }}
{%- if cjdns.wipe_identity %}
      - {{ cjdns.paths.confdir | json }}
{%- endif %}
    - require:
      - service: cjdns-absent-node-stopped
{%- endif %}
