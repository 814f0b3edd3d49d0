#!/usr/bin/env bash
# Build the folder of wheels that benchmarks/gpu_check.sh installs offline on a GPU machine that has
# Python 3.12, torch, numpy and pandas but not the search's other dependencies. Run it on any
# machine that reaches the package index (no GPU needed):
#
#     bash benchmarks/build_gpu_wheels.sh [DEST]        # DEST defaults to wheels/ (git-ignored)
#
# DEST gets two parts, each small enough to travel in one 64 MiB transfer beside the repository:
#   DEST/ray   ray alone, without its Java jars and the dashboard's web build (the search uses neither)
#   DEST/deps  optuna, fvcore, iopath, their dependencies and ray's, among them pyarrow (Ray Tune's
#              storage layer will not import without it) slimmed of Flight and S3
# Environment: PYTHON (the interpreter running pip, any version), PYVER (the target's, 3.12).
set -euo pipefail

DEST=${1:-wheels}
PY=${PYTHON:-python3}
PYVER=${PYVER:-3.12}
# Versions the check was written against; the slimming below names files inside these wheels.
PINNED=(optuna==5.1.0 "ray[tune]==2.60.0" pyarrow==26.0.1)
# Pure-python dependencies of fvcore/iopath (sdists only, so built here below with --no-deps).
FVCORE_DEPS=(yacs termcolor tabulate portalocker tqdm)
# Present on any machine with torch + pandas, and large: never shipped.
DROP=${DROP:-"numpy pandas torch"}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$DEST/ray" "$DEST/deps"

# A wheel tagged manylinux_2_28 is not matched by an older tag, nor the reverse: list them all.
platforms=()
for v in $(seq 28 -1 17); do platforms+=(--platform "manylinux_2_${v}_x86_64"); done
platforms+=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64)

echo "downloading binary wheels for CPython $PYVER ..."
"$PY" -m pip download -q --dest "$work/dl" --python-version "$PYVER" --only-binary=:all: "${platforms[@]}" \
    "${PINNED[@]}" "${FVCORE_DEPS[@]}"
echo "building fvcore and iopath from their sdists (pure python) ..."
"$PY" -m pip wheel -q --no-deps --wheel-dir "$work/dl" fvcore==0.1.5.post20221221 iopath==0.1.10

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
    echo "  $(basename "$whl"): ${before} kB -> $(du -k "$whl" | cut -f1) kB"
}

for name in $DROP; do rm -f "$work/dl/${name}"-[0-9]*.whl; done
ray_whl=$(echo "$work"/dl/ray-*.whl)
pyarrow_whl=$(echo "$work"/dl/pyarrow-*.whl)
echo "slimming:"
slim "$ray_whl" ray/jars ray/dashboard/client/build
# pyarrow.lib links the core, compute, acero, dataset, parquet and substrait libraries, so only
# Flight, S3 (Ray's storage imports it optionally), the headers, tests, Cython sources and the
# duplicate copies of libarrow_python (the loader asks for its soname, libarrow_python.so.NNNN) go.
slim "$pyarrow_whl" 'pyarrow/libarrow_flight.so*' 'pyarrow/libarrow_python_flight.so*' 'pyarrow/_flight.*.so' \
    'pyarrow/libarrow_s3.so*' 'pyarrow/_s3fs.*.so' 'pyarrow/_pyarrow_cpp_tests.*.so' \
    'pyarrow/libarrow_python.so' 'pyarrow/libarrow_python.so.*.*' \
    'pyarrow/libarrow_python_parquet_encryption.so*' 'pyarrow/_parquet_encryption.*.so' \
    'pyarrow/_dataset_parquet_encryption.*.so' \
    pyarrow/include pyarrow/includes pyarrow/tests pyarrow/src 'pyarrow/*.pxd' 'pyarrow/*.pxi' 'pyarrow/*.pyx'

rm -f "$DEST"/ray/*.whl "$DEST"/deps/*.whl
mv "$work"/dl/ray-*.whl "$DEST/ray/"
mv "$work"/dl/*.whl "$DEST/deps/"
echo
du -sh "$DEST/ray" "$DEST/deps" "$DEST"
