## cjdns/fleet/reactor.sls: the master's reaction to `cjdns/fleet/card` (a fleet member sent a
## new card to the mine): the orchestration cjdns.fleet.orchestrate for the event's `id` and the
## card fingerprint its body announces. The id comes with the event: Salt checks the sending
## minion's token for events it sends with event.send, but a minion can also put any id into an
## event list (event.fire_master with preload), so the orchestration does nothing until the
## master holds a card of that member with exactly that fingerprint (a forged event costs at
## most an idempotent apply of that member's neighbours, or a bounded wait).
## Master config: reactor: [{"cjdns/fleet/card": ["salt://cjdns/fleet/reactor.sls"]}]
{%- if tag is defined and tag == "cjdns/fleet/card" and data.get("id") is string %}
{%-   set body = data.get("data") if data.get("data") is mapping else {} %}
cjdns-fleet-card-sent:
  runner.state.orchestrate:
    - args:
      - mods: cjdns.fleet.orchestrate
      - pillar:
          cjdns_fleet_card_from: {{ data["id"] | json }}
          cjdns_fleet_card_fingerprint: {{ (body.get("fingerprint") if body.get("fingerprint") is string else "") | json }}
{%- endif %}
