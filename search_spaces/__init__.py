"""The search space as code: ArchSpec, the block registry, build_model, the space and the presets."""
from .model import SegmentationNet, build_model
from .presets import PRESET_NAMES, load_preset
from .spec import ArchSpec, DecoderSpec, InputSpec, SpecError, StageSpec

__all__ = [
    "ArchSpec", "DecoderSpec", "InputSpec", "PRESET_NAMES", "SegmentationNet", "SpecError", "StageSpec",
    "build_model", "load_preset",
]
