"""The report of the soak test: soak.md and soak.svg, made from what scripts/soak.py leaves
in target/bench/soak/ (summary.json with the samples and the checks, loadtest.json). Python
3.11+, standard library only. Run by the soak at its end; on its own:

    python3 scripts/soak_report.py [--results-dir DIR] [--doc-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_chart import Axis, Band, Series, line_chart  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "target" / "bench" / "soak"
SAMPLE_EVERY = 5.0
SVG_NAME = "soak.svg"


def default_doc_dir(minutes: float) -> Path:
    """docs/ for runs of 10 minutes or more; a shorter trial stays in target/bench/soak/."""
    return REPO / "docs" if minutes >= 10 else OUT


def fmt(v, d=2):
    return "–" if v is None else f"{v:.{d}f}"


def mib(v) -> str:
    return "–" if v is None else f"{v / 1048576:.1f}"


def chart(samples: list[dict], send_end: float | None, warmup: float) -> str:
    """Server RSS (left axis) and peers (right axis) over the run, the warm-up and the time
    after the load shaded."""
    pts = [s for s in samples if s.get("rss") is not None]
    tmax = max((s["t"] for s in pts), default=0) or 1
    bands = [Band(0, warmup, "#f3f3f3", "warm-up", "#888")]
    if send_end is not None and send_end < tmax:
        bands.append(Band(send_end, tmax, "#eef6ee", "load stopped", "#585"))
    step = 60 if tmax <= 1200 else 300
    return line_chart(
        "Soak: server RSS and peers over time",
        Axis("minutes since the load started", pad=1.0),
        Axis("server RSS (MiB)", color="#1f77b4", round_top=True),
        [Series("server RSS", "#1f77b4", [(s["t"], s["rss"] / 1048576) for s in pts], markers=False),
         Series("peers", "#d62728", [(s["t"], s.get("peers")) for s in pts],
                dash="5 3", width=1.5, markers=False, right=True)],
        size=(860, 420), margins=(80, 90, 50, 56),
        y_right=Axis("peers (stats.json peersCount)", color="#d62728", round_top=True),
        x_ticks=[(t, f"{t // 60:d}") for t in range(0, int(tmax) + 1, step)],
        bands=bands, legend=False)


def render(summary: dict, report: dict | None, doc_dir: Path) -> Path:
    """Writes soak.md and soak.svg into `doc_dir`; `report` is the load tester's JSON."""
    lines: list[str] = []
    w = lines.append
    _intro(w, summary)
    _checks(w, summary)
    if report:
        _loadtest(w, report)
    _samples(w, summary)
    doc = doc_dir / "soak.md"
    doc.write_text("\n".join(lines))
    (doc_dir / SVG_NAME).write_text(chart(summary["samples"], summary.get("send_end"), summary["settings"]["warmup"]))
    return doc


def _intro(w, summary: dict) -> None:
    a = summary["settings"]
    m = summary["machine"]
    w("# Soak test")
    w("")
    w(f"Result: **{'PASS' if summary['passed'] else 'FAIL'}**, run of {summary['minutes']:g} min started "
      f"{summary['started_text']} UTC. Reproduce with:")
    w("")
    w("```sh")
    w(summary["command"])
    w("```")
    w("")
    w("## Set-up")
    w("")
    w(f"- Machine: {m['nproc']} CPUs ({m['cpu']}), Linux {m['kernel']}, shared with other work.")
    w(f"- Server: `target/release/p2p-mediastream` at commit {summary['commit']}, default settings except "
      "`TRACKER__SERVER__HOST=127.0.0.1 TRACKER__SERVER__PORT=<free port> RUST_LOG=warn,p2p_mediastream=info`"
      + ("" if a["no_pin"] else ", pinned to core 1 (`taskset -c 1`); the load tester on core 0") + ".")
    w(f"- Load (`loadtest`): {a['connections']} connections over 4 source IPs, {a['swarms']} swarms of which 4 hot "
      f"(30 % of the peers), the rest Zipf-distributed; {a['rate']:g} announces/s in total (each peer every "
      f"{a['connections'] / a['rate']:g} s), 5 offers × 1500 B per announce, every offer answered; "
      f"{a['churn_per_sec']:g} connections/s closed and reopened with a new peer_id; one scrape per 20 "
      f"announces; {a['duration'] / 60:g} min, the first {a['warmup']:g} s warm-up. The default per-connection "
      "limits stay on (20 msg/s, 1000 connections per IP): this load stays under them, as real clients do.")
    w(f"- Every {SAMPLE_EVERY:g} s: the server's VmRSS, VmHWM, threads and open fds from `/proc/PID`, its "
      "CPU from `/proc/PID/stat`, and `peersCount`, `torrentsCount`, `connections` from `/stats.json`.")
    w("")


def _checks(w, summary: dict) -> None:
    w("## Checks")
    w("")
    w("| check | result | measured |")
    w("|---|---|---|")
    for name, ok, detail in summary["checks"]:
        w(f"| {name} | {'pass' if ok else '**FAIL**'} | {detail} |")
    w("")
    w("Why this RSS criterion: the steady phase (after the warm-up, while the load runs) is split into "
      "quarters. The first quarter is left out because the allocator, the swarm maps and the "
      "per-connection buffers are still reaching their working size then, and churn has not yet "
      "replaced the first generation of peers. A leak proportional to traffic or to churned "
      "connections grows linearly, so it shows as the last quarter's mean rising above the "
      "second's; the 10 % margin absorbs allocator noise (glibc arenas give memory back in steps). "
      "For information, the least-squares slope of RSS over the second half of the steady phase: "
      f"{fmt(summary['slope_mib_per_hour'], 1)} MiB per hour.")
    w("")
    w(f"![RSS and peers over time]({SVG_NAME})")
    w("")


