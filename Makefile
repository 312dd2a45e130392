# Set-up is part of every target: a fresh clone needs nothing but `make repro`
# or `make test` (Python 3.10+ with venv and pip).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum < pyproject.toml | cut -d' ' -f1)
export PATH := $(abspath $(VENV))/bin:$(PATH)

CHROMIUM ?= /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: repro test setup mlflow-ui gpu-check

setup: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

# The main job: the default study in params.yaml, end to end.
repro: $(STAMP)
	dvc repro

# The browser tests open the HTML report and the MLflow UI in headless Chromium.
$(CHROMIUM):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

# The test suite (the slow end-to-end tests included).
test: $(STAMP) $(CHROMIUM)
	$(PY) -m pytest -q --durations=15

# Browse every run. The study opens on its runs table in MLflow's model-training
# view: http://127.0.0.1:5000/#/experiments/1?workflowType=machine_learning
mlflow-ui: $(STAMP)
	@echo "MLflow UI: http://127.0.0.1:5000/#/?workflowType=machine_learning (Ctrl-C to stop)"
	$(PY) -m pipeline.tracking flush --timeout 5 || true
	mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port 5000

# On a machine with CUDA: the GPU tests, then the default study and the resnet18
# recipe end to end; one table, appended to bench/RESULTS.md. Offline, name a
# local copy of the data: make gpu-check ARCHIVE=path/to/cifar10.tar.gz SHA256=...
gpu-check: $(STAMP)
	$(PY) bench/gpu_check.py $(if $(ARCHIVE),--archive $(ARCHIVE) --sha256 $(SHA256))
