## cjdns.node: a cjdns node on a plain Debian minion (no Qubes): the packages the formula
## needs (cjdns.node.packages), cjdroute installed, the hardened unit, its own identity,
## managed settings and peers, and the service running (peer and password changes applied
## live through the admin API; a restart only for what the API cannot change).
## In fleet mode (pillar from the fleet ext_pillar on the master) it also publishes the node's
## card to the master's mine when the card changes (README "Fleet").
## The host firewall is left to you: open UDP cjdns:node:udp_port for incoming peers.
## Pillar: cjdns:packages, cjdns:install, cjdns:node, cjdns:paths, cjdns:fleet.
## Execute: salt '<minion>' state.apply cjdns.node
{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import cjdns, cjdns_public, target with context %}
{%- from tplroot ~ "/libguard.jinja" import refuse %}
{%- from tplroot ~ "/libinstall.jinja" import install_states %}
{%- from tplroot ~ "/libnode.jinja" import identity_state, config_states, live_states, protected_state %}
{%- if target != "node" %}
{{ refuse(sls, "a plain minion without Qubes (in Qubes use cjdns.template and cjdns.proxy)", target) }}
{%- else %}
include:
  - {{ tplroot }}.pillar
  - .packages

{{ install_states(cjdns, "cjdns-node", "") }}

cjdns-node-unit:
  file.managed:
    - name: {{ cjdns.paths.unit | json }}
    - source: salt://{{ tplroot }}/files/cjdns.service.jinja
    - template: jinja
    - context:
        cjdns: {{ cjdns_public | json }}
        qubes: false
    - user: root
    - group: root
    - mode: '0644'
    - require:
      - cjdns: cjdns-pillar-valid

{{ protected_state(cjdns, "cjdns-node") }}

{{ identity_state(cjdns, "cjdns-node", false, packages="cjdns-node-packages") }}

{{ config_states(cjdns, "cjdns-node") }}

{{ live_states(cjdns, "cjdns-node") }}

cjdns-node-running:
  service.running:
    - name: {{ cjdns.node.service | json }}
    - enable: true
    # A start job systemd fails for a passing reason is tried again (Salt's retry).
    - retry:
        attempts: {{ cjdns.node.start_attempts | json }}
        interval: {{ cjdns.node.start_interval | json }}
    - require:
      - cjdns: cjdns-pillar-valid
      - cjdns: cjdns-node-cjdroute-installed
    - watch:
      - file: cjdns-node-unit
      - cjdns: cjdns-node-restart-needed

# Fleet mode only (a no-op without pillar cjdns:fleet:member): once the node runs, its card
# (public key, address, endpoints) goes to the master's mine and the event cjdns/fleet/card
# tells the master's reactor to bring the neighbours along.
cjdns-node-card:
  cjdns.card_published:
    - name: {{ cjdns.paths.config | json }}
    - require:
      - cjdns: cjdns-pillar-valid
      - service: cjdns-node-running
{%- endif %}
