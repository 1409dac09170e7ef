//! Log output: one subscriber for the process, pretty or JSON.

use std::io::IsTerminal;

use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogArgs, LogFormat};

/// Installs the global subscriber. Fails when the filter does not parse or
/// a subscriber is already installed.
pub fn init(args: &LogArgs) -> Result<(), String> {
    let filter = parse_filter(&args.log_level)?;
    let format = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let registry = tracing_subscriber::registry().with(filter);

    let installed = match args.log_format {
        LogFormat::Pretty => registry.with(format).try_init(),
        LogFormat::Json => registry
            .with(
                format
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .try_init(),
    };
    installed.map_err(|e| format!("installing the log subscriber failed: {e}"))
}

const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Parses a level or comma-separated `target=level` directives. A bare word
/// that is not a level is rejected: `tracing` would read a typo such as
/// `verbose` as a target name and silently log nothing at all. So are span
/// and field filters (`target[span{field}]=level`), which this filter does
/// not apply.
fn parse_filter(filter: &str) -> Result<Targets, String> {
    let invalid = |reason: &str| {
        format!(
            "invalid --log-level (TROUPE_LOG) {filter:?}: {reason}; use one of {} or \
             directives such as info,troupe=debug",
            LEVELS.join(", ")
        )
    };
    let bare_word = !filter.contains(['=', ',', ':']);
    if bare_word && !LEVELS.contains(&filter.trim().to_ascii_lowercase().as_str()) {
        return Err(invalid("not a level"));
    }
    if filter.contains(['[', '{']) {
        return Err(invalid("span and field filters are not supported"));
    }
    filter
        .parse::<Targets>()
        .map_err(|e| invalid(&e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_level_rejects_unknown_word() {
        assert!(parse_filter("verbose").is_err(), "a typo is not a target");
        assert!(parse_filter("INFO").is_ok());
        assert!(parse_filter("info,troupe=debug").is_ok());
        assert!(parse_filter("troupe=trace").is_ok());
    }

    #[test]
    fn log_level_rejects_what_it_cannot_apply() {
        let span_filter = parse_filter("troupe[request]=debug").unwrap_err();
        assert!(
            span_filter.contains("span and field filters"),
            "{span_filter}"
        );
        let bad_level = parse_filter("troupe=loud").unwrap_err();
        assert!(bad_level.contains("troupe=loud"), "{bad_level}");
    }

    #[test]
    fn log_level_directives_filter_by_target() {
        let filter = parse_filter("warn,troupe::actors=debug").unwrap();
        assert!(filter.would_enable("troupe::actors::db_worker", &tracing::Level::DEBUG));
        assert!(!filter.would_enable("troupe::http", &tracing::Level::INFO));
        assert!(filter.would_enable("troupe::http", &tracing::Level::WARN));
    }
}
