//! The `pgbackup` binary: parse the command line, set up logging, run one subcommand.

use std::{fs, path::Path, process::ExitCode};

use clap::Parser;
use pgbackup::{
    api,
    cli::{Cli, Command, CrdArgs},
    telemetry,
};

/// Exit code of a subcommand this build does not have yet.
const EXIT_NOT_IMPLEMENTED: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    match cli.command {
        Command::Crd(args) => match print_crds(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("pgbackup crd: {}", error_chain(err.as_ref()));
                ExitCode::FAILURE
            }
        },
        other => {
            eprintln!(
                "pgbackup {}: not implemented yet in this version of pgbackup",
                other.name()
            );
            ExitCode::from(EXIT_NOT_IMPLEMENTED)
        }
    }
}

/// `pgbackup crd`: all CRDs to standard output, or one file per kind into a directory.
fn print_crds(args: &CrdArgs) -> Result<(), Box<dyn std::error::Error>> {
    let rendered = api::crds_yaml()?;
    match &args.output_dir {
        None => {
            for (_, text) in &rendered {
                print!("{text}");
            }
        }
        Some(dir) => {
            fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
            for (crd, text) in &rendered {
                let path = dir.join(api::crd_file_name(crd));
                fs::write(&path, text).map_err(|e| io_error(&path, e))?;
            }
        }
    }
    Ok(())
}

fn io_error(path: &Path, err: std::io::Error) -> std::io::Error {
    std::io::Error::new(err.kind(), format!("{}: {err}", path.display()))
}

/// An error and its sources on one line: `outer: inner: innermost`.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
