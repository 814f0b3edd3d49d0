"""A search that cannot start says why in one line, at once, and leaves nothing behind: a retry is
not refused as a run that exists. Each command is run as a user types it."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nas.cli import run as run_cli
from nas.search import main as search_main

from helpers import refused

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--budget", "2", "--epochs", "1", "--size", "32x32", "--val-size", "32x32", "--val-epochs", "1"]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTSEG_CACHE", str(tmp_path / "cache"))


def _refused(argv, capsys) -> str:
    """The one error line of a refused search (exit status 2)."""
    return refused(search_main, argv, capsys)


@pytest.mark.parametrize("storage,message", [
    ("sqlite:////nonexistent/dir/x.db", "cannot be opened"),
    ("nonsense://", "nonsense://"),
])
def test_a_bad_storage_leaves_nothing_and_the_retry_says_the_same(tmp_path, capsys, storage, message):
    argv = [*TINY, "--out", str(tmp_path / "runs"), "--study", "s", "--storage", storage]
    first = _refused(argv, capsys)
    assert message in first and "--storage" in first
    assert not (tmp_path / "runs").exists()  # not even the --out folder it would have made
    assert _refused(argv, capsys) == first  # not "already holds a run"


def test_a_bad_storage_in_an_existing_empty_out_leaves_it_empty(tmp_path, capsys):
    (tmp_path / "runs" / "s").mkdir(parents=True)
    argv = [*TINY, "--out", str(tmp_path / "runs"), "--study", "s", "--storage", "sqlite:////nonexistent/dir/x.db"]
    _refused(argv, capsys)
    assert list((tmp_path / "runs" / "s").iterdir()) == []


def test_a_stale_lock_alone_is_no_run(tmp_path, capsys):
    (tmp_path / "runs" / "s").mkdir(parents=True)
    (tmp_path / "runs" / "s" / ".lock").touch()  # what a failed start of an earlier version left
    err = _refused([*TINY, "--out", str(tmp_path / "runs"), "--study", "s", "--storage", "nonsense://"], capsys)
    assert "already holds a run" not in err


def test_an_out_folder_under_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "some_file").write_text("not a folder")
    err = _refused([*TINY, "--out", str(tmp_path / "some_file" / "sub")], capsys)
    assert err.startswith("error: --out ") and "some_file" in err
    assert (tmp_path / "some_file").read_text() == "not a folder"


@pytest.mark.skipif(os.geteuid() == 0, reason="permissions do not stop root from writing")
def test_a_read_only_out_folder_is_one_line(tmp_path, capsys):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    try:
        err = _refused([*TINY, "--out", str(out)], capsys)
    finally:
        out.chmod(0o700)
    assert err.startswith("error: --out ") and list(out.iterdir()) == []


def test_gpu_shares_on_the_cpu_without_any_gpu_are_refused_at_once(tmp_path, capsys):
    import torch

    if torch.cuda.device_count():
        pytest.skip("this machine has a GPU: --device cpu with GPU shares is a valid search here")
    start = time.time()
    err = _refused([*TINY, "--gpus-per-trial", "0.3", "--device", "cpu", "--out", str(tmp_path / "runs")], capsys)
    assert time.time() - start < 10
    assert "--gpus-per-trial 0.3" in err and "0 GPU" in err
    assert not (tmp_path / "runs").exists()


def test_an_address_nothing_answers_at_is_one_line_within_30_s(tmp_path):
    start = time.time()
    try:
        done = subprocess.run([sys.executable, "-m", "nas.search", *TINY, "--address", "127.0.0.1:1",
                               "--out", str(tmp_path / "runs")],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("--address 127.0.0.1:1 still waiting after 60 s")
    assert time.time() - start < 30
    err = done.stderr.strip()
    assert done.returncode == 2 and err.splitlines() == [err], err[-2000:]
    assert "--address 127.0.0.1:1: no Ray cluster answers there" in err and "ray start --head" in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow  # a whole (one-trial) search: about 20 s
def test_resume_of_a_missing_study_says_so_and_starts_it(tmp_path, capsys):
    import optuna
    import ray
    import yaml

    argv = [*TINY, "--budget", "1", "--no-validate", "--out", str(tmp_path), "--study", "fresh", "--resume"]
    try:
        with pytest.raises(SystemExit) as exit_:
            run_cli(search_main, argv)
    finally:
        ray.shutdown()  # and with it the workers this search started
    out = capsys.readouterr().out
    assert exit_.value.code == 0, out[-2000:]
    run_dir = tmp_path / "fresh"
    assert f"--resume: no study 'fresh' in {run_dir} to resume; starting it" in out
    wrote = [line for line in out.splitlines() if line.startswith("wrote ")]
    assert len(wrote) == 1 and "presets.csv" not in wrote[0]  # not validated: no preset comparison
    for pattern in wrote[0].split(": ", 1)[1].split():  # every file it names is there
        assert list(run_dir.glob(pattern)), pattern
    study = optuna.load_study(study_name="fresh", storage=f"sqlite:///{run_dir / 'study.db'}")
    assert study.metric_names == ["miou", "gmacs", "latency_ms", "peak_mem_mb"]  # named for the dashboard
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert "faults" not in config["settings"] and "epochs" in config["settings"]  # testing-only, unset: hidden
    assert "faults" not in (run_dir / "report.html").read_text()


def test_a_negative_seed_is_one_line(tmp_path, capsys):
    err = _refused([*TINY, "--out", str(tmp_path / "runs"), "--seed", "-1"], capsys)
    assert "--seed -1" in err
    assert not (tmp_path / "runs").exists()


def test_a_storage_password_is_never_printed(tmp_path, capsys):
    # a dialect whose driver is surely missing: the refusal names the URL, but not its password
    url = "mysql://alice:s3cret-pw@127.0.0.1:1/db"
    err = _refused([*TINY, "--out", str(tmp_path / "runs"), "--storage", url], capsys)
    assert "alice" in err and "s3cret-pw" not in err


def test_export_of_a_run_whose_storage_driver_is_missing_is_one_line(tmp_path, capsys):
    import yaml

    from nas.export import main as export_main

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"study": "s", "storage": "mysql://bob:pw-77@127.0.0.1:1/db"}))
    with pytest.raises(SystemExit) as exit_:
        run_cli(export_main, ["--run", str(run_dir), "--trial", "0", "--out", str(tmp_path / "net.yaml")])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1, err
    assert "install it with: pip install mysqlclient" in err and "pw-77" not in err
