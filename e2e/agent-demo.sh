#!/usr/bin/env bash
# The agent alone, for those who only want the CLI: point-in-time restore in seconds, on
# this machine, with nothing but PostgreSQL's programs and this repository: a throwaway
# server, the WAL archiver, a base backup into a file:// repository, a table dropped by
# mistake, and a restore to the moment before the drop. Everything it starts and writes is
# removed at the end. (`e2e/demo.sh` shows the operator on a local cluster.)
#
#   bash e2e/agent-demo.sh
#
# PG_BIN=/usr/lib/postgresql/16/bin picks the PostgreSQL version (default: pg_config's, else
# the newest installed). PGBACKUP_BIN=path uses a built pgbackup instead of building one.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

pg_bin="${PG_BIN:-}"
if [ -z "$pg_bin" ]; then
  if command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; then
    pg_bin="$(pg_config --bindir)"
  else
    pg_bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
  fi
fi
if [ ! -x "$pg_bin/initdb" ] || [ ! -x "$pg_bin/pg_receivewal" ]; then
  echo "PostgreSQL's server programs (initdb, postgres, pg_receivewal) were not found: set PG_BIN" >&2
  exit 1
fi

binary="${PGBACKUP_BIN:-}"
if [ -z "$binary" ]; then
  echo "==> building pgbackup"
  cargo build --quiet --manifest-path "$root/Cargo.toml" -p pgbackup
  binary="${CARGO_TARGET_DIR:-$root/target}/debug/pgbackup"
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/pgbackup-demo.XXXXXX")"
chmod 755 "$work"
as_pg=()
if [ "$(id -u)" = 0 ]; then
  # PostgreSQL refuses to run as root: the servers and the agent run as `postgres`.
  if ! id postgres >/dev/null 2>&1; then
    echo "running as root needs a 'postgres' OS user" >&2
    exit 1
  fi
  chown postgres "$work"
  # setpriv replaces itself with the command, so signals reach it directly.
  as_pg=(setpriv --reuid=postgres --regid=postgres --clear-groups env HOME="$work")
fi
# A copy the server's OS user can run (restore_command runs it from inside PostgreSQL).
cp "$binary" "$work/pgbackup"
chmod 755 "$work/pgbackup"
pgbackup() { "${as_pg[@]}" "$work/pgbackup" "$@"; }
pg() { "${as_pg[@]}" "$pg_bin/$@"; }

archiver=""
cleanup() {
  set +e
  if [ -n "$archiver" ]; then
    kill "$archiver" 2>/dev/null
    wait "$archiver" 2>/dev/null
  fi
  for data in "$work/data" "$work/restored"; do
    if [ -f "$data/postmaster.pid" ]; then
      pg pg_ctl -D "$data" -m immediate -w stop >/dev/null 2>&1
    fi
  done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { # below the usual range of ephemeral ports, so no client connection holds it
  local port
  for _ in $(seq 50); do
    port=$((15000 + RANDOM % 17000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return
    fi
  done
  echo "no free port" >&2
  exit 1
}

start_server() { # data dir; sets $started_port
  cat >>"$1/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
unix_socket_directories = '$work'
EOF
  # Another process may take the port between the check and the server's bind: retry.
  for _ in 1 2 3 4 5; do
    started_port="$(free_port)"
    echo "port = $started_port" >>"$1/postgresql.conf"
    if pg pg_ctl -D "$1" -l "$1.log" -w start >/dev/null; then
      return
    fi
  done
  cat "$1.log" >&2
  exit 1
}

sql() { # port, SQL
  "$pg_bin/psql" -X -q -A -t -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$1" -U postgres -d postgres -c "$2"
}

pg initdb -D "$work/data" -U postgres --auth=trust --no-sync >/dev/null
echo "wal_level = replica" >>"$work/data/postgresql.conf"
start_server "$work/data"
port="$started_port"
export PGHOST=127.0.0.1 PGPORT="$port" PGUSER=postgres PGDATABASE=postgres PGSSLMODE=disable
export PGBACKUP_REPOSITORY="file://$work/repository" PGBACKUP_SERVER=demo PGBACKUP_PG_BIN="$pg_bin"
export PGBACKUP_LOG_FORMAT=text RUST_LOG="${RUST_LOG:-warn}"

echo "==> a PostgreSQL server ($("$pg_bin/postgres" --version)) on port $port"
sql "$port" "CREATE TABLE orders (id serial PRIMARY KEY, item text, placed timestamptz DEFAULT now());
             CREATE TABLE audit (note text);
             INSERT INTO orders (item) VALUES ('tea'), ('coffee'), ('cake');"

echo "==> the WAL archiver streams WAL into $PGBACKUP_REPOSITORY"
health_port="$(free_port)"
"${as_pg[@]}" "$work/pgbackup" wal-archive --listen "127.0.0.1:$health_port" \
  --spool-dir "$work/spool" --partial-upload-seconds 1 >"$work/archiver.log" 2>&1 &
archiver=$!
ready() { # GET /readyz answers 200 once the archiver streams
  local status
  exec 3<>"/dev/tcp/127.0.0.1/$health_port" || return 1
  printf 'GET /readyz HTTP/1.1\r\nHost: localhost\r\n\r\n' >&3
  read -r _ status _ <&3
  exec 3<&-
  [ "$status" = 200 ]
}
for _ in $(seq 300); do
  ready 2>/dev/null && break
  kill -0 "$archiver" 2>/dev/null || { cat "$work/archiver.log" >&2; exit 1; }
  sleep 0.1
done

echo "==> a base backup"
pgbackup backup --method physical >/dev/null

echo "==> more orders, then a mistake"
sql "$port" "INSERT INTO orders (item) VALUES ('scones'), ('jam');"
before_mistake="$(sql "$port" "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")"
sleep 0.2
sql "$port" "DROP TABLE orders; INSERT INTO audit VALUES ('written after the mistake');"
echo "    orders on the server now: $(sql "$port" "SELECT CASE WHEN to_regclass('orders') IS NULL THEN 'table gone' END")"

# A time is restorable once the archive holds every transaction committed up to it: the
# archiver records that as it stores WAL (the window's end in `pgbackup list`).
target_epoch="$(date -d "$before_mistake" +%s.%N)"
for _ in $(seq 300); do
  to="$(pgbackup list --json | grep -o '"toTime": *"[^"]*"' | tail -n 1 | cut -d '"' -f 4 || true)"
  if [ -n "$to" ] && awk -v a="$(date -d "$to" +%s.%N)" -v b="$target_epoch" 'BEGIN { exit !(a >= b) }'; then
    break
  fi
  sleep 0.1
done

echo "==> pgbackup list"
pgbackup list | sed 's/^/    /'

echo "==> restoring to $before_mistake, the moment before the mistake"
pgbackup restore --pgdata "$work/restored" --target-time "$before_mistake" --recover | sed 's/^/    /'
start_server "$work/restored"
restored_port="$started_port"

back="$(sql "$restored_port" "SELECT string_agg(item, ', ' ORDER BY id) FROM orders")"
after="$(sql "$restored_port" "SELECT count(*) FROM audit")"
echo
echo "came back: orders $back"
echo "left out:  $(sql "$port" "SELECT count(*) FROM audit") audit row written after the mistake (the restored copy has $after)"
