## cjdns: what fits the minion this runs on, so `include: [cjdns]` works in your own tree:
## dom0 -> cjdns.dom0; the template cjdns-gw -> cjdns.template; sys-cjdns -> cjdns.proxy;
## a plain minion (no Qubes pillar) -> cjdns.node. Other qubes get nothing.
## Execute (Qubes): qubesctl top.enable cjdns; qubesctl --targets=cjdns-gw,sys-cjdns state.apply
{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import cjdns, target with context %}
{%- set absent = cjdns.absent %}
{%- if target == "dom0" %}
{%-   set part = "dom0" %}
{%- elif target == "template" and grains["id"] == cjdns.qubes.template %}
{%-   set part = "template" %}
{%- elif target == "app" and grains["id"] == cjdns.qubes.proxy %}
{%-   set part = "proxy" %}
{%- elif target == "node" %}
{%-   set part = "node" %}
{%- else %}
{%-   set part = "" %}
{%- endif %}
{%- if part %}
include:
  - {{ tplroot }}.{{ "absent." ~ part if absent else part }}
{%- else %}
cjdns-nothing-for-this-qube:
  test.show_notification:
    - text: {{ ("cjdns: " ~ grains["id"] ~ " is neither " ~ cjdns.qubes.template ~ " nor " ~ cjdns.qubes.proxy ~ "; nothing to do.") | json }}
{%- endif %}
