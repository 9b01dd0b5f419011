# callbridge — developer entry points. `make run` and `make test` are documented in README.md.

VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
SERVE_STAMP := $(VENV)/.serve-stamp
HOST ?= 127.0.0.1
PORT ?= 8080
CHECK_PYTHON = @$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else \
	"callbridge needs Python >= 3.11, and $(PYTHON) is " + sys.version.split()[0] + \
	": run make PYTHON=python3.11 (or newer)")'

.PHONY: run test check lint typecheck unit bench clean pjsua2

# What serving needs: the package and its runtime dependencies only.
$(SERVE_STAMP): pyproject.toml
	$(CHECK_PYTHON)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $(SERVE_STAMP)

# Everything the tests need as well (linters, Playwright, pjsua2); it serves too.
$(STAMP): pyproject.toml
	$(CHECK_PYTHON)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,sip]'
	touch $(STAMP) $(SERVE_STAMP)

# The server replaces the recipe's shell (exec), so Ctrl-C stops it and nothing else; it
# exits 0 after a requested stop, and make reports no error.
run: $(SERVE_STAMP)
	@mkdir -p data
	@echo "callbridge demo on http://$(HOST):$(PORT)"
	@echo "  account sid : demo"
	@echo "  api key     : demo_key"
	@echo "  api token   : demo_token"
	@echo "  dashboard   : http://$(HOST):$(PORT)/dashboard  (sign in with the key and token)"
	@echo "  metrics     : http://$(HOST):$(PORT)/metrics"
	@echo "  callbacks   : in another terminal, $(VENV)/bin/callbridge listen --port 9000 --account demo"
	@echo "  try         : curl -u demo_key:demo_token -H 'Content-Type: application/json' \\"
	@echo "                  -d '{\"from\":{\"contact_uri\":\"+919900000001\"},\"to\":{\"contact_uri\":\"+919800000001\"},\"virtual_number\":\"+912241499102\",\"status_callback\":[{\"event\":\"terminal\",\"url\":\"http://127.0.0.1:9000/hook\"}]}' \\"
	@echo "                  http://$(HOST):$(PORT)/v3/accounts/demo/calls"
	@echo "  the simulated customer answers after 1 s and hangs up after 8 s (examples/demo.toml)"
	@exec $(VENV)/bin/callbridge serve --config examples/demo.toml --host $(HOST) --port $(PORT) --driver sim --allow-private-urls

# The SIP engine: pjsua2 built from vendor/ with server limits, cached under
# $(VENV)/pjsua2-build/<key> (a no-op when the source and flags are unchanged), or the PyPI
# wheel when there is no compiler. The tests also get a small venv with the wheel.
pjsua2: $(STAMP)
	$(PY) scripts/build_pjsua2.py --venv $(VENV) --wheel-venv

check: lint typecheck

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench scripts
	$(VENV)/bin/ruff format --check src tests bench scripts

typecheck: $(STAMP)
	$(VENV)/bin/mypy src/callbridge

test: $(STAMP) pjsua2 check
	$(VENV)/bin/pytest -q -rfER -p no:cacheprovider

bench: $(STAMP)
	$(PY) bench/api.py
	$(PY) bench/sim_capacity.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
