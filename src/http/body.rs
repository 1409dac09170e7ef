//! The JSON body extractor: content type, size limit and decoding, each with
//! its own problem response.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::dev::{Payload, ServiceResponse};
use actix_web::http::{header, Method};
use actix_web::web::Bytes;
use actix_web::{web, FromRequest, HttpMessage, HttpRequest};
use futures_util::StreamExt;
use serde::de::value::MapAccessDeserializer;
use serde::de::{DeserializeOwned, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::error::Category;

use super::problem::ApiError;
use super::AppState;
use crate::domain::{FieldError, ValidationError};

const JSON: &str = "application/json";
const MERGE_PATCH_JSON: &str = "application/merge-patch+json";

/// A request body decoded from JSON into `T`. Accepts `application/json`
/// with any parameters and letter case; PATCH also accepts
/// `application/merge-patch+json`.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned + 'static> FromRequest for JsonBody<T> {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(request: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let state = request.app_data::<web::Data<AppState>>();
        let limit = state
            .map(|state| state.body_limit)
            .unwrap_or(crate::startup::FALLBACK_BODY_LIMIT);
        let timeout = state
            .map(|state| state.client_timeout)
            .unwrap_or(crate::startup::FALLBACK_CLIENT_TIMEOUT);
        let checked =
            check_content_type(request).and_then(|()| check_declared_length(request, limit));
        let mut payload = payload.take();
        let request = request.clone();

        Box::pin(async move {
            checked?;
            // A client that stops sending must not hold the connection.
            let read = tokio::time::timeout(timeout, read_body(&mut payload, limit)).await;
            let error = match read {
                Ok(Ok(body)) => return decode(&body).map(JsonBody),
                Ok(Err(error)) => error,
                Err(_) => ApiError::BodyTimeout,
            };
            request.extensions_mut().insert(UnreadBody(payload));
            Err(error)
        })
    }
}

/// The rest of a request body that troupe stopped reading, kept in the
/// request's extensions until `hold_unread_body` moves it to the response.
struct UnreadBody(Payload);

/// Makes the connection close after an error response to a body that was
/// not read to its end.
///
/// actix-http 3.20 drains the rest of a chunked body whose reader was
/// dropped, so that the connection can carry another request, and it
/// waits for that rest without a deadline. A client that stalled mid-chunk
/// thus kept its connection after the 408. While the response still owns
/// the reader, actix-http closes the connection after sending it instead.
pub(super) fn hold_unread_body(response: ServiceResponse<BoxBody>) -> ServiceResponse<BoxBody> {
    // Only the extractor's errors leave a body unread.
    if !response.status().is_client_error() {
        return response;
    }
    let unread = response.request().extensions_mut().remove::<UnreadBody>();
    match unread {
        None => response,
        Some(UnreadBody(unread)) => response
            .map_body(|_, body| HoldingBody {
                body,
                _unread: unread,
            })
            .map_into_boxed_body(),
    }
}

/// A response body that keeps the unread rest of the request body until
/// the response is sent.
struct HoldingBody {
    body: BoxBody,
    _unread: Payload,
}

impl MessageBody for HoldingBody {
    type Error = <BoxBody as MessageBody>::Error;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_next(cx)
    }
}

/// Reads the whole body, failing as soon as it grows past `limit`.
async fn read_body(payload: &mut Payload, limit: usize) -> Result<web::BytesMut, ApiError> {
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|_| ApiError::UnreadableBody)?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn check_content_type(request: &HttpRequest) -> Result<(), ApiError> {
    let accepts_merge_patch = request.method() == Method::PATCH;
    let expected = if accepts_merge_patch {
        "application/json or application/merge-patch+json, in UTF-8 and without Content-Encoding"
    } else {
        "application/json, in UTF-8 and without Content-Encoding"
    };
    let unsupported = || ApiError::UnsupportedMediaType { expected };

    let encoded = request
        .headers()
        .get(header::CONTENT_ENCODING)
        .is_some_and(|value| !value.as_bytes().eq_ignore_ascii_case(b"identity"));
    if encoded {
        return Err(unsupported());
    }

    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .ok_or_else(unsupported)?;
    let mut parts = content_type.split(';');
    let essence = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
    let json = essence == JSON || (accepts_merge_patch && essence == MERGE_PATCH_JSON);
    if !json {
        return Err(unsupported());
    }

    // JSON is UTF-8 (RFC 8259); any other declared charset would be misread.
    // `utf8` is a common alias of the registered name `utf-8`.
    for parameter in parts {
        let Some((name, value)) = parameter.split_once('=') else {
            continue;
        };
        let value = value.trim().trim_matches('"');
        let utf8 = value.eq_ignore_ascii_case("utf-8") || value.eq_ignore_ascii_case("utf8");
        if name.trim().eq_ignore_ascii_case("charset") && !utf8 {
            return Err(unsupported());
        }
    }
    Ok(())
}

