#!/usr/bin/env bash
# The end-to-end suite on a kind cluster. Needs docker, kind, kubectl, helm, git and cargo,
# and network access for the images. It:
#   1. creates the cluster `pgbackup-e2e` (KEEP_CLUSTER=1 keeps it afterwards),
#   2. installs the VolumeSnapshot CRDs, the snapshot-controller and the CSI hostpath
#      driver with its VolumeSnapshotClass `csi-hostpath-snapclass`, made the default
#      StorageClass so the database's volume can be snapshotted,
#   3. starts an S3 server (e2e/manifests/s3.yaml) and the walk-through's PostgreSQL,
#   4. builds the operator and agent images and loads them into the cluster,
#   5. installs the chart, and
#   6. runs the Rust e2e tests (operator/tests/e2e.rs), which wait on conditions.
#
#   bash e2e/kind.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cluster="${CLUSTER:-pgbackup-e2e}"
snapshotter_version="${SNAPSHOTTER_VERSION:-v8.2.0}"
hostpath_version="${HOSTPATH_VERSION:-v1.15.0}"
# The walk-through's database runs postgres:16.4: the agent of major 16 is built.
pg_major=16
tag=e2e

log() { printf '\n==> %s\n' "$*"; }
for tool in docker kind kubectl helm git cargo; do
  command -v "$tool" >/dev/null || { echo "e2e/kind.sh needs $tool" >&2; exit 1; }
done

created=0
cleanup() {
  if [ "$created" = 1 ] && [ "${KEEP_CLUSTER:-0}" != 1 ]; then
    log "deleting the cluster (KEEP_CLUSTER=1 keeps it)"
    kind delete cluster --name "$cluster" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

if kind get clusters | grep -qx "$cluster"; then
  log "using the existing kind cluster $cluster"
else
  log "creating the kind cluster $cluster"
  kind create cluster --name "$cluster" --wait 120s
  created=1
fi
export KUBECONFIG="${KUBECONFIG:-$HOME/.kube/config}"
kubectl config use-context "kind-$cluster"

log "VolumeSnapshot CRDs and snapshot-controller $snapshotter_version"
kubectl apply -k "https://github.com/kubernetes-csi/external-snapshotter/client/config/crd?ref=$snapshotter_version"
kubectl apply -k "https://github.com/kubernetes-csi/external-snapshotter/deploy/kubernetes/snapshot-controller?ref=$snapshotter_version"
kubectl -n kube-system rollout status deploy/snapshot-controller --timeout=180s

log "CSI hostpath driver $hostpath_version"
work="$(mktemp -d)"
git clone --quiet --depth 1 --branch "$hostpath_version" https://github.com/kubernetes-csi/csi-driver-host-path "$work/hostpath"
"$work/hostpath/deploy/kubernetes-latest/deploy.sh"
kubectl apply -f "$work/hostpath/examples/csi-storageclass.yaml"
kubectl apply -f "$work/hostpath/examples/csi-volumesnapshotclass.yaml"
kubectl annotate storageclass standard storageclass.kubernetes.io/is-default-class- --overwrite
kubectl annotate storageclass csi-hostpath-sc storageclass.kubernetes.io/is-default-class=true --overwrite

log "S3 server"
kubectl apply -f "$root/e2e/manifests/s3.yaml"
kubectl -n pgbackup-e2e rollout status deploy/s3 --timeout=180s

log "building the images"
docker build -f "$root/operator/Dockerfile" -t "pgbackup/operator:$tag" "$root"
docker build -f "$root/operator/agent.Dockerfile" --build-arg "PG_MAJOR=$pg_major" -t "pgbackup/agent:$pg_major-$tag" "$root"
kind load docker-image --name "$cluster" "pgbackup/operator:$tag" "pgbackup/agent:$pg_major-$tag"

log "installing the chart"
helm upgrade --install pgbackup "$root/charts/pgbackup" -n pgbackup-system --create-namespace \
  --set image.tag="$tag" --set image.pullPolicy=Never \
  --set agent.image="pgbackup/agent:{major}-$tag" --set agent.pullPolicy=Never --wait --timeout 180s

log "the walk-through's database"
kubectl apply -f "$root/manifests/walkthrough/01-postgres.yaml" -f "$root/manifests/walkthrough/02-s3-credentials.yaml"
kubectl -n shop rollout status statefulset/orders-db --timeout=300s

log "the e2e tests"
cd "$root"
PGBACKUP_E2E=1 cargo test --locked -p pgbackup --test e2e -- --ignored --test-threads=1
