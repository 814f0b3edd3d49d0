"""What a study stores is a format: its keys live in nas/records.py only, they match what earlier
code wrote, and a study written before nas/records.py existed still resumes.

The fixture tests/fixtures/study_before_records/ is the run folder (study.db, config.yaml,
trials.csv) of `python -m nas.search --budget 8 --max-concurrent 1 --val-max 2 --val-epochs 2
--epochs 2`, written by the code before the keys moved into nas/records.py.
"""
from __future__ import annotations

import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd

from nas.records import CARRIED, RECORDED, TABLE_ATTRS, Status, StudyKey, TrialKey, isolated_key, validated_key

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "study_before_records"
PRODUCT = ("nas", "trainers", "search_spaces", "benchmarks")

# a study attribute spelled as a literal: the study-wide keys, the validated/isolated patterns, and
# any user attribute read or written with a quoted name
SPELLED = [re.compile(p) for p in (
    r"""["'](trial_meaning|hypervolume_scales)["']""",
    r"""f?["'](validated|isolated):""",
    r"""user_attrs(\.get)?[\[(]\s*["']""",
    r"""set_(trial_)?user_attr\((\s*[\w.]+\s*,)?\s*["']""",
    r"""user_attrs\s*=\s*\{\s*["']""",
    r"""["']\w+["']\s+(not\s+)?in\s+[\w.\[\]]*user_attrs""",
)]
STATUS_LITERAL = re.compile(r"""["'](%s)["']""" % "|".join(s.value for s in Status))


def _product_lines():
    for package in PRODUCT:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == ROOT / "nas" / "records.py":
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                yield path.relative_to(ROOT), n, line


def test_no_study_attribute_key_is_spelled_outside_the_records_module():
    hits = [f"{p}:{n}: {line.strip()}" for p, n, line in _product_lines() if any(r.search(line) for r in SPELLED)]
    assert not hits, "spell these through nas.records:\n" + "\n".join(hits)


def test_no_trial_status_is_spelled_outside_the_records_module():
    hits = [f"{p}:{n}: {line.strip()}" for p, n, line in _product_lines()
            if str(p).startswith("nas") and STATUS_LITERAL.search(line)]
    assert not hits, "use nas.records.Status:\n" + "\n".join(hits)


def test_the_keys_are_those_the_earlier_code_wrote():
    with sqlite3.connect(FIXTURE / "study.db") as con:
        study_keys = {k for (k,) in con.execute("SELECT key FROM study_user_attributes")}
        trial_keys = {k for (k,) in con.execute("SELECT key FROM trial_user_attributes")}
        statuses = {v for (v,) in con.execute("SELECT value_json FROM trial_user_attributes WHERE key = 'status'")}
    # every key the old code wrote has its spelling here, byte for byte
    known_trial = {v for k, v in vars(TrialKey).items() if k.isupper()} | {TrialKey.EPOCHS if k == "epoch" else k
                                                                         for k in RECORDED}
    assert trial_keys <= known_trial, trial_keys - known_trial
    assert {StudyKey.TRIAL_MEANING, StudyKey.HYPERVOLUME_SCALES} <= study_keys
    numbered = study_keys - {StudyKey.TRIAL_MEANING, StudyKey.HYPERVOLUME_SCALES}
    assert numbered and all(re.fullmatch(r"(validated:\d+:\d+|isolated:\d+)", k) for k in numbered), numbered
    assert validated_key(4, 1000) == "validated:4:1000" and isolated_key(4) == "isolated:4"
    assert {f'"{s.value}"' for s in Status} >= statuses
    assert set(CARRIED) == {"preset", "retry_of", "prior_attempts"}
    # trials.csv's columns, as the earlier code wrote them
    columns = list(pd.read_csv(FIXTURE / "trials.csv", nrows=0).columns)
    assert columns[4:4 + len(TABLE_ATTRS)] == list(TABLE_ATTRS)


def test_a_study_written_by_the_earlier_code_resumes(tmp_path):
    shutil.copytree(FIXTURE, tmp_path / "before")
    before = pd.read_csv(FIXTURE / "trials.csv")
    cmd = [sys.executable, "-m", "nas.search", "--budget", "9", "--max-concurrent", "1", "--out", str(tmp_path),
           "--study", "before", "--val-max", "2", "--val-epochs", "2", "--epochs", "2", "--resume"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    after = pd.read_csv(tmp_path / "before" / "trials.csv")
    assert len(after) == 9  # the 8 trials of the earlier code kept, one more run
    same = after[after["trial"].isin(before["trial"])].set_index("trial").sort_index()
    old = before.set_index("trial").sort_index()
    assert list(same["tag"]) == list(old["tag"]) and list(same["state"]) == list(old["state"])
    assert (same["miou"] - old["miou"]).abs().max() < 1e-12
