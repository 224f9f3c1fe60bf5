#!/usr/bin/env python3
"""Simulated global deploy propagation: what `tern deploy` would report for a fleet this
machine cannot hold. A model, not a measurement; every assumption is written here and
printed with the results.

    benches/propagation_sim.py [--cities 300] [--per-city 10] [--deploys 1000] [--seed 1] [--tiers 1|2]

Topology: as `tern relay` builds it (`--tiers 1`, the default):
    control plane (Ashburn, VA) -> one relay per city -> nodes
With `--tiers 2`, a design Tern does not build (relays do not chain): the control plane
feeds 6 regional relays, and each city relay follows its region's.

Assumptions:
- Cities: CITIES points drawn (seeded) in six continental boxes, weighted by where internet
  users are (Asia 35 %, Europe 22 %, North America 18 %, South America 10 %, Africa 10 %,
  Oceania 5 %); each region's relay sits at its first city.
- Latency between two points: the router's model (router/src/geo.rs): light in fibre
  200 km/ms over 1.5 x the great circle, plus 1 ms per hop for switching and the last mile.
  One-way time is half that round trip.
- A relay stores and forwards, as `tern relay` does: on a revision notice it fetches the
  bundle from its upstream (one round trip plus the transfer), verifies and keeps it
  (RELAY_MS), and only then passes the notice down; each relay fetches a bundle once for
  all below it. Its nodes then fetch the bundle from it. A transfer is 50 KiB at 100 Mbit/s
  per link (4 ms).
- Applying (verify the signature and hash, boot the isolate, swap the table) is drawn from
  what a single node measured on loopback with benches/deploy.py --nodes 1: 2-6 ms,
  median 4 ms (commit to acknowledgement, so it also holds the loopback round trips).
- Loss: each message or fetch on a link is lost with probability 0.1 % and QUIC
  retransmits it after a probe timeout of 1.5 x RTT + 25 ms (its max ack delay).
- Acknowledgements go back up the same path (one-way per hop); the control plane knows a
  revision is live everywhere when the last acknowledgement arrives.
"""
import argparse
import math
import random
import statistics

REGIONS = [  # name, share, lat range, lon range
    ("asia", 0.35, (5, 45), (70, 140)),
    ("europe", 0.22, (36, 60), (-10, 30)),
    ("north-america", 0.18, (25, 50), (-123, -70)),
    ("south-america", 0.10, (-35, 5), (-75, -38)),
    ("africa", 0.10, (-30, 30), (-10, 40)),
    ("oceania", 0.05, (-38, -12), (115, 153)),
]
CONTROL_PLANE = (39.04, -77.49)  # Ashburn, VA
FIBRE_KM_PER_MS, STRETCH, HOP_MS = 200.0, 1.5, 1.0
BUNDLE_KIB, LINK_MBIT = 50, 100
APPLY_MS = [3, 4, 4, 2, 2, 5, 2, 5, 5, 4, 4, 5, 6, 6, 4, 4, 5, 4, 4, 4, 5, 2, 2, 5, 4, 5, 3, 3, 3, 2]
LOSS, MAX_ACK_DELAY_MS = 0.001, 25.0
RELAY_MS = 1.0  # a relay verifies the hash and signature of a 50 KiB bundle and writes it


def km(a, b):
    p1, p2 = math.radians(a[0]), math.radians(b[0])
    dp, dl = p2 - p1, math.radians(b[1] - a[1])
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371 * math.asin(min(1, math.sqrt(h)))


def rtt(a, b):
    return 2 * STRETCH * km(a, b) / FIBRE_KM_PER_MS + HOP_MS


def send(rng, one_way, link_rtt):
    """One message over a link: its one-way time, plus a retransmission when it is lost."""
    t = one_way
    while rng.random() < LOSS:
        t += 1.5 * link_rtt + MAX_ACK_DELAY_MS
    return t


def transfer_ms():
    return BUNDLE_KIB * 8 * 1024 / (LINK_MBIT * 1e6) * 1000


def relay_ready(rng, ready_upstream, link):
    """When a relay with `link` (round trip) to its upstream, which had the update at
    `ready_upstream`, has it: the notice, its fetch of the bundle, and its check."""
    notice = ready_upstream + send(rng, link / 2, link)
    return notice + send(rng, link, link) + transfer_ms() + RELAY_MS


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cities", type=int, default=300)
    ap.add_argument("--per-city", type=int, default=10)
    ap.add_argument("--deploys", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--tiers", type=int, choices=(1, 2), default=1,
                    help="1: city relays follow the control plane (built); 2: through regional relays (design)")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    cities = []  # (region index, location)
    for i in range(args.cities):
        r = rng.choices(range(len(REGIONS)), weights=[s for _, s, _, _ in REGIONS])[0]
        _, _, lat, lon = REGIONS[r]
        cities.append((r, (rng.uniform(*lat), rng.uniform(*lon))))
    hubs = {}
    for r, loc in cities:
        hubs.setdefault(r, loc)

    everywhere, per_node, known = [], [], []
    for _ in range(args.deploys):
        # When each regional relay has the update (two tiers only).
        hub_ready = {r: relay_ready(rng, 0.0, rtt(CONTROL_PLANE, hub)) for r, hub in hubs.items()}
        last_live, last_ack = 0.0, 0.0
        for r, city in cities:
            if args.tiers == 2:
                link = rtt(hubs[r], city)
                ready = relay_ready(rng, hub_ready[r], link)
                up = [link, rtt(CONTROL_PLANE, hubs[r])]
            else:
                link = rtt(CONTROL_PLANE, city)
                ready = relay_ready(rng, 0.0, link)
                up = [link]
            for _ in range(args.per_city):
                local = HOP_MS  # node to its city relay, same city
                # The notice, the node's fetch from its relay, the transfer, the apply.
                live = ready + local / 2 + local + transfer_ms() + rng.choice(APPLY_MS)
                per_node.append(live)
                last_live = max(last_live, live)
                # The acknowledgement goes up through the relays as it arrives.
                ack = live + local / 2 + sum(send(rng, hop / 2, hop) for hop in up)
                last_ack = max(last_ack, ack)
        everywhere.append(last_live)
        known.append(last_ack)

    def pct(values, p):
        values = sorted(values)
        return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]

    nodes = args.cities * args.per_city
    relays = f"{len(hubs)} regional and {args.cities} city relays" if args.tiers == 2 else f"{args.cities} city relays"
    print(f"simulated propagation: {args.cities} cities x {args.per_city} nodes = {nodes} nodes behind "
          f"{relays}, control plane in Ashburn; {args.deploys} deploys")
    print(f"  a node is live after:        p50 {pct(per_node, 50):6.0f} ms  p99 {pct(per_node, 99):6.0f} ms")
    print(f"  every node is live after:    p50 {pct(everywhere, 50):6.0f} ms  p99 {pct(everywhere, 99):6.0f} ms")
    print(f"  the control plane knows at:  p50 {pct(known, 50):6.0f} ms  p99 {pct(known, 99):6.0f} ms "
          f"(what `tern deploy` would report)")
    print(f"  mean apply per node {statistics.mean(APPLY_MS):.1f} ms (measured, one node on loopback); "
          "assumptions: see the docstring")
    print("  budget: live everywhere in about a second (the mission); the loopback budget p99 <= 1 s "
          "is benches/deploy.py's")


if __name__ == "__main__":
    main()
