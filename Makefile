# Two commands matter: `make search` and `make test`. Both bootstrap .venv on a bare machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BUDGET ?= 100

.PHONY: search test test-slow bench bench-quality clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first and pinned: an unpinned resolve would pull a multi-GB CUDA build.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	# the postgres extra: tests/test_postgres.py runs against a real server where one is installed
	$(PY) -m pip install -q -e '.[dev,postgres]'
	touch $(STAMP)

# --resume makes a second `make search` finish (or just re-report) the same study instead of
# refusing the existing folder; `make search ARGS=--force` starts afresh (without --resume, which
# the search refuses beside --force).
search: $(STAMP)
	$(PY) -m nas.search --budget $(BUDGET) $(if $(filter --force,$(ARGS)),,--resume) $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

bench: $(STAMP)
	$(PY) benchmarks/bench_costs.py
	$(PY) benchmarks/bench_trial.py
	$(PY) benchmarks/bench_search.py
	$(PY) benchmarks/fidelity.py
	$(PY) benchmarks/bench_data.py
	$(PY) benchmarks/bench_data_path.py
	$(PY) benchmarks/latency_backends.py
	$(PY) benchmarks/deploy_latency.py

bench-quality: $(STAMP)
	$(PY) benchmarks/search_quality.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
