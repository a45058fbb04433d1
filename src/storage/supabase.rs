//! Supabase Storage over its REST API, by hand with reqwest (rustls). Follows the server's real
//! behaviour: errors often arrive as HTTP 400 with the real code in the JSON body; uploads above
//! 6 MB go through the resumable (TUS) endpoint in 6 MiB chunks; only JWT keys go in
//! `Authorization`.

use std::io::SeekFrom;
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::{check_key, stream_to_file, ObjectInfo, Storage, StorageError, StorageOptions};
use crate::error::UsageError;
use crate::secret::{redact, Secret};

/// Uploads larger than this use TUS.
pub const STANDARD_UPLOAD_LIMIT: u64 = 6 * 1000 * 1000;
pub const TUS_CHUNK: usize = 6 * 1024 * 1024;
const PAGE: usize = 100;

pub struct Supabase {
    http: reqwest::Client,
    base: String,
    key: Secret<String>,
    bucket: String,
    prefix: String,
    retries: u32,
}

impl Supabase {
    /// `supabase://bucket/prefix`, with `SUPABASE_URL` and `SUPABASE_KEY` (or
    /// `SUPABASE_SERVICE_ROLE_KEY`) from the environment.
    pub fn open(url: &str, opts: &StorageOptions) -> Result<Supabase, UsageError> {
        let rest = url.strip_prefix("supabase://").unwrap_or(url);
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(UsageError::new(format!(
                "{url} names no bucket: use supabase://bucket/prefix"
            )));
        }
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let project = env("SUPABASE_URL")
            .ok_or_else(|| UsageError::new("supabase:// storage needs SUPABASE_URL (https://<project>.supabase.co)"))?;
        let key = env("SUPABASE_KEY")
            .or_else(|| env("SUPABASE_SERVICE_ROLE_KEY"))
            .ok_or_else(|| {
                UsageError::new(
                    "supabase:// storage needs SUPABASE_KEY or SUPABASE_SERVICE_ROLE_KEY (the service_role key)",
                )
            })?;
        if url::Url::parse(&project).is_err() {
            return Err(UsageError::new(format!(
                "SUPABASE_URL {:?} is not a URL: expected https://<project>.supabase.co",
                redact(&project)
            )));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(15))
            .timeout(Duration::from_secs(600))
            .build()
            .map_err(|e| UsageError::new(format!("setting up HTTPS: {e}")))?;
        Ok(Supabase {
            http,
            base: format!("{}/storage/v1", project.trim_end_matches('/')),
            key: Secret::new(key),
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            retries: opts.retries,
        })
    }

    fn full(&self, key: &str) -> Result<String, StorageError> {
        check_key(key)?;
        Ok(if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        })
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.authed(self.http.request(method, format!("{}{path}", self.base)))
    }

    /// `apikey` always; `Authorization: Bearer` only for JWT keys (new `sb_secret_…` keys are not
    /// JWTs and go only in `apikey`).
    fn authed(&self, rb: RequestBuilder) -> RequestBuilder {
        let key = self.key.expose();
        let rb = rb.header("apikey", key);
        if key.starts_with("eyJ") {
            rb.bearer_auth(key)
        } else {
            rb
        }
    }

    /// Sends with retries on 429, 5xx and connection errors (capped exponential backoff with jitter).
    /// `make` builds a fresh request each attempt.
    async fn send(&self, what: &str, make: impl Fn() -> RequestBuilder) -> Result<Response, StorageError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = make().send().await;
            let retry = match &result {
                Ok(r) => r.status() == StatusCode::TOO_MANY_REQUESTS || r.status().is_server_error(),
                Err(e) => e.is_connect() || e.is_timeout() || e.is_request(),
            };
            if retry && attempt <= self.retries {
                let delay = jittered(attempt);
                match &result {
                    Ok(r) => tracing::warn!(
                        "{what}: Supabase answered {}; retrying in {:.1}s",
                        r.status(),
                        delay.as_secs_f64()
                    ),
                    Err(e) => tracing::warn!(
                        "{what}: {}; retrying in {:.1}s",
                        self.scrub(&e.to_string()),
                        delay.as_secs_f64()
                    ),
                }
                tokio::time::sleep(delay).await;
                continue;
            }
            return match result {
                Ok(r) => Ok(r),
                Err(e) => Err(StorageError::Other(format!(
                    "{what}: cannot reach {} ({}): check SUPABASE_URL",
                    redact(&self.base),
                    self.scrub(&e.to_string())
                ))),
            };
        }
    }

    fn scrub(&self, s: &str) -> String {
        crate::secret::scrub(s, &[self.key.expose()])
    }

    /// Turns a non-success answer into an error a person can act on. The real status is often in
    /// the JSON body of an HTTP 400.
    async fn fail(&self, key: &str, resp: Response) -> StorageError {
        let http = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        let parsed: Option<ErrorBody> = serde_json::from_str(&body).ok();
        let code = parsed
            .as_ref()
            .and_then(|b| b.status_code.as_ref())
            .and_then(|c| c.as_u16())
            .unwrap_or(http);
        let message = parsed
            .as_ref()
            .map(|b| {
                format!(
                    "{} {}",
                    b.error.clone().unwrap_or_default(),
                    b.message.clone().unwrap_or_default()
                )
            })
            .unwrap_or(body);
        let message = self.scrub(message.trim());
        match code {
            401 | 403 => StorageError::Other(format!(
                "Supabase rejected the key ({message}): use the service_role key, not the anon key (SUPABASE_KEY or SUPABASE_SERVICE_ROLE_KEY)"
            )),
            404 if message.to_lowercase().contains("bucket") => StorageError::Other(format!(
                "bucket {:?} does not exist in this Supabase project: create it (Dashboard → Storage → New bucket, private) or set SUPABASE_BUCKET_NAME / --storage supabase://<bucket>",
                self.bucket
            )),
            404 => StorageError::NotFound(key.to_string()),
            409 => StorageError::AlreadyExists(key.to_string()),
            413 => StorageError::Other(format!(
                "{key} is larger than the Supabase project's upload size limit ({message}): raise the limit (Storage settings; 50 MB on the free plan) or use --max-size to refuse such backups"
            )),
            _ => StorageError::Other(format!("Supabase storage error {code} for {key}: {message}")),
        }
    }

    /// A standard upload (at most the project's limit; we use it up to 6 MB), never overwriting.
    async fn post_object(&self, key: &str, bytes: Vec<u8>) -> Result<(), StorageError> {
        let url = format!("/object/{}/{}", self.bucket, self.full(key)?);
        let resp = self
            .send(&format!("uploading {key}"), || {
                self.request(Method::POST, &url)
                    .header("Content-Type", content_type(key))
                    .header("x-upsert", "false")
                    .body(bytes.clone())
            })
            .await?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(self.fail(key, resp).await)
        }
    }

    /// The resumable protocol: create, then PATCH 6 MiB chunks; a failed chunk is resumed from the
    /// offset the server acknowledged.
    async fn upload_tus(&self, full: &str, key: &str, path: &Path, size: u64) -> Result<(), StorageError> {
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
        let mut file = tokio::fs::File::open(path)
            .await
            .map_err(|e| StorageError::io(format!("reading {}", path.display()), e))?;
        let mut offset = 0u64;
        let mut failures = 0u32;
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
                    failures = 0;
                }
                Ok(r)
                    if !(r.status().is_server_error()
                        || r.status() == StatusCode::TOO_MANY_REQUESTS
                        || r.status() == StatusCode::CONFLICT) =>
                {
                    return Err(self.fail(key, r).await);
                }
                other => {
                    failures += 1;
                    if failures > self.retries {
                        return Err(match other {
                            Ok(r) => self.fail(key, r).await,
                            Err(e) => StorageError::Other(format!("uploading {key}: {}", self.scrub(&e.to_string()))),
                        });
                    }
                    let delay = jittered(failures);
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
        Ok(())
    }

    fn patch(&self, url: &str) -> RequestBuilder {
        self.authed(self.http.patch(url)).header("Tus-Resumable", "1.0.0")
    }

    /// Starts a download; the body is read by the caller.
    async fn download(&self, key: &str) -> Result<Response, StorageError> {
        let url = format!("/object/authenticated/{}/{}", self.bucket, self.full(key)?);
        let resp = self
            .send(&format!("downloading {key}"), || self.request(Method::GET, &url))
            .await?;
        if resp.status().is_success() {
            Ok(resp)
        } else {
            Err(self.fail(key, resp).await)
        }
    }

    /// One folder level, every page.
    async fn list_folder(&self, folder: &str) -> Result<Vec<Entry>, StorageError> {
        let url = format!("/object/list/{}", self.bucket);
        let mut out = Vec::new();
        let mut offset = 0;
        loop {
            let body = serde_json::json!({
                "prefix": folder, "limit": PAGE, "offset": offset,
                "sortBy": {"column": "name", "order": "asc"}
            });
            let resp = self
                .send("listing the bucket", || self.request(Method::POST, &url).json(&body))
                .await?;
            if !resp.status().is_success() {
                return Err(self.fail(folder, resp).await);
            }
            let page: Vec<Entry> = resp
                .json()
                .await
                .map_err(|e| StorageError::Other(format!("reading a bucket listing: {e}")))?;
            let n = page.len();
            out.extend(page);
            if n < PAGE {
                return Ok(out);
            }
            offset += n;
        }
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(rename = "statusCode")]
    status_code: Option<serde_json::Value>,
    error: Option<String>,
    message: Option<String>,
}

