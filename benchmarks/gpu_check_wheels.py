"""The wheels of the one-shot GPU check: which to pack, which to install, and what one call carries.

    python benchmarks/gpu_check_wheels.py pins REPORT.json   # build side: name==version the image lacks
    python benchmarks/gpu_check_wheels.py install WHEELS     # GPU side: the wheels to install there
    python benchmarks/gpu_check_wheels.py size WHEELS        # the repository + WHEELS as one call carries them

`pins` reads the resolution of `pip install --dry-run --report` and drops what the GPU machine's image
already holds (IMAGE_HAS), so that the wheels and the repository fit ONE transfer (CALL_LIMIT).
`install` picks, on the GPU machine, one wheel per distribution that interpreter lacks, plus any it
has at a version a wheel being installed does not accept; never torch or its CUDA libraries. Both
print one item a line on stdout; notes go to stderr. `size` fails (exit 1) over the limit.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

try:
    from packaging.requirements import Requirement
    from packaging.version import Version
except ImportError:  # pip always carries a copy
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.version import Version

NEVER = ("torch", "nvidia-", "triton")
EXTRAS = {"ray": ("tune",)}  # the search imports ray.tune
CALL_LIMIT = 64 * 2**20  # what one call to the GPU machine carries: working tree + carried folders
# The GPU machine's image (Python 3.12, torch with CUDA): the Python distributions it holds, as its
# package list read on 2026-11-17 gave them. Wheels of
# these are not packed: pyarrow, protobuf, requests, pyyaml, click, msgpack, fsspec ... are ~25 MiB
# that would push the repository and ray over one call's limit.
IMAGE_HAS = frozenset("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt
jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities
linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes
mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba
numba-cuda numpy numpyro nvidia-ml-py onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax
opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip
pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout
pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools
shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server
tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq
torch-geometric torchmetrics torchvision tqdm transformers treescope triton typer typing-extensions
typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split())


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(report: Path) -> list[str]:
    """name==version of each resolved distribution that the image lacks (and is not torch's)."""
    resolved = json.loads(report.read_text())["install"]
    pairs = [(norm(i["metadata"]["name"]), i["metadata"]["version"]) for i in resolved]
    return [f"{n}=={v}" for n, v in sorted(pairs) if n not in IMAGE_HAS and not n.startswith(NEVER)]


def requirements(whl: Path, extras: tuple[str, ...]) -> list[Requirement]:
    """The wheel's Requires-Dist that apply to this interpreter with `extras`."""
    with zipfile.ZipFile(whl) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode("utf-8", "replace").splitlines()
    reqs = [Requirement(line.split(":", 1)[1].strip()) for line in lines if line.startswith("Requires-Dist:")]
    return [r for r in reqs if r.marker is None or any(r.marker.evaluate({"extra": e}) for e in ("", *extras))]


def to_install(folder: Path, installed: dict[str, Version]) -> list[Path]:
    """The wheels of `folder` to install beside the distributions `installed` (name -> version)."""
    wheels = {}
    for whl in sorted(folder.rglob("*.whl")):
        name, version = whl.name.split("-")[:2]
        if not norm(name).startswith(NEVER):
            wheels[norm(name)] = (whl, Version(version))
    chosen = [n for n in wheels if n not in installed]
    for n in chosen:  # the list grows while it is walked: what a newly chosen wheel needs is checked too
        for req in requirements(wheels[n][0], EXTRAS.get(n, ())):
            dep = norm(req.name)
            if dep in chosen or (dep in installed and req.specifier.contains(installed[dep], prereleases=True)):
                continue
            have = f"{installed[dep]} is installed" if dep in installed else "is missing"
            if dep in wheels and req.specifier.contains(wheels[dep][1], prereleases=True):
                chosen.append(dep)
                print(f"note: {n} needs {req}; {dep} {have}: installing {wheels[dep][1]}", file=sys.stderr)
            else:
                print(f"warning: {n} needs {req}; {dep} {have} and no wheel here fits", file=sys.stderr)
    return [wheels[n][0] for n in sorted(chosen)]


def installed_here() -> dict[str, Version]:
    installed: dict[str, Version] = {}
    for d in metadata.distributions():
        if d.metadata["Name"]:
            installed.setdefault(norm(d.metadata["Name"]), Version(d.version))  # the first on sys.path wins
    return installed


@dataclass(frozen=True)
class CallSize:
    """What one call to the GPU machine carries: the working tree as git sees it, and the wheels."""

    repo_bytes: int
    repo_files: int
    wheels_bytes: int
    wheel_files: int

    @property
    def total(self) -> int:
        return self.repo_bytes + self.wheels_bytes

    @property
    def fits(self) -> bool:
        return self.total <= CALL_LIMIT

    def line(self) -> str:
        mib = 2**20
        return (f"one call carries {self.total / mib:.1f} MiB of {CALL_LIMIT / mib:.0f} MiB: repository "
                f"{self.repo_bytes / mib:.1f} MiB ({self.repo_files} files) + wheels {self.wheels_bytes / mib:.1f} MiB "
                f"({self.wheel_files} files)" + ("" if self.fits else "  -- TOO LARGE"))


def tree_files(repo: Path) -> list[Path]:
    """Tracked files and untracked files git does not ignore: the working tree that travels."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                         capture_output=True, check=True).stdout
    return [repo / p for p in sorted(set(out.decode().split("\0"))) if p and (repo / p).is_file()]


def call_size(repo: Path, wheels: Path) -> CallSize:
    files = tree_files(repo)
    wheel_files = [p for p in wheels.rglob("*") if p.is_file()] if wheels.is_dir() else []
    return CallSize(sum(p.stat().st_size for p in files), len(files),
                    sum(p.stat().st_size for p in wheel_files), len(wheel_files))


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("pins", "install", "size"):
        print(__doc__, file=sys.stderr)
        return 2
    what, arg = argv[0], Path(argv[1])
    if what == "pins":
        print("\n".join(pins(arg)))
    elif what == "install":
        print("\n".join(str(p) for p in to_install(arg, installed_here())))
    else:
        size = call_size(Path(__file__).resolve().parent.parent, arg)
        print(size.line())
        return 0 if size.fits else 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
