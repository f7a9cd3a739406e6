## cjdns.template.packages: the Debian packages the template needs before the formula's other
## states, from pillar cjdns:packages:template plus cjdns:packages:extra: python3-cryptography
## (X25519 keys for the cjdns module; Salt's thin, which qubesctl uses in a qube, lacks it) and
## qubes-core-agent-networking (qubes-firewall and the uplink sys-cjdns needs; minimal templates
## lack it). sys-cjdns is made from this template and gets them from here.
## Execute: qubesctl --skip-dom0 --targets=cjdns-gw state.apply cjdns.template.packages
{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import cjdns, target with context %}
{%- from tplroot ~ "/libguard.jinja" import refuse %}
{%- from tplroot ~ "/libinstall.jinja" import package_states %}
{%- if target != "template" %}
{{ refuse(sls, "the Qubes template (" ~ cjdns.qubes.template ~ ")", target) }}
{%- else %}
include:
  - {{ tplroot }}.pillar

{{ package_states(cjdns, "cjdns-template", "template") }}
{%- endif %}
