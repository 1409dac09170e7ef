//! Log output: one subscriber for the process, pretty or JSON.

use std::io::IsTerminal;

use tracing_subscriber::filter::{LevelFilter, Targets};
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

/// Parses a level, or comma-separated directives that are each a level (the
/// default) or `target=level`. Spaces around each part are ignored. Rejects
/// what `tracing` would read as an odd target name and then log less than
/// asked, or nothing: `verbose`, `troupe:debug`, `troupe[request]=debug`.
fn parse_filter(filter: &str) -> Result<Targets, String> {
    let invalid = |reason: String| {
        format!(
            "invalid --log-level (TROUPE_LOG) {filter:?}: {reason}; use one of {} or \
             directives such as info,troupe::actors=debug",
            LEVELS.join(", ")
        )
    };
    let mut targets = Targets::new();
    for directive in filter.split(',').map(str::trim) {
        if directive.is_empty() {
            return Err(invalid("it contains an empty directive".to_owned()));
        }
        let Some((target, level)) = directive.split_once('=') else {
            let level = parse_level(directive)
                .ok_or_else(|| invalid(format!("{directive:?} is not a level")))?;
            targets = targets.with_default(level);
            continue;
        };
        let (target, level) = (target.trim(), level.trim());
        if target.contains(['[', '{']) {
            return Err(invalid(
                "span and field filters are not supported".to_owned(),
            ));
        }
        if !is_module_path(target) || parse_level(target).is_some() {
            return Err(invalid(format!(
                "{target:?} is not a target (a module path such as troupe::actors)"
            )));
        }
        let level =
            parse_level(level).ok_or_else(|| invalid(format!("{level:?} is not a level")))?;
        targets = targets.with_target(target, level);
    }
    Ok(targets)
}

/// Tells whether `target` is written as a module path such as
/// `troupe::actors`: lowercase identifiers joined by `::`. Targets match
/// by letter case, and troupe and its libraries log under their module
/// paths, so anything else would most likely match nothing.
fn is_module_path(target: &str) -> bool {
    target.split("::").all(|segment| {
        let mut chars = segment.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
        first_ok
            && segment != "_"
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    })
}

/// Reads one of `LEVELS`, in any letter case.
fn parse_level(name: &str) -> Option<LevelFilter> {
    let name = name.to_ascii_lowercase();
    if LEVELS.contains(&name.as_str()) {
        name.parse().ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_level_accepts_levels_and_directives() {
        for filter in [
            "INFO",
            " info ",
            "info\n",
            "off",
            "troupe=trace",
            "info, troupe::actors=debug",
            "warn,actix_web=debug,tokio_util::codec=trace,h2=info",
        ] {
            assert!(parse_filter(filter).is_ok(), "{filter:?} is valid");
        }
    }

    #[test]
    fn log_level_rejects_malformed_directives() {
        let cases = [
            ("verbose", "is not a level"),
            ("3", "is not a level"),
            ("info,verbose", "is not a level"),
            ("troupe=5", "is not a level"),
            ("troupe=loud", "is not a level"),
            ("", "empty directive"),
            ("info,,", "empty directive"),
            ("info=debug", "is not a target"),
            ("=debug", "is not a target"),
            ("info;troupe=debug", "is not a target"),
            ("troupe:debug", "is not a level"),
            ("info,troupe:actors=debug", "is not a target"),
            ("TROUPE=debug", "is not a target"),
            ("info,Troupe::actors=debug", "is not a target"),
            ("3=debug", "is not a target"),
            ("::troupe=debug", "is not a target"),
            ("troupe::=debug", "is not a target"),
            ("_=debug", "is not a target"),
            ("troupe[request]=debug", "span and field filters"),
            ("troupe{id}=debug", "span and field filters"),
        ];
        for (filter, reason) in cases {
            let error = parse_filter(filter).expect_err(filter);
            assert!(error.contains(reason), "{filter:?}: {error}");
            assert!(error.contains("--log-level"), "{filter:?}: {error}");
        }
    }

    #[test]
    fn log_level_directives_filter_by_target() {
        let filter = parse_filter(" warn , troupe::actors = debug ").unwrap();

        assert!(filter.would_enable("troupe::actors::db_worker", &tracing::Level::DEBUG));
        assert!(!filter.would_enable("troupe::http", &tracing::Level::INFO));
        assert!(filter.would_enable("troupe::http", &tracing::Level::WARN));
    }
}
