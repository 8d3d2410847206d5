#!/usr/bin/env bash
# pgbackup against barman-cloud and pgBackRest, side by side: one database, one machine,
# one run, repositories of the same kind compared with each other. It measures
#   1. a physical backup: pgbackup into a file:// repository against pgBackRest into a
#      posix one, at zstd level 3 (both defaults) and at level 1; pgbackup into S3 against
#      barman-cloud-backup into the same S3 server; `tar | zstd` of the same files as the
#      machine's limit and `pg_basebackup | zstd -3` as the limit of any
#      pg_basebackup-based tool;
#   2. the restore of each of those backups into an empty directory, and `zstd -d | tar -x`
#      as the limit;
#   3. WAL archiving as archive_command: one process per 16 MiB segment, one after the
#      other, as PostgreSQL runs it (latency p50/p99, segments per second), with one
#      segment ready at a time and with all of them ready at once (a backlog);
#   4. WAL replay: a recovery through every one of those segments, fetched by
#      restore_command (pgbackup wal-fetch against pgBackRest's asynchronous archive-get);
#   5. the streaming archiver (`pgbackup wal-archive`): how far it trails the server
#      under `pgbench -c 4` load;
# and for each the peak memory. It prints one table, the same as Markdown, whether the
# team's targets are met, and every command it timed.
#
#   bash e2e/bench/bench.sh                      # scale 50 + 3M rows of text (1.2 GiB), ~20 minutes
#   bash e2e/bench/bench.sh --quick              # scale 5, a few minutes: to try it out
#   bash e2e/bench/bench.sh --scale 200 --segments 200 --load-seconds 120
#
# Options (see --help): --scale N, --data mixed|pgbench, --rounds N, --segments N, --load-seconds N, --quick,
# --barman-compression bzip2|gzip|snappy[,…], --revision REV, --pg-bin DIR, --work-dir DIR,
# --output FILE, --keep.
# PGBACKUP_BIN=path uses a built pgbackup; otherwise it is built in release mode into
# CARGO_TARGET_DIR (default ~/.cache/pgbackup/bench-target, apart from debug builds).
#
# Needs PostgreSQL 15's server programs, barman-cli-cloud, pgbackrest,
# zstd and s3s-fs; what is missing is installed (Debian packages with apt-get, which needs
# root; s3s-fs 0.14.1 with cargo, as .ci/setup does). Run as root, PostgreSQL and every tool
# run as the `postgres` OS user. Everything it starts is stopped and everything it writes
# (in a scratch directory, several GiB at scale 50) removed at the end, unless --keep.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
invocation="bash e2e/bench/bench.sh${*:+ $*}"

scale=50
data=mixed
segments=100
rounds=2
load_seconds=60
pg_bin=/usr/lib/postgresql/15/bin
barman_compression=bzip2
work_parent="${TMPDIR:-/tmp}"
keep=0
output=""
revision=""
S3S_FS_VERSION=0.14.1