def _loadtest(w, report: dict) -> None:
    t, lat, thr, c, e = (report["traffic"], report["latency_ms"], report["throughput"],
                         report["connections"], report["errors"])
    srv = report.get("server") or {}
    w("## Load tester summary (measurement window)")
    w("")
    w("| figure | value |")
    w("|---|---|")
    win = report.get("window_secs") or 1
    w(f"| window | {win:.0f} s |")
    w(f"| announces sent / responses | {t['announces_sent']:,} / {t['announce_responses']:,} ({t['announces_sent'] / win:.0f}/s) |")
    w(f"| offers expected / received (delivery) | {t['offers_expected']:,} / {t['offers_received']:,} ({fmt(t['offer_delivery_ratio'], 4)}) |")
    w(f"| answers sent / received (delivery) | {t['answers_sent']:,} / {t['answers_received']:,} ({fmt(t['answer_delivery_ratio'], 4)}) |")
    w(f"| scrapes sent / responses | {t['scrapes_sent']:,} / {t['scrape_responses']:,} |")
    w(f"| messages/s at the client (in + out) | {thr['msgs_per_sec']:,.0f} |")
    for key, label in (("announce_rtt", "announce round trip"), ("offer_relay", "offer relay A→B"),
                       ("signalling_rtt", "offer→answer"), ("scrape_rtt", "scrape round trip")):
        p = lat.get(key)
        if p:
            w(f"| {label} p50 / p99 / p99.9 / max (ms) | {p['p50']:.2f} / {p['p99']:.2f} / {p['p99_9']:.2f} / {p['max']:.2f} |")
    w(f"| connections attempted / established / failed | {c['attempted']:,} / {c['established']:,} / {c['failed']:,} |")
    w(f"| churned (closed by the tester) / closed by the server / lost | {c['churned']:,} / {c['closed_by_server']:,} / {c['lost']:,} |")
    w(f"| errors / requests (rate) | {e['errors']:,} / {e['requests']:,} ({(e.get('error_rate') or 0) * 100:.3f} %) |")
    if e.get("failure_reasons"):
        fr = "; ".join(f"{k!r} ×{v}" for k, v in sorted(e["failure_reasons"].items(), key=lambda kv: -kv[1])[:5])
        fr = fr.replace("|", "\\|")
        w(f"| failure reasons | {fr} |")
    w(f"| anomalies (to self / wrong swarm / misrouted) | {t['offers_to_self']} / {t['offers_wrong_swarm']} / {t['answers_misrouted']} |")
    w(f"| server CPU (% of a core) / run-queue wait | {srv.get('cpu_percent', 0):.0f} % / {srv.get('runqueue_wait_percent', 0):.1f} % |")
    w(f"| client CPU / host busy | {report['client']['cpu_percent']:.0f} % / {report['host']['busy_percent']:.0f} % |")
    w("")
    if report.get("notes"):
        w("Notes from the load tester:")
        w("")
        for n in report["notes"]:
            w(f"- {n}")
        w("")


def _samples(w, summary: dict) -> None:
    samples = summary["samples"]
    w("## Samples")
    w("")
    w(f"Every 30 s of load, then every sample after the load stopped (all {len(samples)} samples, one per "
      f"{SAMPLE_EVERY:g} s, are in `target/bench/soak/samples.csv`). Baseline before the load: RSS "
      f"{(summary['rss_baseline'] or 0) / 1048576:.1f} MiB.")
    w("")
    w("| t (s) | phase | RSS (MiB) | VmHWM (MiB) | peers | swarms | connections | fds | threads | server CPU % |")
    w("|---|---|---|---|---|---|---|---|---|---|")
    next_t = 0.0
    for s in samples:
        if s["phase"] == "after" or s["t"] >= next_t:
            if s["phase"] == "load":
                next_t = (s["t"] // 30 + 1) * 30
            w(f"| {s['t']:.0f} | {s['phase']} | {mib(s['rss'])} | {mib(s['hwm'])} | {s['peers']} | {s['swarms']} | "
              f"{s['connections']} | {s['fds']} | {s['threads']} | {fmt(s['cpu_percent'], 0)} |")
    w("")
    if summary["warnings"]:
        w("Warnings in the server log (first 20):")
        w("")
        w("```")
        for line in summary["warnings"]:
            w(line[:240])
        w("```")
        w("")


def load(results: Path) -> tuple[dict, dict | None]:
    """summary.json and the load tester's report (None when it wrote none) of a results directory."""
    summary = json.loads((results / "summary.json").read_text())
    lt_json = results / "loadtest.json"
    report = json.loads(lt_json.read_text()) if lt_json.exists() and lt_json.stat().st_size else None
    return summary, report


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="scripts/soak_report.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results-dir", default=str(OUT), help="where the soak left its results (default target/bench/soak/)")
    p.add_argument("--doc-dir", default=None, help="where soak.md and soak.svg go "
                   "(default docs/ for runs of 10 minutes or more, else target/bench/soak/)")
    args = p.parse_args(argv)
    results = Path(args.results_dir)
    if not (results / "summary.json").exists():
        print(f"soak_report: {results / 'summary.json'} does not exist: run the soak first", file=sys.stderr)
        return 2
    summary, report = load(results)
    doc_dir = Path(args.doc_dir) if args.doc_dir else default_doc_dir(summary["minutes"])
    doc_dir.mkdir(parents=True, exist_ok=True)
    print(f"soak_report: wrote {render(summary, report, doc_dir)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
