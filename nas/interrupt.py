"""Ctrl-C and SIGTERM during a search: both raise KeyboardInterrupt, but while trials run the first
only asks the search to stop, and the second ends it.

While trials run, a stop request is an event Ray Tune polls: it stops the trials in flight (queued
again for `--resume`) and the driver writes the results of what finished, without the validated
stage. A KeyboardInterrupt there could land inside a database write, or leave Ray Tune's actors
unstopped. The second signal ends the process at once, for a shutdown that itself hangs: raised as
an exception it could land in a finalizer (Ray's handles have them), where Python prints it and
carries on. What the study holds stays consistent (each write is a transaction; the trials in
flight are found stale and queued again by `--resume`). Elsewhere (starting, the validated stage,
which records each training as it ends) the first signal raises at once; one that a finalizer
swallows is sent again.
"""
from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Iterator

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for a command ended by Ctrl-C


class StopRequest:
    """Installs the handlers while entered (main thread only) and restores the previous ones on exit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, hint: str = "") -> None:
        self.event = threading.Event()
        self.hint = hint  # printed when the second signal ends the process
        self._graceful = False
        self._redeliver = False
        self._previous: dict[int, object] = {}
        self._previous_hook = sys.unraisablehook

    @property
    def requested(self) -> bool:
        return self.event.is_set()

    @contextmanager
    def gracefully(self) -> Iterator[None]:
        """Within: the first signal sets the event instead of raising."""
        self._graceful = True
        try:
            yield
        finally:
            self._graceful = False

    def _handle(self, signum: int, frame) -> None:
        if self._redeliver:  # the first signal again, after a finalizer swallowed its exception
            self._redeliver = False
            raise KeyboardInterrupt
        if self.event.is_set():
            _end_now(self.hint)
        self.event.set()
        if not self._graceful:
            raise KeyboardInterrupt
        print(f"\n{signal.Signals(signum).name}: stopping the search (trials in flight are queued again for --resume); "
              "press Ctrl-C again to end at once", file=sys.stderr, flush=True)

    def _unraisable(self, info) -> None:
        if not isinstance(info.exc_value, KeyboardInterrupt):
            self._previous_hook(info)
        elif not self._redeliver:  # raised inside a finalizer, which swallows it: raise it again, outside
            self._redeliver = True
            threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT)).start()

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
            self._previous_hook, sys.unraisablehook = sys.unraisablehook, self._unraisable
        return self

    def __exit__(self, *exc) -> None:
        if self._previous:
            sys.unraisablehook = self._previous_hook
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def _end_now(hint: str) -> None:
    """The second signal: say how to resume, give Ray a moment to stop what it started here, exit."""
    print(hint, file=sys.stderr, flush=True)
    if "ray" in sys.modules:
        import ray

        shutdown = threading.Thread(target=ray.shutdown, daemon=True)
        shutdown.start()
        shutdown.join(3)
    os._exit(EXIT_INTERRUPTED)


def resume_command(argv: list[str] | None) -> str:
    """The command line that continues an interrupted search: the same flags, with --resume."""
    if argv is None:
        return "add --resume to the same command"
    kept = [a for a in argv if a not in ("--force", "--resume")]
    return shlex.join(["python", "-m", "nas.search", *kept, "--resume"])