usage() {
  cat <<EOF
usage: bash e2e/bench/bench.sh [options]

  --scale N                pgbench scale of the database (default $scale; 1 is about 15 MiB)
  --data mixed|pgbench     mixed (default): the pgbench tables plus a table of 60,000 rows
                           of random text per scale step (md5(random()) three times a row,
                           about 2:1 compressible, like users' data); pgbench: its tables
                           alone, whose blank padding compresses to almost nothing
  --rounds N               backups and restores run N times, every tool once a round in
                           turn; the best of each is reported (default $rounds: single runs
                           here vary by up to 1.5x)
  --segments N             WAL segments timed through each archive_command (default $segments)
  --load-seconds N         length of the pgbench load for the streaming archiver (default $load_seconds)
  --quick                  --scale 5 --segments 20 --load-seconds 20 --rounds 1
  --barman-compression C[,C…]
                           barman-cloud's compression, one row per choice: bzip2 (default),
                           gzip or snappy (barman-cloud 3.4's three). Both bzip2 and gzip run
                           at level 9, which barman does not let one change; on pgbench data
                           bzip2 backs up and archives WAL faster than gzip (gzip restores
                           faster). snappy needs python3-snappy, and Debian 12's fails in
                           barman-cloud-backup under Python 3.11
  --pg-bin DIR             PostgreSQL's programs (default $pg_bin)
  --work-dir DIR           where the scratch directory goes (default \$TMPDIR or /tmp)
  --revision REV           benchmark a committed revision (built from \`git archive REV\`)
                           instead of the working tree
  --output FILE            also write the report to FILE
  --keep                   leave the scratch directory (logs, results.jsonl) behind
EOF
}

while [ $# -gt 0 ]; do
  case "$1" in
    --scale) scale="$2"; shift ;;
    --data) data="$2"; shift ;;
    --segments) segments="$2"; shift ;;
    --rounds) rounds="$2"; shift ;;
    --load-seconds) load_seconds="$2"; shift ;;
    --quick) scale=5 segments=20 load_seconds=20 rounds=1 ;;
    --barman-compression) barman_compression="$2"; shift ;;
    --pg-bin) pg_bin="$2"; shift ;;
    --work-dir) work_parent="$2"; shift ;;
    --revision) revision="$2"; shift ;;
    --output) output="$(realpath -m "$2")"; shift ;;
    --keep) keep=1 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
  shift
done
if [ -n "$revision" ]; then # fixed now: the branch may move while the benchmark runs
  revision="$(git -C "$root" rev-parse --short "$revision^{commit}")" || { echo "bench: no revision $revision" >&2; exit 2; }
fi
case "$data" in mixed | pgbench) ;; *) usage >&2; exit 2 ;; esac
case "$rounds" in '' | *[!0-9]* | 0) usage >&2; exit 2 ;; esac
IFS=, read -r -a barman_compressions <<<"$barman_compression"
for compression in "${barman_compressions[@]}"; do
  case "$compression" in snappy | gzip | bzip2) ;; *) usage >&2; exit 2 ;; esac
done

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'bench: %s\n' "$*" >&2; exit 1; }
is_root() { [ "$(id -u)" -eq 0 ]; }

# --- what it needs --------------------------------------------------------------------

# The Debian python that barman-cloud runs with; the helpers need nothing beyond it.
python=/usr/bin/python3
[ -x "$python" ] || python="$(command -v python3)" || die "python3 is needed"

install_missing() {
  local packages=()
  [ -x "$pg_bin/initdb" ] && [ -x "$pg_bin/pg_basebackup" ] || packages+=(postgresql-15)
  [ -x "$pg_bin/pgbench" ] || packages+=(postgresql-contrib)
  command -v barman-cloud-backup >/dev/null || packages+=(barman-cli-cloud)
  if [[ ",$barman_compression," = *,snappy,* ]] && ! /usr/bin/python3 -c 'import snappy' 2>/dev/null; then
    packages+=(python3-snappy)
  fi
  command -v pgbackrest >/dev/null || packages+=(pgbackrest)
  command -v zstd >/dev/null || packages+=(zstd)
  command -v curl >/dev/null || packages+=(curl)
  if [ ${#packages[@]} -gt 0 ]; then
    is_root || die "missing: ${packages[*]}. Installing them needs root: run as root, or first: sudo apt-get install ${packages[*]}"
    log "installing Debian packages: ${packages[*]} (apt-get, as root)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
  fi
  s3s_fs="${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs"
  if ! "$s3s_fs" --version 2>/dev/null | grep -q "$S3S_FS_VERSION"; then
    if s3s-fs --version 2>/dev/null | grep -q "$S3S_FS_VERSION"; then
      s3s_fs="$(command -v s3s-fs)"
    else
      log "installing s3s-fs $S3S_FS_VERSION with cargo (a few minutes the first time)"
      cargo install --quiet --locked "s3s-fs@$S3S_FS_VERSION" --features binary
    fi
  fi
  if is_root && ! id postgres >/dev/null 2>&1; then
    log "creating the postgres OS user (PostgreSQL refuses to run as root)"
    useradd --system --create-home --shell /bin/bash postgres
  fi
}

build_pgbackup() {
  if [ -n "${PGBACKUP_BIN:-}" ]; then
    [ -x "$PGBACKUP_BIN" ] || die "PGBACKUP_BIN=$PGBACKUP_BIN is not an executable"
    pgbackup_built="$PGBACKUP_BIN"
    return
  fi
  local target="${CARGO_TARGET_DIR:-$HOME/.cache/pgbackup/bench-target}" source="$root"
  if [ -n "$revision" ]; then
    # A snapshot of the revision, so that work in progress in the tree does not count,
    # built in a target directory of its own: cargo judges freshness by file times, which
    # the snapshot's (the commit's) would fool in a directory shared with other checkouts.
    source="$target/revisions/$revision/source"
    target="$target/revisions/$revision/target"
    if [ ! -f "$source/Cargo.toml" ]; then
      mkdir -p "$source"
      git -C "$root" archive "$revision" | tar -x -C "$source"
    fi
  fi
  log "building pgbackup${revision:+ $revision} in release mode into $target"
  CARGO_TARGET_DIR="$target" cargo build --quiet --release --locked \
    --manifest-path "$source/Cargo.toml" -p pgbackup
  pgbackup_built="$target/release/pgbackup"
}

# --- scratch directory, clean-up ----------------------------------------------------------

# Other work on the machine skews every time measured: say so in the report.
load_before="$(cut -d ' ' -f 1-3 /proc/loadavg)"
install_missing
build_pgbackup

work="$(mktemp -d "$work_parent/pgbackup-bench.XXXXXX")"
chmod 755 "$work"
mkdir -p "$work/logs" "$work/run" "$work/restore" "$work/segments"
results="$work/results.jsonl"
run_as=()       # prefix for commands run as the server's OS user
measure_user=() # the same for the timing helpers
if is_root; then
  chown postgres "$work" "$work/run" "$work/restore" "$work/segments" "$work/logs"
  run_as=(setpriv --reuid=postgres --regid=postgres --clear-groups env HOME="$work")
  measure_user=(--user postgres)
fi
# A copy the server's OS user can run.
pgbackup="$work/pgbackup"
cp "$pgbackup_built" "$pgbackup"
chmod 755 "$pgbackup"

pgdata="$work/pgdata"
s3_pid="" archiver_pid="" load_pid=""
cleanup() {
  set +e
  for pid in "$archiver_pid" "$load_pid" "$s3_pid"; do
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  done
  if [ -f "$pgdata/postmaster.pid" ]; then
    "${run_as[@]}" "$pg_bin/pg_ctl" -D "$pgdata" -m immediate -w stop >/dev/null 2>&1
  fi
  if [ "$keep" = 1 ]; then
    log "kept $work"
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { # below the usual range of ephemeral ports, so no client connection holds it
  local port
  for _ in $(seq 50); do
    port=$((15000 + RANDOM % 17000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return
    fi
  done
  die "no free port"
}

measure() { # step tool [measure.py options] -- command…
  local step="$1" tool="$2" log
  shift 2
  log="$work/logs/$step-$(printf '%s' "$tool" | tr -cs 'A-Za-z0-9' '-').log"
  "$python" "$here/measure.py" --results "$results" --step "$step" --tool "$tool" \
    "${measure_user[@]}" --cwd "$work" --log "$log" "$@" ||
    die "$step with $tool failed; the end of $log:
$(tail -n 20 "$log")"
}

# --- S3 -----------------------------------------------------------------------------------

start_s3() {
  s3_root="$work/s3"
  mkdir -p "$s3_root"
  export AWS_ACCESS_KEY_ID="bench$RANDOM$RANDOM" AWS_SECRET_ACCESS_KEY="secret-$RANDOM$RANDOM$RANDOM"
  export AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
  for _ in 1 2 3 4 5; do
    s3_port="$(free_port)"
    "$s3s_fs" --host 127.0.0.1 --port "$s3_port" --access-key "$AWS_ACCESS_KEY_ID" \
      --secret-key "$AWS_SECRET_ACCESS_KEY" "$s3_root" >"$work/logs/s3s-fs.log" 2>&1 &
    s3_pid=$!
    for _ in $(seq 200); do
      (exec 3<>"/dev/tcp/127.0.0.1/$s3_port") 2>/dev/null && break
      kill -0 "$s3_pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$s3_pid" 2>/dev/null && (exec 3<>"/dev/tcp/127.0.0.1/$s3_port") 2>/dev/null; then
      s3="http://127.0.0.1:$s3_port"
      for bucket in pgbackup-base barman-base pgbackup-wal barman-wal pgbackup-stream; do
        # SigV4 with the SHA-256 of the empty body, which s3s insists on seeing.
        curl -fsS --aws-sigv4 "aws:amz:us-east-1:s3" --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" \
          -H "x-amz-content-sha256: $(printf '' | sha256sum | cut -d ' ' -f 1)" \
          -X PUT "$s3/$bucket" >/dev/null || die "cannot create bucket $bucket"
      done
      log "s3s-fs $S3S_FS_VERSION on $s3 (SigV4), objects in $s3_root"
      return
    fi
    kill "$s3_pid" 2>/dev/null; wait "$s3_pid" 2>/dev/null || true
    s3_pid=""
  done
  die "s3s-fs did not start: $(tail -n 5 "$work/logs/s3s-fs.log")"
}

# --- PostgreSQL ---------------------------------------------------------------------------

# Each tool's backup runs with that tool's own archive_command, as it would in production
# (pgBackRest insists on it); `use_archive_command X` switches it with ALTER SYSTEM and a reload.
write_archive_commands() {
  cat >"$work/archive.env" <<EOF
export AWS_ACCESS_KEY_ID='$AWS_ACCESS_KEY_ID' AWS_SECRET_ACCESS_KEY='$AWS_SECRET_ACCESS_KEY'
export AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
EOF
  # Keeps the first $segments complete segments for the archive_command timings.
  cat >"$work/collect-segment" <<EOF
#!/bin/sh
case "\$2" in *.*) exit 0 ;; esac
[ "\$(ls '$work/segments' | wc -l)" -ge $segments ] && exit 0
cp "\$1" '$work/segments/.incoming' && mv '$work/segments/.incoming' "$work/segments/\$2"
EOF
  chmod 644 "$work/archive.env"
  chmod 755 "$work/collect-segment"
}

# `--s3-force-path-style=true`, not the bare flag: it takes an optional value and would
# take the WAL path after it for one.
archive_command_of() {
  case "$1" in
    discard) echo "true" ;;
    collect) echo "$work/collect-segment %p %f" ;;
    pgbackup) echo ". $work/archive.env && exec $pgbackup wal-push --repository s3://pgbackup-base/bench --server bench --s3-endpoint $s3 --s3-force-path-style=true %p" ;;
    barman-*) echo ". $work/archive.env && exec barman-cloud-wal-archive --endpoint-url $s3 --${1#barman-} s3://barman-base/${1#barman-} bench %p" ;;
    pgbackrest-*) echo "pgbackrest --config=$work/pgbackrest.conf --stanza=bench --repo1-path=$work/pgbackrest/repo-${1#pgbackrest-} archive-push %p" ;;
  esac
}

use_archive_command() {
  sql "ALTER SYSTEM SET archive_command = '$(archive_command_of "$1" | sed "s/'/''/g")'" >/dev/null
  sql "SELECT pg_reload_conf()" >/dev/null
}

start_postgres() {
  "${run_as[@]}" "$pg_bin/initdb" -D "$pgdata" -U postgres --auth=trust --no-sync >"$work/logs/initdb.log"
  cat >>"$pgdata/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
unix_socket_directories = '$work/run'
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
archive_mode = on
archive_command = 'true'
EOF
  echo "host replication all 127.0.0.1/32 trust" >>"$pgdata/pg_hba.conf"
  # Another process may take the port between the check and the server's bind: retry.
  for _ in 1 2 3 4 5; do
    pg_port="$(free_port)"
    echo "port = $pg_port" >>"$pgdata/postgresql.conf"
    if "${run_as[@]}" "$pg_bin/pg_ctl" -D "$pgdata" -l "$work/logs/postgres.log" -w start >/dev/null; then
      export PGHOST=127.0.0.1 PGPORT="$pg_port" PGUSER=postgres PGDATABASE=postgres PGSSLMODE=disable
      log "PostgreSQL $("$pg_bin/postgres" --version | awk '{print $3}') on port $pg_port, data in $pgdata"
      return
    fi
  done
  die "PostgreSQL did not start: $(tail -n 5 "$work/logs/postgres.log")"
}

sql() { "$pg_bin/psql" -X -q -A -t -v ON_ERROR_STOP=1 -c "$1"; }

build_database() {
  log "building the database: pgbench -i -s $scale"
  "$pg_bin/pgbench" -i -s "$scale" -q >"$work/logs/pgbench-init.log" 2>&1 ||
    die "pgbench -i failed: $(tail -n 5 "$work/logs/pgbench-init.log")"
  if [ "$data" = mixed ]; then
    # Text that compresses about 2:1, as users' tables do; pgbench's rows are blank padding.
    log "adding $((scale * 60000)) rows of random text"
    sql "CREATE TABLE bench_notes (id bigint PRIMARY KEY, a text, b text, c text)" >/dev/null
    sql "INSERT INTO bench_notes SELECT g, md5(random()::text), md5(random()::text), md5(random()::text)
         FROM generate_series(1, $((scale * 60000))) g" >/dev/null
    sql "VACUUM ANALYZE bench_notes" >/dev/null
  fi
  sql "CHECKPOINT" >/dev/null
  # What every backup copies: the data directory without the WAL in pg_wal.
  data_bytes="$( (cd "$pgdata" && du -sb --exclude=./pg_wal .) | cut -f 1)"
  log "database ready: $((data_bytes / 1048576)) MiB to back up"
}

collect_segments() {
  log "collecting $segments WAL segments written under pgbench load"
  # TPC-B transactions alone write WAL at a few MiB/s here; one transaction in ten
  # updating 10,000 accounts makes it quicker, with the same tables' real pages.
  cat >"$work/bulk-update.sql" <<'SQL'
\set first random(1, 100000 * :scale - 10000)
UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid BETWEEN :first AND :first + 9999;
SQL
  use_archive_command collect
  sleep 1 # the archiver reads its new command
  # The base recovery replays every collected segment from (bench_replay).
  "${run_as[@]}" "$pg_bin/pg_basebackup" -D "$work/replay-base" -Fp -X none --checkpoint=fast --no-password \
    >>"$work/logs/replay-base.log" 2>&1 || die "pg_basebackup failed: $(tail -n 5 "$work/logs/replay-base.log")"
  local deadline=$((SECONDS + 1800))
  while [ "$(ls "$work/segments" | wc -l)" -lt "$segments" ]; do
    [ "$SECONDS" -lt "$deadline" ] || die "fewer than $segments segments after 30 minutes"
    PGOPTIONS="-c synchronous_commit=off" "$pg_bin/pgbench" -n -c 4 -j 2 -T 5 \
      -b tpcb-like@9 -f "$work/bulk-update.sql@1" >>"$work/logs/pgbench-segments.log" 2>&1 ||
      die "pgbench failed: $(tail -n 5 "$work/logs/pgbench-segments.log")"
  done
  use_archive_command discard
}

# --- 1. physical backups -------------------------------------------------------------------

bench_backups() {
  # Warm the page cache, so that no tool pays for the first read of the files.
  tar -C "$pgdata" --exclude=./pg_wal -cf - . >/dev/null
  limit() { echo "tar -C '$pgdata' --exclude='./pg_wal/*' -cf - . | zstd -T0 -$1 >/dev/null"; }
  log "backup: tar | zstd (the machine's limit)"
  measure backup "tar | zstd -T0 -1 (limit)" --bytes "$data_bytes" -- bash -c "$(limit 1)"
  measure backup "tar | zstd -T0 -3" --bytes "$data_bytes" -- bash -c "$(limit 3)"

  # What any pg_basebackup-based tool starts from: the server sending its files through the
  # replication protocol, compressed as pgbackup's default does, stored nowhere.
  log "backup: pg_basebackup | zstd -3 (pg_basebackup's own limit, no store)"
  sql "CHECKPOINT" >/dev/null
  measure backup "pg_basebackup | zstd -3 (no store)" --bytes "$data_bytes" -- \
    bash -c "'$pg_bin/pg_basebackup' -D - -Ft -X fetch --checkpoint=fast --no-password | zstd -3 >/dev/null"

  # pgbackup as the operator runs it: its defaults, and no row counts (those are taken only
  # for backups that will be restore-tested).
  local file_repo=(--repository "file://$work/pgbackup-repo")
  mkdir -p "$work/pgbackup-repo"
  is_root && chown postgres "$work/pgbackup-repo"
  use_archive_command pgbackup
  for level in 3 1; do
    log "backup: pgbackup backup --method physical into a file:// repository (zstd $level)"
    sql "CHECKPOINT" >/dev/null
    measure backup "pgbackup file zstd-$level" --bytes "$data_bytes" --agent pgbackup \
      --stored "$work/pgbackup-repo/bench-zstd$level/base" -- \
      "$pgbackup" backup "${file_repo[@]}" --server "bench-zstd$level" --method physical \
      --pg-bin "$pg_bin" --compression-level "$level" --no-row-counts
  done
  log "backup: pgbackup backup --method physical into S3 (zstd 3)"
  sql "CHECKPOINT" >/dev/null
  local repo=(--repository s3://pgbackup-base/bench --s3-endpoint "$s3" --s3-force-path-style=true)
  measure backup "pgbackup s3 zstd-3" --bytes "$data_bytes" --agent pgbackup --stored "$s3_root/pgbackup-base/bench/bench/base" -- \
    "$pgbackup" backup "${repo[@]}" --server bench --method physical --pg-bin "$pg_bin" --no-row-counts

  for compression in "${barman_compressions[@]}"; do
    log "backup: barman-cloud-backup into S3 (--$compression, -J $(nproc))"
    use_archive_command "barman-$compression"
    sql "CHECKPOINT" >/dev/null
    measure backup "barman-cloud --$compression" --bytes "$data_bytes" --stored "$s3_root/barman-base/$compression/bench/base" -- \
      barman-cloud-backup --endpoint-url "$s3" "--$compression" -J "$(nproc)" --immediate-checkpoint \
      -h "$work/run" -p "$pg_port" -U postgres -n "bench-base-$round" "s3://barman-base/$compression" bench
  done

  log "backup: pgbackrest backup --type=full into a posix repository (zst levels 1 and 3, process-max $(nproc))"
  cat >"$work/pgbackrest.conf" <<EOF
[global]
repo1-path=$work/pgbackrest/repo-3
repo1-retention-full=99
compress-type=zst
compress-level=3
process-max=$(nproc)
start-fast=y
archive-timeout=120
log-level-console=warn
log-level-file=off
lock-path=$work/pgbackrest/lock
spool-path=$work/pgbackrest/spool

[bench]
pg1-path=$pgdata
pg1-port=$pg_port
pg1-socket-path=$work/run
pg1-user=postgres
EOF
  mkdir -p "$work/pgbackrest"
  is_root && chown -R postgres "$work/pgbackrest" "$work/pgbackrest.conf"
  # A repository per level, each with its own WAL archive, as pgbackup's servers are.
  for level in 3 1; do
    "${run_as[@]}" pgbackrest --config="$work/pgbackrest.conf" --stanza=bench \
      --repo1-path="$work/pgbackrest/repo-$level" stanza-create >>"$work/logs/pgbackrest-stanza.log" 2>&1 ||
      die "pgbackrest stanza-create failed: $(tail -n 5 "$work/logs/pgbackrest-stanza.log")"
    use_archive_command "pgbackrest-$level"
    sql "CHECKPOINT" >/dev/null
    measure backup "pgbackrest posix zst-$level" --bytes "$data_bytes" \
      --stored "$work/pgbackrest/repo-$level/backup/bench" -- \
      pgbackrest --config="$work/pgbackrest.conf" --stanza=bench --repo1-path="$work/pgbackrest/repo-$level" \
      --type=full --compress-level="$level" backup
  done
  use_archive_command discard
}

# --- 2. restores ----------------------------------------------------------------------------

bench_restores() {
  local target
  restore_into() { # fresh empty directory for a tool
    target="$work/restore/$1"
    mkdir -m 700 "$target"
    is_root && chown postgres "$target"
    sync
  }
  log "restore: zstd -d | tar -x (the machine's limit)"
  tar -C "$pgdata" --exclude='./pg_wal/*' -cf - . | zstd -q -T0 -1 >"$work/limit.tar.zst"
  restore_into limit
  measure restore "zstd -d | tar -x (limit)" --bytes "$data_bytes" -- \
    bash -c "zstd -q -d -T0 -c '$work/limit.tar.zst' | tar -x -C '$target'"
  rm -rf "$target" "$work/limit.tar.zst"

  log "restore: pgbackup restore from the file:// repository"
  restore_into pgbackup-file
  measure restore "pgbackup file" --bytes "$data_bytes" --agent pgbackup --stored "$target" -- \
    "$pgbackup" restore --repository "file://$work/pgbackup-repo" --server bench-zstd3 --backup latest --pgdata "$target"
  rm -rf "$target"
  log "restore: pgbackup restore from S3"
  restore_into pgbackup-s3
  measure restore "pgbackup s3" --bytes "$data_bytes" --agent pgbackup --stored "$target" -- \
    "$pgbackup" restore --repository s3://pgbackup-base/bench --s3-endpoint "$s3" --s3-force-path-style=true \
    --server bench --backup latest --pgdata "$target"
  rm -rf "$target"

  for compression in "${barman_compressions[@]}"; do
    log "restore: barman-cloud-restore (--$compression)"
    restore_into "barman-$compression"
    measure restore "barman-cloud --$compression" --bytes "$data_bytes" --stored "$target" -- \
      barman-cloud-restore --endpoint-url "$s3" "s3://barman-base/$compression" bench "bench-base-$round" "$target"
    rm -rf "$target"
  done

  log "restore: pgbackrest restore"
  restore_into pgbackrest
  measure restore "pgbackrest posix" --bytes "$data_bytes" --stored "$target" -- \
    pgbackrest --config="$work/pgbackrest.conf" --stanza=bench --pg1-path="$target" restore
  rm -rf "$target"
  sync
}

# --- 3. WAL archiving as archive_command ------------------------------------------------------

bench_wal_push() {
  # A data directory as archive_command sees it: its cwd, with PG_VERSION, pg_control
  # (pgBackRest checks the cluster) and pg_wal holding the segments being archived.
  local fake="$work/walbench"
  mkdir -p "$fake/global" "$fake/pg_wal/archive_status" "$work/pgbackup-wal"
  cp "$pgdata/PG_VERSION" "$fake/"
  cp "$pgdata/global/pg_control" "$fake/global/"
  for mode in sync async; do
    mkdir -p "$work/pgbackrest/wal-repo-$mode" "$work/pgbackrest/spool-push"
    is_root && chown -R postgres "$fake" "$work/pgbackrest" "$work/pgbackup-wal"
    "${run_as[@]}" pgbackrest --config="$work/pgbackrest.conf" --stanza=bench \
      --repo1-path="$work/pgbackrest/wal-repo-$mode" stanza-create >>"$work/logs/pgbackrest-stanza.log" 2>&1 ||
      die "pgbackrest stanza-create failed: $(tail -n 5 "$work/logs/pgbackrest-stanza.log")"
  done
  local common=(--results "$results" --segments "$work/segments" --pgdata "$fake" "${measure_user[@]}")
  local pgbackrest_push=(pgbackrest "--config=$work/pgbackrest.conf" --stanza=bench "--pg1-path=$fake")

  # One ready at a time: a server whose archiving keeps up. Every tool as its users run it
  # by default, each into an archive of its own (a segment pushed twice is not stored twice).
  log "archive_command, one segment ready at a time: pgbackup wal-push into a file:// repository, $segments segments"
  "$python" "$here/walpush.py" "${common[@]}" --tool "pgbackup file" --log "$work/logs/wal-push-pgbackup-file.log" \
    --stored "$work/pgbackup-wal/one" -- \
    "$pgbackup wal-push --repository file://$work/pgbackup-wal/one --server walbench %p"
  log "archive_command, one segment ready at a time: pgbackup wal-push into S3, $segments segments"
  "$python" "$here/walpush.py" "${common[@]}" --tool "pgbackup s3" --log "$work/logs/wal-push-pgbackup-s3.log" \
    --stored "$s3_root/pgbackup-wal" -- \
    "$pgbackup wal-push --repository s3://pgbackup-wal/walbench --server walbench --s3-endpoint $s3 --s3-force-path-style=true %p"
  for compression in "${barman_compressions[@]}"; do
    log "archive_command, one segment ready at a time: barman-cloud-wal-archive --$compression, $segments segments"
    "$python" "$here/walpush.py" "${common[@]}" --tool "barman-cloud --$compression" \
      --log "$work/logs/wal-push-barman-$compression.log" --stored "$s3_root/barman-wal/$compression" -- \
      "barman-cloud-wal-archive --endpoint-url $s3 --$compression s3://barman-wal/$compression bench %p"
  done
  log "archive_command, one segment ready at a time: pgbackrest archive-push into a posix repository, $segments segments"
  "$python" "$here/walpush.py" "${common[@]}" --tool "pgbackrest posix" --log "$work/logs/wal-push-pgbackrest.log" \
    --stored "$work/pgbackrest/wal-repo-sync/archive" -- \
    "${pgbackrest_push[*]} --repo1-path=$work/pgbackrest/wal-repo-sync archive-push %p"

  # A backlog: a server whose archiving fell behind (a bulk load, an outage of the store)
  # has every segment ready at once; both tools store ahead of the archive_command in
  # parallel (pgBackRest with archive-async and process-max = cores).
  log "archive_command, $segments segments ready at once: pgbackup wal-push into a file:// repository"
  "$python" "$here/walpush.py" "${common[@]}" --backlog --tool "pgbackup file" --agent pgbackup \
    --log "$work/logs/wal-push-backlog-pgbackup-file.log" --stored "$work/pgbackup-wal/backlog" -- \
    "$pgbackup wal-push --repository file://$work/pgbackup-wal/backlog --server walbench %p"
  log "archive_command, $segments segments ready at once: pgbackrest archive-push --archive-async into a posix repository"
  "$python" "$here/walpush.py" "${common[@]}" --backlog --tool "pgbackrest posix async" --agent pgbackrest \
    --log "$work/logs/wal-push-backlog-pgbackrest.log" --stored "$work/pgbackrest/wal-repo-async/archive" -- \
    "${pgbackrest_push[*]} --repo1-path=$work/pgbackrest/wal-repo-async --archive-async --spool-path=$work/pgbackrest/spool-push archive-push %p"
}

# --- 4. WAL replay: recovery fetching the archived segments ------------------------------------

bench_replay() {
  # The base taken as the segments began (collect_segments) recovers through every one of
  # them, fetched by each tool's restore_command from the archive it stored them in above
  # (both with their prefetching: pgbackup's default, pgBackRest's archive-async); the time
  # is from the start of the server to the end of recovery (hot_standby off: it is ready
  # for connections only then).
  local tool dir port last
  last="$(ls "$work/segments" | sort | tail -n 1)"
  for tool in pgbackup pgbackrest; do
    dir="$work/replay-$tool"
    cp -a "$work/replay-base" "$dir"
    port="$(free_port)"
    local fetch
    case "$tool" in
      pgbackup) fetch="$pgbackup wal-fetch --repository file://$work/pgbackup-wal/backlog --server walbench %f %p" ;;
      pgbackrest)
        mkdir -p "$work/pgbackrest/spool-get"
        is_root && chown postgres "$work/pgbackrest/spool-get"
        fetch="pgbackrest --config=$work/pgbackrest.conf --stanza=bench --repo1-path=$work/pgbackrest/wal-repo-async --pg1-path=$dir --archive-async --spool-path=$work/pgbackrest/spool-get archive-get %f \"%p\""
        ;;
    esac
    cat >>"$dir/postgresql.auto.conf" <<EOF
port = $port
archive_mode = off
hot_standby = off
restore_command = '$(printf '%s' "$fetch" | sed "s/'/''/g")'
EOF
    touch "$dir/recovery.signal"
    is_root && chown -R postgres "$dir"
    log "replay: recovery through $segments archived segments with $tool's restore_command"
    local name="pgbackup wal-fetch"
    [ "$tool" = pgbackrest ] && name="pgbackrest archive-get async"
    # pg_ctl -w may return while recovery goes on: wait for the server's own word.
    local log_file="$work/logs/replay-$tool.log" done_line="database system is ready to accept connections"
    measure wal-replay "$name" --bytes "$((segments * 16 * 1024 * 1024))" --agent pgbackup -- bash -c \
      "'$pg_bin/pg_ctl' -D '$dir' -l '$log_file' start >/dev/null &&
       for _ in \$(seq 72000); do grep -q '$done_line' '$log_file' && exit 0; sleep 0.05; done; exit 1"
    grep -q "restored log file \"$last\"" "$work/logs/replay-$tool.log" ||
      die "recovery with $tool did not replay $last; see $work/logs/replay-$tool.log"
    "${run_as[@]}" "$pg_bin/pg_ctl" -D "$dir" -m immediate stop >/dev/null
    rm -rf "$dir"
  done
}

# --- 5. the streaming archiver under load -----------------------------------------------------

bench_streaming() {
  local metrics_port
  metrics_port="$(free_port)"
  log "streaming: pgbackup wal-archive under pgbench -c 4 -T $load_seconds"
  local archiver=("$pgbackup" wal-archive --repository s3://pgbackup-stream/bench --server bench
    --s3-endpoint "$s3" --s3-force-path-style=true --pg-bin "$pg_bin" --spool-dir "$work/spool"
    --listen "127.0.0.1:$metrics_port")
  "${run_as[@]}" "${archiver[@]}" >"$work/logs/wal-archive.log" 2>&1 &
  archiver_pid=$!
  for _ in $(seq 600); do
    curl -fsS "http://127.0.0.1:$metrics_port/readyz" >/dev/null 2>&1 && break
    kill -0 "$archiver_pid" 2>/dev/null || die "wal-archive stopped: $(tail -n 5 "$work/logs/wal-archive.log")"
    sleep 0.1
  done
  curl -fsS "http://127.0.0.1:$metrics_port/readyz" >/dev/null 2>&1 || die "wal-archive never became ready"
  "$python" "$here/lagprobe.py" --results "$results" --metrics "http://127.0.0.1:$metrics_port/metrics" \
    --agent-pid "$archiver_pid" --psql "$pg_bin/psql -X -A -t -q -c" --archiver-command "${archiver[*]}" \
    --log "$work/logs/pgbench-load.log" -- \
    "$pg_bin/pgbench" -n -c 4 -j 2 -T "$load_seconds" ||
    die "the streaming measurement failed; see $work/logs/wal-archive.log"
  kill "$archiver_pid"
  wait "$archiver_pid" 2>/dev/null || true
  archiver_pid=""
}

# --- run --------------------------------------------------------------------------------------

start_s3
write_archive_commands
start_postgres
build_database
for round in $(seq "$rounds"); do
  log "round $round of $rounds"
  bench_backups
  bench_restores
done
collect_segments # after the backups: its updates grow the tables
bench_wal_push
bench_replay
bench_streaming

git_revision="$(git -C "$root" rev-parse --short "${revision:-HEAD}" 2>/dev/null || echo unknown)"
if [ -n "${PGBACKUP_BIN:-}" ]; then
  git_revision="PGBACKUP_BIN=$PGBACKUP_BIN"
elif [ -z "$revision" ] && git -C "$root" status --porcelain -- operator Cargo.toml Cargo.lock 2>/dev/null | grep -q .; then
  git_revision="$git_revision + uncommitted changes"
fi
"$python" "$here/report.py" "$results" \
  invocation="$invocation" scale="$scale" data="$data" data_bytes="$data_bytes" segments="$segments" \
  load_seconds="$load_seconds" rounds="$rounds" cpus="$(nproc)" revision="$git_revision" load_before="$load_before" \
  postgres="$("$pg_bin/postgres" --version | awk '{print $3}')" \
  pgbackup="$("$pgbackup" --version | awk '{print $2}')" \
  barman="$(barman-cloud-backup --version 2>&1 | awk '{print $NF}')" barman_compression="$barman_compression" \
  pgbackrest="$(pgbackrest version | awk '{print $2}')" zstd="$(zstd --version | grep -o 'v[0-9.]*' | head -n 1)" \
  s3="s3s-fs $S3S_FS_VERSION on 127.0.0.1" | tee "$work/report.txt"
[ -z "$output" ] || cp "$work/report.txt" "$output"
