# Two commands get a newcomer from a fresh clone to results:
#   make repro   - create .venv, install the locked dependencies, run the DVC pipeline
#   make test    - the same set-up if needed, then the whole test suite
# Both are idempotent: the install re-runs only when requirements.lock changes.
# `make reproduce` re-runs the whole pipeline and checks the committed metrics (CI does).

PYTHON ?= python3
VENV   := .venv
BIN    := $(abspath $(VENV))/bin
STAMP  := $(VENV)/.installed-lock

# DVC runs each stage's `python -m stages.<name>` through the shell: use the venv's python.
export PATH := $(BIN):$(PATH)
export PYTHONDONTWRITEBYTECODE := 1

# `make reproduce`: allowed drift from the committed metrics (accuracy: absolute; others: relative).
TOLERANCE ?= 0.002
LOSS_RTOL ?= 0.10

.PHONY: cnn cnn-fast dense-best install repro test test-fast lint reproduce report summary comment serve server server-stop remote lock-check lock clean

$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "Installing the locked dependencies into $(VENV) (a few minutes the first time)..."
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .  # the mnist-predict command
	@touch $(STAMP)

install: $(STAMP)

repro: install
	dvc repro

test: lint
	python -m pytest -m "slow or not slow"

test-fast: install
	python -m pytest

# ruff's lint rules and format check, configured in pyproject.toml (also a pre-commit hook).
lint: install
	ruff check .
	ruff format --check .
	actionlint .github/workflows/*.yml

# Run every stage again from nothing (no cached results, data fetched anew) and
# fail if the metrics drift from those committed at HEAD.
reproduce: install
	dvc repro --force
	python -m stages.metrics_check --tolerance $(TOLERANCE) --loss-rtol $(LOSS_RTOL)

# Fail when dvc.lock is stale against the code and params (CI's first gate).
lock-check: install
	python -m stages.lock_check

# The pull-request report: metrics and params against BASE (default: the merge
# base with main, or HEAD~1), curves and confusion matrices, in reports/pr/.
BASE ?=
report: install
	python -m stages.report $(if $(BASE),--base $(BASE))

# Tables only, for a CI job summary (images cannot be shown there).
summary:
	@cat reports/pr/summary.md

# Post the report as one pull-request comment, updated in place on each push
# (CML; GitHub Actions installs it and provides REPO_TOKEN).
CML ?= cml
comment:
	$(CML) comment update --target=pr --watermark-title="MNIST pipeline report" reports/pr/report.md

# Recipes (README, "Results"): each is one ordinary DVC experiment, e.g.
# `make cnn SEED=2`; the same as `dvc exp run -n cnn-seed2 <its -S flags> -S train.seed=2`.
SEED ?= 1
RECIPE_cnn := -S model.kind=cnn -S model.dropout=0.25 -S train.augment=true -S train.schedule=onecycle \
  -S train.learning_rate=0.003 -S train.batch_size=128 -S train.epochs=15
# cnn-fast: the same network with each block's pooling before its batch norm, 8 epochs (docs/recipes.md).
RECIPE_cnn-fast := -S model.kind=cnn -S model.cnn.pool_first=true -S model.dropout=0.25 -S train.augment=true \
  -S train.schedule=onecycle -S train.learning_rate=0.003 -S train.batch_size=128 -S train.epochs=8
RECIPE_dense-best := -S 'model.hidden_units=[1024]' -S model.dropout=0.2 -S train.augment=true \
  -S train.schedule=onecycle -S train.learning_rate=0.002 -S train.batch_size=128 -S train.epochs=30
cnn cnn-fast dense-best: install
	dvc exp run -n $@-seed$(SEED) $(RECIPE_$@) -S train.seed=$(SEED)

# Serve the registry's champion over HTTP on 127.0.0.1:$(PORT) (see README, "Serving").
PORT ?= 5001
serve: install
	MLFLOW_TRACKING_URI="$${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlflow.db}" \
	  mlflow models serve -m "models:/mnist-classifier@champion" --env-manager local -h 127.0.0.1 -p $(PORT)

# A team-style tracking server on 127.0.0.1:$(SERVER_PORT): PostgreSQL backend
# (MLFLOW_BACKEND_URI, or a throw-away cluster in .server/) and proxied
# artifacts. See README, "Team use".
SERVER_HOST ?= 127.0.0.1
SERVER_PORT ?= 5000
server: install
	python -m stages.server start --host $(SERVER_HOST) --port $(SERVER_PORT)

server-stop:
	python -m stages.server stop

# A shared DVC remote, in this clone's .dvc/config.local (never committed):
#   make remote REMOTE=s3://bucket/mnist   or   make remote REMOTE=/shared/dvc-store
REMOTE ?=
remote:
	@test -n "$(REMOTE)" || { echo "make remote: set REMOTE=<url or directory>"; exit 2; }
	dvc remote add --local --default --force shared "$(REMOTE)"

# Regenerate requirements.lock from pyproject.toml (Linux x86-64, CPython 3.11).
lock:
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet uv==0.13.8
	.venv-lock/bin/uv pip compile pyproject.toml --extra dev --extra server --extra demo --python-version 3.11 \
	  --python-platform x86_64-manylinux_2_28 --generate-hashes --no-header \
	  --index-url https://pypi.org/simple -o requirements.lock
	rm -rf .venv-lock

clean:
	rm -rf $(VENV)
