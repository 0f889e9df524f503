"""Draw the benchmark's charts from docs/benchmarks.json (run in bench/.peers/main, which has matplotlib).

    chart.py RESULTS.json DRAIN.png EFFICIENCY.png
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

OURS, RAW, PEER = "#c0392b", "#999999", "#2980b9"


def title(results: dict, what: str) -> str:
    machine = results["machine"]
    return f"{what} — {machine['cores']} cores, redis-server {machine['redis_server']}, {machine['date']}"


def drain_chart(results: dict, path: str) -> None:
    """Bars: each system's no-op drain rate with one worker process (log scale)."""
    bars = [("raw BLMOVE+LREM loop", results["raw_loop"], RAW),
            ("raw bare batched consumer", results["raw_batched"]["drain"], RAW),
            ("workqueue reliable", results["reliable"]["drain"], OURS),
            ("workqueue simple", results["simple"]["drain"], "#e67e22")]
    bars += [(name, peer["drain"], PEER) for name, peer in results["peers"].items()]
    bars.sort(key=lambda bar: bar[1])
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(bars) + 1.2))
    ax.barh([b[0] for b in bars], [b[1] for b in bars], color=[b[2] for b in bars])
    ax.set_xscale("log")
    ax.set_xlabel("messages per second, one worker process, no-op jobs (log scale)")
    for y, (_, value, _) in enumerate(bars):
        ax.text(value, y, f" {value:,.0f}", va="center", fontsize=9)
    ax.set_title(title(results, "Drain rate"), fontsize=10)
    ax.set_xlim(right=max(b[1] for b in bars) * 4)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def spin_label(seconds: float) -> str:
    if seconds == 0:
        return "0"
    return f"{seconds * 1000:g} ms" if seconds >= 0.001 else f"{seconds * 1e6:g} µs"


def efficiency_chart(results: dict, path: str) -> None:
    """Lines: share of wall time spent in the handler against the handler's busy-wait, one
    line per system. The busy-waits are evenly spaced categories (0 has no place on a log axis)."""
    styles = {"workqueue": (OURS, "-", "workqueue reliable"), "raw": (RAW, "--", "raw BLMOVE+LREM loop"),
              "raw-batched": ("#555555", ":", "raw bare batched consumer")}
    peer_colours = iter(["#2980b9", "#27ae60", "#8e44ad", "#16a085", "#d4ac0d", "#7f8c8d"])
    fig, ax = plt.subplots(figsize=(8, 4.8))
    spins = sorted({run["handler_seconds"] for runs in results["efficiency"].values() for run in runs})
    for name, runs in results["efficiency"].items():
        colour, line, label = styles.get(name, (None, "-", name))
        by_spin = {run["handler_seconds"]: run["efficiency"] * 100 for run in runs}
        ax.plot(range(len(spins)), [by_spin[s] for s in spins], line, marker="o", label=label,
                color=colour or next(peer_colours), linewidth=2.5 if name == "workqueue" else 1.5)
    ax.set_xticks(range(len(spins)), [spin_label(s) for s in spins])
    ax.set_xlabel("handler time per message (busy-wait)")
    ax.set_ylabel("time in the handler / wall time (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    ax.set_title(title(results, "Handler efficiency, one worker"), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    with open(sys.argv[1]) as file:
        results = json.load(file)
    drain_chart(results, sys.argv[2])
    efficiency_chart(results, sys.argv[3])
