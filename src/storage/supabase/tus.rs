//! The resumable (TUS) upload: create, then PATCH 6 MiB chunks; a failed chunk is resumed from the
//! offset the server acknowledged.

use std::io::SeekFrom;
use std::path::Path;

use backon::BackoffBuilder;
use base64::Engine as _;
use reqwest::{Method, RequestBuilder, StatusCode};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::http::{content_type, header_u64};
use super::{Supabase, TUS_CHUNK};
use crate::retry::backoff;
use crate::storage::StorageError;

/// The TUS termination request of an upload, sent if dropped while still armed.
struct Terminate(Option<RequestBuilder>);

impl Drop for Terminate {
    fn drop(&mut self) {
        if let Some(request) = self.0.take() {
            crate::stop::defer(async move { request.send().await.is_ok_and(|r| r.status().is_success()) });
        }
    }
}

impl Supabase {
    /// The resumable protocol: create, then PATCH 6 MiB chunks; a failed chunk is resumed from the
    /// offset the server acknowledged.
    pub(super) async fn upload_tus(&self, full: &str, key: &str, path: &Path, size: u64) -> Result<(), StorageError> {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let metadata = format!(
            "bucketName {},objectName {},contentType {}",
            b64(&self.bucket),
            b64(full),
            b64(content_type(key))
        );
        let resp = self
            .send(&format!("starting the upload of {key}"), || {
                self.request(Method::POST, "/upload/resumable")
                    .header("Tus-Resumable", "1.0.0")
                    .header("Upload-Length", size.to_string())
                    .header("Upload-Metadata", metadata.clone())
                    .header("x-upsert", "false")
            })
            .await?;
        if resp.status() != StatusCode::CREATED {
            return Err(self.fail(key, resp).await);
        }
        let location = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| StorageError::Other("Supabase started a resumable upload without a Location".into()))?
            .to_string();
        let upload_url = if location.starts_with("http") {
            location
        } else {
            let origin = url::Url::parse(&self.base)
                .map(|u| u.origin().ascii_serialization())
                .unwrap_or_default();
            format!("{origin}{location}")
        };
        // Dropped unfinished (an error, or a stop dropping the backup midway), the upload is
        // terminated, so the server keeps no partial upload.
        let mut unfinished = Terminate(Some(
            self.authed(self.http.delete(&upload_url))
                .header("Tus-Resumable", "1.0.0"),
        ));
        let mut file = tokio::fs::File::open(path)
            .await
            .map_err(|e| StorageError::io(format!("reading {}", path.display()), e))?;
        let mut offset = 0u64;
        let mut delays = backoff(self.retries).build();
        let mut buf = vec![0u8; TUS_CHUNK];
        while offset < size {
            file.seek(SeekFrom::Start(offset))
                .await
                .map_err(|e| StorageError::io("seeking the spool file", e))?;
            let want = ((size - offset) as usize).min(TUS_CHUNK);
            file.read_exact(&mut buf[..want])
                .await
                .map_err(|e| StorageError::io("reading the spool file", e))?;
            let chunk = buf[..want].to_vec();
            let result = self
                .patch(&upload_url)
                .header("Upload-Offset", offset.to_string())
                .header("Content-Type", "application/offset+octet-stream")
                .body(chunk)
                .send()
                .await;
            match result {
                Ok(r) if r.status() == StatusCode::NO_CONTENT || r.status() == StatusCode::OK => {
                    offset = header_u64(&r, "upload-offset").unwrap_or(offset + want as u64);
                    delays = backoff(self.retries).build();
                }
                Ok(r)
                    if !(r.status().is_server_error()
                        || r.status() == StatusCode::TOO_MANY_REQUESTS
                        || r.status() == StatusCode::CONFLICT) =>
                {
                    return Err(self.fail(key, r).await);
                }
                other => {
                    let Some(delay) = delays.next() else {
                        return Err(match other {
                            Ok(r) => self.fail(key, r).await,
                            Err(e) => StorageError::Other(format!("uploading {key}: {}", self.scrub(&e.to_string()))),
                        });
                    };
                    tracing::warn!(
                        "uploading {key}: a chunk at offset {offset} failed; resuming in {:.1}s",
                        delay.as_secs_f64()
                    );
                    tokio::time::sleep(delay).await;
                    // Ask the server how far it got, and go on from there.
                    let head = self
                        .authed(self.http.head(&upload_url))
                        .header("Tus-Resumable", "1.0.0");
                    if let Ok(r) = head.send().await {
                        if let Some(o) = header_u64(&r, "upload-offset") {
                            offset = o;
                        }
                    }
                }
            }
        }
        unfinished.0 = None;
        Ok(())
    }

    fn patch(&self, url: &str) -> RequestBuilder {
        self.authed(self.http.patch(url)).header("Tus-Resumable", "1.0.0")
    }
}
