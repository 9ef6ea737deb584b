# racelab: `make up` starts the lab, `make test` runs the test suite (on a native lab of its own).
#
# RUNTIME: docker when a Docker engine answers, else native (the default here: processes under
# supervisor). Force one with RUNTIME=docker or RUNTIME=native. Every native setting is an
# environment variable (README, "Settings"), e.g. `RACELAB_GATEWAY_PORT=9080 make up`; compose's
# versions and published ports are in .env.
VENV    ?= .venv
PY      := $(VENV)/bin/python
COMPOSE ?= docker compose
RUNTIME ?= $(shell docker info >/dev/null 2>&1 && echo docker || echo native)
TASKS   ?= 20
EVENTS  ?= 30
USERS    ?= 30
RATE     ?= 10
DURATION ?= 60s
VARIANT  ?=
HOST     ?=
UI       ?=
LOCUST_ARGS ?=
PYTEST_ARGS ?=

-include .env
# VARIANT=locked -> LockedUser (the locustfile's user class)
LOCUST_CLASS = $(if $(VARIANT),$(shell echo $(VARIANT) | sed 's/^./\U&/')User)

.PHONY: help install up down status urls logs burst verify load report bench compose-files test clean

help:
	@echo "runtime: $(RUNTIME)   (RUNTIME=docker|native to force one)"
	@echo "make up       start the lab (native: install what is missing first), wait until healthy, print URLs"
	@echo "make status   components and their health"
	@echo "make logs     follow the logs"
	@echo "make burst    TASKS x EVENTS concurrent event/send per variant, then the checker's table"
	@echo "make verify   the checker: counts per variant (exit 1 if locked/temporal lose anything)"
	@echo "make load     Locust rapid messages (USERS, RATE, DURATION, VARIANT, HOST; UI=1 with docker), then the checker"
	@echo "make report   an HTML report of the latest native load run (results/latest/report.html)"
	@echo "make bench    the benchmark table (native lab)"
	@echo "make down     stop everything the lab started (docker: containers and volumes)"
	@echo "make test     the test suite (starts and stops its own native lab)"

install:
	@scripts/install.sh

ifeq ($(RUNTIME),docker)

up:
	$(COMPOSE) up -d --build --wait
	@$(MAKE) --no-print-directory urls

down:
	$(COMPOSE) --profile load down --volumes --remove-orphans

status:
	$(COMPOSE) ps

logs:
	$(COMPOSE) logs -f

urls:
	@echo "gateway       http://127.0.0.1:$(GATEWAY_PORT)/<variant>/api   (unguarded, locked, temporal)"
	@echo "grafana       http://127.0.0.1:$(GRAFANA_PORT)   (anonymous viewer; admin password GRAFANA_ADMIN_PASSWORD in .env)"
	@echo "prometheus    http://127.0.0.1:$(PROMETHEUS_PORT)"
	@echo "temporal UI   http://127.0.0.1:$(TEMPORAL_UI_PORT)"
	@echo "locust UI     http://127.0.0.1:$(LOCUST_PORT)   (during make load UI=1)"

burst:
	$(COMPOSE) exec -T checker python -m racelab.clients.burst --tasks $(TASKS) --events $(EVENTS)

verify:
	$(COMPOSE) exec -T checker python -m racelab.checker

load:
	@run_id=compose-$$(date +%Y%m%d-%H%M%S)-; \
	USERS=$(USERS) RATE=$(RATE) DURATION=$(DURATION) RUN_ID=$$run_id LOCUST_CLASSES="$(LOCUST_CLASS)" \
	LOCUST_MODE="$(if $(UI),--autostart --autoquit 10,--headless)" \
	$(COMPOSE) --profile load up -d --build --force-recreate --no-deps locust-master locust-worker && \
	echo "load: Locust running (run id $$run_id); waiting for it to finish" && \
	$(COMPOSE) wait locust-master; \
	$(COMPOSE) --profile load stop locust-worker; \
	$(COMPOSE) logs --no-log-prefix locust-master | tail -n 40; \
	$(COMPOSE) exec -T checker python -m racelab.checker --task-prefix $$run_id

report bench:
	@echo "make $@ reads the native lab's results; run it with RUNTIME=native"; exit 2

else

up: install
	@$(PY) -m racelab.lab up

down:
	@if [ -x $(PY) ]; then $(PY) -m racelab.lab down; else echo "racelab is not installed; nothing to stop"; fi

status:
	@$(PY) -m racelab.lab status

logs:
	@tail -F "$${RACELAB_STATE_DIR:-/var/tmp/racelab}"/logs/*.log

urls:
	@$(PY) -m racelab.lab urls

burst:
	@$(PY) -m racelab.clients.burst --tasks $(TASKS) --events $(EVENTS)

verify:
	@$(PY) -m racelab.checker

load:
	@$(PY) -m racelab.clients.load --users $(USERS) --rate $(RATE) --duration $(DURATION) \
		$(if $(VARIANT),--variant $(VARIANT)) $(if $(HOST),--host $(HOST)) \
		$(if $(LOCUST_ARGS),--locust-args "$(LOCUST_ARGS)")

report:
	@$(PY) -m racelab.report

bench:
	@$(PY) -m racelab.bench

endif

compose-files:
	@$(PY) -m racelab.lab.compose --write

test: install
	@$(PY) -m pytest $(PYTEST_ARGS)

clean: down
	rm -rf "$${RACELAB_STATE_DIR:-/var/tmp/racelab}"
