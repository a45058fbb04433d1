//! Supabase Storage over its REST API, by hand with reqwest (rustls, no redirects). Follows the
//! server's real behaviour: errors often arrive as HTTP 400 with the real code in the JSON body
//! ([`http`]); uploads above 6 MB go through the resumable (TUS) endpoint in 6 MiB chunks, sent
//! while the spool still grows ([`tus`]); only JWT keys go in `Authorization`. This file: opening (names the server cannot
//! store are refused here), the `Storage` operations and listing.
//!
//! The server answers a list or a delete with `200 []` when the bucket does not exist or when the
//! key is one row-level security blinds (the anon key), so an empty answer proves nothing: before
//! anything is called missing the bucket itself is fetched (`GET /bucket/<id>`, which answers
//! only a key that can see it), and an empty delete answer is followed by an existence check.

mod http;
mod list;
mod names;
mod tus;

use std::collections::{HashMap, HashSet};
use std::path::Path;

use async_trait::async_trait;
use reqwest::{Method, Response};
use serde::Deserialize;
use tokio::sync::OnceCell;

use http::content_type;
use names::{bucket_problem, encode_path, encode_segment, is_loopback, role_of, unstorable, Role};

use super::{
    check_key, stream_to_file, Access, GrowingFile, ObjectInfo, Storage, StorageError, StorageOptions, Timeouts,
};
use crate::error::UsageError;
use crate::secret::{redact, Secret};

/// Uploads larger than this use TUS.
pub const STANDARD_UPLOAD_LIMIT: u64 = 6 * 1000 * 1000;
pub const TUS_CHUNK: usize = 6 * 1024 * 1024;
/// list-v2 pages hold at most 1000 names; v1 pages as many as asked for.
const PAGE: usize = 1000;
/// The server deletes at most 1000 names a call.
const DELETE_BATCH: usize = 1000;

pub struct Supabase {
    http: reqwest::Client,
    /// `<SUPABASE_URL>/storage/v1`
    base: String,
    /// `scheme://host:port` of `base`: resumable uploads go nowhere else.
    origin: String,
    key: Secret<String>,
    role: Role,
    bucket: String,
    prefix: String,
    retries: u32,
    /// Connect and idle timeouts of every request.
    timeouts: Timeouts,
    /// Whether the bucket was seen with this key, checked once.
    seen: OnceCell<Result<(), String>>,
    /// Whether the server has list-v2 (v1.19 and later), found out by the first listing.
    has_list_v2: OnceCell<bool>,
    /// Every object name in the bucket, listed once, for [`Storage::elsewhere`]; empty on a server
    /// without list-v2.
    whole_bucket: OnceCell<Vec<String>>,
}

impl Supabase {
    /// `supabase://bucket/prefix`, with `SUPABASE_URL` and `SUPABASE_SERVICE_ROLE_KEY` (or
    /// `SUPABASE_KEY`) from the environment. Refuses, before any request, a bucket or prefix the
    /// server cannot store and a URL that is not https (loopback excepted).
    pub fn open(url: &str, opts: &StorageOptions) -> Result<Supabase, UsageError> {
        Self::open_with(url, opts, &|k| std::env::var(k).ok())
    }

