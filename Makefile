# paper_repro: two commands.
#   make test    clean clone -> .venv, data, library in step with notebooks, nbdev_test, pytest
#   make repro   clean clone -> .venv, data, every experiment notebook with papermill into outputs/
#                make repro NB=fig3 ARGS="-p lam 1.5e-5"   runs one, passing papermill arguments
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NB ?=
ARGS ?=
# Where make repro computes each notebook's grid of runs (runs.sweep). serial: in the notebook's process, all cores
# on each run. EXECUTOR=pool on a machine with several GPUs (one worker per GPU). On a 2-core CPU the pool gains
# nothing: a one-thread worker beside another is 1.8-2.3x slower per run than one process on both cores (measured).
EXECUTOR ?= serial
# Datasets `make data` guarantees (the tests read the real Fashion-MNIST).
DATASETS ?= fashion-mnist
OUTPUTS := $(or $(PAPER_REPRO_OUTPUTS),outputs)
# Experiment notebooks: the one list is paper_repro.core.experiment_notebooks().
EXPERIMENTS = $(shell test -x $(BIN)/python && $(BIN)/python -c "from paper_repro.core import experiment_notebooks as e; print(*e())" 2>/dev/null)

# nbdev_export silently does nothing when IN_TEST is set: never pass it down.
unexport IN_TEST

.PHONY: help venv data export sync nbtest pytest test test-slow repro repro-names repro-check claims bench readme clean-venv

help:
	@echo "make test     create .venv if missing, get the data, check the library is in step with nbs/, run nbdev_test and pytest"
	@echo "make repro    create .venv if missing, get the data, run every experiment notebook at preset auto into $(OUTPUTS)/"
	@echo "              make repro NB=fig3 ARGS=\"-p lam 1.5e-5\"   one notebook, papermill arguments passed through"
	@echo "              (the parameters are checked first, by paper-repro check: a bad value stops before any kernel, exit 2)"
	@echo "              make repro EXECUTOR=pool                   one worker per GPU (default: serial, each notebook's runs in its process)"
	@echo "make claims   write outputs/reference/CLAIMS.md, every reference notebook's claims and the totals per paper"
	@echo "              (.venv/bin/paper-repro claims prints the table; --folder outputs for your own make repro)"
	@echo "make export   after editing notebooks: nbdev_export + nbdev_clean (commit nbs/ and paper_repro/ together)"
	@echo "make bench    benchmarks (bench/loader.py: TensorLoader vs DataLoader; bench/mask_overhead.py: masked vs dense step)"
	@echo "experiment notebooks: $(EXPERIMENTS)"

# The environment: one install for tests and runs; redone when settings.ini or setup.py change.
$(STAMP): settings.ini setup.py
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@# pipefail: a failed pip install fails the target; the filter only hides a local-index warning
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev]" 2>&1 | { grep -v "is ignored: it is neither" || true; }
	@$(BIN)/python -c "import paper_repro, torch, torchvision, numpy, pandas, pyarrow, seaborn, matplotlib, sklearn, tqdm, papermill, ipykernel, nbdev, execnb, pytest, xdist" \
	  || { echo "the install into $(VENV) is incomplete; remove $(VENV) and run make again"; exit 1; }
	@touch $@

venv: $(STAMP)

# Data: data/ (or $$PAPER_REPRO_DATA), then system locations, then apt-get (root on Debian), then a download.
data: $(STAMP)
	$(BIN)/python -c "from paper_repro.data import ensure_dataset; [ensure_dataset(n, system_install=True, download=True) for n in '$(DATASETS)'.split()]"

# After editing notebooks: regenerate paper_repro/ and clean the notebooks (then commit both).
export: $(STAMP)
	$(BIN)/nbdev_export
	$(BIN)/nbdev_clean

# The library must be what the notebooks export, and the notebooks must be clean. On a clean clone this is
# `nbdev_export; nbdev_clean; git diff --exit-code`; on a work tree with uncommitted edits it compares against
# the tree as it was, so it fails exactly when the export or the clean had something to change.
sync: $(STAMP)
	@snap=$$(mktemp -d); cp -r paper_repro nbs "$$snap"/; \
	$(BIN)/nbdev_export; $(BIN)/nbdev_clean; \
	if ! diff -r -q -x __pycache__ -x .ipynb_checkpoints "$$snap/paper_repro" paper_repro \
	   || ! diff -r -q -x __pycache__ -x .ipynb_checkpoints "$$snap/nbs" nbs; then \
	  echo "paper_repro/ or nbs/ changed under nbdev_export/nbdev_clean: the library was not in step with the notebooks" ; \
	  echo "(or a notebook was not clean). They are updated now: review 'git diff' and commit them."; \
	  rm -rf "$$snap"; exit 1; fi; \
	rm -rf "$$snap"; \
	if [ -z "$$(git status --porcelain -- paper_repro nbs 2>/dev/null)" ]; then git diff --exit-code -- paper_repro nbs; fi; \
	echo "library in step with nbs/, notebooks clean"

