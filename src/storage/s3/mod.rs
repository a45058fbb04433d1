//! S3 and S3-compatible services (MinIO, R2, Supabase's S3 endpoint, moto) through `object_store`.
//! Credentials and endpoint come from the standard `AWS_*` variables. Uploads stream from the spool
//! file in 8 MiB parts, at most two in flight, each sent as soon as the spool holds it (while the
//! dump still runs); the upload is completed only once the spool is declared whole. Downloads
//! stream to a file; nothing holds a whole object in memory.
//!
//! A multipart upload that fails is aborted, so its parts do not stay in the bucket (and cost
//! money) forever; one a crash leaves behind is found by [`Storage::unfinished`] through a signed
//! `ListMultipartUploads` request (object_store does not list them) and aborted by `cleanup
//! --orphans --fix`. The probe lists one page of the prefix; "not found" waits for it in
//! [`Checked`](super::Checked).

use std::collections::HashMap;
use std::path::Path as FsPath;
use std::time::Duration;

mod multipart;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::multipart::MultipartStore;
use object_store::path::Path;
use object_store::{ObjectStore, RetryConfig};
use tokio::sync::OnceCell;

use crate::storage::stopped;

use multipart::AbortOnDrop;

use super::{
    check_key, stream_to_file, Access, GrowingFile, ObjectInfo, Storage, StorageError, StorageOptions, Timeouts,
    Unfinished,
};
use crate::error::UsageError;

const PART: usize = 8 * 1024 * 1024;

/// The variables to set, named in every message about missing credentials.
const CREDENTIALS_HINT: &str =
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_REGION; AWS_ENDPOINT_URL for S3-compatible services)";

pub struct S3 {
    store: AmazonS3,
    prefix: String,
    url: String,
    bucket: String,
    region: String,
    /// The bucket's own URL (`https://bucket.s3.region.amazonaws.com`, or `endpoint/bucket`), for
    /// the one request object_store does not make.
    bucket_url: String,
    /// Credentials come from the environment (keys, web identity, container), not from the
    /// instance metadata service object_store falls back to.
    configured_credentials: bool,
    http: reqwest::Client,
    /// Attempts after the first for the requests made here rather than by object_store.
    retries: u32,
    /// Connect and idle timeouts of the requests made here (object_store's own requests have the
    /// connect timeout and object_store's 30 s bound on each request).
    timeouts: Timeouts,
    seen: OnceCell<Result<(), String>>,
    /// Every object name in the bucket, listed once, for [`Storage::elsewhere`].
    whole_bucket: OnceCell<Vec<String>>,
}

