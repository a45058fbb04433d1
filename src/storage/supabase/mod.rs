//! Supabase Storage over its REST API, by hand with reqwest (rustls). Follows the server's real
//! behaviour: errors often arrive as HTTP 400 with the real code in the JSON body ([`http`]);
//! uploads above 6 MB go through the resumable (TUS) endpoint in 6 MiB chunks ([`tus`]); only JWT
//! keys go in `Authorization`. This file: opening, the `Storage` operations and listing.

mod http;
mod tus;

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::{Method, Response};
use serde::Deserialize;

use http::content_type;

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
