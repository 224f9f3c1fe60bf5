#!/usr/bin/env python3
"""Prints a bench.py run (50 connections, then 1) against PERFORMANCE.md's budgets.

Ratios are against bare hyper measured in the same run; absolute numbers move with the
machine's load. A missed budget is printed as MISSED, never hidden.
"""
import json, sys

c50, c1 = (json.load(open(p)) for p in sys.argv[1:3])
p50, p1 = c50["peers"], c1["peers"]
hy, tern = p50.get("hyper", {}), p50.get("tern", {})
if "error" in tern or "error" in hy:
    sys.exit(f"benchmark failed: tern={tern.get('error')} hyper={hy.get('error')}")

def line(what, value, budget, ok):
    print(f"  {what:<52} {value:>22}   budget {budget:<24} {'ok' if ok else 'MISSED'}")

print("\n== peers at 50 connections (server pinned to one core)")
print(f"  {'peer':<14}{'req/s':>9}{'x hyper':>9}{'cpu us/req':>12}{'p50 ms':>9}{'p99 ms':>9}{'cold ms':>9}{'idle MiB':>10}{'load MiB':>10}")
for name, r in p50.items():
    if "error" in r:
        print(f"  {name:<14} error: {r['error'][:80]}")
        continue
    print(f"  {name:<14}{r['rps']:>9}{r.get('rps_vs_hyper', 0):>9}{r.get('server_cpu_us_per_req', 0):>12}"
          f"{r['p50_ms']:>9}{r['p99_ms']:>9}{r['cold_ms_median']:>9}{r['idle_rss_mib_median']:>10}{r['rss_after_load_mib']:>10}")

def against_budgets(name):
    tern, t1, h1 = p50.get(name, {}), p1.get(name, {}), p1.get("hyper", {})
    if not tern.get("rps"):
        return
    print(f"\n== {name} against its budgets")
    ratio = tern["rps"] / hy["rps"]
    line("warm throughput per core, hello (x bare hyper)", f"{ratio:.2f}", ">= 0.50 (stretch 0.80)", ratio >= 0.5)
    if "workerd" in p50 and p50["workerd"].get("rps"):
        w = tern["rps"] / p50["workerd"]["rps"]
        line("warm throughput (x workerd)", f"{w:.2f}", ">= 3", w >= 3)
    if h1.get("p50_ms") is not None and t1.get("p50_ms") is not None:
        extra_us = (t1["p50_ms"] - h1["p50_ms"]) * 1000
        line("warm request, 1 connection: p50 over bare hyper", f"+{extra_us:.0f} us", "<= +50 us (stretch +20)", extra_us <= 50)
        line(f"  ({name} p50 / p99 at 1 connection)", f"{t1['p50_ms']} / {t1['p99_ms']} ms", "", True)
    line("node process start to first response (median)", f"{tern['cold_ms_median']} ms", "<= 50 ms (stretch 20)", tern["cold_ms_median"] <= 50)
    line("server CPU per request", f"{tern['server_cpu_us_per_req']} us", f"hyper {hy['server_cpu_us_per_req']} us", True)
    line("idle RSS, one function booted", f"{tern['idle_rss_mib_median']} MiB", "(isolate budget: see issue 3)", True)

# In-process isolates (tern dev), then isolate hosts (tern node's default).
against_budgets("tern")
against_budgets("tern-hosts")
