"""Every command in README.md, docs/*.md and results/README.md runs as written, or is listed with the
reason it cannot run here.

Commands come from the fenced blocks and from inline code that starts like a command (`python ...`,
`make ...`, `pip ...`, `ray ...`). They run through bash, in a fresh working folder, with small budgets
injected by NAS_DOC_LIMITS at argparse level (tests/doc_limits/sitecustomize.py), never by editing
the text. Placeholders are made real there: `search_spaces/` is the checkout's, `path/to/dataset` a
small data set in the folder layout of docs/data.md, `results/default/` what an earlier command of the
same sequence wrote. A block that is neither commands, Python, nor listed as a diagram, and a command
neither run nor listed, fails test_every_doc_command_is_run_or_listed; so does a listed command the
docs no longer hold. The searches are slow (each starts Ray).
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = ["README.md", "results/README.md", *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))]
HOOK = Path(__file__).parent / "doc_limits"
LIMITS = {"budget": "5", "epochs": "1", "val-epochs": "1", "val-seeds": "2", "val-max": "1", "runs": "3",
          "size": "32x64", "deploy-size": "64x128"}

# Blocks that are not commands, by (page, first line with spaces collapsed).
NOT_COMMANDS = {
    ("README.md", "sample Optuna proposes an ArchSpec (the four presets are enqueued first)"): "diagram of the pipeline",
    ("docs/architecture.md", "nas/search.py (the driver, the only process that writes files)"): "diagram of the data flow",
}

# Commands a reader types one after another in one folder, each using what the one before left; a
# command's own limits replace the defaults (the resume grows the study to 13 trials: --trial 12 exists).
SEQUENCES = {
    "searching": [
        ("python -m nas.search --budget 100", {}, "wrote results/default/"),
        ("python -m nas.search --budget 100 --resume", {"budget": "13"}, "5 trials done, 8 to run"),
        ("python -m nas.profile --arch results/default/best.yaml --size 512x1024 [--json] [--latency-backend onnxruntime]",
         {}, "GMACs"),
        ("python -m nas.train --arch results/default/best.yaml --epochs 30 --out runs/best", {}, "runs/best/checkpoint.pt"),
        ("python -m nas.export --run results/default --trial 12 --onnx best.onnx --check-miou", {},
         "validation mIoU through ONNX Runtime"),
    ],
    # README: `make search` writes results/default/, run again resumes it, ARGS=--force starts afresh
    # docs/searching.md's yardstick: a constraint every preset breaks, then a trial as the baseline
    "baseline": [
        ("python -m nas.search --budget 100 --max-gmacs 0.004", {"budget": "13"}, "wrote results/default/"),
        ("python -m nas.export --run results/default --trial 12 --out mine.yaml", {}, "wrote mine.yaml"),
        ("python -m nas.search --budget 100 --baseline mine.yaml --within-baseline --study within-mine", {},
         "wrote results/within-mine/"),
    ],
    "make": [("make search", {}, "0 trials done, 5 to run"), ("make search", {}, "5 trials done, 0 to run"),
             ("make search ARGS=--force", {}, "0 trials done, 5 to run")],
}
# Commands run alone, each in a fresh folder (they would refuse each other's results/default/).
ALONE = {
    "python -m nas.search --budget 100 --max-latency-ms 5 --objectives miou,latency,memory --deploy-size 512x1024": "wrote results/default/",
    "python -m nas.search --budget 100 --sampler nsga2 --val-seeds 3 --pick miou --study nsga2": "wrote results/nsga2/",
    "python -m nas.search --budget 100 --max-latency-ms 5 --objectives miou,latency,memory": "wrote results/default/",
    "python -m nas.search --budget 100 --deploy-size 512x1024": "wrote results/default/",
    "python -m nas.search --budget 100 --study example --force": "wrote results/example/",
    "python -m nas.search --budget 100 --protocol faithful --study faithful": "wrote results/faithful/",
    "python -m nas.search --budget 20 --size 128x256 --no-validate": "wrote results/default/",
    "python -m nas.train --arch search_spaces/presets/erfnet.yaml --size 64x128 --epochs 25 --out runs/erfnet": "runs/erfnet/checkpoint.pt",
}
GPU = {"python -m nas.search --budget 200 --data path/to/dataset --size 256x512 --gpus-per-trial 0.25": "wrote results/default/"}
FAST = {"python -m nas.search --help": "usage: python -m nas.search"}

CLUSTER = ("a Ray cluster of several machines (HEAD is another machine's address); tests/test_multinode.py "
           "runs a search on a head and a worker node of one machine")
SUITE = "runs the test suite, this file among it"
LISTED = {
    "make test": SUITE,
    "make test-slow": SUITE,
    "make bench": "every benchmark: hours of measurement; docs/benchmarks.md holds each table with its command and machine",
    "make bench-quality": "the search-quality benchmark: many full searches (hours)",
    "pip install -e .[postgres]": "changes the environment the tests run in; the Makefile installs the same extra",
    "pip install psycopg2-binary": "changes the environment the tests run in; tests/test_postgres.py checks the "
                                   "one line that names it when a URL asks for psycopg2",
    "python -m nas.search": "the entry point named in prose: with no flags it is `python -m nas.search --budget 100` "
                            "(the default budget), which runs",
    "bash benchmarks/gpu_check.sh --dry-run": "tests/test_gpu_check.py runs this dry run (slow)",
    "bash benchmarks/gpu_check.sh": "the one-shot GPU check: on a GPU machine, with the wheels below",
    "bash benchmarks/build_gpu_wheels.sh": "downloads wheels: needs network access, which the tests do not assume",
    "python benchmarks/gpu_check_wheels.py size .gpu_wheels": "sizes what build_gpu_wheels.sh downloaded (network)",
    "ray start --head --port 6379 --num-cpus 0": CLUSTER,
    "ray start --address HEAD:6379": CLUSTER,
    "python -m nas.search --address HEAD:6379 --budget 500 [--storage postgresql://USER:PASSWORD@HOST:5432/DB]": CLUSTER,
    "python -m nas.search --budget 200 --address HEAD:6379 --gpus-per-trial 0.5 --deploy-size 1024x2048": CLUSTER + "; GPUs",
}
BOARD = ("on the target board, another machine; tests/test_target_board.py installs the board package the same way "
         "(the host's Ray and ONNX Runtime) in a fresh environment, tests/test_target_cluster.py joins a board node so")
LISTED.update({
    "ray start --head --port 6379": CLUSTER,
    "python3 -m venv ~/lightseg-board": BOARD,
    "~/lightseg-board/bin/pip install ./board ray==2.60.0 onnxruntime==1.32.0": BOARD,
    '~/lightseg-board/bin/ray start --address HOST:6379 --num-cpus 0 --num-gpus 0 --resources {"target:pi5": 1}': BOARD,
    "python -m nas.search --address HOST:6379 --latency-target pi5 --target-threads 4 --max-latency-ms 40 --budget 100":
        CLUSTER + " and a board; tests/test_target_cluster.py runs a search with --latency-target on a head and a "
                  "board node of one machine",
})
BENCHMARK = "a benchmark: minutes to hours of measurement, its table in docs/benchmarks.md (CI runs none)"


@dataclass(frozen=True)
class Command:
    key: str  # its words, comment dropped, spaces collapsed: how the tables above name it
    raw: str  # as written (bash runs it)
    where: str


FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`((?:python3?|make|pip|ray|bash)(?: [^`]*)?)`")


def _commands(text: str, where: str) -> list[Command] | None:
    """The commands of a block, a command over several lines (a quoted Python program) as one; None
    when the text does not split into words (not commands)."""
    out, pending = [], ""
    for line in text.splitlines():
        pending = f"{pending}\n{line}" if pending else line
        try:
            words = shlex.split(pending, comments=True)
        except ValueError:  # an open quote: the command goes on
            continue
        if words:
            out.append(Command(" ".join(words), pending, where))
        pending = ""
    return None if pending else out


def doc_commands() -> tuple[list[Command], list[tuple[str, str]], list[str]]:
    """(commands, Python snippets (where, code), blocks that are neither)."""
    commands, snippets, unknown = [], [], []
    for page in PAGES:
        text = (ROOT / page).read_text(encoding="utf-8")
        for m in FENCE.finditer(text):
            where = f"{page}:{text[:m.start()].count(chr(10)) + 1}"
            lang, body = m.group(1), m.group(2)
            first = " ".join(body.strip().splitlines()[0].split()) if body.strip() else ""
            if (page, first) in NOT_COMMANDS:
                continue
            if lang == "python":
                snippets.append((where, body))
                continue
            found = _commands(body, where) if lang in ("", "sh", "bash", "shell", "console") else None
            if found is None:
                unknown.append(f"{where} ({lang or 'no language'}): {first}")
            commands += found or []
        prose = FENCE.sub(lambda f: "\n" * f.group(0).count("\n"), text)  # lines keep their numbers
        for m in INLINE.finditer(prose):  # inline code may wrap over lines of prose
            found = _commands(" ".join(m.group(1).split()), f"{page}:{prose[:m.start()].count(chr(10)) + 1}")
            commands += found or []
    return commands, snippets, unknown


def _runnable(c: Command) -> bool:
    return c.key.startswith("python -c ")  # a Python program: runs as written, fast


def _listed(key: str) -> str | None:
    return LISTED.get(key) or (BENCHMARK if key.startswith("python benchmarks/") else None)


RUN = {k for seq in SEQUENCES.values() for k, _, _ in seq} | set(ALONE) | set(GPU) | set(FAST)


def test_every_doc_command_is_run_or_listed():
    commands, snippets, unknown = doc_commands()
    assert not unknown, f"blocks neither commands, Python nor listed in NOT_COMMANDS: {unknown}"
    found = {c.key for c in commands}
    missing = sorted(f"{c.where}: {c.key}" for c in commands
                     if not (c.key in RUN or _listed(c.key) or _runnable(c)))
    assert not missing, "doc commands neither run nor listed (add them to a table of this file):\n" + "\n".join(missing)
    stale = sorted((RUN | set(LISTED)) - found)
    assert not stale, f"commands this file runs or lists that the docs no longer hold: {stale}"
    assert snippets and any(_runnable(c) for c in commands)  # the Python examples below exist


# --- running them ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("doc-cache")  # the embedded street scenes, generated once


def _variants(raw: str) -> list[str]:
    """`[--json]` marks an optional part: the command runs without the optional parts, and with all."""
    if "[" not in raw.split("#")[0]:
        return [raw]
    return [re.sub(r"\s*\[[^\]]*\]", "", raw), re.sub(r"\[([^\]]*)\]", r"\1", raw)]


def run_doc(raw: str, cwd: Path, cache: Path, limits: dict | None = None, timeout: float = 900) -> str:
    """Run a command as written through bash; returns its stdout and stderr, failing on a non-zero exit."""
    env = dict(os.environ, LIGHTSEG_CACHE=str(cache), NAS_DOC_LIMITS=",".join(f"{k}={v}" for k, v in {**LIMITS, **(limits or {})}.items()))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # `python` is this one
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HOOK), env.get("PYTHONPATH")) if p)
    ray_tmp = tempfile.mkdtemp(prefix="lightseg-doc-")  # short: Ray's socket paths must fit
    env["LIGHTSEG_RAY_TMP"] = ray_tmp
    proc = subprocess.Popen(["bash", "-c", raw], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{raw!r} still running after {timeout} s:\n{out[-3000:]}")
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, f"{raw!r} in {cwd} exited {proc.returncode}:\n{out[-3000:]}"
    if re.search(r"-m nas\.(search|train|profile)\b|^make search", raw) and "--help" not in raw:
        assert "doc limits: " in out, f"{raw!r} ran without the small budgets:\n{out[-2000:]}"
    return out


def workdir(path: Path, raws) -> Path:
    """A fresh working folder in which the placeholders the commands name exist."""
    path.mkdir(parents=True, exist_ok=True)
    text = "\n".join(raws)
    if "search_spaces/" in text:
        (path / "search_spaces").symlink_to(ROOT / "search_spaces")  # commands run in the checkout
    if "path/to/dataset" in text:
        write_folder_dataset(path / "path" / "to" / "dataset")
    if text.startswith("make "):
        make_checkout(path)
    return path


def write_folder_dataset(root: Path, height: int = 64, width: int = 128) -> None:
    """docs/data.md's folder layout: two classes, a textured box on a background, 8 train, 4 val images."""
    from PIL import Image
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    (root / "classes.yaml").write_text("names: [background, box]\n")
    for split, n in (("train", 8), ("val", 4)):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for i in range(n):
            mask = np.zeros((height, width), np.uint8)
            top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
            mask[top:top + height // 3, left:left + width // 3] = 1
            image = rng.integers(0, 128, (height, width, 3), dtype=np.uint8)
            image[mask == 1] += 100
            Image.fromarray(image).save(root / "images" / split / f"{i}.png")
            Image.fromarray(mask).save(root / "masks" / split / f"{i}.png")


def make_checkout(path: Path) -> None:
    """The Makefile beside this environment's .venv. pyproject.toml's copy is dated before .venv's stamp,
    so make uses the environment as it is; the dry run below proves it will not reinstall."""
    shutil.copy2(ROOT / "Makefile", path / "Makefile")
    shutil.copy2(ROOT / "pyproject.toml", path / "pyproject.toml")
    (path / ".venv").symlink_to(ROOT / ".venv")
    stamp = (ROOT / ".venv" / ".installed").stat().st_mtime
    os.utime(path / "pyproject.toml", (stamp - 60, stamp - 60))
    plan = subprocess.run(["make", "-n", "search"], cwd=path, capture_output=True, text=True).stdout
    assert "pip install" not in plan and "nas.search" in plan, plan


def _raw(key: str) -> str:
    """The command as the docs write it (its first occurrence)."""
    return next(c.raw for c in doc_commands()[0] if c.key == key)


def test_python_examples_run(tmp_path, cache):
    commands, snippets, _ = doc_commands()
    work = workdir(tmp_path / "w", [code for _, code in snippets] + [c.raw for c in commands if _runnable(c)])
    for where, code in snippets:
        run_doc(f"python -c {shlex.quote(code)}", work, cache)
    assert (work / "mine.yaml").is_file()  # docs/search-space.md's example writes it
    for c in commands:
        if _runnable(c):
            assert run_doc(c.raw, work, cache).strip(), f"{c.where}: printed nothing"


@pytest.mark.parametrize("key", sorted(FAST))
def test_fast_command(tmp_path, cache, key):
    assert FAST[key] in run_doc(_raw(key), workdir(tmp_path / "w", [key]), cache)


def test_limits_cap_the_flags_a_command_gives_and_their_defaults():
    # what the slow tests rely on (each also checks the hook's stderr line): a documented command runs
    # smaller without its text changing; a flag left unset stays unset
    import importlib.util
    from nas import profile, search
    spec = importlib.util.spec_from_file_location("doc_limits_hook", HOOK / "sitecustomize.py")
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)  # NAS_DOC_LIMITS is unset here: it installs nothing
    parser = search.build_parser()
    args = parser.parse_args(["--budget", "100", "--val-seeds", "3", "--deploy-size", "512x1024"])
    assert hook._cap(parser, args, LIMITS) == ["--budget 100 -> 5", "--epochs 3 -> 1", "--val-epochs 6 -> 1",
                                               "--val-seeds 3 -> 2", "--val-max 12 -> 1", "--deploy-size 512x1024 -> 64x128"]
    # --size left to the protocol stays unset where the protocol's already fits the limit
    assert (args.budget, args.epochs, args.size, args.deploy_size, args.max_concurrent) == (5, 1, None, "64x128", None)
    args = parser.parse_args(["--budget", "100", "--protocol", "faithful"])  # its sizes capped as set by it
    assert hook._cap(parser, args, LIMITS) == ["--budget 100 -> 5", "--epochs 3 -> 1", "--val-epochs 10 -> 1",
                                               "--val-max 12 -> 1", "--size 64x128 -> 32x64"]
    parser = profile.build_parser()
    args = parser.parse_args(["--arch", "x.yaml", "--size", "512x1024"])
    assert hook._cap(parser, args, LIMITS) == ["--runs 50 -> 3", "--size 512x1024 -> 32x64"]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SEQUENCES))
def test_sequence(tmp_path, cache, name):
    steps = SEQUENCES[name]
    work = workdir(tmp_path / "w", [_raw(k) for k, _, _ in steps])
    for key, limits, shows in steps:
        for raw in _variants(_raw(key)):
            out = run_doc(raw, work, cache, limits)
            assert shows.lower() in out.lower(), f"{raw!r} did not print {shows!r}:\n{out[-2000:]}"


@pytest.mark.slow
@pytest.mark.parametrize("key", sorted(ALONE))
def test_alone(tmp_path, cache, key):
    raw = _raw(key)
    out = run_doc(raw, workdir(tmp_path / "w", [raw]), cache)
    assert ALONE[key] in out, out[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("key", sorted(GPU))
def test_gpu(tmp_path, cache, key):
    import torch
    if not torch.cuda.is_available():
        pytest.skip("GPU only: --gpus-per-trial needs a GPU")
    raw = _raw(key)
    out = run_doc(raw, workdir(tmp_path / "w", [raw]), cache)
    assert GPU[key] in out, out[-2000:]
