"""Sections, their status and what comes back from the one-shot GPU check.

A section's status is computed from its rows, never assumed: a row with an `error`, no rows at all,
or zero finished trials (for a section that runs trials) makes it "degraded"; an exception out of the
section makes it "failed". Only "ok" and "skipped: <not applicable here>" count as a good run.

Everything a run writes lies in one staging folder; `pack` turns it into the two files that come
back from the GPU machine (at most 8 may): gpu_check.tar.gz and summary.txt.

    python benchmarks/gpu_check_report.py STAGE OUT     # pack STAGE into OUT, print summary.txt
"""
from __future__ import annotations

import csv
import json
import os
import sys
import tarfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

FAULT_ENV = "GPU_CHECK_FAULT"  # comma list of sections whose first row is made to fail (dry-run tests)
ARCHIVE, SUMMARY = "gpu_check.tar.gz", "summary.txt"
PARTS = ("smoke", "check")  # the staging folder's parts, each with its summary.json
MAX_FILE = 4 * 2**20  # a larger file stays out of the archive (and is named in the summary)
_faulted: set[str] = set()


@dataclass
class Outcome:
    """What a section measured: its table rows, trials finished (sections that run trials), headline figures."""

    rows: list[dict] = field(default_factory=list)
    finished: int | None = None
    figures: dict = field(default_factory=dict)


def section_status(outcome: Outcome) -> str:
    """ok, or degraded with the reason: any row an error, zero rows, zero finished trials."""
    rows = outcome.rows
    if not rows:
        return "degraded: no rows"
    errors = sum(bool(r.get("error")) for r in rows)
    if errors:
        return f"degraded: {errors} of {len(rows)} rows are errors"
    if outcome.finished is not None and outcome.finished <= 0:
        return "degraded: no trial finished"
    return "ok"


def is_good(status: str) -> bool:
    return status == "ok" or status.startswith("skipped")


def attempt(section: str, row: dict, fn: Callable[[], dict]) -> dict:
    """`row` filled with fn()'s figures, or with its error: one broken measurement is a row, not a lost section."""
    try:
        if section in os.environ.get(FAULT_ENV, "").split(",") and section not in _faulted:
            _faulted.add(section)
            raise RuntimeError(f"fault injected into {section} by {FAULT_ENV}")
        row.update(fn())
    except Exception as exc:
        row["error"] = f"{type(exc).__name__}: {exc}"[:300]
        print(f"  {section}: {row['error']}\n" + "".join(traceback.format_exc().splitlines(True)[-6:]), flush=True)
    return row


