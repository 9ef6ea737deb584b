"""`python -m racelab.report` (make report): one HTML page for a load run's results folder.

At the top the headline per variant (share of acked events lost, duplicate applications, counter
drift, from the checker after quiescence); then, over the run's time (Prometheus range queries),
one row per metric with the variants side by side: lost updates and duplicates counted from the
run's start (the checker's gauges count the whole lab, so the value at the start is taken off),
applied events/s, ack and apply latency p50/p99 (and optimistic's write conflicts, each one a
retry, when the run drove it); faults from the run's faults.jsonl as vertical
lines; then the checker's table and the run's settings. The plots are SVG drawn by matplotlib and
inlined, so the page opens without Grafana and without the network.
"""
from __future__ import annotations

import argparse
import html
import io
import json
import time
import urllib.parse
import urllib.request
from pathlib import Path

from datetime import datetime

import matplotlib

matplotlib.use("Agg")  # no display: render to SVG only
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

from .checker.counts import COLUMNS, HEADERS  # noqa: E402
from .checker.quiescence import judged_variants  # noqa: E402
from .clients.load import results_root  # noqa: E402

COLORS = {"unguarded": "#d62728", "locked": "#1f77b4", "temporal": "#2ca02c"}


def quantile(q: float, metric: str) -> str:
    return f"histogram_quantile({q}, sum by (variant, le) (rate({metric}_bucket[30s])))"


# (title, unit, [(PromQL by variant, line style suffix)]); unit "events since start": a whole-lab
# counter shown from the run's start
SINCE_START = "events since start"
PLOTS = [
    ("Lost updates (checker, this run)", SINCE_START, [("racelab_checker_lost_updates", "")]),
    ("Duplicates (checker, this run)", SINCE_START, [("racelab_checker_duplicates", "")]),
    ("Applied events/s", "events/s", [("sum by (variant) (rate(racelab_event_applications_total[30s]))", "")]),
    ("Ack latency", "ms", [(quantile(0.5, "racelab_ack_seconds"), " p50"),
                           (quantile(0.99, "racelab_ack_seconds"), " p99")]),
    ("Apply latency", "ms", [(quantile(0.5, "racelab_apply_latency_seconds"), " p50"),
                             (quantile(0.99, "racelab_apply_latency_seconds"), " p99")]),
]

# optimistic's own row, when the run drove it: conflicting conditional writes, each one a retry
# (the dashboard's "Write conflicts and retries (optimistic)")
OPTIMISTIC_PLOT = ("Write conflicts = retries (optimistic)", "conflicts/s",
                   [("sum by (variant) (rate(racelab_optimistic_conflicts_total[30s]))", "")])


