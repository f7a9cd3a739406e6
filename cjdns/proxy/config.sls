## cjdns.proxy.config: the settings of cjdroute.conf the formula manages (admin API, UDP port,
## TUN name, beacons, logging, DNS seeds, authorized passwords) and the peers from pillar.
## Comments and hand-added peers in the file are kept.
## Execute: qubesctl --skip-dom0 --targets=sys-cjdns state.apply cjdns.proxy.config
{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import cjdns, target with context %}
{%- from tplroot ~ "/libguard.jinja" import refuse %}
{%- from tplroot ~ "/libnode.jinja" import config_states %}
{%- if target != "app" %}
{{ refuse(sls, "the Qubes AppVM " ~ cjdns.qubes.proxy, target) }}
{%- else %}
include:
  - {{ tplroot }}.pillar
  - .identity

{{ config_states(cjdns, "cjdns-proxy") }}
{%- endif %}
