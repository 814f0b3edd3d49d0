"""The one-shot GPU check: section statuses computed from rows, two files back in one archive, wheels
that fit one call beside the repository, and the CPU dry run end to end (slow)."""
import io
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from benchmarks import gpu_check_report as report
from benchmarks import gpu_check_ladder as ladder
from benchmarks import gpu_check_search as gs
from benchmarks import gpu_check_wheels as wheels

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
MAX_FILES_BACK = 8
WHEELS_MIB = 52  # what build_gpu_wheels.sh measured (51.5 MiB): the repository must fit beside it


def test_status_is_computed_from_rows():
    ok = report.Outcome([{"a": 1}, {"a": 2, "error": ""}])
    assert report.section_status(ok) == "ok"
    assert report.section_status(report.Outcome([{"a": 1}, {"error": "RuntimeError: x"}])) == \
        "degraded: 1 of 2 rows are errors"
    assert report.section_status(report.Outcome([{"error": "x"}] * 3)).startswith("degraded: 3 of 3")
    assert report.section_status(report.Outcome([])) == "degraded: no rows"
    assert report.section_status(report.Outcome([{"trial": 0}], finished=0)) == "degraded: no trial finished"
    assert report.section_status(report.Outcome([{"trial": 0}], finished=1)) == "ok"


def test_runner_never_reports_ok_for_errors_or_exceptions(tmp_path):
    runner = report.Runner(tmp_path, 100, {"part": "check"})
    runner.run("good", lambda b: report.Outcome([{"x": 1}], figures={"x": 1}), 10)
    assert runner.good
    runner.run("na", lambda b: report.Outcome(), 10, skip="no CUDA device here")
    assert runner.good  # not applicable is no failure
    runner.run("row_error", lambda b: report.Outcome([{"x": 1}, {"error": "boom"}]), 10)
    runner.run("no_trial", lambda b: report.Outcome([{"trial": 0, "error": "FAIL"}], finished=0), 10)

    def crash(budget):
        raise ValueError("broken section")
    runner.run("crash", crash, 10)
    assert not runner.good
    body = json.loads((tmp_path / "summary.json").read_text())
    status = {n: s["status"] for n, s in body["sections"].items()}
    assert status["good"] == "ok" and status["na"].startswith("skipped")
    assert status["row_error"].startswith("degraded") and status["no_trial"].startswith("degraded")
    assert status["crash"].startswith("failed: ValueError")
    assert "broken section" in (tmp_path / "errors" / "crash.txt").read_text()
    late = report.Runner(tmp_path, 1, {}, planned=("late", "never"))
    assert late.sections["never"].status == "not run" and not late.good  # listed before it runs
    late.run("late", lambda b: report.Outcome([{"x": 1}]), 10)  # under 5 s left: not run, and said so
    assert late.sections["late"].status.startswith("degraded: not run")


def test_attempt_turns_an_exception_or_an_injected_fault_into_an_error_row(monkeypatch):
    monkeypatch.setenv(report.FAULT_ENV, "sec")
    monkeypatch.setattr(report, "_faulted", set())
    first = report.attempt("sec", {"k": 1}, lambda: {"v": 2})
    second = report.attempt("sec", {"k": 2}, lambda: {"v": 3})
    other = report.attempt("other", {"k": 3}, lambda: 1 / 0)
    assert "fault injected" in first["error"] and "v" not in first
    assert second == {"k": 2, "v": 3}  # one row per section is faulted: enough to degrade it
    assert other["error"].startswith("ZeroDivisionError")


def _stage(tmp_path: Path, with_check: bool = True) -> Path:
    stage = tmp_path / "stage"
    for part, sections in (("smoke", {"share": "ok", "graphs": "degraded: 1 of 4 rows are errors"}),
                           ("check", {"search": "ok"}))[:2 if with_check else 1]:
        (stage / part).mkdir(parents=True)
        body = {"device": "cuda:0", "dry_run": False, "seconds": 1.0,
                "sections": {n: {"status": s, "seconds": 1.0, "rows": 4, "figures": {"eager_ms": 1.5}}
                             for n, s in sections.items()}}
        (stage / part / "summary.json").write_text(json.dumps(body))
        for i in range(12):  # many small files: they come back inside one archive
            (stage / part / f"table{i}.csv").write_text("a,b\n1,2\n")
    if with_check:
        (stage / "check" / "tune_errors").mkdir()
        (stage / "check" / "tune_errors" / "00_trial.txt").write_text("Traceback: CUDA error")
        (stage / "check" / "worker_stderr").mkdir()
        (stage / "check" / "worker_stderr" / "session_worker-1.err.txt").write_text("stderr tail")
    (stage / "notes.txt").write_text("installed and checked in 12 s\n")
    return stage


