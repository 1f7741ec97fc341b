//! Request bodies: read whole, within `--body-limit` and within `--body-timeout`, before any
//! handler runs.
//!
//! - Past the limit the answer is `413` with the usual JSON error naming the limit. The
//!   rest of the body is read and thrown away first (up to [`DRAIN_MAX`] in all), because
//!   a server that answers before the client has finished sending makes the client see a
//!   reset instead of the answer: over HTTP/1.1 the kernel resets a socket closed with
//!   unread data, and over HTTP/2 the stream is reset after the response, which curl before
//!   8.x reports as a framing error with no status. A client that announced a length past
//!   `DRAIN_MAX`, or that asked `Expect: 100-continue` (and so has sent nothing yet), is
//!   answered at once, and the HTTP/1.1 connection is closed.
//! - A body that has not fully arrived `--body-timeout` after its headers (one that never
//!   comes, or trickles) is answered `408` and the HTTP/1.1 connection closed: a slow client
//!   holds a connection for a bounded time, however it paces its bytes.
//!
//! Handlers then get the body as one buffer within the limit, so their own extractors
//! never meet a partial or oversized one.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Version, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;

use crate::AppState;
use crate::error::ApiError;

/// The most a request may send in all before an over-limit answer is given regardless.
pub const DRAIN_MAX: u64 = 64 * 1024 * 1024;

/// Limits applied to every request body.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// Largest body, in bytes.
    pub max: usize,
    /// From the end of the headers to the last byte of the body.
    pub timeout: Duration,
}

enum Read {
    Done(Bytes),
    /// Over the limit; `drained` when the client's body was read to its end.
    TooLarge {
        drained: bool,
    },
    TimedOut,
    Failed(String),
}

/// Reads `body` within `limits`, draining past the limit (up to [`DRAIN_MAX`]).
async fn read(mut body: Body, limits: BodyLimits, deadline: tokio::time::Instant) -> Read {
    let mut buf: Vec<u8> = Vec::new();
    let mut total: u64 = 0;
    let mut over = false;
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => {
                return if over {
                    Read::TooLarge { drained: false }
                } else {
                    Read::TimedOut
                };
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return if over {
                    Read::TooLarge { drained: false }
                } else {
                    Read::Failed(e.to_string())
                };
            }
            Ok(Some(Ok(f))) => f,
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        total += data.len() as u64;
        if over {
            if total > DRAIN_MAX {
                return Read::TooLarge { drained: false };
            }
            continue;
        }
        if buf.len() + data.len() > limits.max {
            over = true;
            buf = Vec::new();
            continue;
        }
        buf.extend_from_slice(&data);
    }
    if over {
        Read::TooLarge { drained: true }
    } else {
        Read::Done(Bytes::from(buf))
    }
}

/// An error answer; over HTTP/1.1 with `close`, the connection is closed after it (the
/// client's bytes still in flight would otherwise be read as the next request).
fn answer(err: ApiError, version: Version, close: bool) -> Response {
    let mut resp = err.into_response();
    if close && version <= Version::HTTP_11 {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// The one route whose body is not read whole: the agent's stream.
const STREAM_ROUTE: &str = "/api/v1/nodes/{name}/stream";

/// The middleware: buffers every request body within the limits (see the module header).
pub async fn limit(State(s): State<AppState>, req: Request, next: Next) -> Response {
    use axum::body::HttpBody as _;
    if req.body().is_end_stream() {
        // No body (GETs, long-polls included): nothing to wait for.
        return next.run(req).await;
    }
    if req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .is_some_and(|m| m.as_str() == STREAM_ROUTE)
    {
        // An agent's stream is read line by line as it comes, each line within the size
        // limit (`ops::stream::Lines`); it has no end to wait for.
        return next.run(req).await;
    }
    let limits = s.body;
    let deadline = tokio::time::Instant::now() + limits.timeout;
    let version = req.version();
    let (parts, body) = req.into_parts();
    let declared: Option<u64> = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    let too_large = ApiError::TooLarge(limits.max);
    if let Some(len) = declared
        && len > limits.max as u64
    {
        let expects_continue = parts
            .headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if expects_continue || len > DRAIN_MAX {
            // Nothing sent yet (100-continue), or too much to read for nothing.
            return answer(too_large, version, true);
        }
    }
    match read(body, limits, deadline).await {
        Read::Done(bytes) => {
            let req = Request::from_parts(parts, Body::from(bytes));
            next.run(req).await
        }
        Read::TooLarge { drained } => answer(too_large, version, !drained),
        Read::TimedOut => answer(ApiError::BodyTimeout(limits.timeout), version, true),
        Read::Failed(e) => answer(
            ApiError::BadRequest(format!("cannot read the request body: {e}")),
            version,
            true,
        ),
    }
}
