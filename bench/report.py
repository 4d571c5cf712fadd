#!/usr/bin/env python3
"""Summarises one bench/run.sh results directory: medians of the runs per scenario and server, ratios
gateway/Node against the goals of issue 8, a markdown table (summary.md), summary.json, and with
--chart PATH the S2 chart (p99 latency vs rate per server; matplotlib).

    python3 bench/report.py bench/results/latest [--chart docs/s2-latency.png]
"""
import argparse
import glob
import json
import os
import re
import statistics
import sys

SERVERS = ["gateway", "node", "raw"]
# The gateway measured through its plain WebSocket endpoint /ws (issue 13).
WS = "gwws"


def load(d):
    runs = {}
    for f in sorted(glob.glob(os.path.join(d, "s[0-9]-*-*.json"))):
        m = re.match(r"(s\d)-(\w+)-(\d+)\.json$", os.path.basename(f))
        if not m:
            continue
        try:
            with open(f) as fh:
                doc = json.load(fh)
        except (OSError, ValueError):
            continue
        runs.setdefault(m.group(1), {}).setdefault(m.group(2), []).append(doc)
    return runs


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, nd=1):
    if x is None:
        return "n/a"
    if isinstance(x, float) and not x.is_integer():
        return f"{x:,.{nd}f}"
    return f"{int(x):,}"


def ratio(a, b, nd=2):
    if a is None or b in (None, 0):
        return None
    return round(a / b, nd)


def step_at(doc, rate):
    for s in doc.get("steps", []):
        if s["rate"] == rate:
            return s
    return None


def best_step(doc):
    best = [s for s in doc.get("steps", []) if s.get("pass")]
    return max(best, key=lambda s: s["rate"]) if best else None


def other_max(docs):
    vals = []
    for d in docs:
        if "other_cpu_pct" in d:
            vals.append(d["other_cpu_pct"])
        for st in d.get("steps", []) + ([d["fixed"]] if "fixed" in d else []):
            if "other_cpu_pct" in st:
                vals.append(st["other_cpu_pct"])
    return max(vals) if vals else None


def summarise(runs):
    out = {}
    if "s1" in runs:
        r = {}
        for srv, docs in runs["s1"].items():
            r[srv] = {
                "runs": len(docs),
                "rss_per_conn_kib": med([d.get("rss_per_conn_kib") for d in docs]),
                "rss_per_conn_settled_kib": med([d.get("rss_per_conn_settled_kib") for d in docs]),
                "connected": med([d.get("connected") for d in docs]),
                "failures": sum(d.get("failures", 0) for d in docs),
                "idle_cpu_pct": med([d.get("idle_cpu_pct") for d in docs]),
                "all": [d.get("rss_per_conn_kib") for d in docs],
            }
        out["s1"] = r
    if "s4" in runs:
        r = {}
        for srv, docs in runs["s4"].items():
            r[srv] = {
                "runs": len(docs),
                "connects_per_sec": med([d.get("connects_per_sec") for d in docs]),
                "failures": sum(d.get("failures", 0) for d in docs),
                "p99_connect_ms": med([d.get("connect_latency", {}).get("p99_ms") for d in docs]),
                "cpu_us_per_connect": med([d.get("server_cpu_us_per_connect") for d in docs]),
                "all": [d.get("connects_per_sec") for d in docs],
            }
        out["s4"] = r
    for sc in ("s2", "s5", "s6"):
        if sc not in runs:
            continue
        r = {}
        for srv, docs in runs[sc].items():
            bests = [best_step(d) for d in docs]
            r[srv] = {
                "runs": len(docs),
                "best_rate": med([d.get("best_rate", 0) for d in docs]),
                "best_deliveries_per_sec": med([d.get("best_deliveries_per_sec", 0) for d in docs]),
                "members": med([d.get("members") for d in docs]),
                "p99_at_best_ms": med([b["p99_ms"] if b else None for b in bests]),
                "cpu_us_per_delivery_at_best": med([b["server_cpu_us_per_unit"] if b else None for b in bests]),
                "gen_cpu_pct_at_best": med([b["gen_cpu_pct"] if b else None for b in bests]),
                "all": [d.get("best_rate", 0) for d in docs],
                "curve": curve(docs),
            }
        out[sc] = r
    for sc, per in runs.items():
        for srv, docs in per.items():
            if sc in out and srv in out[sc]:
                out[sc][srv]["other_cpu_max_pct"] = other_max(docs)
    if "s3" in runs:
        r = {}
        for srv, docs in runs["s3"].items():
            fixed = [d.get("fixed", {}) for d in docs]
            r[srv] = {
                "runs": len(docs),
                "fixed_rate": med([f.get("rate") for f in fixed]),
                "fixed_p50_ms": med([f.get("latency", {}).get("p50_ms") for f in fixed]),
                "fixed_p99_ms": med([f.get("latency", {}).get("p99_ms") for f in fixed]),
                "fixed_lost": sum(f.get("lost", 0) for f in fixed),
                "fixed_cpu_us_per_ack": med([f.get("server_cpu_us_per_unit") for f in fixed]),
                "best_rate": med([d.get("best_rate", 0) for d in docs]),
                "all": [d.get("best_rate", 0) for d in docs],
            }
        out["s3"] = r
        for srv, docs in runs["s3"].items():
            r[srv]["other_cpu_max_pct"] = other_max(docs)
    return out


