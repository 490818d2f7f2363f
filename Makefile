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

# The committed SFNO checkpoints (checkpoints/default/), reproduced into out/default/checkpoints/:
# the 7-year truth store, then per seed a 40-epoch run on 1-, 2- and 4-step rollouts
# (configs/default-gpu.yaml) and a fine-tune on 4- and 8-step rollouts with the adjusted MSE
# (configs/default-gpu-finetune.yaml). On one H100, `make -j4 checkpoints` takes about 8 + 5 min;
# a CPU takes about 100 times longer. Training is idempotent: a finished run is left as it is,
# an interrupted one resumes.
SEEDS := 1 2 3 4
TRUTH := out/default/truth.zarr
STAGES := out/default/checkpoints

truth: $(TRUTH)

$(TRUTH): | $(STAMP)
	$(VENV)/bin/wxens data truth --config configs/default.yaml --out $@ --quiet

TRAIN_SEEDS := $(foreach seed,$(SEEDS),train-seed$(seed))

checkpoints: $(TRAIN_SEEDS)

$(TRAIN_SEEDS): train-seed%: | $(TRUTH)
	$(VENV)/bin/wxens train --config configs/default-gpu.yaml --seed $* \
		--out $(STAGES)/stage1/sfno-seed$* --quiet
	$(VENV)/bin/wxens train --config configs/default-gpu-finetune.yaml --seed $* \
		--init-from $(STAGES)/stage1/sfno-seed$* --out $(STAGES)/sfno-seed$* --quiet
.PHONY: $(TRAIN_SEEDS)
