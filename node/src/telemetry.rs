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

/// Longest piece of caller-supplied text put in one log line.
const UNTRUSTED_MAX_CHARS: usize = 120;

/// Caller-supplied text made safe for a log line: control characters
/// (newlines, ANSI escapes) escaped, so a caller cannot forge log lines or
/// repaint an operator's terminal, and cut to a bounded length so a caller
/// cannot make one line huge. Every string a partner or a local client
/// chose (names, ids, error texts that quote them) goes through this
/// before it is logged.
pub fn untrusted(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(UNTRUSTED_MAX_CHARS + 8));
    for (count, c) in text.chars().enumerate() {
        if count == UNTRUSTED_MAX_CHARS {
            out.push_str("...");
            break;
        }
        if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{202e}') {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Bounds how many lines one caller can make the node log about refusals:
/// at most [`RateLimitedLog::PER_MINUTE`] per caller per minute; the rest
/// are counted and reported in the next line that is let through. Keys are
/// caller identities (a certificate fingerprint, a token name, an address);
/// the table is bounded too, so many callers cannot grow it without limit.
#[derive(Debug)]
pub struct RateLimitedLog {
    callers: std::sync::Mutex<std::collections::HashMap<String, Window>>,
    per_minute: u32,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: std::time::Instant,
    lines: u32,
    suppressed: u64,
}

impl Default for RateLimitedLog {
    fn default() -> Self {
        RateLimitedLog::with_limit(RateLimitedLog::PER_MINUTE)
    }
}

impl RateLimitedLog {
    /// Lines per caller per minute.
    pub const PER_MINUTE: u32 = 10;
    /// Callers tracked at once; past this the table starts afresh.
    const MAX_CALLERS: usize = 4_096;

    /// A limiter letting `per_minute` records per caller per minute through.
    pub fn with_limit(per_minute: u32) -> RateLimitedLog {
        RateLimitedLog {
            callers: std::sync::Mutex::new(std::collections::HashMap::new()),
            per_minute,
        }
    }

    /// Whether a line about `caller` may be written now; `Some(n)` with the
    /// number of lines suppressed since the last one, `None` to stay quiet.
    pub fn admit(&self, caller: &str) -> Option<u64> {
        let now = std::time::Instant::now();
        let mut callers = self
            .callers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if callers.len() >= Self::MAX_CALLERS && !callers.contains_key(caller) {
            callers.retain(|_, w| now.duration_since(w.started).as_secs() < 60);
            if callers.len() >= Self::MAX_CALLERS {
                callers.clear();
            }
        }
        let window = callers.entry(caller.to_string()).or_insert(Window {
            started: now,
            lines: 0,
            suppressed: 0,
        });
        if now.duration_since(window.started).as_secs() >= 60 {
            window.started = now;
            window.lines = 0;
        }
        if window.lines < self.per_minute {
            window.lines += 1;
            Some(std::mem::take(&mut window.suppressed))
        } else {
            window.suppressed += 1;
            None
        }
    }
}

/// The node-wide limiter of refusal log lines.
pub fn refusals() -> &'static RateLimitedLog {
    static REFUSALS: std::sync::OnceLock<RateLimitedLog> = std::sync::OnceLock::new();
    REFUSALS.get_or_init(RateLimitedLog::default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untrusted_text_cannot_forge_lines_or_grow_without_bound() {
        let forged = "Aarhus\n2026-01-01T00:00:00Z  INFO peer request allowed\x1b[31m";
        let safe = untrusted(forged);
        assert!(!safe.contains('\n') && !safe.contains('\x1b'), "{safe}");
        assert!(safe.contains("\\n"), "{safe}");
        let long = untrusted(&"x".repeat(10_000));
        assert!(long.len() <= UNTRUSTED_MAX_CHARS + 3, "{}", long.len());
        assert_eq!(untrusted("Næstved Kommune"), "Næstved Kommune");
    }

    #[test]
    fn refusal_lines_are_limited_per_caller() {
        let log = RateLimitedLog::default();
        for _ in 0..RateLimitedLog::PER_MINUTE {
            assert_eq!(log.admit("a"), Some(0));
        }
        assert_eq!(log.admit("a"), None);
        assert_eq!(log.admit("a"), None);
        // Another caller is not held back by the first.
        assert_eq!(log.admit("b"), Some(0));
    }
}