def test_pack_brings_everything_back_in_two_files(tmp_path, monkeypatch):
    stage = _stage(tmp_path)
    (stage / "check" / "huge.bin").write_bytes(b"0" * 2048)
    monkeypatch.setattr(report, "MAX_FILE", 1024)  # a file over the limit is named, not packed
    out = tmp_path / "out"
    files = report.pack(stage, out)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in files) == [report.ARCHIVE, report.SUMMARY]
    assert len(files) <= MAX_FILES_BACK
    with tarfile.open(out / report.ARCHIVE) as tar:
        names = set(tar.getnames())
    for path in stage.rglob("*"):
        if path.is_file() and path.name != "huge.bin":
            assert "gpu_check/" + str(path.relative_to(stage)) in names, path
    assert "gpu_check/check/tune_errors/00_trial.txt" in names
    assert "gpu_check/check/huge.bin" not in names
    text = (out / report.SUMMARY).read_text()
    assert text.startswith("GPU CHECK: 1 section(s) degraded")
    assert "graphs: degraded: 1 of 4 rows are errors" in text and "search: ok" in text
    assert "left out of the archive" in text and "huge.bin" in text


def test_summary_counts_a_part_that_never_wrote_its_summary(tmp_path):
    stage = _stage(tmp_path, with_check=False)
    text = report.summary_text(stage)
    assert "[check] no summary.json" in text
    assert text.startswith("GPU CHECK: 2 section(s)")  # the degraded graphs and the missing check


def test_pack_command_line(tmp_path):
    stage, out = _stage(tmp_path), tmp_path / "out"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check_report.py"), str(stage), str(out)],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert len(list(out.iterdir())) == 2 and "GPU CHECK:" in proc.stdout


class _Sampler:
    def summary(self, t0, t1):
        return {"gpu_util_source": "test"}


def _trial(number, state, start, end, **attrs):
    return {"number": number, "state": state, "start": start, "end": end, **attrs}


def test_search_rows_error_on_failed_trials_and_zero_finished_degrades():
    trials = [_trial(0, "FAIL", 0.0, 5.0, reason="CUDA error: illegal memory access", status="failed"),
              _trial(1, "RUNNING", 1.0, None)]
    summary, rows = gs.summarise(trials, 10.0, 4, _Sampler())
    assert summary["trials_finished"] == 0
    assert rows[0]["error"].startswith("CUDA error") and "error" not in rows[1]
    assert report.section_status(report.Outcome(rows, finished=summary["trials_finished"])).startswith("degraded")


def test_concurrency_comes_from_training_windows_not_ask_to_tell():
    # four trials asked and told at the same moments, but trained one after the other
    trials = [_trial(i, "COMPLETE", 0.0, 100.0, finished_at=25.0 * (i + 1), train_seconds=20.0,
                     peak_train_mem_mb=300.0) for i in range(4)]
    summary, rows = gs.summarise(trials, 100.0, 4, _Sampler())
    assert summary["max_concurrent_ask_to_tell"] == 4
    assert summary["max_concurrent_training"] == 1 and not summary["overlap_ok"]
    assert rows[0]["peak_train_mem_mb"] == 300.0 and summary["peak_train_mem_mb"]["max"] == 300.0


def test_pins_leave_out_what_the_gpu_image_holds(tmp_path):
    install = [{"metadata": {"name": n, "version": v}} for n, v in
               (("optuna", "5.1.0"), ("ray", "2.60.0"), ("pyarrow", "26.0.1"), ("protobuf", "7.1"),
                ("PyYAML", "6.0"), ("SQLAlchemy", "2.1.9"), ("torch", "2.11"), ("nvidia-cublas", "13"))]
    path = tmp_path / "report.json"
    path.write_text(json.dumps({"install": install}))
    assert wheels.pins(path) == ["optuna==5.1.0", "ray==2.60.0", "sqlalchemy==2.1.9"]


def _wheel(folder: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> Path:
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}-{version}.dist-info/METADATA", "\n".join(
            [f"Name: {name}", f"Version: {version}", *(f"Requires-Dist: {r}" for r in requires)]))
    return path


def test_install_picks_what_the_machine_lacks_and_what_a_new_wheel_needs(tmp_path):
    from packaging.version import Version

    _wheel(tmp_path, "foo", "1.0", ("bar>=2", "baz; extra == 'docs'"))
    _wheel(tmp_path, "bar", "2.0")
    _wheel(tmp_path, "qux", "1.0")
    _wheel(tmp_path, "torch", "9.0")
    chosen = wheels.to_install(tmp_path, {"bar": Version("1.0"), "qux": Version("1.0")})
    assert [p.name.split("-")[0] for p in chosen] == ["bar", "foo"]  # bar 1.0 is too old for foo; never torch


