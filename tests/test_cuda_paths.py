"""The CUDA branches, run on the CPU through the stand-in (tests/cuda_standin.py): a quarter-GPU
trial, training, batching, sharing, latency timing and the validation task. The stand-in leaves
torch's own CUDA functions in place, so a call torch would refuse on a GPU is refused here too."""
import math
from dataclasses import replace

import pytest
import torch

from nas.records import Status
from nas.trial import TrialSettings, evaluate_trial
from trainers.data import load_data
from trainers.train import TrainConfig, TrainingDiverged, fit

from cuda_standin import Card, CudaStandIn, cuda_standin  # noqa: F401  (cuda_standin is a fixture)
from helpers import overflowing_model, tiny_spec


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LIGHTSEG_CACHE", str(tmp_path_factory.mktemp("cache")))
        return load_data(None, 32, 64, n_train=16, n_val=4)


def spec_for(data, **kw):
    return tiny_spec(num_classes=data.info.num_classes, height=32, width=64, **kw)


# --- the stand-in is no pushover ---------------------------------------------------------------

def test_the_standin_refuses_what_torch_refuses_on_a_gpu(cuda_standin):
    assert torch.cuda.is_available() and torch.cuda.device_count() == 1
    bare = torch.device("cuda")
    with pytest.raises(ValueError, match="Expected a torch.device with a specified index"):
        torch.cuda.set_per_process_memory_fraction(0.25, bare)
    with pytest.raises(ValueError, match="Expected a torch.device with a specified index"):
        torch.cuda.get_per_process_memory_fraction(bare)
    with pytest.raises(TypeError, match="must be `float`"):
        torch.cuda.set_per_process_memory_fraction(1, 0)
    with pytest.raises(RuntimeError, match="invalid device ordinal"):
        torch.cuda.set_per_process_memory_fraction(0.5, torch.device("cuda", 1))
    with pytest.raises(RuntimeError, match="invalid device ordinal"):
        torch.zeros(2, device="cuda:1")
    with pytest.raises(RuntimeError, match="Invalid device string"):
        torch.zeros(2).to("cuda:x")
    on_card = torch.zeros(2, device="cuda")
    with pytest.raises(RuntimeError, match="only dense CPU tensors can be pinned"):
        on_card.pin_memory()
    with pytest.raises(TypeError, match="Use Tensor.cpu"):
        on_card.numpy()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    end.record()
    with pytest.raises(RuntimeError, match="device not ready"):  # timed before the host waited for it
        start.elapsed_time(end)
    end.synchronize()
    assert start.elapsed_time(end) >= 0
    with pytest.raises(RuntimeError, match="enable_timing"):
        torch.cuda.Event().elapsed_time(end)
    # where torch takes the current device for an index-less CUDA device, so does the stand-in
    assert torch.cuda.mem_get_info(bare)[1] == cuda_standin.cards[0].total_memory
    assert torch.cuda.memory_reserved(bare) == torch.cuda.memory_reserved(0) > 0
    torch.cuda.reset_peak_memory_stats(bare)


def test_the_standin_puts_torch_back_as_it_found_it(monkeypatch):
    with monkeypatch.context() as mp, CudaStandIn().installed(mp):
        assert torch.cuda.is_available() and torch.ones(1, device="cuda").device.type == "cpu"
    assert not torch.cuda.is_available() and torch.cuda.device_count() == 0
    with pytest.raises(AssertionError, match="not compiled with CUDA"):
        torch.ones(1, device="cuda")


# --- the trial --------------------------------------------------------------------------------

def quarter_gpu(**kw) -> TrialSettings:
    return TrialSettings(epochs=1, batch_size=4, device="cuda", gpu_share=0.25, latency_backend="torch",
                         latency_runs=3, **kw)


def test_a_quarter_gpu_trial_runs_its_cuda_branches(cuda_standin, data, tmp_path):
    result = evaluate_trial(spec_for(data), data, quarter_gpu(), number=0)
    assert result["status"] == Status.COMPLETE, result.get("reason")
    assert torch.cuda.get_per_process_memory_fraction(0) == 0.25  # the share was claimed on card 0
    assert result["device"] == "cuda"  # as the study records it
    assert result["precision"] == "bf16"  # auto on a card of compute capability 8
    assert result["peak_train_mem_mb"] > 0 and math.isfinite(result["miou"])
    assert cuda_standin.counts.events_timed == 3  # latency timed with CUDA events, one pair per run
    card = cuda_standin.cards[0].uuid
    assert {p.name for p in (tmp_path / "gpu-locks").iterdir()} == {f"{card}.gate", f"{card}.use"}


