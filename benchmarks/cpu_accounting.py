"""Where a whole command's CPU time goes, process by process: is `make search` bound by its work or by waiting?

    python benchmarks/cpu_accounting.py -- python -m nas.search --budget 100 --study cpu --force

Runs the command and, every half second, reads the CPU time of every process on the machine
(Linux's /proc) and how busy the cores were. At the end it prints and writes
results/bench/cpu_accounting.csv (CPU seconds per kind of process: the search's driver, Ray Tune's
trial workers, other Ray workers, Ray's own services, the rest) and cpu_accounting_phases.csv (the
cores' idle share per tenth of the run). The rest includes this sampler (about 1 % of a core). Run it
alone: another job's CPU would be counted as the rest and fill the idle time it measures.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import machine, save  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Seen:
    kind: str
    ticks_at_start: int  # a process already running when the command started: only what it used since counts
    ticks: int = 0
    pids: set = field(default_factory=set)


def kind_of(cmdline: str, comm: str) -> str:
    if "nas.search" in cmdline or "nas/search" in cmdline:
        return "driver (nas.search)"
    # a worker renames itself (ray::IDLE, ray::_Trainable...) once it runs something: seen late, that is its name
    if "default_worker.py" in cmdline or "setup_worker.py" in cmdline or cmdline.startswith("ray::"):
        return "Ray workers (trials, trainings, costs)"
    if comm in ("raylet", "gcs_server") or "ray/" in cmdline:
        return "Ray's own services"
    return "the rest of the machine"


def cores_busy() -> tuple[int, int]:
    """(all jiffies, idle + iowait jiffies) since boot, over every core."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v), v[3] + v[4]


def read_processes() -> dict[int, tuple[str, str, int]]:
    """pid -> (command line, comm, user + system ticks) for every process readable now."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # ended between the listing and the read
            continue
        comm, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat.rsplit(")", 1)[1].split()
        out[int(entry)] = (cmd, comm, int(rest[11]) + int(rest[12]))
    return out


def account(command: list[str], period: float = 0.5) -> tuple[pd.DataFrame, pd.DataFrame, float]:
    """Run `command`; CPU seconds per kind of process, the idle share over time, and the wall seconds."""
    before = read_processes()
    seen: dict[int, Seen] = {pid: Seen(kind_of(c, n), t) for pid, (c, n, t) in before.items()}
    start, (total0, idle0) = time.time(), cores_busy()
    proc = subprocess.Popen(command)
    timeline, last = [], (total0, idle0)
    while proc.poll() is None:
        for pid, (cmd, comm, ticks) in read_processes().items():
            s = seen.setdefault(pid, Seen(kind_of(cmd, comm), 0))
            s.ticks = ticks
        now = cores_busy()
        timeline.append((time.time() - start, (now[1] - last[1]) / max(1, now[0] - last[0])))
        last = now
        time.sleep(period)
    wall = time.time() - start
    total1, idle1 = cores_busy()
    rows = {}
    for s in seen.values():
        used = max(0, s.ticks - s.ticks_at_start) / TICK
        rows[s.kind] = rows.get(s.kind, 0.0) + used
    table = pd.DataFrame([{"kind": k, "cpu_s": round(v, 1)} for k, v in sorted(rows.items(), key=lambda kv: -kv[1])])
    table["share"] = (table["cpu_s"] / table["cpu_s"].sum()).round(3)
    idle = pd.DataFrame(timeline, columns=["t", "idle"])
    idle["tenth"] = (idle["t"] / wall * 10).astype(int).clip(upper=9)
    phases = idle.groupby("tenth").agg(start_s=("t", "min"), end_s=("t", "max"), idle_share=("idle", "mean")).round(3)
    phases.loc["all"] = [0.0, round(wall, 1), round((idle1 - idle0) / max(1, total1 - total0), 3)]
    return table, phases.reset_index(), wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = p.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        p.error("give the command to account for after --")
    table, phases, wall = account(command)
    table["command"], table["wall_s"], table["machine"] = " ".join(command), round(wall, 1), machine()
    save(table, "cpu_accounting")
    save(phases, "cpu_accounting_phases")


if __name__ == "__main__":
    main()
