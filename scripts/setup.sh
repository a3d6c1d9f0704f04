#!/usr/bin/env bash
# Sets up everything the tests and the demo need, idempotently:
#   * a virtualenv ($VENV, default .venv) with CKAN ($CKAN_VERSION), this
#     extension and its dev requirements;
#   * PostgreSQL and Redis running (started when installed but stopped,
#     installed from Debian packages when absent);
#   * the database role and the dev and test databases, migrated;
#   * dev.ini (with a fresh secret) when missing.
# Running it twice in a row is fine: every step checks before it acts.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
CKAN_VERSION=${CKAN_VERSION:-2.12.0}
PYTHON=${PYTHON:-python3.11}
DB_USER=ckan_default
DB_PASS=pass
TEST_DB=${TEST_DB:-ckan_archiver_test}
DBS="$TEST_DB ckan_archiver_dev"

say() { printf '==> %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else sudo -u postgres "$@"; fi; }
apt_install() {
  say "installing $* from Debian packages"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# --- Python environment -----------------------------------------------------
command -v "$PYTHON" >/dev/null || PYTHON=python3
stamp="$VENV/.archiver-setup"
want="$CKAN_VERSION $(cat setup.py requirements.txt dev-requirements.txt | sha1sum | cut -c1-40)"
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "installing CKAN $CKAN_VERSION and the extension into $VENV"
  "$VENV/bin/pip" install -q --upgrade pip setuptools wheel
  "$VENV/bin/pip" install -q "ckan[requirements]==$CKAN_VERSION"
  constraints=()
  case "$CKAN_VERSION" in  # CKAN 2.11 pins redis 5, which kombu 5.6+ refuses
    2.11.*) echo "celery<5.6" > "$VENV/constraints.txt"; constraints=(-c "$VENV/constraints.txt") ;;
  esac
  "$VENV/bin/pip" install -q -r requirements.txt -r dev-requirements.txt "${constraints[@]}"
  "$VENV/bin/pip" install -q --no-deps -e .
  echo "$want" > "$stamp"
fi

# --- PostgreSQL -------------------------------------------------------------
if ! command -v pg_lsclusters >/dev/null; then
  apt_install postgresql
fi
pg_version=$(pg_lsclusters -h | awk 'NR==1{print $1}')
if [ -z "$pg_version" ]; then
  pg_version=$(ls /usr/lib/postgresql | sort -V | tail -n1)
  say "creating PostgreSQL cluster $pg_version/main"
  as_root pg_createcluster "$pg_version" main >/dev/null
fi
if ! pg_lsclusters -h | awk '$4=="online"' | grep -q .; then
  say "starting PostgreSQL $pg_version"
  as_root pg_ctlcluster --skip-systemctl-redirect "$pg_version" main start
fi
for _ in $(seq 1 30); do
  as_postgres psql -qtAc "select 1" >/dev/null 2>&1 && break
  sleep 1
done

# --- Redis ------------------------------------------------------------------
if ! command -v redis-server >/dev/null; then
  apt_install redis-server
fi
if ! redis-cli -h 127.0.0.1 ping >/dev/null 2>&1; then
  say "starting Redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" \
    --appendonly no --logfile /tmp/archiver-redis.log
  for _ in $(seq 1 30); do
    redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 && break
    sleep 0.2
  done
fi

# --- iproute2 (the multi-host test makes network namespaces with `ip`) -------
if ! command -v ip >/dev/null; then
  apt_install iproute2
fi

# --- Role and databases -----------------------------------------------------
if [ "$(as_postgres psql -qtAc "select 1 from pg_roles where rolname='$DB_USER'")" != 1 ]; then
  say "creating database role $DB_USER"
  as_postgres psql -qc "create role $DB_USER login password '$DB_PASS'"
fi
for db in $DBS; do
  if [ "$(as_postgres psql -qtAc "select 1 from pg_database where datname='$db'")" != 1 ]; then
    say "creating database $db"
    as_postgres createdb -O "$DB_USER" -E utf-8 -T template0 "$db"
  fi
done

# --- Configuration and migrations ------------------------------------------
if [ ! -f dev.ini ]; then
  say "writing dev.ini"
  secret=$("$VENV/bin/python" -c 'import secrets; print(secrets.token_urlsafe(32))')
  sed "s/@SECRET@/$secret/g" scripts/dev.ini.in > dev.ini
fi
mkdir -p var
migrate() {  # migrate INI: core tables, then the archiver's
  "$VENV/bin/ckan" -c "$1" db upgrade >/dev/null 2>&1 || "$VENV/bin/ckan" -c "$1" db init
  "$VENV/bin/ckan" -c "$1" db upgrade -p archiver
}
migrate "${TEST_INI:-test.ini}"
# the matrix's other CKAN versions leave the dev database alone
if [ "${SETUP_DEV:-1}" = 1 ]; then migrate dev.ini; fi
# --- Browser for the browser test (tests/test_browser.py) -------------------
# Debian's Chromium and its driver: Selenium never downloads a browser.
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  apt_install chromium chromium-driver
fi
say "set-up done ($VENV, CKAN $CKAN_VERSION)"