def test_a_failed_share_claim_is_a_failed_trial_not_a_dead_worker(cuda_standin, data):
    # one card: cuda:1 does not exist, and claiming its share is the first thing that touches it
    settings = TrialSettings(epochs=1, batch_size=4, device="cuda:1", gpu_share=0.25, latency_backend="torch")
    result = evaluate_trial(spec_for(data), data, settings, number=0)
    assert result["status"] == Status.FAILED and "invalid device ordinal" in result["reason"]


# --- training ---------------------------------------------------------------------------------

def test_training_reads_the_loss_on_the_host_once_per_epoch(cuda_standin, data):
    spec = spec_for(data)
    cfg = TrainConfig(epochs=2, batch_size=4, precision="fp32", augment=False)
    before, syncs = cuda_standin.counts.host_reads, cuda_standin.counts.synchronizes
    on_card = fit(spec, data, replace(cfg, device="cuda"))
    reads = cuda_standin.counts.host_reads - before
    # by hand: 16 samples / 4 = 4 steps an epoch; per epoch one read of the summed loss and one
    # copy of the validation predictions (4 samples, one batch)
    assert reads == 2 * (1 + 1)
    # and no step waits for the card either: the GPU lock lets go (a synchronisation) once an epoch,
    # after the validation, with no timer waiting; with the close at the end, at most 2 + 1
    assert cuda_standin.counts.synchronizes - syncs <= 2 + 1
    on_cpu = fit(spec, data, cfg)
    # the same training: the CPU fit runs channels_last, the stand-in's card contiguous, so float rounding differs
    assert [r.loss for r in on_card.history] == pytest.approx([r.loss for r in on_cpu.history], rel=1e-5)
    assert on_card.miou == pytest.approx(on_cpu.miou, abs=0.002)  # an argmax or two may flip with the rounding


def test_a_nan_loss_on_the_gpu_is_divergence_with_its_epoch_and_step(cuda_standin, data):
    spec, model = overflowing_model(data, {3}, spec_for(data))
    with pytest.raises(TrainingDiverged, match=r"loss is nan at epoch 1, step 2 .*fp32"):
        fit(spec, data, TrainConfig(epochs=2, batch_size=4, precision="fp32", augment=False, device="cuda"), model=model)


def test_fp16_on_the_gpu_skips_a_brief_overflow_and_fails_a_lasting_one(cuda_standin, data):
    spec, model = overflowing_model(data, {2}, spec_for(data))
    result = fit(spec, data, TrainConfig(epochs=2, batch_size=4, precision="fp16", augment=False, device="cuda"),
                 model=model)
    assert result.precision == "fp16" and result.skipped_steps == 1 and len(result.history) == 2
    spec, model = overflowing_model(data, set(range(1, 100)), spec_for(data))
    with pytest.raises(TrainingDiverged, match="fp16"):
        fit(spec, data, TrainConfig(epochs=8, batch_size=4, precision="fp16", augment=False, device="cuda"), model=model)


def test_the_training_peak_leaves_out_the_resident_data_set(cuda_standin, data, tmp_path, monkeypatch):
    import gc

    from trainers.batches import TrainBatches

    monkeypatch.setenv("LIGHTSEG_CACHE", str(tmp_path / "cache"))
    bigger = load_data(None, 32, 64, n_train=32, n_val=4)
    assert not TrainBatches(bigger.train, "cuda").staged  # both splits are resident on the card
    cfg = TrainConfig(epochs=1, batch_size=4, precision="fp32", augment=False, device="cuda")
    peaks = []
    for d in (data, bigger):
        gc.collect()
        peaks.append(fit(spec_for(data), d, cfg).peak_train_mem_mb)
    # the larger split adds 16 x (3 + 1) x 32 x 64 bytes of uint8 to what is resident, none to the training
    assert peaks[0] > 0 and peaks[0] == peaks[1]


