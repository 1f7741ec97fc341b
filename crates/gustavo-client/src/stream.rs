//! The agent's stream (`POST /api/v1/nodes/{n}/stream`): one HTTP/2 request held open, sync
//! requests going up as lines of its body while frames come down as lines of the answer.

use std::time::Duration;

use gustavo_model::api::{
    DELTAS_HEADER, FORM_HEADER, KEPT_PRESSURE_HEADER, STREAM_KEEPALIVE_S, StreamFrame, SyncRequest,
};
use reqwest::{Method, StatusCode};
use tokio::sync::mpsc;

use crate::{Client, ClientError, reason};

/// The reason of the error when a stream's answer did not come within 15 s (a proxy that
/// holds the request until its body ends would do that).
pub const STREAM_UNANSWERED: &str = "no answer to the stream within 15 s";

/// An open stream. Dropping it closes it.
pub struct SyncStream {
    up: mpsc::Sender<Vec<u8>>,
    down: reqwest::Response,
    buf: Vec<u8>,
    url: String,
    /// The last desired state that came down, as it came (template form): where a delta's
    /// kept apps come from.
    had: Option<gustavo_model::api::DesiredState>,
}

impl Client {
    /// Opens `node`'s stream. Refused (`ClientError::Api`) by a server without streams
    /// (`404`) or over HTTP/1.1 (`400`): the caller then syncs instead.
    pub async fn stream(&self, node: &str) -> Result<SyncStream, ClientError> {
        self.open_stream(node, true).await
    }

    /// Opens `node`'s stream as an agent from before `gustavo-kept-pressure` did: the
    /// server then sends the pressure thresholds in every state. For compatibility tests.
    pub async fn stream_without_kept_pressure(
        &self,
        node: &str,
    ) -> Result<SyncStream, ClientError> {
        self.open_stream(node, false).await
    }

    async fn open_stream(
        &self,
        node: &str,
        kept_pressure: bool,
    ) -> Result<SyncStream, ClientError> {
        let path = format!("/api/v1/nodes/{node}/stream");
        let url = format!("{}{}", self.base, path);
        let (up, rx) = mpsc::channel::<Vec<u8>>(4);
        let body = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|line| (Ok::<_, std::convert::Infallible>(line), rx))
        });
        let started = std::time::Instant::now();
        let observe = |status: u16| {
            if let Some(o) = &self.observer {
                o("stream", started.elapsed(), status);
            }
        };
        let unreachable = |e: reqwest::Error| ClientError::Unreachable {
            url: self.base.clone(),
            reason: reason(&e),
        };
        // No overall timeout: the stream lasts. The answer's headers come at once.
        let mut request = self
            .http
            .request(Method::POST, &url)
            .bearer_auth(&self.token)
            .header(FORM_HEADER, "template")
            .header(DELTAS_HEADER, "1");
        if kept_pressure {
            request = request.header(KEPT_PRESSURE_HEADER, "1");
        }
        let resp = tokio::time::timeout(
            Duration::from_secs(15),
            request
                .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson")
                .body(reqwest::Body::wrap_stream(body))
                .send(),
        )
        .await
        .map_err(|_| {
            observe(crate::TIMED_OUT);
            ClientError::Unreachable {
                url: self.base.clone(),
                reason: STREAM_UNANSWERED.into(),
            }
        })?
        .map_err(|e| {
            observe(crate::NO_ANSWER);
            unreachable(e)
        })?;
        let status = resp.status();
        observe(status.as_u16());
        if status != StatusCode::OK {
            let bytes = resp.bytes().await.map_err(unreachable)?;
            return Err(crate::api_error(status, &bytes));
        }
        Ok(SyncStream {
            up,
            down: resp,
            buf: Vec::new(),
            url,
            had: None,
        })
    }
}

impl SyncStream {
    /// Sends one line up. Fails when the stream is gone; what was sent before may or may
    /// not have arrived, so the caller sends it again on the next stream.
    pub async fn send(&self, req: &SyncRequest) -> Result<(), ClientError> {
        let mut line = serde_json::to_vec(req).expect("sync requests always serialize");
        line.push(b'\n');
        self.up.send(line).await.map_err(|_| self.gone("closed"))
    }

    /// Sends bytes up as they are, for tests that probe error handling.
    pub async fn send_raw(&self, bytes: &[u8]) -> Result<(), ClientError> {
        self.up
            .send(bytes.to_vec())
            .await
            .map_err(|_| self.gone("closed"))
    }

    /// The next frame, its desired state whole (apps `kept` put back from the last state
    /// that came down this stream) and its templates completed; `Ok(None)` when the server
    /// ended the stream. A frame with `error` is the server's last.
    pub async fn next(&mut self) -> Result<Option<StreamFrame>, ClientError> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                let mut frame: StreamFrame =
                    serde_json::from_slice(&line).map_err(|e| ClientError::Decode {
                        url: self.url.clone(),
                        reason: e.to_string(),
                    })?;
                if let Some(d) = &mut frame.desired {
                    if !frame.kept.is_empty() || frame.kept_pressure {
                        let had = self.had.as_ref().ok_or("a delta came before any state");
                        had.map_err(str::to_string)
                            .and_then(|h| d.restore(&frame.kept, frame.kept_pressure, h))
                            .map_err(|e| {
                                self.gone(&format!("cannot apply the desired state: {e}"))
                            })?;
                    }
                    // Kept as it came (templates are cheap to copy: shared).
                    self.had = Some(d.clone());
                    d.complete();
                }
                return Ok(Some(frame));
            }
            match self.down.chunk().await {
                Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk),
                Ok(None) => return Ok(None),
                Err(e) => return Err(self.gone(&reason(&e))),
            }
        }
    }

    /// How long without a frame means the stream is dead, for an agent that sends a line
    /// at least every `period` (its vitals): the server answers a line when it sent
    /// nothing for `STREAM_KEEPALIVE_S`, so something comes at least every period plus
    /// that; twice it, and never under 135 s.
    pub fn silence_limit(period: Duration) -> Duration {
        (2 * (period + Duration::from_secs(STREAM_KEEPALIVE_S)))
            .max(Duration::from_secs(3 * STREAM_KEEPALIVE_S))
    }

    fn gone(&self, reason: &str) -> ClientError {
        ClientError::Unreachable {
            url: self.url.clone(),
            reason: format!("the stream broke: {reason}"),
        }
    }
}