def curve(docs):
    """rate -> median p99/p50/loss over the runs that reached that rate."""
    by_rate = {}
    for d in docs:
        for s in d.get("steps", []):
            e = by_rate.setdefault(s["rate"], {"p99": [], "p50": [], "loss": [], "cpu": []})
            e["p99"].append(s["latency"].get("p99_ms"))
            e["p50"].append(s["latency"].get("p50_ms"))
            e["loss"].append(s.get("loss_pct"))
            e["cpu"].append(s.get("server_cpu_us_per_unit"))
    return [
        {"rate": k, "runs": len(v["p99"]), "p99_ms": med(v["p99"]), "p50_ms": med(v["p50"]),
         "loss_pct": med(v["loss"]), "cpu_us_per_delivery": med(v["cpu"])}
        for k, v in sorted(by_rate.items())
    ]


def g(summary, sc, srv, key):
    return summary.get(sc, {}).get(srv, {}).get(key)


def tables(s):
    lines = []

    def row(*cells):
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")

    def verdict(ok):
        return "n/a" if ok is None else ("**met**" if ok else "missed")

    lines.append("| scenario | figure | gateway | Node | raw | gateway/Node | goal | goal met? |")
    lines.append("|---|---|---|---|---|---|---|---|")
    if "s1" in s:
        gw, nd, rw = (g(s, "s1", x, "rss_per_conn_kib") for x in SERVERS)
        r = ratio(gw, nd)
        row("S1 idle 10k", "RSS per connection (KiB)", fmt(gw, 1), fmt(nd, 1), fmt(rw, 1), fmt(r, 2), "≤ 0.4×",
            verdict(None if r is None else r <= 0.4))
        row("", "failures / connected", f'{g(s, "s1", "gateway", "failures")} / {fmt(g(s, "s1", "gateway", "connected"))}',
            f'{g(s, "s1", "node", "failures")} / {fmt(g(s, "s1", "node", "connected"))}',
            f'{g(s, "s1", "raw", "failures")} / {fmt(g(s, "s1", "raw", "connected"))}', "", "", "")
        row("", "idle CPU (% of a core)", fmt(g(s, "s1", "gateway", "idle_cpu_pct"), 1),
            fmt(g(s, "s1", "node", "idle_cpu_pct"), 1), fmt(g(s, "s1", "raw", "idle_cpu_pct"), 1), "", "", "")
        ws = g(s, "s1", WS, "rss_per_conn_kib")
        if ws is not None:
            row("S1 /ws idle 10k", "RSS per /ws connection (KiB)", fmt(ws, 1), fmt(nd, 1), fmt(rw, 1), fmt(ratio(ws, nd), 2),
                "≤ 6 KiB", verdict(ws <= 6))
            row("", "failures / connected", f'{g(s, "s1", WS, "failures")} / {fmt(g(s, "s1", WS, "connected"))}',
                "", "", "", "", "")
    if "s2" in s:
        gw, nd, rw = (g(s, "s2", x, "best_rate") for x in SERVERS)
        r = ratio(gw, nd)
        row("S2 fan-out 1,000", "highest rate, p99 < 50 ms, no loss (msg/s)", fmt(gw), fmt(nd), fmt(rw), fmt(r, 2),
            "≥ 3×", verdict(None if r is None else r >= 3))
        row("", "deliveries/s at that rate", fmt(g(s, "s2", "gateway", "best_deliveries_per_sec")),
            fmt(g(s, "s2", "node", "best_deliveries_per_sec")), fmt(g(s, "s2", "raw", "best_deliveries_per_sec")),
            "", "", "")
        row("", "server CPU µs per delivery at that rate", fmt(g(s, "s2", "gateway", "cpu_us_per_delivery_at_best"), 2),
            fmt(g(s, "s2", "node", "cpu_us_per_delivery_at_best"), 2),
            fmt(g(s, "s2", "raw", "cpu_us_per_delivery_at_best"), 2), "", "", "")
        ws = g(s, "s2", WS, "best_rate")
        if ws is not None:
            r2 = ratio(ws, gw)
            row("S2 /ws fan-out 1,000", "highest rate, p99 < 50 ms, no loss (msg/s)", fmt(ws), fmt(nd), fmt(rw),
                fmt(ratio(ws, nd), 2), "≥ 2× the Socket.IO path (" + fmt(r2, 2) + "×)", verdict(None if r2 is None else r2 >= 2))
            row("", "deliveries/s at that rate", fmt(g(s, "s2", WS, "best_deliveries_per_sec")), "", "", "", "", "")
            row("", "p99 at that rate (ms)", fmt(g(s, "s2", WS, "p99_at_best_ms"), 1), "", "", "", "", "")
            row("", "server CPU µs per delivery at that rate", fmt(g(s, "s2", WS, "cpu_us_per_delivery_at_best"), 2),
                "", "", "", "", "")
        rr = ratio(rw, gw)
        row("raw limit", "raw rate / gateway rate", "", "", "", fmt(rr, 2), "gateway within 2× (≤ 2)",
            verdict(None if rr is None else rr <= 2))
    if "s3" in s:
        gp50, np50 = g(s, "s3", "gateway", "fixed_p50_ms"), g(s, "s3", "node", "fixed_p50_ms")
        gp99, np99 = g(s, "s3", "gateway", "fixed_p99_ms"), g(s, "s3", "node", "fixed_p99_ms")
        row("S3 acks at 10k/s", "p50 (ms)", fmt(gp50, 2), fmt(np50, 2), "", fmt(ratio(gp50, np50), 2), "", "")
        r = ratio(gp99, np99)
        row("", "p99 (ms)", fmt(gp99, 2), fmt(np99, 2), "", fmt(r, 2), "≤ 0.5×", verdict(None if r is None else r <= 0.5))
        row("", "lost acks (all runs)", g(s, "s3", "gateway", "fixed_lost"), g(s, "s3", "node", "fixed_lost"), "", "", "", "")
        row("", "server CPU µs per ack", fmt(g(s, "s3", "gateway", "fixed_cpu_us_per_ack"), 2),
            fmt(g(s, "s3", "node", "fixed_cpu_us_per_ack"), 2), "", "", "", "")
        gw, nd = g(s, "s3", "gateway", "best_rate"), g(s, "s3", "node", "best_rate")
        r = ratio(gw, nd)
        row("", "highest rate with p99 < 10 ms (acks/s)", fmt(gw), fmt(nd), "", fmt(r, 2), "≥ 3×",
            verdict(None if r is None else r >= 3))
    if "s4" in s:
        gw, nd = g(s, "s4", "gateway", "connects_per_sec"), g(s, "s4", "node", "connects_per_sec")
        r = ratio(gw, nd)
        row("S4 storm 10k", "connects/s", fmt(gw), fmt(nd), "", fmt(r, 2), "≥ 3×", verdict(None if r is None else r >= 3))
        gf, nf = g(s, "s4", "gateway", "failures"), g(s, "s4", "node", "failures")
        row("", "failures (all runs)", gf, nf, "", "", "0", verdict(None if gf is None else gf == 0))
        row("", "p99 connect time (ms)", fmt(g(s, "s4", "gateway", "p99_connect_ms"), 1),
            fmt(g(s, "s4", "node", "p99_connect_ms"), 1), "", "", "", "")
        row("", "server CPU µs per connect", fmt(g(s, "s4", "gateway", "cpu_us_per_connect"), 0),
            fmt(g(s, "s4", "node", "cpu_us_per_connect"), 0), "", "", "", "")
    if "s5" in s:
        gw, nd = g(s, "s5", "gateway", "best_rate"), g(s, "s5", "node", "best_rate")
        r = ratio(gw, nd)
        m = g(s, "s5", "gateway", "members") or g(s, "s5", "node", "members")
        row(f"S5 two nodes, {fmt(m)} sockets", "highest cross-node rate, p99 < 50 ms, no loss (msg/s)", fmt(gw), fmt(nd),
            "", fmt(r, 2), "≥ 2×", verdict(None if r is None else r >= 2))
        row("", "server CPU µs per delivery (both nodes) at that rate",
            fmt(g(s, "s5", "gateway", "cpu_us_per_delivery_at_best"), 2),
            fmt(g(s, "s5", "node", "cpu_us_per_delivery_at_best"), 2), "", "", "", "")
    if "s6" in s:
        gw, nd = g(s, "s6", "gateway", "best_rate"), g(s, "s6", "node", "best_rate")
        m = g(s, "s6", "gateway", "members") or g(s, "s6", "node", "members")
        row(f"S6 fan-out {fmt(m)}", "highest rate, p99 < 1 s, no loss (msg/s)", fmt(gw), fmt(nd), "",
            fmt(ratio(gw, nd), 2), "(no goal: the size of the third-party measurement)", "")
        row("", "deliveries/s at that rate", fmt(g(s, "s6", "gateway", "best_deliveries_per_sec")),
            fmt(g(s, "s6", "node", "best_deliveries_per_sec")), "", "", "", "")
        row("", "p99 at that rate (ms)", fmt(g(s, "s6", "gateway", "p99_at_best_ms"), 1),
            fmt(g(s, "s6", "node", "p99_at_best_ms"), 1), "", "", "", "")
        row("", "load generator CPU at that rate (% of its core)", fmt(g(s, "s6", "gateway", "gen_cpu_pct_at_best"), 0),
            fmt(g(s, "s6", "node", "gen_cpu_pct_at_best"), 0), "", "", "", "")
    lines.append("")
    lines.append("Disturbance check: the largest share of a core used by anything but the server and the generator "
                 "during a measurement (other processes, unattributed interrupts), per scenario and server: "
                 + "; ".join(f"{sc} {srv} {v['other_cpu_max_pct']:.0f}%" for sc in ("s1", "s2", "s3", "s4", "s5", "s6")
                             if sc in s for srv, v in s[sc].items() if v.get("other_cpu_max_pct") is not None))
    lines.append("")
    lines.append("Runs per server (each value; the table shows the median):")
    lines.append("")
    for sc, key in (("s1", "rss_per_conn_kib"), ("s2", "best_rate"), ("s3", "best_rate"), ("s4", "connects_per_sec"),
                    ("s5", "best_rate"), ("s6", "best_rate")):
        if sc in s:
            parts = [f"{srv} {s[sc][srv]['all']}" for srv in SERVERS + [WS] if srv in s[sc]]
            lines.append(f"- {sc} {key}: " + "; ".join(parts))
    for sc in ("s2", "s5", "s6"):
        if sc not in s:
            continue
        lines.append("")
        lines.append(f"{sc.upper()} per rate (median over the runs that reached it): p50 / p99 ms, loss %, server CPU µs per delivery")
        lines.append("")
        lines.append("| rate (msg/s) | " + " | ".join(srv for srv in SERVERS if srv in s[sc]) + " |")
        lines.append("|---|" + "---|" * len([x for x in SERVERS if x in s[sc]]))
        rates = sorted({c["rate"] for srv in s[sc].values() for c in srv["curve"]})
        for rate in rates:
            cells = []
            for srv in SERVERS:
                if srv not in s[sc]:
                    continue
                c = next((c for c in s[sc][srv]["curve"] if c["rate"] == rate), None)
                cells.append("" if c is None else
                             f'{fmt(c["p50_ms"], 1)} / {fmt(c["p99_ms"], 1)}, {fmt(c["loss_pct"], 2)}%, {fmt(c["cpu_us_per_delivery"], 2)}')
            lines.append(f"| {rate:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def chart(s, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    colors = {"gateway": "tab:blue", "gwws": "tab:orange", "node": "tab:green", "raw": "tab:gray"}
    names = {"gateway": "realtime-gateway (Socket.IO)", "gwws": "realtime-gateway (/ws)", "node": "Node socket.io 4.8 (ws)", "raw": "raw tokio-tungstenite"}
    for srv in SERVERS + [WS]:
        c = s.get("s2", {}).get(srv, {}).get("curve")
        if not c:
            continue
        xs = [p["rate"] for p in c]
        ax.plot(xs, [p["p99_ms"] for p in c], marker="o", color=colors[srv], label=f"{names[srv]} p99")
        ax.plot(xs, [p["p50_ms"] for p in c], linestyle="--", marker=".", color=colors[srv], alpha=0.6,
                label=f"{names[srv]} p50")
        lossy = [p for p in c if (p["loss_pct"] or 0) > 0]
        if lossy:
            ax.scatter([p["rate"] for p in lossy], [p["p99_ms"] for p in lossy], marker="x", s=80, color="red", zorder=5)
    ax.axhline(50, color="red", linestyle=":", linewidth=1, label="50 ms (S2 goal line); x = loss")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("messages/s to one room of 1,000 sockets (deliveries/s = 1,000 × this)")
    ax.set_ylabel("latency (ms), median of runs")
    ax.set_title("S2 fan-out: latency vs rate (server on 1 core, generator on the other)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--chart")
    a = ap.parse_args()
    runs = load(a.dir)
    if not runs:
        print(f"no results in {a.dir}", file=sys.stderr)
        return 1
    s = summarise(runs)
    text = tables(s)
    with open(os.path.join(a.dir, "summary.json"), "w") as fh:
        json.dump(s, fh, indent=2)
    with open(os.path.join(a.dir, "summary.md"), "w") as fh:
        fh.write(text + "\n")
    print(text)
    if a.chart and "s2" in s:
        try:
            chart(s, a.chart)
            print(f"\nchart: {a.chart}")
        except ImportError:
            print("matplotlib missing (pip install matplotlib): no chart", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
