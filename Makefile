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
# make load: share of acked events redelivered with the same id (0 for none); FAULTS: a nemesis spec
DUP_RATE ?= 0.05
FAULTS   ?=
CHAOS_ARGS ?=
PYTEST_ARGS ?=
SOAK_RATE     ?= 20
SOAK_DURATION ?= 10m

-include .env
# VARIANTS=all or a comma list (e.g. VARIANTS=locked,queue): which variants run; every command
# (up, status, burst, verify, load, matrix, test's lab...) reads it as RACELAB_VARIANTS
# AGENT=<path>: also run your own agentex-sdk agent (Agentex's layout, project/acp.py) as variant
# "agent", in a virtualenv of its own (README, "Test your own agent"); the lab's own install is untouched
ifdef AGENT
export RACELAB_AGENT := $(abspath $(AGENT))
endif
ifdef VARIANTS
export RACELAB_VARIANTS := $(VARIANTS)
endif
# VARIANT=locked -> LockedUser, temporal-naive -> TemporalNaiveUser (the locustfile's user class);
# POSIX awk: GNU sed's upper-case escape is not portable (BSD sed on macOS printed "UlockedUser")
LOCUST_CLASS = $(if $(VARIANT),$(shell echo '$(VARIANT)' | awk -F- '{ for (i = 1; i <= NF; i++) \
	printf "%s%s", toupper(substr($$i, 1, 1)), substr($$i, 2); print "User" }'))
# `docker compose wait` (make load) came with Compose v2.20; older ones fail there, after the run
COMPOSE_MIN := 2.20

.PHONY: help install compose-version up down status urls logs burst verify load chaos report bench matrix compose-files test test-agent fuzz clean

help:
	@echo "runtime: $(RUNTIME)   (RUNTIME=docker|native to force one)"
	@echo "make up       start the lab (native: install what is missing first), wait until healthy, print URLs"
	@echo "make status   components and their health"
	@echo "make logs     follow the logs"
	@echo "make burst    TASKS x EVENTS concurrent event/send per variant, then the checker's table"
	@echo "make verify   the checker: counts per variant (exit 1 if locked/temporal lose anything)"
	@echo "make load     Locust rapid messages (USERS, RATE, DURATION, VARIANT, HOST, DUP_RATE, FAULTS; UI=1 with docker),"
	@echo "              at-least-once with a client ledger, then the checker"
	@echo "make chaos    a burst per fault kind (kill pod/worker/redis/postgres/temporal/gateway, pause pod), judged;"
	@echo "              FAULTS='kill-redis@every30s' DURATION=2m: only the nemesis, beside make load"
	@echo "make report   an HTML report of the latest native load run (results/latest/report.html)"
	@echo "make bench    the benchmark: ingest/apply vs a bare INSERT path, Temporal's own limits, checker at 1M events"
	@echo "make soak     SOAK_RATE events/s per variant for SOAK_DURATION (10m): memory growth and latency, judged"
	@echo "make matrix   scenarios x running variants (VARIANTS=all), counts and pass/fail per cell (native lab)"
	@echo "make down     stop everything the lab started (docker: containers and volumes)"
	@echo "make test     the test suite (starts and stops its own native lab)"
	@echo "make up AGENT=examples/agents/race-prone   also run your own agentex-sdk agent as variant agent"
	@echo "make test-agent  the examples under AGENT= (builds their Python 3.12 virtualenv once)"
	@echo "make fuzz     the long property-based fuzz of /api and the state endpoint (native; RACELAB_FUZZ_EXAMPLES, default 10000)"

install:
	@scripts/install.sh

ifeq ($(RUNTIME),docker)

