//! Logging: JSON lines (Flux's default) or human-readable console output.

use tracing_subscriber::EnvFilter;

use clap::ValueEnum;

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid --log-level {level:?}: {source}")]
    LogLevel {
        level: String,
        source: tracing_subscriber::filter::ParseError,
    },
    /// A global subscriber was already installed.
    #[error(transparent)]
    Install(Box<dyn std::error::Error + Send + Sync>),
}

/// Installs the global subscriber. `level` takes Flux's names (`debug`, `info`, `error`,
/// `trace`) or a full `tracing` filter directive.
pub fn init(level: &str, encoding: LogEncoding) -> Result<(), TelemetryError> {
    let directive = match level {
        "trace" | "debug" | "info" | "warn" | "error" => {
            format!("{level},hyper=warn,reqwest=warn,h2=warn,rustls=warn")
        }
        other => other.to_string(),
    };
    let filter = EnvFilter::try_new(&directive).map_err(|source| TelemetryError::LogLevel {
        level: level.to_owned(),
        source,
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match encoding {
        LogEncoding::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
        // Colours are escape codes in a log file or a pipe: only a terminal gets them.
        LogEncoding::Console => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
    };
    result.map_err(TelemetryError::Install)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogEncoding {
    Json,
    Console,
}
