"""Training loop: determinism, early stopping, divergence detection, checkpoints, the CLIs."""
import json

import pytest
import torch

from nas import profile as profile_cli
from nas import train as train_cli
from trainers.data import load_data
from trainers.train import TrainConfig, TrainingDiverged, fit, load_checkpoint, save_checkpoint

from helpers import tiny_spec


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    import os
    os.environ["LIGHTSEG_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    return load_data(None, 32, 32, n_train=24, n_val=8)


def spec_for(data, **kw):
    return tiny_spec(num_classes=data.info.num_classes, **kw)


def test_same_seed_same_training(data):
    cfg = TrainConfig(epochs=2, batch_size=8, seed=1)
    a, b = fit(spec_for(data), data, cfg), fit(spec_for(data), data, cfg)
    assert [r.loss for r in a.history] == [r.loss for r in b.history]
    assert a.miou == b.miou and 0 <= a.miou <= 1


def test_evaluating_only_the_last_epoch_gives_the_same_final_miou(data):
    cfg = TrainConfig(epochs=3, batch_size=8, seed=2)
    every, last = fit(spec_for(data), data, cfg), fit(spec_for(data), data, cfg, evaluate_every_epoch=False)
    assert last.miou == every.miou and last.metrics == every.metrics
    assert [r.loss for r in last.history] == [r.loss for r in every.history]
    assert [r.miou != r.miou for r in last.history] == [True, True, False]  # nan where not evaluated


def test_callback_stops_training_early(data):
    seen = []
    result = fit(spec_for(data), data, TrainConfig(epochs=5, batch_size=8), on_epoch=lambda r: seen.append(r) or False)
    assert len(seen) == 1 and result.stopped_early and len(result.history) == 1


def test_nan_loss_is_a_clear_failure(data):
    spec = spec_for(data)
    from trainers.train import prepare_model
    model = prepare_model(spec, data, 0)
    with torch.no_grad():
        model.decoder.classifier.bias.fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="epoch 1"):
        fit(spec, data, TrainConfig(epochs=1, batch_size=8), model=model)


def test_dupsample_matrix_is_fitted_from_the_training_labels(data):
    spec = spec_for(data, decoder="dupsample")
    from trainers.train import prepare_model
    a, b = prepare_model(spec, data, 0), prepare_model(spec, data, 0)
    assert torch.equal(a.decoder.basis, b.decoder.basis)
    # the fitted basis reconstructs the training patches far better than the placeholder did
    torch.manual_seed(0)
    from search_spaces import build_model
    placeholder = build_model(spec).decoder.basis
    assert not torch.equal(placeholder, a.decoder.basis)


def test_checkpoint_round_trip(tmp_path, data):
    spec = spec_for(data, core="mbconv", tvconv_from=2)
    result = fit(spec, data, TrainConfig(epochs=1, batch_size=8))
    save_checkpoint(tmp_path / "c.pt", result.model, spec, result.metrics)
    spec2, model2 = load_checkpoint(tmp_path / "c.pt")
    x = torch.rand(1, 3, 32, 32)
    assert spec2 == spec
    torch.testing.assert_close(model2(x), result.model.eval()(x))


def test_spec_and_data_must_agree(data):
    with pytest.raises(ValueError, match="classes"):
        fit(tiny_spec(num_classes=3), data, TrainConfig(epochs=1))


def test_profile_cli_json(tmp_path, capsys):
    path = tmp_path / "a.yaml"
    tiny_spec().to_yaml(path)
    assert profile_cli.main(["--arch", str(path), "--json", "--runs", "5", "--size", "64x64"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"params", "params_deployed", "gmacs", "latency_ms", "latency_iqr_ms", "peak_mem_mb"}
    assert out["gmacs"] > 0 and out["latency_ms"] > 0


def test_profile_cli_bad_yaml_exits_2(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("ratio: 3\n")
    with pytest.raises(SystemExit) as exit_:
        from nas.cli import run
        run(profile_cli.main, ["--arch", str(path)])
    assert exit_.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_train_cli_writes_checkpoint_metrics_and_png(tmp_path, data):
    path = tmp_path / "a.yaml"
    tiny_spec(num_classes=8).to_yaml(path)
    out = tmp_path / "run"
    assert train_cli.main(["--arch", str(path), "--epochs", "1", "--out", str(out), "--device", "cpu"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["miou"] <= 1 and metrics["costs"]["gmacs"] > 0
    assert (out / "checkpoint.pt").stat().st_size > 0 and (out / "predictions.png").stat().st_size > 1000


def test_a_cpu_training_runs_channels_last_and_hands_back_a_contiguous_model():
    """oneDNN's fast layout inside an fp32 fit; the model users export and time comes back in the usual one."""
    from search_spaces import build_model
    from trainers.device import Device
    from trainers.train import memory_format

    assert memory_format(Device.parse("cpu"), "fp32") == torch.channels_last
    assert memory_format(Device.parse("cuda:0"), "fp32") == torch.contiguous_format
    data = load_data(None, 32, 64, n_train=8, n_val=4)
    spec = tiny_spec(height=32, width=64, num_classes=data.info.num_classes)
    seen = []
    model = build_model(spec)
    model.register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    result = fit(spec, data, TrainConfig(epochs=1, batch_size=4, augment=False, precision="fp32"), model=model)
    assert seen and all(seen[:2])  # the training batches (evaluation follows)
    weights = [p for p in result.model.parameters() if p.dim() == 4]
    assert weights and all(p.is_contiguous() for p in weights)


def test_bf16_on_the_cpu_trains_in_the_layout_whose_gradients_stay_finite():
    """oneDNN gives NaN weight gradients for this dilated (3, 1) convolution in bf16 and channels_last
    (found when a searched net diverged at its second step); fit's bf16 layout must not."""
    from trainers.device import Device
    from trainers.train import memory_format

    layout = memory_format(Device.parse("cpu"), "bf16")
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(24, 24, (3, 1), padding=(4, 0), dilation=(4, 1)).to(memory_format=layout)
    x = torch.randn(16, 24, 16, 32).contiguous(memory_format=layout)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x)
    y.float().sum().backward()
    assert torch.isfinite(conv.weight.grad).all()
