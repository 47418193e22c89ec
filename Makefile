# The two commands of the README: `make sweep` (a 20-seed sweep into ./mlruns) and `make test` (the test suite).
# Each sets itself up: a virtualenv in .venv, the package with pinned torch, and Fashion-MNIST when missing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PRESET ?= auto
N      ?= 20
PYTEST_ARGS ?=
DATA   := $(PY) -c "import sys; from landscape_core.data import main; sys.exit(main(sys.argv[1:]))"

.PHONY: sweep grid optimizers spawn test install data slurm chromium ui lint bench clean-store

sweep: install data
	$(PY) -m sweeps.seeds --n $(N) --preset $(PRESET)

# A small 2-axis hyperparameter grid (issue 12): lr x batch size, 2 seeds per point, every model trained to the same
# train loss (0.35, at most 10 epochs), quick preset: about 12 min on the 2-core CPU reference machine.
GRID_ARGS ?= --lr 0.01,0.03 --batch-size 64,256 --seeds-per-point 2 --stop-at-train-loss 0.35 --epochs 10
grid: install data
	$(PY) -m sweeps.grid $(GRID_ARGS) --preset $(PRESET)

# The paper's "why SGD" question (issue 22): SGD against full-batch GD and SAM at one lr and momentum, 3 seeds each
# (same seed: same initialization and data), all trained to one train loss on 1,000 images, lambda_max tracked every 2
# steps (the edge-of-stability figure). Quick preset's analyses; measured on the 2-core CPU: README, "Why SGD".
OPTIMIZER_ARGS ?= --optimizer sgd,gd,sam --seeds-per-point 3 --lr 0.05 --train-size 1000 --test-size 2000 \
	--stop-at-train-loss 0.5 --epochs 150 --track-every 2 --retest-trials 0
optimizers: install data
	$(PY) -m sweeps.grid $(OPTIMIZER_ARGS) --preset $(PRESET) --study-name optimizers-$(PRESET)

# Where minima come from (issue 23): instability analysis, a trunk to epoch k and two branches in different batch
# orders, k = 0, 1, 2, 3 pairs each, beside 3 independent pairs. Measured on the 2-core CPU: README, "Where minima".
SPAWN_ARGS ?= --spawn-epochs 0,1,2 --pairs 3
spawn: install data
	$(PY) -m sweeps.spawn $(SPAWN_ARGS) --preset $(PRESET)

test: install data slurm chromium
	$(PY) -m pytest -q $(PYTEST_ARGS)

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

# Fashion-MNIST: found in $LANDSCAPE_DATA_DIR, /usr/share/datasets/fashion-mnist or ./data; otherwise Debian's
# package (as root or with sudo), and torchvision's download into ./data as the last resort.
data: install
	@$(DATA) >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1; then \
	    SUDO=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
	    { $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist; } || true; \
	  fi; \
	  $(DATA) >/dev/null 2>&1 || $(DATA) --download; \
	}
	@$(DATA)

# SLURM for the array-job tests (tests/sweeps/test_slurm.py start their own one-node cluster from these programs):
# Debian's slurm-wlm and munge when slurmctld is missing, as root or with passwordless sudo; otherwise nothing (the
# tests then say why they cannot run). Installing starts no daemon that the tests use.
SBIN_PATH := $(PATH):/usr/sbin:/sbin
slurm:
	@PATH="$(SBIN_PATH)" command -v slurmctld >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1 && { [ "$$(id -u)" -eq 0 ] || sudo -n true 2>/dev/null; }; then \
	    SUDO=$$([ "$$(id -u)" -eq 0 ] || echo "sudo -n"); \
	    echo "installing slurm-wlm and munge (Debian) for the SLURM tests"; \
	    { $$SUDO apt-get update -qq && \
	      $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null; } || true; \
	  fi; \
	}

# Debian's Chromium for the MLflow UI tests (tests/tracking/test_ui_browser.py drive it headless through playwright,
# which never downloads a browser of its own): installed when /usr/bin/chromium is missing, as root or with
# passwordless sudo; otherwise nothing (the tests then fail on Debian, where this could have installed it, and skip
# elsewhere, saying why).
chromium:
	@[ -x /usr/bin/chromium ] || { \
	  if command -v apt-get >/dev/null 2>&1 && { [ "$$(id -u)" -eq 0 ] || sudo -n true 2>/dev/null; }; then \
	    SUDO=$$([ "$$(id -u)" -eq 0 ] || echo "sudo -n"); \
	    echo "installing chromium (Debian) for the MLflow UI tests"; \
	    { $$SUDO apt-get update -qq && \
	      $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || true; \
	  fi; \
	}

ui: install
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db --host 127.0.0.1 --port 5000

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

# PyHessian 0.1 and hessian-eigenthings 1.0.0a5 are benchmark-only peers: installed without their pinned dependencies.
bench: install data
	$(PY) -m pip install --quiet --no-deps pyhessian==0.1 hessian-eigenthings==1.0.0a5
	$(PY) -m benchmarks.run --quick
