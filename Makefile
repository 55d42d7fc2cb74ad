# dsar: the two commands a newcomer needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint services bench bench-peer bench-shape clean messages

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

## Run an access and an erasure request for a sample person on embedded defaults.
demo: $(STAMP)
	$(VENV)/bin/dsar demo

## The whole test suite (starts PostgreSQL, Redis, MariaDB and RabbitMQ if they are down).
test: $(STAMP) services
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy connectors discovery workers

services:
	@scripts/services.sh

## Extract the translatable texts into every catalogue (discovery/i18n/locales); NEW=sv starts a language.
messages: $(STAMP)
	$(PY) scripts/messages.py $(if $(NEW),--new $(NEW))

bench: $(STAMP) services
	$(PY) bench/seed_accounts.py
	$(PY) bench/bench_backbone.py

## dsar beside Ethyca Fides on one database, interleaved round by round (../shared/peers/fides/README.md):
## every figure with its Fides/dsar ratio and the load average, in bench/out/fides-side-by-side-DATE/table.md.
## ROUNDS=1 BIG=0 for a quick look. It measures the committed HEAD (commit first).
bench-peer: $(STAMP)
	ROUNDS=$${ROUNDS:-3} bash ../shared/peers/fides/run.sh

## The dsar half of bench-peer alone (bench/bench_shape.py): the same seed, config, shape and request mix, ~1 min.
bench-shape: $(STAMP) services
	$(PY) bench/bench_shape.py

clean:
	rm -rf var .pytest_cache .ruff_cache .mypy_cache
