//! Multipart uploads, which object_store's `ObjectStore` API does not let us abort after a failed
//! part: the parts go through `MultipartStore` so the upload id stays in hand, and the upload is
//! aborted when anything fails (or, best effort, when the future is dropped). Uploads a crash left
//! behind are listed with a signed `ListMultipartUploads` request, which object_store does not make.

use std::io::SeekFrom;

use backon::BackoffBuilder;
use futures::stream::FuturesOrdered;
use futures::StreamExt;
use object_store::aws::{AmazonS3, AwsAuthorizer};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{MultipartId, PutPayload};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::{PART, S3};
use crate::retry::backoff;
use crate::storage::{GrowingFile, StorageError};

impl S3 {
    /// Uploads the file's parts as the file grows, at most two in flight: a part is sent once the
    /// file holds all of it (or the file is whole and this is its last part).
    pub(super) async fn put_parts(
        &self,
        dest: &Path,
        id: &MultipartId,
        file: &mut GrowingFile,
    ) -> Result<Vec<PartId>, StorageError> {
        let key = dest.as_ref();
        let path = file.path().to_path_buf();
        let read_err = |e| StorageError::io(format!("reading {}", path.display()), e);
        let mut input = tokio::fs::File::open(&path).await.map_err(read_err)?;
        let mut in_flight = FuturesOrdered::new();
        let mut parts = Vec::new();
        let mut offset = 0u64;
        for idx in 0.. {
            let seen = file.wait_for(offset + PART as u64).await?;
            let n = (seen.len - offset).min(PART as u64) as usize;
            if n == 0 && (idx > 0 || seen.complete) {
                break;
            }
            let mut buf = vec![0u8; n];
            input.seek(SeekFrom::Start(offset)).await.map_err(read_err)?;
            input.read_exact(&mut buf).await.map_err(read_err)?;
            in_flight.push_back(self.store.put_part(dest, id, idx, PutPayload::from(buf)));
            offset += n as u64;
            if in_flight.len() >= 2 {
                if let Some(done) = in_flight.next().await {
                    parts.push(done.map_err(|e| self.err(key, e))?);
                }
            }
            if seen.complete && offset == seen.len {
                break;
            }
        }
        while let Some(done) = in_flight.next().await {
            parts.push(done.map_err(|e| self.err(key, e))?);
        }
        Ok(parts)
    }

    /// One page of `ListMultipartUploads`, signed with the store's own credentials.
    pub(super) async fn list_uploads_page(
        &self,
        prefix: &str,
        markers: Option<(&str, &str)>,
    ) -> Result<UploadsPage, StorageError> {
        let mut url = url::Url::parse(&format!("{}/", self.bucket_url.trim_end_matches('/')))
            .map_err(|e| StorageError::Other(format!("{}: {e}", self.bucket_url)))?;
        url.set_query(Some("uploads"));
        url.query_pairs_mut().append_pair("prefix", prefix);
        if let Some((key, upload)) = markers {
            url.query_pairs_mut()
                .append_pair("key-marker", key)
                .append_pair("upload-id-marker", upload);
        }
        let credential =
            self.store.credentials().get_credential().await.map_err(|e| {
                StorageError::Other(format!("{}: {}", crate::secret::redact(&self.url), self.explain(&e)))
            })?;
        let mut signed = http::Request::builder()
            .method("GET")
            .uri(url.as_str())
            .body(object_store::client::HttpRequestBody::empty())
            .map_err(|e| StorageError::Other(e.to_string()))?;
        AwsAuthorizer::new(&credential, "s3", &self.region).authorize(&mut signed, None);
        let what = format!("listing unfinished uploads in {}", crate::secret::redact(&self.url));
        // Retried like every transient failure: 429, 5xx and connection errors.
        let mut delays = backoff(self.retries).build();
        loop {
            let mut request = self.http.get(url.as_str());
            for (name, value) in signed.headers() {
                if name != "host" {
                    request = request.header(name.as_str(), value.as_bytes());
                }
            }
            let problem = match self.timeouts.send(&self.http, request).await {
                Ok(resp) => {
                    let status = resp.status();
                    let body = match self.timeouts.body(resp).await {
                        Ok(body) => String::from_utf8_lossy(&body).into_owned(),
                        Err(e) => return Err(StorageError::Other(format!("{what}: {e}"))),
                    };
                    if status.is_success() {
                        return quick_xml::de::from_str(&body)
                            .map_err(|e| StorageError::Other(format!("{what}: unreadable answer ({e})")));
                    }
                    let problem = format!("HTTP {status}: {}", body.trim());
                    if !(status.as_u16() == 429 || status.is_server_error()) {
                        return Err(StorageError::Other(format!("{what}: {problem}")));
                    }
                    problem
                }
                Err(e) if e.transient() => e.describe(&self.timeouts),
                Err(e) => return Err(StorageError::Other(format!("{what}: {}", e.describe(&self.timeouts)))),
            };
            let Some(delay) = delays.next() else {
                return Err(StorageError::Other(format!("{what}: {problem}")));
            };
            tracing::warn!("{what}: {problem}; retrying in {:.1}s", delay.as_secs_f64());
            tokio::time::sleep(delay).await;
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct UploadsPage {
    pub is_truncated: Option<bool>,
    pub next_key_marker: Option<String>,
    pub next_upload_id_marker: Option<String>,
    #[serde(default, rename = "Upload")]
    pub uploads: Vec<UploadEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct UploadEntry {
    pub key: String,
    pub upload_id: String,
    pub initiated: Option<String>,
}

/// Aborts a multipart upload the future holding it did not finish (it was dropped: a stop by a
/// signal), through `stop::defer`, so the process waits for the abort before it exits. Only a
/// kill leaves parts behind, which is what `cleanup --orphans` is for.
pub(super) struct AbortOnDrop {
    pub store: Option<AmazonS3>,
    pub path: Path,
    pub id: MultipartId,
}

impl AbortOnDrop {
    pub fn disarm(&mut self) -> Option<AmazonS3> {
        self.store.take()
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(store) = self.store.take() {
            let (path, id) = (self.path.clone(), self.id.clone());
            crate::stop::defer(async move { store.abort_multipart(&path, &id).await.is_ok() });
        }
    }
}
