# Two commands: `make run` (execute the notebook series) and `make test` (lint + unit tests + nbval).
# Both create .venv from nothing with the tested pins for its Python: requirements/constraints-py3XX.txt
# (one file per supported Python, 3.10-3.13). Another Python: `make clean install PYTHON=python3.12`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
EXTRAS ?= dev,semantic,monitor,privacy,quant,evaluate,serve,casestudy
# WHEELS=folder installs from that folder only, with no package index (the workshop archive's wheelhouse/).
WHEELS ?=
PIP_SOURCES := $(if $(WHEELS),--no-index --find-links $(abspath $(WHEELS)))
# Pins follow the venv's Python once it exists, else $(PYTHON)'s.
PYVER  := $(or $(shell { $(BIN)/python -V || $(PYTHON) -V; } 2>/dev/null | sed -E 's/Python (3\.[0-9]+).*/\1/'),unknown)
CONSTRAINTS := requirements/constraints-py$(subst .,,$(PYVER)).txt
PINS_HEADER := \# Tested pins for one Python, used as constraints by make install. Written by make pins (pip freeze).
LAB_ARGS ?=
# Offline JupyterLab: an extension manager that lists what is installed and never queries a package index;
# --allow-root because Docker and GPU-cloud images run as root, where jupyter otherwise refuses to start.
LAB_FLAGS := --LabApp.extension_manager=readonly $(if $(filter 0,$(shell id -u)),--allow-root)
# No "get Jupyter news?" pop-up and no update check (both would fetch from the web): a settings default of ours.
LAB_SETTINGS := $(VENV)/share/jupyter/lab/settings/overrides.d/cookbook.json

.PHONY: install pins run test lint unit nbval lab bench clean book test-browser workshop offline-install stack-deps \
        reference-model mutate

install: $(STAMP)

# A venv without pip is half-created (python3-venv missing when it was made): remove it and make it again.
# -W hides only setuptools' "Editable installation" note on every install; other warnings and errors still show.
$(STAMP): pyproject.toml $(CONSTRAINTS)
	@$(BIN)/python -m pip --version >/dev/null 2>&1 || { \
	  if [ -e $(VENV) ]; then echo "$(VENV) has no pip (half-created): removing it and creating it again"; fi; \
	  rm -rf $(VENV); \
	  $(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); \
	    echo "Could not create $(VENV) with $(PYTHON). On Debian/Ubuntu install the venv module first:" \
	         "'sudo apt install python3-venv' (or python3.X-venv for python3.X), then run make again." >&2; \
	    exit 1; }; }
	$(BIN)/python -m pip install -q $(PIP_SOURCES) --upgrade pip
	$(BIN)/python -W "ignore:Editable installation:UserWarning" -m pip install -q $(PIP_SOURCES) -c $(CONSTRAINTS) \
	  -e ".[$(EXTRAS)]"
	# The reference implementation tests/robust compares our attacks with; without --no-deps it would pull
	# torchvision and a CUDA torch, which its attacks do not need.
	$(BIN)/python -m pip install -q $(PIP_SOURCES) --no-deps -c $(CONSTRAINTS) torchattacks
	touch $@

# After changing packages in the venv and a green `make test`: write its exact versions as its Python's pins.
# A local label (torch 2.13.0+cpu from a local wheel) is dropped: the package index serves the plain release.
pins: $(STAMP)
	{ echo "$(PINS_HEADER)"; $(BIN)/python -m pip freeze --all --exclude-editable --exclude pip \
	    | sed -E 's/\+[A-Za-z0-9.]+$$//'; } > $(CONSTRAINTS)

requirements/constraints-py%.txt:
	@echo "$(if $(filter unknown,$(PYVER)),'$(PYTHON) -V' failed,No tested pins for Python $(PYVER) (from $(PYTHON)))."\
	      "The cookbook supports Python 3.10-3.13: pick one, e.g. make clean install PYTHON=python3.12" >&2; exit 1

$(LAB_SETTINGS): $(STAMP)
	mkdir -p $(@D)
	echo '{"@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": false}}' > $@

run: $(STAMP)
	$(BIN)/python -m cookbook run

test: lint unit nbval

lint: $(STAMP)
	$(BIN)/ruff check cookbook tests benchmarks notebooks tools
	$(BIN)/lint-imports

# pytest-xdist: JOBS=auto runs one worker per core (unit tests work-stolen; a notebook's cells stay in one worker and
# one kernel, in order: --dist loadscope, as nbval's README asks), each with 1 torch thread (two 2-thread processes
# on 2 cores stall at OpenMP barriers: measured 3x slower). JOBS=1 runs serially, in one process.
JOBS ?= auto
XDIST = $(if $(filter-out 1,$(JOBS)),OMP_NUM_THREADS=1 ,)
XDIST_UNIT = $(if $(filter-out 1,$(JOBS)),-n $(JOBS) --dist worksteal)
XDIST_NB = $(if $(filter-out 1,$(JOBS)),-n $(JOBS) --dist loadscope)
unit: $(STAMP)
	$(XDIST)COOKBOOK_PROFILE=smoke $(BIN)/python -m pytest -q $(XDIST_UNIT) -m "not browser" tests

