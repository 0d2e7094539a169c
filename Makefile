# Every target builds .venv from the pinned lock file first, so a fresh clone needs only `make demo` / `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DATA   ?= data/phantom
export OMP_NUM_THREADS ?= 2
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: venv demo test test-all phantom bench study study-ablations clean

$(STAMP): requirements-lock.txt requirements-label.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24"
	$(BIN)/python -m pip install -q -r requirements-lock.txt
	$(BIN)/python -m pip install -q --no-deps -r requirements-label.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $@

venv: $(STAMP)

## make demo: one seed of the study's three arms (CLIP, eCLIP, random heatmaps), 5 epochs, end to end (~15 min)
demo: $(STAMP)
	$(BIN)/python scripts/demo.py

## make study: the pre-registered eCLIP vs CLIP study (docs/study.md) -> docs/results.{md,json} (about 75 min on 2 cores)
study: $(STAMP)
	$(BIN)/python scripts/study.py

## make study-ablations: no mixup / no priming / no curriculum, paired with the study's eCLIP runs (about 45 min)
study-ablations: $(STAMP)
	$(BIN)/python scripts/study.py --ablations

## make test: the test suite (slow-marked tests excluded; `make test-all` runs them too), one file per worker
## process (pytest-xdist; most tests drive single-threaded subprocesses), one BLAS thread per worker
TEST_WORKERS ?= 2
TEST_ARGS    := -q -n $(TEST_WORKERS) --dist loadfile
test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest $(TEST_ARGS) -m "not slow"

test-all: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest $(TEST_ARGS)

## make bench: every benchmark against its named reference -> docs/performance.{md,json} (15-30 min on 2 cores)
bench: $(STAMP)
	$(BIN)/python scripts/bench_all.py

phantom: $(STAMP)
	$(BIN)/python scripts/make_phantom_data.py --out $(DATA) --studies 1000 --seed 0

clean:
	rm -rf $(VENV) runs .pytest_cache
