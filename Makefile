# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
VENV    ?= .venv
PYTHON  ?= python3.11
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed

.PHONY: install demo test browser bench-quick bench-mining mutation clean

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -e .
	@touch $(STAMP)

# Debian's Chromium for the browser tests; never `playwright install` (it downloads).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the browser tests"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "warning: could not install chromium; browser tests will be skipped"; }

demo: install
	$(PY) -m comining demo

test: install browser
	$(PY) -m pytest -q --timeout=900 tests

# the review-queue benchmark, with cleanlab installed so its anchor is measured, not skipped
bench-mining: install
	$(PY) -m pip install -q -c constraints.txt -r requirements-bench.txt
	$(PY) benchmarks/mining.py

bench-quick: install
	$(PY) benchmarks/speed.py --quick
	$(PY) benchmarks/accuracy.py --quick

# Mutation testing of the modules that touch a user's data (tens of minutes; not CI).
# MODULES="cogeneration export" for some; benchmarks/results/mutation.md has the last run.
mutation: install
	OMP_NUM_THREADS=1 $(PY) benchmarks/mutation.py $(MODULES)

clean:
	rm -rf $(VENV) demo .pytest_cache mutants .mutation
