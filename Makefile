# Entry points. Each target sets up what it needs first (scripts/setup.sh is
# idempotent), so every one of them works on a fresh machine.
VENV ?= .venv
CKAN_VERSION ?= 2.12.0
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# The test config and database (the matrix gives each CKAN version its own
# copy of test.ini, with its own database and Redis db).
TEST_INI ?= test.ini
TEST_DB ?= ckan_archiver_test

export VENV CKAN_VERSION TEST_DB TEST_INI

.PHONY: setup test lint pytest test-matrix demo bench clean

setup:
	bash scripts/setup.sh

## The test command (README.rst, .ci/run): set-up, lint, whole suite.
test: setup lint pytest

lint:
	$(VENV)/bin/ruff check ckanext bench scripts

pytest:
	$(PY) -m pytest --ckan-ini=$(TEST_INI) ckanext/archiver/tests $(PYTEST_ARGS)

## The same suite against CKAN 2.11 and 2.12, each in its own venv.
test-matrix:
	sed -e 's#/ckan_archiver_test$$#/ckan_archiver_test_ckan211#' -e 's#6379/1$$#6379/2#' \
	    test.ini > test-ckan2.11.ini
	sed -e 's#/ckan_archiver_test$$#/ckan_archiver_test_ckan212#' -e 's#6379/1$$#6379/3#' \
	    test.ini > test-ckan2.12.ini
	SETUP_DEV=0 $(MAKE) test VENV=.venv-ckan2.11 CKAN_VERSION=2.11.6 \
	    TEST_DB=ckan_archiver_test_ckan211 TEST_INI=test-ckan2.11.ini
	SETUP_DEV=0 $(MAKE) test VENV=.venv-ckan2.12 CKAN_VERSION=2.12.0 \
	    TEST_DB=ckan_archiver_test_ckan212 TEST_INI=test-ckan2.12.ini

## The main job: a demo portal archiving a realistic mix of links.
demo: setup
	$(PY) scripts/demo.py

## Benchmarks: each prints its numbers beside a baseline (see bench/README.md).
bench: setup
	$(PY) bench/bench_fetch.py
	$(PY) bench/bench_queue.py
	$(PY) bench/bench_report.py
	$(PY) bench/bench_sweep.py

clean:
	rm -rf var .pytest_cache .ruff_cache
