## cjdns.fleet.orchestrate: after member <id> sent a new card, wait until the master has stored
## it (mine.send returns before that, and the master says nothing when it has), refresh the
## pillar of <id>'s neighbours and apply cjdns:fleet:sls (cjdns.node) to them, queued behind
## any state run they have going. Started by cjdns/fleet/reactor.sls.
## Execute: salt-run state.orchestrate cjdns.fleet.orchestrate pillar='{"cjdns_fleet_card_from": "<id>"}'
{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import cjdns with context %}
{%- set member = salt["pillar.get"]("cjdns_fleet_card_from", "") %}
{%- if member is not string or not member | regex_match("^([A-Za-z0-9._-]{1,64})$") %}
cjdns-fleet-card-from-valid:
  test.fail_without_changes:
    - name: "pillar cjdns_fleet_card_from: not a minion id (letters, digits, '.', '_', '-'; 1-64)"
{%- else %}
{%-   set neighbours = salt["saltutil.runner"]("cjdns_fleet.neighbours", minion=member) %}

cjdns-fleet-card-stored:
  salt.runner:
    - name: cjdns_fleet.wait_card
    - minion: {{ member | json }}
    - timeout: {{ cjdns.fleet.card_timeout | json }}
{%-   if neighbours %}

cjdns-fleet-neighbours-pillar-refreshed:
  salt.function:
    - name: saltutil.refresh_pillar
    - tgt: {{ neighbours | json }}
    - tgt_type: list
    - kwarg:
        wait: true
    - require:
      - salt: cjdns-fleet-card-stored

cjdns-fleet-neighbours-applied:
  salt.state:
    - tgt: {{ neighbours | json }}
    - tgt_type: list
    - sls: {{ cjdns.fleet.sls | json }}
    - queue: true
    - require:
      - salt: cjdns-fleet-neighbours-pillar-refreshed
{%-   else %}

cjdns-fleet-no-neighbours:
  test.succeed_without_changes:
    - name: {{ ("member " ~ member ~ " has no edges in the fleet file") | json }}
    - require:
      - salt: cjdns-fleet-card-stored
{%-   endif %}
{%- endif %}
