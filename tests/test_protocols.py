"""`--protocol quick|faithful`: the sizes and epochs it sets, what wins over it, and what a run records."""
from __future__ import annotations

import csv

import pytest

from nas import protocols
from nas.search import build_parser, config_from_args


def _config(*flags: str):
    return config_from_args(build_parser().parse_args(["--budget", "5", *flags]))


def test_quick_is_the_default_and_sets_32x64_everywhere():
    m = _config().meaning
    assert (m.height, m.width, m.settings.epochs, m.val_height, m.val_width, m.val_epochs) == (32, 64, 3, 32, 64, 6)


def test_faithful_searches_and_validates_at_64x128():
    cfg = _config("--protocol", "faithful")
    m = cfg.meaning
    assert (m.height, m.width, m.settings.epochs, m.val_height, m.val_width, m.val_epochs) == (64, 128, 3, 64, 128, 10)
    assert cfg.to_dict()["protocol"].startswith("faithful (search 64x128")


def test_a_size_flag_beside_a_protocol_wins_and_the_run_is_labelled_custom():
    cfg = _config("--protocol", "faithful", "--val-size", "128x256")
    assert (cfg.meaning.val_height, cfg.meaning.val_width) == (128, 256)
    assert cfg.meaning.height == 64  # the protocol's search size stays
    assert cfg.to_dict()["protocol"].startswith("custom (faithful with search 64x128, 3 epochs; validated 128x256")


def test_config_records_the_ladders_agreement_for_the_validation_size(tmp_path, monkeypatch):
    table = tmp_path / "agreement.csv"
    with table.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["rung", "scope", "nets", "tau", "ci_low", "ci_high", "epochs", "verdicts_same", "seeds", "commit"])
        w.writerow(["32x64", "validated stage", "16", "0.61", "0.40", "0.80", "10", "3", "2", "abc1234"])
        w.writerow(["32x64", "validated stage", "16", "0.52", "0.30", "0.70", "6", "2", "2", "abc1234"])
    monkeypatch.setattr(protocols, "AGREEMENT", table)
    said = _config("--val-epochs", "10").to_dict()["protocol_agreement"]
    assert said == ("validated at 32x64, 10 epochs: its ranking agreed with 128x256's at Kendall tau 0.61 [0.40, 0.80] "
                    "over 16 nets (2 seed(s)), 3 of 4 preset verdicts the same; resolution ladder at commit abc1234")
    assert _config().to_dict()["protocol_agreement"].startswith(  # quick: its own length's row
        "validated at 32x64, 6 epochs: its ranking agreed with 128x256's at Kendall tau 0.52")
    assert _config("--val-epochs", "7").to_dict()["protocol_agreement"] == "not measured by the resolution ladder"
    assert _config("--val-size", "64x64").to_dict()["protocol_agreement"] == "not measured by the resolution ladder"


def test_an_unknown_protocol_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--protocol", "slow"])
    assert "invalid choice: 'slow'" in capsys.readouterr().err
