# racelab: `make up` starts the native lab, `make test` runs the test suite (its own lab).
# Every setting is an environment variable (see README, "Settings"); e.g.
#   RACELAB_GATEWAY_PORT=9080 make up
VENV    ?= .venv
PY      := $(VENV)/bin/python
TASKS   ?= 20
EVENTS  ?= 30
PYTEST_ARGS ?=
USERS    ?= 30
RATE     ?= 10
DURATION ?= 60s
VARIANT  ?=
HOST     ?=
LOCUST_ARGS ?=

.PHONY: help install up down status urls burst verify load report bench test clean

help:
	@echo "make up       install what is missing, start the native lab, print the URLs"
	@echo "make status   components, process state and health"
	@echo "make burst    TASKS x EVENTS concurrent event/send per variant, then the checker's table"
	@echo "make verify   the checker: counts per variant (exit 1 if locked/temporal lose anything)"
	@echo "make load     Locust rapid messages (USERS, RATE, DURATION, VARIANT, HOST), then the checker"
	@echo "make report   an HTML report of the latest load run (results/latest/report.html)"
	@echo "make bench    the benchmark table (ingest, apply latency, batching, make up time, memory)"
	@echo "make down     stop everything the lab started"
	@echo "make test     the test suite (starts and stops its own lab)"

install:
	@scripts/install.sh

up: install
	@$(PY) -m racelab.lab up

down:
	@if [ -x $(PY) ]; then $(PY) -m racelab.lab down; else echo "racelab is not installed; nothing to stop"; fi

status:
	@$(PY) -m racelab.lab status

urls:
	@$(PY) -m racelab.lab urls

burst:
	@$(PY) -m racelab.lab.burst --tasks $(TASKS) --events $(EVENTS)

verify:
	@$(PY) -m racelab.checker

load:
	@$(PY) -m racelab.lab.load --users $(USERS) --rate $(RATE) --duration $(DURATION) \
		$(if $(VARIANT),--variant $(VARIANT)) $(if $(HOST),--host $(HOST)) \
		$(if $(LOCUST_ARGS),--locust-args "$(LOCUST_ARGS)")

report:
	@$(PY) -m racelab.report

bench:
	@$(PY) -m racelab.bench

test: install
	@$(PY) -m pytest $(PYTEST_ARGS)

clean: down
	rm -rf "$${RACELAB_STATE_DIR:-/var/tmp/racelab}"
