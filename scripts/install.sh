#!/usr/bin/env bash
# Installs what the native lab needs, and only what is missing: Debian packages (nginx,
# redis-server, prometheus, PostgreSQL server, python3-venv), then this project into a virtualenv.
# Idempotent: a second run installs nothing. `--test` adds what only the tests need (chromium). Used by `make install` (and so `make up`/`make test`).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || need+=(redis-server)
command -v prometheus >/dev/null 2>&1 || [ -x /usr/bin/prometheus ] || need+=(prometheus)
command -v postgres >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || need+=(postgresql)
"$PYTHON" -c "import ensurepip, venv" >/dev/null 2>&1 || need+=(python3-venv)
# --test (make test): also the headless browser of the dashboard test; `make up` does without it
if [ "${1:-}" = --test ]; then
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
fi
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  echo "install: apt-get install ${need[*]}"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${need[@]}"
  # On a machine with systemd, apt starts the packages' own services (Prometheus would hold
  # 9090). The lab runs its own instances on its own ports: stop the ones installed just now.
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    for pkg in "${need[@]}"; do
      if systemctl is-active --quiet "$pkg" 2>/dev/null; then
        echo "install: stopping and disabling the system's $pkg service (racelab runs its own)"
        $SUDO systemctl disable --now "$pkg" >/dev/null 2>&1 || true
      fi
    done
  fi
fi

"$PYTHON" - <<'PY'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"racelab needs Python 3.11 or newer, found {sys.version.split()[0]}")
PY
[ -x "$VENV/bin/python" ] || { echo "install: creating $VENV"; "$PYTHON" -m venv "$VENV"; }
stamp="$VENV/.racelab-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "install: pip install -e '.[test]' into $VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -e '.[test]'
  touch "$stamp"
fi
