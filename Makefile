# recallstream: `make test` and `make demo` work as the only command on a fresh machine.
# `install` is quick once done: it reruns only when pyproject.toml or the Kafka pom changes.

PYTHON ?= python3
VENV := .venv
INSTALLED := $(VENV)/.installed

.PHONY: install test demo broker

install: $(INSTALLED)

$(INSTALLED): pyproject.toml deploy/kafka/pom.xml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --progress-bar off -e '.[test]'
	# Kafka jars for the local broker, cached outside the tree (see README, "Set-up").
	$(VENV)/bin/recallstream broker fetch
	touch $@

# Two pytest processes (each starts its own broker); a test file stays in one process, as
# its module fixtures are set up once. TEST_WORKERS=0 runs the suite in this process.
TEST_WORKERS ?= 2

test: install
	$(VENV)/bin/python -m pytest -n $(TEST_WORKERS) --dist loadfile

demo: install
	$(VENV)/bin/recallstream demo

broker: install
	$(VENV)/bin/recallstream broker start
