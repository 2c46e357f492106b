"""Peer chains for the separate-process rows (issue 13), and rows at one connection that read
the latency each proxy adds. Used by bench/harness.py; docs/benchmarks.md says how to read them.

Every proxy in a chain pays its own kernel TCP work (two sockets per request), whoever wrote
it, so a chain of Rouse processes is read beside a chain of as many nginx processes:
`nginx-2` is load -> nginx -> nginx -> app, `nginx-3` one more. Each hop is a process of its
own set up from the same bench/conf file as the single-hop row, and every chain ends in that
row's own nginx (or HAProxy), so all of them share its backend connections and settings.
"""

CHAIN_LEN = 3  # the longest chain: as many proxies as gateway -> activator -> sidecar

# The row each row is compared with when both have as many proxy processes ("vs chain").
CHAIN_PEER = {
    "procs-sidecar": "nginx",
    "procs-gateway-sidecar": "nginx-2",
    "procs-gateway-activator-sidecar": "nginx-3",
    "procs-sidecar-h2": "nginx-h2",
    "procs-gateway-sidecar-h2": "nginx-2-h2",
    "procs-gateway-activator-sidecar-h2": "nginx-3-h2",
    "haproxy-2": "nginx-2",
    "haproxy-3": "nginx-3",
}

# The rows at one connection: proxy processes between the load and the app in each.
HOPS = {"direct": 0, "nginx": 1, "nginx-2": 2, "nginx-3": 3, "procs-sidecar": 1,
        "procs-gateway-sidecar": 2, "procs-gateway-activator-sidecar": 3}
LATENCY_PROTO = "http/1.1 c1"
LATENCY_PREFIX = "c1-"
# One request in flight needs few seconds for stable percentiles; keeps the scenario short.
LATENCY_S = 3.0
LATENCY_WARMUP_S = 1.0


def base_name(name):
    """The throughput row a row at one connection measures again."""
    return name[len(LATENCY_PREFIX):] if name.startswith(LATENCY_PREFIX) else name


def start(h):
    """Starts nginx-2 and nginx-3 in front of the single-hop nginx, and haproxy-2 and
    haproxy-3 in front of the single-hop HAProxy, one process per hop on the server CPU.
    Returns {chain: {"port", "h2port", "procs": its proxies, front first}}."""
    chains = {}
    for kind, start_one, first, port in (
            ("nginx", h.start_nginx, h.nginx, h.ports["nginx"]),
            ("haproxy", h.start_haproxy, h.haproxy, h.ports["haproxy"])):
        procs = [first]
        for k in range(2, CHAIN_LEN + 1):
            name = f"{kind}-{k}"
            proc, port, h2port = start_one(name, port)
            procs = [proc] + procs
            chains[name] = {"port": port, "h2port": h2port, "procs": procs}
    h.wait_proxies({n: (c["port"], c["h2port"]) for n, c in chains.items()})
    return chains


def rows(h):
    """The procs scenario's peer rows: the chains (HAProxy's in HTTP/1.1 only, to keep the
    run short), and the single nginx hops its "vs nginx" ratios need when the hop or h2
    scenario does not run them already."""
    c, p = h.chains, h.ports
    out = []
    if not h.want("hop"):
        out.append(("nginx", "http/1.1", p["nginx"], None, None))
    out += [(n, "http/1.1", c[n]["port"], None, None) for n in c]
    if not h.want("h2"):
        out.append(("nginx-h2", "h2c", p["nginx_h2"], None, None))
    out += [(f"{n}-h2", "h2c", c[n]["h2port"], None, None) for n in c if n.startswith("nginx")]
    return out


def latency_rows(h, procs_rows):
    """One-connection rows for the direct path, the nginx chains and the procs rows."""
    p = h.ports
    targets = {"direct": (p["backend"], None), "nginx": (p["nginx"], None)}
    targets.update({n: (c["port"], None) for n, c in h.chains.items() if n.startswith("nginx")})
    targets.update({name: (port, host) for name, proto, port, host, _ in procs_rows
                    if proto == "http/1.1"})
    return [(LATENCY_PREFIX + n, LATENCY_PROTO, *targets[n], None)
            for n in HOPS if n in targets]


def roots(h, name):
    """The server processes of a chain row (its proxies and the backend), else None."""
    c = h.chains.get(name[:-3] if name.endswith("-h2") else name)
    return [p.pid for p in c["procs"]] + [h.backend.pid] if c else None


def add_latency(entries):
    """What the proxies of each one-connection row add over the direct path, in all and per
    proxy: p50 and p99 latency, and server CPU per request."""
    direct = next((e for e in entries if e["name"] == LATENCY_PREFIX + "direct"), {})
    for e in entries:
        if e["protocol"] != LATENCY_PROTO:
            continue
        e["hops"] = HOPS[base_name(e["name"])]
        for field, added in (("p50_ms", "added_p50_ms"), ("p99_ms", "added_p99_ms"),
                             ("server_cpu_us_per_req", "added_cpu_us")):
            if e["hops"] and e.get(field) is not None and direct.get(field) is not None:
                e[added] = e[field] - direct[field]
                e[added + "_per_hop"] = e[added] / e["hops"]