impl S3 {
    /// `s3://bucket/optional/prefix`
    pub fn open(url: &str, opts: &StorageOptions) -> Result<S3, UsageError> {
        let rest = url.strip_prefix("s3://").unwrap_or(url);
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(UsageError::new(format!(
                "{url} names no bucket: use s3://bucket/prefix"
            )));
        }
        let prefix = prefix.trim_matches('/').to_string();
        if !prefix.is_empty() && check_key(&prefix).is_err() {
            return Err(UsageError::new(format!(
                "{url}: the prefix {prefix:?} cannot be used (empty, `.` or `..` segments): use s3://bucket/folder/sub"
            )));
        }
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_config(
                AmazonS3ConfigKey::Client(object_store::ClientConfigKey::ConnectTimeout),
                format!("{}ms", opts.timeouts.connect.as_millis()),
            )
            .with_retry(RetryConfig {
                max_retries: opts.retries as usize,
                retry_timeout: Duration::from_secs(300),
                backoff: object_store::BackoffConfig {
                    init_backoff: crate::retry::scaled(Duration::from_millis(200)),
                    max_backoff: crate::retry::scaled(Duration::from_secs(10)),
                    base: 2.0,
                },
            });
        let region = env("AWS_REGION")
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| "us-east-1".to_string());
        builder = builder.with_region(&region);
        let endpoint = env("AWS_ENDPOINT_URL").or_else(|| env("AWS_ENDPOINT"));
        if let Some(endpoint) = &endpoint {
            // Path-style requests: what MinIO, R2, moto and Supabase's S3 endpoint expect.
            builder = builder
                .with_allow_http(endpoint.starts_with("http://"))
                .with_endpoint(endpoint)
                .with_virtual_hosted_style_request(false);
        }
        if env("AWS_ALLOW_HTTP").is_some_and(|v| v == "true" || v == "1") {
            builder = builder.with_allow_http(true);
        }
        let store = builder
            .build()
            .map_err(|e| UsageError::new(format!("cannot use {url}: {e}. {CREDENTIALS_HINT}")))?;
        let bucket_url = match &endpoint {
            Some(e) => format!("{}/{bucket}", e.trim_end_matches('/')),
            None => format!("https://{bucket}.s3.{region}.amazonaws.com"),
        };
        let configured_credentials = (env("AWS_ACCESS_KEY_ID").is_some() && env("AWS_SECRET_ACCESS_KEY").is_some())
            || env("AWS_WEB_IDENTITY_TOKEN_FILE").is_some()
            || env("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI").is_some()
            || env("AWS_CONTAINER_CREDENTIALS_FULL_URI").is_some();
        let http = opts
            .timeouts
            .client()
            .build()
            .map_err(|e| UsageError::new(format!("setting up HTTPS: {e}")))?;
        Ok(S3 {
            store,
            prefix,
            url: url.to_string(),
            bucket: bucket.to_string(),
            region,
            bucket_url,
            configured_credentials,
            http,
            retries: opts.retries,
            timeouts: opts.timeouts,
            seen: OnceCell::new(),
            whole_bucket: OnceCell::new(),
        })
    }

    fn full(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        }
    }

    fn path(&self, key: &str) -> Result<Path, StorageError> {
        check_key(key)?;
        Path::parse(self.full(key)).map_err(|e| StorageError::Other(format!("invalid object key {key:?}: {e}")))
    }

    fn key_of(&self, full: &str) -> String {
        if self.prefix.is_empty() {
            full.to_string()
        } else {
            full.strip_prefix(&format!("{}/", self.prefix))
                .unwrap_or(full)
                .to_string()
        }
    }

    /// The text of an error, with a missing-credentials failure said as what to do.
    fn explain(&self, e: &dyn std::fmt::Display) -> String {
        let text = e.to_string();
        let lower = text.to_lowercase();
        if !self.configured_credentials
            && (lower.contains("169.254.169.254")
                || lower.contains("credential")
                || lower.contains("/latest/api/token"))
        {
            return format!("no S3 credentials: {CREDENTIALS_HINT}. None are set, and no instance role provided any");
        }
        text
    }

    fn err(&self, key: &str, e: object_store::Error) -> StorageError {
        match e {
            object_store::Error::NotFound { .. } => StorageError::NotFound(key.to_string()),
            object_store::Error::AlreadyExists { .. } => StorageError::AlreadyExists(key.to_string()),
            // No retry fixes these: a backup stops its dump on them.
            e @ (object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. }) => {
                StorageError::Rejected(format!(
                    "{}: {key}: {}: check that the credentials may write to bucket {:?} ({CREDENTIALS_HINT})",
                    crate::secret::redact(&self.url),
                    self.explain(&e),
                    self.bucket
                ))
            }
            other => StorageError::Other(format!(
                "{}: {key}: {}",
                crate::secret::redact(&self.url),
                self.explain(&other)
            )),
        }
    }

    /// The bucket exists and can be listed with these credentials: one page of the prefix.
    async fn seen(&self) -> Result<(), StorageError> {
        let result = self
            .seen
            .get_or_init(|| async {
                let base = (!self.prefix.is_empty()).then(|| Path::from(self.prefix.as_str()));
                match self.store.list(base.as_ref()).next().await {
                    None | Some(Ok(_)) => Ok(()),
                    Some(Err(e)) => Err(format!(
                        "cannot see {}: listing the bucket failed ({}); nothing was deleted or called missing. Check that bucket {:?} exists and the credentials may list and read it",
                        crate::secret::redact(&self.url),
                        self.explain(&e),
                        self.bucket
                    )),
                }
            })
            .await;
        result.clone().map_err(StorageError::Other)
    }
}

#[async_trait]
impl Storage for S3 {
    fn describe(&self) -> String {
        crate::secret::redact(&self.url)
    }

    async fn probe(&self, _access: Access) -> Result<(), StorageError> {
        self.seen().await
    }

