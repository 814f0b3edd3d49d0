"""The Pareto plots: every preset is a named star, on the front or off it; the legend lists what is drawn."""
import matplotlib
import pandas as pd
import pytest

from nas.pareto import OBJECTIVES
from nas.plots import front_figure, plot_fronts

matplotlib.use("Agg")

GMACS = OBJECTIVES["gmacs"]


def _table(validated: bool) -> pd.DataFrame:
    """Trial 0 a preset on the front, trial 1 a preset far off it, trials 2 and 3 searched nets."""
    rows = [dict(trial=0, preset="erfnet", miou=0.60, gmacs=2.0, latency_ms=9.0),
            dict(trial=1, preset="enet", miou=0.30, gmacs=3.0, latency_ms=12.0),
            dict(trial=2, preset="", miou=0.55, gmacs=0.5, latency_ms=3.0),
            dict(trial=3, preset="", miou=0.20, gmacs=1.0, latency_ms=5.0)]
    table = pd.DataFrame(rows).assign(state="complete", peak_mem_mb=1.0)
    if validated:  # the off-front preset's validation failed: it has search-protocol values only
        table["miou_validated"] = [0.62, None, 0.56, None]
        table["miou_validated_std"] = [0.01, None, 0.02, None]
        table["latency_ms_isolated"] = [8.0, None, 2.5, None]
    return table


def _drawn(fig):
    ax = fig.axes[0]
    legend = ax.get_legend()
    return {t.get_text() for t in ax.texts}, [t.get_text() for t in legend.get_texts()] if legend else []


def test_a_preset_off_the_front_is_named_and_starred():
    fig = front_figure(_table(validated=False), [0, 2], GMACS, "search protocol", None)
    names, legend = _drawn(fig)
    assert names == {"erfnet", "enet"}  # enet is not on the front, and still named
    assert legend == ["trials (search protocol)", "Pareto front (all objectives)", "hand-designed presets"]
    stars = [c for c in fig.axes[0].collections if c.get_label() == "hand-designed presets"]
    assert len(stars) == 1 and sorted(map(tuple, stars[0].get_offsets().tolist())) == [(2.0, 0.6), (3.0, 0.3)]
    enet = next(t for t in fig.axes[0].texts if t.get_text() == "enet")
    assert tuple(enet.xy) == (3.0, 0.3)  # the name sits at its point


def test_validated_plots_tell_validated_presets_from_search_only_ones():
    fig = front_figure(_table(validated=True), [0, 2], OBJECTIVES["latency"], "search protocol", "validated protocol")
    names, legend = _drawn(fig)
    assert names == {"erfnet", "enet"}
    assert sorted(legend) == sorted(["trials (search protocol)", "validated (validated protocol), mean +- sd",
                                     "Pareto front (all objectives)", "hand-designed presets (validated)",
                                     "hand-designed presets (search protocol only)"])
    erfnet = next(t for t in fig.axes[0].texts if t.get_text() == "erfnet")
    enet = next(t for t in fig.axes[0].texts if t.get_text() == "enet")
    assert tuple(erfnet.xy) == (8.0, 0.62) and tuple(enet.xy) == (12.0, 0.30)


@pytest.mark.parametrize("front", [[], [2]])
def test_the_legend_promises_nothing_that_is_not_drawn(front):
    table = _table(validated=False).assign(preset="")
    _, legend = _drawn(front_figure(table, front, GMACS, "search protocol", None))
    assert not any("preset" in label for label in legend)
    assert ("Pareto front (all objectives)" in legend) == bool(front)
    _, legend = _drawn(front_figure(table.iloc[:0], [], GMACS, "search protocol", None))
    assert legend == []  # an empty run: no legend at all


def test_plot_fronts_writes_one_png_per_cost(tmp_path):
    costs = [OBJECTIVES[n] for n in ("miou", "gmacs", "latency")]
    paths = plot_fronts(tmp_path, _table(validated=False), [0, 2], costs, "search protocol", None)
    assert [p.name for p in paths] == ["pareto_gmacs.png", "pareto_latency.png"]
    assert all(p.stat().st_size > 1000 for p in paths)
