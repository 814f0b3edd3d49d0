"""ArchSpec: the one description of a network in this project.

A spec is a tree of frozen, keyword-only dataclasses holding plain values only, so it round-trips
losslessly through YAML (`safe_dump` of dicts, lists, ints, floats and strings; no tags, no import
paths). `build_model(spec)` derives every channel count from it; nothing else describes a network.
This module does not import torch.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

SCHEMA_VERSION = 1

CORES = ("nb1d", "eda", "pfcu", "ssnbt", "inception", "shufflev2", "mbconv")
DOWNSAMPLERS = ("erfnet", "strided", "dwsep")
DECODERS = ("bilinear", "erfnet", "apn", "dupsample")
RATIOS = (1, 2, 4)
KERNELS = (3, 5)
TVCONV_DEPTHS = (0, 1, 2, 3)  # 0 = no TVConv
NUM_STAGES = 3
# Three stride-2 stages on the decomposed input: the input must divide by 8 * ratio.
TOTAL_STRIDE = 2**NUM_STAGES
MAX_DEPTH = 32
MAX_DILATION = 64
MAX_WIDTH = 4096
MAX_SIZE = 8192
MAX_CLASSES = 1024
MAX_IN_CHANNELS = 64


class SpecError(ValueError):
    """A spec value is invalid. `field` is the dotted path of the offending value; `message`, where
    given, replaces the usual "field: value is not allowed; allowed" line."""

    def __init__(self, field: str, value: Any, allowed: str, message: str | None = None):
        self.field, self.value, self.allowed = field, value, allowed
        super().__init__(message or f"{field}: {_show(value)} is not allowed; {allowed}")

    def in_file(self, where: str) -> SpecError:
        """The same error, naming the file it came from first."""
        return SpecError(self.field, self.value, self.allowed, f"{where}: {self}")


def _show(value: Any, limit: int = 60) -> str:
    """The value as one short line: a whole stage list would bury the message."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + " ..."


def yaml_problem(exc: yaml.YAMLError) -> str:
    """Where and what a YAML syntax error is, on one line: "line 3, column 7: expected ...". """
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{problem}"


@dataclass(frozen=True, kw_only=True)
class InputSpec:
    """The study's input: fixed for every network of one search."""

    height: int
    width: int
    in_channels: int = 3
    num_classes: int

    def validate(self, path: str) -> None:
        for name, top in (("height", MAX_SIZE), ("width", MAX_SIZE), ("in_channels", MAX_IN_CHANNELS)):
            value = getattr(self, name)
            _require(1 <= value <= top, f"{path}.{name}", value, f"an integer in [1, {top}]")
        _require(2 <= self.num_classes <= MAX_CLASSES, f"{path}.num_classes", self.num_classes,
                 f"at least 2 classes, at most {MAX_CLASSES}")


@dataclass(frozen=True, kw_only=True)
class StageSpec:
    """One encoder stage: a downsampler to `width` channels, then `depth` core blocks.

    Block i uses dilation `dilations[i % len(dilations)]`. `growth` is EDANet's k (channels each
    `eda` block adds by concatenation); it must be 0 for every other core.
    """

    width: int
    depth: int
    core: str
    kernel: int = 3
    dilations: tuple[int, ...] = (1,)
    dropout: float = 0.0
    growth: int = 0

    def out_channels(self) -> int:
        return self.width + self.depth * self.growth

    def validate(self, path: str) -> None:
        _require(2 <= self.width <= MAX_WIDTH, f"{path}.width", self.width, f"an integer in [2, {MAX_WIDTH}]")
        _require(0 <= self.depth <= MAX_DEPTH, f"{path}.depth", self.depth, f"an integer in [0, {MAX_DEPTH}]")
        _require(self.core in CORES, f"{path}.core", self.core, f"one of {list(CORES)}")
        _require(self.kernel in KERNELS, f"{path}.kernel", self.kernel, f"one of {list(KERNELS)}")
        _require(
            len(self.dilations) >= 1 and all(1 <= d <= MAX_DILATION for d in self.dilations),
            f"{path}.dilations", list(self.dilations), f"a non-empty list of integers in [1, {MAX_DILATION}]",
        )
        _require(0.0 <= self.dropout < 1.0, f"{path}.dropout", self.dropout, "a float in [0, 1)")
        if self.core == "eda":
            _require(self.growth >= 1, f"{path}.growth", self.growth, "an integer >= 1 for core 'eda'")
        else:
            _require(self.growth == 0, f"{path}.growth", self.growth, f"0 (growth is used by core 'eda' only, not {self.core!r})")
        if self.core in ("ssnbt", "shufflev2"):
            _require(self.width % 2 == 0, f"{path}.width", self.width, f"an even width (core {self.core!r} splits channels in two)")