    /// [`open`](Self::open) with the environment given.
    fn open_with(
        url: &str,
        opts: &StorageOptions,
        var: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Supabase, UsageError> {
        let rest = url.strip_prefix("supabase://").unwrap_or(url);
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(UsageError::new(format!(
                "{url} names no bucket: use supabase://bucket/prefix"
            )));
        }
        if let Some(problem) = bucket_problem(bucket) {
            return Err(UsageError::new(format!(
                "{url}: Supabase cannot use the bucket name {bucket:?}: {problem}"
            )));
        }
        let prefix = prefix.trim_end_matches('/');
        if !prefix.is_empty() {
            if let Some(problem) = unstorable(prefix) {
                return Err(UsageError::new(format!(
                    "{url}: Supabase cannot store objects under the prefix {prefix:?}: {problem}"
                )));
            }
        }
        let env = |k: &str| var(k).filter(|v| !v.trim().is_empty());
        let project = env("SUPABASE_URL")
            .ok_or_else(|| UsageError::new("supabase:// storage needs SUPABASE_URL (https://<project>.supabase.co)"))?;
        // The service_role key when both are set: SUPABASE_KEY often holds an app's anon key.
        let key = env("SUPABASE_SERVICE_ROLE_KEY")
            .or_else(|| env("SUPABASE_KEY"))
            .ok_or_else(|| {
                UsageError::new(
                    "supabase:// storage needs SUPABASE_SERVICE_ROLE_KEY or SUPABASE_KEY (the service_role key)",
                )
            })?;
        let parsed = url::Url::parse(project.trim()).map_err(|_| {
            UsageError::new(format!(
                "SUPABASE_URL {:?} is not a URL: expected https://<project>.supabase.co",
                redact(&project)
            ))
        })?;
        match parsed.scheme() {
            "https" => {}
            "http" if is_loopback(&parsed) => {}
            _ => {
                return Err(UsageError::new(format!(
                    "SUPABASE_URL {} must use https (plain http only to this machine: localhost, 127.0.0.1, ::1): the key and the backups would cross the network unencrypted",
                    redact(&project)
                )))
            }
        }
        if parsed.query().is_some() || parsed.fragment().is_some() || !parsed.username().is_empty() {
            return Err(UsageError::new(format!(
                "SUPABASE_URL {} cannot carry a query, fragment or user: give https://<project>.supabase.co",
                redact(&project)
            )));
        }
        let http = opts
            .timeouts
            .client()
            .build()
            .map_err(|e| UsageError::new(format!("setting up HTTPS: {e}")))?;
        Ok(Supabase {
            http,
            base: format!("{}/storage/v1", parsed.as_str().trim_end_matches('/')),
            origin: parsed.origin().ascii_serialization(),
            role: role_of(&key),
            key: Secret::new(key),
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            retries: opts.retries,
            timeouts: opts.timeouts,
            seen: OnceCell::new(),
            has_list_v2: OnceCell::new(),
            whole_bucket: OnceCell::new(),
        })
    }

