# tango-dqm: `make demo` runs the main job, `make test` the whole suite, `make bench` the benchmarks.
# Each target creates .venv and installs the project on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test bench install clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,sardana,bluesky]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m tango_dqm.devices.demo $(DEMO_ARGS)

test: $(STAMP)
	deploy/install-test-deps.sh   # Debian's Chromium for the report test; a no-op when present
	$(PY) -m pytest $(PYTEST_ARGS)

# make bench BENCH_ARGS="--dranspose --long": see docs/performance.md
bench: $(STAMP)
	$(PY) -m benchmarks $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .demo build *.egg-info .pytest_cache
