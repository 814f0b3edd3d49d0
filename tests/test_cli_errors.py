"""What a new user types wrong gets one `error:` line naming the flag or file, the value and what is
allowed: never a traceback, and a refused command leaves nothing behind (no empty out folder, no
YAML written before the ONNX path was found unusable)."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
import yaml
from PIL import Image

from nas import export as export_cli
from nas import profile as profile_cli
from nas import train as train_cli
from nas.records import TrialKey, storage_url
from search_spaces import build_model
from trainers.train import save_checkpoint

from helpers import refused, tiny_spec

ROOT = Path(__file__).resolve().parent.parent


def refused_as_typed(command: list, tmp_path: Path) -> str:
    """The same through `python -m ...` in a process of its own."""
    proc = subprocess.run([sys.executable, "-m", *map(str, command)], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "LIGHTSEG_CACHE": str(tmp_path / "cache")}, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    return proc.stderr.strip()


@pytest.fixture
def arch(tmp_path):
    path = tmp_path / "arch.yaml"
    tiny_spec(num_classes=8).to_yaml(path)
    return path


# --- nas.train: flags -----------------------------------------------------------------------
@pytest.mark.parametrize("flags,line", [
    (["--batch-size", "0"], "--batch-size 0: must be at least 1"),
    (["--lr", "-1"], "--lr -1: must be a positive number"),
    (["--lr", "nan"], "--lr nan: must be a positive number"),
    (["--epochs", "0"], "--epochs 0: must be at least 1"),
    (["--seed", "-1"], "--seed -1: must be at least 0"),
    (["--device", "nonsense"], "--device nonsense: expected cpu, cuda or cuda:N"),
    (["--device", "cuda:x"], "--device cuda:x: expected cpu, cuda or cuda:N"),
])
def test_train_refuses_a_bad_flag_in_one_line_and_leaves_no_folder(tmp_path, arch, capsys, flags, line):
    out = tmp_path / "run"
    assert refused(train_cli.main, ["--arch", arch, "--out", out, "--epochs", "1", *flags], capsys) == f"error: {line}"
    assert not out.exists()


def test_train_on_cuda_with_a_cpu_only_torch_is_one_line(tmp_path, arch, capsys, monkeypatch):
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: False)  # what a CPU wheel reports
    out = tmp_path / "run"
    line = refused(train_cli.main, ["--arch", arch, "--out", out, "--epochs", "1", "--device", "cuda"], capsys)
    assert line == "error: --device cuda: this torch build has no CUDA (cpu only); use --device cpu"
    assert not out.exists()


def test_profile_on_cuda_with_a_cpu_only_torch_is_one_line(arch, capsys, monkeypatch):
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: False)
    line = refused(profile_cli.main, ["--arch", arch, "--device", "cuda"], capsys)
    assert line == "error: --device cuda: this torch build has no CUDA (cpu only); use --device cpu"
    assert refused(profile_cli.main, ["--arch", arch, "--threads", "0"], capsys) == "error: --threads 0: must be at least 1"


def test_train_into_a_path_under_a_file_is_one_line(tmp_path, arch):
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    out = tmp_path / "notes.txt" / "run"
    line = refused_as_typed(["nas.train", "--arch", arch, "--epochs", "1", "--out", out], tmp_path)
    assert line == f"error: --out {out}: {tmp_path / 'notes.txt'} is a file, not a folder"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write into read-only folders")
def test_train_into_a_read_only_folder_is_one_line(tmp_path, arch, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        out = locked / "run"
        line = refused(train_cli.main, ["--arch", arch, "--epochs", "1", "--out", out], capsys)
        assert line == f"error: --out {out}: cannot write in {locked} (permission denied)"
        assert not out.exists()
    finally:
        locked.chmod(0o700)


# --- data and spec files --------------------------------------------------------------------
def _folder(root: Path, classes_yaml: str) -> Path:
    root.mkdir()
    (root / "classes.yaml").write_text(classes_yaml)
    for split in ("train", "val"):
        for kind, array in (("images", np.zeros((32, 32, 3), np.uint8)), ("masks", np.ones((32, 32), np.uint8))):
            (root / kind / split).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(array).save(root / kind / split / f"{i}.png")
    return root


@pytest.mark.parametrize("classes_yaml,problem", [
    ("names: [a, b, c]\nignore_indx: 0\n", "unknown key 'ignore_indx'; allowed: names, ignore_index, palette"),
    ("names: [a, b, c]\n ignore_index: 0\n", "malformed YAML at line 2, column 2: expected <block end>, but found '<block mapping start>'"),
])
def test_train_names_the_problem_in_classes_yaml(tmp_path, arch, capsys, classes_yaml, problem):
    data, out = _folder(tmp_path / "data", classes_yaml), tmp_path / "run"
    line = refused(train_cli.main, ["--arch", arch, "--data", data, "--epochs", "1", "--out", out, "--device", "cpu"], capsys)
    assert line == f"error: {data / 'classes.yaml'}: {problem}"
    assert not out.exists()


def test_an_arch_yaml_with_stage_for_stages_says_stages_is_missing(tmp_path, capsys):
    spec = tiny_spec(num_classes=8).to_dict()
    spec["stage"] = spec.pop("stages")
    mine = tmp_path / "mine.yaml"
    mine.write_text(yaml.safe_dump(spec))
    out = tmp_path / "run"
    line = refused(train_cli.main, ["--arch", mine, "--epochs", "1", "--out", out, "--device", "cpu"], capsys)
    assert line == f"error: {mine}: stages: missing; every spec needs stages (unknown key 'stage')"
    assert not out.exists()
    mine.write_text("ratio: 1\nstages: [{width: 8, depth: 1\n")
    line = refused(profile_cli.main, ["--arch", mine], capsys)
    assert line == f"error: {mine}: malformed YAML at line 3, column 1: expected ',' or '}}', but got '<stream end>'"


# --- nas.export -----------------------------------------------------------------------------
@pytest.fixture
def run_dir(tmp_path):
    """A run folder as nas.search leaves it, with one finished trial (number 0)."""
    run_dir = tmp_path / "results" / "study"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"study": "study", "seed": 0}))
    study = optuna.create_study(study_name="study", storage=storage_url(run_dir), directions=["maximize", "minimize"])
    study.add_trial(optuna.trial.create_trial(values=[0.5, 1.0], user_attrs={TrialKey.SPEC: tiny_spec().to_dict()}))
    return run_dir


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*")}


def test_export_into_a_missing_folder_is_refused_before_writing_the_yaml(tmp_path, run_dir):
    before = _files(tmp_path)
    onnx = tmp_path / "deploy" / "net.onnx"
    line = refused_as_typed(["nas.export", "--run", run_dir, "--trial", "0", "--out", tmp_path / "net.yaml",
                             "--onnx", onnx], tmp_path)
    assert line == f"error: --onnx {onnx}: folder {tmp_path / 'deploy'} does not exist"
    assert _files(tmp_path) - before <= {tmp_path / "cache"}  # no net.yaml, no deploy folder


@pytest.mark.parametrize("argv,line", [
    (["--out", "{tmp}/nowhere/net.yaml"], "--out {tmp}/nowhere/net.yaml: folder {tmp}/nowhere does not exist"),
    (["--out", "{tmp}"], "--out {tmp}: is a folder; give a file name"),
    (["--onnx", "{tmp}/net.onnx", "--checkpoint", "{tmp}/none.pt"],
     "--checkpoint {tmp}/none.pt: no such file (a checkpoint.pt written by python -m nas.train)"),
    (["--onnx", "{tmp}/net.onnx", "--checkpoint", "{tmp}/results/study/config.yaml"],
     "--checkpoint {tmp}/results/study/config.yaml: not a checkpoint written by python -m nas.train"),
    (["--onnx", "{tmp}/net.onnx", "--seed", "3"], "--seed 3: no trained weights of trial 0 for it (kept for seeds: none)"),
])
def test_export_refusals_write_nothing(tmp_path, run_dir, capsys, argv, line):
    before = _files(tmp_path)
    got = refused(export_cli.main, ["--run", run_dir, "--trial", "0", *(a.format(tmp=tmp_path) for a in argv)], capsys)
    assert got.startswith(f"error: {line.format(tmp=tmp_path)}")
    assert _files(tmp_path) == before


def test_export_with_a_checkpoint_writes_the_yaml_and_the_onnx(tmp_path, run_dir, capsys):
    spec = tiny_spec()
    save_checkpoint(tmp_path / "checkpoint.pt", build_model(spec), spec)
    argv = ["--run", run_dir, "--trial", "0", "--out", tmp_path / "net.yaml", "--onnx", tmp_path / "net.onnx",
            "--checkpoint", tmp_path / "checkpoint.pt"]
    assert export_cli.main([str(a) for a in argv]) == 0
    assert (tmp_path / "net.yaml").stat().st_size > 0 and (tmp_path / "net.onnx").stat().st_size > 1000


def test_export_of_a_validated_trial_keeps_the_trial_yaml_and_exports_the_seed_weights(tmp_path, run_dir, capsys):
    """The YAML is the searched net; the ONNX file the validation training's net, at its input size."""
    import onnx
    from nas.records import validated_key
    from nas.validate import weights_path

    big = tiny_spec(height=64, width=64)
    weights_path(run_dir, 0, 1).parent.mkdir()
    save_checkpoint(weights_path(run_dir, 0, 1), build_model(big), big)
    optuna.load_study(study_name="study", storage=storage_url(run_dir)).set_user_attr(
        validated_key(0, 1), {"status": "complete", "miou": 0.4})
    argv = ["--run", run_dir, "--trial", "0", "--out", tmp_path / "net.yaml", "--onnx", tmp_path / "net.onnx"]
    assert export_cli.main([str(a) for a in argv]) == 0
    assert "validation seed 1 (validated mIoU 0.4000" in capsys.readouterr().out
    assert yaml.safe_load((tmp_path / "net.yaml").read_text())["input"]["height"] == 32
    shape = onnx.load(tmp_path / "net.onnx").graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in shape][-2:] == [64, 64]