# The test steps. Budgets on the 2-core machine: nbdev_test <= 5 min, pytest <= 6 min (measured in the closing notes
# of the [ci] issue); each cap below is 3x its budget, so a noisy machine cannot fail CI, and a hang still ends.
# nbdev_test executes the library notebooks (their literate checks); it skips the experiment notebooks, which pytest
# executes once each at smoke under papermill, as `make repro` does, with their outputs checked (tests/test_notebooks*.py).
# pytest runs on every core (pytest-xdist): one worker process per core, each test file whole on one worker.
# Both run one thread per process (OMP_NUM_THREADS=1, inherited by kernels and subprocesses): with a process per
# core, a second thread only waits for a busy core (measured: nbdev_test 105 s with torch's default 2 threads per
# worker, 53 s with 1).
SKIP_EXPERIMENTS = $(shell test -x $(BIN)/python && $(BIN)/python -c "from paper_repro.core import EXPERIMENT_NOTEBOOK as e; print('^([_.]|' + e.pattern.strip('^$$') + r'\.ipynb$$)')" 2>/dev/null)
NBTEST_CAP ?= 900
PYTEST_CAP ?= 1080
WORKERS ?= $(shell nproc 2>/dev/null || echo 2)
PYTEST_ARGS = -q -n $(WORKERS) --dist loadfile --no-loadscope-reorder --durations=15

nbtest: $(STAMP)
	@test -n "$(SKIP_EXPERIMENTS)" || { echo "could not read paper_repro.core.EXPERIMENT_NOTEBOOK"; exit 1; }
	@s=$$(date +%s); OMP_NUM_THREADS=1 timeout $(NBTEST_CAP) $(BIN)/nbdev_test --do_print --timing --skip_file_re '$(SKIP_EXPERIMENTS)'; \
	echo "nbdev_test: $$(( $$(date +%s) - s )) s (cap $(NBTEST_CAP) s)"

pytest: $(STAMP)
	@s=$$(date +%s); OMP_NUM_THREADS=1 timeout $(PYTEST_CAP) $(BIN)/python -m pytest $(PYTEST_ARGS) -m "not slow" tests; \
	echo "pytest: $$(( $$(date +%s) - s )) s (cap $(PYTEST_CAP) s)"

test: $(STAMP) data sync nbtest pytest

# Everything: the slow notebook cells, the experiment notebooks under nbdev_test too, and the slow tests.
test-slow: $(STAMP) data
	@s=$$(date +%s); OMP_NUM_THREADS=1 $(BIN)/nbdev_test --flags slow --do_print --timing; echo "nbdev_test --flags slow: $$(( $$(date +%s) - s )) s"
	@s=$$(date +%s); OMP_NUM_THREADS=1 $(BIN)/python -m pytest $(PYTEST_ARGS) tests; echo "pytest (slow included): $$(( $$(date +%s) - s )) s"

# NB names an experiment notebook: checked before the data step, so a typo fails at once.
repro-names: $(STAMP)
	@all="$(EXPERIMENTS)"; \
	for nb in $(basename $(notdir $(NB))); do \
	  if [[ " $$all " != *" $$nb "* ]]; then echo "unknown notebook '$$nb'; experiment notebooks: $$all"; exit 2; fi; \
	done

# Every notebook's parameters ($(ARGS), and the executor), checked by its spec as `paper-repro run` checks them, before the
# data step and before any kernel starts: a bad value exits 2 at once, naming the parameter, the value and what is allowed.
repro-check: $(STAMP) repro-names
	@$(BIN)/paper-repro check $(if $(NB),$(basename $(notdir $(NB))),$(EXPERIMENTS)) -p executor $(EXECUTOR) $(ARGS)

repro: $(STAMP) repro-names repro-check data
	@nbs="$(if $(NB),$(basename $(notdir $(NB))),$(EXPERIMENTS))"; \
	t0=$$(date +%s); \
	for nb in $$nbs; do \
	  mkdir -p "$(OUTPUTS)/$$nb"; \
	  echo "papermill nbs/$$nb.ipynb $(OUTPUTS)/$$nb/$$nb.ipynb -p executor $(EXECUTOR) $(ARGS)"; \
	  s=$$(date +%s); \
	  $(BIN)/papermill "nbs/$$nb.ipynb" "$(OUTPUTS)/$$nb/$$nb.ipynb" -k python3 --cwd nbs --log-output --no-progress-bar -p executor $(EXECUTOR) $(ARGS); \
	  printf "%s\t%s\t%s\n" "$$nb" "$$(( $$(date +%s) - s ))" "$$(date -u +%FT%TZ)" >> "$(OUTPUTS)/repro_times.tsv"; \
	  echo "wrote $(OUTPUTS)/$$nb/"; ls "$(OUTPUTS)/$$nb"; \
	done; \
	echo "make repro: $$(( $$(date +%s) - t0 )) s; per-notebook wall times in $(OUTPUTS)/repro_times.tsv"

# The claims scoreboard, from the committed reference tables, and its totals in the README (tests fail when either is
# out of step).
claims: $(STAMP)
	$(BIN)/paper-repro claims --folder outputs/reference --write outputs/reference/CLAIMS.md
	$(BIN)/python tests/test_readme.py --write

bench: $(STAMP) data
	$(BIN)/python bench/loader.py
	$(BIN)/python bench/mask_overhead.py

# README.md is the markdown of nbs/index.ipynb (nbdev_readme needs Quarto, which cannot be installed here).
readme: $(STAMP)
	$(BIN)/python tests/test_readme.py --write

clean-venv:
	rm -rf $(VENV)
