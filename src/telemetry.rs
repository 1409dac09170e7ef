//! Log output: one subscriber for the process, pretty or JSON.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogArgs, LogFormat};

/// Installs the global subscriber. Fails when the filter does not parse or
/// a subscriber is already installed.
pub fn init(args: &LogArgs) -> Result<(), String> {
    check_level(&args.log_level)?;
    let filter = EnvFilter::try_new(&args.log_level)
        .map_err(|e| format!("invalid --log-level (TROUPE_LOG) {:?}: {e}", args.log_level))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());

    let installed = match args.log_format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
    installed.map_err(|e| format!("installing the log subscriber failed: {e}"))
}

const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Rejects a bare word that is not a level. `tracing` would read a typo
/// such as `verbose` as a target name and silently log nothing at all.
fn check_level(filter: &str) -> Result<(), String> {
    let bare_word = !filter.contains(['=', ',', ':', '[']);
    if bare_word && !LEVELS.contains(&filter.trim().to_ascii_lowercase().as_str()) {
        return Err(format!(
            "invalid --log-level (TROUPE_LOG) {filter:?}: use one of {} or filter directives \
             such as info,troupe=debug",
            LEVELS.join(", ")
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_level_rejects_unknown_word() {
        assert!(check_level("verbose").is_err(), "a typo is not a target");
        assert!(check_level("INFO").is_ok());
        assert!(check_level("info,troupe=debug").is_ok());
        assert!(check_level("troupe=trace").is_ok());
    }
}
