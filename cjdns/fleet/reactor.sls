## cjdns/fleet/reactor.sls: the master's reaction to `cjdns/fleet/card` (a fleet member sent a
## new card to the mine): the orchestration cjdns.fleet.orchestrate for that member. The member
## is the event's `id`, which the master sets from the minion's authenticated connection; the
## event's body is never used to pick a target.
## Master config: reactor: [{"cjdns/fleet/card": ["salt://cjdns/fleet/reactor.sls"]}]
{%- if tag is defined and tag == "cjdns/fleet/card" and data.get("id") is string %}
cjdns-fleet-card-sent:
  runner.state.orchestrate:
    - args:
      - mods: cjdns.fleet.orchestrate
      - pillar:
          cjdns_fleet_card_from: {{ data["id"] | json }}
{%- endif %}
