# The two commands of the README: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 5000
HOST ?= 127.0.0.1

.PHONY: demo test lint install browsers clean constraints

# constraints.txt pins every package these pull in, so each install gets the same tree.
$(BIN)/activate: requirements.txt requirements-dev.txt constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt -c constraints.txt
	touch $(BIN)/activate

install: $(BIN)/activate
	$(BIN)/pybabel compile -d translations

# Starts the portal with the built-in sandbox (Stripe and the platforms' stand-ins) on SQLite, plus
# the job worker, and prints the URLs to click through a whole purchase. Ctrl-C stops both.
# scripts/demo.sh also creates (or resets) a console account per role and prints them.
demo: install
	@BIN=$(BIN) HOST=$(HOST) PORT=$(PORT) bash scripts/demo.sh

# The browser tests inject axe-core from node_modules (npm, pinned by package-lock.json).
node_modules/.package-lock.json: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error

test: install node_modules/.package-lock.json
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check portal tests bench wsgi.py gunicorn.conf.py
	$(BIN)/ruff format --check portal tests bench wsgi.py gunicorn.conf.py

# After changing a pin in requirements*.txt: resolve the whole tree afresh into constraints.txt.
constraints:
	rm -rf .constraints-venv && $(PY) -m venv .constraints-venv
	.constraints-venv/bin/pip install --quiet -r requirements-dev.txt
	{ sed -n '/^#/p' constraints.txt; .constraints-venv/bin/pip freeze; } > constraints.txt.new
	mv constraints.txt.new constraints.txt && rm -rf .constraints-venv

clean:
	rm -rf $(VENV) instance .pytest_cache test-artifacts node_modules
