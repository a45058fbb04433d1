//! The resumable (TUS) upload: create, then PATCH 6 MiB chunks; a failed chunk is resumed from the
//! offset the server acknowledged. A spool still being written is uploaded as it grows: the upload
//! is created with its length deferred (`Upload-Defer-Length: 1`, which the server's TUS stores
//! take), each chunk is sent once the spool holds it and more, and the last one, sent once the
//! spool is whole, declares the length (`Upload-Length`), which is what completes the object: a
//! spool that is abandoned never becomes one. A server without deferred lengths (501) gets the
//! upload once the spool is whole. The upload URL the server hands back must be on SUPABASE_URL's
//! own origin (the chunks and the key go there). A 409 is told apart: "already exists" (someone
//! stored the name: give up on it at once) from an offset conflict (ask where the server is and go
//! on). An upload that is given up is cancelled (`DELETE`), so its bytes do not linger.

use std::io::SeekFrom;

use backon::BackoffBuilder;
use base64::Engine as _;
use reqwest::{Method, RequestBuilder, StatusCode};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::http::{content_type, header_u64, read_failure, Failure};
use super::{Supabase, TUS_CHUNK};
use crate::retry::backoff;
use crate::secret::Secret;
use crate::storage::{GrowingFile, StorageError, Timeouts};

/// Cancels the upload if the future driving it is dropped (a stop by a signal): through
/// `stop::defer`, so the process waits for the cancel before it exits.
struct CancelOnDrop {
    armed: Option<(reqwest::Client, String, Secret<String>, Timeouts)>,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some((http, url, key, timeouts)) = self.armed.take() {
            crate::stop::defer(async move {
                timeouts
                    .send(&http, cancel_request(&http, &url, &key))
                    .await
                    .is_ok_and(|r| r.status().is_success())
            });
        }
    }
}

/// The request that cancels (TUS `DELETE`) an upload. `x-upsert: true`, because the server checks
/// the cancel as if it were a write of the object: once someone else has stored the name, a cancel
/// without it is answered 409 and the upload stays (the server never expires it). With it the
/// answer is 204 and the other object is left alone (supabase/storage `onIncomingRequest` →
/// `canUpload` with `isUpsert`).
fn cancel_request(http: &reqwest::Client, url: &str, key: &Secret<String>) -> RequestBuilder {
    let rb = http
        .delete(url)
        .header("Tus-Resumable", "1.0.0")
        .header("x-upsert", "true")
        .header("apikey", key.expose());
    if key.expose().starts_with("eyJ") {
        rb.bearer_auth(key.expose())
    } else {
        rb
    }
}

fn already_exists(f: &Failure) -> bool {
    f.status() == 409
        && (f.body.to_lowercase().contains("already exists")
            || f.api().and_then(|a| a.code).as_deref() == Some("KeyAlreadyExists"))
}

/// What creating an upload gave.
enum Created {
    Url(String),
    /// The server cannot defer the length (TUS 501): create it again once the length is known.
    NoDeferredLength,
}

impl Supabase {
    /// The resumable protocol: create, then PATCH 6 MiB chunks as the file holds them; a failed
    /// chunk is resumed from the offset the server acknowledged.
    pub(super) async fn upload_tus(&self, full: &str, key: &str, file: &mut GrowingFile) -> Result<(), StorageError> {
        let known = match file.is_complete() {
            true => Some(file.complete().await?),
            false => None,
        };
        let (upload_url, mut guard) = match self.tus_create_armed(full, key, known).await? {
            Some(created) => created,
            None => {
                tracing::info!("{key}: the server cannot defer an upload's length; uploading once the dump is done");
                let size = file.complete().await?;
                self.tus_create_armed(full, key, Some(size)).await?.ok_or_else(|| {
                    StorageError::Other(format!("starting the upload of {key}: the length was refused"))
                })?
            }
        };
        let result = self.tus_send(&upload_url, key, file).await;
        guard.armed = None;
        if result.is_err() {
            self.tus_cancel(&upload_url, key).await;
        }
        result
    }

    /// Creates the upload (its length deferred when `None`) and arms its cancel-on-drop guard;
    /// `None` when the server cannot defer the length. From the creating request until the guard
    /// holds the upload's URL a stop waits: dropped in between, the upload would exist on the
    /// server with nobody to cancel it.
    async fn tus_create_armed(
        &self,
        full: &str,
        key: &str,
        size: Option<u64>,
    ) -> Result<Option<(String, CancelOnDrop)>, StorageError> {
        let _creating = crate::stop::shield().ok_or_else(|| crate::storage::stopped(key))?;
        Ok(match self.tus_create(full, key, size).await? {
            Created::Url(url) => {
                let guard = CancelOnDrop {
                    armed: Some((
                        self.http.clone(),
                        url.clone(),
                        Secret::new(self.key.expose().clone()),
                        self.timeouts,
                    )),
                };
                Some((url, guard))
            }
            Created::NoDeferredLength => None,
        })
    }

