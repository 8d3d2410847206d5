//! pgbackup: declarative backups, continuous WAL archiving and point-in-time restore for
//! PostgreSQL databases that run as plain StatefulSets.
//!
//! The crate is both the operator and the agent that runs in the Jobs it creates; the
//! `pgbackup` binary dispatches to one of them by subcommand (see [`cli`]).

pub mod agent;
pub mod api;
pub mod cli;
pub mod controllers;
pub mod http;
pub mod k8s;
pub mod plugin;
pub mod postgres;
pub mod redact;
pub mod reference;
pub mod repository;
pub mod telemetry;
