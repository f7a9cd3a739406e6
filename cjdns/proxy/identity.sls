## cjdns.proxy.identity: sys-cjdns's own key pair, in its config directory kept in /rw
## (bind-mounted now if the running qube predates the template's bind-dirs entry; root's,
## 0700, the config 0600, never a symbolic link, repaired on every apply). A config
## made by hand from the Qubes manual is adopted first (no copy of its key is kept unless
## pillar cjdns:keep_manual_backup asks for one). Made on the first apply; kept on every
## later one (the address is the node's name); replaced only when it is the template's key
## or listed in pillar cjdns:node:compromised_keys.
## Execute: qubesctl --skip-dom0 --targets=sys-cjdns state.apply cjdns.proxy.identity
{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import cjdns, target with context %}
{%- from tplroot ~ "/libguard.jinja" import refuse %}
{%- from tplroot ~ "/libnode.jinja" import identity_state, protected_state %}
{%- if target != "app" %}
{{ refuse(sls, "the Qubes AppVM " ~ cjdns.qubes.proxy, target) }}
{%- else %}
include:
  - {{ tplroot }}.pillar

cjdns-proxy-confdir-bound:
  cjdns.bound:
    - name: {{ cjdns.paths.confdir | json }}
    - rw_root: {{ cjdns.paths.rw_bind_dirs | json }}
    - require:
      - cjdns: cjdns-pillar-valid

{{ protected_state(cjdns, "cjdns-proxy", "cjdns-proxy-confdir-bound") }}

cjdns-proxy-manual-config-adopted:
  cjdns.adopted:
    - name: {{ cjdns.paths.config | json }}
    - sources:
      - {{ (cjdns.paths.rw_bind_dirs ~ cjdns.paths.manual_config) | json }}
      - {{ cjdns.paths.manual_config | json }}
    - backup: {{ (cjdns.paths.config ~ ".manual-backup") | json }}
    - keep_backup: {{ cjdns.keep_manual_backup | json }}
    - require:
      - cjdns: cjdns-proxy-confdir-protected

cjdns-proxy-manual-bind-retired:
  cjdns.bind_entry_absent:
    - name: {{ cjdns.paths.qube_bind_dirs_dir | json }}
    - path: {{ cjdns.paths.manual_config | json }}
    - require:
      - cjdns: cjdns-pillar-valid

{{ identity_state(cjdns, "cjdns-proxy", true, [cjdns.paths.manual_config], "cjdns-proxy-manual-config-adopted") }}
{%- endif %}
