# The two set-up commands: `make demo` and `make test`. Each creates .venv when missing.
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo limit targets test lint truth checkpoints fgn-checkpoint vae-checkpoint diffusion-checkpoint

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/python -m wxens.forecast.demo

# The predictability limit of the demo's SFNO ensemble, after `make demo`: 16 members of the
# truth's own T42 model (member kind `truth`) from the SFNO members' own perturbed analyses
# (configs/demo-limit.yaml), verified with the SFNO, NWP and persistence into out/demo/limit/.
limit: $(STAMP)
	$(VENV)/bin/python -m wxens.forecast.demo --limit

# The targets of a trustworthy ensemble on 32 inits (forecast/acceptance.py): each kind's
# 100-member hindcast (the limit's 16) on the demo's truth run on to 182 days, its statistics
# store, and the table with block-bootstrap intervals (out/targets/targets.md). Hours of CPU:
# each step resumes where it stopped; SYSTEMS=nwp,sfno,limit runs some of them.
SYSTEMS ?= nwp,sfno,limit,fgn,vae,mixed,diffusion
targets: $(STAMP)
	$(VENV)/bin/python -m wxens.forecast.acceptance --systems $(SYSTEMS)

# Tests: one torch/OpenMP thread in each of the two pytest workers (the runner's tasks set
# their own); two workers of several threads each would oversubscribe two cores.
test: $(STAMP)
	$(VENV)/bin/ruff check .
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet
	OMP_NUM_THREADS=1 $(VENV)/bin/python -m pytest -q -n 2 --dist loadfile --durations=12

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

# The committed FGN checkpoint (checkpoints/fgn/fgn-seed1), reproduced into out/fgn/: the default
# truth's first two years, then the SFNO of seed 1 fine-tuned as an FGN on the fair CRPS
# (configs/default-fgn.yaml); about 9 + 30 min on this 2-core CPU.
FGN_TRUTH := out/fgn/truth.zarr

$(FGN_TRUTH): | $(STAMP)
	$(VENV)/bin/wxens data truth --config configs/default-fgn.yaml --out $@ --quiet

fgn-checkpoint: | $(FGN_TRUTH)
	$(VENV)/bin/wxens train --config configs/default-fgn.yaml --model fgn --seed 1 \
		--init-from checkpoints/default/sfno-seed1 --out out/fgn/checkpoints/fgn-seed1 --quiet

# The committed VAE checkpoint (checkpoints/vae/vae-seed1), reproduced into out/vae/: the SFNO of
# seed 1 fine-tuned as a conditional VAE (configs/default-vae.yaml) on the FGN's truth store and
# schedule; 31 min of CPU time on one torch thread (40 min wall beside other jobs).
vae-checkpoint: | $(FGN_TRUTH)
	$(VENV)/bin/wxens train --config configs/default-vae.yaml --model vae --seed 1 \
		--init-from checkpoints/default/sfno-seed1 --out out/vae/checkpoints/vae-seed1 --quiet

# The committed diffusion checkpoint (checkpoints/diffusion/diffusion-seed1), into out/diffusion/:
# the residual EDM model of configs/default-diffusion.yaml, the committed SFNO of seed 1 frozen
# as its mean, its denoiser trained from scratch on that SFNO's errors on the FGN's truth store.
diffusion-checkpoint: | $(FGN_TRUTH)
	$(VENV)/bin/wxens train --config configs/default-diffusion.yaml --model diffusion --seed 1 \
		--init-from checkpoints/default/sfno-seed1 --out out/diffusion/checkpoints/diffusion-seed1 \
		--quiet
