"""Real sizes end to end (slow): a Cityscapes-layout set at 256x512 with ignored pixels, searched
with every decoder kind; DUpsampling fitted once per (ratio, N) and shared by the trials."""
import dataclasses
import os

import pandas as pd
import pytest

from nas import services
from nas.search import build_parser, config_from_args, search
from nas.study import open_study, study_space
from search_spaces import ArchSpec, DecoderSpec, InputSpec, StageSpec
from trainers.data import load_data
from trainers.streets import write_cityscapes_layout

pytestmark = pytest.mark.slow
H, W = 256, 512


def small_spec(decoder: str, width: int, ratio: int = 1) -> ArchSpec:
    stages = tuple(StageSpec(width=w, depth=1, core=c, kernel=3, dilations=(1,), dropout=0.0)
                   for w, c in ((8, "nb1d"), (32, "ssnbt"), (64, "pfcu")))
    return ArchSpec(input=InputSpec(height=H, width=W, in_channels=3, num_classes=19), stages=stages,
                    decoder=DecoderSpec(kind=decoder, width=width, blocks=1 if decoder == "erfnet" else 2), ratio=ratio, downsampler="strided")


SPECS = [small_spec("bilinear", 32), small_spec("erfnet", 0), small_spec("apn", 1), small_spec("dupsample", 32),
         small_spec("dupsample", 32, ratio=2), dataclasses.replace(small_spec("dupsample", 32, ratio=2), downsampler="erfnet")]


@pytest.fixture(scope="module")
def cityscapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("cityscapes")
    write_cityscapes_layout(root, n_train=40, n_val=10, height=H, width=W, seed=0)
    return root


def test_cityscapes_layout_loads_one_uint8_copy_with_its_ignored_pixels(cityscapes):
    data = load_data(str(cityscapes), H, W)
    assert data.info.name == "cityscapes" and data.info.num_classes == 19
    assert data.train.images.dtype == data.train.masks.dtype == data.val.masks.dtype
    assert data.train.nbytes == 40 * 4 * H * W  # one uint8 image + mask per picture, nothing more
    ignored = (data.train.masks == 255).float().mean().item()
    assert 0.04 < ignored < 0.08  # the ego-vehicle band


def test_search_at_256x512_runs_every_decoder_and_shares_the_dupsample_fit(cityscapes, tmp_path, monkeypatch):
    os.environ.setdefault("LIGHTSEG_CACHE", str(tmp_path / "cache"))
    fitted, real_fit = [], services.pca_for
    monkeypatch.setattr(services, "pca_for", lambda spec, data, seed: fitted.append((spec.ratio, spec.decoder.width))
                        or real_fit(spec, data, seed))
    args = build_parser().parse_args(["--data", str(cityscapes), "--size", f"{H}x{W}", "--budget", str(len(SPECS)),
                                      "--epochs", "1", "--no-presets", "--no-validate", "--out", str(tmp_path), "--study", "cs"])
    cfg = config_from_args(args)
    cfg = cfg.replace(resume=True, settings=dataclasses.replace(cfg.settings, batch_size=8, latency_runs=3))
    cfg.run_dir.mkdir(parents=True)
    study = open_study(cfg)
    space = study_space(load_data(str(cityscapes), H, W), H, W)
    for spec in SPECS:  # the whole budget is these, so every decoder kind is trained
        study.enqueue_trial(space.encode(spec))
    assert search(cfg) == 0
    table = pd.read_csv(cfg.run_dir / "trials.csv")
    assert len(table) == len(SPECS)
    assert (table["state"] == "complete").all(), table[["trial", "state", "reason"]]
    assert set(table["decoder.kind"]) == {"bilinear", "erfnet", "apn", "dupsample"}
    assert table["miou"].between(0, 1).all()
    # two dupsample trials share (ratio 2, N 32): two fits in all, not three, made by the driver
    assert sorted(fitted) == [(1, 32), (2, 32)] and not (cfg.run_dir / "dupsample").exists()
