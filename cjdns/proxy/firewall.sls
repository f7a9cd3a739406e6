## cjdns.proxy.firewall: rules Qubes' qubes-firewall service loads at every start: the UDP
## peering port open, fc00::/8 only through the TUN device (blackhole otherwise). Each apply
## checks the live ruleset and routes and reloads what is missing.
## Execute: qubesctl --skip-dom0 --targets=sys-cjdns state.apply cjdns.proxy.firewall
{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import cjdns, cjdns_public, target with context %}
{%- from tplroot ~ "/libguard.jinja" import refuse %}
{%- if target != "app" %}
{{ refuse(sls, "the Qubes AppVM " ~ cjdns.qubes.proxy, target) }}
{%- else %}
include:
  - {{ tplroot }}.pillar

cjdns-proxy-firewall-rules:
  file.managed:
    - name: {{ cjdns.paths.firewall | json }}
    - source: salt://{{ tplroot }}/files/proxy/firewall.jinja
    - template: jinja
    - context:
        cjdns: {{ cjdns_public | json }}
    - makedirs: true
    - user: root
    - group: root
    - mode: '0755'
    - require:
      - cjdns: cjdns-pillar-valid

# Every apply compares the running ruleset and routes with what the script loads, and runs it
# when anything is missing or different (a failed load, a flushed chain, a deleted route).
cjdns-proxy-firewall-loaded:
  cjdns.firewall_loaded:
    - name: {{ cjdns.paths.firewall | json }}
    - udp_port: {{ cjdns.node.udp_port | json }}
    - tun_device: {{ cjdns.node.tun_device | json }}
    - blackhole_metric: {{ cjdns.node.blackhole_metric | json }}
    - require:
      - cjdns: cjdns-pillar-valid
      - file: cjdns-proxy-firewall-rules
{%- endif %}
