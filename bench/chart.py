"""Draw docs/benchmarks.png from docs/benchmarks.json (run in bench/.peers/main, which has matplotlib)."""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

with open(sys.argv[1]) as file:
    results = json.load(file)
bars = [("raw BLMOVE+LREM loop", results["raw_loop"], "#999999"),
        ("workqueue reliable", results["reliable"]["drain"], "#c0392b"),
        ("workqueue simple", results["simple"]["drain"], "#e67e22")]
bars += [(name, peer["drain"], "#2980b9") for name, peer in results["peers"].items()]
bars.sort(key=lambda bar: bar[1])
fig, ax = plt.subplots(figsize=(8, 0.45 * len(bars) + 1.2))
ax.barh([b[0] for b in bars], [b[1] for b in bars], color=[b[2] for b in bars])
ax.set_xscale("log")
ax.set_xlabel("messages per second, one worker process, no-op jobs (log scale)")
for y, (_, value, _) in enumerate(bars):
    ax.text(value, y, f" {value:,.0f}", va="center", fontsize=9)
machine = results["machine"]
ax.set_title(f"Drain rate — {machine['cores']} cores, redis-server {machine['redis_server']}, {machine['date']}", fontsize=10)
ax.set_xlim(right=max(b[1] for b in bars) * 4)
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=110)
