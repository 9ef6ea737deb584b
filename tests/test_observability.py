"""After the session's short Locust load (conftest: load_run), every dashboard query against the real
Prometheus, the checker exporter's gauges, and the run's results folder."""
import json
import math
import re
import time
from pathlib import Path

import aiohttp
import pytest

from racelab import db
from racelab.checker.counts import compute
from racelab.checker.read import snapshot
from racelab.config import DEFAULT_VARIANTS as VARIANTS  # what the test lab runs

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "dashboards" / "grafana" / "dashboards" / "racelab-variants.json"
DATASOURCE = ROOT / "dashboards" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
RATE_INTERVAL = "1m"  # what Grafana's $__rate_interval stands for here: covers the whole short load
ALL_VARIANTS = ".+"   # what the dashboard's `variant` variable stands for with "All" selected


def as_promql(expr: str) -> str:
    return expr.replace("$__rate_interval", RATE_INTERVAL).replace("$variant", ALL_VARIANTS)


def dashboard_exprs() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in dash["panels"] for t in p["targets"]]


async def prom_query(settings, expr: str) -> list[dict]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{settings.prometheus_url}/api/v1/query", params={"query": expr}) as resp:
            body = await resp.json()
    assert body["status"] == "success", (expr, body)
    return body["data"]["result"]


def test_load_run_keeps_its_results(load_run):
    d, checker = load_run["dir"], load_run["checker"]
    for name in ("locust_stats.csv", "locust.html", "locust.log", "run.json", "checker.json"):
        assert (d / name).is_file(), name
    assert checker["quiescent"] and checker["ok"]
    assert checker["variants"]["unguarded"]["lost"] > 0
    for variant in ("locked", "temporal"):
        c = checker["variants"][variant]
        assert (c["lost"], c["duplicates"], c["counter_drift"]) == (0, 0, 0) and c["accepted"] > 0
    # every request Locust saw acked is in the event log (the final summary, not the lagging CSV)
    for variant in VARIANTS:
        line = re.search(rf"POST\s+/{variant}/api event/send\s+(\d+)\s+(\d+)\(", load_run["stdout"])
        assert line, f"no Locust summary line for {variant}"
        requests, failures = int(line.group(1)), int(line.group(2))
        assert failures == 0
        assert checker["variants"][variant]["accepted"] >= requests > 0


@pytest.mark.parametrize("title, expr", dashboard_exprs(), ids=[f"{t}: {e[:40]}" for t, e in dashboard_exprs()])
async def test_dashboard_query_returns_data(lab, load_run, title, expr):
    if "racelab_optimistic_" in expr and "optimistic" not in lab.settings.variants:
        pytest.skip("the lab does not run optimistic (its series exist from its pods' start, at 0)")
    query = as_promql(expr)
    deadline = time.monotonic() + 30
    while True:
        result = await prom_query(lab.settings, query)
        values = [float(r["value"][1]) for r in result]
        if any(not math.isnan(v) for v in values) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert result, f"panel {title!r} would show No data: {query}"
    assert any(not math.isnan(v) for v in values), f"panel {title!r} has only NaN: {query}"


async def test_checker_gauges_in_prometheus_match_the_counts(lab, load_run):
    """The lost-updates series: > 0 for unguarded, 0 for locked and temporal, and equal to the
    checker's counts over the whole lab once the exporter and Prometheus have caught up."""
    async with db.connection(lab.settings.pg_dsn) as conn:
        counts = compute(*await snapshot(conn), variants=lab.settings.variants)  # the exporter reports each at 0
    deadline = time.monotonic() + 40
    while True:
        series = {r["metric"]["variant"]: float(r["value"][1])
                  for r in await prom_query(lab.settings, "racelab_checker_lost_updates")}
        if series == {v: float(c.lost) for v, c in counts.items()} or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert series == {v: float(c.lost) for v, c in counts.items()}
    assert series["unguarded"] > 0 and series["locked"] == 0 and series["temporal"] == 0


