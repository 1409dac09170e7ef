//! Per-request plumbing: the request id, the request span, the one log line
//! per request, and the problem rendering of every error response.

use std::future::{ready, Ready};
use std::time::Instant;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{web, FromRequest, HttpMessage, HttpRequest};
use tracing::Instrument;

use super::body;
use super::problem::{cause_chain, ApiError, PROBLEM_JSON};
use super::AppState;
use crate::actors::{RequestCtx, RequestId};

pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Middleware around the whole app: assigns the request id, opens the
/// request span, renders every error as a problem with the id, echoes the id
/// in `X-Request-Id` and logs one line per request.
pub async fn request_context(
    mut request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let started = Instant::now();
    own_headers(&mut request);
    let request_id = request
        .headers()
        .get(&REQUEST_ID_HEADER)
        .and_then(|value| value.to_str().ok())
        .and_then(RequestId::parse)
        .unwrap_or_else(RequestId::generate);
    let method = request.method().clone();
    // The route is known once the router has matched, so it joins the span
    // then. Reading it before would match the path against the routes twice.
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        http.method = %method,
        http.route = tracing::field::Empty,
    );

    request.extensions_mut().insert(request_id.clone());
    request.extensions_mut().insert(RequestSpan(span.clone()));
    let state = request.app_data::<web::Data<AppState>>().cloned();
    let mut cut_off = state.as_ref().map(|state| state.cut_off.clone());
    let mut call = std::pin::pin!(next.call(request).instrument(span.clone()));
    let outcome = match cut_off.as_mut() {
        None => call.await,
        Some(cut_off) => tokio::select! {
            outcome = &mut call => outcome,
            _ = cut_off.wait_for(|reached| *reached) => {
                span.in_scope(|| tracing::warn!(
                    request_id = %request_id,
                    http.method = %method,
                    "request still running at the shutdown timeout; its connection is closing"
                ));
                call.await
            }
        },
    };
    // Inner services turn handler errors into responses, so an `Err` here
    // is rare; actix renders it with the error's own `error_response`.
    let response = outcome?.map_into_boxed_body();
    let route = response
        .request()
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    span.record("http.route", route.as_str());
    // Read the error before `render_problem` replaces the response with
    // one that no longer carries it.
    let api_error = response
        .response()
        .error()
        .and_then(|e| e.as_error::<ApiError>());
    let cause = api_error.and_then(ApiError::cause).map(cause_chain);
    let unavailable = api_error.and_then(ApiError::unavailable_reason);

    let mut response = body::hold_unread_body(render_problem(response, &request_id));
    response
        .headers_mut()
        .insert(REQUEST_ID_HEADER, request_id_header(&request_id));

    let status = response.status().as_u16();
    let elapsed = started.elapsed().as_secs_f64();
    if let Some(state) = &state {
        let metrics = &state.metrics;
        metrics.observe_request(metric_method(&method), &route, status, elapsed);
        if let Some(reason) = unavailable {
            metrics.observe_unavailable(reason);
        }
    }

    // A 503 is trouble the service recovers from; any other 5xx needs a
    // person, so it is an error. The request span is at `info`, so at `warn`
    // it is off: failure lines name their request in fields of their own.
    let latency_ms = elapsed * 1000.0;
    let cause = cause.as_deref().unwrap_or("none recorded");
    let _entered = span.enter();
    match status {
        503 => tracing::warn!(
            request_id = %request_id,
            http.method = %method,
            http.route = route.as_str(),
            http.status = status,
            latency_ms,
            error.code = unavailable,
            error.cause_chain = cause,
            "request failed"
        ),
        500.. => tracing::error!(
            request_id = %request_id,
            http.method = %method,
            http.route = route.as_str(),
            http.status = status,
            latency_ms,
            error.cause_chain = cause,
            "request failed"
        ),
        _ => tracing::info!(http.status = status, latency_ms, "request finished"),
    }
    Ok(response)
}

