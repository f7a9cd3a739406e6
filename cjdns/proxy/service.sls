## cjdns.proxy.service: cjdroute running in sys-cjdns. Peer and password changes reach the
## running node through its admin API (cjdns.live); it restarts only for what the API cannot
## change (key, admin API, UDP binds, TUN device, other settings), and the state says why.
## Started only once the firewall rules and blackhole route are live (cjdns.proxy.firewall).
## Execute: qubesctl --skip-dom0 --targets=sys-cjdns state.apply cjdns.proxy.service
{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import cjdns, cjdns_public, target with context %}
{%- from tplroot ~ "/libguard.jinja" import refuse %}
{%- from tplroot ~ "/libnode.jinja" import live_states %}
{%- if target != "app" %}
{{ refuse(sls, "the Qubes AppVM " ~ cjdns.qubes.proxy, target) }}
{%- else %}
include:
  - {{ tplroot }}.pillar
  - .config
  - .firewall

# The template installs this unit; a sys-cjdns that was running while the template changed
# still has the old root, so the same unit is put in place here too (volatile, identical).
cjdns-proxy-unit:
  file.managed:
    - name: {{ cjdns.paths.unit | json }}
    - source: salt://{{ tplroot }}/files/cjdns.service.jinja
    - template: jinja
    - context:
        cjdns: {{ cjdns_public | json }}
        qubes: true
    - user: root
    - group: root
    - mode: '0644'
    - require:
      - cjdns: cjdns-pillar-valid

{{ live_states(cjdns, "cjdns-proxy") }}

cjdns-proxy-running:
  service.running:
    - name: {{ cjdns.node.service | json }}
    # A start job systemd fails for a passing reason is tried again (Salt's retry).
    - retry:
        attempts: {{ cjdns.node.start_attempts | json }}
        interval: {{ cjdns.node.start_interval | json }}
    - watch:
      - file: cjdns-proxy-unit
      - cjdns: cjdns-proxy-restart-needed
    - require:
      - cjdns: cjdns-pillar-valid
      # Fail closed: no cjdroute unless its firewall and blackhole route are live.
      - cjdns: cjdns-proxy-firewall-loaded
{%- endif %}