    /// The object's name in the bucket (the prefix added), refused when the server could not
    /// store it.
    fn full(&self, key: &str) -> Result<String, StorageError> {
        check_key(key)?;
        if let Some(problem) = unstorable(key) {
            return Err(StorageError::Other(format!(
                "Supabase Storage cannot store {key:?}: {problem}"
            )));
        }
        Ok(if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        })
    }

    fn key_of(&self, name: &str) -> Option<String> {
        if self.prefix.is_empty() {
            Some(name.to_string())
        } else {
            name.strip_prefix(&format!("{}/", self.prefix)).map(String::from)
        }
    }

    /// `/object/<route><bucket>/<name>`, every segment percent-encoded.
    fn object_path(&self, route: &str, full: &str) -> String {
        format!("/object/{route}{}/{}", encode_segment(&self.bucket), encode_path(full))
    }

    /// The bucket exists and this key can see it: `GET /bucket/<id>` answers only such a key.
    async fn seen(&self) -> Result<(), StorageError> {
        let result = self
            .seen
            .get_or_init(|| async {
                let path = format!("/bucket/{}", encode_segment(&self.bucket));
                let outcome = self
                    .exchange("checking the bucket", || self.request(Method::GET, &path))
                    .await;
                let problem = match outcome {
                    Ok(Ok(r)) => match self.timeouts.json::<BucketInfo>(r).await {
                        Ok(b)
                            if b.id.as_deref() == Some(self.bucket.as_str())
                                || b.name.as_deref() == Some(self.bucket.as_str()) =>
                        {
                            return Ok(())
                        }
                        Ok(_) => "the answer to GET /bucket is not this bucket's".to_string(),
                        Err(e) => {
                            format!("the answer to GET /bucket is not the storage API's ({e}): check SUPABASE_URL")
                        }
                    },
                    Ok(Err(f)) => self.fail(&self.bucket, &f).to_string(),
                    Err(e) => e.to_string(),
                };
                Err(format!(
                    "cannot see {}: {problem}. Nothing was deleted or called missing",
                    self.describe()
                ))
            })
            .await;
        result.clone().map_err(StorageError::Other)
    }

    /// A standard upload (at most the project's limit; we use it up to 6 MB), never overwriting.
    /// When an attempt may have been carried out without its answer reaching us and the retry
    /// then meets "already exists", the stored object is compared with ours (size, then the bytes'
    /// SHA-256): our own object is success, not a taken name (which would leave it behind as an
    /// orphan while the backup went to `…-2`).
    async fn post_object(&self, key: &str, bytes: Vec<u8>) -> Result<(), StorageError> {
        let path = self.object_path("", &self.full(key)?);
        let what = format!("uploading {key}");
        let (answer, unsure) = self
            .attempts(&what, || {
                self.request(Method::POST, &path)
                    .header("Content-Type", content_type(key))
                    .header("x-upsert", "false")
                    .body(bytes.clone())
            })
            .await?;
        let failure = match answer {
            Ok(_) => return Ok(()),
            Err(f) => f,
        };
        if failure.limit(false).is_some() {
            return Err(self.refused(key, &failure, Some(bytes.len() as u64)).await);
        }
        match Err(self.fail(key, &failure)) {
            Err(StorageError::AlreadyExists(_)) if unsure => {
                if self.holds(key, &bytes).await? {
                    tracing::info!(
                        "{what}: an earlier attempt had stored it (its answer was lost); same size and checksum"
                    );
                    Ok(())
                } else {
                    Err(StorageError::AlreadyExists(key.to_string()))
                }
            }
            other => other,
        }
    }

    /// The bucket's own limits, read now (`GET /bucket/<id>`), to name the one that refused an
    /// upload; `None` when they cannot be read.
    pub(super) async fn bucket_limits(&self) -> Option<BucketLimits> {
        let path = format!("/bucket/{}", encode_segment(&self.bucket));
        let answer = self
            .exchange("reading the bucket's limits", || self.request(Method::GET, &path))
            .await;
        let info: BucketInfo = match answer {
            Ok(Ok(r)) => self.timeouts.json(r).await.ok()?,
            _ => return None,
        };
        let file_size_limit = match info.file_size_limit {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => Some(v.as_u64().or_else(|| v.as_str().and_then(|s| s.parse().ok()))?),
        };
        Some(BucketLimits {
            file_size_limit,
            allowed_mime_types: info.allowed_mime_types,
        })
    }

    /// Whether the object `key` holds exactly `bytes` (at most a standard upload's size): its size
    /// first, then its SHA-256.
    async fn holds(&self, key: &str, bytes: &[u8]) -> Result<bool, StorageError> {
        use sha2::{Digest, Sha256};
        if self.size(key).await? != Some(bytes.len() as u64) {
            return Ok(false);
        }
        let stored = self.get_bytes(key).await?;
        Ok(Sha256::digest(&stored) == Sha256::digest(bytes))
    }

    /// Starts a download; the body is read by the caller.
    async fn download(&self, key: &str) -> Result<Response, StorageError> {
        let path = self.object_path("authenticated/", &self.full(key)?);
        self.send(&format!("downloading {key}"), key, || self.request(Method::GET, &path))
            .await
    }

    /// Whether each key exists: one info request for a single key, else one listing per folder.
    async fn which_exist(&self, keys: &[&str]) -> HashMap<String, Result<bool, String>> {
        if let [key] = keys {
            let there = self.size(key).await.map(|s| s.is_some()).map_err(|e| e.to_string());
            return HashMap::from([(key.to_string(), there)]);
        }
        super::exist_by_listing(self, keys).await
    }

    /// One bulk delete (at most [`DELETE_BATCH`] names); the names the server says it deleted.
    async fn delete_batch(&self, names: &[String]) -> Result<Vec<String>, StorageError> {
        let path = format!("/object/{}", encode_segment(&self.bucket));
        let body = serde_json::json!({ "prefixes": names });
        let what = format!("deleting {} objects", names.len());
        let resp = self
            .send(&what, &self.bucket, || self.request(Method::DELETE, &path).json(&body))
            .await?;
        let deleted: Vec<Deleted> = self
            .timeouts
            .json(resp)
            .await
            .map_err(|e| StorageError::Other(format!("{what}: reading the answer: {e}")))?;
        Ok(deleted.into_iter().filter_map(|d| d.name).collect())
    }
}