def test_dashboard_uses_the_provisioned_datasource():
    uid = re.search(r"^\s*uid:\s*(\S+)", DATASOURCE.read_text(), re.M).group(1)
    dash = json.loads(DASHBOARD.read_text())
    uids = {p["datasource"]["uid"] for p in dash["panels"]} | {
        t["datasource"]["uid"] for p in dash["panels"] for t in p["targets"]}
    assert uids == {uid}
    for _, expr in dashboard_exprs():
        assert "[$__rate_interval]" in expr or "rate(" not in expr, expr


async def test_dashboard_variable_and_fault_annotations(lab, load_run):
    """The `variant` variable lists every variant the checker reports (not a fixed three); the
    fault annotation's query is valid PromQL (it has data only after a fault)."""
    dash = json.loads(DASHBOARD.read_text())
    (var,) = [v for v in dash["templating"]["list"] if v["name"] == "variant"]
    assert var["multi"] and var["includeAll"]
    metric, label = re.fullmatch(r"label_values\((\w+), (\w+)\)", var["query"]["query"]).groups()
    found = {r["metric"][label] for r in await prom_query(lab.settings, f"group by ({label}) ({metric})")}
    # every variant the lab runs (and any other the checker has seen events of, e.g. "agent")
    assert found >= set(lab.settings.variants) and set(load_run["checker"]["variants"]) <= found
    for p in dash["panels"]:  # every panel follows the selection (or names its one variant)
        for t in p["targets"]:
            assert all('variant=~"$variant"' in sel or 'variant="' in sel
                       for sel in re.findall(r"racelab_\w+(\{[^}]*\})?", t["expr"])), t["expr"]
    (faults,) = dash["annotations"]["list"]
    assert "racelab_faults_total" in faults["expr"]
    await prom_query(lab.settings, as_promql(faults["expr"]))  # asserts status success


async def test_optimistic_conflicts_are_counted_and_plotted(lab, load_run, tmp_path):
    """optimistic's conflicts (each one a retry): the session's load drives only the design card's
    three, so a short burst drives optimistic here; then the dashboard's panel has conflicts > 0 in
    Prometheus, and the report of a run that includes optimistic draws its row."""
    if "optimistic" not in lab.settings.variants:
        pytest.skip("the lab does not run optimistic")
    import shutil
    import subprocess
    import sys
    from racelab.clients.burst import burst_and_check
    started = time.time()
    out = await burst_and_check(lab.settings, 4, 20, ("optimistic",), prefix=f"obs-opt-{int(started)}-")
    assert out["results"]["optimistic"].safe
    dash = json.loads(DASHBOARD.read_text())
    (panel,) = [p for p in dash["panels"] if "racelab_optimistic_conflicts_total" in p["targets"][0]["expr"]]
    deadline = time.monotonic() + 20
    while True:  # the next scrape (every 5 s) brings the pods' counters
        values = {t["refId"]: [float(r["value"][1]) for r in await prom_query(lab.settings, as_promql(t["expr"]))
                               if r["metric"].get("variant") == "optimistic"] for t in panel["targets"]}
        if all(v and v[0] > 0 for v in values.values()) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert all(v and v[0] > 0 for v in values.values()), values
    run_dir = tmp_path / "run-with-optimistic"
    shutil.copytree(load_run["dir"], run_dir)
    run = dict(load_run["run"], variants=load_run["run"]["variants"] + ["optimistic"], started_at=started,
               ended_at=time.time())
    (run_dir / "run.json").write_text(json.dumps(run))
    done = subprocess.run([sys.executable, "-m", "racelab.report", "--run", str(run_dir)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    page = (run_dir / "report.html").read_text()
    figure = re.search(r"<figure data-plot='optimistic-conflicts'>(.*?)</figure>", page, re.S)
    assert figure and 'id="line2d_' in figure.group(1)
    assert int(re.search(r"optimistic: (\d+) write conflicts", figure.group(1)).group(1)) > 0
