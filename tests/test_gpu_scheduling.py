"""GPU scheduling on a CPU machine: Ray with a fake GPU resource gives four 0.25-GPU trials (and
validation trainings) at once, and a driver without CUDA searches a GPU cluster via --address."""
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from nas.search import search
from nas.study import open_study

from benchmarks.gpu_check_search import max_overlap as most_at_once
from test_search import make_config

ROOT = Path(__file__).resolve().parent.parent


def test_max_overlap_counts_overlaps():
    assert most_at_once([(0, 2), (1, 3), (2.5, 4), (5, 6)]) == 2
    assert most_at_once([(0, 1), (1, 2)]) == 1  # touching, not overlapping


@pytest.fixture
def fake_gpu_ray():
    import ray

    ray.shutdown()  # this test needs a Ray of its own, with one (fake) GPU
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=4, num_gpus=1, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             _temp_dir=f"/tmp/lightseg-ray-{os.getuid()}")
    yield
    ray.shutdown()


def test_quarter_gpu_trials_and_validations_run_four_at_once(fake_gpu_ray, tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTSEG_CACHE", str(tmp_path / "cache"))
    cfg = make_config(tmp_path, "--no-presets", "--no-early-stopping", "--gpus-per-trial", "0.25", "--device", "cpu",
                      "--cpus-per-trial", "0.25", "--val-max", "2", "--budget", "6",
                      "--max-concurrent", "16")  # so that only Ray's GPU accounting can hold them to 4
    assert cfg.settings.device == "cpu" and cfg.resources.gpus_per_trial == 0.25
    assert search(cfg) == 0
    study = open_study(cfg.replace(resume=True))
    trials = [t.user_attrs for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(trials) == 6
    assert most_at_once([(a["started_at"], a["finished_at"]) for a in trials]) == 4  # 1 GPU / 0.25, not 16 CPUs / 0.25
    validated = [v for k, v in study.user_attrs.items() if k.startswith("validated:") and v["status"] == "complete"]
    assert len(validated) == 4  # 2 nets x 2 seeds
    assert most_at_once([(v["started_at"], v["finished_at"]) for v in validated]) == 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_driver_without_cuda_searches_a_cluster_whose_gpu_is_on_a_worker(tmp_path):
    port, temp = _free_port(), Path(f"/tmp/lightseg-ray-gpu-{os.getpid()}")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "LIGHTSEG_CACHE": str(tmp_path / "cache")}
    head = subprocess.Popen(["ray", "start", "--head", "--block", f"--port={port}", "--num-cpus=4", "--num-gpus=1",
                             "--include-dashboard=false", f"--temp-dir={temp}"],
                            env={**env, "PATH": f"{Path(sys.executable).parent}:{env['PATH']}"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        time.sleep(8)
        driver_env = {**env, "CUDA_VISIBLE_DEVICES": ""}
        run = subprocess.run(
            [sys.executable, "-m", "nas.search", "--budget", "6", "--epochs", "1", "--size", "32x32", "--no-presets",
             "--address", f"127.0.0.1:{port}", "--gpus-per-trial", "0.25", "--device", "cpu", "--cpus-per-trial",
             "0.5", "--val-size", "32x32", "--val-epochs", "1", "--val-max", "2", "--out", str(tmp_path),
             "--study", "cluster"],
            cwd=ROOT, env=driver_env, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
        assert "[6/6]" in run.stdout and (tmp_path / "cluster" / "pareto.csv").exists()
        refused = subprocess.run(
            [sys.executable, "-m", "nas.search", "--budget", "2", "--address", f"127.0.0.1:{port}",
             "--gpus-per-trial", "2", "--device", "cpu", "--out", str(tmp_path), "--study", "too-many"],
            cwd=ROOT, env=driver_env, capture_output=True, text=True, timeout=120)
        assert refused.returncode == 2 and "--gpus-per-trial 2" in refused.stderr and "Traceback" not in refused.stderr
    finally:
        os.killpg(head.pid, 15)
        head.wait(60)
        subprocess.run(["pkill", "-f", str(temp)], check=False)
