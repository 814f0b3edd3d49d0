"""The search space, declared once.

An ordered tuple of small parameter records with stable dotted names. Optuna's define-by-run
sampling (`sample`), the distributions, the printed description, membership (`contains`) and
`decode(params) -> ArchSpec` all derive from that one declaration. Parameter names are a storage
format: renaming one breaks resumed studies. Torch is not imported here.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from .spec import (CORES, DECODERS, DOWNSAMPLERS, KERNELS, NUM_STAGES, RATIOS, TVCONV_DEPTHS, ArchSpec,
                   DecoderSpec, InputSpec, SpecError, StageSpec)

# Named dilation schedules, cycled over a stage's blocks. The seeds' own schedules are here so that
# every preset is a point of the space (the search can start from them and recombine them).
DILATION_SCHEDULES: dict[str, tuple[int, ...]] = {
    "none": (1,),
    "d2": (2,),  # ESNet's PFCU stage (branches 2, 5, 9)
    "erfnet": (2, 4, 8, 16),
    "lednet": (1, 2, 5, 9, 2, 5, 9, 17),
    "edanet_mid": (1, 1, 1, 2, 2),
    "edanet_deep": (2, 2, 4, 4, 8, 8, 16, 16),
}
# EDANet's odd widths (15, 60, 130) are included so that it is a point of the space too.
STAGE_WIDTHS = ((8, 15, 16, 24, 32), (32, 48, 60, 64, 96), (64, 96, 128, 130, 160))
STAGE_DEPTHS = ((0, 3), (0, 6), (1, 8))
DROPOUTS = (0.0, 0.02, 0.03, 0.1, 0.3)
SPLIT_CORES = ("ssnbt", "shufflev2")  # split channels in two: odd widths are rounded up
EDA_GROWTHS = (8, 16, 24, 40)


@dataclass(frozen=True)
class Choice:
    """A categorical parameter, active only when `when` = (other parameter, allowed values) holds."""

    name: str
    choices: tuple
    when: tuple[str, tuple] | None = None

    def active(self, params: Mapping[str, Any]) -> bool:
        return self.when is None or params.get(self.when[0]) in self.when[1]

    def suggest(self, trial: Any) -> Any:
        return trial.suggest_categorical(self.name, self.choices)

    def distribution(self) -> Any:
        from optuna.distributions import CategoricalDistribution
        return CategoricalDistribution(self.choices)

    def contains(self, value: Any) -> bool:
        return value in self.choices

    def describe(self) -> str:
        return "{" + ", ".join(map(str, self.choices)) + "}"


@dataclass(frozen=True)
class IntRange:
    """An integer parameter in [low, high] (ordered, so samplers can exploit neighbourhoods)."""

    name: str
    low: int
    high: int
    when: tuple[str, tuple] | None = None

    active = Choice.active

    def suggest(self, trial: Any) -> int:
        return trial.suggest_int(self.name, self.low, self.high)

    def distribution(self) -> Any:
        from optuna.distributions import IntDistribution
        return IntDistribution(self.low, self.high)

    def contains(self, value: Any) -> bool:
        return isinstance(value, int) and self.low <= value <= self.high

    def describe(self) -> str:
        return f"[{self.low}, {self.high}]"


def _declare() -> tuple[Choice | IntRange, ...]:
    params: list[Choice | IntRange] = [
        Choice("ratio", RATIOS),
        Choice("downsampler", DOWNSAMPLERS),
        Choice("tvconv_from", TVCONV_DEPTHS),
    ]
    for i in range(NUM_STAGES):
        s = f"stage{i + 1}"
        params += [
            Choice(f"{s}.width", STAGE_WIDTHS[i]),
            IntRange(f"{s}.depth", *STAGE_DEPTHS[i]),
            Choice(f"{s}.core", CORES),
            Choice(f"{s}.kernel", KERNELS),
            Choice(f"{s}.dilations", tuple(DILATION_SCHEDULES)),
            Choice(f"{s}.dropout", DROPOUTS),
            Choice(f"{s}.growth", EDA_GROWTHS, when=(f"{s}.core", ("eda",))),
        ]
    params += [
        Choice("decoder.kind", DECODERS),
        Choice("decoder.bilinear_width", (0, 32, 64), when=("decoder.kind", ("bilinear",))),
        Choice("decoder.erfnet_blocks", (1, 2), when=("decoder.kind", ("erfnet",))),
        Choice("decoder.apn_width", (1, 4), when=("decoder.kind", ("apn",))),
        Choice("decoder.dupsample_width", (32, 64, 128), when=("decoder.kind", ("dupsample",))),
    ]
    return tuple(params)


PARAMS = _declare()


def _even_for_split(width: int, core: str) -> int:
    return width + (width % 2) if core in SPLIT_CORES else width


@dataclass(frozen=True)
class SearchSpace:
    """The space for one study: the declared parameters plus the study's fixed input."""

    input: InputSpec
    params: tuple[Choice | IntRange, ...] = PARAMS

    def sample(self, trial: Any) -> ArchSpec:
        """Sampling on an Optuna trial (or FixedTrial); returns a valid spec.

        Every parameter is suggested, the inactive ones too (then ignored): the space is flat, so
        a model-based sampler (TPE, GP, NSGA-II) sees one fixed search space and models every
        parameter, where conditional ones (EDANet growth, decoder widths) would be sampled at random.
        """
        values = {p.name: p.suggest(trial) for p in self.params}
        return self.decode(self.active_values(values))

    def active_values(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The values of the parameters that are active under `values` (what `decode` takes)."""
        return {p.name: values[p.name] for p in self.active_params(values) if p.name in values}

    def active_params(self, values: Mapping[str, Any]) -> list[Choice | IntRange]:
        out, seen = [], {}
        for p in self.params:
            if p.active(seen):
                out.append(p)
                seen[p.name] = values.get(p.name)
        return out

    def contains(self, values: Mapping[str, Any]) -> bool:
        """True iff `values` sets exactly the active parameters, each to an allowed value."""
        active = self.active_params(values)
        return {p.name for p in active} == set(values) and all(p.contains(values[p.name]) for p in active)

    def distributions(self, values: Mapping[str, Any]) -> dict[str, Any]:
        return {p.name: p.distribution() for p in self.active_params(values)}

    def decode(self, values: Mapping[str, Any]) -> ArchSpec:
        if not self.contains(values):
            bad = sorted(set(values) ^ {p.name for p in self.active_params(values)})
            bad += [p.name for p in self.active_params(values) if p.name in values and not p.contains(values[p.name])]
            raise SpecError("params", bad, "exactly the active parameters of the space, with allowed values")
        stages = tuple(
            StageSpec(
                width=_even_for_split(values[f"stage{i}.width"], values[f"stage{i}.core"]),
                depth=values[f"stage{i}.depth"], core=values[f"stage{i}.core"],
                kernel=values[f"stage{i}.kernel"], dilations=DILATION_SCHEDULES[values[f"stage{i}.dilations"]],
                dropout=float(values[f"stage{i}.dropout"]), growth=values.get(f"stage{i}.growth", 0),
            )
            for i in range(1, NUM_STAGES + 1)
        )
        kind = values["decoder.kind"]
        width = {"bilinear": "decoder.bilinear_width", "apn": "decoder.apn_width",
                 "dupsample": "decoder.dupsample_width"}.get(kind)
        decoder = DecoderSpec(kind=kind, width=values[width] if width else 0,
                              blocks=values.get("decoder.erfnet_blocks", 2))
        return ArchSpec(input=self.input, stages=stages, decoder=decoder, ratio=values["ratio"],
                        downsampler=values["downsampler"], tvconv_from=values["tvconv_from"])

    def encode(self, spec: ArchSpec) -> dict[str, Any]:
        """The parameters that decode to `spec`; SpecError if it is not a point of the space."""
        schedules = {v: k for k, v in DILATION_SCHEDULES.items()}
        values: dict[str, Any] = {"ratio": spec.ratio, "downsampler": spec.downsampler, "tvconv_from": spec.tvconv_from}
        for i, st in enumerate(spec.stages, 1):
            if st.dilations not in schedules:
                raise SpecError(f"stages[{i - 1}].dilations", list(st.dilations), f"one of {list(DILATION_SCHEDULES.values())}")
            values.update({f"stage{i}.width": st.width, f"stage{i}.depth": st.depth, f"stage{i}.core": st.core,
                           f"stage{i}.kernel": st.kernel, f"stage{i}.dilations": schedules[st.dilations],
                           f"stage{i}.dropout": st.dropout})
            if st.core == "eda":
                values[f"stage{i}.growth"] = st.growth
        kind = spec.decoder.kind
        values["decoder.kind"] = kind
        if kind == "erfnet":
            values["decoder.erfnet_blocks"] = spec.decoder.blocks
        else:
            values[f"decoder.{kind}_width"] = spec.decoder.width
        for p in self.active_params(values):
            if not p.contains(values[p.name]):
                raise SpecError(p.name, values[p.name], f"a value in {p.describe()} (not a point of the space)")
        if self.decode(values) != dataclasses.replace(spec, name=""):
            raise SpecError("spec", spec.tag(), "a spec that the space can represent exactly")
        return values

    def describe(self) -> str:
        """A printable table of the space."""
        rows = [f"{'parameter':28s} {'values':40s} when"]
        for p in self.params:
            cond = f"{p.when[0]} in {list(p.when[1])}" if p.when else ""
            rows.append(f"{p.name:28s} {p.describe():40s} {cond}")
        return "\n".join(rows)
