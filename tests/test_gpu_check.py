"""The GPU check's dry run: every section's code path on CPU at tiny sizes, before the one GPU shot."""
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"


@pytest.mark.slow  # about 90 s: a search of 4 trials on Ray, and 7 short trainings
def test_dry_run_writes_every_section(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out)],
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert {name: s["status"] for name, s in summary["sections"].items()} == dict.fromkeys(
        ("facts", "host", "search", "latency", "precision"), "ok")
    assert not (out / "errors").exists()
    for name in ("facts.json", "host.csv", "host_summary.json", "search.json", "search_trials.csv", "search.log",
                 "latency.csv", "latency_summary.json", "precision.csv", "log.txt"):
        assert (out / name).is_file(), name
    search = json.loads((out / "search.json").read_text())
    # the four presets ran side by side (0.5 CPU each on two cores), and all finished
    assert search["trials_finished"] == 4 and search["max_concurrent_trials"] == 4 and search["overlap_ok"]
    assert search["gpu_util_source"] == "fake (dry run)" and search["trials_per_hour"] > 0
    latency = pd.read_csv(out / "latency.csv")
    assert len(latency) == 4 and (latency["ratio"] > 0).all() and latency["gmacs_same"].all()
    precision = pd.read_csv(out / "precision.csv")
    assert len(precision) == 7 and precision["miou"].between(0, 1).all()
    host = pd.read_csv(out / "host.csv")
    assert {"index uint8 batch", "to_float", "augment"} <= set(host["stage"])
