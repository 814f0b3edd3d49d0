"""The references' validation trainings in idle CPU time: the idle scheduling class, the specs the
search gives them, results equal to the stage's own, and a slot kept for the training in flight."""
import os
import threading
import time

import pytest

from nas import idle_time, runner, validate as val, validated_stage
from nas.study import enqueue_presets, open_study, study_space
from search_spaces import ArchSpec
from trainers.data import load_data

from test_search import make_config

pytestmark = pytest.mark.skipif(not idle_time.supported(), reason="needs Linux's idle scheduling class")


def test_the_idle_class_holds_for_the_thread_and_the_threads_it_starts():
    seen = {}

    def lowered():
        idle_time.lower_to_idle_class()
        seen["own"] = os.sched_getscheduler(0)
        child = threading.Thread(target=lambda: seen.update(child=os.sched_getscheduler(0)))
        child.start()
        child.join()

    t = threading.Thread(target=lowered)
    t.start()
    t.join()
    assert seen == {"own": os.SCHED_IDLE, "child": os.SCHED_IDLE}
    assert os.sched_getscheduler(0) != os.SCHED_IDLE  # the caller's own thread is untouched


def test_reference_jobs_come_from_the_queued_presets(tmp_path):
    cfg = make_config(tmp_path)
    data = load_data(None, 32, 32, seed=1)
    space = study_space(data, 32, 32)
    cfg.run_dir.mkdir(parents=True)
    study = open_study(cfg, space, data)
    enqueue_presets(study, space)
    jobs = validated_stage.reference_jobs(study, space, cfg.protocol)
    assert len(jobs) == 8 and {j.seed for j in jobs} == set(cfg.protocol.seeds)
    names = [study.trials[j.number].user_attrs["preset"] for j in jobs[::2]]
    assert names[0] == "edanet" and names[-1] == "erfnet"  # the smallest net first, the largest last
    asked = {}  # what the search asks for these trials (nas.tune_adapters.StudySearcher.suggest)
    for _ in range(4):
        trial = study.ask()
        name = trial.user_attrs["preset"]
        asked[trial.number] = ArchSpec.from_dict({**space.sample(trial).to_dict(), "name": name})
    p = cfg.protocol
    for job in jobs:
        assert job.spec == asked[job.number].with_input(height=p.height, width=p.width).to_dict()
    study.set_user_attr(val.validated_key(jobs[0].number, jobs[0].seed), {"status": "complete", "miou": 0.5})
    assert len(validated_stage.reference_jobs(study, space, cfg.protocol)) == 7  # what the study holds is done


def _sleep_then_report(seconds: float) -> dict:
    start = time.time()
    time.sleep(seconds)
    return {"status": "complete", "start": start, "end": time.time()}


def test_a_training_beside_keeps_one_slot_until_it_ends(tmp_path):
    import sys

    import ray
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    cfg = make_config(tmp_path)
    runner.start_ray(cfg)
    slots = runner.trial_slots(cfg)
    beside = ray.remote(num_cpus=0)(_sleep_then_report).remote(3.0)
    got = {}
    runner.run_tasks(cfg, _sleep_then_report, [(0.5,)] * (2 * slots), lambda i, r: got.update({i: r}), [beside])
    outside = ray.get(beside)
    assert len(got) == 2 * slots
    for t in [r["start"] + 0.01 for r in got.values()]:
        running = sum(r["start"] <= t < r["end"] for r in got.values())
        assert running <= (max(1, slots - 1) if t < outside["end"] else slots)