    /// Creates the upload (its length deferred when `None`); its URL, checked to be on our own
    /// origin.
    async fn tus_create(&self, full: &str, key: &str, size: Option<u64>) -> Result<Created, StorageError> {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let metadata = format!(
            "bucketName {},objectName {},contentType {}",
            b64(&self.bucket),
            b64(full),
            b64(content_type(key))
        );
        let answer = self
            .exchange(&format!("starting the upload of {key}"), || {
                let rb = self
                    .request(Method::POST, "/upload/resumable")
                    .header("Tus-Resumable", "1.0.0")
                    .header("Upload-Metadata", metadata.clone())
                    .header("x-upsert", "false");
                match size {
                    Some(size) => rb.header("Upload-Length", size.to_string()),
                    None => rb.header("Upload-Defer-Length", "1"),
                }
            })
            .await?;
        let resp = match answer {
            Ok(r) if r.status() == StatusCode::CREATED => r,
            Ok(r) => {
                return Err(StorageError::Other(format!(
                    "starting the upload of {key}: Supabase answered {} instead of 201 Created",
                    r.status()
                )))
            }
            Err(f) if already_exists(&f) || f.status() == 409 => {
                return Err(StorageError::AlreadyExists(key.to_string()))
            }
            Err(f) if size.is_none() && f.http == 501 => return Ok(Created::NoDeferredLength),
            Err(f) if f.limit(true).is_some() => return Err(self.refused(key, &f, size).await),
            Err(f) => return Err(self.tus_fail(key, &f)),
        };
        let location = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| StorageError::Other("Supabase started a resumable upload without a Location".into()))?
            .to_string();
        let base = url::Url::parse(&self.base).map_err(|e| StorageError::Other(e.to_string()))?;
        let url = base
            .join(&location)
            .map_err(|e| StorageError::Other(format!("the resumable upload's Location is not a URL ({e})")))?;
        let origin = url.origin().ascii_serialization();
        if origin != self.origin {
            // Cancelled where it was made: on our own origin, at the path given.
            let ours = format!("{}{}", self.origin, url.path());
            self.tus_cancel(&ours, key).await;
            return Err(StorageError::Other(format!(
                "Supabase gave the resumable upload of {key} a URL on another origin ({origin}, not {}): the backup and the key are not sent there. Check SUPABASE_URL and any proxy in front of Supabase",
                self.origin
            )));
        }
        Ok(Created::Url(url.to_string()))
    }

    /// Sends the file's chunks as it grows. While the upload's length is deferred a chunk goes only
    /// when the file holds more than it, so that the last chunk, which declares the length, is
    /// never empty.
    async fn tus_send(&self, upload_url: &str, key: &str, file: &mut GrowingFile) -> Result<(), StorageError> {
        let path = file.path().to_path_buf();
        let mut input = tokio::fs::File::open(&path)
            .await
            .map_err(|e| StorageError::io(format!("reading {}", path.display()), e))?;
        let mut declared = file.is_complete();
        let mut offset = 0u64;
        let mut delays = backoff(self.retries).build();
        let mut buf = vec![0u8; TUS_CHUNK];
        loop {
            let seen = file.wait_for(offset + TUS_CHUNK as u64 + 1).await?;
            if seen.complete && offset >= seen.len && declared {
                return Ok(());
            }
            let want = ((seen.len.saturating_sub(offset)) as usize).min(TUS_CHUNK);
            let last = seen.complete && offset + want as u64 == seen.len;
            input
                .seek(SeekFrom::Start(offset))
                .await
                .map_err(|e| StorageError::io("seeking the spool file", e))?;
            input
                .read_exact(&mut buf[..want])
                .await
                .map_err(|e| StorageError::io("reading the spool file", e))?;
            let mut rb = self
                .tus_request(Method::PATCH, upload_url)
                .header("Upload-Offset", offset.to_string())
                .header("Content-Type", "application/offset+octet-stream");
            if last && !declared {
                rb = rb.header("Upload-Length", seen.len.to_string());
            }
            let started = std::time::Instant::now();
            let sent = self.timeouts.send(&self.http, rb.body(buf[..want].to_vec())).await;
            let problem = match sent {
                Ok(r) if r.status() == StatusCode::NO_CONTENT || r.status() == StatusCode::OK => {
                    tracing::debug!(
                        "{key}: {want} bytes at offset {offset} sent in {:.2}s (the spool held {}{})",
                        started.elapsed().as_secs_f64(),
                        seen.len,
                        if seen.complete { ", whole" } else { "" }
                    );
                    offset = header_u64(&r, "upload-offset").unwrap_or(offset + want as u64);
                    declared |= last;
                    delays = backoff(self.retries).build();
                    continue;
                }
                Ok(r) => {
                    let f = read_failure(r, &self.timeouts).await;
                    if already_exists(&f) {
                        tracing::info!("{key}: the name was taken while uploading; giving this upload up");
                        return Err(StorageError::AlreadyExists(key.to_string()));
                    }
                    // An offset conflict: the server has more (or less) than we think.
                    if f.limit(true).is_some() {
                        // What was refused: the length this chunk declares, or the bytes so far.
                        return Err(self.refused(key, &f, Some(offset + want as u64)).await);
                    }
                    if !(f.transient() || f.status() == 409) {
                        return Err(self.tus_fail(key, &f));
                    }
                    format!("Supabase answered {}", f.label())
                }
                Err(e) => self.scrub(&e.describe(&self.timeouts)),
            };
            let Some(delay) = delays.next() else {
                return Err(StorageError::Other(format!(
                    "uploading {key}: the chunk at offset {offset} kept failing ({problem}); the upload was given up"
                )));
            };
            tracing::warn!(
                "uploading {key}: a chunk at offset {offset} failed ({problem}); resuming in {:.1}s",
                delay.as_secs_f64()
            );
            tokio::time::sleep(delay).await;
            if let Some((at, length_known)) = self.tus_offset(upload_url, key).await? {
                offset = at;
                // A failed last chunk may have declared the length before its bytes failed.
                declared |= length_known;
            }
        }
    }

    /// Where the server is with the upload, and whether it knows the upload's length; `None` when
    /// it could not be asked this time.
    async fn tus_offset(&self, upload_url: &str, key: &str) -> Result<Option<(u64, bool)>, StorageError> {
        match self
            .timeouts
            .send(&self.http, self.tus_request(Method::HEAD, upload_url))
            .await
        {
            Ok(r) if r.status().is_success() => {
                Ok(header_u64(&r, "upload-offset").map(|at| (at, r.headers().contains_key("upload-length"))))
            }
            Ok(r) if r.status() == StatusCode::NOT_FOUND || r.status() == StatusCode::GONE => Err(StorageError::Other(
                format!("uploading {key}: the server no longer has the resumable upload (expired or removed)"),
            )),
            _ => Ok(None),
        }
    }

    /// Cancels an upload that is given up, so its bytes do not stay on the server: nothing there
    /// ever removes an unfinished upload, so a cancel that meets a connection error or a 429/5xx
    /// is tried again (the shared backoff).
    async fn tus_cancel(&self, upload_url: &str, key: &str) {
        let what = format!("{key}: cancelling the abandoned upload");
        match self.exchange(&what, || cancel_request(&self.http, upload_url, &self.key)).await {
            Ok(Ok(_)) => {}
            Ok(Err(f)) if f.http == 404 => {}
            Ok(Err(f)) => tracing::warn!(
                "{what} answered {}; it stays on the server (Supabase never expires it): cancel it with a DELETE of {upload_url} (header Tus-Resumable: 1.0.0, x-upsert: true)",
                f.label()
            ),
            Err(e) => tracing::warn!(
                "{what} failed ({e}); it stays on the server (Supabase never expires it): cancel it with a DELETE of {upload_url} (header Tus-Resumable: 1.0.0, x-upsert: true)"
            ),
        }
    }

    fn tus_request(&self, method: Method, url: &str) -> RequestBuilder {
        self.authed(self.http.request(method, url))
            .header("Tus-Resumable", "1.0.0")
    }

    /// TUS errors are mostly plain text with the real status; the REST ones are JSON.
    fn tus_fail(&self, key: &str, f: &Failure) -> StorageError {
        if f.api().is_some() {
            return self.fail(key, f);
        }
        let text = self.scrub(&super::http::one_line(&f.body));
        match f.http {
            413 => self.too_large(key, &text, None, None),
            415 => self.type_refused(key, &text, None),
            401 | 403 => self.key_rejected(&text),
            404 if text == "Bucket not found" => self.no_such_bucket(),
            status => StorageError::Other(format!(
                "Supabase storage error {status} for {key} (resumable upload): {text}"
            )),
        }
    }
}
