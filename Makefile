# kwyn: two commands on a fresh machine (Python 3.11 + pip): `make repro`, `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(abspath $(VENV)/bin)
STAMP := $(VENV)/.kwyn-installed
# dvc starts `papermill` from PATH, so the venv goes first on it
RUN := PATH="$(BIN):$$PATH" DVC_NO_ANALYTICS=1

.PHONY: venv repro test lab pins

venv: $(STAMP)

$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --disable-pip-version-check -q -r requirements.txt
	$(VENV)/bin/pip install --disable-pip-version-check -q --no-deps -r requirements-nodeps.txt
	$(VENV)/bin/pip install --disable-pip-version-check -q --no-deps -e .
	touch $@

# then the executed notebooks of one experiment go to docs/notebooks/, which git keeps (scripts/publish_notebooks.py)
repro: venv
	$(RUN) dvc repro
	$(RUN) $(VENV)/bin/python scripts/publish_notebooks.py

test: venv
	$(RUN) HF_HUB_OFFLINE=1 $(VENV)/bin/python -m pytest

lab: venv
	$(VENV)/bin/python -m ipykernel install --sys-prefix --name kwyn --display-name "kwyn (.venv)"
	$(VENV)/bin/nbstripout --install
	$(RUN) jupyter lab notebooks $(if $(filter 0,$(shell id -u)),--allow-root --no-browser,)

# after changing the environment by hand: re-pin requirements.txt and environment.yml from it
pins: venv
	{ echo "# Pinned environment of kwyn (Python 3.11, CPU). Regenerate: make pins. tinysoundfont is in requirements-nodeps.txt. jsonschema stays at 4.23.0: later ones load rfc3987-syntax, whose grammars take ~3 s to build at every papermill start. ruamel.yaml.clib (optional for ruamel.yaml 0.19) lets DVC parse dvc.lock in C, about 0.8 s a stage."; \
	  $(VENV)/bin/pip list --format=freeze --exclude-editable | grep -viE "^(tinysoundfont|kwyn|pip|setuptools|wheel)==" | sort -f; } > requirements.txt
	$(VENV)/bin/python scripts/write_environment_yml.py
