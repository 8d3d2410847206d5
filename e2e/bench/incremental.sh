#!/usr/bin/env bash
# Incremental against full physical backups, side by side in one run: a PostgreSQL 17+
# database of pgbench scale N plus a table of random text (about 2:1 compressible, as
# users' data is; pgbench's own rows compress to almost nothing), backed up in full, then
# about 1% of its pages changed, then backed up incrementally on top of that full backup.
# Two rounds; the best time of each kind counts. It prints both times, both stored sizes,
# their ratios and whether the targets are met (an incremental under a fifth of the
# full's time and under a tenth of its bytes), and the restore of the chain next to the
# restore of the full backup.
#
#   bash e2e/bench/incremental.sh                 # scale 50, about 5 minutes
#   bash e2e/bench/incremental.sh --scale 5       # to try it out
#
# Options: --scale N (default 50), --pg-bin DIR (PostgreSQL 17 or later with pgbench and
# pg_combinebackup; default the 18 of .ci/fetch-postgres's version matrix), --work-dir DIR,
# --output FILE, --keep. PGBACKUP_BIN=path uses a built pgbackup; otherwise it is built in
# release mode as bench.sh builds it. Run as root, PostgreSQL and pgbackup run as the
# `postgres` OS user. Both repositories are `file://` on the same disk.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
scale=50 pg_bin="" work_parent="${TMPDIR:-/tmp}" output="" keep=0
while [ $# -gt 0 ]; do
  case "$1" in
    --scale) scale="$2"; shift 2 ;;
    --pg-bin) pg_bin="$2"; shift 2 ;;
    --work-dir) work_parent="$2"; shift 2 ;;
    --output) output="$2"; shift 2 ;;
    --keep) keep=1; shift ;;
    -h | --help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "incremental.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'incremental.sh: %s\n' "$*" >&2; exit 1; }

if [ -z "$pg_bin" ]; then
  matrix="${PGBACKUP_TEST_PG_CACHE:-/var/tmp/pgbackup-test-postgres}/matrix"
  pg_bin="$(awk '$1 == 18 {print $2}' "$matrix" 2>/dev/null || true)"
  [ -n "$pg_bin" ] || die "no PostgreSQL 18 in $matrix: run bash .ci/fetch-postgres, or give --pg-bin"
fi
for tool in initdb pg_ctl pgbench pg_basebackup pg_combinebackup psql; do
  [ -x "$pg_bin/$tool" ] || die "$pg_bin/$tool is missing: --pg-bin must hold PostgreSQL 17+ with its client tools"
done

if [ -n "${PGBACKUP_BIN:-}" ]; then
  pgbackup_built="$PGBACKUP_BIN"
else
  target="${CARGO_TARGET_DIR:-$HOME/.cache/pgbackup/bench-target}"
  log "building pgbackup in release mode into $target"
  CARGO_TARGET_DIR="$target" cargo build --quiet --release --locked \
    --manifest-path "$root/Cargo.toml" -p pgbackup
  pgbackup_built="$target/release/pgbackup"
fi

work="$(mktemp -d "$work_parent/pgbackup-incremental.XXXXXX")"
chmod 755 "$work"
mkdir -p "$work/run" "$work/logs"
run_as=()
if [ "$(id -u)" -eq 0 ]; then
  chown -R postgres "$work"
  run_as=(setpriv --reuid=postgres --regid=postgres --clear-groups env HOME="$work")
fi
cp "$pgbackup_built" "$work/pgbackup" && chmod 755 "$work/pgbackup"
pgdata="$work/pgdata"
cleanup() {
  set +e
  [ -f "$pgdata/postmaster.pid" ] &&
    "${run_as[@]}" "$pg_bin/pg_ctl" -D "$pgdata" -m immediate -w stop >/dev/null 2>&1
  if [ "$keep" = 1 ]; then log "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

as() { "${run_as[@]}" "$@"; }
"${run_as[@]}" "$pg_bin/initdb" -D "$pgdata" -U postgres --auth=trust --no-sync >"$work/logs/initdb.log"
port=$((15000 + RANDOM % 17000))
cat >>"$pgdata/postgresql.conf" <<EOF
port = $port
listen_addresses = ''
unix_socket_directories = '$work/run'
wal_level = replica
summarize_wal = on
max_wal_size = 4GB
EOF
as "$pg_bin/pg_ctl" -D "$pgdata" -l "$work/logs/postgres.log" -w start >/dev/null
export PGHOST="$work/run" PGPORT="$port" PGUSER=postgres PGDATABASE=postgres
sql() { as "$pg_bin/psql" -X -q -A -t -v ON_ERROR_STOP=1 -c "$1"; }

log "building the database: pgbench -i -s $scale and a table of random text"
as "$pg_bin/pgbench" -i -s "$scale" -q >"$work/logs/pgbench-init.log" 2>&1
sql "CREATE TABLE notes AS SELECT g AS id, md5(random()::text) || md5(random()::text) || md5(random()::text) AS body FROM generate_series(1, $((scale * 60000))) g"
# A database that has been running a while: vacuumed and frozen. Right after a bulk load
# the first vacuum rewrites every page it visits, and an incremental backup then copies
# them all (round 1 measured 85% of the full's bytes that way).
sql "VACUUM (FREEZE, ANALYZE)" >/dev/null
sql "CHECKPOINT" >/dev/null
data_bytes="$( (cd "$pgdata" && du -sb --exclude=./pg_wal .) | cut -f 1)"
pages="$(sql "SELECT sum(relpages) FROM pg_class WHERE relname IN ('pgbench_accounts', 'notes')")"
log "database ready: $((data_bytes / 1048576)) MiB"

now() { date +%s.%N; }
backup() { # repository, extra options; prints "seconds stored_bytes id"
  local start end summary
  start="$(now)"
  summary="$(as "$work/pgbackup" backup --method physical --repository "file://$1" \
    --server bench --pg-bin "$pg_bin" --no-row-counts "${@:2}" 2>>"$work/logs/backups.log")"
  end="$(now)"
  python3 -c 'import json, sys; s = json.loads(sys.argv[3]); print("%.2f %d %s %d" % (float(sys.argv[2]) - float(sys.argv[1]), s["storedSize"], s["backupId"], len(s.get("chain") or [])))' \
    "$start" "$end" "$summary"
}
# About 1% of the pages of both big tables change: a quarter of a percent of the rows get
# new versions (on new pages), and the pages of their old versions change too.
change_one_percent() { # round
  local rows=$((scale * 1000)) first last
  first=$((1 + $1 * rows)) last=$(($1 * rows + rows / 4))
  sql "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid BETWEEN $first AND $last"
  sql "UPDATE notes SET body = md5(body) || body WHERE id BETWEEN $first AND $last"
}

