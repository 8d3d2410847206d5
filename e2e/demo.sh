#!/usr/bin/env bash
# The operator on a local cluster, in one command: a Kubernetes control plane (etcd,
# kube-apiserver, kube-controller-manager) and a local node that runs pods as processes, an
# S3 server, the walk-through's PostgreSQL StatefulSet, and `pgbackup operator` under the
# chart's RBAC. Then, with kubectl: a BackupSchedule with WAL archiving and a first backup,
# orders written, the table dropped by mistake, a PointInTimeRestore in place to the moment
# before, and the rows that came back.
#
#   bash e2e/demo.sh            # everything it starts and writes is removed at the end
#   bash e2e/demo.sh --keep     # leave the cluster running to explore it with kubectl
#
# Needs root (pods run in mount namespaces), Go 1.26 and cargo (the first run builds the
# control plane, kubectl and pgbackup: about 20 minutes on 2 cores), PostgreSQL's programs
# (`bash .ci/setup` installs all of it) and s3s-fs (installed with cargo if missing).
# PGBACKUP_LOCAL_CLUSTER=path uses a built local cluster program instead of building one.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

keep=false
case "${1:-}" in
  --keep) keep=true ;;
  "") ;;
  *) echo "usage: bash e2e/demo.sh [--keep]" >&2; exit 2 ;;
esac
if [ "$(id -u)" != 0 ]; then
  echo "the local node runs pods in mount namespaces of their own: run this as root" >&2
  exit 1
fi

started=$SECONDS
step() { printf '\n==> %s\n' "$*"; }
indent() { sed 's/^/    /'; }

step "the control plane and kubectl (built from their Go modules once, then cached)"
bash "$root/.ci/fetch-controlplane" 2>&1 | indent
cache="${PGBACKUP_CONTROLPLANE_CACHE:-$HOME/.cache/pgbackup/controlplane}"
kubectl_bin="${PGBACKUP_CONTROLPLANE_BIN:-$(cat "$cache/current")}/kubectl"

if ! command -v s3s-fs >/dev/null && [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs" ]; then
  step "installing s3s-fs, the S3 server"
  cargo install --quiet --locked s3s-fs@0.14.1 --features binary
fi

psql_bin="$(command -v psql || ls -d /usr/lib/postgresql/*/bin/psql 2>/dev/null | sort -V | tail -n 1 || true)"
if [ ! -x "$psql_bin" ]; then
  echo "psql was not found: install PostgreSQL's programs (bash .ci/setup)" >&2
  exit 1
fi

cluster_bin="${PGBACKUP_LOCAL_CLUSTER:-}"
if [ -z "$cluster_bin" ]; then
  step "building pgbackup and the local cluster"
  cluster_bin="$(cargo test --quiet --manifest-path "$root/Cargo.toml" -p pgbackup \
    --test local_cluster --no-run --message-format=json |
    grep -o '"executable":"[^"]*local_cluster[^"]*"' | cut -d '"' -f 4)"
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/pgbackup-cluster-demo.XXXXXX")"
cluster_pid=""
cleanup() {
  local status=$?
  set +e
  if [ "$status" != 0 ] && [ -n "${OPERATOR_LOG:-}" ]; then
    echo "the operator's last lines:" >&2
    tail -n 30 "$OPERATOR_LOG" >&2
  fi
  if [ -n "$cluster_pid" ] && { [ "$keep" = false ] || [ "$status" != 0 ]; }; then
    kill -TERM "$cluster_pid" 2>/dev/null
    # On stop it checks that no request of the operator was refused for want of a permission.
    if ! wait "$cluster_pid" && [ "$status" = 0 ]; then
      echo "the local cluster failed as it stopped:" >&2
      tail -n 40 "$work/cluster.log" >&2
      status=1
    fi
    # The cluster removes its directories once its processes are gone.
    for _ in $(seq 100); do
      gone=true
      for dir in ${CLUSTER_DIRS:-}; do [ -e "$dir" ] && gone=false; done
      [ "$gone" = true ] && break
      sleep 0.2
    done
  fi
  if [ "$keep" = false ] || [ "$status" != 0 ]; then rm -rf "$work"; fi
  exit "$status"
}
trap cleanup EXIT

step "starting the cluster: control plane, local node, S3 server, the operator"
# In a session of its own, so that with --keep it outlives this script and its terminal.
setsid "$cluster_bin" serve "$work/cluster.env" >"$work/cluster.log" 2>&1 </dev/null &
cluster_pid=$!
for _ in $(seq 600); do
  [ -f "$work/cluster.env" ] && break
  kill -0 "$cluster_pid" 2>/dev/null || { tail -n 40 "$work/cluster.log" >&2; exit 1; }
  sleep 0.2
done
[ -f "$work/cluster.env" ] || { echo "the cluster did not start in 2 minutes" >&2; exit 1; }
# shellcheck disable=SC1091
. "$work/cluster.env"
export KUBECONFIG
echo "    kubeconfig: $KUBECONFIG"

