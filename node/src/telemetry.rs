//! Logging: tracing to stderr, human-readable text by default or one JSON
//! object per line for log collectors. The filter comes from `SAMVIRKE_LOG`
//! when set (e.g. `samvirke_node=debug,info`), else from the config.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Environment variable that overrides the configured log filter.
pub const LOG_ENV: &str = "SAMVIRKE_LOG";

/// Installs the global subscriber. Calling it again (tests, the demo)
/// keeps the first one.
pub fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_env(LOG_ENV)
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal, never in log files.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // try_init fails only if a subscriber is already installed, which is fine.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
