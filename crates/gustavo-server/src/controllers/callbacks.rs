//! The callback controller: delivers the outbox (`gustavo_store::outbox`). Each record is
//! a job state change to POST as JSON to the job's `callback_url`; it is retried with
//! exponential backoff (1 s doubling up to [`MAX_BACKOFF_S`]) until the endpoint answers
//! 2xx or the record expires (`--callback-expiry`, a day by default). The outbox is on
//! disk, so deliveries survive a server restart and resume where they were.
//!
//! The HTTP side is behind [`Sender`], so the retry rules are tested without a network;
//! [`HttpSender`] is the real one (plain HTTP/1.1 over hyper, TLS via rustls for https).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use gustavo_store::{CallbackRecord, OutboxStore};

/// The longest wait between two tries of one delivery.
pub const MAX_BACKOFF_S: u64 = 60;
/// Deliveries tried per pass.
const BATCH: usize = 64;
/// How long one POST may take.
const POST_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends one callback; `Ok` with the HTTP status, `Err` when no answer came.
pub trait Sender: Send + Sync + 'static {
    fn post(&self, url: &str, body: &str) -> impl Future<Output = Result<u16, String>> + Send;
}

/// Seconds to wait after try number `attempts` (1-based) failed.
pub fn backoff_s(attempts: u32) -> u64 {
    1u64.checked_shl(attempts.saturating_sub(1).min(30))
        .unwrap_or(u64::MAX)
        .min(MAX_BACKOFF_S)
}

/// What one try did to a record: delivered or expired (forget it), or try again later.
pub fn after_try(
    mut rec: CallbackRecord,
    result: Result<u16, String>,
    now: u64,
) -> Option<CallbackRecord> {
    rec.attempts += 1;
    match result {
        Ok(s) if (200..300).contains(&s) => return None,
        Ok(s) => rec.last_error = Some(format!("HTTP {s}")),
        Err(e) => rec.last_error = Some(e),
    }
    if now >= rec.expires_at {
        return None;
    }
    rec.next_at = (now + backoff_s(rec.attempts)).min(rec.expires_at);
    Some(rec)
}

/// One pass: every due delivery is tried once (concurrently); returns how many were due.
pub async fn pass<S: Sender>(outbox: &dyn OutboxStore, sender: &S, now: u64) -> usize {
    let due = match outbox.due_callbacks(now, BATCH) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the callback outbox");
            return 0;
        }
    };
    let n = due.len();
    let tries = due.into_iter().map(|rec| async move {
        let r = sender.post(&rec.url, &rec.body).await;
        (rec, r)
    });
    for (rec, r) in futures::future::join_all(tries).await {
        let id = rec.id.clone();
        let url = rec.url.clone();
        let ok = matches!(r, Ok(s) if (200..300).contains(&s));
        let outcome = match after_try(rec, r, crate::now().max(now)) {
            None => {
                if ok {
                    tracing::info!(callback = %id, %url, "callback delivered");
                } else {
                    tracing::warn!(callback = %id, %url, "callback expired undelivered");
                }
                outbox.delete_callback(&id)
            }
            Some(rec) => {
                tracing::debug!(callback = %id, error = ?rec.last_error, next = rec.next_at, "callback not delivered yet");
                outbox.update_callback(&rec)
            }
        };
        if let Err(e) = outcome {
            tracing::warn!(callback = %id, error = %e, "cannot record a callback try");
        }
    }
    n
}

/// Runs until the server closes: a pass whenever a callback is added, and at least once
/// a second for the retries coming due.
pub async fn run<S: Sender>(shared: Arc<crate::Shared>, sender: S) {
    let Some(outbox) = shared.outbox().cloned() else {
        return;
    };
    let mut closing = shared.closing.subscribe();
    loop {
        pass(outbox.as_ref(), &sender, crate::now()).await;
        tokio::select! {
            _ = shared.callbacks.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = closing.changed() => return,
        }
    }
}

/// POSTs over HTTP/1.1 with hyper; https through rustls (ring), trusting the platform's
/// usual public roots is not possible without a roots crate, so https endpoints must be
/// signed by a CA the system bundle at `/etc/ssl/certs/ca-certificates.crt` holds.
#[derive(Clone)]
pub struct HttpSender {
    tls: Arc<rustls::ClientConfig>,
}

