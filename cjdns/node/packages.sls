## cjdns.node.packages: the Debian packages a plain node needs before the formula's other
## states, from pillar cjdns:packages:node plus cjdns:packages:extra: python3-cryptography
## (X25519 keys for the cjdns module, which Salt's thin under salt-ssh lacks).
## Execute: salt '<minion>' state.apply cjdns.node.packages
{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import cjdns, target with context %}
{%- from tplroot ~ "/libguard.jinja" import refuse %}
{%- from tplroot ~ "/libinstall.jinja" import package_states %}
{%- if target != "node" %}
{{ refuse(sls, "a plain minion without Qubes (in Qubes use cjdns.template.packages)", target) }}
{%- else %}
include:
  - {{ tplroot }}.pillar

{{ package_states(cjdns, "cjdns-node", "node") }}
{%- endif %}
