# Two entry points: `make demo` and `make test`. Both create .venv and install what they need.
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
DEMO_OUT ?= results

.PHONY: install demo lint test test-fast slurm-up slurm-down clean

$(INSTALLED): pyproject.toml constraints-dev.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -c constraints-dev.txt -e '.[dev]'
	@# backpack-for-pytorch declares torchvision, whose PyPI build does not load beside every torch
	@# build (and then breaks `import pytorch_lightning`); BackPACK only uses it in its examples.
	$(PY) -m pip uninstall -q -y torchvision
	@touch $@

install: $(INSTALLED)

demo: install
	$(VENV)/bin/deconcnn-sweep launch sweeps/demo.yaml --executor local --parallel 2 --out $(DEMO_OUT)
	$(VENV)/bin/deconcnn-sweep status $(DEMO_OUT)/demo
	$(VENV)/bin/deconcnn-sweep analyze $(DEMO_OUT)/demo
	@echo "Results: $(DEMO_OUT)/demo (runs/<run id>/metrics.jsonl, collected/, analysis/, report/index.html)"

# The SLURM tests need the local one-node cluster; it can only be installed as root on Debian.
slurm-up:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then scripts/slurm_start.sh; \
	else echo "make: not root on Debian: SLURM tests will be skipped"; fi

slurm-down:
	scripts/slurm_stop.sh

lint: install
	$(VENV)/bin/ruff check deconcnn tests benchmarks
	$(VENV)/bin/ruff format --check deconcnn tests benchmarks
	$(VENV)/bin/mypy

# One pytest worker per core (at most 4: each imports torch); the SLURM tests share one worker (tests/conftest.py).
XDIST := -n auto --maxprocesses 4 --dist loadgroup

test: lint slurm-up
	$(PY) -m pytest $(XDIST)

test-fast: install
	$(PY) -m pytest $(XDIST) -m "not slow and not slurm"

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