def query_range(prometheus: str, expr: str, start: float, end: float, step: float = 5.0) -> dict[str, list]:
    """{variant: [(t, value), ...]} for a range query."""
    url = f"{prometheus}/api/v1/query_range?" + urllib.parse.urlencode(
        {"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(url, timeout=30) as resp:
        body = json.load(resp)
    if body.get("status") != "success":
        raise RuntimeError(f"Prometheus refused {expr}: {body}")
    return {r["metric"].get("variant", "all"): [(float(t), float(v)) for t, v in r["values"]]
            for r in body["data"]["result"]}


def since_start(points: list, start: float) -> list:
    """A whole-lab counter as counted from the run's start: minus its last value before it."""
    before = [v for t, v in points if t <= start and v == v]
    base = before[-1] if before else next((v for _, v in points if v == v), 0.0)
    return [(t, v - base) for t, v in points]


def svg_plot(title: str, unit: str, series: list[tuple[str, str, list]], variants: list[str],
             start: float, faults: list[dict]) -> str:
    """One row: a small plot per variant, same axes, times as clock times (local), faults as lines."""
    fig, axes = plt.subplots(1, len(variants), figsize=(3.6 * len(variants), 2.8), dpi=96,
                             sharey=True, squeeze=False)
    scale = 1000.0 if unit == "ms" else 1.0
    for ax, variant in zip(axes[0], variants):
        for name, suffix, points in series:
            if name != variant:
                continue
            if unit == SINCE_START:
                points = since_start(points, start)
            points = [(t, v) for t, v in points if v == v]  # drop NaN (no observations in the window)
            if points:
                ax.plot([datetime.fromtimestamp(t) for t, _ in points], [v * scale for _, v in points],
                        label=(suffix.strip() or variant), color=COLORS.get(variant, "#555"),
                        linestyle="--" if suffix.strip() == "p99" else "-")
        for i, fault in enumerate(faults):
            ax.axvline(datetime.fromtimestamp(fault["t"]), color="#9c27b0", linewidth=1, alpha=0.8,
                       gid=f"fault-{i}-{fault.get('kind', 'fault')}")
        ax.set_title(variant, fontsize=10)
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
        ax.tick_params(axis="x", labelsize=7, rotation=30)
        ax.grid(alpha=0.3)
        if len(ax.lines) > len(faults) and any(s.strip() for _, s, _ in series):
            ax.legend(fontsize=7, loc="upper left")
    axes[0][0].set_ylabel(unit, fontsize=8)
    fig.suptitle(title, fontsize=11)
    buf = io.StringIO()
    fig.tight_layout()
    fig.savefig(buf, format="svg")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def read_faults(run_dir: Path) -> list[dict]:
    """faults.jsonl: one {"t": epoch seconds, "kind": ..., "target": ...} per line, if the run had any."""
    path = run_dir / "faults.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def headline(checker: dict) -> str:
    """The answer first: per variant, the share of acked events lost, duplicate applications, drift."""
    rows = []
    for variant, c in checker["variants"].items():
        lost_pct = 100.0 * c["lost"] / c["accepted"] if c.get("accepted") else 0.0
        dups = c.get("duplicate_applications", c.get("duplicates", 0))
        cells = [(f"{lost_pct:.1f} %", lost_pct > 0, "lost_pct"), (str(dups), dups != 0, "duplicate_applications"),
                 (str(c["counter_drift"]), c["counter_drift"] != 0, "counter_drift")]
        rows.append(f'<tr><th scope="row">{html.escape(variant)}</th>' + "".join(
            f'<td class="{"bad" if bad else "ok"}" data-headline="{key}" data-variant="{html.escape(variant)}">'
            f'{html.escape(text)}</td>' for text, bad, key in cells) + "</tr>")
    return ("<table class='headline'><tr><th>variant</th><th>lost, % of acked</th><th>duplicate applications</th>"
            f"<th>counter drift</th></tr>{''.join(rows)}</table>")


def checker_table(checker: dict) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in HEADERS)
    rows = []
    for variant, counts in checker["variants"].items():
        cells = []
        for col in COLUMNS:
            value = counts[col]
            shown = "-" if value is None else f"{value:.0f}" if isinstance(value, float) else str(value)
            cells.append(f'<td data-variant="{html.escape(variant)}" data-key="{col}">{html.escape(shown)}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table class='counts'><tr>{head}</tr>{''.join(rows)}</table>"


def render(run_dir: Path) -> Path:
    run = json.loads((run_dir / "run.json").read_text())
    checker = json.loads((run_dir / "checker.json").read_text())
    faults = read_faults(run_dir)
    start, end = run["started_at"] - 5, run["ended_at"] + 5
    plots = []
    for title, unit, queries in PLOTS:
        series = []
        for expr, suffix in queries:
            for variant, points in sorted(query_range(run["prometheus_url"], expr, start, end).items()):
                if variant in run["variants"]:
                    series.append((variant, suffix, points))
        plots.append(f"<figure>{svg_plot(title, unit, series, run['variants'], run['started_at'], faults)}</figure>")
    if "optimistic" in run["variants"]:
        title, unit, queries = OPTIMISTIC_PLOT
        series = [("optimistic", suffix, points) for expr, suffix in queries
                  for variant, points in query_range(run["prometheus_url"], expr, start, end).items()
                  if variant == "optimistic"]
        # the window reaches two scrapes (10 s) before the run: increase() counts from its first
        # sample, which must predate the run's first conflicts (it may take in a few from just before)
        total = query_range(run["prometheus_url"], "sum by (variant) (increase(racelab_optimistic_conflicts_total"
                            f"[{int(end - start) + 10}s]))", end, end).get("optimistic", [(end, 0.0)])
        plots.append(f"<figure data-plot='optimistic-conflicts'>"
                     f"{svg_plot(title, unit, series, ['optimistic'], run['started_at'], faults)}"
                     f"<figcaption>optimistic: {total[-1][1]:.0f} write conflicts in the run, each retried"
                     f"</figcaption></figure>")
    settings = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                       for k, v in run.items())
    judged = judged_variants(checker.get("variants") or {})  # an agent-only run drove neither: so it says
    names = " and ".join(judged)
    verdict = ("no guarded variant (locked, temporal) in this run: the counts below are reported, not judged"
               if not judged else f"{names} lost nothing, duplicated nothing, no counter drift" if checker["ok"]
               else f"{' or '.join(judged)} LOST, DUPLICATED or DRIFTED")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>racelab run {html.escape(run_dir.name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 80em; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: right; }}
th {{ background: #f3f3f3; }} td:first-child, th[scope] {{ text-align: left; }}
.verdict {{ font-size: 1.2em; padding: 0.5em 1em; background: {'#e8f5e9' if checker['ok'] else '#fdecea'}; }}
figure {{ display: block; margin: 0.5em 0; }}
table.headline {{ font-size: 1.4em; }} td.ok {{ color: #1b7f2a; font-weight: 600; }}
td.bad {{ color: #c62828; font-weight: 700; }}
</style></head><body>
<h1>racelab run {html.escape(run_dir.name)}</h1>
<p>{run['users']} Locust users for {html.escape(str(run['duration']))} against {html.escape(run['host'])},
variants {html.escape(', '.join(run['variants']))}, model {run['model_latency_ms']:.0f} ± {run['model_jitter_ms']:.0f} ms,
{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(run['started_at']))}.</p>
<p class="verdict">{html.escape(verdict)}</p>
{headline(checker)}
<h2>Final counts (this run's tasks, checker after quiescence)</h2>
{checker_table(checker)}
<h2>Over time</h2>
<p>From Prometheus, clock times of {time.strftime('%Y-%m-%d', time.localtime(run['started_at']))}. Lost updates
and duplicates are counted from the run's start (the checker's gauges count the whole lab).
{f"Vertical lines: {len(faults)} fault(s) from faults.jsonl." if faults else "No faults were injected."}</p>
{''.join(plots)}
<h2>Settings</h2>
<table>{settings}</table>
<p>Locust's own report: <a href="locust.html">locust.html</a>.</p>
</body></html>
"""
    out = run_dir / "report.html"
    out.write_text(page)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="an HTML report of a load run")
    parser.add_argument("--run", type=Path, help="results folder (default: results/latest)")
    args = parser.parse_args()
    run_dir = (args.run or results_root() / "latest").resolve()
    if not (run_dir / "run.json").is_file():
        raise SystemExit(f"no load run in {run_dir}: run `make load` first")
    for name in ("run.json", "checker.json"):  # a run stopped before its counts, or a file edited by hand
        try:
            json.loads((run_dir / name).read_text())
        except FileNotFoundError:
            raise SystemExit(f"the load run in {run_dir} has no {name}: it ended before its counts "
                             "(its locust.log says why); run `make load` again") from None
        except ValueError as exc:
            raise SystemExit(f"{run_dir / name} is not valid JSON ({exc}); run `make load` again") from None
    try:
        out = render(run_dir)
    except OSError as exc:
        raise SystemExit(f"cannot reach Prometheus for {run_dir.name}: {exc}. Is the lab up (make up)?")
    print(f"report: {out}")


if __name__ == "__main__":
    main()
