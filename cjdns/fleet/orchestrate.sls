## cjdns.fleet.orchestrate: after member <id> announced a new card, wait until the master has
## stored exactly that card (mine.send returns before that, and the master says nothing when it
## has), refresh the pillar of <id>'s neighbours this master can reach (accepted keys; members
## with a card in the fleet file have no master) and apply cjdns:fleet:sls (cjdns.node) to them,
## queued behind any state run they have going. Its settings come from the pillar of the
## master's own minion (<master id>_master). Started by cjdns/fleet/reactor.sls.
## Execute: salt-run state.orchestrate cjdns.fleet.orchestrate pillar='{"cjdns_fleet_card_from": "<id>", "cjdns_fleet_card_fingerprint": "<sha256>"}'
{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import cjdns with context %}
{%- set member = salt["pillar.get"]("cjdns_fleet_card_from", "") %}
{%- set fingerprint = salt["pillar.get"]("cjdns_fleet_card_fingerprint", "") %}
{%- if member is not string or not member | regex_match("^([A-Za-z0-9._-]{1,64})$") %}
cjdns-fleet-card-from-valid:
  test.fail_without_changes:
    - name: "pillar cjdns_fleet_card_from: not a minion id (letters, digits, '.', '_', '-'; 1-64)"
{%- elif fingerprint is not string or not fingerprint | regex_match("^([0-9a-f]{64})$") %}
cjdns-fleet-card-fingerprint-valid:
  test.fail_without_changes:
    - name: "pillar cjdns_fleet_card_fingerprint: not a card fingerprint (64 hex digits)"
{%- else %}
{%-   set neighbours = salt["saltutil.runner"]("cjdns_fleet.neighbours", minion=member, reachable=True) %}
{%-   if neighbours is not sequence or neighbours is mapping or neighbours is string %}
cjdns-fleet-neighbours-known:
  test.fail_without_changes:
    - name: {{ ("cjdns_fleet.neighbours " ~ member ~ " failed: " ~ (neighbours.get("Error", "") if neighbours is mapping else "")) | json }}
{%-   else %}

cjdns-fleet-card-stored:
  salt.runner:
    - name: cjdns_fleet.wait_card
    - minion: {{ member | json }}
    - fingerprint: {{ fingerprint | json }}
    - timeout: {{ cjdns.fleet.card_timeout | json }}
{%-     if neighbours %}

# For mine_functions in the neighbours' in-memory pillar; a state run compiles its own pillar,
# so the apply below does not wait for this (a neighbour that does not answer fails only here).
cjdns-fleet-neighbours-pillar-refreshed:
  salt.function:
    - name: saltutil.refresh_pillar
    - tgt: {{ neighbours | json }}
    - tgt_type: list
    - require:
      - salt: cjdns-fleet-card-stored

cjdns-fleet-neighbours-applied:
  salt.state:
    - tgt: {{ neighbours | json }}
    - tgt_type: list
    - sls: {{ cjdns.fleet.sls | json }}
    - queue: true
    - require:
      - salt: cjdns-fleet-card-stored
{%-     else %}

cjdns-fleet-no-neighbours:
  test.succeed_without_changes:
    - name: {{ ("member " ~ member ~ " has no neighbours this master can apply") | json }}
    - require:
      - salt: cjdns-fleet-card-stored
{%-     endif %}
{%-   endif %}
{%- endif %}