# VARIANTS with Docker Compose: the design card's three always run; VARIANTS=all enables the compose
# profile "zoo" (every variant's pods and the queue workers), a comma list the profiles of those
# variants (each zoo variant's services carry its name). The checker's container is told the same.
comma := ,
ifdef VARIANTS
export COMPOSE_PROFILES := $(if $(filter all,$(VARIANTS)),zoo,$(VARIANTS))
export RACELAB_VARIANTS := $(if $(filter all,$(VARIANTS)),all,unguarded$(comma)locked$(comma)temporal$(comma)$(VARIANTS))
endif
# AGENT=<path> with Docker Compose: compose/agent.yml on top (the Agentex API's pods, the model stub,
# 3 replicas of the agent in an image of its own built from its folder; README "Test your own agent"),
# for every compose command; the agent's name is its folder's, as natively (racelab.agentex.lab)
ifdef AGENT
export COMPOSE_FILE := docker-compose.yml:compose/agent.yml
export RACELAB_AGENT_NAME ?= $(shell basename '$(RACELAB_AGENT)' | tr 'A-Z' 'a-z' | \
	sed -e 's/[^a-z0-9-][^a-z0-9-]*/-/g' -e 's/^--*//' -e 's/--*$$//')
endif

compose-version:
	@v=$$($(COMPOSE) version --short 2>/dev/null | sed 's/^v//'); \
	if ! echo "$$v" | awk -F. -v min=$(COMPOSE_MIN) '{ split(min, m, "."); \
		exit !($$1 + 0 > m[1] || ($$1 + 0 == m[1] && $$2 + 0 >= m[2])) }'; then \
		echo "racelab needs Docker Compose v$(COMPOSE_MIN) or newer; \`$(COMPOSE) version\` says: $${v:-nothing}." >&2; \
		echo "Update Docker (Desktop) or the compose plugin, or run the native lab: make up RUNTIME=native" >&2; \
		exit 1; \
	fi

up: compose-version
	$(COMPOSE) up -d --build --wait
	@$(MAKE) --no-print-directory urls

down:
	$(COMPOSE) --profile load --profile zoo down --volumes --remove-orphans

status:
	$(COMPOSE) ps

logs:
	$(COMPOSE) logs -f

urls:
	@echo "gateway       http://127.0.0.1:$(GATEWAY_PORT)/<variant>/api   (unguarded, locked, temporal$(if $(COMPOSE_PROFILES),; profiles $(COMPOSE_PROFILES)))"
	@echo "grafana       http://127.0.0.1:$(GRAFANA_PORT)   (anonymous viewer; admin password GRAFANA_ADMIN_PASSWORD in .env)"
	@echo "prometheus    http://127.0.0.1:$(PROMETHEUS_PORT)"
	@echo "temporal UI   http://127.0.0.1:$(TEMPORAL_UI_PORT)"
	@echo "locust UI     http://127.0.0.1:$(LOCUST_PORT)   (during make load UI=1)"
ifdef AGENT
	@echo "agent         http://127.0.0.1:$(GATEWAY_PORT)/agent/api   ($(RACELAB_AGENT), 3 replicas as $(RACELAB_AGENT_NAME))"
	@echo "agentex API   http://127.0.0.1:$(GATEWAY_PORT)/agentex"
endif

burst:
	$(COMPOSE) exec -T checker python -m racelab.clients.burst --tasks $(TASKS) --events $(EVENTS) $(if $(VARIANT),--variant $(VARIANT))

verify:
	$(COMPOSE) exec -T checker python -m racelab.checker

# ./results/compose is created here, by the user who runs make, and Locust runs as that user: a
# bind mount the daemon creates would be root's, and Locust could not write its reports there
load: compose-version
	@mkdir -p results/compose
	@run_id=compose-$$(date +%Y%m%d-%H%M%S)-; \
	USERS=$(USERS) RATE=$(RATE) DURATION=$(DURATION) RUN_ID=$$run_id LOCUST_CLASSES="$(LOCUST_CLASS)" DUP_RATE=$(DUP_RATE) \
	LOCUST_MODE="$(if $(UI),--autostart --autoquit 10,--headless)" RACELAB_UID=$$(id -u) RACELAB_GID=$$(id -g) \
	$(COMPOSE) --profile load up -d --force-recreate --no-deps locust-master locust-worker && \
	echo "load: Locust running (run id $$run_id); waiting for it to finish" && \
	$(COMPOSE) wait locust-master; \
	$(COMPOSE) --profile load stop locust-worker; \
	$(COMPOSE) logs --no-log-prefix locust-master | tail -n 40; \
	cat results/compose/$${run_id}ledger/ledger*.jsonl 2>/dev/null | \
	$(COMPOSE) exec -T checker python -m racelab.checker --task-prefix $$run_id --ledger /dev/stdin

