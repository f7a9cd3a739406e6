## cjdns.pillar: checks pillar `cjdns` before anything else runs (every cjdns SLS requires it):
## unknown keys (with a did-you-mean), wrong types, bad qube names, labels, ports, install
## settings and peers stop the run with one comment that lists them all.
## Execute: salt-call state.apply cjdns.pillar
{%- set tplroot = tpldir.split("/")[0] %}
{%- import_yaml tplroot ~ "/defaults.yaml" as defaults %}
cjdns-pillar-valid:
  cjdns.pillar_valid:
    - name: cjdns
    - defaults: {{ defaults.cjdns | json }}
