## cjdns.proxy.identity: sys-cjdns's own key pair. Made on the first apply; kept on every
## later one (the address is the node's name); replaced only when it is the template's key
## or listed in pillar cjdns:node:compromised_keys.
## Execute: qubesctl --skip-dom0 --targets=sys-cjdns state.apply cjdns.proxy.identity
{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import cjdns, target with context %}
{%- from tplroot ~ "/libguard.jinja" import refuse %}
{%- from tplroot ~ "/libnode.jinja" import identity_state %}
{%- if target != "app" %}
{{ refuse(sls, "the Qubes AppVM " ~ cjdns.qubes.proxy, target) }}
{%- else %}
include:
  - {{ tplroot }}.pillar

{{ identity_state(cjdns, "cjdns-proxy", true) }}
{%- endif %}
