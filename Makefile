# Entry points for people and CI. Every target sets up what it needs first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SHARED ?= $(abspath ../shared)
# Images to process (a folder in the Fruits-360 layout, or unlabelled uploads; default: data/fruits-360-mini) and
# MobileNetV2 weights (`imagenet` downloads them; or a path / s3:// URI of the Keras .h5 file).
DATA ?=
WEIGHTS ?= $(firstword $(wildcard $(SHARED)/models/mobilenet_v2_*_no_top.h5) imagenet)
RUN_DIR ?= $(abspath local)
DATE ?= $(shell date -u +%F)

.PHONY: venv test test-quick test-deps lint format run bench aws-deploy aws-destroy wheelhouse release constraints clean-local compose-env
venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt spark_jobs/requirements.txt constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip==25.3
	$(PY) -m pip install --quiet -r requirements.txt -c constraints.txt
	$(PY) -m pip check
	touch $@

# The suite on TEST_WORKERS pytest-xdist processes, one test file per process at a time (--dist loadfile keeps a
# file's module fixtures in one process). About half of a serial run's time waits (Airflow's pokes and heartbeats,
# servers and JVMs starting) with a core idle: the other worker fills it. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
test: venv lint test-deps
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile tests

# The edit loop (a few minutes): what needs no Spark job and no Airflow server: the DAG parsed, the settings, the
# cluster request, the lease, the release's parse, the template and its deployment on moto, compose, the docs.
QUICK_TESTS = tests/compose tests/infra tests/test_docs.py tests/dag/test_dag_structure.py tests/dag/test_helpers.py \
	tests/dag/test_cluster_config.py tests/dag/test_job_contract.py
test-quick: venv lint
	$(PY) -m pytest -q $(QUICK_TESTS) tests/dag/test_lease.py -k "not a_run"

# What the tests need from the system: Debian's chromium for the browser test (Playwright cannot download its own
# browsers here) and Debian's postgresql for the Airflow of tests/stack (its server binaries, run by the tests
# themselves; the package's own cluster is not used). Installed when missing (as root); otherwise says what to install.
test-deps:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium; \
	  else echo "the browser test needs /usr/bin/chromium: sudo apt-get install chromium"; exit 1; fi; \
	fi
	@if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq --no-install-recommends postgresql; \
	  else echo "tests/stack needs PostgreSQL's server (/usr/lib/postgresql/*/bin): sudo apt-get install postgresql"; \
	  exit 1; fi; \
	fi

# ruff: lint (with import order) and format check, as CI runs them.
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The AWS account's resources (infra/template.yaml, docs/aws.md). Region and account are never guessed:
#   make aws-deploy REGION=eu-west-1 ACCOUNT=123456789012 BUCKET=my-fruits EMAIL=ops@example.com
#   make aws-destroy REGION=eu-west-1 ACCOUNT=123456789012
aws-deploy: venv
	$(PY) infra/deploy.py deploy --region "$(REGION)" --account "$(ACCOUNT)" $(if $(BUCKET),--bucket "$(BUCKET)") \
		$(if $(EMAIL),--email "$(EMAIL)")

aws-destroy: venv
	$(PY) infra/deploy.py destroy --region "$(REGION)" --account "$(ACCOUNT)"

# The EMR nodes' Python packages as one prebuilt wheelhouse per architecture (ARCH=x86_64 or aarch64), for the
# setting fruits_wheelhouse when the Airflow workers cannot reach the package index (stage_code builds it otherwise).
ARCH ?= x86_64
wheelhouse: venv
	PYTHONPATH=dags $(PY) -m fruits_dag.artifacts --arch $(ARCH) --output $(RUN_DIR)/wheelhouse

# A release for workers without TensorFlow or the package index (Amazon MWAA): the ONNX export of WEIGHTS and the
# nodes' wheelhouse of each ARCHS, built here and staged to s3://BUCKET/code/artifacts/ (AWS credentials of this
# shell, or AIRFLOW_CONN_AWS_DEFAULT); prints the settings to merge into the Variable fruits_settings (docs/aws.md).
ARCHS ?= x86_64
release: venv
	@mkdir -p $(RUN_DIR)
	@test -n "$(BUCKET)" || { echo "usage: make release BUCKET=<fruits_bucket> [WEIGHTS=...] [ARCHS='x86_64 aarch64']"; exit 1; }
	PYTHONPATH=dags $(PY) -m fruits_dag.release --bucket $(BUCKET) --weights "$(WEIGHTS)" \
		$(foreach a,$(ARCHS),--arch $(a)) --output $(RUN_DIR)/release-settings.json

# The docker compose stack's secrets (docs/compose.md): adds what is missing to .env (git-ignored, mode 0600) and
# never changes a value there; prints the admin password when it makes it. Standard library only: no venv needed.
compose-env:
	$(PYTHON) tools/compose_env.py

constraints: venv
	$(PY) -m pip freeze --exclude-editable > constraints.txt

clean-local:
	rm -rf $(RUN_DIR)

# Side-by-side benchmarks, one after the other (never two at once): the embed step on Fruits-360
# (bench/results/latest.json), clean + embed on phone photos made from the sample (bench/results/phone.json), the
# pca step's nights and refits (bench/results/pca.json), and a night of 200 images through the four jobs over a
# history of 4,000 and of 80,000 processed photos (bench/results/history.json).
bench: venv
	$(PY) bench/bench_embed.py --data "$(or $(DATA),$(SHARED)/data/fruits-360-sample)" --weights "$(WEIGHTS)"
	$(PY) bench/bench_phone.py --data "$(SHARED)/data/fruits-360-sample" --weights "$(WEIGHTS)"
	$(PY) bench/bench_pca.py
	$(PY) bench/bench_history.py --data "$(SHARED)/data/fruits-360-sample" --weights "$(WEIGHTS)"

# The whole pipeline on this machine: fruits_pipeline in local mode through `airflow dags test` (SQLite Airflow home,
# nothing to start), over DATA (default: the real Fruits-360 subset in data/), with mode=full. Everything lands in
# RUN_DIR; Airflow's full log goes to RUN_DIR/run-DATE.log, the terminal gets a line per task and a summary.
RUN_ENV = AIRFLOW_HOME=$(RUN_DIR)/airflow AIRFLOW__CORE__LOAD_EXAMPLES=False \
	AIRFLOW__CORE__DAGS_FOLDER=$(CURDIR)/dags AIRFLOW__CORE__PLUGINS_FOLDER=$(CURDIR)/plugins \
	AIRFLOW_VAR_FRUITS_SETTINGS='{"fruits_backend": "local", "fruits_local_root": "$(RUN_DIR)/data", \
	"fruits_weights": "$(WEIGHTS)", "fruits_poke_interval": 5, "fruits_sensor_timeout": 120}'
run: venv
	@mkdir -p $(RUN_DIR)
	@$(RUN_ENV) $(VENV)/bin/airflow db migrate > $(RUN_DIR)/airflow-db-migrate.log 2>&1 \
		|| { echo "airflow db migrate failed: see $(RUN_DIR)/airflow-db-migrate.log"; exit 1; }
	@input=$$($(PY) tools/local_run.py prepare --root $(RUN_DIR)/data $(if $(DATA),--data "$(DATA)")) && \
	$(RUN_ENV) $(PY) tools/local_run.py run --date $(DATE) --log $(RUN_DIR)/run-$(DATE).log \
		--conf "{\"mode\": \"full\", \"input_uri\": \"$$input\"}"
	@$(PY) tools/local_run.py summary --root $(RUN_DIR)/data --date $(DATE)
