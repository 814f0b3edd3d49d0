"""benchmarks/cpu_accounting.py counts a command's CPU time as the kernel does."""
import sys

from benchmarks.cpu_accounting import account, kind_of

# the CPU a process uses after the last sample before it ends is not seen: the child idles at the end
BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.8: pass\ntime.sleep(0.5)"


def test_a_busy_child_is_counted_with_the_cpu_time_it_used():
    table, phases, wall = account([sys.executable, "-c", BURN], period=0.1)
    used = dict(zip(table["kind"], table["cpu_s"]))
    # the child's own 0.8 s of CPU (its process_time, the kernel's figure) is in "the rest", and no more
    # than the wall clock allows on this machine's cores beside the interpreter's start
    assert 0.75 <= used["the rest of the machine"] <= wall * 2 + 0.5
    assert phases.iloc[-1]["tenth"] == "all" and 0 <= phases.iloc[-1]["idle_share"] <= 1


def test_processes_are_sorted_by_what_they_are():
    assert kind_of("python -m nas.search --budget 100", "python") == "driver (nas.search)"
    assert kind_of("python .../ray/_private/workers/default_worker.py --node-ip", "python") == \
        "Ray workers (trials, trainings, costs)"
    assert kind_of("/venv/lib/ray/core/src/ray/raylet/raylet --x", "raylet") == "Ray's own services"
    assert kind_of("ray::IDLE", "ray::IDLE") == "Ray workers (trials, trainings, costs)"
    assert kind_of("bash", "bash") == "the rest of the machine"
