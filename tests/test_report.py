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
