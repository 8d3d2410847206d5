//! Logging set-up: `RUST_LOG`-style filtering, text or JSON lines on standard error.

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// Installs the global tracing subscriber. Filter from `RUST_LOG`, default `info`.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours only for a person at a terminal, not in log files or PostgreSQL's log.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // Values read from Secrets never reach a log line.
        .with_writer(|| crate::redact::Writer);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
}
