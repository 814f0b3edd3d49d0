"""Fair early stopping: rungs rank by non-dominated sorting over (epoch mIoU, costs), never mIoU alone."""
import numpy as np

from nas.pareto import OBJECTIVES, crowding_distances, non_domination_ranks
from nas.promotion import promotes, rung_losses, rungs

OBJS = (OBJECTIVES["miou"], OBJECTIVES["gmacs"])
SCALES = {"gmacs": 1.0}


def _rows(results):
    return np.array([rung_losses(r, OBJS, SCALES) for r in results])


def test_rungs_are_successive_halving_epochs_below_the_last():
    assert rungs(3) == [1, 2]
    assert rungs(20) == [1, 2, 4, 8, 16]
    assert rungs(1) == []


def test_ranks_and_crowding_by_hand():
    # (1-mIoU, GMACs): a, b, c trade off; d is dominated by b (0.5 >= 0.4, 0.3 >= 0.2)
    rows = np.array([[0.2, 0.9], [0.4, 0.2], [0.3, 0.5], [0.5, 0.3]])
    assert non_domination_ranks(rows).tolist() == [0, 0, 0, 1]
    # extremes infinite; c: (0.4-0.2)/0.2 + (0.9-0.2)/0.7 = 1 + 1 = 2
    assert np.allclose(crowding_distances(rows[:3]), [np.inf, np.inf, 2.0])


def test_a_cheap_non_dominated_net_with_modest_miou_goes_on():
    # four nets have reached the rung; the newcomer is the cheapest by far but has the lowest mIoU
    results = [{"miou": m, "gmacs": g} for m, g in ((0.40, 0.030), (0.38, 0.020), (0.36, 0.025), (0.35, 0.028),
                                                      (0.20, 0.002))]
    newcomer = len(results) - 1
    mious = np.array([r["miou"] for r in results])
    keep = int(np.ceil(len(results) / 2))
    assert newcomer not in np.argsort(-mious)[:keep]  # mIoU-only promotion would stop it
    assert promotes(newcomer, _rows(results))


def test_a_dominated_net_stops():
    results = [{"miou": m, "gmacs": g} for m, g in ((0.40, 0.010), (0.30, 0.002), (0.35, 0.005), (0.25, 0.020))]
    assert not promotes(3, _rows(results))  # worse than (0.40, 0.010) in both
    assert promotes(0, _rows(results)) and promotes(1, _rows(results))


def test_the_first_arrival_at_a_rung_always_goes_on():
    assert promotes(0, _rows([{"miou": 0.01, "gmacs": 5.0}]))


class _Trial:
    def __init__(self, trial_id, preset=""):
        self.trial_id, self.config = trial_id, {"preset": preset}


def test_the_scheduler_stops_dominated_trials_and_never_a_preset():
    from ray.tune.schedulers import TrialScheduler

    from nas.tune_adapters import MultiObjectiveASHA

    sched = MultiObjectiveASHA(OBJS, SCALES, max_epochs=3)
    report = lambda miou, gmacs: {"epoch": 1, "status": "running", "miou": miou, "gmacs": gmacs}  # noqa: E731
    assert sched.on_trial_result(None, _Trial("a"), report(0.40, 0.010)) == TrialScheduler.CONTINUE
    assert sched.on_trial_result(None, _Trial("b"), report(0.30, 0.002)) == TrialScheduler.CONTINUE
    # a preset worse in every objective than both still goes on
    assert sched.on_trial_result(None, _Trial("p", preset="erfnet"), report(0.10, 0.500)) == TrialScheduler.CONTINUE
    assert sched.on_trial_result(None, _Trial("d"), report(0.20, 0.400)) == TrialScheduler.STOP
    assert [t for t in "abpd" if sched.stopped(t)] == ["d"]
    # the last epoch is no rung: a finished trial is never stopped
    final = {"epoch": 3, "status": "complete", "miou": 0.0, "gmacs": 9.0}
    assert sched.on_trial_result(None, _Trial("e"), final) == TrialScheduler.CONTINUE
