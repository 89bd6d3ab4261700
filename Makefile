# Two commands a newcomer needs: `make demo` (a real containerised kernel, end to end) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: system-packages venv image check test test-as-user lint demo clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

system-packages:
	@scripts/system-packages

image: system-packages
	@scripts/build-image >/dev/null

demo: venv image
	$(BIN)/python scripts/demo.py --image "$$(scripts/build-image)"

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The fast lane, for a change to pure code (under a minute): lint, and every test that needs no
# image, no runtime, no root and no service (marker `fast`, given in tests/conftest.py).
check: lint
	$(BIN)/python -m pytest -q -m fast

# The fast lane first; then everything else as root on real Apptainer 1.4.5 and ch-run (with a
# real JupyterHub, JupyterLab in Chromium, an OCI registry over HTTPS and a Slurm cluster whose
# compute node has a network namespace of its own), the security and lifecycle suites on real
# SingularityCE 3.4.2 and Singularity 2.6.1 too, then the fast lane and the security, lifecycle
# and soak suites as an unprivileged user on all four. scripts/real-runtimes builds the real
# runtimes once per machine.
LEGACY := singularity-3.4,singularity-2.6
test: check image
	@scripts/system-packages --tests
	@scripts/real-runtimes
	@scripts/setup-browser
	@scripts/setup-hub >/dev/null
	@scripts/registry up
	@scripts/slurm-cluster up
	$(BIN)/python -m pytest -m "not fast"
	CK_TEST_RUNTIMES=$(LEGACY) $(BIN)/python -m pytest -m "security or lifecycle" -k singularity
	CK_TEST_RUNTIMES=apptainer,$(LEGACY),charliecloud scripts/test-as-user

test-as-user: image
	@scripts/system-packages --tests
	scripts/test-as-user

clean:
	rm -rf $(VENV) .pytest_cache