#[derive(Deserialize)]
struct BucketInfo {
    id: Option<String>,
    name: Option<String>,
    /// Bytes, a number (the server parses int8 columns); null for none.
    #[serde(default)]
    file_size_limit: Option<serde_json::Value>,
    #[serde(default)]
    allowed_mime_types: Option<Vec<String>>,
}

/// A bucket's own limits (`storage.buckets`): `None` is the column's null, no limit of its own.
pub(super) struct BucketLimits {
    pub file_size_limit: Option<u64>,
    pub allowed_mime_types: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct Deleted {
    name: Option<String>,
}

#[derive(Deserialize)]
struct Info {
    size: Option<u64>,
}

#[async_trait]
impl Storage for Supabase {
    fn describe(&self) -> String {
        format!("supabase://{}/{}", self.bucket, self.prefix)
    }

    async fn probe(&self, access: Access) -> Result<(), StorageError> {
        if access == Access::Delete {
            if let Role::Other(role) = &self.role {
                return Err(StorageError::Refused(format!(
                    "the Supabase key's role is {role:?}, not service_role: row-level security hides objects from it, so its listings and deletes come back empty and prove nothing. Deleting needs the service_role key (SUPABASE_SERVICE_ROLE_KEY); nothing was touched"
                )));
            }
        }
        self.seen().await
    }

    async fn put_growing(&self, key: &str, file: GrowingFile) -> Result<(), StorageError> {
        let mut file = file;
        let full = self.full(key)?;
        let first = file.wait_for(STANDARD_UPLOAD_LIMIT + 1).await?;
        if first.complete && first.len <= STANDARD_UPLOAD_LIMIT {
            // At most 6 MB, so reading it whole is bounded.
            let bytes = tokio::fs::read(file.path())
                .await
                .map_err(|e| StorageError::io(format!("reading {}", file.path().display()), e))?;
            return self.post_object(key, bytes).await;
        }
        // The server refuses a taken name when the upload is created ("already exists").
        self.upload_tus(&full, key, &mut file).await
    }

    async fn put_bytes(&self, key: &str, bytes: Vec<u8>) -> Result<(), StorageError> {
        self.post_object(key, bytes).await
    }

    async fn get_to_file(&self, key: &str, path: &Path) -> Result<u64, StorageError> {
        let resp = self.download(key).await?;
        stream_to_file(self.timeouts.stream(resp), path, |e| {
            StorageError::Other(format!("downloading {key}: {}", self.scrub(&e)))
        })
        .await
    }

