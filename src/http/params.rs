//! Path, query and header parameters, parsed into domain types.

use std::future::{ready, Ready};

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest};

use super::problem::ApiError;
use crate::domain::{
    FieldError, IfMatch, InvalidId, PageRequest, PostId, Precondition, UserId, ValidationError,
};

/// Extracts ids from the `{id}` path segment. Handlers take the id before
/// the body, so a bad id is reported before a bad body.
macro_rules! path_id_extractor {
    ($id:ty) => {
        impl FromRequest for $id {
            type Error = ApiError;
            type Future = Ready<Result<Self, ApiError>>;

            fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
                let raw = request.match_info().get("id").unwrap_or_default();
                ready(
                    <$id>::parse(raw)
                        .map_err(|InvalidId(value)| ApiError::InvalidId { name: "id", value }),
                )
            }
        }
    };
}

path_id_extractor!(UserId);
path_id_extractor!(PostId);

/// An extractor that rejects every query parameter, for routes that take
/// none. Handlers list it before the body, so it is checked first.
pub struct NoQuery;

impl FromRequest for NoQuery {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(QueryParams::parse(request, &[]).map(|_| NoQuery))
    }
}

/// The query string as decoded pairs, checked against the parameters a route
/// accepts: unknown or repeated parameters are a 400.
pub struct QueryParams {
    pairs: Vec<(String, String)>,
}

impl QueryParams {
    pub fn parse(request: &HttpRequest, allowed: &[&str]) -> Result<Self, ApiError> {
        check_percent_encoding(request.query_string())?;
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(request.query_string())
            .map_err(|e| {
                invalid(
                    "query",
                    "malformed",
                    format!("query string is malformed: {e}"),
                )
            })?;

        for (index, (name, _)) in pairs.iter().enumerate() {
            if !allowed.contains(&name.as_str()) {
                let shown: String = name.chars().take(40).collect();
                let accepted = if allowed.is_empty() {
                    "this route accepts no query parameters".to_owned()
                } else {
                    format!("this route accepts {}", allowed.join(", "))
                };
                return Err(invalid(
                    &shown,
                    "unknown_parameter",
                    format!("unknown query parameter {shown:?}; {accepted}"),
                ));
            }
            if pairs[..index].iter().any(|(earlier, _)| earlier == name) {
                return Err(invalid(
                    name,
                    "repeated_parameter",
                    format!("{name} is given more than once"),
                ));
            }
        }
        Ok(Self { pairs })
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    pub fn page(&self) -> Result<PageRequest, ApiError> {
        PageRequest::parse(self.get("page"), self.get("limit")).map_err(query_error)
    }

    /// Reads an optional `true` or `false`.
    pub fn flag(&self, name: &'static str) -> Result<bool, ApiError> {
        match self.get(name) {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(other) => Err(invalid(
                name,
                "invalid_value",
                format!(
                    "{name} must be true or false, got {:?}",
                    other.chars().take(40).collect::<String>()
                ),
            )),
        }
    }

    /// Returns the query string with `page` replaced, for `Link` headers.
    pub fn with_page(&self, page: i64) -> String {
        let mut pairs: Vec<(&str, String)> = self
            .pairs
            .iter()
            .filter(|(key, _)| key != "page")
            .map(|(key, value)| (key.as_str(), value.clone()))
            .collect();
        pairs.push(("page", page.to_string()));
        serde_urlencoded::to_string(&pairs).unwrap_or_default()
    }
}

/// Turns a domain error about one query value into a 400.
/// Rejects a `%` not followed by two hex digits, and escapes that decode
/// to bytes that are not UTF-8. The form decoder keeps the first as text
/// and replaces the second with U+FFFD, so either would reach a filter as
/// a value the client did not send.
fn check_percent_encoding(raw: &str) -> Result<(), ApiError> {
    let malformed = |detail: &str| {
        invalid(
            "query",
            "malformed",
            format!("query string is malformed: {detail}"),
        )
    };
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] != b'%' {
            decoded.push(bytes[index]);
            index += 1;
            continue;
        }
        // `from_str_radix` alone would also take a sign, as in `%+F`.
        let escape = bytes
            .get(index + 1..index + 3)
            .filter(|hex| hex.iter().all(u8::is_ascii_hexdigit))
            .and_then(|hex| u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok());
        let Some(byte) = escape else {
            let shown: String = raw[index..].chars().take(3).collect();
            return Err(malformed(&format!(
                "{shown:?} is not a % followed by two hex digits"
            )));
        };
        decoded.push(byte);
        index += 3;
    }
    if std::str::from_utf8(&decoded).is_err() {
        return Err(malformed("percent-encoded bytes are not UTF-8"));
    }
    Ok(())
}

pub fn query_error(error: FieldError) -> ApiError {
    ApiError::InvalidQuery(ValidationError::single(error))
}

fn invalid(field: &str, code: &'static str, message: String) -> ApiError {
    query_error(FieldError::new(field, code, message))
}

/// Reads the preconditions of a write: every `If-Match` header line as one
/// list, and every `If-None-Match` line as another. A header that is empty
/// or not visible ASCII matches nothing, as a list of tags that are not
/// versions does, so `If-Match` then fails the write and `If-None-Match`
/// lets it pass.
pub fn precondition(request: &HttpRequest) -> Precondition {
    Precondition {
        if_match: tag_list(request, header::IF_MATCH, IfMatch::parse)
            .map(|list| list.unwrap_or(IfMatch::Versions(Vec::new()))),
        if_none_match: tag_list(request, header::IF_NONE_MATCH, IfMatch::parse_weak)
            .map(|list| list.unwrap_or(IfMatch::Versions(Vec::new()))),
    }
}

/// Parses every line of the header `name` as one list, or returns
/// `Some(None)` when a line is not visible ASCII, and `None` when the
/// header is absent.
fn tag_list(
    request: &HttpRequest,
    name: header::HeaderName,
    parse: fn(&str) -> IfMatch,
) -> Option<Option<IfMatch>> {
    let mut lines = request.headers().get_all(name).peekable();
    lines.peek()?;
    let mut tags = Vec::new();
    for line in lines {
        let Ok(text) = line.to_str() else {
            return Some(None);
        };
        tags.push(text);
    }
    Some(Some(parse(&tags.join(","))))
}

/// Tells whether `If-None-Match` lists `etag`, comparing weakly as RFC 9110
/// requires for GET. Repeated header lines form one list.
pub fn if_none_match(request: &HttpRequest, etag: &str) -> bool {
    request
        .headers()
        .get_all(header::IF_NONE_MATCH)
        .filter_map(|line| line.to_str().ok())
        .flat_map(|line| line.split(','))
        .map(str::trim)
        .any(|tag| {
            let tag = tag.strip_prefix("W/").unwrap_or(tag);
            tag == "*" || tag == etag
        })
}