trait AsU16 {
    fn as_u16(&self) -> Option<u16>;
}

impl AsU16 for serde_json::Value {
    fn as_u16(&self) -> Option<u16> {
        match self {
            serde_json::Value::String(s) => s.parse().ok(),
            serde_json::Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
            _ => None,
        }
    }
}

#[derive(Deserialize)]
struct Entry {
    name: String,
    /// `null` for folders.
    id: Option<String>,
    updated_at: Option<chrono::DateTime<chrono::Utc>>,
    metadata: Option<EntryMeta>,
}

#[derive(Deserialize)]
struct EntryMeta {
    size: Option<u64>,
}

fn header_u64(r: &Response, name: &str) -> Option<u64> {
    r.headers().get(name)?.to_str().ok()?.parse().ok()
}

fn content_type(key: &str) -> &'static str {
    if key.ends_with(".json") {
        "application/json"
    } else if key.ends_with(".sql") {
        "application/sql"
    } else {
        "application/octet-stream"
    }
}

/// 0.5 s, 1 s, 2 s … capped at 10 s, each ±25 %.
fn jittered(attempt: u32) -> Duration {
    let base = crate::pg::target::backoff(attempt).as_millis() as f64;
    let factor = 0.75 + rand::random::<f64>() * 0.5;
    Duration::from_millis((base * factor) as u64)
}

