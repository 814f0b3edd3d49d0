#!/usr/bin/env bash
# Build the folder of wheels that benchmarks/gpu_check.sh installs offline on a GPU machine whose
# image has Python 3.12, torch and the common scientific stack but not the search's own
# dependencies (optuna, ray[tune], fvcore and what they pull in). Run it on any machine that
# reaches the package index (no GPU needed), from anywhere in the repository:
#
#     bash benchmarks/build_gpu_wheels.sh [DEST]        # DEST defaults to .gpu_wheels/ (git-ignored)
#
# The closure of optuna, ray[tune] and fvcore's dependencies is resolved for CPython 3.12 on
# manylinux x86_64; what the image already holds is dropped (benchmarks/gpu_check_wheels.py,
# IMAGE_HAS), ray is slimmed of its Java jars and the dashboard's web build (the search uses
# neither), and fvcore and iopath, published as sources only, are built here. At the end it prints
# what one call carries (the repository's working tree + DEST) and fails over 64 MiB.
# Environment: PYTHON (the interpreter running pip, any version), PYVER (the target's, 3.12).
set -euo pipefail

cd "$(dirname "$0")/.."
DEST=${1:-.gpu_wheels}
PY=${PYTHON:-python3}
PYVER=${PYVER:-3.12}
# Versions the check was written against; the slimming below names files inside the ray wheel.
TOP=(optuna==5.1.0 "ray[tune]==2.60.0")
# fvcore and iopath are sdists (no --only-binary resolution): their binary dependencies are named here.
FVCORE_DEPS=(yacs termcolor tabulate portalocker tqdm pillow typing_extensions pyyaml)
SDISTS=(fvcore==0.1.5.post20221221 iopath==0.1.10)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$DEST"

# pip matches a manylinux tag exactly: list every glibc level the image's (2.35+) accepts.
platforms=()
for v in $(seq 35 -1 17); do platforms+=(--platform "manylinux_2_${v}_x86_64"); done
platforms+=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64)
target=(--python-version "$PYVER" --implementation cp --only-binary=:all: "${platforms[@]}")

echo "resolving for CPython $PYVER: ${TOP[*]} + fvcore's dependencies ..."
"$PY" -m pip install -q --dry-run --ignore-installed --target "$work/none" --report "$work/report.json" \
    "${target[@]}" "${TOP[@]}" "${FVCORE_DEPS[@]}"
"$PY" benchmarks/gpu_check_wheels.py pins "$work/report.json" >"$work/pins.txt"
echo "the image lacks $(wc -l <"$work/pins.txt"): $(tr '\n' ' ' <"$work/pins.txt")"
"$PY" -m pip download -q --no-deps --dest "$work/dl" "${target[@]}" -r "$work/pins.txt"
echo "building ${SDISTS[*]} from their sources (pure python) ..."
"$PY" -m pip wheel -q --no-deps --wheel-dir "$work/dl" "${SDISTS[@]}"

# The `wheel` tool unpacks and repacks a wheel with a RECORD that matches its new contents.
"$PY" -m pip install -q --target "$work/tools" wheel
wheel_tool() { PYTHONPATH="$work/tools" "$PY" -m wheel "$@"; }

slim() {  # slim WHEEL PATTERN...: rewrite WHEEL without the files matching PATTERN (relative globs)
    local whl=$1 before root
    shift
    before=$(du -k "$whl" | cut -f1)
    rm -rf "$work/unpacked"
    wheel_tool unpack -d "$work/unpacked" "$whl" >/dev/null
    root=$(echo "$work"/unpacked/*)
    (cd "$root" && shopt -s nullglob && for p in "$@"; do rm -rf $p; done)  # unquoted: globs expand
    rm -rf "$work/packed" && mkdir "$work/packed"
    wheel_tool pack -d "$work/packed" "$root" >/dev/null
    # pack names the file from WHEEL's Tag lines, which can be wider than the published name
    # (ray's says linux_x86_64): keep the published name, the one pip's tag check was made for
    mv "$work"/packed/*.whl "$whl"
    echo "  slimmed $(basename "$whl"): ${before} kB -> $(du -k "$whl" | cut -f1) kB"
}

slim "$(echo "$work"/dl/ray-*.whl)" ray/jars ray/dashboard/client/build

rm -f "$DEST"/*.whl  # an earlier build's wheels: two versions of one stop the install
mv "$work"/dl/*.whl "$DEST/"
echo
ls -s --block-size=K "$DEST"
"$PY" benchmarks/gpu_check_wheels.py size "$DEST"