    async fn put_growing(&self, key: &str, file: GrowingFile) -> Result<(), StorageError> {
        let mut file = file;
        let dest = self.path(key)?;
        // Never overwrite. (The tenant lock keeps two writers off one key, so head-then-put suffices;
        // it is asked again before the upload is completed.)
        if self.size(key).await?.is_some() {
            return Err(StorageError::AlreadyExists(key.to_string()));
        }
        // More than one part, or the whole file: which kind of upload this is.
        let first = file.wait_for(PART as u64 + 1).await?;
        if first.complete && first.len <= PART as u64 {
            // One part's worth: a single PUT, which leaves nothing behind when it fails.
            let bytes = tokio::fs::read(file.path())
                .await
                .map_err(|e| StorageError::io(format!("reading {}", file.path().display()), e))?;
            // The object appears with this PUT: a stop waits until the caller has heard of it.
            let _commit = crate::stop::shield().ok_or_else(|| stopped(key))?;
            return self.put_bytes_unchecked(key, &dest, bytes).await;
        }
        let id = self.store.create_multipart(&dest).await.map_err(|e| self.err(key, e))?;
        let mut guard = AbortOnDrop {
            store: Some(self.store.clone()),
            path: dest.clone(),
            id: id.clone(),
        };
        let parts = match self.put_parts(&dest, &id, &mut file).await {
            Ok(parts) => match self.size(key).await {
                Ok(None) => Ok(parts),
                Ok(Some(_)) => Err(StorageError::AlreadyExists(key.to_string())),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        let outcome = match (parts, crate::stop::shield()) {
            // The object appears with this: a stop waits until the caller has heard of it.
            (Ok(parts), Some(_commit)) => self
                .store
                .complete_multipart(&dest, &id, parts)
                .await
                .map(|_| ())
                .map_err(|e| self.err(key, e)),
            (Ok(_), None) => Err(stopped(key)),
            (Err(e), _) => Err(e),
        };
        let store = guard.disarm();
        if let (Err(e), Some(store)) = (&outcome, store) {
            match store.abort_multipart(&dest, &id).await {
                Ok(()) => tracing::info!("{key}: the unfinished upload was aborted, its parts removed ({e})"),
                Err(abort) => tracing::error!(
                    "{key}: the upload failed ({e}) and could not be aborted ({}); `cleanup --orphans --fix` removes it later",
                    self.explain(&abort)
                ),
            }
        }
        outcome
    }

    async fn put_bytes(&self, key: &str, bytes: Vec<u8>) -> Result<(), StorageError> {
        let dest = self.path(key)?;
        if self.size(key).await?.is_some() {
            return Err(StorageError::AlreadyExists(key.to_string()));
        }
        self.put_bytes_unchecked(key, &dest, bytes).await
    }

    async fn get_to_file(&self, key: &str, path: &FsPath) -> Result<u64, StorageError> {
        let src = self.path(key)?;
        let result = match self.store.get(&src).await {
            Ok(r) => r,
            Err(e) => return Err(self.err(key, e)),
        };
        stream_to_file(result.into_stream(), path, |e| self.err(key, e)).await
    }

    async fn get_bytes(&self, key: &str) -> Result<Vec<u8>, StorageError> {
        let src = self.path(key)?;
        let result = match self.store.get(&src).await {
            Ok(r) => r,
            Err(e) => return Err(self.err(key, e)),
        };
        Ok(result.bytes().await.map_err(|e| self.err(key, e))?.to_vec())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        // object_store lists whole path segments; narrow to the exact string prefix afterwards.
        let dir = prefix.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        let full = match (self.prefix.is_empty(), dir.is_empty()) {
            (true, _) => dir.to_string(),
            (false, true) => self.prefix.clone(),
            (false, false) => format!("{}/{dir}", self.prefix),
        };
        let base = if full.is_empty() {
            None
        } else {
            Some(Path::from(full.as_str()))
        };
        let mut stream = self.store.list(base.as_ref());
        let mut out = Vec::new();
        while let Some(meta) = stream.next().await {
            let meta = meta.map_err(|e| self.err(prefix, e))?;
            let key = self.key_of(meta.location.as_ref());
            if key.starts_with(prefix) {
                out.push(ObjectInfo {
                    key,
                    size: meta.size,
                    modified: Some(meta.last_modified),
                });
            }
        }
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
                let mut stream = self.store.list(None);
                let mut names = Vec::new();
                while let Some(meta) = stream.next().await {
                    names.push(meta.map_err(|e| self.err("", e))?.location.to_string());
                }
                Ok::<_, StorageError>(names)
            })
            .await?;
        Ok(super::keys_elsewhere(
            names.iter().map(String::as_str),
            &self.prefix,
            keys,
        ))
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        // S3 answers a delete of a missing key with success; ask first so "already gone" is known.
        if self.size(key).await?.is_none() {
            return Err(StorageError::NotFound(key.to_string()));
        }
        let p = self.path(key)?;
        self.store.delete(&p).await.map_err(|e| self.err(key, e))
    }

