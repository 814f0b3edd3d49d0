"""Which wheels of a folder the GPU check installs (benchmarks/gpu_check.sh): one per distribution
this interpreter lacks, plus any it has at a version that a distribution being installed does not
accept (the newer copy then shadows it, from the front of PYTHONPATH). Never torch or its CUDA
libraries. Prints one wheel path per line; notes go to stderr.

    python benchmarks/gpu_check_wheels.py WHEELS
"""
from __future__ import annotations

import re
import sys
import zipfile
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


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(whl: Path, extras: tuple[str, ...]) -> list[Requirement]:
    """The wheel's Requires-Dist that apply to this interpreter with `extras`."""
    with zipfile.ZipFile(whl) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode("utf-8", "replace").splitlines()
    reqs = [Requirement(line.split(":", 1)[1].strip()) for line in lines if line.startswith("Requires-Dist:")]
    return [r for r in reqs if r.marker is None or any(r.marker.evaluate({"extra": e}) for e in ("", *extras))]


def main(folder: str) -> None:
    wheels = {}
    for whl in sorted(Path(folder).rglob("*.whl")):
        name, version = whl.name.split("-")[:2]
        if not norm(name).startswith(NEVER):
            wheels[norm(name)] = (whl, Version(version))
    installed = {}
    for d in metadata.distributions():
        if d.metadata["Name"]:
            installed.setdefault(norm(d.metadata["Name"]), Version(d.version))  # the first on sys.path wins
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
    print("\n".join(str(wheels[n][0]) for n in sorted(chosen)))


if __name__ == "__main__":
    main(sys.argv[1])
