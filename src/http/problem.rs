//! The API error type and its `application/problem+json` rendering. Every
//! HTTP status an error gets is chosen here.

use std::error::Error as StdError;
use std::fmt;

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::actors::{ActorError, RequestId};
use crate::db::DbError;
use crate::domain::{FieldError, ValidationError};

pub const PROBLEM_JSON: &str = "application/problem+json";

/// Seconds a client should wait before retrying a 503.
const RETRY_AFTER_SECONDS: u32 = 1;

type Cause = Box<dyn StdError + 'static>;

/// A request failure, as the client sees it.
#[derive(Debug)]
pub enum ApiError {
    /// The body is not well-formed JSON (syntax error, truncated, bad UTF-8).
    MalformedJson(String),
    /// The connection failed or closed before the body was complete.
    UnreadableBody,
    /// The client did not send its body within the client timeout.
    BodyTimeout,
    /// A path id that is not an integer from 1 to 2^63-1.
    InvalidId {
        name: &'static str,
        value: String,
    },
    InvalidQuery(ValidationError),
    NotFound,
    RouteNotFound,
    MethodNotAllowed {
        allow: &'static str,
    },
    EmailTaken,
    PreconditionFailed,
    PayloadTooLarge {
        limit: usize,
    },
    UnsupportedMediaType {
        expected: &'static str,
    },
    Validation(ValidationError),
    /// Nothing was applied and retrying later may succeed.
    Unavailable {
        reason: UnavailableReason,
        cause: Option<Cause>,
    },
    /// A bug or an unexpected database error; the cause is logged only.
    Internal {
        cause: Cause,
    },
    /// A framework error without its own variant, kept with its status.
    Other {
        status: StatusCode,
    },
}

/// The reason for a 503, which is also its `code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnavailableReason {
    Overloaded,
    DatabaseUnavailable,
    DatabaseBusy,
    DeadlineExceeded,
    ActorUnavailable,
    NotReady,
}

impl UnavailableReason {
    fn code(self) -> &'static str {
        match self {
            Self::Overloaded => "overloaded",
            Self::DatabaseUnavailable => "database_unavailable",
            Self::DatabaseBusy => "database_busy",
            Self::DeadlineExceeded => "deadline_exceeded",
            Self::ActorUnavailable => "actor_unavailable",
            Self::NotReady => "not_ready",
        }
    }

    fn detail(self) -> &'static str {
        match self {
            Self::Overloaded => "The service is overloaded. Nothing was changed; retry later.",
            Self::DatabaseUnavailable => {
                "The database cannot be reached. Nothing was changed; retry later."
            }
            Self::DatabaseBusy => "The database is busy. Nothing was changed; retry later.",
            Self::DeadlineExceeded => {
                "The request timed out before its work started. Nothing was changed; retry later."
            }
            Self::ActorUnavailable => {
                "The service is restarting a component. Nothing was changed; retry later."
            }
            Self::NotReady => "The service is not ready to take requests.",
        }
    }
}

impl ApiError {
    pub fn unavailable(reason: UnavailableReason) -> Self {
        Self::Unavailable {
            reason,
            cause: None,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::MalformedJson(_)
            | Self::UnreadableBody
            | Self::InvalidId { .. }
            | Self::InvalidQuery(_) => StatusCode::BAD_REQUEST,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::NotFound | Self::RouteNotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::EmailTaken => StatusCode::CONFLICT,
            Self::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Other { status } => *status,
        }
    }

