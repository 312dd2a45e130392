# Set-up is part of every target: a fresh clone needs nothing but `make repro`
# or `make test` (Python 3.10+ with venv and pip).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum < pyproject.toml | cut -d' ' -f1)
export PATH := $(abspath $(VENV))/bin:$(PATH)

CHROMIUM ?= /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: repro test setup results mlflow-ui gpu-check plots-template

setup: $(STAMP)

$(STAMP): pyproject.toml
	@echo "setting up $(VENV): torch's CUDA build (it runs on the CPU too) and the rest, 6.8 GB the first time"
	python3 -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

# The main job: the default study in params.yaml, end to end.
repro: $(STAMP)
	dvc repro

# The browser tests open the HTML report and the MLflow UI in headless Chromium.
$(CHROMIUM):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

# The test suite (the slow end-to-end tests included), on every core: most tests
# wait on subprocesses. --dist loadgroup keeps the tests that share one Ray cluster
# on one worker.
test: $(STAMP) $(CHROMIUM)
	$(PY) -m pytest -q -n auto --dist loadgroup --durations=15

# Every experiment's answer, a block per study in 100 columns: each arm's accuracy (%),
# each tested hypothesis' difference (points), adjusted p and answer (pipeline/results.py).
results: $(STAMP)
	$(PY) -m pipeline.results

# Browse every run: the address printed for a study opens its runs table on the answer's
# columns (http://127.0.0.1:5000/#/experiments/<id>/runs?viewStateShareKey=answer).
mlflow-ui: $(STAMP)
	$(PY) -m pipeline.tracking publish || true
	@echo "MLflow UI, each study's runs table (Ctrl-C to stop):"
	@$(PY) -m pipeline.tracking urls --base http://127.0.0.1:5000
	mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port 5000

# On a machine with CUDA: the GPU tests, then the default study and the resnet18
# recipe end to end; one table, appended to bench/RESULTS.md. Offline, name a
# local copy of the data: make gpu-check ARCHIVE=path/to/cifar10.tar.gz SHA256=...
gpu-check: $(STAMP)
	$(PY) bench/gpu_check.py $(if $(ARCHIVE),--archive $(ARCHIVE) --sha256 $(SHA256))

# `dvc plots show` writes a page that loads vega from a CDN; this template carries
# vega, vega-lite and vega-embed (the versions DVC asks for, BSD-3-Clause) inline, so
# the page draws offline. Made once and committed; remake it with `make plots-template`.
VEGA := vega@5.20.2 vega-lite@5.2.0 vega-embed@6.18.2
plots-template:
	rm -rf .plots-npm && mkdir .plots-npm && cd .plots-npm && npm pack --silent $(VEGA) > /dev/null
	for f in .plots-npm/*.tgz; do tar -xzf $$f -C .plots-npm && mv .plots-npm/package $${f%.tgz}; done
	python3 -c 'import sys, pathlib; js = "".join(f"<script>/* {pathlib.Path(p).parts[1]} */\n{pathlib.Path(p).read_text()}\n</script>\n" for p in sys.argv[1:]); pathlib.Path(".dvc/plots/index.html").write_text(pathlib.Path(".dvc/plots/page.html").read_text().replace("<!-- vega -->", js))' \
	  .plots-npm/vega-5*/build/vega.min.js .plots-npm/vega-lite-5*/build/vega-lite.min.js .plots-npm/vega-embed-6*/build/vega-embed.min.js
	rm -rf .plots-npm
