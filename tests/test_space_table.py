"""The tabular benchmark's bookkeeping (pool, resume plan) and its score summary on known answers."""
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import space_table as st  # noqa: E402
from benchmarks.common import sample_specs  # noqa: E402
from search_spaces import InputSpec  # noqa: E402
from search_spaces.space import SearchSpace  # noqa: E402
from trainers.scores import NAMES  # noqa: E402

from helpers import tiny_spec  # noqa: E402


def test_a_pool_is_the_prefix_of_every_larger_pool_of_its_seed():
    space = SearchSpace(InputSpec(height=32, width=64, num_classes=8))
    assert sample_specs(space, 3, 7) == sample_specs(space, 6, 7)[:3]


def _synthetic(n=600, seed=0) -> pd.DataFrame:
    """mIoU = a rising function of log-GMACs + noise; each score column built to a known answer."""
    rng = np.random.default_rng(seed)
    log_g = rng.normal(-4, 1.5, n)
    noise = rng.normal(0, 0.05, n)
    miou = 0.3 + 0.05 * log_g + noise
    t = pd.DataFrame({"index": np.arange(n), "status": "complete", "gmacs": np.exp(log_g), "params": rng.lognormal(13, 1, n),
                      "miou_val": miou, "miou_search": miou + rng.normal(0, 0.01, n), "miou_e1": miou + rng.normal(0, 0.2, n)})
    t["miou_e3"] = t["miou_search"]
    t["validated_for"] = "subset"
    t["synflow"] = miou  # the answer itself
    t["snip"] = log_g  # GMACs again: no information beyond it
    t["grad_norm"] = log_g + rng.normal(0, 0.01, n)  # GMACs with a little jitter
    t["fisher"] = noise  # exactly what GMACs does not explain
    t["jacob_cov"] = rng.normal(size=n)  # nothing
    t["naswot"] = -miou
    return t


def test_summary_of_known_answers():
    t = _synthetic()
    t.loc[0, "status"], t.loc[1, "naswot"] = "failed", math.inf  # left out, not an error
    s = st.summarise(t, epochs=3).set_index(["target", "score"]).loc["miou_val"]
    assert s.loc["synflow", "spearman"] == pytest.approx(1.0)
    assert s.loc["synflow", "partial_spearman_given_gmacs"] == pytest.approx(1.0)
    assert s.loc["synflow", "precision_top10_in_gmacs_quintiles"] == pytest.approx(1.0)
    assert s.loc["snip", "spearman"] > 0.8 and s.loc["snip", "partial_spearman_given_gmacs"] == 0.0
    assert s.loc["gmacs", "partial_spearman_given_gmacs"] == 0.0
    assert s.loc["grad_norm", "spearman"] > 0.8 and abs(s.loc["grad_norm", "partial_spearman_given_gmacs"]) < 0.15
    assert s.loc["fisher", "partial_spearman_given_gmacs"] > 0.9 > s.loc["fisher", "spearman"] + 0.3
    assert abs(s.loc["jacob_cov", "spearman"]) < 0.15 and s.loc["jacob_cov", "precision_top10_in_gmacs_quintiles"] < 0.3
    assert s.loc["naswot", "spearman"] == pytest.approx(-1.0) and s.loc["naswot", "precision_top10_in_gmacs_quintiles"] == 0.0
    assert s.loc["synflow", "nets"] == 599 and s.loc["naswot", "nets"] == 598
    assert set(s.index) == {*NAMES, "params", "gmacs", "miou_e1", "miou_e3"}


def test_precision_in_bins_by_hand():
    # 10 nets, 5 bins of 2 by cost, top 10 % of 2 = 1 per bin: the best of each pair
    cost = np.arange(10.0)
    target = np.array([1, 0, 0, 1, 1, 0, 0, 1, 1, 0], dtype=float)
    assert st.precision_in_bins(target, target, cost) == 1.0
    assert st.precision_in_bins(-target, target, cost) == 0.0
    assert st.precision_in_bins(np.array([1, 0, 0, 1, 0, 1, 1, 0, 1, 0.0]), target, cost) == pytest.approx(0.6)


def _row(index, status="complete", miou_val=math.nan, pool_seed=0):
    return {"pool_seed": pool_seed, "index": index, "status": status, "miou_val": miou_val}


def test_plan_skips_what_is_there_and_validates_what_entered_the_subset():
    table = pd.DataFrame([_row(0, miou_val=0.3), _row(1), _row(2, status="failed"), _row(5, pool_seed=1)])
    assert st.plan(table, 0, 5, [0, 1]) == [(3, "all", False), (4, "all", False), (1, "validate", True)]
    assert st.plan(None, 0, 2, []) == [(0, "all", False), (1, "all", False)]


def test_validated_mIoU_is_summarised_on_the_random_subset_only():
    t = _synthetic()
    t.loc[t["index"] >= 100, "miou_val"] = math.nan
    t["validated_for"] = np.where(t["miou_val"].notna(), "subset", None)
    t.loc[t["index"].isin([100, 300]), ["miou_val", "validated_for"]] = (0.9, "list")  # a replay reported them
    t.loc[t["index"] == 7, "status"] = "failed"
    s = st.summarise(t, epochs=3).set_index(["target", "score"])
    assert s.loc[("miou_val", "synflow"), "nets"] == 99 and s.loc[("miou_search", "synflow"), "nets"] == 599


def test_plan_validates_a_chosen_list_in_its_order():
    table = pd.DataFrame([_row(0), _row(1), _row(2, miou_val=0.3), _row(3)])
    assert st.plan(table, 0, 6, [3, 2, 0, 5]) == [(4, "all", False), (5, "all", True), (3, "validate", True),
                                                  (0, "validate", True)]


def test_read_table_keeps_the_last_row_of_a_key(tmp_path):
    path = tmp_path / "t.csv"
    pd.DataFrame([_row(1), _row(0), _row(1, miou_val=0.4)]).to_csv(path, index=False)
    t = st.read_table(path)
    assert list(t["index"]) == [0, 1] and t.loc[1, "miou_val"] == 0.4


def test_one_net_end_to_end():
    spec = tiny_spec(height=32, width=64, num_classes=8, decoder="dupsample")
    job = {"pool_seed": 0, "index": 0, "stage": "all", "validate": True, "validated_for": "subset", "threads": 1,
           "spec": json.dumps(spec.to_dict()),
           "size": "32x64", "search_epochs": 1, "val_epochs": 1, "val_seeds": "1000/1001", "data_seed": 0, "score_batch": 4}
    row = st.measure(job)
    assert list(row) == st.columns(1) and row["status"] == "complete", row["reason"]
    assert row["miou_val"] == pytest.approx((row["miou_val_s1"] + row["miou_val_s2"]) / 2) and row["validated_for"] == "subset"
    assert all(math.isfinite(row[k]) for k in (*NAMES, *st.COSTS, "miou_e1", "loss_e1"))
    again = st.measure({**job, "stage": "validate", "row": {**row, "miou_val": math.nan}})
    assert again["miou_val"] == row["miou_val"] and again["synflow"] == row["synflow"]  # deterministic