/// Keeps the method label's values few: unknown methods share one label.
fn metric_method(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Renders an error response as a problem that carries the request id.
/// Errors of the framework that are not `ApiError`s keep their status.
fn render_problem(
    response: ServiceResponse<BoxBody>,
    request_id: &RequestId,
) -> ServiceResponse<BoxBody> {
    let status = response.status();
    if let Some(api_error) = response
        .response()
        .error()
        .and_then(|e| e.as_error::<ApiError>())
    {
        let rendered = api_error.to_response(Some(request_id));
        return response.into_response(rendered);
    }

    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes() == PROBLEM_JSON.as_bytes());
    if status.as_u16() < 400 || is_problem {
        return response;
    }
    let rendered = ApiError::Other { status }.to_response(Some(request_id));
    response.into_response(rendered)
}

fn request_id_header(request_id: &RequestId) -> HeaderValue {
    // A request id is ASCII letters, digits, `.`, `_` and `-` only.
    HeaderValue::from_str(request_id.as_str()).unwrap_or(HeaderValue::from_static("invalid"))
}

/// The request span, stored in the request's extensions by the middleware.
#[derive(Clone)]
struct RequestSpan(tracing::Span);

/// Builds the context that every message to an actor carries.
impl FromRequest for RequestCtx {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(request: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let extensions = request.extensions();
        let request_id = extensions
            .get::<RequestId>()
            .cloned()
            .unwrap_or_else(RequestId::generate);
        let span = extensions
            .get::<RequestSpan>()
            .map(|span| span.0.clone())
            .unwrap_or_else(tracing::Span::current);
        let budget = request
            .app_data::<web::Data<AppState>>()
            .map(|state| state.request_timeout)
            .unwrap_or(crate::startup::FALLBACK_REQUEST_TIMEOUT);
        ready(Ok(RequestCtx::new(request_id, span, budget)))
    }
}

/// Gives the request headers memory of their own. actix-http parses header
/// values as slices of the connection's read buffer and keeps finished
/// requests, headers included, in per-thread pools of up to 128 each for
/// reuse. After a burst of connections those pooled requests would keep
/// hundreds of read buffers (8 KiB or more each), and header maps sized for
/// 16 headers, alive long after the connections closed.
fn own_headers(request: &mut ServiceRequest) {
    let headers = request.headers_mut();
    let mut owned = HeaderMap::with_capacity(headers.len_keys());
    let mut name = None;
    for (next, value) in headers.drain() {
        name = next.or(name);
        if let Some(name) = &name {
            // `from_bytes` copies. actix's parser already rejected what it
            // would reject, so the fallback to the original is for safety.
            let value = HeaderValue::from_bytes(value.as_bytes()).unwrap_or(value);
            owned.append(name.clone(), value);
        }
    }
    *headers = owned;
}

#[cfg(test)]
mod tests {
    use actix_web::test::TestRequest;

    use super::*;

    #[test]
    fn own_headers_keeps_every_value_in_order() {
        let mut request = TestRequest::default()
            .insert_header((header::HOST, "example.com"))
            .append_header((header::IF_MATCH, "\"a\""))
            .append_header((header::IF_MATCH, "\"b\""))
            .insert_header((REQUEST_ID_HEADER, "req-1"))
            .to_srv_request();
        let before: Vec<(HeaderName, HeaderValue)> = request
            .headers()
            .iter()
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect();

        own_headers(&mut request);

        let if_match: Vec<_> = request.headers().get_all(header::IF_MATCH).collect();
        assert_eq!(if_match, ["\"a\"", "\"b\""], "both values, in order");
        assert_eq!(request.headers().len(), before.len());
        for (name, value) in &before {
            assert!(
                request.headers().get_all(name).any(|kept| kept == value),
                "{name} keeps {value:?}"
            );
            let copied = request
                .headers()
                .get_all(name)
                .all(|kept| kept.as_bytes().as_ptr() != value.as_bytes().as_ptr());
            assert!(copied, "{name} has memory of its own");
        }
    }
}