@dataclass(frozen=True, kw_only=True)
class DecoderSpec:
    """The decoder. What `width` means depends on `kind`:

    - bilinear: channels of an optional 3x3 conv before the 1x1 classifier (0 = none, as EDANet);
    - erfnet: unused, must be 0 (its widths mirror the encoder stages); `blocks` nb1d per level;
    - apn: channels of the attention pyramid (LEDNet uses 1);
    - dupsample: N, the compressed label dimension that the reconstruction matrix W expands.
    """

    kind: str
    width: int = 0
    blocks: int = 2

    def validate(self, path: str, num_classes: int, ratio: int) -> None:
        _require(self.kind in DECODERS, f"{path}.kind", self.kind, f"one of {list(DECODERS)}")
        _require(0 <= self.width <= MAX_WIDTH * 16, f"{path}.width", self.width, f"an integer in [0, {MAX_WIDTH * 16}]")
        if self.kind == "erfnet":
            _require(1 <= self.blocks <= 8, f"{path}.blocks", self.blocks, "an integer in [1, 8]")
        else:
            _require(self.blocks == 2, f"{path}.blocks", self.blocks, f"2 (blocks is used by kind 'erfnet' only, not {self.kind!r})")
        if self.kind == "erfnet":
            _require(self.width == 0, f"{path}.width", self.width, "0 (the 'erfnet' decoder mirrors the encoder widths)")
        elif self.kind == "bilinear":
            _require(self.width >= 0, f"{path}.width", self.width, "an integer >= 0 (0 = no hidden conv)")
        elif self.kind == "apn":
            _require(self.width >= 1, f"{path}.width", self.width, "an integer >= 1 (pyramid channels)")
        elif self.kind == "dupsample":
            patch_dim = (TOTAL_STRIDE * ratio) ** 2 * num_classes
            _require(1 <= self.width <= patch_dim, f"{path}.width", self.width,
                     f"an integer in [1, {patch_dim}] (at most the label-patch dimension (8*ratio)^2 * classes)")


@dataclass(frozen=True, kw_only=True)
class ArchSpec:
    """A complete segmentation network; the only input of `build_model`."""

    input: InputSpec
    stages: tuple[StageSpec, ...]
    decoder: DecoderSpec
    ratio: int = 1
    downsampler: str = "erfnet"
    tvconv_from: int = 0
    name: str = ""
    schema: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        _check_types(self, "")
        _require(self.schema == SCHEMA_VERSION, "schema", self.schema, f"{SCHEMA_VERSION} (the version this code reads)")
        self.input.validate("input")
        _require(self.ratio in RATIOS, "ratio", self.ratio, f"one of {list(RATIOS)}")
        _require(self.downsampler in DOWNSAMPLERS, "downsampler", self.downsampler, f"one of {list(DOWNSAMPLERS)}")
        _require(self.tvconv_from in TVCONV_DEPTHS, "tvconv_from", self.tvconv_from,
                 f"one of {list(TVCONV_DEPTHS)} (0 = none, else the first stage using TVConv)")
        _require(len(self.stages) == NUM_STAGES, "stages", f"{len(self.stages)} stages", f"exactly {NUM_STAGES} stages")
        for i, stage in enumerate(self.stages):
            stage.validate(f"stages[{i}]")
        self.decoder.validate("decoder", self.input.num_classes, self.ratio)
        step = TOTAL_STRIDE * self.ratio
        for name in ("height", "width"):
            size = getattr(self.input, name)
            _require(size % step == 0, f"input.{name}", size,
                     f"a multiple of {step} (ratio {self.ratio} x {NUM_STAGES} stride-2 stages)")

    # --- derived facts -------------------------------------------------------------------------
    def stage_size(self, index: int) -> tuple[int, int]:
        """Feature-map (H, W) after stage `index` (0-based)."""
        step = self.ratio * 2 ** (index + 1)
        return self.input.height // step, self.input.width // step

    def uses_tvconv(self, index: int) -> bool:
        return self.tvconv_from > 0 and index + 1 >= self.tvconv_from

    def tag(self) -> str:
        """A short, stable label for plots and tables (timm-style)."""
        if self.name:
            return self.name
        stages = "-".join(f"{s.core}{s.depth}x{s.width}" for s in self.stages)
        tv = f"_tv{self.tvconv_from}" if self.tvconv_from else ""
        return f"r{self.ratio}_{self.downsampler}_{stages}_{self.decoder.kind}{tv}"

    def with_input(self, **changes: int) -> ArchSpec:
        return dataclasses.replace(self, input=dataclasses.replace(self.input, **changes))

    # --- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return _to_plain(self)

    @classmethod
    def from_dict(cls, data: Any) -> ArchSpec:
        return _from_plain(cls, data, "")

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_yaml(cls, path: str | Path) -> ArchSpec:
        """Load from a YAML file; every error names the file first."""
        try:
            text = Path(path).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or exc
            raise SpecError("<file>", str(path), "", f"{path}: not a readable YAML file ({reason})") from None
        try:
            return cls.from_yaml_text(text)
        except SpecError as exc:
            raise exc.in_file(str(path)) from None

    @classmethod
    def from_yaml_text(cls, text: str) -> ArchSpec:
        """Load from YAML text."""
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise SpecError("<yaml>", text, "well-formed YAML", f"malformed YAML at {yaml_problem(exc)}") from None
        return cls.from_dict(data)