def write_rows(out: Path, name: str, rows: list[dict]) -> None:
    """A section's rows as OUT/name.csv (the union of their keys, in first-seen order)."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(out / f"{name}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


class Interrupted(BaseException):
    """SIGTERM (the wrapper's hard timeout): end the section in flight, keep what is written."""


class Tee:
    """stdout into the output folder too, so the log comes back with the figures."""

    def __init__(self, stream, path: Path):
        self.stream, self.file = stream, open(path, "a")

    def write(self, text: str) -> None:
        self.stream.write(text)
        self.file.write(text)
        self.file.flush()

    def flush(self) -> None:
        self.stream.flush()


@dataclass
class SectionRecord:
    status: str = "not run"
    budget_s: float = 0.0
    seconds: float = 0.0
    rows: int = 0
    figures: dict = field(default_factory=dict)


class Runner:
    """Runs sections in order under one deadline; writes each one's rows and summary.json as it ends."""

    def __init__(self, out: Path, deadline_s: float, info: dict, planned: tuple[str, ...] = ()):
        self.out, self.start = out, time.time()
        self.end = self.start + deadline_s
        self.info = info
        # listed from the start: a section a time limit never reached shows as "not run", never as absent
        self.sections: dict[str, SectionRecord] = {name: SectionRecord() for name in planned}

    def run(self, name: str, fn: Callable[[float], Outcome | None], budget: float, skip: str = "") -> Outcome | None:
        budget = min(budget, self.end - time.time())
        rec = self.sections[name] = SectionRecord(budget_s=round(budget, 1))
        if skip:  # not applicable here (no CUDA in a dry run): says why, and is no failure
            rec.status = f"skipped: {skip}"
        elif budget < 5:
            rec.status = "degraded: not run, the check's deadline had passed"
        if rec.status != "not run":
            print(f"\n== {name}: {rec.status}")
            return self.save()
        print(f"\n== {name} (budget {budget:.0f} s)", flush=True)
        start, outcome = time.time(), None
        rec.status = "interrupted"
        try:
            outcome = fn(budget) or Outcome()
            rec.status, rec.rows, rec.figures = section_status(outcome), len(outcome.rows), outcome.figures
        except Exception:  # one broken section must not cost the others their figures
            text = traceback.format_exc()
            (self.out / "errors").mkdir(exist_ok=True)
            (self.out / "errors" / f"{name}.txt").write_text(text)
            print(text)
            rec.status = "failed: " + text.strip().splitlines()[-1][:200]
        finally:
            rec.seconds = round(time.time() - start, 1)
            print(f"== {name}: {rec.status} ({rec.seconds} s)", flush=True)
            self.save()
        return outcome

    def save(self) -> None:
        body = {**self.info, "seconds": round(time.time() - self.start, 1),
                "sections": {n: asdict(r) for n, r in self.sections.items()}}
        (self.out / "summary.json").write_text(json.dumps(body, indent=1, default=str))

    @property
    def good(self) -> bool:
        return all(is_good(r.status) for r in self.sections.values())


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = json.dumps(value, default=str) if isinstance(value, (dict, list)) else str(value)
    return text if len(text) <= 100 else text[:97] + "..."


def summary_text(stage: Path) -> str:
    """One line per section (part/section: status, seconds) and its headline figures, from each summary.json."""
    lines, bad = [], 0
    for name in PARTS:
        part = stage / name
        if not (part / "summary.json").is_file():  # it never started, or died before its first section
            bad += 1
            lines.append(f"[{name}] no summary.json: it did not run or crashed (see notes and its log)")
            continue
        body = json.loads((part / "summary.json").read_text())
        lines.append(f"[{part.name}] {body.get('device', '')} dry_run={body.get('dry_run')} {body.get('seconds')} s")
        for name, rec in body.get("sections", {}).items():
            bad += not is_good(rec["status"])
            lines.append(f"  {name}: {rec['status']} ({rec['seconds']} s, {rec['rows']} rows)")
            lines += [f"      {k} = {_short(v)}" for k, v in rec.get("figures", {}).items()]
    notes = stage / "notes.txt"  # the wrapper's own lines: installation, size, time limits
    if notes.is_file():
        lines += ["[wrapper]"] + ["  " + line for line in notes.read_text(errors="replace").splitlines()[-20:]]
    head = "GPU CHECK: " + ("all sections ok" if bad == 0 else f"{bad} section(s) degraded, failed or missing")
    return "\n".join([head, *lines]) + "\n"


def pack(stage: Path, out: Path) -> list[Path]:
    """STAGE -> OUT/gpu_check.tar.gz + OUT/summary.txt (files over MAX_FILE are named, not packed)."""
    out.mkdir(parents=True, exist_ok=True)
    left_out = [p for p in stage.rglob("*") if p.is_file() and p.stat().st_size > MAX_FILE]
    if left_out:
        (stage / "notes.txt").open("a").write("".join(
            f"left out of the archive (over {MAX_FILE >> 20} MiB): {p.relative_to(stage)}\n" for p in left_out))
    text = summary_text(stage)
    (stage / SUMMARY).write_text(text)
    with tarfile.open(out / ARCHIVE, "w:gz") as tar:
        tar.add(stage, arcname="gpu_check", filter=lambda ti: None if ti.size > MAX_FILE else ti)
    (out / SUMMARY).write_text(text)
    return [out / ARCHIVE, out / SUMMARY]


if __name__ == "__main__":
    files = pack(Path(sys.argv[1]), Path(sys.argv[2]))
    print(files[1].read_text() + "\n" + "\n".join(f"{p} ({p.stat().st_size >> 10} KiB)" for p in files))
