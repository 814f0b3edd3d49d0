"""The search's live status line, recomputed from the study at each finished trial."""
from __future__ import annotations

import sys
import time

import optuna

from . import study as st
from .config import SearchConfig
from .pareto import front_trials, hypervolume, losses
from .records import Status


class Progress:
    """A live status line: done / running / failed / stopped / infeasible, front, HV, elapsed, ETA."""

    def __init__(self, cfg: SearchConfig, study: optuna.Study, scales: dict[str, float]):
        self.cfg, self.study, self.scales = cfg, study, scales
        self.start = time.time()
        self.done_at_start = len(st.own_trials(study, cfg.budget_owner))
        self.running = 0

    def line(self) -> str:
        counts = st.count_states(self.study, self.cfg.budget_owner)
        done = sum(counts.values())
        front = front_trials(self.study)
        hv = hypervolume(losses(t.values, self.cfg.objectives, self.scales) for t in front)
        elapsed = time.time() - self.start
        new = done - self.done_at_start
        eta = elapsed / new * (self.cfg.budget - done) if new else float("nan")
        return (f"[{done}/{self.cfg.budget}] complete {counts[Status.COMPLETE]} | running {self.running} | "
                f"failed {counts[Status.FAILED]} | stopped early {counts[Status.STOPPED]} | infeasible {counts[Status.INFEASIBLE]} | "
                f"front {len(front)} | HV {hv:.4f} | {elapsed / 60:.1f} min, ETA {eta / 60:.1f} min")

    def show(self) -> None:
        if not self.cfg.options.quiet:
            end = "\n" if not sys.stdout.isatty() else "\r"
            print(self.line().ljust(120), end=end, flush=True)
