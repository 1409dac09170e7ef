use std::process::ExitCode;

use clap::Parser;
use troupe::config::{Cli, Command, MigrateAction, ServeArgs, Settings};
use troupe::db::migrations;
use troupe::startup::Application;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(message) = troupe::telemetry::init(&cli.log) {
        eprintln!("troupe: {message}");
        return ExitCode::FAILURE;
    }

    let database_url = match cli.database.url() {
        Ok(url) => url,
        Err(message) => {
            report_fatal(&message);
            return ExitCode::FAILURE;
        }
    };
    let outcome = match cli.command {
        None => serve(database_url.clone(), &cli.serve),
        Some(Command::Serve(args)) => serve(database_url.clone(), &args),
        Some(Command::Migrate { action }) => {
            migrate(&database_url, action.unwrap_or(MigrateAction::Run))
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let cause = troupe::http::problem::cause_chain(error.as_ref());
            report_fatal(&database_url.redact(&cause));
            ExitCode::FAILURE
        }
    }
}

/// Reports the error that stops the process: as a log line when the log
/// filter lets errors of this module through, otherwise on stderr, so that
/// no filter hides why the process stopped.
fn report_fatal(message: &str) {
    if tracing::enabled!(tracing::Level::ERROR) {
        tracing::error!(error = %message, "troupe failed");
    } else {
        eprintln!("troupe: {message}");
    }
}

type BoxError = Box<dyn std::error::Error>;

fn serve(database_url: troupe::db::DatabaseUrl, args: &ServeArgs) -> Result<(), BoxError> {
    let settings = Settings::new(database_url, args)?;
    actix_web::rt::System::new().block_on(async move {
        let app = Application::build(settings).await?;
        app.run().await?;
        tracing::info!("stopped");
        Ok(())
    })
}

fn migrate(url: &troupe::db::DatabaseUrl, action: MigrateAction) -> Result<(), BoxError> {
    match action {
        MigrateAction::Run => {
            let migrated = migrations::run_pending(url)?;
            tracing::info!(
                count = migrated.applied.len(),
                migrations = ?migrated.applied,
                "applied migrations"
            );
            troupe::startup::warn_unknown_migrations(&migrated.unknown);
        }
        MigrateAction::Revert => {
            let reverted = migrations::revert_last(url)?;
            tracing::info!(migration = %reverted, "reverted migration");
        }
        MigrateAction::Status => {
            for status in migrations::status(url)? {
                let state = match (status.applied, status.embedded) {
                    (_, false) => "unknown",
                    (true, true) => "applied",
                    (false, true) => "pending",
                };
                println!("{state}\t{}", status.version);
            }
        }
    }
    Ok(())
}
