"""The replay of search strategies on the space's table: deterministic per seed, every strategy
within the same training compute, and the hypervolume of what a run reports checked by hand."""
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import replay as rp  # noqa: E402


def synthetic_pool(n: int = 40, seed: int = 0) -> rp.Pool:
    """Nets whose mIoU rises with log-GMACs and over epochs; every figure a replay reads."""
    rng = np.random.default_rng(seed)
    gmacs = np.exp(rng.uniform(-7, -2, n))
    memory = np.exp(rng.uniform(-2, 1, n))
    final = np.clip(0.45 + 0.04 * np.log(gmacs) + rng.normal(0, 0.05, n), 0.02, 0.9)
    curve = np.column_stack([final * 0.6, final * 0.85, final])
    code = rng.integers(0, 2, (n, 12)).astype(float)
    x = np.column_stack([code, np.log(gmacs), np.log(memory)])
    return rp.Pool(index=np.arange(n), curve=curve, val=final + 0.05, costs=np.column_stack([gmacs, memory]),
                   x=x, xs=np.column_stack([x, rng.random(n)]), code=code, score=rng.normal(size=n),
                   scales={"gmacs": 0.5, "peak_mem_mb": 10.0}, raw_scores=pd.DataFrame({"fisher": rng.normal(size=n)}))


def test_screened_is_the_score_rank_beyond_what_GMACs_predict():
    gmacs = np.exp([0.0, 1.0, 2.0, 3.0])
    # -fisher's rank quantiles 0, 1/3, 2/3, 1 rise exactly with log GMACs: nothing beyond it
    assert rp.screened(pd.DataFrame({"fisher": [4, 3, 2, 1]}), gmacs, "-fisher") == pytest.approx([0] * 4, abs=1e-12)
    # quantiles 1/3, 0, 2/3, 1 on log GMACs 0..3: least squares 0.1 + 0.2667 x, residuals by hand
    got = rp.screened(pd.DataFrame({"fisher": [3, 4, 2, 1]}), gmacs, "-fisher")
    assert got == pytest.approx([7 / 30, -11 / 30, 1 / 30, 0.1])
    assert rp.screened(pd.DataFrame({"fisher": [2, 1, 3, 4]}), gmacs, "fisher") == pytest.approx(got)


@pytest.mark.parametrize("name", list(rp.STRATEGIES))
def test_each_strategy_is_deterministic_per_seed_and_within_the_budget(name):
    pool = synthetic_pool()
    a, b, c = rp.replay(pool, name, 6, 3), rp.replay(pool, name, 6, 3), rp.replay(pool, name, 6, 4)
    assert a == b
    assert a["spent_epochs"] <= 6 * rp.EPOCHS and a["full"] >= 1
    assert a != c


def test_random_search_trains_its_nets_fully_and_reports_their_front():
    pool = synthetic_pool()
    run = rp.Run(pool, 4 * rp.EPOCHS, np.random.default_rng(0))
    rp.random_search(run)
    done = np.flatnonzero(run.reached == rp.EPOCHS)
    assert len(done) == 4 and run.spent == 12
    # by hand: a net is reported iff no other trained net has >= mIoU at <= both costs (one strictly better)
    expect = [i for i in done if not any(
        pool.curve[j, -1] >= pool.curve[i, -1] and (pool.costs[j] <= pool.costs[i]).all()
        and (pool.curve[j, -1] > pool.curve[i, -1] or (pool.costs[j] < pool.costs[i]).any()) for j in done if j != i)]
    assert sorted(run.reported()) == sorted(expect)


def test_validated_hypervolume_by_hand():
    # two objectives' worth: one reported net of validated mIoU 0.6 at costs a tenth of each scale
    pool = synthetic_pool(4)
    pool = rp.Pool(**{**pool.__dict__, "val": np.full(4, 0.6), "costs": np.tile([0.05, 1.0], (4, 1))})
    run = rp.Run(pool, rp.EPOCHS, np.random.default_rng(0))
    run.train(0, rp.EPOCHS)
    assert run.validated_hv("lin") == pytest.approx(0.6 * 0.9 * 0.9)  # (1 - 0.4) x (1 - 0.1) x (1 - 0.1)
    assert run.validated_hv("log") == pytest.approx(0.6 * (1 / 3) * (1 / 3))  # one decade below: loss 2/3


def test_a_reported_net_without_a_validated_mIoU_leaves_the_run_unscored():
    pool = synthetic_pool(4)
    pool = rp.Pool(**{**pool.__dict__, "val": np.full(4, np.nan)})
    run = rp.Run(pool, rp.EPOCHS, np.random.default_rng(0))
    run.train(0, rp.EPOCHS)
    assert np.isnan(run.validated_hv("log"))


def test_a_pool_is_a_slice_of_the_table_by_index():
    table = Path(__file__).resolve().parent.parent / "results" / "bench" / "space_table.csv"
    pool = rp.load_pool(table, {"gmacs": 1.0, "peak_mem_mb": 1.0}, 10, start=150)
    assert set(pool.index) <= set(range(150, 160)) and len(pool) >= 9  # a failed net would be left out
    assert rp.load_pool(table, {"gmacs": 1.0, "peak_mem_mb": 1.0}, 10).index.max() < 10
