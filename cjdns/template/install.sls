## cjdns.template.install: build deps and cjdroute at the pinned tag, fetched through the
## Qubes updates proxy (or a binary refused unless its sha256 matches).
## Pillar: cjdns:install (method, prefix, source.rev/repo/proxy, binary.url/sha256).
## Execute: qubesctl --skip-dom0 --targets=cjdns-gw state.apply cjdns.template.install
{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import cjdns, target with context %}
{%- from tplroot ~ "/libguard.jinja" import refuse %}
{%- from tplroot ~ "/libinstall.jinja" import install_states %}
{%- if target != "template" %}
{{ refuse(sls, "the Qubes template (" ~ cjdns.qubes.template ~ ")", target) }}
{%- else %}
include:
  - {{ tplroot }}.pillar

{{ install_states(cjdns, "cjdns-template", cjdns.install.source.proxy) }}
{%- endif %}
