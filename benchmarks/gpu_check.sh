#!/usr/bin/env bash
# The one-shot GPU check, in ONE call to a machine with one GPU, Python 3.12 and torch; from the
# repository root, with the wheels folder of benchmarks/build_gpu_wheels.sh beside the repository:
#
#     bash benchmarks/gpu_check.sh [--wheels DIR] [gpu_check.py options]    # DIR: .gpu_wheels/
#     bash benchmarks/gpu_check.sh --dry-run [gpu_check.py options]         # on a CPU, tiny sizes, no install
#
# 1. installs the wheels whose package this interpreter lacks into GPU_CHECK_DEPS (default: a
#    temporary folder) offline and without dependencies, so torch is never touched;
# 2. runs the smoke (benchmarks/gpu_smoke.py: memory share, one bf16 epoch, eager vs CUDA-graph
#    latency, 1 vs 4 processes), which needs neither Optuna nor Ray, so it reports even when they fail;
# 3. runs the search check (benchmarks/gpu_check.py) in the time left;
# 4. packs everything (logs, CSVs, Tune's error files, workers' stderr) into $OUT/gpu_check.tar.gz
#    and writes $OUT/summary.txt: two files, whatever happened above ($OUT defaults to
#    results/bench/gpu_check/).
# GPU_CHECK_WALL (default 480, a dry run 900) is the whole run's limit in seconds; GPU_CHECK_SMOKE lists the smoke's
# sections (default all). Exit status: 0 only when every section is "ok" (or not applicable).
set -uo pipefail

cd "$(dirname "$0")/.."
dry=()
wheels=.gpu_wheels
while [ $# -gt 0 ]; do
    case $1 in
        --dry-run) dry=(--dry-run); shift ;;
        --wheels) wheels=$2; shift 2 ;;
        *) break ;;
    esac
done
PY=${PYTHON:-$(command -v python3 || command -v python)}
# A dry run gets more: a shared CPU is slower at the tiny sizes than the GPU at the real ones.
if [ ${#dry[@]} = 0 ]; then wall=${GPU_CHECK_WALL:-480}; else wall=${GPU_CHECK_WALL:-900}; fi
out=${OUT:-results/bench/gpu_check}
stage=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_stage.XXXXXX")
notes=$stage/notes.txt
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"  # the repository itself needs no install
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
# the generated data set, shared by the smoke and the check, and not packed (hundreds of MB)
cache=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_cache.XXXXXX")
made=("$stage" "$cache")  # removed at the end
export LIGHTSEG_CACHE=$cache
note() { echo "$*" | tee -a "$notes"; }

finish() {  # always: two files back, whatever failed above
    note "whole run: ${SECONDS} s of ${wall} s"
    rm -rf "$out/gpu_check.tar.gz" "$out/summary.txt"
    "$PY" benchmarks/gpu_check_report.py "$stage" "$out" || note "packing failed"
    rm -rf "${made[@]}"
}
trap finish EXIT

note "python: $PY ($("$PY" -V 2>&1)); dry run: ${dry[*]:-no}"
if [ ${#dry[@]} = 0 ]; then
    if [ -d "$wheels" ]; then
        deps=${GPU_CHECK_DEPS:-$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_deps.XXXXXX")}
        [ -z "${GPU_CHECK_DEPS:-}" ] && made+=("$deps")
        export PYTHONPATH="$PYTHONPATH:$deps"  # behind the repository, in front of the site packages
        missing=$("$PY" benchmarks/gpu_check_wheels.py install "$wheels" 2>>"$stage/install.log")
        note "installing $(echo "$missing" | grep -c .) wheel(s) into $deps"
        grep -m 5 "^warning" "$stage/install.log" | while read -r line; do note "$line"; done
        # --no-compile: byte-compiling all of ray costs more than compiling what gets imported
        # shellcheck disable=SC2086
        if [ -n "$missing" ] && ! timeout 240 "$PY" -m pip install -q --no-index --no-deps --no-compile \
                --target "$deps" $missing >>"$stage/install.log" 2>&1; then
            note "pip install failed (install.log in the archive): the smoke runs, the search will not"
        fi
    else
        note "no wheels folder $wheels: nothing installed"
    fi
    "$PY" - >>"$notes" 2>&1 <<'EOF'
import importlib
for name in ("optuna", "ray.tune", "pyarrow.fs", "fvcore", "onnxruntime"):
    try:
        mod = importlib.import_module(name)
        print(f"import {name}: {getattr(mod, '__version__', 'ok')}")
    except Exception as exc:
        print(f"import {name}: FAILED {type(exc).__name__}: {exc}")
EOF
fi
note "installed and checked in ${SECONDS} s"

# The smoke first: about a minute on the GPU (a fifth of the wall), a quarter of the wall in a dry run.
if [ ${#dry[@]} = 0 ]; then smoke_s=$(( wall / 5 > 60 ? wall / 5 : 60 )); else smoke_s=$(( wall / 4 )); fi
timeout -k 5 "$smoke_s" "$PY" benchmarks/gpu_smoke.py ${dry[@]+"${dry[@]}"} --out "$stage/smoke" \
    --only "${GPU_CHECK_SMOKE:-share,fit,graphs,procs}" --deadline $((smoke_s - 10))
smoke_rc=$?
[ $smoke_rc = 124 ] && note "the smoke hit its hard limit of ${smoke_s} s"

# The search check in what is left, less 30 s to pack; it plans its sections to end 20 s before
# its hard limit, which only a hang should reach.
left=$((wall - SECONDS - 30))
if [ $left -gt 40 ]; then
    timeout -k 10 "$left" "$PY" benchmarks/gpu_check.py ${dry[@]+"${dry[@]}"} --out "$stage/check" --deadline $((left - 20)) "$@"
    check_rc=$?
    [ $check_rc = 124 ] && note "gpu_check.py hit its hard limit of ${left} s"
else
    note "no time left for the search check (${left} s)"
    check_rc=1
fi
exit $(( smoke_rc != 0 || check_rc != 0 ))