# --- batching, sharing, timing, deployment, validation ------------------------------------------

def test_a_split_the_card_cannot_hold_crosses_as_uint8_through_pinned_memory(monkeypatch, data):
    from trainers.batches import TrainBatches

    idx = torch.tensor([0, 3, 5, 7])
    standin = CudaStandIn(cards=(Card(total_memory=2**20),))  # 1/16 of it is less than the 128 KiB split
    with monkeypatch.context() as mp, standin.installed(mp):
        batches = TrainBatches(data.train, "cuda")
        x, y = batches(idx, torch.Generator().manual_seed(3))
        assert batches.staged and x.dtype == torch.float32 and y.dtype == torch.int64
        assert standin.counts.pinned == 2  # the batch's images and its masks, as uint8
        assert standin.counts.unpinned_non_blocking == 0
    cx, cy = TrainBatches(data.train, "cpu")(idx, torch.Generator().manual_seed(3))
    assert torch.equal(x, cx) and torch.equal(y, cy)  # the same augmented batch as on the CPU


def test_a_split_the_card_holds_goes_there_once(cuda_standin, data):
    from trainers.batches import TrainBatches

    before = torch.cuda.memory_allocated(0)
    batches = TrainBatches(data.train, "cuda")
    assert not batches.staged
    assert torch.cuda.memory_allocated(0) - before == 16 * (3 + 1) * 32 * 64  # images and masks, uint8
    batches(torch.tensor([0, 1, 2, 3]))
    assert cuda_standin.counts.pinned == 1 and cuda_standin.counts.unpinned_non_blocking == 0  # the indices


def test_the_share_caps_the_card_it_names_and_the_lock_is_that_cards(monkeypatch, tmp_path):
    from trainers.device import Device
    from trainers.gpu_share import DeviceLock, claim_share, is_fatal_cuda_error, release, usable_bytes

    monkeypatch.setenv("LIGHTSEG_LOCK_DIR", str(tmp_path))
    cards = (Card(), Card(uuid="GPU-5eed0001", total_memory=64 * 2**20))
    with monkeypatch.context() as mp, CudaStandIn(cards=cards).installed(mp) as standin:
        device = Device.parse("cuda:1", share=0.25)
        claim_share(device)
        assert torch.cuda.get_per_process_memory_fraction(1) == 0.25 and torch.cuda.get_per_process_memory_fraction(0) == 1
        held = torch.zeros(1000, device="cuda:1")  # 4000 bytes
        assert usable_bytes(device) == 16 * 2**20 - 4000  # a quarter of 64 MiB, less what is held
        with pytest.raises(torch.OutOfMemoryError) as oom:
            torch.zeros(5 * 2**20, device="cuda:1")  # 20 MiB: over the quarter, well within the card
        assert not is_fatal_cuda_error(oom.value)
        lock = DeviceLock(device)
        syncs = standin.counts.synchronizes
        with lock.shared():
            pass
        lock.close()
        assert standin.counts.synchronizes == syncs + 1  # the step's queued kernels finish before it lets go
        assert {p.name for p in tmp_path.iterdir()} == {"GPU-5eed0001.gate", "GPU-5eed0001.use"}
        del held
        release(device)
        assert torch.cuda.memory_reserved(1) == torch.cuda.memory_allocated(1) == 0


def test_latency_on_the_gpu_is_timed_with_events(cuda_standin):
    from search_spaces import build_model
    from trainers.costs import measure_peak_memory_mb
    from trainers.timing import measure_latency

    spec = tiny_spec()
    model = build_model(spec)
    stats = measure_latency(model, spec, "cuda", warmup=2, runs=5)
    assert stats.runs == 5 and stats.device == "cuda:0" and cuda_standin.counts.events_timed == 5
    peak = measure_peak_memory_mb(model, spec, "cuda")
    assert peak > 0 and peak == measure_peak_memory_mb(model, spec, "cuda")


