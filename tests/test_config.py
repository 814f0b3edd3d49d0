"""A search's configuration checks itself: each part refuses a bad value, the flags' defaults are its own."""
import pytest

from nas.cli import UsageError
from nas.config import Resources, RunOptions, TrialMeaning
from nas.search import build_parser, config_from_args
from nas.trial import Constraints, TrialSettings


def default_config(*argv):
    return config_from_args(build_parser().parse_args(list(argv)))


def test_the_flags_defaults_are_the_configs_defaults():
    cfg = default_config()
    assert cfg.options == RunOptions() and cfg.resources == Resources()
    assert cfg.options.val_max == 12
    m, defaults = cfg.meaning, TrialMeaning(cfg.objectives, TrialSettings())
    for name in ("data", "height", "width", "seed", "early_stopping", "validate", "val_height", "val_width",
                 "val_epochs", "val_seeds"):
        assert getattr(m, name) == getattr(defaults, name), name
    assert m.settings.epochs == TrialSettings.epochs and m.settings.precision == TrialSettings.precision


@pytest.mark.parametrize("make,message", [
    (lambda: RunOptions(budget=0), "--budget 0: must be at least 1"),
    (lambda: RunOptions(resume=True, force=True), "--resume and --force contradict each other; give one"),
    (lambda: RunOptions(noise=1.0), "--noise 1.0: an mIoU margin from 0 to below 1"),
    (lambda: RunOptions(val_max=-1), "--val-max -1: must be >= 0"),
    (lambda: Resources(cpus_per_trial=0), "--cpus-per-trial 0: must be positive"),
    (lambda: Resources(gpus_per_trial=-1), "--gpus-per-trial -1: must be >= 0"),
    (lambda: Resources(max_concurrent=0), "--max-concurrent 0: must be at least 1"),
    (lambda: Constraints(max_mem_mb=-2), "--max-mem-mb -2: a constraint must be positive"),
    (lambda: default_config().replace(settings=TrialSettings(epochs=0)), "--epochs 0: must be at least 1"),
    (lambda: default_config().replace(val_epochs=0), "--val-epochs 0: must be at least 1"),
    (lambda: default_config().replace(val_seeds=1), "--val-seeds 1: at least 2"),
    (lambda: default_config().replace(settings=TrialSettings(device="cuda")), "--device cuda: needs --gpus-per-trial > 0"),
    (lambda: default_config("--objectives", "miou,gmacs").replace(pick="latency"),
     "--pick latency: not among the objectives miou,gmacs"),
])
def test_each_part_refuses_a_bad_value_in_one_line(make, message):
    with pytest.raises(UsageError) as error:
        make()
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_replace_changes_the_part_that_holds_each_field():
    cfg = default_config().replace(resume=True, address="head:6379", seed=5)
    assert cfg.options.resume and cfg.resources.address == "head:6379" and cfg.meaning.seed == 5
    assert cfg.protocol.seeds == (1005, 1006)
    with pytest.raises(TypeError, match="no field colour"):
        cfg.replace(colour="red")


def test_the_record_keeps_every_field_under_its_old_key():
    record = default_config("--deploy-size", "64x128").to_dict()
    assert list(record)[:5] == ["study", "out", "budget", "objectives", "settings"]
    assert list(record)[-6:] == ["val_seeds", "noise", "val_max", "protocol", "deploy_size", "protocol_agreement"]
    assert len(record) == 32 and record["deploy_size"] == "64x128" and record["val_max"] == 12
