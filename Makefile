# The two commands: `make figures` (the figure pipeline) and `make test` (the whole suite).
# Each sets up what it needs: a .venv beside this file, this package and its extras.
#
# TORCH picks the PyTorch requirement. Without a GPU it is the CPU wheel pinned for CI;
# where `nvidia-smi` answers, pip's default (CUDA) build. Override: make TORCH="torch==2.11.0" test
PYTHON ?= python3
VENV   ?= .venv
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
ifeq ($(HAS_GPU),1)
TORCH ?= torch>=2.11
else
TORCH ?= torch==2.13.0
endif
PY := $(VENV)/bin/python
STAMP := $(VENV)/.cdflow-installed

.PHONY: figures test test-browser setup clean bench

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[notebooks,test]"
	@touch $@

figures: $(STAMP)
	$(PY) -m cdflow_lib.pipeline --notebooks notebooks --build build --figures figures

# two pytest workers on two cores: one thread each (oversubscribed BLAS threads run ~20x slower)
test: $(STAMP)
	CDFLOW_SMOKE=1 CDFLOW_SOLUTIONS=1 CDFLOW_INTERACTIVE=0 MPLBACKEND=Agg OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --dist loadfile tests notebooks --nbval-lax --nbval-current-env -p no:cacheprovider

# notebook 16's explorer in JupyterLab + headless Chromium (Debian's package: apt-get install -y chromium)
BROWSER_STAMP := $(VENV)/.cdflow-browser
$(BROWSER_STAMP): $(STAMP)
	$(PY) -m pip install -q -e ".[notebooks,test,browser]"
	@touch $@

test-browser: $(BROWSER_STAMP)
	@test -x "$${CDFLOW_CHROMIUM:-/usr/bin/chromium}" || { echo "make test-browser: no Chromium at $${CDFLOW_CHROMIUM:-/usr/bin/chromium}; install Debian's package (apt-get install -y chromium) or set CDFLOW_CHROMIUM" >&2; exit 2; }
	$(PY) -m pytest -q -s -p no:cacheprovider tests_browser

bench: $(STAMP)
	$(PY) benchmarks/benchmark.py --out build/benchmark.json

clean:
	rm -rf build .pytest_cache
