//! Bounds on a storage request that hangs, for the requests the tool makes itself (Supabase's
//! REST and resumable API, S3's `ListMultipartUploads`): a **connect timeout** (TCP and TLS
//! handshake) and an **idle timeout** (nothing sent and nothing received for that long: while a
//! body is sent, while the answer is awaited, and between the chunks of the answer's body). A
//! slow transfer that keeps moving is never cut; a server that accepts and never answers is given
//! up on after the idle timeout, and the caller retries (logging each retry) through
//! `retry::backoff`. No total timeout: a 5 GB download may take an hour.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use reqwest::{Client, RequestBuilder, Response};

/// A request body is handed to the connection in pieces this large, each one a sign of progress.
const PIECE: usize = 64 * 1024;

/// The two bounds, from `--storage-connect-timeout` and `--storage-idle-timeout`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(10),
            idle: Duration::from_secs(60),
        }
    }
}

/// Why a request got no answer.
#[derive(Debug)]
pub enum SendError {
    Http(reqwest::Error),
    /// Nothing moved for the idle timeout.
    Idle(Duration),
}

impl SendError {
    /// Worth another try: a connection that failed, timed out or went quiet.
    pub fn transient(&self) -> bool {
        match self {
            SendError::Idle(_) => true,
            SendError::Http(e) => e.is_connect() || e.is_timeout() || e.is_request(),
        }
    }

    /// One line, naming the setting that bounded it.
    pub fn describe(&self, t: &Timeouts) -> String {
        match self {
            SendError::Idle(d) => idle_message(*d),
            SendError::Http(e) if e.is_connect() && e.is_timeout() => format!(
                "no connection within {} (the connect timeout, --storage-connect-timeout / BACKUP_STORAGE_CONNECT_TIMEOUT)",
                secs(t.connect)
            ),
            SendError::Http(e) => chain(e),
        }
    }
}

fn idle_message(d: Duration) -> String {
    format!(
        "the server sent nothing for {} (the idle timeout, --storage-idle-timeout / BACKUP_STORAGE_IDLE_TIMEOUT)",
        secs(d)
    )
}

fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

/// reqwest's error with its causes ("error sending request … : connection refused").
fn chain(e: &reqwest::Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// When something last moved, in milliseconds since `start`.
struct Progress {
    start: Instant,
    last: AtomicU64,
}

impl Progress {
    fn stamp(&self) {
        self.last
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn quiet_for(&self) -> Duration {
        self.start
            .elapsed()
            .saturating_sub(Duration::from_millis(self.last.load(Ordering::Relaxed)))
    }
}

impl Timeouts {
    /// A client with the connect timeout, redirects never followed (they would carry the key).
    pub fn client(&self) -> reqwest::ClientBuilder {
        Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(self.connect)
    }

    /// Sends the request and waits for the answer's head, given up on once nothing has moved for
    /// the idle timeout. A body held in memory is handed over in pieces, each one counted as
    /// progress, so a large body sent slowly is not cut.
    pub async fn send(&self, client: &Client, rb: RequestBuilder) -> Result<Response, SendError> {
        let mut req = rb.build().map_err(SendError::Http)?;
        let progress = Arc::new(Progress {
            start: Instant::now(),
            last: AtomicU64::new(0),
        });
        let whole = req.body().and_then(|b| b.as_bytes()).map(Bytes::copy_from_slice);
        if let Some(whole) = whole {
            let len = whole.len();
            let pieces: Vec<Bytes> = (0..len)
                .step_by(PIECE)
                .map(|at| whole.slice(at..(at + PIECE).min(len)))
                .collect();
            let p = progress.clone();
            let body = futures::stream::iter(pieces).map(move |piece| {
                p.stamp();
                Ok::<Bytes, std::io::Error>(piece)
            });
            req.headers_mut()
                .insert(reqwest::header::CONTENT_LENGTH, reqwest::header::HeaderValue::from(len));
            *req.body_mut() = Some(reqwest::Body::wrap_stream(body));
        }
        let answer = client.execute(req);
        tokio::pin!(answer);
        loop {
            let left = self.idle.saturating_sub(progress.quiet_for());
            if left.is_zero() {
                return Err(SendError::Idle(self.idle));
            }
            tokio::select! {
                r = &mut answer => return r.map_err(SendError::Http),
                _ = tokio::time::sleep(left) => {}
            }
        }
    }

    /// The answer's whole body (a small one: an error, a listing page, a manifest), each chunk
    /// awaited at most the idle timeout.
    pub async fn body(&self, mut r: Response) -> Result<Bytes, String> {
        let mut out = Vec::new();
        loop {
            match tokio::time::timeout(self.idle, r.chunk()).await {
                Err(_) => return Err(idle_message(self.idle)),
                Ok(Err(e)) => return Err(chain(&e)),
                Ok(Ok(None)) => return Ok(out.into()),
                Ok(Ok(Some(chunk))) => out.extend_from_slice(&chunk),
            }
        }
    }

    /// The answer's body as JSON.
    pub async fn json<T: serde::de::DeserializeOwned>(&self, r: Response) -> Result<T, String> {
        let bytes = self.body(r).await?;
        serde_json::from_slice(&bytes).map_err(|e| e.to_string())
    }

    /// The answer's body as a stream (a download), each chunk awaited at most the idle timeout.
    pub fn stream(&self, r: Response) -> impl Stream<Item = Result<Bytes, String>> + Unpin {
        let idle = self.idle;
        Box::pin(futures::stream::unfold(Some(r), move |r| async move {
            let mut r = r?;
            match tokio::time::timeout(idle, r.chunk()).await {
                Err(_) => Some((Err(idle_message(idle)), None)),
                Ok(Err(e)) => Some((Err(chain(&e)), None)),
                Ok(Ok(None)) => None,
                Ok(Ok(Some(chunk))) => Some((Ok(chunk), Some(r))),
            }
        }))
    }
}
