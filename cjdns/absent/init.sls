## cjdns.absent: undo the formula on the minion this runs on (as cjdns/init.sls picks the
## part). The node's identity (its key, in sys-cjdns's /rw) is kept unless pillar
## cjdns:wipe_identity is true.
## Execute (Qubes): qubesctl --targets=cjdns-gw,sys-cjdns state.apply cjdns.absent
{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import cjdns, target with context %}
{%- set parts = {"dom0": "dom0", "template": "template", "app": "proxy", "node": "node"} %}
include:
  - .{{ parts[target] }}