    /// Returns the stable snake_case code that clients match on.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MalformedJson(_) => "malformed_json",
            Self::UnreadableBody => "unreadable_body",
            Self::BodyTimeout => "request_timeout",
            Self::InvalidId { .. } => "invalid_id",
            Self::InvalidQuery(_) => "invalid_query",
            Self::NotFound => "not_found",
            Self::RouteNotFound => "route_not_found",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::EmailTaken => "email_taken",
            Self::PreconditionFailed => "precondition_failed",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::UnsupportedMediaType { .. } => "unsupported_media_type",
            Self::Validation(_) => "validation_failed",
            Self::Unavailable { reason, .. } => reason.code(),
            Self::Internal { .. } => "internal_error",
            Self::Other { status } => generic_code(*status),
        }
    }

    fn detail(&self) -> String {
        match self {
            Self::MalformedJson(message) => format!("The request body is not valid JSON: {message}."),
            Self::UnreadableBody => "The request body ended before it was complete.".to_owned(),
            Self::BodyTimeout => "The request body was not sent in time.".to_owned(),
            Self::InvalidId { name, value } => format!(
                "Path parameter {name} must be an integer from 1 to 9223372036854775807, got {value:?}."
            ),
            Self::InvalidQuery(_) => "One or more query parameters are invalid.".to_owned(),
            Self::NotFound => "The resource does not exist or has been deleted.".to_owned(),
            Self::RouteNotFound => "No route matches this path.".to_owned(),
            Self::MethodNotAllowed { allow } => format!("This route allows only: {allow}."),
            Self::EmailTaken => "Another user already has this email address.".to_owned(),
            Self::PreconditionFailed => {
                "If-Match or If-None-Match does not allow the resource's current entity tag.".to_owned()
            }
            Self::PayloadTooLarge { limit } => format!("The request body is larger than {limit} bytes."),
            Self::UnsupportedMediaType { expected } => {
                format!("The request body must be sent with Content-Type {expected}.")
            }
            Self::Validation(_) => "One or more fields are invalid.".to_owned(),
            Self::Unavailable { reason, .. } => reason.detail().to_owned(),
            Self::Internal { .. } => "The server failed to handle the request.".to_owned(),
            Self::Other { status } => status.canonical_reason().unwrap_or("Error").to_owned() + ".",
        }
    }

    fn field_errors(&self) -> Option<&[FieldError]> {
        match self {
            Self::Validation(errors) | Self::InvalidQuery(errors) => Some(&errors.errors),
            _ => None,
        }
    }

    /// Returns the `code` of a 503, for metrics and the request's log line.
    pub fn unavailable_reason(&self) -> Option<&'static str> {
        match self {
            Self::Unavailable { reason, .. } => Some(reason.code()),
            _ => None,
        }
    }

    /// Returns the cause of a 5xx for the log. It is never sent to the client.
    pub fn cause(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Self::Unavailable { cause, .. } => cause.as_deref(),
            Self::Internal { cause } => Some(cause.as_ref()),
            _ => None,
        }
    }

    /// Renders the problem response, with the request id when known.
    pub fn to_response(&self, request_id: Option<&RequestId>) -> HttpResponse {
        let status = self.status();
        let body = ProblemBody {
            r#type: format!("urn:troupe:problem:{}", self.code()),
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            detail: self.detail(),
            code: self.code(),
            request_id: request_id.map(RequestId::as_str),
            errors: self.field_errors().map(|errors| {
                errors
                    .iter()
                    .map(|e| FieldErrorBody {
                        field: &e.field,
                        code: e.code,
                        message: &e.message,
                    })
                    .collect()
            }),
        };

        let mut response = HttpResponse::build(status);
        response.content_type(PROBLEM_JSON);
        match self {
            Self::MethodNotAllowed { allow } => {
                response.insert_header((header::ALLOW, *allow));
            }
            Self::Unavailable { .. } => {
                response
                    .insert_header((header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS)));
            }
            _ => {}
        }
        response.json(body)
    }
}

fn generic_code(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "bad_request",
        404 => "not_found",
        405 => "method_not_allowed",
        408 => "request_timeout",
        413 => "payload_too_large",
        414 => "uri_too_long",
        415 => "unsupported_media_type",
        431 => "headers_too_large",
        500..=599 => "internal_error",
        _ => "error",
    }
}

#[derive(Serialize)]
struct ProblemBody<'a> {
    r#type: String,
    title: &'static str,
    status: u16,
    detail: String,
    code: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    errors: Option<Vec<FieldErrorBody<'a>>>,
}

#[derive(Serialize)]
struct FieldErrorBody<'a> {
    field: &'a str,
    code: &'static str,
    message: &'a str,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.code(), self.status().as_u16())
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status()
    }

    /// Renders without the request id; the request middleware renders the
    /// response again with it.
    fn error_response(&self) -> HttpResponse {
        self.to_response(None)
    }
}

impl From<ValidationError> for ApiError {
    fn from(errors: ValidationError) -> Self {
        Self::Validation(errors)
    }
}

impl From<ActorError> for ApiError {
    fn from(error: ActorError) -> Self {
        use UnavailableReason::*;
        match error {
            ActorError::Db(DbError::NotFound) => Self::NotFound,
            ActorError::Db(DbError::EmailTaken) => Self::EmailTaken,
            ActorError::Db(DbError::PreconditionFailed) => Self::PreconditionFailed,
            ActorError::Db(error @ DbError::Unavailable(_)) => Self::Unavailable {
                reason: DatabaseUnavailable,
                cause: Some(Box::new(error)),
            },
            ActorError::Db(error @ DbError::Busy(_)) => Self::Unavailable {
                reason: DatabaseBusy,
                cause: Some(Box::new(error)),
            },
            ActorError::Db(error @ DbError::Query(_)) => Self::Internal {
                cause: Box::new(error),
            },
            ActorError::Overloaded => Self::unavailable(Overloaded),
            error @ ActorError::DeadlineExceeded => Self::Unavailable {
                reason: DeadlineExceeded,
                cause: Some(Box::new(error)),
            },
            error @ ActorError::Unavailable { .. } => Self::Unavailable {
                reason: ActorUnavailable,
                cause: Some(Box::new(error)),
            },
            error @ (ActorError::Panicked { .. } | ActorError::Bug(_)) => Self::Internal {
                cause: Box::new(error),
            },
            ActorError::Batch(shared) => {
                let reason = match shared.as_ref() {
                    ActorError::Db(DbError::Unavailable(_)) => Some(DatabaseUnavailable),
                    ActorError::Db(DbError::Busy(_)) => Some(DatabaseBusy),
                    ActorError::Unavailable { .. } => Some(ActorUnavailable),
                    ActorError::DeadlineExceeded => Some(DeadlineExceeded),
                    ActorError::Overloaded => Some(Overloaded),
                    _ => None,
                };
                let cause = Box::new(ActorError::Batch(shared));
                match reason {
                    Some(reason) => Self::Unavailable {
                        reason,
                        cause: Some(cause),
                    },
                    None => Self::Internal { cause },
                }
            }
        }
    }
}

/// Formats an error and its sources as `outer: inner: innermost`.
pub fn cause_chain(error: &(dyn StdError + 'static)) -> String {
    let mut chain = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        chain.push_str(": ");
        chain.push_str(&cause.to_string());
        source = cause.source();
    }
    chain
}
