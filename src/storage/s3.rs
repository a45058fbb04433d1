//! S3 and S3-compatible services (MinIO, R2, Supabase's S3 endpoint, moto) through `object_store`.
//! Credentials and endpoint come from the standard `AWS_*` variables. Uploads stream from the spool
//! file in 8 MiB parts; downloads stream to a file; nothing holds a whole object in memory.

use std::path::Path as FsPath;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{ObjectStore, RetryConfig, WriteMultipart};
use tokio::io::AsyncReadExt;

use super::{check_key, stream_to_file, ObjectInfo, Storage, StorageError, StorageOptions};
use crate::error::UsageError;

const PART: usize = 8 * 1024 * 1024;

pub struct S3 {
    store: AmazonS3,
    prefix: String,
    url: String,
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
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_retry(RetryConfig {
                max_retries: opts.retries as usize,
                retry_timeout: Duration::from_secs(300),
                backoff: object_store::BackoffConfig {
                    init_backoff: Duration::from_millis(200),
                    max_backoff: Duration::from_secs(10),
                    base: 2.0,
                },
            });
        if env("AWS_REGION").is_none() && env("AWS_DEFAULT_REGION").is_none() {
            builder = builder.with_region("us-east-1");
        } else if let Some(r) = env("AWS_REGION").or_else(|| env("AWS_DEFAULT_REGION")) {
            builder = builder.with_region(r);
        }
        if let Some(endpoint) = env("AWS_ENDPOINT_URL").or_else(|| env("AWS_ENDPOINT")) {
            // Path-style requests: what MinIO, R2, moto and Supabase's S3 endpoint expect.
            builder = builder
                .with_allow_http(endpoint.starts_with("http://"))
                .with_endpoint(endpoint)
                .with_virtual_hosted_style_request(false);
        }
        if env("AWS_ALLOW_HTTP").is_some_and(|v| v == "true" || v == "1") {
            builder = builder.with_allow_http(true);
        }
        let store = builder.build().map_err(|e| {
            UsageError::new(format!(
                "cannot use {url}: {e}. Set AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION (and AWS_ENDPOINT_URL for S3-compatible services)"
            ))
        })?;
        Ok(S3 {
            store,
            prefix: prefix.trim_matches('/').to_string(),
            url: url.to_string(),
        })
    }

    fn path(&self, key: &str) -> Result<Path, StorageError> {
        check_key(key)?;
        let full = if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        };
        Path::parse(&full).map_err(|e| StorageError::Other(format!("invalid object key {key:?}: {e}")))
    }

    fn key_of(&self, path: &Path) -> String {
        let s = path.as_ref();
        if self.prefix.is_empty() {
            s.to_string()
        } else {
            s.strip_prefix(&format!("{}/", self.prefix)).unwrap_or(s).to_string()
        }
    }

    fn err(&self, key: &str, e: object_store::Error) -> StorageError {
        match e {
            object_store::Error::NotFound { .. } => StorageError::NotFound(key.to_string()),
            object_store::Error::AlreadyExists { .. } => StorageError::AlreadyExists(key.to_string()),
            other => StorageError::Other(format!("{}: {key}: {other}", crate::secret::redact(&self.url))),
        }
    }
}

/// A multipart upload that is aborted when dropped before `finish` (on an error, or when a stop
/// drops the backup midway), so that its parts do not stay in the bucket.
struct Unfinished(Option<WriteMultipart>);

impl Unfinished {
    fn take(&mut self) -> WriteMultipart {
        self.0.take().expect("the upload is used once")
    }
}

impl std::ops::Deref for Unfinished {
    type Target = WriteMultipart;
    fn deref(&self) -> &WriteMultipart {
        self.0.as_ref().expect("the upload is used once")
    }
}

impl std::ops::DerefMut for Unfinished {
    fn deref_mut(&mut self) -> &mut WriteMultipart {
        self.0.as_mut().expect("the upload is used once")
    }
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if let Some(upload) = self.0.take() {
            crate::stop::defer(async move { upload.abort().await.is_ok() });
        }
    }
}

#[async_trait]
impl Storage for S3 {
    fn describe(&self) -> String {
        crate::secret::redact(&self.url)
    }

    async fn put_file(&self, key: &str, path: &FsPath) -> Result<(), StorageError> {
        let dest = self.path(key)?;
        // Never overwrite. (The tenant lock keeps two writers off one key, so head-then-put suffices.)
        if self.size(key).await?.is_some() {
            return Err(StorageError::AlreadyExists(key.to_string()));
        }
        let mut file = tokio::fs::File::open(path)
            .await
            .map_err(|e| StorageError::io(format!("reading {}", path.display()), e))?;
        let upload = self.store.put_multipart(&dest).await.map_err(|e| self.err(key, e))?;
        let mut writer = Unfinished(Some(WriteMultipart::new_with_chunk_size(upload, PART)));
        let mut buf = vec![0u8; 1024 * 1024];
        loop {
            let n = match file.read(&mut buf).await {
                Ok(n) => n,
                Err(e) => {
                    let _ = writer.take().abort().await;
                    return Err(StorageError::io(format!("reading {}", path.display()), e));
                }
            };
            if n == 0 {
                break;
            }
            // At most two parts in flight: memory stays bounded whatever the object's size.
            if let Err(e) = writer.wait_for_capacity(2).await {
                return Err(self.err(key, e));
            }
            writer.write(&buf[..n]);
        }
        // The object appears with this; from here a stop waits until the caller has heard of it.
        let _commit =
            crate::stop::shield().ok_or_else(|| StorageError::Other(format!("storing {key}: stopped by a signal")))?;
        writer.take().finish().await.map_err(|e| self.err(key, e))?;
        Ok(())
    }

    async fn put_bytes(&self, key: &str, bytes: Vec<u8>) -> Result<(), StorageError> {
        let dest = self.path(key)?;
        if self.size(key).await?.is_some() {
            return Err(StorageError::AlreadyExists(key.to_string()));
        }
        self.store
            .put(&dest, bytes.into())
            .await
            .map_err(|e| self.err(key, e))?;
        Ok(())
    }

    async fn get_to_file(&self, key: &str, path: &FsPath) -> Result<u64, StorageError> {
        let src = self.path(key)?;
        let result = self.store.get(&src).await.map_err(|e| self.err(key, e))?;
        stream_to_file(result.into_stream(), path, |e| self.err(key, e)).await
    }

    async fn get_bytes(&self, key: &str) -> Result<Vec<u8>, StorageError> {
        let src = self.path(key)?;
        let result = self.store.get(&src).await.map_err(|e| self.err(key, e))?;
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
            let key = self.key_of(&meta.location);
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

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        // S3 answers a delete of a missing key with success; ask first so "already gone" is known.
        if self.size(key).await?.is_none() {
            return Err(StorageError::NotFound(key.to_string()));
        }
        let p = self.path(key)?;
        self.store.delete(&p).await.map_err(|e| self.err(key, e))
    }

    async fn size(&self, key: &str) -> Result<Option<u64>, StorageError> {
        let p = self.path(key)?;
        match self.store.head(&p).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(key, e)),
        }
    }
}
