"""The seeds' hand-designed networks as ArchSpecs (YAML files beside this module)."""
from __future__ import annotations

from pathlib import Path

from ..spec import ArchSpec, SpecError

PRESET_DIR = Path(__file__).parent
PRESET_NAMES = ("erfnet", "edanet", "esnet", "lednet")


def load_preset(name: str, height: int | None = None, width: int | None = None,
                num_classes: int | None = None, in_channels: int | None = None) -> ArchSpec:
    """Load a preset, optionally re-targeted to a study's input size and class count."""
    if name not in PRESET_NAMES:
        raise SpecError("preset", name, f"one of {list(PRESET_NAMES)}")
    spec = ArchSpec.from_yaml(PRESET_DIR / f"{name}.yaml")
    changes = {k: v for k, v in dict(height=height, width=width, num_classes=num_classes,
                                      in_channels=in_channels).items() if v is not None}
    return spec.with_input(**changes) if changes else spec
