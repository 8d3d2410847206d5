//! `pgbackup data-dir`: what a point-in-time restore does to a data directory besides
//! restoring into it — put the old contents back, discard them once the restore is
//! proven, or empty a replica's directory so that it clones the restored primary afresh.
//! Runs in the restore's Jobs, with the claim mounted.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use super::{AgentError, restore::aside};

/// Options of `pgbackup data-dir`.
#[derive(Debug, Clone, Args)]
pub struct DataDirArgs {
    /// What to do.
    #[arg(value_enum)]
    pub action: DataDirAction,
    /// The data directory.
    #[arg(long, env = "PGBACKUP_PGDATA", value_name = "DIR")]
    pub pgdata: PathBuf,
    /// The name the old contents were set aside under (`restore --set-aside NAME`).
    #[arg(long, value_name = "NAME", required_if_eq_any = [("action", "put-back"), ("action", "discard")])]
    pub name: Option<String>,
}

/// What `data-dir` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DataDirAction {
    /// Remove what a restore wrote and move the contents set aside back.
    PutBack,
    /// Delete the contents set aside.
    Discard,
    /// Remove PostgreSQL's files (a replica that will clone the primary again).
    Empty,
}

/// Runs; a line saying what was done.
pub fn run(args: &DataDirArgs) -> Result<String, AgentError> {
    let pgdata = &args.pgdata;
    let name = || {
        args.name
            .as_deref()
            .ok_or_else(|| AgentError::Invalid("--name is needed".into()))
    };
    Ok(match args.action {
        DataDirAction::PutBack => {
            let moved = aside::put_back(pgdata, name()?)?;
            format!(
                "{moved} entries put back in {} (0: nothing was aside)",
                pgdata.display()
            )
        }
        DataDirAction::Discard => match aside::discard(pgdata, name()?)? {
            true => format!("the old data set aside in {} deleted", pgdata.display()),
            false => format!("nothing set aside in {}", pgdata.display()),
        },
        DataDirAction::Empty => {
            let removed = aside::empty(pgdata)?;
            format!("{removed} entries removed from {}", pgdata.display())
        }
    })
}