    /// Many keys: which exist from one listing per folder (S3 answers a delete of a missing key
    /// with success), then the existing ones in bulk `DeleteObjects` requests of up to 1,000
    /// keys, instead of a HEAD and a DELETE each.
    async fn delete_many(&self, keys: &[String]) -> Vec<Result<(), StorageError>> {
        if keys.len() < 2 {
            let mut out = Vec::new();
            for key in keys {
                out.push(self.delete(key).await);
            }
            return out;
        }
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let there = super::exist_by_listing(self, &refs).await;
        let mut results: Vec<Option<Result<(), StorageError>>> = keys.iter().map(|_| None).collect();
        let mut present = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            match &there[key] {
                Err(e) => results[i] = Some(Err(StorageError::Other(e.clone()))),
                Ok(false) => results[i] = Some(Err(StorageError::NotFound(key.clone()))),
                Ok(true) => match self.path(key) {
                    Ok(p) => present.push((i, p)),
                    Err(e) => results[i] = Some(Err(e)),
                },
            }
        }
        for chunk in present.chunks(1000) {
            let paths = futures::stream::iter(chunk.iter().map(|(_, p)| Ok(p.clone()))).boxed();
            let answers: Vec<_> = self.store.delete_stream(paths).collect().await;
            if answers.len() == chunk.len() {
                for ((i, _), answer) in chunk.iter().zip(answers) {
                    results[*i] = Some(answer.map(|_| ()).map_err(|e| self.err(&keys[*i], e)));
                }
            } else {
                // The bulk request itself failed: every key of it is said to have failed.
                let why = answers
                    .into_iter()
                    .find_map(Result::err)
                    .map(|e| self.err("", e).to_string())
                    .unwrap_or_else(|| "no answer".into());
                for (i, _) in chunk {
                    results[*i] = Some(Err(StorageError::Other(format!("deleting {}: {why}", keys[*i]))));
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(StorageError::Other("not attempted".into()))))
            .collect()
    }

    async fn size(&self, key: &str) -> Result<Option<u64>, StorageError> {
        let p = self.path(key)?;
        match self.store.head(&p).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(key, e)),
        }
    }

    async fn unfinished(&self, prefix: &str) -> Result<Vec<Unfinished>, StorageError> {
        let full = self.full(prefix);
        let mut out = Vec::new();
        let mut markers: Option<(String, String)> = None;
        loop {
            let page = self
                .list_uploads_page(&full, markers.as_ref().map(|(k, u)| (k.as_str(), u.as_str())))
                .await?;
            for u in page.uploads {
                if !u.key.starts_with(&full) {
                    continue;
                }
                out.push(Unfinished {
                    key: self.key_of(&u.key),
                    id: u.upload_id,
                    started: u
                        .initiated
                        .as_deref()
                        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                        .map(|t| t.with_timezone(&Utc)),
                });
            }
            match (page.is_truncated, page.next_key_marker, page.next_upload_id_marker) {
                (Some(true), Some(k), Some(u)) if markers.as_ref() != Some(&(k.clone(), u.clone())) => {
                    markers = Some((k, u))
                }
                _ => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    async fn discard_unfinished(&self, upload: &Unfinished) -> Result<(), StorageError> {
        let p = self.path(&upload.key)?;
        self.store
            .abort_multipart(&p, &upload.id)
            .await
            .map_err(|e| self.err(&upload.key, e))
    }
}

impl S3 {
    pub(super) async fn put_bytes_unchecked(&self, key: &str, dest: &Path, bytes: Vec<u8>) -> Result<(), StorageError> {
        self.store.put(dest, bytes.into()).await.map_err(|e| self.err(key, e))?;
        Ok(())
    }
}
