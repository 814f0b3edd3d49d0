"""What mattered: importance names the axis that drives a metric, and every statement matches the table."""
import numpy as np
import pandas as pd
import pytest

from nas import insight

N = 60


def synthetic_table(seed=0) -> pd.DataFrame:
    """Trials where stage 3's core alone moves mIoU (+0.10 for eda) and the ratio alone moves GMACs
    (1 / r^2, as the holistic decomposition does); every other axis is noise."""
    rng = np.random.default_rng(seed)
    pick = lambda values: rng.choice(values, N)  # noqa: E731
    t = pd.DataFrame({"trial": range(N), "state": np.where(np.arange(N) % 6 == 5, "stopped", "complete"),
                      "ratio": pick([1, 2, 4]), "downsampler": pick(["erfnet", "strided"]), "tvconv_from": pick([0, 2, 3]),
                      "decoder.kind": pick(["bilinear", "erfnet", "apn", "dupsample"])})
    for i in range(3):
        t[f"stages[{i}].core"] = pick(["nb1d", "eda", "ssnbt", "pfcu"])
        t[f"stages[{i}].kernel"] = pick([3, 5])
        t[f"stages[{i}].dilations"] = pick(["1", "2-4-8-16"])
        t[f"stages[{i}].width"] = pick([16, 32])
        t[f"stages[{i}].depth"] = pick([1, 2])
        t[f"stages[{i}].dropout"] = pick([0.0, 0.1])
    t["miou"] = 0.30 + 0.10 * (t["stages[2].core"] == "eda") + rng.normal(0, 0.005, N)
    t.loc[t["state"] == "stopped", "miou"] = 0.01  # an early-stopped trial's last epoch: never a trained value
    t["gmacs"] = 0.4 / t["ratio"] ** 2 * rng.uniform(0.9, 1.1, N)
    t["latency_ms"] = 5.0 * rng.uniform(0.5, 2.0, N)
    return t


def test_importance_names_the_axis_that_drives_each_metric():
    _, found = insight.effects(synthetic_table(), ["miou", "gmacs"])
    by = {e.metric: e for e in found}
    assert by["miou"].axis == "stages[2].core" and by["miou"].best == "eda"
    assert by["gmacs"].axis == "ratio" and by["gmacs"].best == "4" and by["gmacs"].worst == "1"
    assert by["gmacs"].importance > 0.5


def test_statements_are_consistent_with_the_trials_table(tmp_path):
    path = tmp_path / "trials.csv"
    synthetic_table(seed=1).to_csv(path, index=False)
    table = pd.read_csv(path)
    importance, found = insight.effects(table, ["miou", "gmacs", "latency_ms"])
    assert found
    for e in found:
        rows = table if e.metric != "miou" else table[table["state"] == "complete"]
        assert e.trials == len(rows)  # mIoU: fully trained trials only
        groups = rows.groupby(rows[e.axis].astype(str))[e.metric]
        medians, sizes = groups.median(), groups.size()
        kept = medians[sizes >= insight.MIN_GROUP]
        best, worst = (kept.idxmax(), kept.idxmin()) if e.metric == "miou" else (kept.idxmin(), kept.idxmax())
        assert (e.best, e.worst) == (best, worst)
        assert e.best_median == pytest.approx(medians[best]) and e.best_n == sizes[best]
        assert e.worst_median == pytest.approx(medians[worst]) and e.worst_n == sizes[worst]
        assert f"{e.axis} = {best} (n={sizes[best]})" in e.sentence() and f"over {len(rows)} trials" in e.sentence()
        column = [c for c in importance.columns if c.startswith(e.metric + " ")][0]
        assert importance[column].idxmax() == e.axis and importance[column].sum() == pytest.approx(1.0)


def test_silent_with_too_few_trials():
    table = synthetic_table().head(insight.MIN_TRIALS - 1)
    importance, found = insight.effects(table, ["miou", "gmacs"])
    assert found == [] and len(importance) == 0


def test_marginal_plots_are_written(tmp_path):
    paths = insight.plot_marginals(tmp_path, synthetic_table(), ["miou", "gmacs"])
    assert [p.name for p in paths] == ["marginals_miou.png", "marginals_gmacs.png"]
    assert all(p.stat().st_size > 10_000 for p in paths)


def test_a_constant_metric_is_not_assessed_and_does_not_fail_the_report():
    table = synthetic_table()
    table["miou"] = 0.05  # e.g. every net of a very short run predicts one class
    importance, found = insight.effects(table, ["miou", "gmacs"])
    assert [e.metric for e in found] == ["gmacs"] and not any(c.startswith("miou") for c in importance.columns)
