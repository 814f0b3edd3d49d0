"""The named protocols (`--protocol quick|faithful`): the search's size and epochs and the validated
stage's, chosen together from the resolution ladder (benchmarks/scale_ladder.py), and what the ladder
measured of each validation size's agreement with 128x256.

`quick` is `make search`'s: verdicts in minutes on a laptop's CPU, at 32x64, validated for 6 epochs.
On the ladder its validated ranking agreed with 128x256's at Kendall tau 0.72, with the same 4 preset
verdicts: as closely as 10 epochs at 32x64 did (0.68; 8 epochs 0.70), the intervals overlapping
widely, for 60 % of the 10-epoch stage's training (the shorter runs trained with the fused AdamW the
10-epoch ones predate: float rounding). Its seed noise is larger (sd 0.011 against 0.008),
which each run's noise margin carries. `faithful` searches and validates at 64x128 for 10 epochs, the
cheapest size whose ranking agreed beyond the 0.7 bar with room (0.85; docs/benchmarks.md, "The
resolution ladder"), at about 3x quick's time. A flag given beside a protocol (--size, --epochs,
--val-size, --val-epochs) wins, and the run is then labelled custom: no ladder figure speaks for its sizes.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

AGREEMENT = Path(__file__).with_name("ladder_agreement.csv")  # written by benchmarks/scale_ladder_report.py


@dataclass(frozen=True)
class NamedProtocol:
    name: str
    size: tuple[int, int]  # the search's input HxW
    epochs: int  # the search's most epochs per trial
    val_size: tuple[int, int]
    val_epochs: int

    def label(self) -> str:
        return (f"{self.name} (search {self.size[0]}x{self.size[1]}, {self.epochs} epochs; validated "
                f"{self.val_size[0]}x{self.val_size[1]}, {self.val_epochs} epochs)")


PROTOCOLS = {
    "quick": NamedProtocol("quick", (32, 64), 3, (32, 64), 6),
    "faithful": NamedProtocol("faithful", (64, 128), 3, (64, 128), 10),
}
DEFAULT = "quick"


@dataclass(frozen=True)
class Agreement:
    """How one validation size's ranking agreed with 128x256's on the ladder's validated-stage nets."""

    rung: str
    epochs: int  # the validation training's epochs the ladder trained this rung for
    tau: float
    ci_low: float
    ci_high: float
    nets: int
    seeds: int  # the fewest seeds a net had at either size
    verdicts_same: int | None  # presets whose verdict matched 128x256's (of 4)
    commit: str

    def sentence(self) -> str:
        if self.rung == "128x256":
            return "validated at 128x256, the resolution ladder's reference size"
        verdicts = f", {self.verdicts_same} of 4 preset verdicts the same" if self.verdicts_same is not None else ""
        return (f"validated at {self.rung}, {self.epochs} epochs: its ranking agreed with 128x256's at Kendall tau {self.tau:.2f} "
                f"[{self.ci_low:.2f}, {self.ci_high:.2f}] over {self.nets} nets ({self.seeds} seed(s)){verdicts}; "
                f"resolution ladder at commit {self.commit}")


def ladder_agreement(val_height: int, val_width: int, val_epochs: int) -> Agreement | None:
    """What the ladder measured for this validation size and length, or None where it trained no such rung."""
    rung = f"{val_height}x{val_width}"
    if not AGREEMENT.exists():
        return None
    with AGREEMENT.open() as f:
        for row in csv.DictReader(f):
            if row["rung"] == rung and int(row["epochs"]) == val_epochs:
                same = row.get("verdicts_same", "")
                return Agreement(rung, val_epochs, float(row["tau"]), float(row["ci_low"]), float(row["ci_high"]),
                                 int(row["nets"]), int(float(row["seeds"])),
                                 int(float(same)) if same not in ("", "nan") else None, row["commit"])
    return None


def protocol_label(name: str, size: tuple[int, int], epochs: int, val_size: tuple[int, int], val_epochs: int) -> str:
    """The protocol a run used: its name where the sizes are the named one's, else custom with what differs."""
    named = PROTOCOLS[name]
    if (size, epochs, val_size, val_epochs) == (named.size, named.epochs, named.val_size, named.val_epochs):
        return named.label()
    return f"custom ({name} with search {size[0]}x{size[1]}, {epochs} epochs; validated {val_size[0]}x{val_size[1]}, {val_epochs} epochs)"
