//! The JSON body extractor: content type, size limit and decoding, each with
//! its own problem response.

use std::future::Future;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::http::{header, Method};
use actix_web::{web, FromRequest, HttpRequest};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
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
        let limit = request
            .app_data::<web::Data<AppState>>()
            .map(|state| state.body_limit)
            .unwrap_or(crate::startup::FALLBACK_BODY_LIMIT);
        let checked =
            check_content_type(request).and_then(|()| check_declared_length(request, limit));
        let mut payload = payload.take();

        Box::pin(async move {
            checked?;
            let mut body = web::BytesMut::new();
            while let Some(chunk) = payload.next().await {
                let chunk = chunk.map_err(|e| ApiError::UnreadableBody(e.to_string()))?;
                if body.len() + chunk.len() > limit {
                    return Err(ApiError::PayloadTooLarge { limit });
                }
                body.extend_from_slice(&chunk);
            }
            decode(&body).map(JsonBody)
        })
    }
}

fn check_content_type(request: &HttpRequest) -> Result<(), ApiError> {
    let accepts_merge_patch = request.method() == Method::PATCH;
    let expected = if accepts_merge_patch {
        "application/json or application/merge-patch+json"
    } else {
        JSON
    };
    let essence = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<mime::Mime>().ok())
        .map(|mime| mime.essence_str().to_ascii_lowercase());

    match essence.as_deref() {
        Some(JSON) => Ok(()),
        Some(MERGE_PATCH_JSON) if accepts_merge_patch => Ok(()),
        _ => Err(ApiError::UnsupportedMediaType { expected }),
    }
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

impl<'de, T: DeserializeOwned> Deserialize<'de> for JsonObject<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let object = serde_json::Map::<String, serde_json::Value>::deserialize(deserializer)?;
        T::deserialize(serde_json::Value::Object(object))
            .map(JsonObject)
            .map_err(serde::de::Error::custom)
    }
}

fn shape_error(path: String, error: serde_json::Error) -> ApiError {
    if !matches!(error.classify(), Category::Data) {
        return ApiError::MalformedJson(error.to_string());
    }

    let message = error.to_string();
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
