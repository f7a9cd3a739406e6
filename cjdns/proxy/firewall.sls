## cjdns.proxy.firewall: rules Qubes' qubes-firewall service loads at every start: the UDP
## peering port open, fc00::/8 only through the TUN device (blackhole otherwise).
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

cjdns-proxy-firewall-loaded:
  cmd.run:
    - name: {{ cjdns.paths.firewall | json }}
    - onchanges:
      - file: cjdns-proxy-firewall-rules
    - require:
      - cjdns: cjdns-pillar-valid
{%- endif %}