def test_onnx_runtime_on_cuda_gets_the_named_card_and_its_share(monkeypatch):
    import onnxruntime as ort

    from trainers import deploy
    from trainers.device import Device
    from trainers.gpu_share import claim_share

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    cards = (Card(), Card(uuid="GPU-5eed0001", total_memory=64 * 2**20))
    with monkeypatch.context() as mp, CudaStandIn(cards=cards).installed(mp):
        claim_share(Device.parse("cuda:1", share=0.5))
        assert deploy.providers("cuda:1") == [
            ("CUDAExecutionProvider", {"device_id": 1, "use_tf32": 0, "gpu_mem_limit": 32 * 2**20,
                                       "arena_extend_strategy": "kSameAsRequested"}), "CPUExecutionProvider"]
        assert deploy.providers("cuda")[0] == ("CUDAExecutionProvider", {"device_id": 0, "use_tf32": 0})


def test_the_validation_training_and_isolated_latency_run_on_a_quarter_gpu(cuda_standin, data):
    from nas.records import isolated_key
    from nas.validate import Job, Protocol, measure_isolated_latency, train_job

    spec, settings = spec_for(data), quarter_gpu()
    result = train_job(Job(0, 0, spec.to_dict(), 0.0), data, Protocol(32, 64, 1, (0,)), settings)
    assert result["status"] == Status.COMPLETE, result.get("reason")
    assert result["peak_train_mem_mb"] > 0 and result["checkpoint"]
    assert torch.cuda.get_per_process_memory_fraction(0) == 0.25
    latency = measure_isolated_latency({isolated_key(0): spec.to_dict()}, settings)
    assert latency[isolated_key(0)]["latency_ms"] > 0 and cuda_standin.counts.events_timed == 3


def test_auto_precision_asks_the_card_it_trains_on(monkeypatch, data):
    from trainers.train import resolve_precision

    cards = (Card(), Card(uuid="GPU-5eed0001", major=7, minor=5))  # a bf16 card, and one without bf16
    with monkeypatch.context() as mp, CudaStandIn(cards=cards).installed(mp):
        assert resolve_precision("auto", "cuda") == "bf16" and resolve_precision("auto", "cuda:1") == "fp16"
        result = fit(spec_for(data), data, TrainConfig(epochs=1, batch_size=8, device="cuda:1"))
        assert result.precision == "fp16" and math.isfinite(result.history[0].loss)


# --- the device value -------------------------------------------------------------------------

@pytest.mark.parametrize("text,torch_device", [("cpu", "cpu"), ("cuda", "cuda:0"), ("cuda:2", "cuda:2")])
def test_a_device_is_made_once_with_its_index(text, torch_device):
    from trainers.device import Device

    device = Device.parse(text, share=0.25)
    assert device.torch == torch.device(torch_device) and str(device) == torch_device and device.share == 0.25


@pytest.mark.parametrize("text", ["nonsense", "gpu", "cuda:", "cuda:-1", "cuda:1x", "cpu:0", ""])
def test_a_device_that_is_nonsense_is_refused_in_one_line(text):
    from trainers.device import Device

    with pytest.raises(ValueError) as error:
        Device.parse(text)
    assert str(error.value) == f"--device {text}: expected cpu, cuda or cuda:N"


def test_a_gpu_check_ladder_training_claims_its_quarter_and_trains_on_the_card(cuda_standin, data, monkeypatch, tmp_path):
    from benchmarks import gpu_check_ladder as ladder

    monkeypatch.setenv("LIGHTSEG_LOCK_DIR", str(tmp_path))
    monkeypatch.setenv("LIGHTSEG_CACHE", str(tmp_path / "cache"))
    net = next(n for n in ladder.top_rung_nets() if n.name == "edanet")
    job = {"net": net.name, "group": net.group, "spec": net.spec, "height": 32, "width": 64, "seed": 1000,
           "device": "cuda:0", "share": 0.25, "threads": 1, "epochs": 1, "images": {"n_train": 16, "n_val": 4}}
    row = ladder.train_at_rung(job)  # in this process: the pool only carries it to a spawned one
    assert torch.cuda.get_per_process_memory_fraction(0) == 0.25
    assert row["device"] == "cuda:0" and row["precision"] == "bf16" and 0 <= row["miou"] <= 1
    assert row["peak_train_mem_mb"] > 0  # booked on the card, not on the host
