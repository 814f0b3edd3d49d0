"""ArchSpec: validation with clear errors, lossless YAML round trips."""
import dataclasses

import pytest
import yaml

from search_spaces import ArchSpec, SpecError, load_preset
from search_spaces.presets import PRESET_NAMES

from helpers import tiny_spec


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_preset_yaml_round_trip_is_identity(name, tmp_path):
    spec = load_preset(name)
    path = tmp_path / "spec.yaml"
    spec.to_yaml(path)
    assert ArchSpec.from_yaml(path) == spec
    assert ArchSpec.from_dict(spec.to_dict()) == spec
    assert "!!" not in path.read_text()  # plain YAML, no Python tags


def _bad(mutate):
    data = tiny_spec().to_dict()
    mutate(data)
    with pytest.raises(SpecError) as err:
        ArchSpec.from_dict(data)
    return err.value


@pytest.mark.parametrize("mutate,field,hint", [
    (lambda d: d["stages"][1].update(core="resnet"), "stages[1].core", "nb1d"),
    (lambda d: d["stages"][0].update(kernel=7), "stages[0].kernel", "[3, 5]"),
    (lambda d: d["stages"][2].update(colour="red"), "stages[2].colour", "known keys"),
    (lambda d: d.update(extra=1), "extra", "known keys"),
    (lambda d: d["stages"][0].update(width="16"), "stages[0].width", "int"),
    (lambda d: d["stages"][0].update(depth=True), "stages[0].depth", "int"),
    (lambda d: d["stages"][0].update(dropout=1.5), "stages[0].dropout", "[0, 1)"),
    (lambda d: d["stages"][0].update(dilations=[]), "stages[0].dilations", "non-empty"),
    (lambda d: d["stages"][0].update(growth=8), "stages[0].growth", "eda"),
    (lambda d: d["stages"][1].update(core="eda"), "stages[1].growth", ">= 1"),
    (lambda d: d["stages"][1].update(core="ssnbt", width=13), "stages[1].width", "even"),
    (lambda d: d.update(ratio=3), "ratio", "[1, 2, 4]"),
    (lambda d: d.update(downsampler="avgpool"), "downsampler", "erfnet"),
    (lambda d: d.update(tvconv_from=5), "tvconv_from", "0 = none"),
    (lambda d: d.update(stages=d["stages"][:2]), "stages", "exactly 3"),
    (lambda d: d["decoder"].update(kind="fpn"), "decoder.kind", "dupsample"),
    (lambda d: d["decoder"].update(kind="erfnet"), "decoder.width", "mirrors"),
    (lambda d: d["decoder"].update(blocks=3), "decoder.blocks", "erfnet"),
    (lambda d: d["decoder"].update(kind="dupsample", width=10_000), "decoder.width", "patch dimension"),
    (lambda d: d["input"].update(height=36), "input.height", "multiple of 8"),
    (lambda d: d["input"].update(num_classes=1), "input.num_classes", "at least 2"),
    (lambda d: d["input"].pop("height"), "input.height", "missing; every input needs height"),
    (lambda d: d.update(stage=d.pop("stages")), "stages", "missing; every spec needs stages (unknown key 'stage')"),
    (lambda d: d["stages"][0].update(colour=list(range(500))), "stages[0].colour", "unknown key; known keys"),
    (lambda d: d.update(schema=2), "schema", "version"),
])
def test_bad_values_name_the_field_the_value_and_what_is_allowed(mutate, field, hint):
    err = _bad(mutate)
    assert err.field == field
    assert str(err).startswith(f"{field}: ")
    assert hint in str(err)


def test_tvconv_resolution_must_divide_by_ratio_and_strides():
    with pytest.raises(SpecError, match=r"input.width: 48 .*multiple of 32"):
        tiny_spec(ratio=4, height=64, width=48, tvconv_from=1)


def test_malformed_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("ratio: 1\nstages: [unclosed\n")
    with pytest.raises(SpecError) as err:
        ArchSpec.from_yaml(bad)
    assert str(err.value) == f"{bad}: malformed YAML at line 3, column 1: expected ',' or ']', but got '<stream end>'"
    bad.write_text("ratio: 1\n  decoder: 2\n")
    with pytest.raises(SpecError, match=r"bad.yaml: malformed YAML at line 2, column 10: mapping values are not allowed"):
        ArchSpec.from_yaml(bad)
    with pytest.raises(SpecError, match="nope.yaml: not a readable YAML file"):
        ArchSpec.from_yaml(tmp_path / "nope.yaml")
    with pytest.raises(SpecError, match="mapping"):
        ArchSpec.from_yaml_text("- just\n- a list\n")


def test_errors_of_a_file_name_it_and_stay_one_short_line(tmp_path):
    """A misspelt top-level key used to dump the whole stage list as the 'unknown value'."""
    data = tiny_spec().to_dict()
    data["stage"] = data.pop("stages")
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError) as err:
        ArchSpec.from_yaml(path)
    assert str(err.value) == f"{path}: stages: missing; every spec needs stages (unknown key 'stage')"
    assert err.value.field == "stages"
    data["stages"], data["input"] = data.pop("stage"), list(range(1000))
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError) as err:
        ArchSpec.from_yaml(path)
    assert str(err.value).startswith(f"{path}: input: [0, 1, 2") and "\n" not in str(err.value)
    assert len(str(err.value)) < 200 + len(str(path))


def test_spec_is_frozen_and_direct_construction_is_checked():
    spec = tiny_spec()
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.ratio = 2
    with pytest.raises(SpecError, match="stages\\[0\\].width"):
        dataclasses.replace(spec, stages=(dataclasses.replace(spec.stages[0], width=2.5),) + spec.stages[1:])


def test_public_surface():
    spec = load_preset("erfnet", height=64, width=128, num_classes=8)
    assert (spec.input.height, spec.input.width, spec.input.in_channels, spec.input.num_classes) == (64, 128, 3, 8)
    assert spec.tag() == "erfnet"
    assert "nb1d" in dataclasses.replace(spec, name="").tag()
