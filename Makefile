# Two commands get a newcomer from a fresh clone to results:
#   make repro   - create .venv, install the locked dependencies, run the DVC pipeline
#   make test    - the same set-up if needed, then the whole test suite
# Both are idempotent: the install re-runs only when requirements.lock or pyproject.toml changes.
# `make reproduce` re-runs the whole pipeline and checks the committed metrics (CI does).

PYTHON ?= python3
# INFERENCE=1: the inference-only environment instead (.venv-inference from requirements-inference.lock:
# predict, serve and the demo through the model's ONNX form, without TensorFlow, DVC or Optuna).
ifeq ($(INFERENCE),1)
VENV   := .venv-inference
LOCK   := requirements-inference.lock
# Python compiles its bytecode on first import instead; pip and setuptools (the installer and the
# editable install's build backend, 21 MB) leave once the install is done (ensurepip brings them back for
# the next install), and so do the packages' test suites: the environment stays small.
PIP_INSTALL_FLAGS := --no-compile
ENSURE_PIP := $(abspath $(VENV))/bin/python -m pip --version >/dev/null 2>&1 || \
  $(abspath $(VENV))/bin/python -m ensurepip --default-pip >/dev/null
DROP_PIP := $(abspath $(VENV))/bin/python -m pip uninstall --quiet --yes --disable-pip-version-check pip setuptools
# The test suites that NumPy, pandas and SciPy ship (42 MB) go too: nothing here runs them.
DROP_TESTS := for dir in "$(abspath $(VENV))"/lib/python3*/site-packages/numpy \
  "$(abspath $(VENV))"/lib/python3*/site-packages/pandas "$(abspath $(VENV))"/lib/python3*/site-packages/scipy; do \
  if [ -d "$$dir" ]; then find "$$dir" -type d -name tests -prune -exec rm -rf {} +; fi; done
else
VENV   := .venv
LOCK   := requirements.lock
PIP_INSTALL_FLAGS :=
ENSURE_PIP := true
DROP_PIP := true
DROP_TESTS := true
endif
BIN    := $(abspath $(VENV))/bin
STAMP  := $(VENV)/.installed-lock

# DVC runs each stage's `python -m stages.<name>` through the shell: use the venv's python.
export PATH := $(BIN):$(PATH)
export PYTHONDONTWRITEBYTECODE := 1

# `make reproduce`: allowed drift from the committed metrics (accuracy: absolute; others: relative).
TOLERANCE ?= 0.002
LOSS_RTOL ?= 0.10

.PHONY: help cnn cnn-fast cnn-best dense-best tune tune-worker tune-best install install-inference repro test test-fast lint reproduce report summary comment serve demo server server-stop remote lock-check lock clean clean-state ui

.DEFAULT_GOAL := help
help:  ## Every target and what it does (this list)
	@awk 'BEGIN {FS = ":[^#]*## "} /^[a-z][a-zA-Z _-]*:.*## / \
	  {if (length($$1) > 22) printf "  %s\n  %-22s %s\n", $$1, "", $$2; else printf "  %-22s %s\n", $$1, $$2}' \
	  $(MAKEFILE_LIST)

$(STAMP): $(LOCK) pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -c 'import sys; v = "%d.%d" % sys.version_info[:2]; sys.exit(v != "3.11" and \
	  "install: error: $(PYTHON) is Python %s, and the locks are for 3.11: install Python 3.11 and run make again with PYTHON=python3.11" % v)'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(ENSURE_PIP)
	@echo "Installing the locked dependencies into $(VENV) (a few minutes the first time)..."
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(PIP_INSTALL_FLAGS) --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .  # the mnist-predict command
	@$(DROP_PIP)
	@$(DROP_TESTS)
	@touch $(STAMP)

install: $(STAMP)  ## Create .venv and install the locked dependencies (again only when the lock or pyproject.toml changes)

install-inference:  ## The inference-only environment .venv-inference (no TensorFlow): then `make serve INFERENCE=1`
	@$(MAKE) --no-print-directory install INFERENCE=1

