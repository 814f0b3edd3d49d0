"""The references' validation trainings in CPU time the search leaves idle.

The validated stage retrains the presets (and a --baseline net) at the validation protocol whatever
the search finds, so their trainings need not wait for it. On a run whose trials use this machine's
CPUs, one Ray actor at Linux's idle scheduling class (SCHED_IDLE) trains them one by one while the
search runs: the kernel gives it a core only when no trial, driver or Ray process wants that core,
and a trial that wakes (its latency timing included) takes the core back at once. It soaks up what
the search leaves idle (its start, the driver's turn between trials, the last trial's tail) and
takes nothing from it. The jobs and the training are the validated stage's own (`nas.validate`),
so a result is the one the stage would have got.

When the stage starts it takes what finished and hands out no more. The training then in flight
keeps a core of its own (the stage runs one training fewer beside it), since beside two of the
stage's trainings the idle class would get no CPU until they all ended; the stage waits for it, then
ends the actor. After Ctrl-C the one in flight is dropped.
"""
from __future__ import annotations

import os
import sys
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the actor's module stays light: its heavy imports happen once it is idle
    from .validate import Job, Protocol
    from .trial import TrialSettings


def supported() -> bool:
    """Whether this OS has an idle scheduling class for a thread (Linux)."""
    return sys.platform.startswith("linux") and hasattr(os, "SCHED_IDLE")


def lower_to_idle_class() -> None:
    """Put the calling thread (and the threads it starts) in the idle scheduling class."""
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


class IdleWorker:
    """A Ray actor that holds no CPU and runs each training only on a core nothing else wants."""

    def __init__(self) -> None:
        lower_to_idle_class()  # before torch is imported, so that importing it is idle time too

    def train(self, job: Job, data, protocol: Protocol, settings: TrialSettings, reconstruction=None) -> dict:
        import ray

        lower_to_idle_class()  # the thread Ray runs this call on, whichever it is
        from .validate import train_job

        return {**train_job(job, data, protocol, settings, reconstruction),
                "node": ray.get_runtime_context().get_node_id()}


class IdleTimeTrainer:
    """The reference trainings handed one by one (from a driver thread) to one idle-class actor.

    `stop` ends the handing out: the stage runs what was not handed out and keeps a slot free for
    the training in flight, which beside a single neighbour runs at full speed; `end` waits for it.
    """

    def __init__(self, jobs: list[Job], data_ref, protocol: Protocol, settings: TrialSettings,
                 reconstructions: dict[str, object]):
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self.actor = ray.remote(num_cpus=0, scheduling_strategy=here)(IdleWorker).remote()
        self._call = lambda job: self.actor.train.remote(job, data_ref, protocol, settings, reconstructions.get(job.key))
        self._jobs, self._lock = list(jobs), threading.Lock()
        self._stopped, self._in_flight, self._finished = False, None, []
        self._thread = threading.Thread(target=self._hand_out, name="idle-time-trainings", daemon=True)
        self._thread.start()

    def _hand_out(self) -> None:
        import ray

        for job in self._jobs:
            with self._lock:
                if self._stopped:
                    return
                ref = self._call(job)
                self._in_flight = (job, ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayError:  # the actor was ended (Ctrl-C) or its worker died: the stage trains it
                result = None
            with self._lock:
                self._in_flight = None
                if result is not None:
                    self._finished.append((job, result))

    def stop(self) -> tuple[list[tuple[Job, dict]], tuple[Job, object] | None]:
        """Hand out no more; returns the trainings finished so far (taken) and the one in flight (job, reference)."""
        with self._lock:
            self._stopped = True
            finished, self._finished = self._finished, []
            return finished, self._in_flight

    def end(self, wait: bool = True) -> list[tuple[Job, dict]]:
        """The trainings finished since `stop`, once the one in flight has ended (`wait`) or been dropped; the actor ends."""
        import ray

        with self._lock:
            self._stopped = True
        if not wait:
            ray.kill(self.actor)  # the call in flight fails at once, so the thread ends
        self._thread.join()
        if wait:
            ray.kill(self.actor)
        return self.stop()[0]