best_full="" best_inc="" full_stored="" inc_stored="" rounds=""
for round in 1 2; do
  repo="$work/repo-$round"
  mkdir -p "$repo" && chown "$(stat -c %u "$work")" "$repo"
  read -r t_full s_full id_full _ <<<"$(backup "$repo")"
  change_one_percent "$round"
  sql "CHECKPOINT" >/dev/null
  read -r t_inc s_inc id_inc chain <<<"$(backup "$repo" --incremental)"
  [ "$chain" = 1 ] || die "round $round: the second backup was not an incremental one on the first"
  log "round $round: full $t_full s ($s_full bytes), incremental $t_inc s ($s_inc bytes)"
  rounds+="| $round | $t_full | $s_full | $t_inc | $s_inc |"$'\n'
  if [ -z "$best_full" ] || python3 -c "import sys; sys.exit(not $t_full < $best_full)"; then
    best_full="$t_full" full_stored="$s_full"
  fi
  if [ -z "$best_inc" ] || python3 -c "import sys; sys.exit(not $t_inc < $best_inc)"; then
    best_inc="$t_inc" inc_stored="$s_inc"
  fi
  last_repo="$repo" last_full="$id_full" last_inc="$id_inc"
done
changed="$(sql "SELECT count(*) FROM (SELECT DISTINCT (ctid::text::point)[0] FROM pgbench_accounts WHERE abalance <> 0 UNION ALL SELECT DISTINCT (ctid::text::point)[0] FROM notes WHERE length(body) > 96) p")"

restore() { # backup id; prints seconds
  local dir="$work/restored" start end
  rm -rf "$dir"
  start="$(now)"
  as "$work/pgbackup" restore --repository "file://$last_repo" --server bench --backup "$1" \
    --pgdata "$dir" --pg-bin "$pg_bin" >>"$work/logs/restores.log" 2>&1
  end="$(now)"
  rm -rf "$dir"
  python3 -c "print(f'{$end - $start:.2f}')"
}
restore_full="$(restore "$last_full")"
restore_chain="$(restore "$last_inc")"

report="$(python3 - "$best_full" "$best_inc" "$full_stored" "$inc_stored" "$restore_full" "$restore_chain" \
  "$data_bytes" "$changed" "$pages" "$scale" "$("$pg_bin/postgres" --version)" <<'PY'
import sys
full, inc, full_b, inc_b, r_full, r_chain, data, changed, pages, scale, version = sys.argv[1:]
full, inc, r_full, r_chain = map(float, (full, inc, r_full, r_chain))
full_b, inc_b, data, changed, pages = map(int, (full_b, inc_b, data, changed, pages))
mib = lambda b: f"{b / 1048576:.1f} MiB"
time_ratio, byte_ratio = inc / full, inc_b / full_b
print(f"Incremental against full physical backups ({version.strip()}, pgbench scale {scale} plus random text, "
      f"{mib(data)}; new row versions on {changed} of its {pages} table pages, {100 * changed / pages:.1f}%, "
      f"the old versions' pages changed too; best of 2 rounds)")
print()
print("| backup | seconds | stored | restore seconds |")
print("|---|---|---|---|")
print(f"| full | {full:.2f} | {mib(full_b)} | {r_full:.2f} |")
print(f"| incremental on it | {inc:.2f} | {mib(inc_b)} | {r_chain:.2f} (full + incremental combined) |")
print()
print(f"incremental/full time:  {time_ratio:.3f}  (target < 0.2: {'met' if time_ratio < 0.2 else 'NOT met'})")
print(f"incremental/full bytes: {byte_ratio:.3f}  (target < 0.1: {'met' if byte_ratio < 0.1 else 'NOT met'})")
PY
)"
report+=$'\n\nEvery round (seconds, stored bytes; each backup carries the WAL segment(s) it spans,\nwhose unused tail is older WAL that may not compress):\n\n| round | full s | full bytes | incremental s | incremental bytes |\n|---|---|---|---|---|\n'"$rounds"
echo "$report"
[ -n "$output" ] && echo "$report" >"$output"
exit 0
