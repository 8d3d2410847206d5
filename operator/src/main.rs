//! The `pgbackup` binary: parse the command line, set up logging, run one subcommand.

use std::{fs, path::Path, process::ExitCode};

use clap::Parser;
use pgbackup::{
    agent::{self, AgentError, error_chain},
    api,
    cli::{Cli, Command, CrdArgs},
    controllers,
    repository::WalError,
    telemetry,
};

fn main() -> ExitCode {
    // Installed as `kubectl-pgbackup`, the binary is a kubectl plugin.
    let program = std::env::args_os().next().unwrap_or_default();
    if Path::new(&program)
        .file_name()
        .is_some_and(|name| name.to_string_lossy().starts_with("kubectl-pgbackup"))
    {
        return kubectl_plugin();
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // A restore_command that cannot even run must stop recovery, not end it early.
        Err(err) if err.use_stderr() && std::env::args().any(|a| a == "wal-fetch") => {
            let _ = err.print();
            return ExitCode::from(agent::wal_fetch::EXIT_FATAL);
        }
        Err(err) => err.exit(),
    };
    // Values the operator put in the environment from Secrets are redacted from every output.
    pgbackup::redact::from_environment();
    telemetry::init(cli.log_format);
    let name = cli.command.name();
    let result_file = cli.result_file.clone();
    let result = match cli.command {
        Command::Crd(args) => print_crds(&args),
        Command::Reference(args) => print_references(&args),
        Command::Backup(args) => run_async(async move {
            let summary = agent::backup::run(&args).await?;
            if let Some(path) = &result_file {
                write_result(
                    path,
                    &agent::backup::BackupReport::of(&summary).to_message(),
                );
            }
            serde_json::to_string_pretty(&summary).map_err(|e| AgentError::Invalid(e.to_string()))
        }),
        Command::List(args) => run_async(async move { agent::list::run(&args).await }),
        Command::Configuration(args) => {
            run_async(async move { agent::configuration::run(&args).await })
        }
        Command::Verify(args) => run_async(async move { agent::verify::run(&args).await }),
        Command::Restore(args) => run_async(async move { agent::restore::run(&args).await }),
        Command::Prune(args) => run_async(async move { agent::prune::run(&args).await }),
        Command::Copy(args) => run_async(async move { agent::copy::run(&args).await }),
        Command::WalArchive(args) => run_async(async move { agent::wal_archive::run(&args).await }),
        Command::WalPush(args) => run_async(async move { agent::wal_push::run(&args).await }),
        Command::WalFetch(args) => return wal_fetch(&args),
        Command::Trigger(args) => run_async(async move { agent::trigger::run(&args).await }),
        Command::Kubectl(args) => run_async(async move { pgbackup::plugin::run(&args).await }),
        Command::DataDir(args) => run_async(async move { agent::data_dir::run(&args) }),
        Command::RecordSnapshot(args) => {
            run_async(async move { agent::record_snapshot::run(&args).await })
        }
        Command::Keygen => {
            print!("{}", pgbackup::repository::Keys::generate());
            Ok(String::new())
        }
        Command::Operator(args) => block_on(controllers::runtime::run(&args))
            .and_then(|r| r.map_err(|e| error_chain(&e)))
            .map(|()| String::new())
            .map_err(Failure::from),
    };
    match result {
        Ok(output) => {
            if let Some(path) = &cli.result_file
                && name != "backup"
            {
                write_result(path, &output);
            }
            ExitCode::SUCCESS
        }
        Err(Failure { reason, message }) => {
            eprintln!("pgbackup {name}: {message}");
            if let Some(path) = &cli.result_file {
                let report = serde_json::json!({"reason": reason, "message": message});
                write_result(path, &report.to_string());
            }
            ExitCode::FAILURE
        }
    }
}