# With Docker only the nemesis schedule (beside a `make load`); it runs on the host, where the
# docker CLI is (`make install` once for its virtualenv)
chaos:
	@[ -n "$(FAULTS)" ] || { echo "with Docker: make chaos FAULTS='kill-pod:locked@10s,kill-redis@every30s' DURATION=2m (beside make load); the judged burst-per-fault run is native-only"; exit 2; }
	@[ -x $(PY) ] || { echo "make chaos runs the nemesis on this host: run make install first"; exit 2; }
	@mkdir -p results/compose
	@$(PY) -m racelab.nemesis --runtime docker --faults "$(FAULTS)" --duration $(DURATION) \
		--log results/compose/faults-$$(date +%Y%m%d-%H%M%S).jsonl

report bench matrix:
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
	@$(PY) -m racelab.clients.burst --tasks $(TASKS) --events $(EVENTS) $(if $(VARIANT),--variant $(VARIANT))

verify:
	@$(PY) -m racelab.checker

load:
	@$(PY) -m racelab.clients.load --users $(USERS) --rate $(RATE) --duration $(DURATION) \
		$(if $(VARIANT),--variant $(VARIANT)) $(if $(HOST),--host $(HOST)) \
		$(if $(LOCUST_ARGS),--locust-args="$(LOCUST_ARGS)") --dup-rate $(DUP_RATE) \
		$(if $(FAULTS),--faults "$(FAULTS)")

# make chaos: a burst per fault kind with the fault mid-burst, judged (CHAOS_ARGS, e.g.
# "--fault kill-redis --tasks 10"); make chaos FAULTS=<schedule> [DURATION=2m]: only the
# nemesis, on that schedule, beside a `make load` in another terminal
chaos:
	@if [ -n "$(FAULTS)" ]; then $(PY) -m racelab.nemesis --faults "$(FAULTS)" --duration $(DURATION) \
		--log "$${RACELAB_RESULTS_DIR:-results}/faults-$$(date +%Y%m%d-%H%M%S).jsonl"; \
	else $(PY) -m racelab.clients.chaos $(CHAOS_ARGS); fi

report:
	@$(PY) -m racelab.report

bench:
	@$(PY) -m racelab.bench

# make soak: SOAK_RATE events/s per running variant for SOAK_DURATION; memory (PSS) of every
# process and latency percentiles sampled; exit 1 on memory growth or wrong guarded counts
soak:
	@$(PY) -m racelab.bench.soak --rate $(SOAK_RATE) --duration $(SOAK_DURATION)

matrix:
	@$(PY) -m racelab.clients.matrix

fuzz:
	@scripts/install.sh
	RACELAB_FUZZ_EXAMPLES=$${RACELAB_FUZZ_EXAMPLES:-10000} $(PY) -m pytest tests/test_fuzz.py $(PYTEST_ARGS)

endif

compose-files:
	@$(PY) -m racelab.lab.compose --write

test:
	@scripts/install.sh --test
	@$(PY) -m pytest $(PYTEST_ARGS)

# the slow tests of variant "agent": build the examples' agent virtualenv (agentex-sdk, Python >= 3.12)
# and run each example under AGENT= on a native lab of their own
test-agent:
	@scripts/install.sh
	@RACELAB_AGENT_TESTS=1 $(PY) -m pytest tests/test_agent_examples.py $(PYTEST_ARGS)

clean: down
	rm -rf "$${RACELAB_STATE_DIR:-/var/tmp/racelab}"
