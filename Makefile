# Two entry points: `make demo` and `make test`. Both create .venv and install what they need.
VENV ?= .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
INSTALLED := $(VENV)/.installed
DEMO_OUT ?= results

.PHONY: install demo lint test test-fast slurm-up slurm-down clean

# uv installs the same pins as pip in ~25 s instead of ~100 s (it fetches, unpacks and compiles in
# parallel). --compile-bytecode as pip does: where PYTHONDONTWRITEBYTECODE is set, a venv without
# .pyc files compiles torch's modules again in every process. uv reads no pip configuration: it gets
# pip's find-links (PIP_FIND_LINKS, else pip.conf's: where this machine keeps its torch wheel), and
# where it still fails (an index only pip.conf names) pip installs instead.
$(INSTALLED): pyproject.toml constraints-dev.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -m pip install -q -c constraints-dev.txt uv
	@links=$${PIP_FIND_LINKS:-$$($(PY) -m pip config get global.find-links 2>/dev/null)}; \
	$(UV) pip install --python $(PY) -q --compile-bytecode -c constraints-dev.txt $$(for link in $$links; do printf -- '--find-links %s ' $$link; done) -e '.[dev]' \
	|| { echo "make: uv could not install; pip installs instead"; $(PY) -m pip install -q -c constraints-dev.txt -e '.[dev]'; }
	@# backpack-for-pytorch declares torchvision, whose PyPI build does not load beside every torch
	@# build (and then breaks `import pytorch_lightning`); BackPACK only uses it in its examples.
	$(UV) pip uninstall --python $(PY) -q torchvision
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

# The SLURM tests share the one cluster and each empties its queue, so they run one at a time, in a
# pytest of their own beside the rest, which runs on every core (pytest-xdist, at most 4 workers: each
# imports torch). pytest-xdist's --dist loadgroup cannot keep them on one worker under pytest 9.2 (it
# renames items through the removed Node._nodeid), hence two processes.
# --dist loadscope: a module's tests share one worker, so a module-scoped fixture (a trained sweep,
# the resume scenarios: up to 2 min each) is built once, not once per worker.
# --no-loadscope-reorder: the modules go out in tests/conftest.py's order, slow ones first.
# pytest-xdist's default reorders them by their number of tests, which sent the few-test, minutes-
# long ones (the demo, resume, faults) last: one worker ran them alone for 2-3 min at the end.
# --durations: the slowest tests in CI's log, where a slower suite is first seen.
# Every test process, and every training process a test starts, takes one torch thread: the
# workers already fill the cores, and more threads than cores spin (a demo run: 94 CPU-s on one
# thread, 154 on two beside the other worker).
XDIST := -n auto --maxprocesses 4 --dist loadscope --no-loadscope-reorder
SLURM_LOG := .pytest-slurm.log
LINT_LOG := .lint.log
ONE_THREAD := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

# The cluster starts (apt-get and five daemons: ~20 s on a fresh machine) while pip installs, and
# lint runs beside the tests: mypy on a fresh clone is ~25 CPU-s on one core, which the tests' start
# (imports, collection) does not fill.
test:
	@$(MAKE) --no-print-directory -j2 install slurm-up
	@$(MAKE) --no-print-directory lint > $(LINT_LOG) 2>&1 & lint=$$!; \
	$(ONE_THREAD) $(PY) -m pytest -m slurm -p no:cacheprovider --durations=10 > $(SLURM_LOG) 2>&1 & slurm=$$!; \
	$(ONE_THREAD) $(PY) -m pytest $(XDIST) -m "not slurm" --durations=25; rest=$$?; \
	wait $$slurm; slurm_rc=$$?; wait $$lint; lint_rc=$$?; \
	echo "---- the SLURM tests (pytest -m slurm, run beside the others) ----"; cat $(SLURM_LOG); \
	echo "---- lint (ruff, mypy; run beside the tests) ----"; cat $(LINT_LOG); \
	echo "make test: lint exit $$lint_rc, pytest exit $$rest (not slurm), $$slurm_rc (slurm)"; \
	[ $$lint_rc = 0 ] && [ $$rest = 0 ] && [ $$slurm_rc = 0 ]

test-fast: install
	$(ONE_THREAD) $(PY) -m pytest $(XDIST) -m "not slow and not slurm"

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache $(SLURM_LOG) $(LINT_LOG)