# Each kubectl command is shown as a user would type it, with its output indented.
kubectl() {
  printf '$ kubectl %s\n' "$*"
  "$kubectl_bin" "$@" 2>&1 | indent
  return "${PIPESTATUS[0]}"
}
quiet_kubectl() { "$kubectl_bin" "$@"; }
sql() { # SQL; as the walk-through's Secret says
  PGPASSWORD=change-me-please "$psql_bin" -X -q -A -t -v ON_ERROR_STOP=1 -h "$pod_ip" \
    -U postgres -d postgres -c "$1"
}
pod_address() {
  quiet_kubectl -n shop get pod orders-db-0 -o jsonpath='{.status.podIP}'
}
epoch() { date -d "$1" +%s.%N; }
# Follows a phase field until it is one of the final phases; prints each change.
follow_phase() { # resource, final phases (regex)
  local phase="" last="" t0=$SECONDS
  for _ in $(seq 1200); do
    phase="$(quiet_kubectl -n shop get "$1" -o jsonpath='{.status.phase}' 2>/dev/null || true)"
    if [ -n "$phase" ] && [ "$phase" != "$last" ]; then
      replicas="$(quiet_kubectl -n shop get statefulset orders-db -o jsonpath='{.spec.replicas}')"
      printf '    %3ss  %-12s (StatefulSet orders-db: %s replicas)\n' "$((SECONDS - t0))" "$phase" "$replicas"
      last="$phase"
    fi
    if [[ "$phase" =~ ^($2)$ ]]; then
      return 0
    fi
    sleep 0.5
  done
  echo "$1 did not finish in 10 minutes" >&2
  return 1
}

step "a PostgreSQL StatefulSet as a typical chart installs it (manifests/walkthrough)"
kubectl apply -f "$root/manifests/walkthrough/01-postgres.yaml"
kubectl -n shop rollout status statefulset/orders-db --timeout=180s
pod_ip="$(pod_address)"
echo "(kubectl exec needs a kubelet; the local node runs pods as processes on this"
echo " machine's loopback addresses, so psql connects to the pod's address, $pod_ip)"
sql "CREATE TABLE orders (id serial PRIMARY KEY, item text, placed timestamptz DEFAULT now());
     CREATE TABLE audit (note text);
     INSERT INTO orders (item) VALUES ('tea'), ('coffee'), ('cake');"

step "a BackupSchedule with WAL archiving into S3, and a first backup"
kubectl apply -f "$root/manifests/walkthrough/02-s3-credentials.yaml"
# The walk-through's endpoint is the S3 server of the kind suite; here it is the local one.
sed "s#http://s3.pgbackup-e2e.svc:9000#$S3_ENDPOINT#" \
  "$root/manifests/walkthrough/03-schedule.yaml" >"$work/03-schedule.yaml"
kubectl apply -f "$work/03-schedule.yaml"
kubectl -n shop wait --for=condition=Ready backupschedule/orders-nightly --timeout=180s
kubectl -n shop create job --from=cronjob/orders-nightly-trigger first-backup
for _ in $(seq 300); do
  backup="$(quiet_kubectl -n shop get pgb -o name 2>/dev/null | head -n 1)"
  [ -n "$backup" ] && break
  sleep 0.5
done
[ -n "$backup" ] || { echo "the trigger Job made no PostgresBackup" >&2; exit 1; }
echo "$backup:"
follow_phase "$backup" "Completed|Failed"
kubectl -n shop wait --for=condition=Ready "$backup" --timeout=10s
kubectl -n shop get pgbs,pgb

step "more orders, then a mistake"
sql "INSERT INTO orders (item) VALUES ('scones'), ('jam');"
sleep 1.1
moment="$(sql "SELECT to_char(date_trunc('second', clock_timestamp()) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')")"
sleep 1.1
sql "DROP TABLE orders; INSERT INTO audit VALUES ('written after the mistake');"
mistake="$(sql "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")"
# Close the WAL file now rather than wait for the archiver's next partial upload.
sql "SELECT pg_switch_wal()" >/dev/null
echo "    the orders table is gone at $mistake; the moment to go back to: $moment"

step "waiting until the archive reaches past the mistake (the schedule's recovery window)"
for _ in $(seq 600); do
  to="$(quiet_kubectl -n shop get backupschedule orders-nightly \
    -o jsonpath='{.status.recoveryWindow.lastRecoverabilityPoint}' 2>/dev/null || true)"
  if [ -n "$to" ] && awk -v a="$(epoch "$to")" -v b="$(epoch "$mistake")" 'BEGIN { exit !(a > b) }'; then
    break
  fi
  sleep 0.5
done
kubectl -n shop get backupschedule orders-nightly -o jsonpath='{.status.recoveryWindow}{"\n"}'

step "a PointInTimeRestore in place, to $moment"
cat >"$work/restore.yaml" <<EOF
apiVersion: pgbackup.io/v1alpha1
kind: PointInTimeRestore
metadata:
  name: before-the-mistake
  namespace: shop
spec:
  target:
    statefulSet: orders-db
    credentialsSecret:
      name: orders-db-auth
    sslMode: disable
    dataSubPath: pgdata
  source:
    backupSchedule: orders-nightly
  recoveryTarget:
    time: "$moment"
  mode: inPlace
  confirm: true
EOF
sed 's/^/    /' "$work/restore.yaml"
kubectl apply -f "$work/restore.yaml"
follow_phase pitr/before-the-mistake "Completed|Failed"
kubectl -n shop wait --for=condition=Ready pitr/before-the-mistake --timeout=10s
kubectl -n shop get pgbs,pgb,pitr
kubectl -n shop events --for pitr/before-the-mistake

pod_ip="$(pod_address)"
back="$(sql "SELECT string_agg(item, ', ' ORDER BY id) FROM orders")"
after="$(sql "SELECT count(*) FROM audit")"
echo
echo "came back: orders $back"
echo "left out:  the audit row written after the mistake (the restored database has $after)"
echo "took $((SECONDS - started)) s"
if [ "$keep" = true ]; then
  echo
  echo "The cluster keeps running. To explore it:"
  echo "  export KUBECONFIG=$KUBECONFIG"
  echo "  $kubectl_bin -n shop get pgbs,pgb,pitr"
  echo "  $kubectl_bin explain pointintimerestore.spec"
  echo "The operator's log: $OPERATOR_LOG"
  echo "Stop it and remove everything with: kill $cluster_pid; rm -rf $work"
fi