# The demo page in the inference-only environment: Gradio on top (requirements-inference-demo.lock). No
# conflict report: the project is installed there without its training dependencies (DVC, TensorFlow), by design.
DEMO_STAMP := $(VENV)/.installed-demo-lock
$(DEMO_STAMP): requirements-inference-demo.lock $(STAMP)
	@$(ENSURE_PIP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-warn-conflicts $(PIP_INSTALL_FLAGS) \
	  --require-hashes -r requirements-inference-demo.lock
	@$(DROP_PIP)
	@$(DROP_TESTS)
	@touch $(DEMO_STAMP)

# Ends with one line: the metrics reproduced HEAD's exactly, within tolerance
# (a different CPU rounds differently), or not (a warning; the status stays 0).
repro: install  ## Run the DVC pipeline, then say whether the metrics reproduced the committed ones
	dvc repro
	@python -m stages.tools.metrics_check --verdict --tolerance $(TOLERANCE) --loss-rtol $(LOSS_RTOL)

test: lint  ## Lint and the whole test suite, slow tests included (what CI runs)
	python -m pytest -m "slow or not slow" -n auto --dist loadgroup --durations=20

test-fast: install  ## The fast tests only (under a minute)
	python -m pytest

# ruff's lint rules and format check, configured in pyproject.toml (also a pre-commit hook).
lint: install  ## ruff check, ruff format --check, actionlint
	ruff check .
	ruff format --check .
	actionlint .github/workflows/*.yml

# Run every stage again (no cached results; data/raw is kept when its files verify,
# as fetch checks them) and fail if the metrics drift from those committed at HEAD.
reproduce: install  ## Every stage again, none from cache; fail when the metrics drift from HEAD's
	dvc repro --force
	python -m stages.tools.metrics_check --tolerance $(TOLERANCE) --loss-rtol $(LOSS_RTOL)

# Fail when dvc.lock is stale against the code and params (CI's first gate).
lock-check: install  ## Fail when dvc.lock is stale against the code and params
	python -m stages.tools.lock_check

# The pull-request report: metrics and params against BASE (default: the merge
# base with main, or HEAD~1), curves and confusion matrices, in reports/pr/.
BASE ?=
report: install  ## The pull-request report against BASE (reports/pr/)
	python -m stages.tools.report $(if $(BASE),--base "$$BASE")

# Tables only, for a CI job summary (images cannot be shown there).
summary:  ## Print the report's tables (for a CI job summary)
	@cat reports/pr/summary.md

# Post the report as one pull-request comment, updated in place on each push
# (CML; GitHub Actions installs it and provides REPO_TOKEN).
CML ?= cml
comment:  ## Post the report as one pull-request comment (CML)
	$(CML) comment update --target=pr --watermark-title="MNIST pipeline report" reports/pr/report.md

# Recipes (docs/recipes.md): each is one ordinary DVC experiment, e.g.
# `make cnn SEED=2`; the same as `dvc exp run -n cnn-seed2 <its -S flags> -S train.seed=2`.
SEED ?= 1
RECIPE_cnn := -S model.kind=cnn -S model.dropout=0.25 -S train.augment=true -S train.schedule=onecycle \
  -S train.learning_rate=0.003 -S train.batch_size=128 -S train.epochs=15
# cnn-fast: the same conv blocks with each block's pooling before its batch norm, a head of 256 units,
# TensorFlow's resampling kernel for the augmentation, 7 epochs (docs/recipes.md).
RECIPE_cnn-fast := -S model.kind=cnn -S model.cnn.pool_first=true -S 'model.hidden_units=[256]' -S model.dropout=0.25 \
  -S train.augment=true -S train.augment_kernel=fused -S train.schedule=onecycle -S train.learning_rate=0.003 \
  -S train.batch_size=128 -S train.epochs=7
# cnn-best: three conv blocks of 3x3 convolutions (32, 64, 128 filters), 20 epochs (docs/recipes.md).
RECIPE_cnn-best := -S model.kind=cnn -S 'model.cnn.filters=[32,64,128]' -S model.cnn.kernel_size=3 -S model.dropout=0.25 \
  -S train.augment=true -S train.augment_kernel=fused -S train.schedule=onecycle -S train.learning_rate=0.003 \
  -S train.batch_size=128 -S train.epochs=20
RECIPE_dense-best := -S 'model.hidden_units=[1024]' -S model.dropout=0.2 -S train.augment=true \
  -S train.schedule=onecycle -S train.learning_rate=0.002 -S train.batch_size=128 -S train.epochs=30
cnn cnn-fast cnn-best dense-best: install  ## A recipe as one DVC experiment: make cnn SEED=2 (docs/recipes.md)
	dvc exp run -n $@-seed$(SEED) $(RECIPE_$@) -S train.seed=$(SEED)

# Hyper-parameter studies on Optuna (docs/tuning.md), over a space of tune.yaml:
#   make tune STUDY=demo TRIALS=12 WORKERS=2   - create (or continue) the study, run K workers, wait
#   make tune-worker STUDY=demo                - one more worker, on any machine sharing TUNE_STORAGE
#   make tune-best STUDY=demo                  - the best trial as `dvc exp run -n tune-demo -S ...`
# Storage: TUNE_STORAGE=postgresql://... (shared), else .tune/optuna.journal (this clone only).
STUDY   ?=
TRIALS  ?= 12
WORKERS ?= 1
SPACE   ?= dense
tune: install  ## An Optuna study: make tune STUDY=name TRIALS=12 WORKERS=2 (docs/tuning.md)
	python -m stages.tools.tune run --study "$(STUDY)" --trials $(TRIALS) --workers $(WORKERS) --space $(SPACE)

tune-worker: install  ## Join study STUDY from this machine (TUNE_STORAGE=postgresql://...)
	python -m stages.tools.tune worker --study "$(STUDY)"

tune-best: install  ## Run study STUDY's best trial as an ordinary DVC experiment
	python -m stages.tools.tune best --study "$(STUDY)"

# Serve the registry's champion over HTTP on 127.0.0.1:$(PORT) (docs/experiments.md, "Serving"), through its
# ONNX form when it has one (RUNTIME=keras: through Keras), in WORKERS processes (default auto: one per core
# this process may use, at most 8, each with its share of the cores for onnxruntime; docs/speed.md).
PORT ?= 5001
WORKERS_SERVE ?= $(if $(filter command line,$(origin WORKERS)),$(WORKERS),auto)
RUNTIME ?= auto
serve: install  ## Serve the champion of params.yaml's data set (mnist-classifier) on 127.0.0.1:5001 (PORT=...)
	python -m stages.tools.serve --port "$(PORT)" --workers "$(WORKERS_SERVE)" --runtime "$(RUNTIME)"

# The draw-a-digit page (Gradio) on http://127.0.0.1:7860: `make demo PORT=8000`,
# `HOST=0.0.0.0` to listen beyond this machine (behind a login: user demo, a password
# printed once or DEMO_PASSWORD; AUTH=1 asks for it on loopback too, AUTH=0 beyond it is
# refused), `MODEL=<URI or .keras file>` (default: the registry's champion). See
# docs/demo.md. PORT and HOST are read from the command line only, so that `serve`'s
# default port stays its own.
DEMO_PORT ?= $(if $(filter command line,$(origin PORT)),$(PORT),7860)
DEMO_HOST ?= $(if $(filter command line,$(origin HOST)),$(HOST),127.0.0.1)
MODEL ?=
DEMO_FLAGS = $(if $(MODEL),--model "$(MODEL)")$(if $(filter 1 yes true,$(AUTH)), --auth)$(if $(filter 0 no false,$(AUTH)), --no-auth)
demo: install $(if $(filter 1,$(INFERENCE)),$(DEMO_STAMP))  ## The draw-a-digit page on http://127.0.0.1:7860 (docs/demo.md)
	python -m stages.tools.demo --host $(DEMO_HOST) --port $(DEMO_PORT) $(DEMO_FLAGS)

# A team-style tracking server on 127.0.0.1:$(SERVER_PORT) (docs/team.md): PostgreSQL
# backend (MLFLOW_BACKEND_URI, or a throw-away password-protected cluster), proxied
# artifacts in $(SERVER_DIR)/artifacts or ARTIFACTS=s3://bucket/prefix (the S3
# credentials and MLFLOW_S3_ENDPOINT_URL in the server's environment only).
# A host other than loopback needs AUTH=1 (MLflow's basic-auth app).
SERVER_HOST ?= 127.0.0.1
SERVER_PORT ?= 5000
SERVER_DIR  ?= .server
SERVER_NAME :=# the command line's only: CGI and some shells set SERVER_NAME in the environment
AUTH        ?=
ARTIFACTS   ?=
server: install  ## The team's tracking server (docs/team.md): AUTH=1, ARTIFACTS=s3://..., SERVER_HOST, SERVER_NAME
	python -m stages.tools.server start --host $(SERVER_HOST) --port $(SERVER_PORT) --dir "$(SERVER_DIR)" \
	  $(if $(filter 1 yes true,$(AUTH)),--auth) $(if $(ARTIFACTS),--artifacts "$(ARTIFACTS)") \
	  $(if $(SERVER_NAME),--name "$(SERVER_NAME)")

server-stop:  ## Stop what make server started
	python -m stages.tools.server stop --dir "$(SERVER_DIR)"

# A shared DVC remote, in this clone's .dvc/config.local (never committed, 0600):
#   make remote REMOTE=s3://bucket/mnist [ENDPOINT=https://minio.example.com]
#   make remote REMOTE=/shared/dvc-store
# The URL reaches the command through its environment and is never echoed (it may hold credentials).
REMOTE   ?=
ENDPOINT ?=
remote: export REMOTE := $(REMOTE)
remote: export ENDPOINT := $(ENDPOINT)
remote:  ## A shared DVC remote in .dvc/config.local: make remote REMOTE=s3://bucket/path [ENDPOINT=...]
	@python -m stages.tools.remote

# Regenerate requirements.lock from pyproject.toml (Linux x86-64, CPython 3.11), then the
# inference-only environment's locks from requirements-inference*.in, pinned to its versions.
lock:  ## Regenerate requirements.lock from pyproject.toml, and the inference-only locks from requirements-*.in
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet uv==0.13.8
	.venv-lock/bin/uv pip compile pyproject.toml --extra dev --extra server --extra demo --python-version 3.11 \
	  --python-platform x86_64-manylinux_2_28 --generate-hashes --no-header \
	  --index-url https://pypi.org/simple -o requirements.lock
	for env in inference inference-demo; do \
	  .venv-lock/bin/uv pip compile requirements-$$env.in -c requirements.lock --python-version 3.11 \
	    --python-platform x86_64-manylinux_2_28 --generate-hashes --no-header \
	    --index-url https://pypi.org/simple -o requirements-$$env.lock || exit 1; \
	done
	rm -rf .venv-lock

# MLflow's UI on this clone's store (MLFLOW_TRACKING_URI if it names another sqlite:/// file),
# on 127.0.0.1:$(UI_PORT), a port of its own (make server: 5000, serve: 5001). It prints
# first the URL of the "Model training" view of the experiment of params.yaml's data set (mnist):
# MLflow 3.17 opens on its GenAI view. Without MLflow's GenAI job runner (eight more processes), as make
# server. Ctrl-C stops it.
UI_PORT ?= 5050
UI_EXPERIMENT_ID = import pathlib, sqlite3, sys; from stages.lib.registry import dataset_name; \
  db = sqlite3.connect(pathlib.Path(sys.argv[1]).resolve().as_uri() + "?mode=ro", uri=True); \
  query = "SELECT experiment_id FROM experiments WHERE name = ? AND lifecycle_stage = ?"; \
  row = db.execute(query, (dataset_name(), "active")).fetchone(); \
  print(row[0] if row else "")
ui: install  ## MLflow's UI on the local store at http://127.0.0.1:5050 (UI_PORT=...), on the training view
	@uri="$${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlflow.db}"; \
	case "$$uri" in sqlite:///*) ;; *) echo "ui: error: MLFLOW_TRACKING_URI is not a sqlite:/// file:" \
	  "a tracking server has its own UI at its address" >&2; exit 1;; esac; \
	db="$${uri#sqlite:///}"; db="$${db%%\?*}"; \
	if [ ! -f "$$db" ]; then echo "ui: error: no MLflow store at $$db yet: make repro logs the first run there" >&2; exit 1; fi; \
	id=$$(python -c '$(UI_EXPERIMENT_ID)' "$$db" 2>/dev/null || true); \
	url="http://127.0.0.1:$(UI_PORT)/#/experiments$${id:+/$$id/runs}?workflowType=machine_learning"; \
	echo "ui: open $$url   (Ctrl-C stops the UI)"; \
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=$${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false} exec mlflow server --backend-store-uri "$$uri" --registry-store-uri "$$uri" --artifacts-destination "$$(dirname "$$db")/mlartifacts" \
	  --host 127.0.0.1 --port $(UI_PORT) --workers 1

# What can be rebuilt: the environment and the tools' caches. Never .dvc/cache (every version
# of the data and models DVC saved) nor data/external/ (your own files); local state is
# clean-state's, below.
clean:  ## Remove what can be rebuilt: .venv (INFERENCE=1: .venv-inference) and tool caches; never .dvc/cache, data/external/, local state
	@for path in $(VENV) .venv-lock .ruff_cache .pytest_cache; do \
	  if [ -e "$$path" ]; then rm -rf "$$path" && echo "clean: removed $$path"; fi; \
	done
	@find . \( -path ./.git -o -path ./.dvc -o -path ./data/external -o -path ./.server -o -path ./mlartifacts \) -prune \
	  -o \( -name __pycache__ -o -name '*.egg-info' \) -type d -prune -printf 'clean: removed %P\n' -exec rm -rf {} +

# Local state, which nothing rebuilds: the local MLflow store (every run, registered version
# and the champion alias), its artifacts, .runtime/, the Optuna journal of make tune, and
# make server's state with its PostgreSQL cluster (stopped first, through
# stages.tools.server remove). It lists what exists and asks; YES=1 deletes without asking,
# and without a terminal or YES=1 it deletes nothing. .dvc/cache, data/ and reports/ stay.
LOCAL_STATE := mlflow.db mlflow.db.lock mlartifacts .runtime .tune
YES ?=
clean-state:  ## Delete local state (mlflow.db, mlartifacts/, .runtime/, .tune/, .server/ and its cluster), after asking
	@found=""; for path in $(LOCAL_STATE) $(SERVER_DIR); do [ -e "$$path" ] && found="$$found $$path"; done; \
	if [ -z "$$found" ]; then echo "clean-state: no local state here: nothing to delete"; exit 0; fi; \
	cluster=$$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["directory"])' \
	  "$(SERVER_DIR)/pg.json" 2>/dev/null || true); \
	case "$$cluster" in "$$(cd "$(SERVER_DIR)" 2>/dev/null && pwd -P)"/*) cluster="";; esac; \
	echo "clean-state: this deletes (runs, models, studies: nothing rebuilds them):"; \
	for path in $$found; do echo "  $$path"; done; \
	if [ -n "$$cluster" ]; then echo "  $$cluster (make server's PostgreSQL cluster)"; fi; \
	if [ -z "$(filter 1 yes true,$(YES))" ]; then \
	  printf 'Delete them? [y/N] '; \
	  if ! read -r answer; then echo; echo "clean-state: error: no answer (no terminal?): nothing deleted;" \
	    "make clean-state YES=1 deletes without asking" >&2; exit 1; fi; \
	  case "$$answer" in y|Y|yes|Yes|YES) ;; *) echo "clean-state: nothing deleted"; exit 0;; esac; \
	fi; \
	if [ -e "$(SERVER_DIR)" ]; then \
	  $(MAKE) --no-print-directory --silent install && python -m stages.tools.server remove --yes --dir "$(SERVER_DIR)" || exit 1; \
	fi; \
	rm -rf $(LOCAL_STATE) && echo "clean-state: deleted$$found"
