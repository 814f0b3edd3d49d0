"""Ctrl-C and SIGTERM during a search: both raise KeyboardInterrupt, but while trials run the first
only asks the search to stop, and the second ends it.

While trials run, a stop request is an event Ray Tune polls: it stops the trials in flight (queued
again for `--resume`) and the driver writes the results of what finished, without the validated
stage. A KeyboardInterrupt there could land inside a database write, or leave Ray Tune's actors
unstopped; the second signal raises it anyway, for a shutdown that itself hangs. Elsewhere (starting,
the validated stage, which records each training as it ends) the first signal raises at once.
"""
from __future__ import annotations

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

    def __init__(self) -> None:
        self.event = threading.Event()
        self._graceful = False
        self._previous: dict[int, object] = {}

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
        if not self._graceful or self.event.is_set():
            self.event.set()
            raise KeyboardInterrupt
        self.event.set()
        print(f"\n{signal.Signals(signum).name}: stopping the search (trials in flight are queued again for --resume); "
              "press Ctrl-C again to end at once", file=sys.stderr, flush=True)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def resume_command(argv: list[str] | None) -> str:
    """The command line that continues an interrupted search: the same flags, with --resume."""
    if argv is None:
        return "add --resume to the same command"
    kept = [a for a in argv if a not in ("--force", "--resume")]
    return shlex.join(["python", "-m", "nas.search", *kept, "--resume"])