def test_repository_and_wheels_fit_one_call():
    size = wheels.call_size(REPO, REPO / "no such folder")
    assert size.wheels_bytes == 0 and size.repo_files > 50
    assert size.repo_bytes + WHEELS_MIB * 2**20 <= wheels.CALL_LIMIT, size.line()
    built = REPO / ".gpu_wheels"
    if built.is_dir():  # where the wheels were built here: the real figure
        assert wheels.call_size(REPO, built).fits, wheels.call_size(REPO, built).line()


def test_wheels_folder_is_ignored_so_it_travels_only_when_carried():
    proc = subprocess.run(["git", "check-ignore", "-q", ".gpu_wheels/x.whl"], cwd=REPO)
    assert proc.returncode == 0


def test_ladder_runs_every_net_at_the_first_rung_before_the_next_and_seeds_last():
    nets = ladder.top_rung_nets()
    assert {n.group for n in nets} == {"preset", "front"}
    assert {"erfnet", "edanet", "esnet", "lednet"} <= {n.name for n in nets}
    jobs = ladder.rung_jobs(nets, ladder.GPU_RUNGS, seeds=(1000, 1001))
    order = [(j["seed"], j["height"]) for j in jobs]
    assert order == sorted(order) and len(jobs) == 2 * 2 * len(nets)
    # the first 512x1024 job, before any finished there: the slowest 256x512 one times 4 (the pixels)
    rows = [{"rung": "256x512", "wall_s": 3.0}, {"rung": "256x512", "wall_s": 5.0}, {"rung": "256x512", "error": "x"}]
    big = next(j for j in jobs if j["height"] == 512)
    assert ladder._estimate(big, rows, ladder.GPU_RUNGS) == 20.0
    assert ladder._estimate(jobs[0], [], ladder.GPU_RUNGS) == 0.0


def test_ladder_summary_agrees_perfectly_with_the_cpu_ladder_it_copies():
    from benchmarks.scale_ladder import LOG

    nets = ladder.top_rung_nets()
    cpu = pd.read_csv(LOG)
    ref = cpu[(cpu["rung"] == "128x256") & cpu["net"].isin([n.name for n in nets])]
    ref = ref[ref["precision"] == ref["precision"].mode().iloc[0]].groupby("net")["miou"].mean()
    # rows at 32x64 (a rung with costs) whose mIoU is the CPU ladder's 128x256 mean: tau 1 by construction
    rows = [{"net": n, "group": "x", "rung": "32x64", "seed": 1000, "miou": m} for n, m in ref.items()]
    rows.append({"net": "erfnet", "rung": "32x64", "seed": 1001, "error": "OutOfMemoryError: x"})
    (summary,) = ladder.rung_summary(rows, nets)
    assert summary["nets"] == len(ref) and summary["tau_vs_128x256"] == pytest.approx(1.0)
    assert {v.split()[0] for v in summary["verdicts"].split("; ")} == {"erfnet", "edanet", "esnet", "lednet"}


def test_ladder_summary_compares_with_the_cpu_ladders_10_epoch_recipe_only(tmp_path, monkeypatch):
    nets = ["erfnet", "edanet", "esnet", "lednet", "trial_0070"]
    ten = dict(zip(nets, (0.1, 0.2, 0.3, 0.4, 0.5)))
    log = pd.DataFrame([{"net": n, "rung": rung, "seed": seed, "precision": "fp32", "epochs": epochs,
                         "miou": m if epochs == 10 else 1 - m}  # the shorter recipe ranks them backwards
                        for n, m in ten.items() for seed in (1000, 1001)
                        for rung, epochs in (("128x256", 10), ("32x64", 10), ("32x64", 6))])
    monkeypatch.setattr(ladder, "LOG", tmp_path / "ladder.csv")
    log.to_csv(ladder.LOG, index=False)
    rows = [{"net": n, "rung": "64x128", "seed": 1000, "miou": m} for n, m in ten.items()]
    (summary,) = ladder.rung_summary(rows, ladder.top_rung_nets())
    assert summary["tau_vs_32x64"] == pytest.approx(1.0) and summary["tau_vs_128x256"] == pytest.approx(1.0)


def test_ladder_marks_a_rung_where_nothing_finished(tmp_path, monkeypatch):
    class Ck:  # the check as the section sees it: CPU, dry sizes, rows written to tmp_path
        dry, cuda, device, cpus_per_trial = True, False, "cpu", 1.0

        def write(self, name, result, quiet=False):
            pd.DataFrame(result).to_csv(tmp_path / f"{name}.csv", index=False)

    finished = {"net": "edanet", "group": "preset", "rung": "32x64", "seed": 1000, "miou": 0.3, "wall_s": 1.0}
    monkeypatch.setattr(ladder, "run_rungs", lambda ck, jobs, rungs, budget: ([finished], len(jobs) - 1))
    outcome = ladder.ladder(Ck(), 30.0)
    assert [r["error"] for r in outcome.rows if "error" in r] == ["no training finished at 64x128 within the section's 30 s"]
    assert report.section_status(outcome).startswith("degraded")