/// Rejects a body whose declared length is over the limit before reading it.
fn check_declared_length(request: &HttpRequest, limit: usize) -> Result<(), ApiError> {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    match declared {
        Some(length) if length > limit as u64 => Err(ApiError::PayloadTooLarge { limit }),
        _ => Ok(()),
    }
}

/// Decodes JSON: syntax errors are 400, well-formed JSON of the wrong shape
/// is 422 naming the field.
fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut deserializer)
        .map_err(|error| shape_error(error.path().to_string(), error.into_inner()))?;
    deserializer
        .end()
        .map_err(|error| ApiError::MalformedJson(error.to_string()))?;

    // serde's derived structs also accept an array of their fields in order.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        let error = FieldError::new("body", "invalid_type", "the body must be a JSON object");
        return Err(ApiError::Validation(ValidationError::single(error)));
    }
    Ok(value)
}

/// A value that must be a JSON object. Use it for structs nested in a body,
/// which serde would otherwise also accept as an array of their fields.
#[derive(Debug)]
pub struct JsonObject<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for JsonObject<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // `T` reads the object's entries straight from the input, so it rejects
        // duplicate keys itself, and errors keep the path to the field.
        struct ObjectVisitor<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
            type Value = T;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map))
            }
        }

        deserializer
            .deserialize_map(ObjectVisitor(PhantomData))
            .map(JsonObject)
    }
}

fn shape_error(path: String, error: serde_json::Error) -> ApiError {
    // serde_json reports a number too large for any Rust type as a syntax
    // error, but the JSON is well formed: the value is of the wrong type.
    let out_of_range = error.to_string().starts_with("number out of range");
    if !matches!(error.classify(), Category::Data) && !out_of_range {
        return ApiError::MalformedJson(error.to_string());
    }

    let message = humanize(&error.to_string());
    let message = message
        .split(" at line ")
        .next()
        .unwrap_or(&message)
        .to_owned();
    let named = |prefix: &str| {
        message
            .strip_prefix(prefix)
            .and_then(|rest| rest.split('`').next())
            .map(str::to_owned)
    };
    let at_root = path == "." || path.is_empty();

    let field_error = if let Some(name) = named("unknown field `") {
        let field = field_path(&path, &name);
        let message = format!("unknown field {field}");
        FieldError::new(field, "unknown_field", message)
    } else if let Some(name) = named("missing field `") {
        let field = field_path(&path, &name);
        let message = format!("{field} is required");
        FieldError::new(field, "required", message)
    } else if let Some(name) = named("duplicate field `") {
        let field = field_path(&path, &name);
        let message = format!("{field} is given more than once");
        FieldError::new(field, "duplicate_field", message)
    } else {
        let field = if at_root { "body".to_owned() } else { path };
        FieldError::new(field, "invalid_type", message)
    };
    ApiError::Validation(ValidationError::single(field_error))
}

/// Joins the error's path and the field it names. The path of an unknown
/// field usually ends with that field already. The path of a missing field,
/// or of any error inside a `JsonObject`, stops at the enclosing object.
fn field_path(path: &str, name: &str) -> String {
    if path == "." || path.is_empty() {
        name.to_owned()
    } else if path == name || path.ends_with(&format!(".{name}")) {
        path.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

/// Rewrites serde's wording for JSON clients: Rust type names become the
/// JSON types a client sends.
fn humanize(message: &str) -> String {
    const JSON_TYPES: [(&str, &str); 7] = [
        ("expected i64", "expected an integer"),
        ("expected i32", "expected an integer"),
        ("expected u64", "expected an integer"),
        ("expected a sequence", "expected an array"),
        ("expected a map", "expected an object"),
        ("invalid type: sequence", "invalid type: array"),
        ("invalid type: map", "invalid type: object"),
    ];
    let mut message = message.to_owned();
    if let Some(start) = message.find("expected struct ") {
        message.replace_range(start.., "expected an object");
    }
    for (rust, json) in JSON_TYPES {
        message = message.replace(rust, json);
    }
    message
}
