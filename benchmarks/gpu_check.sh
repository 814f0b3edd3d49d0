#!/usr/bin/env bash
# The one-shot GPU check, from the repository root of a machine with one GPU, Python and torch:
#
#     bash benchmarks/gpu_check.sh WHEELS [gpu_check.py options]   # WHEELS: from build_gpu_wheels.sh
#     bash benchmarks/gpu_check.sh --install-only WHEELS           # install and import-check, no run
#
# Installs the wheels under WHEELS (subfolders too) whose package this interpreter lacks into
# GPU_CHECK_DEPS (default .gpu_deps/ in the repository, git-ignored) offline and without
# dependencies, so torch and whatever else is installed is never touched; then runs
# benchmarks/gpu_check.py under a hard time limit. Results go to $OUT, else results/bench/gpu_check/.
# GPU_CHECK_WALL (default 470) is the whole run's limit in seconds, installation included.
set -uo pipefail

install_only=0
if [ "${1:-}" = "--install-only" ]; then install_only=1; shift; fi
if [ $# -lt 1 ] || [ ! -d "$1" ]; then
    echo "usage: bash benchmarks/gpu_check.sh [--install-only] WHEELS [gpu_check.py options]" >&2
    exit 2
fi
wheels=$(cd "$1" && pwd)
shift
cd "$(dirname "$0")/.."
repo=$(pwd)
PY=${PYTHON:-$(command -v python3 || command -v python)}
wall=${GPU_CHECK_WALL:-470}
out=${OUT:-results/bench/gpu_check}
deps=$(mkdir -p "${GPU_CHECK_DEPS:-.gpu_deps}" && cd "${GPU_CHECK_DEPS:-.gpu_deps}" && pwd)
mkdir -p "$out"
export PYTHONPATH="$repo:$deps${PYTHONPATH:+:$PYTHONPATH}"  # the repo itself needs no install
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1

# What this interpreter lacks (or has too old for what is installed beside it); never torch.
missing=$("$PY" benchmarks/gpu_check_wheels.py "$wheels" 2> >(tee "$out/install_notes.log" >&2))
{
    echo "python: $PY ($("$PY" -V 2>&1))"
    if [ -n "$missing" ]; then
        echo "installing $(echo "$missing" | wc -l) wheel(s) into $deps:"
        echo "$missing" | sed 's|.*/|  |'
        # --no-compile: byte-compiling all of ray costs more than compiling what gets imported
        # shellcheck disable=SC2086
        if ! timeout 240 "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$deps" $missing; then
            echo "one pip call failed; installing the wheels one by one"
            for whl in $missing; do
                timeout 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$deps" "$whl" \
                    || echo "FAILED: $whl"
            done
        fi
    else
        echo "nothing to install"
    fi
    echo "installed in ${SECONDS} s; imports:"
    "$PY" - <<'EOF'
import importlib
for name in ("torch", "optuna", "sqlalchemy", "ray", "ray.tune", "pyarrow.fs", "fvcore", "iopath", "onnxruntime"):
    try:
        mod = importlib.import_module(name)
        print(f"  {name:12s} {getattr(mod, '__version__', 'ok')}  {getattr(mod, '__file__', '')}")
    except Exception as exc:
        print(f"  {name:12s} NOT IMPORTABLE: {type(exc).__name__}: {exc}")
import torch
print(f"  CUDA: {torch.cuda.is_available()}, torch CUDA {torch.version.cuda}")
EOF
} 2>&1 | tee "$out/install.log"

[ "$install_only" = 1 ] && exit 0
left=$((wall - SECONDS))
# the check plans its sections to end 20 s before the hard limit, which only a hang should reach
timeout -k 10 "$left" "$PY" benchmarks/gpu_check.py --out "$out" --deadline $((left - 20)) "$@"
rc=$?
[ $rc = 124 ] && echo "gpu_check.py hit the hard limit of ${wall} s (partial results are in $out)"
exit $rc