    async fn get_bytes(&self, key: &str) -> Result<Vec<u8>, StorageError> {
        let resp = self.download(key).await?;
        Ok(self
            .timeouts
            .body(resp)
            .await
            .map_err(|e| StorageError::Other(format!("downloading {key}: {}", self.scrub(&e))))?
            .to_vec())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        let v2 = match self.has_list_v2.get() {
            Some(false) => None,
            _ => self.list_v2(prefix).await?,
        };
        let _ = self.has_list_v2.set(v2.is_some());
        let mut out = match v2 {
            Some(objects) => objects,
            None => self.list_v1(prefix).await?,
        };
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn elsewhere(&self, keys: &[String]) -> Result<HashMap<String, String>, StorageError> {
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        let names = self
            .whole_bucket
            .get_or_try_init(|| async {
                let entries = self.list_v2_names("").await?.unwrap_or_default();
                Ok::<_, StorageError>(entries.into_iter().map(|e| e.name).collect())
            })
            .await?;
        Ok(super::keys_elsewhere(
            names.iter().map(String::as_str),
            &self.prefix,
            keys,
        ))
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.delete_many(&[key.to_string()])
            .await
            .pop()
            .unwrap_or_else(|| Err(StorageError::Other(format!("deleting {key}: no answer"))))
    }

    async fn delete_many(&self, keys: &[String]) -> Vec<Result<(), StorageError>> {
        let mut results: Vec<Option<Result<(), StorageError>>> = keys.iter().map(|_| None).collect();
        let mut named = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            match self.full(key) {
                Ok(full) => named.push((i, full)),
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        for chunk in named.chunks(DELETE_BATCH) {
            let names: Vec<String> = chunk.iter().map(|(_, n)| n.clone()).collect();
            match self.delete_batch(&names).await {
                Ok(deleted) => {
                    let deleted: HashSet<&str> = deleted.iter().map(String::as_str).collect();
                    // Not in the answer: gone already, or this key may not delete it. Which, from
                    // one listing per folder when there are several (else one info request).
                    let unanswered: Vec<&str> = chunk
                        .iter()
                        .filter(|(_, name)| !deleted.contains(name.as_str()))
                        .map(|(i, _)| keys[*i].as_str())
                        .collect();
                    let still_there = self.which_exist(&unanswered).await;
                    for (i, name) in chunk {
                        if deleted.contains(name.as_str()) {
                            results[*i] = Some(Ok(()));
                            continue;
                        }
                        let key = &keys[*i];
                        results[*i] = Some(match still_there.get(key.as_str()) {
                            Some(Ok(false)) => Err(StorageError::NotFound(key.clone())),
                            Some(Ok(true)) => Err(StorageError::Other(format!(
                                "Supabase answered the delete of {key} without deleting it, and it is still there (a key or policy that may read but not delete?)"
                            ))),
                            Some(Err(e)) => Err(StorageError::Other(e.clone())),
                            None => Err(StorageError::Other(format!("deleting {key}: not checked"))),
                        });
                    }
                }
                Err(e) => {
                    let text = e.to_string();
                    for (i, _) in chunk {
                        results[*i] = Some(Err(StorageError::Other(text.clone())));
                    }
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(StorageError::Other("not attempted".into()))))
            .collect()
    }

    /// One request: the object's info (`GET /object/info/authenticated/…`).
    async fn size(&self, key: &str) -> Result<Option<u64>, StorageError> {
        let path = self.object_path("info/authenticated/", &self.full(key)?);
        match self
            .send(&format!("checking {key}"), key, || self.request(Method::GET, &path))
            .await
        {
            Ok(r) => {
                let info: Info = self
                    .timeouts
                    .json(r)
                    .await
                    .map_err(|e| StorageError::Other(format!("checking {key}: unreadable answer ({e})")))?;
                Ok(Some(info.size.unwrap_or(0)))
            }
            Err(StorageError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_or_loopback() {
        let opts = StorageOptions::default();
        let open = |u: &str| {
            let var = |k: &str| match k {
                "SUPABASE_URL" => Some(u.to_string()),
                "SUPABASE_KEY" => Some("sb_secret_test".to_string()),
                _ => None,
            };
            Supabase::open_with("supabase://backups", &opts, &var).map(|_| ())
        };
        assert!(open("https://abc.supabase.co").is_ok());
        assert!(open("http://127.0.0.1:54321").is_ok());
        assert!(open("http://localhost:54321").is_ok());
        assert!(open("http://[::1]:54321").is_ok());
        assert!(open("http://abc.supabase.co").is_err());
        assert!(open("ftp://abc.supabase.co").is_err());
    }
}
