# Entry points for people and CI. Every target sets up what it needs first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SHARED ?= $(abspath ../shared)
# Images to process (a folder in the Fruits-360 layout, or unlabelled uploads) and MobileNetV2 weights
# (`imagenet` downloads them; or a path / s3:// URI of the Keras .h5 file).
DATA ?=
WEIGHTS ?= $(firstword $(wildcard $(SHARED)/models/mobilenet_v2_*_no_top.h5) imagenet)
RUN_DIR ?= $(abspath local)
DATE ?= $(shell date -u +%F)

.PHONY: venv test run bench constraints clean-local
venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt spark_jobs/requirements.txt constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip==25.3
	$(PY) -m pip install --quiet -r requirements.txt -c constraints.txt
	$(PY) -m pip check
	touch $@

test: venv
	$(PY) -m pytest tests

constraints: venv
	$(PY) -m pip freeze --exclude-editable > constraints.txt

clean-local:
	rm -rf $(RUN_DIR)

# Side-by-side benchmark of the embed step; writes bench/results/latest.json.
bench: venv
	$(PY) bench/bench_embed.py --data "$(or $(DATA),$(SHARED)/data/fruits-360-sample)" --weights "$(WEIGHTS)"
