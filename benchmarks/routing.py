"""Compare the routing policies on an emulated heterogeneous fleet, side by side in one run.

Four simulated backends with different TTFT, time per output token, slots and price (one
priced by the GPU-hour), one of which slows down 5x halfway through; requests arrive as a
Poisson process at `--load` x the fleet's capacity, each with a system prompt drawn from 32
shared documents (engines keep 8 prefixes each in their KV cache, and a cached prefix cuts
TTFT to a fifth). Every policy sees the same requests on a fresh fleet, with the real live
statistics (`LocalStats`) on a virtual clock: no sleeping, no network, a few seconds in all.

The oracle knows each backend's true speed, queue and cache, and each request's true
output length, and sends every request where it will finish first: the greedy ideal.

Usage (from the repo root)::

    python benchmarks/routing.py
    python benchmarks/routing.py --seed 7 --requests 6000 --load 0.8
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the simulator, shared with tests

from fleet_sim import BackendSpec, FleetSimulator, OraclePolicy, SimRun, VirtualClock, percentile, poisson_requests

from gateway.config import CostConfig, RouteConfig, SloConfig, StatsConfig
from gateway.routing.interfaces import Policy
from gateway.routing.policies import make_policy
from gateway.routing.stats import LocalStats

POLICIES = ("round_robin", "weighted", "least_loaded", "latency", "cost", "prefix_affinity", "oracle")
MEAN_OUTPUT_TOKENS = 128.0
SLO = SloConfig(ttft_ms=1500)


def fleet(degrade_at: float) -> list[BackendSpec]:
    """The emulated fleet; weights (for `weighted`) are proportional to capacity. Each engine keeps
    8 prefixes in its KV cache, and a cached prefix cuts TTFT to a fifth."""
    cache = 8
    return [
        BackendSpec("h100", 0.25, 0.010, slots=8, weight=4, prefix_cache=cache,
                    cost=CostConfig(input_per_mtok=1.0, output_per_mtok=3.0)),
        BackendSpec("a100", 0.45, 0.020, slots=8, weight=2, prefix_cache=cache, cost=CostConfig(gpu_hour_usd=1.5)),
        BackendSpec("l4", 1.10, 0.045, slots=6, weight=1, prefix_cache=cache,
                    cost=CostConfig(input_per_mtok=0.1, output_per_mtok=0.3)),
        BackendSpec("a10", 0.35, 0.016, slots=8, weight=3, prefix_cache=cache, degrade_at=degrade_at,
                    degrade_factor=5.0, cost=CostConfig(input_per_mtok=0.4, output_per_mtok=1.2)),
    ]


def simulate(name: str, args: argparse.Namespace) -> SimRun:
    specs = fleet(degrade_at=0.0)
    rate = args.load * sum(s.capacity_rps(MEAN_OUTPUT_TOKENS) for s in specs)
    degrade_at = args.requests / 2 / rate  # about halfway through the arrivals
    requests = poisson_requests(random.Random(args.seed), rate=rate, count=args.requests,
                                mean_output_tokens=MEAN_OUTPUT_TOKENS,
                                prefixes=[f"doc{i:02d}" for i in range(32)])
    clock = VirtualClock()
    stats = LocalStats(StatsConfig().half_life_s, clock)
    route = RouteConfig(model="m", backends=[s.name for s in specs], slo=SLO)
    oracle = OraclePolicy()
    policy: Policy = oracle if name == "oracle" else make_policy(
        name, route, StatsConfig(), rng=random.Random(args.seed), clock=clock)
    sim = FleetSimulator(fleet(degrade_at), policy, stats, clock)
    oracle.simulator = sim
    return sim.run(requests)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--load", type=float, default=0.6, help="arrival rate as a share of the fleet's capacity")
    args = parser.parse_args()

    began = time.perf_counter()
    names = [s.name for s in fleet(0.0)]
    header = (f"{'policy':<16} {'mean s':>7} {'p99 s':>7} {'ttft p99':>8} {'total $':>8} {'cache hit':>9}  "
              + " ".join(f"{n:>5}" for n in names))
    print(f"{args.requests} requests, load {args.load:g} of capacity, seed {args.seed}; "
          f"a10 slows 5x halfway; cost slo: ttft<={SLO.ttft_ms:g}ms")
    print(header)
    print("-" * len(header))
    for name in POLICIES:
        run = simulate(name, args)
        latencies = [o.latency_s for o in run.outcomes]
        ttfts = [o.ttft_s for o in run.outcomes]
        counts = run.by_backend()
        shares = " ".join(f"{counts.get(n, 0) / len(run.outcomes):>5.0%}" for n in names)
        hits = sum(o.cache_hit for o in run.outcomes) / len(run.outcomes)
        print(f"{name:<16} {sum(latencies) / len(latencies):>7.2f} {percentile(latencies, 99):>7.2f} "
              f"{percentile(ttfts, 99):>8.2f} {sum(o.cost_usd for o in run.outcomes):>8.4f} {hits:>9.0%}  {shares}")
    print(f"({time.perf_counter() - began:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
