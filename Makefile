# callbridge — developer entry points. `make run` and `make test` are documented in README.md.

VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
HOST ?= 127.0.0.1
PORT ?= 8080

.PHONY: run test check lint typecheck unit bench clean pjsua2

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,sip]'
	touch $(STAMP)

run: $(STAMP)
	@mkdir -p data
	@echo "callbridge demo on http://$(HOST):$(PORT)"
	@echo "  account sid : demo"
	@echo "  api key     : demo_key"
	@echo "  api token   : demo_token"
	@echo "  dashboard   : http://$(HOST):$(PORT)/dashboard  (sign in with the key and token)"
	@echo "  try         : curl -u demo_key:demo_token -H 'Content-Type: application/json' \\"
	@echo "                  -d '{\"from\":{\"contact_uri\":\"+919900000001\"},\"to\":{\"contact_uri\":\"+919800000001\"},\"virtual_number\":\"+912241499102\"}' \\"
	@echo "                  http://$(HOST):$(PORT)/v3/accounts/demo/calls"
	$(VENV)/bin/callbridge serve --config examples/demo.toml --host $(HOST) --port $(PORT) --driver sim

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
