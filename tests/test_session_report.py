"""The report a real pytest session writes, including one cut short by Ctrl-C."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Loaded with -p: presses Ctrl-C as soon as the first test has finished.
INTERRUPTER = """
def pytest_runtest_logfinish(nodeid, location):
    raise KeyboardInterrupt
"""


def test_interrupted_session_writes_a_complete_report_marked_incomplete(tmp_path):
    (tmp_path / "interrupter.py").write_text(INTERRUPTER)
    report_dir = tmp_path / "reports"
    process = subprocess.run(
        [sys.executable, "-m", "pytest", "experiments/test_1_base_model.py", "-p", "interrupter",
         "-p", "no:cacheprovider", "--data-source", "mock", "--subset", "32", "--report-dir", str(report_dir)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"},
    )
    assert process.returncode == 2, process.stdout[-2000:] + process.stderr[-2000:]

    markdown = (report_dir / "latest-smoke.md").read_text()
    assert "**Incomplete run**: interrupted (Ctrl-C); 1 tests did not run" in markdown
    assert "**Mock data**" in markdown
    assert "| 32-64-128 " in markdown, "the finished test's results are missing"
    assert "test_base_model[narrow] | not run" in markdown.replace("  ", "")
    runs = [entry for entry in os.listdir(report_dir) if entry.startswith("smoke-cpu-") and not entry.endswith(".md")]
    results = json.loads((report_dir / runs[0] / "results.json").read_text())
    assert results["run"]["complete"] is False
    assert [record["row"]["filters"] for record in results["records"]] == ["32-64-128"]
    assert not [name for _, _, names in os.walk(report_dir) for name in names if ".partial" in name]