def _require(ok: bool, field_path: str, value: Any, allowed: str) -> None:
    if not ok:
        raise SpecError(field_path, value, allowed)


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple):
        return [_to_plain(v) for v in obj]
    return obj


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _from_plain(cls: type, data: Any, path: str) -> Any:
    """Build dataclass `cls` from plain data; unknown or missing keys are errors naming the path."""
    names = [f.name for f in dataclasses.fields(cls)]
    if not isinstance(data, dict):
        raise SpecError(path or "<root>", data, f"a mapping with keys {names}")
    unknown = [k for k in data if k not in names]
    # A missing key comes first: a misspelt one ('stage' for 'stages') is then named as its likely cause.
    for f in dataclasses.fields(cls):
        if f.name not in data and f.default is dataclasses.MISSING:
            where = _join(path, f.name)
            cause = f" (unknown key {', '.join(repr(str(k)) for k in unknown)})" if unknown else ""
            raise SpecError(where, "<missing>", "a required key",
                            f"{where}: missing; every {_NOUNS[cls.__name__]} needs {f.name}{cause}")
    if unknown:
        where = _join(path, str(unknown[0]))
        raise SpecError(where, data[unknown[0]], f"known keys are {names}",
                        f"{where}: unknown key; known keys are {names}")
    hints = typing.get_type_hints(cls)
    kwargs = {f.name: _convert(hints[f.name], data[f.name], _join(path, f.name))
              for f in dataclasses.fields(cls) if f.name in data}
    return cls(**kwargs)


_NOUNS = {"ArchSpec": "spec", "InputSpec": "input", "StageSpec": "stage", "DecoderSpec": "decoder"}


def _convert(hint: Any, value: Any, path: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return _from_plain(hint, value, path)
    if typing.get_origin(hint) is tuple:
        item = typing.get_args(hint)[0]
        if not isinstance(value, (list, tuple)):
            raise SpecError(path, value, "a list")
        return tuple(_convert(item, v, f"{path}[{i}]") for i, v in enumerate(value))
    _check_scalar(hint, value, path)
    return float(value) if hint is float else value


def _check_scalar(hint: type, value: Any, path: str) -> None:
    ok = {
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }[hint]
    if not ok:
        raise SpecError(path, value, f"a value of type {hint.__name__}")


def _check_types(obj: Any, path: str) -> None:
    """Type-check a directly constructed (not loaded) spec tree, naming the first bad field."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value, hint, where = getattr(obj, f.name), hints[f.name], _join(path, f.name)
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, hint):
                raise SpecError(where, value, f"a {hint.__name__}")
            _check_types(value, where)
        elif typing.get_origin(hint) is tuple:
            if not isinstance(value, tuple):
                raise SpecError(where, value, "a tuple")
            item = typing.get_args(hint)[0]
            for i, v in enumerate(value):
                if dataclasses.is_dataclass(item):
                    if not isinstance(v, item):
                        raise SpecError(f"{where}[{i}]", v, f"a {item.__name__}")
                    _check_types(v, f"{where}[{i}]")
                else:
                    _check_scalar(item, v, f"{where}[{i}]")
        else:
            _check_scalar(hint, value, where)