/// `kubectl pgbackup …`: logs as text on stderr, the answer on stdout.
fn kubectl_plugin() -> ExitCode {
    let cli = pgbackup::plugin::PluginCli::parse();
    telemetry::init(pgbackup::cli::LogFormat::Text);
    match run_async(async move { pgbackup::plugin::run(&cli.args).await }) {
        Ok(_) => ExitCode::SUCCESS,
        Err(Failure { message, .. }) => {
            eprintln!("kubectl pgbackup: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Leaves the outcome where the operator reads it (the pod's termination message), cut to
/// what Kubernetes keeps. Failing to write it must not change the command's exit status.
fn write_result(path: &Path, text: &str) {
    let mut end = text.len().min(agent::backup::TERMINATION_MESSAGE_LIMIT - 1);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    if let Err(err) = fs::write(path, &text[..end]) {
        eprintln!(
            "pgbackup: cannot write the result to {}: {err}",
            path.display()
        );
    }
}

/// Why a command failed: a one-word reason (see [`AgentError::reason`]) and the message.
struct Failure {
    reason: &'static str,
    message: String,
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Self {
            reason: "Internal",
            message,
        }
    }
}

/// Runs an agent command on a tokio runtime, prints its output and returns it.
fn run_async(work: impl Future<Output = Result<String, AgentError>>) -> Result<String, Failure> {
    let output = block_on(work)?.map_err(|err| Failure {
        reason: err.reason(),
        message: error_chain(&err),
    })?;
    if !output.is_empty() {
        println!("{}", output.trim_end());
    }
    Ok(output)
}

fn block_on<T>(work: impl Future<Output = T>) -> Result<T, String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    Ok(runtime.block_on(work))
}

/// `pgbackup wal-fetch`, with the exit codes `restore_command` needs: 1 for "not in the
/// archive", above 125 for failures that must stop recovery.
fn wal_fetch(args: &agent::wal_fetch::WalFetchArgs) -> ExitCode {
    if args.prefetch_only {
        // A detached process that the server (PID 1 in many images) may inherit: any
        // exit code but 0 or 1 there reads as a crashed backend and restarts the server.
        std::panic::set_hook(Box::new(|_| std::process::exit(0)));
        let _ = block_on(agent::wal_fetch::run(args));
        return ExitCode::SUCCESS;
    }
    // A panic would exit 101, which PostgreSQL takes for "not found".
    std::panic::set_hook(Box::new(|info| {
        eprintln!("pgbackup wal-fetch: internal error: {info}");
        std::process::exit(i32::from(agent::wal_fetch::EXIT_FATAL));
    }));
    let result = match block_on(agent::wal_fetch::run(args)) {
        Ok(result) => result,
        Err(message) => {
            eprintln!("pgbackup wal-fetch: {message}");
            return ExitCode::from(agent::wal_fetch::EXIT_FATAL);
        }
    };
    match result {
        Ok(line) => {
            tracing::debug!("{line}");
            ExitCode::SUCCESS
        }
        Err(AgentError::Wal(err @ WalError::NotFound { .. })) => {
            eprintln!("pgbackup wal-fetch: {err}");
            ExitCode::from(agent::wal_fetch::EXIT_NOT_FOUND)
        }
        Err(err) => {
            eprintln!("pgbackup wal-fetch: {}", error_chain(&err));
            ExitCode::from(agent::wal_fetch::EXIT_FATAL)
        }
    }
}

/// `pgbackup crd`: all CRDs to standard output, or one file per kind into a directory.
fn print_crds(args: &CrdArgs) -> Result<String, Failure> {
    let rendered = api::crds_yaml().map_err(|e| error_chain(&e))?;
    match &args.output_dir {
        None => {
            for (_, text) in &rendered {
                print!("{text}");
            }
        }
        Some(dir) => {
            fs::create_dir_all(dir).map_err(|e| io_error(dir, &e))?;
            for (crd, text) in &rendered {
                let path = dir.join(api::crd_file_name(crd));
                fs::write(&path, text).map_err(|e| io_error(&path, &e))?;
            }
        }
    }
    Ok(String::new())
}

fn print_references(args: &CrdArgs) -> Result<String, Failure> {
    let files = pgbackup::reference::files().map_err(|e| error_chain(&e))?;
    match &args.output_dir {
        None => {
            for (_, text) in &files {
                print!("{text}");
            }
        }
        Some(dir) => {
            fs::create_dir_all(dir).map_err(|e| io_error(dir, &e))?;
            for (name, text) in &files {
                let path = dir.join(name);
                fs::write(&path, text).map_err(|e| io_error(&path, &e))?;
            }
        }
    }
    Ok(String::new())
}

fn io_error(path: &Path, err: &std::io::Error) -> String {
    format!("{}: {err}", path.display())
}
