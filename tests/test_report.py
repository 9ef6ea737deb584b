"""make report on the load run of test_observability: numbers equal the checker's JSON, plots there."""
import json
import re
import subprocess
import sys

from racelab.checker.counts import COLUMNS
from racelab.report import PLOTS


def test_report_numbers_and_plots(lab, load_run):
    done = subprocess.run([sys.executable, "-m", "racelab.report", "--run", str(load_run["dir"])],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    page = (load_run["dir"] / "report.html").read_text()
    cells = {(v, k): text for v, k, text in re.findall(r'<td data-variant="(\w+)" data-key="(\w+)">([^<]*)</td>', page)}
    checker = json.loads((load_run["dir"] / "checker.json").read_text())
    assert {v for v, _ in cells} == set(checker["variants"]) == {"unguarded", "locked", "temporal"}
    for variant, counts in checker["variants"].items():
        for key in COLUMNS[1:]:
            value = counts[key]
            expected = "-" if value is None else f"{value:.0f}" if isinstance(value, float) else str(value)
            assert cells[(variant, key)] == expected, (variant, key)
    svgs = re.findall(r"<svg.*?</svg>", page, re.S)
    assert len(svgs) == len(PLOTS)
    for svg in svgs:  # every plot has drawn lines, not just axes
        assert 'id="line2d_' in svg
    # opens without the network: nothing is loaded from elsewhere (xmlns are names, not loads)
    assert "<script" not in page and not re.search(r'(src|href)="(https?:)?//', page)


def test_report_headline_dates_and_fault_lines(lab, load_run, tmp_path):
    """Headline numbers first, variants side by side (a subplot each), clock times on the x axis,
    and a run's faults.jsonl drawn as vertical lines in every plot."""
    import shutil
    run_dir = tmp_path / load_run["dir"].name
    shutil.copytree(load_run["dir"], run_dir)
    t = load_run["run"]["started_at"] + 3
    (run_dir / "faults.jsonl").write_text(json.dumps({"t": t, "kind": "kill", "target": "pod-locked-2"}) + "\n")
    done = subprocess.run([sys.executable, "-m", "racelab.report", "--run", str(run_dir)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    page = (run_dir / "report.html").read_text()
    assert page.index("class='headline'") < page.index("<h2>")  # the answer comes first
    checker = json.loads((run_dir / "checker.json").read_text())
    drift = dict(re.findall(r'data-headline="counter_drift" data-variant="(\w+)">([^<]*)<', page))
    assert drift == {v: str(c["counter_drift"]) for v, c in checker["variants"].items()}
    svgs = re.findall(r"<svg.*?</svg>", page, re.S)
    variants = load_run["run"]["variants"]
    for svg in svgs:
        assert svg.count('id="fault-0-kill"') == len(variants)  # one line per variant's subplot
        assert re.search(r"<!-- \d\d:\d\d:\d\d -->", svg)  # tick labels are clock times, not epoch seconds
        assert "since the run started" not in svg
    assert "locked and temporal lost nothing" in page
    # a run that drove no guarded variant (VARIANT=agent, unguarded): its verdict judged nothing
    # ("locked and temporal lost nothing" headed an agent-only run)
    (run_dir / "checker.json").write_text(json.dumps(
        {**checker, "variants": {"unguarded": checker["variants"]["unguarded"]}}))
    done = subprocess.run([sys.executable, "-m", "racelab.report", "--run", str(run_dir)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    page = (run_dir / "report.html").read_text()
    assert "no guarded variant (locked, temporal) in this run" in page and "lost nothing" not in page


def test_a_damaged_run_is_a_clear_error_not_a_traceback(tmp_path):
    """A run that stopped before its counts (no checker.json) was reported as "cannot reach
    Prometheus"; a run.json that is not JSON gave a traceback."""
    (tmp_path / "run.json").write_text('{"started_at":')
    for says in ("run.json is not valid JSON", "has no checker.json"):
        done = subprocess.run([sys.executable, "-m", "racelab.report", "--run", str(tmp_path)],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 1 and says in done.stderr and "Traceback" not in done.stderr, done.stderr
        (tmp_path / "run.json").write_text("{}")
