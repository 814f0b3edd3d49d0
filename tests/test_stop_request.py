"""The signal handling of a search, in-process: a Ctrl-C that lands in a finalizer (Ray's handles
have them; Python prints and drops an exception raised there) is raised again outside it."""
import gc
import signal
import time

import pytest

from nas.interrupt import StopRequest


class _Finalized:
    def __del__(self):
        signal.raise_signal(signal.SIGINT)  # the handler runs here, inside the finalizer
        for _ in range(1000):  # bytecodes for the handler to run on
            pass


def test_a_ctrl_c_swallowed_by_a_finalizer_is_raised_again_outside_it(capsys):
    with StopRequest("hint") as stop:
        with pytest.raises(KeyboardInterrupt):
            _Finalized()
            gc.collect()
            deadline = time.time() + 5
            while time.time() < deadline:
                time.sleep(0.01)
        assert stop.requested
    assert "Traceback" not in capsys.readouterr().err


def test_while_trials_run_the_first_ctrl_c_only_asks_to_stop(capsys):
    with StopRequest("hint") as stop, stop.gracefully():
        signal.raise_signal(signal.SIGINT)
        time.sleep(0.01)
        assert stop.requested
    assert "press Ctrl-C again to end at once" in capsys.readouterr().err
