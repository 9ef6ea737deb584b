"""The native live dashboard (Prometheus console /consoles/racelab.html) in a real headless browser,
after the session's short load: it loads, its headline has a row per variant with numbers, every
graph is drawn with data, and a screenshot is kept in the load run's results folder."""
import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from racelab.lab import console

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make test installs it)")
RANGE = "5m"  # the short load is well inside it


def chromium(user_data_dir, *args: str) -> subprocess.CompletedProcess:
    """Headless, offline and without a profile of its own; virtual time lets the page's queries
    and first refresh finish before the DOM is dumped or the screenshot taken."""
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                           "--disable-component-update", "--disable-sync", "--no-first-run",
                           f"--user-data-dir={user_data_dir}", "--virtual-time-budget=12000", *args],
                          capture_output=True, text=True, timeout=120)


def dashboard_url(lab) -> str:
    return f"{lab.settings.prometheus_url}/consoles/{console.CONSOLE}?range={RANGE}"


def test_console_is_served_by_prometheus(lab):
    with urllib.request.urlopen(dashboard_url(lab), timeout=10) as resp:
        page = resp.read().decode()
    assert resp.status == 200 and 'id="headline"' in page
    assert page.count("racelab.graph(") == len([p for p in console.panels() if p["type"] == "timeseries"])
    for script in re.findall(r'<script src="([^"]+)"', page):  # Prometheus' own console JavaScript
        with urllib.request.urlopen(lab.settings.prometheus_url + script, timeout=10) as resp:
            assert resp.status == 200 and len(resp.read()) > 1000, script


def run_lost_in_prometheus(lab) -> dict[str, float]:
    query = urllib.parse.urlencode({"query": "racelab_checker_run_lost_updates"})
    with urllib.request.urlopen(f"{lab.settings.prometheus_url}/api/v1/query?{query}", timeout=10) as resp:
        return {r["metric"]["variant"]: float(r["value"][1]) for r in json.load(resp)["data"]["result"]}


@pytest.fixture(scope="module")
def dom(lab, load_run, tmp_path_factory) -> str:
    """The page as the browser built it: server-side headline, graphs drawn by its JavaScript.
    Built once Prometheus shows the load's verdicts (which variants lost events in it): the
    exporter counts an event lost only once it is 10 s old, and Prometheus scrapes it every 5 s,
    so right after the load the headline can still show none lost (a CI run read unguarded's
    "this run" at 0.0 %, 2026-11-26). Waiting for the exact counts cost about 10 s more."""
    want = {v: c["lost"] > 0 for v, c in load_run["checker"]["variants"].items()}
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline and any((run_lost_in_prometheus(lab).get(v, 0) > 0) != lost
                                              for v, lost in want.items()):
        time.sleep(1)
    done = chromium(tmp_path_factory.mktemp("chromium"), "--dump-dom", dashboard_url(lab))
    assert 'id="headline"' in done.stdout, done.stderr[-2000:]
    return done.stdout


def test_dashboard_headline_has_a_number_per_variant(lab, dom, load_run):
    """One row per variant the lab runs (found from the `variant` label, not a fixed list), a
    number in every cell of the variants the load drove, and the verdict visible: unguarded
    red, the others green."""
    rows = dict(re.findall(r'<tr data-variant="([\w-]+)">(.*?)</tr>', dom, re.S))
    # every variant the lab runs (and any other the checker has seen events of, e.g. "agent")
    assert set(rows) >= set(lab.settings.variants), rows.keys()
    stats = [p for p in console.panels() if p["type"] == "stat"]
    for variant, row in rows.items():
        if variant not in load_run["checker"]["variants"]:
            continue  # no event of this run: its run-scoped shares have nothing to divide
        cells = re.findall(r'<span class="(ok|bad|none)">([^<]*)</span>', row)
        assert len(cells) == len(stats), (variant, row)
        missing = [console.short_title(p) + " / " + p["title"] for p, (cls, _) in zip(stats, cells) if cls == "none"]
        assert not missing, f"{variant}: no data for {missing}"
    # lost % of this run (first column) and of the whole lab (first of the second group): unguarded
    # loses updates under load, the other two do not
    for column in (0, len(stats) // 2):
        verdicts = [re.findall(r'<span class="(ok|bad)">', rows[v])[column] for v in ("unguarded", "locked", "temporal")]
        assert verdicts == ["bad", "ok", "ok"], stats[column]["title"]


def test_dashboard_draws_every_graph_and_keeps_a_screenshot(lab, dom, load_run, tmp_path):
    """Each graph drew an SVG with lines (Rickshaw), none says "No timeseries returned"."""
    graphs = re.findall(r'<div id="graph(\d+)">(.*?)</table>', dom, re.S)
    assert len(graphs) == len([p for p in console.panels() if p["type"] == "timeseries"])
    panels = [p for p in console.panels() if p["type"] == "timeseries"]
    titles = [p["title"] for p in panels]
    for i, body in graphs:
        if "optimistic" not in lab.settings.variants and any(
                "racelab_optimistic_" in t.get("expr", "") for t in panels[int(i)].get("targets", [])):
            continue  # its series exist only where optimistic's pods run (test_observability skips it too)
        assert "No timeseries returned" not in body and "Error loading data" not in body, titles[int(i)]
        assert "<svg" in body and re.search(r'<path[^>]+class="path', body), titles[int(i)]
    # the screenshot, beside the run's other results
    shot = load_run["dir"] / "dashboard.png"
    done = chromium(tmp_path / "profile2", "--window-size=1400,2400", "--hide-scrollbars",
                    f"--screenshot={shot}", dashboard_url(lab))
    assert shot.is_file() and shot.stat().st_size > 30_000, done.stderr[-2000:]