def _run_shell(tmp_path, *args, env=None, timeout=600):
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "TMPDIR": str(tmp_path), **(env or {})}
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)
    files = sorted(p.name for p in out.iterdir())
    return proc, out, files


def _archive(out: Path, member: str) -> bytes:
    with tarfile.open(out / report.ARCHIVE) as tar:
        return tar.extractfile("gpu_check/" + member).read()


@pytest.mark.slow  # about 30 s: the smoke's latency section and the facts
def test_dry_run_marks_a_section_with_an_error_row_degraded(tmp_path):
    proc, out, files = _run_shell(tmp_path, "--only", "facts",
                                  env={report.FAULT_ENV: "graphs", "GPU_CHECK_SMOKE": "graphs"})
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert files == [report.ARCHIVE, report.SUMMARY]
    text = (out / report.SUMMARY).read_text()
    assert "graphs: degraded: 1 of 4 rows are errors" in text and "facts: ok" in text
    graphs = json.loads(_archive(out, "smoke/summary.json"))["sections"]["graphs"]
    assert graphs["status"].startswith("degraded") and graphs["rows"] == 4
    assert b"fault injected" in _archive(out, "smoke/graphs.csv")
    assert not list(tmp_path.glob("gpu_check_stage.*"))  # the staging folder is cleaned up


@pytest.mark.slow  # several minutes on two shared cores: a search of 4 trials on Ray and 7 short trainings
def test_dry_run_runs_every_section(tmp_path):
    proc, out, files = _run_shell(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert files == [report.ARCHIVE, report.SUMMARY]
    smoke = json.loads(_archive(out, "smoke/summary.json"))["sections"]
    check = json.loads(_archive(out, "check/summary.json"))["sections"]
    assert {n: s["status"] for n, s in smoke.items()} == {
        "share": "skipped: no CUDA device here", "fit": "ok", "graphs": "ok", "procs": "ok"}
    assert {n: s["status"] for n, s in check.items()} == dict.fromkeys(
        ("facts", "host", "search", "latency", "precision", "ladder"), "ok")
    assert smoke["procs"]["figures"]["steps_per_s_4_processes"] > 0
    search = json.loads(_archive(out, "check/search.json"))
    assert search["trials_finished"] == 4 and search["training_windows"] == 4
    assert search["gpu_util_source"] == "fake (dry run)" and search["power_w_mean"] > 0
    precision = pd.read_csv(io.BytesIO(_archive(out, "check/precision.csv")))
    assert len(precision) == 7 and precision["miou"].between(0, 1).all()
    assert set(precision.loc[precision["precision"] == "fp32", "math"]) == {"fp32"}  # no TF32 on a CPU
    rungs = pd.read_csv(io.BytesIO(_archive(out, "check/ladder.csv")))
    assert len(rungs) and rungs["miou"].between(0, 1).all() and set(rungs["rung"]) <= {"32x64", "64x128"}


def test_tune_error_files_and_worker_stderr_tails_are_kept(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    trial = work / "gpu_check" / "tune" / "tune-1" / "trainable_abc_00001"
    trial.mkdir(parents=True)
    (trial / "error.txt").write_text("Traceback ...\nRuntimeError: CUDA error: out of memory")
    logs = work / "ray" / "session_2026" / "logs"
    logs.mkdir(parents=True)
    (logs / "worker-1.err").write_text("".join(f"line {i}\n" for i in range(200)))
    (logs / "worker-2.err").write_text("")  # empty: nothing to keep
    out.mkdir()
    gs.keep_logs(work, out)
    assert "CUDA error" in (out / "tune_errors" / "00_trainable_abc_00001.txt").read_text()
    kept = list((out / "worker_stderr").iterdir())
    assert [p.name for p in kept] == ["session_2026_worker-1.err.txt"]
    lines = kept[0].read_text().splitlines()
    assert len(lines) == gs.LOG_TAIL and lines[-1] == "line 199"


def test_a_gpu_run_without_cuda_reports_nothing_as_ok(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the run would measure for real")
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "TMPDIR": str(tmp_path), "GPU_CHECK_SMOKE": "fit"}
    proc = subprocess.run(["bash", str(SCRIPT), "--wheels", str(tmp_path / "none"), "--only", "facts,search"],
                          capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
    assert proc.returncode == 1
    assert sorted(p.name for p in out.iterdir()) == [report.ARCHIVE, report.SUMMARY]
    text = (out / report.SUMMARY).read_text()
    assert text.startswith("GPU CHECK: 2 section(s)")
    assert "fit: failed: RuntimeError: no CUDA device here" in text and "search: failed" in text
    assert "facts: ok" in text and "no wheels folder" in text