nbval: $(STAMP)
	$(XDIST)COOKBOOK_PROFILE=smoke $(BIN)/python -m pytest -q $(XDIST_NB) --nbval-lax notebooks

# Extra arguments: make lab LAB_ARGS="--port 8890 --no-browser"
lab: $(STAMP) $(LAB_SETTINGS)
	$(BIN)/jupyter lab $(LAB_FLAGS) $(LAB_ARGS) notebooks

# JupyterLab and the book in headless Chromium (Debian: apt-get install chromium); screenshots in runs/browser/.
test-browser: $(STAMP) $(LAB_SETTINGS)
	COOKBOOK_PROFILE=smoke $(BIN)/python -m pytest -q -m browser tests/browser

# The executed notebooks as a static site, offline: build/book/index.html (tools/book.py).
book: $(STAMP)
	$(BIN)/python tools/book.py

# One archive for a room of laptops without package-index access (tools/workshop.py): the tree, a wheelhouse
# and the profile's cached tokenizer and pretrained model. On each laptop: make offline-install && make lab.
workshop: $(STAMP)
	$(BIN)/python tools/workshop.py pack $(if $(OUT),--out $(OUT))

offline-install:
	$(MAKE) install WHEELS=wheelhouse
	mkdir -p "$${COOKBOOK_CACHE:-$$HOME/.cache/cookbook}" && cp -R cache/. "$${COOKBOOK_CACHE:-$$HOME/.cache/cookbook}/"

# Mutation testing (tools/mutate.py, mutmut) of chosen modules against their own tests, at low priority; slow, so
# not part of make test: make mutate MODULES="planning.memory train.loss deploy.service:validate" [BUDGET=900]
mutate: $(STAMP)
	@test -n "$(MODULES)" || { echo 'usage: make mutate MODULES="planning.memory data.dedup" [BUDGET=seconds per module] [SURVIVORS=1]' >&2; exit 2; }
	nice -n 15 $(BIN)/python tools/mutate.py $(MODULES) $(if $(BUDGET),--budget $(BUDGET)) $(if $(SURVIVORS),--survivors)

# The optional system programs (nginx, Prometheus: notebook 12's serving stack; Chromium: make test-browser).
# Nothing needs them: without them notebook 12 says what it skips and the browser tests skip. Homebrew on macOS,
# apt on Debian/Ubuntu (sudo unless root), else conda-forge in the active conda environment (no Chromium there).
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
stack-deps:
	@if [ "$$(uname)" = Darwin ] && command -v brew >/dev/null; then \
	  brew install nginx prometheus && brew install --cask chromium; \
	elif command -v apt-get >/dev/null; then \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
	    --no-install-recommends nginx prometheus chromium; \
	elif [ -n "$$CONDA_PREFIX" ]; then \
	  conda install -y -c conda-forge nginx prometheus && echo "Chromium: install it yourself, then set COOKBOOK_CHROMIUM"; \
	else \
	  echo "no apt-get, Homebrew or conda here: install nginx, prometheus and chromium with your package manager" >&2; \
	  exit 1; fi
	$(BIN)/python -m cookbook report | sed -n '/optional system programs/,/^$$/p'

# The shipped reference model (cookbook/models/reference_files): ~2 h on 2 CPU cores, resumable (run it again to
# continue from the last checkpoint in runs/reference-model). Chapters after 04 load it with models.reference().
reference-model: $(STAMP)
	$(BIN)/python tools/reference_model.py train
	$(BIN)/python tools/reference_model.py ship

print-%:
	@echo $($*)

bench: $(STAMP)
	for script in benchmarks/*.py; do $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache

# The whole GPU pass in one command (tools/gpu_pass.py): the corpus, every notebook in $(PROFILE), pytest -m gpu and
# the GPU benchmarks, one archive under $(OUT). `make gpu PROFILE=smoke` runs the same pass on a CPU; ONLY=03,04
# re-runs a subset; DEADLINE=480 skips what would not finish. On the GPU image (no venv, wheels from .whl/ on
# PYTHONPATH): make gpu GPU_PYTHON=python3 COMMIT=<sha>.
GPU_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
.PHONY: gpu
gpu:
	$(GPU_PYTHON) tools/gpu_pass.py --profile $(or $(PROFILE),full) --out $(or $(OUT),runs/gpu) \
	  $(if $(ONLY),--only $(ONLY)) $(if $(COMMIT),--commit $(COMMIT)) $(if $(DEADLINE),--deadline $(DEADLINE))
