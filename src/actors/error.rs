use std::sync::Arc;

use actix::MailboxError;

use crate::db::DbError;

/// The reason a message to an actor produced no value. The HTTP layer turns each
/// variant into a status in one place.
#[derive(Debug, thiserror::Error)]
pub enum ActorError {
    #[error(transparent)]
    Db(#[from] DbError),
    /// The database queue stayed full, so the work was not sent.
    #[error("database queue is full")]
    Overloaded,
    /// The deadline passed before a worker started the work, so nothing was
    /// applied.
    #[error("deadline passed before the work started")]
    DeadlineExceeded,
    /// The handler panicked; the panic was caught and the actor's state
    /// rebuilt. A write that was in progress was rolled back.
    #[error("{actor} handler panicked")]
    Panicked { actor: &'static str },
    /// The actor's mailbox is closed: it is stopping or restarting.
    #[error("{actor} is not running")]
    Unavailable {
        actor: &'static str,
        #[source]
        source: MailboxError,
    },
    /// The batch this write or read belonged to failed as a whole: for
    /// writes, nothing of the batch was applied. Every item of the batch
    /// gets the same cause.
    #[error("the batch it went in failed")]
    Batch(#[source] Arc<ActorError>),
    /// A state the code rules out was reached.
    #[error("internal error: {0}")]
    Bug(&'static str),
}

impl ActorError {
    /// Joins the two layers of a `send`: delivery, then the handler's result.
    pub fn flatten<T>(
        actor: &'static str,
        delivery: Result<Result<T, ActorError>, MailboxError>,
    ) -> Result<T, ActorError> {
        match delivery {
            Ok(result) => result,
            Err(source) => Err(ActorError::Unavailable { actor, source }),
        }
    }
}

/// Extracts the message of a caught panic payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    if let Some(message) = payload.downcast_ref::<&str>() {
        message
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message
    } else {
        "non-string panic payload"
    }
}
