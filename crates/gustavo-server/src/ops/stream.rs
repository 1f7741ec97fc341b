//! The agent's stream (`POST /api/v1/nodes/{n}/stream`, HTTP/2 only): one request an
//! agent holds open for as long as it runs. Up go newline-delimited `SyncRequest`s (status
//! reports and vitals, taken in exactly as a sync's); down go `StreamFrame`s (the answer to
//! the first line, a newer desired state, a request for the report, a keepalive in answer
//! to a line when nothing went down for a while). A change costs each agent one
//! line each way instead of the two HTTP requests of the sync protocol, which it replaces
//! where HTTP/2 is spoken; `POST …/sync` stays for everyone else.
//!
//! The stream's work runs inside its answer's body ([`Down`]): it is polled by the task
//! that already carries the body to the connection, so a frame down costs one task wake-up
//! and no channel, and flow control holds the work back when the agent reads nothing.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use gustavo_model::api::{ErrorDetail, Kept, STREAM_KEEPALIVE_S, StreamFrame, SyncRequest};
use http_body_util::BodyExt;
use hyper::body::Frame;

use super::agents::{Form, Owed, PollOpen};
use super::{OpError, Ops};
use crate::auth::Principal;

/// Lines made by a stream's work and not yet handed to the connection.
#[derive(Clone, Default)]
struct Outbox(Arc<Mutex<VecDeque<Bytes>>>);

impl Outbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Bytes>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `line` and gives the body the turn to hand it on: the work resumes when the
    /// body is polled again, which it is as soon as the connection can take more (the body
    /// has just returned a line, so its poller comes back for the next).
    async fn send(&self, line: Bytes) {
        self.lock().push_back(line);
        let mut yielded = false;
        std::future::poll_fn(|_| {
            if yielded {
                Poll::Ready(())
            } else {
                yielded = true;
                Poll::Pending
            }
        })
        .await
    }
}

/// The deltas an agent's stream takes (the headers it sent).
#[derive(Debug, Clone, Copy, Default)]
pub struct Deltas {
    /// Apps as before are left out ([`gustavo_model::api::DELTAS_HEADER`]).
    pub apps: bool,
    /// With `apps`, pressure thresholds as before too
    /// ([`gustavo_model::api::KEPT_PRESSURE_HEADER`]).
    pub pressure: bool,
}

/// The body of a stream's answer: the lines down, made by the stream's work, which runs
/// when the body is polled.
pub struct Down {
    outbox: Outbox,
    work: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl hyper::body::Body for Down {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.outbox.lock().is_empty()
            && let Some(work) = this.work.as_mut()
            && work.as_mut().poll(cx).is_ready()
        {
            this.work = None;
        }
        match this.outbox.lock().pop_front() {
            Some(line) => Poll::Ready(Some(Ok(Frame::data(line)))),
            None if this.work.is_none() => Poll::Ready(None),
            None => Poll::Pending,
        }
    }
}

/// Why a stream ended on the server's side, told to the agent in a last frame.
#[derive(Debug)]
enum End {
    /// The agent closed its side, or the connection went away.
    Gone,
    /// What the agent sent, or what it asked, is refused.
    Refused(OpError),
}

impl From<OpError> for End {
    fn from(e: OpError) -> End {
        End::Refused(e)
    }
}

/// The request body cut into lines, each at most `max` bytes.
pub struct Lines {
    body: Body,
    buf: Vec<u8>,
    /// How much of `buf` is known to hold no newline: each byte is looked at once, however
    /// small the pieces a line arrives in.
    scanned: usize,
    max: usize,
}

impl Lines {
    pub fn new(body: Body, max: usize) -> Lines {
        Lines {
            body,
            buf: Vec::new(),
            scanned: 0,
            max,
        }
    }

    /// The next line without its newline; none when the body ended. Cancel-safe: what was
    /// read stays in the buffer.
    async fn next(&mut self) -> Result<Option<Vec<u8>>, End> {
        loop {
            if let Some(i) = self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
                let end = self.scanned + i;
                // The usual case, a line alone in the buffer, takes the buffer itself: no
                // copy, and a stream waiting for its next line holds no buffer.
                let mut line = if end + 1 == self.buf.len() {
                    std::mem::take(&mut self.buf)
                } else {
                    self.buf.drain(..=end).collect()
                };
                line.pop();
                self.scanned = 0;
                return Ok(Some(line));
            }
            self.scanned = self.buf.len();
            if self.buf.len() > self.max {
                return Err(End::Refused(OpError::BadRequest(format!(
                    "a stream line is longer than {} bytes",
                    self.max
                ))));
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(_)) => return Err(End::Gone),
                None => return Ok(None),
            }
        }
    }
}

