//! The operator on a real control plane (kube-apiserver with RBAC and admission, etcd,
//! kube-controller-manager; `support::controlplane`): what the API server admits and
//! refuses, and what the operator can do under the chart's RBAC, authenticated as the
//! chart's ServiceAccount.

#[path = "../support/mod.rs"]
mod support;

mod admission;
mod backup_failures;
mod backups;
mod cluster;
mod copies;
mod deletions;
mod leadership;
mod logical_restores;
mod plugin;
mod rbac;
mod restores;
mod resumption;
mod schedule_lifecycle;
mod schedules;
mod snapshot_faults;
mod snapshot_restores;
mod snapshot_resumption;
mod snapshots;
