"""cjdns.firewall_drift: what the live ruleset and routes lack, from nft's and ip's JSON as
nftables 1.0.6 prints it (recorded in tests/functional/test_firewall_sls.py's namespace)."""

import copy

from support.saltenv import load_module

cj = load_module()
PORT, TUN, METRIC = 47300, "tun0", 500


def table(family):
    """`nft -j list table <family> qubes` after the formula's script ran (the parts it reads)."""
    items = [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}}]
    rules = {"custom-input": [[{"jump": {"target": "cjdns-input"}}]],
             "cjdns-input": copy.deepcopy(cj.firewall_chains(PORT, TUN)[(family, "cjdns-input")])}
    if family == "ip6":
        rules["custom-forward"] = [[{"jump": {"target": "cjdns-forward"}}],
                                   [{"match": {"op": "==", "left": {"meta": {"key": "mark"}}, "right": 66}}, {"accept": None}]]
        rules["cjdns-forward"] = copy.deepcopy(cj.firewall_chains(PORT, TUN)[("ip6", "cjdns-forward")])
        rules["cjdns-forward"][0][2] = {"counter": {"packets": 12, "bytes": 960}}
    for handle, (chain, exprs) in enumerate(rules.items()):
        items.append({"chain": {"family": family, "table": "qubes", "name": chain, "handle": handle}})
        items += [{"rule": {"family": family, "table": "qubes", "chain": chain, "expr": e}} for e in exprs]
    return {"nftables": items}


ROUTES = [{"type": "blackhole", "dst": "fc00::/8", "dev": "lo", "metric": 500, "flags": []},
          {"dst": "fc00::/8", "dev": "tun0", "metric": 256}]


def drift(tables=None, routes=None):
    tables = tables if tables is not None else {"ip": table("ip"), "ip6": table("ip6")}
    return cj.firewall_drift(tables, ROUTES if routes is None else routes, PORT, TUN, METRIC)


def test_everything_in_place_is_no_drift_whatever_the_counters_say():
    assert drift() == []


def test_numbers_printed_as_strings_are_the_same_rules():
    tables = {"ip": table("ip"), "ip6": table("ip6")}
    for item in tables["ip6"]["nftables"]:
        for expr in item.get("rule", {}).get("expr", []):
            if "match" in expr and isinstance(expr["match"]["right"], int):
                expr["match"]["right"] = str(expr["match"]["right"])
    assert drift(tables) == []


def test_a_rule_that_also_accepts_from_the_tun_device_differs():
    tables = {"ip": table("ip"), "ip6": table("ip6")}
    rule = next(i["rule"] for i in tables["ip"]["nftables"] if i.get("rule", {}).get("chain") == "cjdns-input")
    del rule["expr"][1]  # the old rule: iifgroup != 2 udp dport 47300 accept
    assert drift(tables) == ["chain ip qubes cjdns-input: its rules differ from the formula's"]


def test_missing_tables_duplicate_jumps_and_routes_are_each_named():
    ip6 = table("ip6")
    ip6["nftables"].append({"rule": {"family": "ip6", "table": "qubes", "chain": "custom-input",
                                     "expr": [{"jump": {"target": "cjdns-input"}}]}})
    assert drift({"ip": None, "ip6": ip6}, routes=ROUTES[1:]) == [
        "table ip qubes: missing (is qubes-iptables running?)",
        "chain ip6 qubes custom-input: 2 jumps to cjdns-input, not one",
        "route blackhole fc00::/8 metric 500: missing",
    ]


def test_a_blackhole_route_with_another_metric_does_not_count():
    assert drift(routes=[{**ROUTES[0], "metric": 1024}]) == ["route blackhole fc00::/8 metric 500: missing"]