fn line(frame: &StreamFrame) -> Bytes {
    let mut bytes = serde_json::to_vec(frame).expect("frames always serialize");
    bytes.push(b'\n');
    Bytes::from(bytes)
}

fn parse(line: &[u8]) -> Result<SyncRequest, End> {
    serde_json::from_slice(line).map_err(|e| {
        End::Refused(OpError::BadRequest(format!(
            "a stream line is not a sync request: {e}"
        )))
    })
}

impl Ops {
    /// Whether `p` may open `name`'s stream: the node itself only, and it must exist.
    pub fn may_stream(&self, p: &Principal, name: &str) -> Result<(), OpError> {
        match p {
            Principal::Node(n) if n == name => {}
            _ => return Err(OpError::Forbidden("stream as another node")),
        }
        if !self.shared.read().nodes.contains_key(name) {
            return Err(OpError::NotFound(format!("node `{name}` does not exist")));
        }
        Ok(())
    }

    /// `name`'s stream (checked by [`Ops::may_stream`]): the body of its answer, which
    /// runs the stream until the agent or the server ends it (or the body is dropped, the
    /// connection gone). With `deltas` (what the agent asked for), a desired state leaves
    /// out the apps, and the pressure thresholds, that went down unchanged before
    /// ([`StreamFrame::kept`], [`StreamFrame::kept_pressure`]).
    pub fn stream(self, from: IpAddr, name: String, form: Form, deltas: Deltas, up: Lines) -> Down {
        let outbox = Outbox::default();
        let work = Box::pin(self.run_stream_to_end(from, name, form, deltas, up, outbox.clone()));
        Down {
            outbox,
            work: Some(work),
        }
    }

    /// Runs the stream, sending lines to `down`. A refusal goes down as a last frame
    /// naming it.
    async fn run_stream_to_end(
        self,
        from: IpAddr,
        name: String,
        form: Form,
        deltas: Deltas,
        up: Lines,
        down: Outbox,
    ) {
        if let Err(End::Refused(e)) = self.run_stream(from, &name, form, deltas, up, &down).await {
            tracing::debug!(node = %name, error = %e, "stream ended by the server");
            let error = ErrorDetail {
                code: e.code().into(),
                message: e.to_string(),
            };
            down.lock().push_back(line(&StreamFrame {
                error: Some(error),
                ..StreamFrame::default()
            }));
        }
    }