impl HttpSender {
    pub fn new() -> HttpSender {
        let mut roots = rustls::RootCertStore::empty();
        if let Ok(pem) = std::fs::read("/etc/ssl/certs/ca-certificates.crt") {
            let mut rd = std::io::BufReader::new(&pem[..]);
            for cert in rustls_pemfile_certs(&mut rd) {
                let _ = roots.add(cert);
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
        .unwrap_or_else(|_| {
            rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        });
        HttpSender { tls: Arc::new(tls) }
    }
}

impl Default for HttpSender {
    fn default() -> Self {
        HttpSender::new()
    }
}

/// PEM certificates from a bundle (the `CERTIFICATE` blocks, base64-decoded).
fn rustls_pemfile_certs(
    rd: &mut impl std::io::BufRead,
) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    let mut text = Vec::new();
    if std::io::Read::read_to_end(rd, &mut text).is_err() {
        return Vec::new();
    }
    rustls::pki_types::CertificateDer::pem_slice_iter(&text)
        .filter_map(Result::ok)
        .collect()
}

impl Sender for HttpSender {
    async fn post(&self, url: &str, body: &str) -> Result<u16, String> {
        tokio::time::timeout(POST_TIMEOUT, self.post_inner(url, body))
            .await
            .map_err(|_| format!("no answer within {} s", POST_TIMEOUT.as_secs()))?
    }
}

impl HttpSender {
    async fn post_inner(&self, url: &str, body: &str) -> Result<u16, String> {
        use http_body_util::Full;
        use hyper::body::Bytes;
        let uri: hyper::Uri = url.parse().map_err(|e| format!("bad URL: {e}"))?;
        let https = uri.scheme_str() == Some("https");
        let host = uri.host().ok_or("the URL has no host")?.to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let host_bracketed = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let tcp = tokio::net::TcpStream::connect((host_bracketed.as_str(), port))
            .await
            .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
        let path = uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        let authority = uri
            .authority()
            .map(|a| {
                a.as_str()
                    .rsplit('@')
                    .next()
                    .unwrap_or_default()
                    .to_string()
            })
            .unwrap_or(host.clone());
        let req = hyper::Request::post(path)
            .header(hyper::header::HOST, authority)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(
                hyper::header::USER_AGENT,
                concat!("gustavo/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| e.to_string())?;
        let status = if https {
            let name = rustls::pki_types::ServerName::try_from(host_bracketed.clone())
                .map_err(|e| format!("bad host name: {e}"))?;
            let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS with {host}: {e}"))?;
            send(hyper_util::rt::TokioIo::new(tls), req).await?
        } else {
            send(hyper_util::rt::TokioIo::new(tcp), req).await?
        };
        Ok(status)
    }
}

async fn send<T>(
    io: T,
    req: hyper::Request<http_body_util::Full<hyper::body::Bytes>>,
) -> Result<u16, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut tx, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp = tx.send_request(req).await.map_err(|e| e.to_string())?;
    Ok(resp.status().as_u16())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec() -> CallbackRecord {
        CallbackRecord {
            id: "j/1/n/failed".into(),
            job: "j".into(),
            url: "http://127.0.0.1:9/".into(),
            body: "{}".into(),
            created_at: 100,
            expires_at: 200,
            attempts: 0,
            next_at: 100,
            last_error: None,
        }
    }

    #[test]
    fn retries_back_off_until_a_2xx_or_expiry() {
        assert_eq!(backoff_s(1), 1);
        assert_eq!(backoff_s(3), 4);
        assert_eq!(backoff_s(40), MAX_BACKOFF_S);
        assert!(after_try(rec(), Ok(204), 100).is_none(), "delivered");
        let r = after_try(rec(), Ok(503), 100).unwrap();
        assert_eq!((r.attempts, r.next_at), (1, 101));
        assert_eq!(r.last_error.as_deref(), Some("HTTP 503"));
        let r = after_try(r, Err("refused".into()), 101).unwrap();
        assert_eq!(r.next_at, 103);
        // Never scheduled past its expiry, and dropped once there.
        let mut late = rec();
        late.attempts = 20;
        assert_eq!(
            after_try(late.clone(), Err("x".into()), 190)
                .unwrap()
                .next_at,
            200
        );
        assert!(after_try(late, Err("x".into()), 200).is_none());
    }

    struct Flaky(std::sync::Mutex<u32>);

    impl Sender for Flaky {
        async fn post(&self, _url: &str, _body: &str) -> Result<u16, String> {
            let mut n = self.0.lock().unwrap();
            *n += 1;
            if *n < 3 {
                Err("refused".into())
            } else {
                Ok(200)
            }
        }
    }

    #[tokio::test]
    async fn a_pass_tries_what_is_due_and_records_it() {
        use gustavo_store::{Change, SqliteStore, Store};
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db")).unwrap();
        let now = crate::now();
        let mut r = rec();
        r.next_at = now;
        r.expires_at = now + 3600;
        store
            .commit(1, &[Change::PutCallback(Box::new(r))])
            .unwrap();
        let sender = Flaky(Default::default());
        assert_eq!(pass(&store, &sender, now).await, 1);
        let left = store.pending_callbacks(10).unwrap();
        assert_eq!(left[0].attempts, 1);
        // Not due again until its backoff passed.
        assert_eq!(pass(&store, &sender, now).await, 0);
        pass(&store, &sender, now + 100).await;
        pass(&store, &sender, now + 200).await;
        assert!(
            store.pending_callbacks(10).unwrap().is_empty(),
            "delivered on the third try"
        );
    }
}