#[async_trait]
impl Storage for Supabase {
    fn describe(&self) -> String {
        format!("supabase://{}/{}", self.bucket, self.prefix)
    }

    async fn put_file(&self, key: &str, path: &Path) -> Result<(), StorageError> {
        let full = self.full(key)?;
        let size = tokio::fs::metadata(path)
            .await
            .map_err(|e| StorageError::io(format!("reading {}", path.display()), e))?
            .len();
        if size > STANDARD_UPLOAD_LIMIT {
            // TUS cannot refuse an existing name up front everywhere; ask first.
            if self.size(key).await?.is_some() {
                return Err(StorageError::AlreadyExists(key.to_string()));
            }
            self.upload_tus(&full, key, path, size).await
        } else {
            // At most 6 MB, so reading it whole is bounded.
            let bytes = tokio::fs::read(path)
                .await
                .map_err(|e| StorageError::io(format!("reading {}", path.display()), e))?;
            self.post_object(key, bytes).await
        }
    }

    async fn put_bytes(&self, key: &str, bytes: Vec<u8>) -> Result<(), StorageError> {
        self.post_object(key, bytes).await
    }

    async fn get_to_file(&self, key: &str, path: &Path) -> Result<u64, StorageError> {
        let resp = self.download(key).await?;
        stream_to_file(resp.bytes_stream(), path, |e| {
            StorageError::Other(format!("downloading {key}: {}", self.scrub(&e.to_string())))
        })
        .await
    }

    async fn get_bytes(&self, key: &str) -> Result<Vec<u8>, StorageError> {
        let resp = self.download(key).await?;
        Ok(resp
            .bytes()
            .await
            .map_err(|e| StorageError::Other(format!("downloading {key}: {e}")))?
            .to_vec())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        let mut out = Vec::new();
        let root = self.prefix.clone();
        // Walk folders breadth-first, only into those that can hold keys with this prefix.
        let mut folders = vec![String::new()];
        while let Some(rel) = folders.pop() {
            let folder = match (root.is_empty(), rel.is_empty()) {
                (true, _) => rel.clone(),
                (false, true) => root.clone(),
                (false, false) => format!("{root}/{rel}"),
            };
            for e in self.list_folder(&folder).await? {
                let key = if rel.is_empty() {
                    e.name.clone()
                } else {
                    format!("{rel}/{}", e.name)
                };
                if e.id.is_none() {
                    let dir = format!("{key}/");
                    if dir.starts_with(prefix) || prefix.starts_with(&dir) {
                        folders.push(key);
                    }
                } else if key.starts_with(prefix) {
                    out.push(ObjectInfo {
                        size: e.metadata.and_then(|m| m.size).unwrap_or(0),
                        modified: e.updated_at,
                        key,
                    });
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let full = self.full(key)?;
        let url = format!("/object/{}", self.bucket);
        let body = serde_json::json!({ "prefixes": [full] });
        let resp = self
            .send(&format!("deleting {key}"), || {
                self.request(Method::DELETE, &url).json(&body)
            })
            .await?;
        if !resp.status().is_success() {
            return Err(self.fail(key, resp).await);
        }
        let deleted: Vec<serde_json::Value> = resp.json().await.unwrap_or_default();
        if deleted.is_empty() {
            Err(StorageError::NotFound(key.to_string()))
        } else {
            Ok(())
        }
    }

    async fn size(&self, key: &str) -> Result<Option<u64>, StorageError> {
        let full = self.full(key)?;
        let (folder, name) = full.rsplit_once('/').unwrap_or(("", full.as_str()));
        Ok(self
            .list_folder(folder)
            .await?
            .into_iter()
            .find(|e| e.id.is_some() && e.name == name)
            .map(|e| e.metadata.and_then(|m| m.size).unwrap_or(0)))
    }
}