    async fn run_stream(
        &self,
        from: IpAddr,
        name: &str,
        form: Form,
        deltas: Deltas,
        mut up: Lines,
        down: &Outbox,
    ) -> Result<(), End> {
        let send = |frame: StreamFrame| down.send(line(&frame));
        let shutting_down = || End::Refused(OpError::Unavailable("the server is shutting down"));
        let mut closing = self.shared.closing.subscribe();
        if *closing.borrow_and_update() {
            return Err(shutting_down());
        }
        // Made once and kept, like the wake-ups below: a future made anew at every turn
        // registers on (and leaves) a list every stream shares.
        let closed = closing.changed();
        tokio::pin!(closed);
        let _waiting = crate::metrics::Waiting::new(&self.shared.metrics.long_polls);
        let exec_wake = self.shared.exec.wake(name);
        let exec_woken = exec_wake.notified();
        tokio::pin!(exec_woken);
        let _open = PollOpen::new(self, name, from, true);
        // The first line says which revision the agent has.
        let Some(first) = up.next().await? else {
            return Ok(());
        };
        let first = parse(&first)?;
        self.catch_up(name, first.after).await?;
        let mut sent = first.after;
        // The first line is answered at once, with nothing to say if need be: the agent
        // learns that its lines get through (something between that holds request bodies
        // would otherwise look like a quiet stream).
        // Boxed here and below: the stream's own state lives as long as the device is
        // connected, what taking a line in needs only while it is taken in.
        let need_report = Box::pin(self.received(name, from, first)).await?;
        send(StreamFrame {
            need_report,
            deltas: true,
            ..StreamFrame::default()
        })
        .await;
        let keepalive = Duration::from_secs(STREAM_KEEPALIVE_S);
        let mut quiet_until = tokio::time::Instant::now() + keepalive;
        // What the stream waits on, and for which groups: kept from one turn to the next
        // while the node's groups stay, since a kept registration sees every wake after it
        // was made.
        let mut woken: Option<(Vec<String>, crate::wake::Waiting)> = None;
        // Its next wake-up, kept like the others above (a stream turns at every line).
        let mut woken_next = std::pin::pin!(None::<tokio::sync::futures::OwnedNotified>);
        // Whether what the node is owed must be looked at: at the start and after a wake,
        // not after a line up (what a node says changes nothing it is owed).
        let mut look = true;
        // What the agent has: the last state sent down (with `deltas`).
        let mut had = None;
        loop {
            if look {
                look = false;
                let desired = {
                    let c = self.shared.read();
                    let (node, desired) = match self.owed(&c, name, sent, true)? {
                        Owed::State(d, node) => (node, Some(*d)),
                        Owed::Nothing(node) => (node, None),
                    };
                    // Registered under the lock the revision was read under: a commit
                    // this read did not see wakes the stream.
                    if woken.as_ref().is_none_or(|(g, _)| *g != node.groups) {
                        let w = crate::wake::Waiting::new(&self.shared.wakers, name, &node.groups);
                        woken_next.set(Some(w.next_change()));
                        woken = Some((node.groups.clone(), w));
                    }
                    desired
                };
                // Serialized in this statement, before the await below: the state would
                // otherwise be kept in the stream's future, whose size is that of its
                // largest await and which lives as long as the device is connected.
                let frame = desired.map(|mut d| {
                    if form != Form::Template {
                        d.complete();
                    }
                    sent = sent.max(d.revision);
                    let kept = if deltas.apps {
                        d.keep_unchanged(&mut had, deltas.pressure)
                    } else {
                        Kept::default()
                    };
                    line(&StreamFrame {
                        desired: Some(d),
                        kept: kept.apps,
                        kept_pressure: kept.pressure,
                        ..StreamFrame::default()
                    })
                });
                if let Some(frame) = frame {
                    down.send(frame).await;
                    quiet_until = tokio::time::Instant::now() + keepalive;
                }
            }
            let (_, woken) = woken.as_ref().expect("set at the first look");
            tokio::select! {
                l = up.next() => {
                    let Some(l) = l? else { return Ok(()) };
                    // Parsed in a statement of its own, and the line let go: a temporary
                    // of the `?` (576 bytes) and the line would otherwise be kept in the
                    // future across the await.
                    let req = parse(&l)?;
                    drop(l);
                    let need_report = Box::pin(self.received(name, from, req)).await?;
                    // The keepalive goes only in answer to a line, never on a timer of its
                    // own: data sent to a device that has just gone silent stays
                    // unacknowledged, and the kernel then holds the connection for
                    // `TCP_USER_TIMEOUT` after it rather than after the silence began —
                    // past the 15 s in which a dead device must show offline.
                    let now = tokio::time::Instant::now();
                    if need_report || now >= quiet_until {
                        send(StreamFrame { need_report, ..StreamFrame::default() }).await;
                        quiet_until = now + keepalive;
                    }
                }
                _ = woken_next.as_mut().as_pin_mut().expect("set with `woken`") => {
                    woken_next.set(Some(woken.next_change()));
                    look = true;
                }
                _ = &mut exec_woken => {
                    exec_woken.set(exec_wake.notified());
                    look = true;
                }
                _ = &mut closed => return Err(shutting_down()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(pieces: Vec<&'static [u8]>, max: usize) -> Lines {
        let body = Body::from_stream(futures::stream::iter(
            pieces
                .into_iter()
                .map(|p| Ok::<_, std::convert::Infallible>(Bytes::from_static(p))),
        ));
        Lines::new(body, max)
    }

    /// Lines arriving a byte at a time, or several in one piece, come out whole; the end of
    /// the body is the end of the lines.
    #[tokio::test]
    async fn lines_come_out_whole_however_they_arrive() {
        let one_by_one: Vec<&'static [u8]> = b"{\"a\":1}\n{}\n".chunks(1).collect();
        let mut l = lines(one_by_one, 64);
        assert_eq!(l.next().await.unwrap().unwrap(), b"{\"a\":1}");
        assert_eq!(l.next().await.unwrap().unwrap(), b"{}");
        assert!(l.next().await.unwrap().is_none());
        let mut l = lines(vec![b"x\ny", b"z\n"], 64);
        assert_eq!(l.next().await.unwrap().unwrap(), b"x");
        assert_eq!(l.next().await.unwrap().unwrap(), b"yz");
        // A line that was alone in the buffer took it: a stream waiting for its next line
        // holds no buffer.
        assert_eq!(l.buf.capacity(), 0);
    }

    /// A line past the limit is refused by its size, however it is cut.
    #[tokio::test]
    async fn a_line_past_the_limit_is_refused() {
        let mut l = lines(vec![b"0123", b"4567", b"89"], 8);
        match l.next().await {
            Err(End::Refused(OpError::BadRequest(m))) => {
                assert!(m.contains("longer than 8"), "{m}")
            }
            other => panic!("{other:?}"),
        }
    }
}
