# The two set-up commands: `make demo` and `make test`. Each creates .venv when missing.
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test lint truth checkpoints

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/python -m forecast.demo

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

# The committed SFNO checkpoints, reproduced: the 7-year truth store, then one training run per
# seed, two at a time with one CPU thread each (`make -j2 checkpoints`, about 35 min per pair
# on 2 CPU cores; CUDA when present). Training is idempotent: a finished checkpoint is left as
# it is, an interrupted one resumes.
SEEDS := 1 2 3 4
TRUTH := out/default/truth.zarr

truth: $(TRUTH)

$(TRUTH): | $(STAMP)
	$(VENV)/bin/wxens data truth --config configs/default.yaml --out $@ --quiet

TRAIN_SEEDS := $(foreach seed,$(SEEDS),train-seed$(seed))

checkpoints: $(TRAIN_SEEDS)

$(TRAIN_SEEDS): train-seed%: | $(TRUTH)
	OMP_NUM_THREADS=1 $(VENV)/bin/wxens train --config configs/default.yaml --seed $* \
		--out checkpoints/default/sfno-seed$* --quiet
.PHONY: $(TRAIN_SEEDS)
