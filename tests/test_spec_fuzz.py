"""Property tests: whatever dict or YAML text the loader is given, it returns a valid spec or raises
the project's own SpecError, never anything else."""
import copy

import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from search_spaces import ArchSpec, SpecError, load_preset

KEYS = ["input", "stages", "decoder", "ratio", "downsampler", "tvconv_from", "name", "schema", "height", "width",
        "in_channels", "num_classes", "depth", "core", "kernel", "dilations", "dropout", "growth", "kind", "blocks"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=8), st.sampled_from(["nb1d", "eda", "apn", "erfnet", "dupsample"]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=5), inner, max_size=5)),
    max_leaves=20)
BASE = load_preset("lednet", height=64, width=128, num_classes=8).to_dict()


def load_or_spec_error(data):
    try:
        spec = ArchSpec.from_dict(data)
    except SpecError:
        return None
    assert ArchSpec.from_dict(spec.to_dict()) == spec
    return spec


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values)
def test_random_values(data):
    load_or_spec_error(data)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


PATHS = [p for p in _paths(BASE) if p]


def mutated(mutations) -> dict:
    """The base spec's dict with values replaced at the given paths."""
    data = copy.deepcopy(BASE)
    for path, value in mutations:
        node = data
        try:
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation replaced this branch
    return data


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(PATHS), values), min_size=1, max_size=3))
def test_valid_spec_with_random_mutations(mutations):
    load_or_spec_error(mutated(mutations))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_random_yaml_text(text):
    try:
        ArchSpec.from_yaml_text(text)
    except SpecError:
        pass


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(PATHS), values), min_size=1, max_size=2))
def test_mutated_yaml_documents(mutations):
    try:
        ArchSpec.from_yaml_text(yaml.safe_dump(mutated(mutations)))
    except SpecError:
        pass
