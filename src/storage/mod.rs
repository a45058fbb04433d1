//! Where backups live. One trait, one backend per file, chosen once from the storage URL.

mod checked;
mod fs;
mod growing;
#[cfg(test)]
mod memory;
mod place;
mod s3;
mod supabase;
mod timeouts;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;

use crate::error::UsageError;

pub use checked::Checked;
pub use fs::LocalDir;
pub use growing::{Extent, Grower, GrowingFile};
#[cfg(test)]
pub use memory::Memory;
pub use place::{place, Place};
pub use s3::S3;
pub use supabase::Supabase;
pub use timeouts::Timeouts;

/// Settings every remote backend shares.
#[derive(Clone, Copy, Debug)]
pub struct StorageOptions {
    /// Attempts after the first, for 429, 5xx and connection errors.
    pub retries: u32,
    /// How long a connection may take, and how long a request may go without a byte moving.
    pub timeouts: Timeouts,
}

impl Default for StorageOptions {
    fn default() -> Self {
        StorageOptions {
            retries: 5,
            timeouts: Timeouts::default(),
        }
    }
}

/// The storage the environment names when `--storage` / `BACKUP_STORAGE` is not given: Supabase
/// when `SUPABASE_URL` is set (bucket from `SUPABASE_BUCKET_NAME`, else `backups`). `None`: no
/// storage is configured; commands that store or delete refuse to run (a default local folder on
/// a machine whose disk is thrown away would lose every backup while reporting success).
pub fn configured_default() -> Option<String> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    env("SUPABASE_URL").map(|_| {
        format!(
            "supabase://{}",
            env("SUPABASE_BUCKET_NAME").unwrap_or_else(|| "backups".into())
        )
    })
}

/// Where commands that only read look when no storage is configured.
pub const READ_DEFAULT: &str = "./backups";

/// What a backend returns. [`StorageError::NotFound`] (and `Ok(None)` from [`Storage::size`], and
/// a short listing) is a proven absence once it has passed [`Checked`], which every backend
/// [`open`] makes is wrapped in: it is only passed on after [`Storage::probe`] has seen that the
/// bucket exists and that the credentials can list and read it. A backend still turns anything
/// that merely looks like absence (a 404 from a route that does not exist) into an error.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("object {0} already exists")]
    AlreadyExists(String),
    #[error("object {0} not found")]
    NotFound(String),
    /// The storage is configured so it must not be used for this (a key without the rights it
    /// needs): nothing was touched, and the fix is in the configuration.
    #[error("{0}")]
    Refused(String),
    /// The server refused the request for a reason no retry fixes (a rejected key, a missing
    /// bucket, a size or type limit: 401/403/404/413/415): the message names the fix. A backup
    /// stops its dump at once on it, and the request is not sent again.
    #[error("{0}")]
    Rejected(String),
    /// The OS error is part of the message and deliberately not a `source` (thiserror would make a
    /// field named `source` one), so an error chain prints it once.
    #[error("{context}: {error}")]
    Io { context: String, error: std::io::Error },
    /// The file being stored was given up by its writer (the dump failed or was stopped): nothing
    /// was stored.
    #[error("the spool {0} was abandoned before it was complete; nothing was stored")]
    Abandoned(String),
    #[error("{0}")]
    Other(String),
}

/// Storing `key` was given up because a stop was asked for.
pub(crate) fn stopped(key: &str) -> StorageError {
    StorageError::Other(format!("storing {key}: stopped by a signal"))
}

impl StorageError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        StorageError::Io {
            context: context.into(),
            error: source,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    /// When the object was last written, if the backend says.
    pub modified: Option<chrono::DateTime<chrono::Utc>>,
}

/// Something under a prefix that is not an object and is never read: a symbolic link or special
/// file in a local directory ([`Storage::strays`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Stray {
    pub key: String,
    /// What it is and what the tool does with it, for reports.
    pub what: String,
}

/// What a caller is about to do, for [`Storage::probe`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Read and list: `list --check`, download, verify, restore.
    Read,
    /// Delete too: `cleanup`.
    Delete,
}

/// An upload that was started and never finished: an S3 multipart upload, a local `.partial`
/// file. Its parts take space until they are removed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Unfinished {
    /// The key it was meant for (local: the temporary file's own key).
    pub key: String,
    /// The backend's handle on it (the S3 upload id; the key for a local file).
    pub id: String,
    pub started: Option<chrono::DateTime<chrono::Utc>>,
}

/// Keys are relative (`bienestar/backup-sql-….sql.zst`); a backend adds its own prefix.
/// Writes never overwrite: `put_*` fails with [`StorageError::AlreadyExists`].
#[async_trait]
pub trait Storage: Send + Sync {
    /// The storage URL, redacted, for messages.
    fn describe(&self) -> String;

    /// Proves the bucket exists and these credentials can list and read it (and, for
    /// [`Access::Delete`], that they are meant to delete). Every "not found" a backend returns
    /// rests on this; callers about to delete call it first to stop before anything is touched.
    async fn probe(&self, access: Access) -> Result<(), StorageError>;

    /// Stores the file's bytes under `key`, atomically: a crash never leaves a partial object
    /// under the final key. The caller does not change the file afterwards (a local directory on
    /// the same filesystem links it into place rather than copy it).
    ///
    /// A backend implements this or [`put_growing`](Self::put_growing), and gets the other from
    /// it: the default here is `put_growing` of a file that is already whole (a backend that
    /// streams, S3 and Supabase); the default of `put_growing` waits for the whole file and calls
    /// this (a local directory).
    async fn put_file(&self, key: &str, path: &Path) -> Result<(), StorageError> {
        let len = tokio::fs::metadata(path)
            .await
            .map_err(|e| StorageError::io(format!("reading {}", path.display()), e))?
            .len();
        self.put_growing(key, GrowingFile::complete_file(path, len)).await
    }

    /// Stores a file that is still being written, under `key`: a remote backend uploads it as it
    /// grows (S3 parts, resumable chunks), and makes the object appear only once the writer has
    /// declared the file complete; an abandoned file ([`StorageError::Abandoned`]) leaves nothing.
    /// Taken names fail at once with [`StorageError::AlreadyExists`] where the backend can tell.
    /// The default waits for the whole file, then [`put_file`](Self::put_file).
    async fn put_growing(&self, key: &str, file: GrowingFile) -> Result<(), StorageError> {
        let mut file = file;
        file.complete().await?;
        self.put_file(key, file.path()).await
    }

    /// Where the spool of an object about to be stored under `key` is best written: a local
    /// directory names the object's own folder, so that [`put_file`](Self::put_file) links the
    /// spool into place without a copy (and the spool's writes should then be made durable).
    /// `None`: anywhere (the temporary directory).
    fn spool_dir(&self, key: &str) -> Option<std::path::PathBuf> {
        let _ = key;
        None
    }

    /// Stores a small object (a manifest).
    async fn put_bytes(&self, key: &str, bytes: Vec<u8>) -> Result<(), StorageError>;

    /// Downloads `key` into `path`, returning its size.
    async fn get_to_file(&self, key: &str, path: &Path) -> Result<u64, StorageError>;

    /// Reads a small object (a manifest) whole.
    async fn get_bytes(&self, key: &str) -> Result<Vec<u8>, StorageError>;

    /// Every object whose key starts with `prefix`, in key order.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError>;

    /// Deletes `key`; [`StorageError::NotFound`] when it was not there.
    async fn delete(&self, key: &str) -> Result<(), StorageError>;

    /// The object's size, or `None` when it does not exist.
    async fn size(&self, key: &str) -> Result<Option<u64>, StorageError>;

    /// Deletes each key; one result per key, in order. Backends with a bulk call use it.
    async fn delete_many(&self, keys: &[String]) -> Vec<Result<(), StorageError>> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            out.push(self.delete(key).await);
        }
        out
    }

    /// What lies under `prefix` and is not an object (never read or listed as one): a local
    /// directory's symbolic links and special files. Object stores have none.
    async fn strays(&self, prefix: &str) -> Result<Vec<Stray>, StorageError> {
        let _ = prefix;
        Ok(Vec::new())
    }

    /// For keys this storage does not hold: another prefix of the same bucket that holds an
    /// object under the same key (`""` for the bucket's root), as a change of the storage URL's
    /// prefix leaves behind (`supabase://backups` → `supabase://backups/new-prefix`). One listing
    /// of the whole bucket, made once per process; asked only when a row's object is missing. A
    /// backend with no bucket around its prefix (a local directory) finds none.
    async fn elsewhere(&self, keys: &[String]) -> Result<HashMap<String, String>, StorageError> {
        let _ = keys;
        Ok(HashMap::new())
    }

    /// Uploads under `prefix` that were started and never finished.
    async fn unfinished(&self, prefix: &str) -> Result<Vec<Unfinished>, StorageError> {
        let _ = prefix;
        Ok(Vec::new())
    }

    /// Removes an unfinished upload (aborts it, freeing its parts).
    async fn discard_unfinished(&self, upload: &Unfinished) -> Result<(), StorageError> {
        Err(StorageError::Other(format!(
            "{} cannot remove the unfinished upload {}",
            self.describe(),
            upload.key
        )))
    }
}

/// What a storage URL names, before anything is opened.
enum Location<'a> {
    Local(&'a str),
    S3,
    Supabase,
}

fn locate(url: &str) -> Result<Location<'_>, UsageError> {
    const FORMS: &str = "a directory that exists, file:///path, s3://bucket/prefix or supabase://bucket/prefix";
    if url.is_empty() {
        return Err(UsageError::new(format!(
            "--storage / BACKUP_STORAGE is empty: give {FORMS}"
        )));
    }
    if let Some(rest) = url.strip_prefix("file://") {
        if !rest.starts_with('/') {
            return Err(UsageError::new(format!(
                "{url} is not an absolute file URL: use file:///absolute/path or a plain path such as ./backups"
            )));
        }
        return Ok(Location::Local(rest));
    }
    if url.starts_with("s3://") {
        return Ok(Location::S3);
    }
    if url.starts_with("supabase://") {
        return Ok(Location::Supabase);
    }
    if let Some((scheme, _)) = url.split_once("://") {
        return Err(UsageError::new(format!(
            "storage scheme {scheme}:// is not supported: use {FORMS}"
        )));
    }
    if let Some(meant) = mistyped_url(url) {
        return Err(UsageError::new(format!(
            "--storage / BACKUP_STORAGE {url:?} looks like a mistyped URL: write {meant} (two slashes after the colon); for a local folder of that name write ./{url}"
        )));
    }
    Ok(Location::Local(url))
}

/// A relative path that is really a URL with a slash or colon missing (`s3:/bucket`, `s3:bucket`,
/// `supabase//b`): taken as a local folder it would quietly collect the backups on this machine.
/// Returns what was probably meant.
fn mistyped_url(url: &str) -> Option<String> {
    let first = url.split('/').next().unwrap_or_default();
    if let Some((scheme, rest)) = url.split_once(':') {
        if !scheme.is_empty() && !scheme.contains('/') && first.contains(':') {
            let slashes = if scheme == "file" { "///" } else { "//" };
            return Some(format!("{scheme}:{slashes}{}", rest.trim_start_matches('/')));
        }
    }
    for scheme in ["s3", "supabase", "file"] {
        if let Some(rest) = url.strip_prefix(scheme).and_then(|r| r.strip_prefix("//")) {
            return Some(format!("{scheme}://{rest}"));
        }
    }
    None
}

/// The directory a storage URL names, when it names a local one.
pub fn local_root(url: &str) -> Option<std::path::PathBuf> {
    match locate(url.trim()) {
        Ok(Location::Local(path)) => Some(path.into()),
        _ => None,
    }
}

/// Opens the backend named by a storage URL: a plain path or `file:///abs/path` (local directory),
/// `s3://bucket/prefix` or `supabase://bucket/prefix`. Nothing is created or contacted: a local
/// directory must already exist when something is stored (see `Context::prove_storage`), and a
/// string that looks like a mistyped URL is refused rather than taken as a folder.
pub fn open(url: &str, opts: &StorageOptions) -> Result<Arc<dyn Storage>, UsageError> {
    let url = url.trim();
    Ok(Checked::wrap(match locate(url)? {
        Location::Local(path) => Arc::new(LocalDir::new(path)),
        Location::S3 => Arc::new(S3::open(url, opts)?),
        Location::Supabase => Arc::new(Supabase::open(url, opts)?),
    }))
}

/// Writes a download stream to `path`, returning the bytes written. Memory holds one chunk at a time.
pub(crate) async fn stream_to_file<S, B, E>(
    mut stream: S,
    path: &Path,
    on_err: impl Fn(E) -> StorageError,
) -> Result<u64, StorageError>
where
    S: futures::Stream<Item = Result<B, E>> + Unpin,
    B: AsRef<[u8]>,
{
    use futures::StreamExt;
    use tokio::io::AsyncWriteExt;
    let write_err = |e| StorageError::io(format!("writing {}", path.display()), e);
    let mut out = tokio::fs::File::create(path).await.map_err(write_err)?;
    let mut total = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(&on_err)?;
        total += chunk.as_ref().len() as u64;
        out.write_all(chunk.as_ref()).await.map_err(write_err)?;
    }
    out.flush().await.map_err(write_err)?;
    Ok(total)
}

/// Which of `keys` the bucket's objects (`names`, full names) hold under another prefix than
/// `own`: key → that prefix (`""` for the bucket's root). A name `a/b/t/x.sql` holds the key
/// `t/x.sql` under `a/b`, and the key `b/t/x.sql` under `a`.
pub(crate) fn keys_elsewhere<'a>(
    names: impl IntoIterator<Item = &'a str>,
    own: &str,
    keys: &[String],
) -> HashMap<String, String> {
    let wanted: HashSet<&str> = keys.iter().map(String::as_str).collect();
    let mut out = HashMap::new();
    for name in names {
        let splits =
            std::iter::once(("", name)).chain(name.match_indices('/').map(|(i, _)| (&name[..i], &name[i + 1..])));
        for (prefix, key) in splits {
            if prefix != own && wanted.contains(key) && !out.contains_key(key) {
                out.insert(key.to_string(), prefix.to_string());
            }
        }
    }
    out
}

/// Whether each key exists, from one listing of each folder the keys are in (for a backend whose
/// bulk delete does not say, or says nothing of missing keys). A listing that fails is the error
/// of each of its keys.
pub(crate) async fn exist_by_listing<S: Storage + ?Sized>(
    storage: &S,
    keys: &[&str],
) -> HashMap<String, Result<bool, String>> {
    let folder_of = |key: &str| key.rsplit_once('/').map(|(d, _)| format!("{d}/")).unwrap_or_default();
    let mut listed: HashMap<String, Result<HashSet<String>, String>> = HashMap::new();
    let mut out = HashMap::new();
    for key in keys {
        let folder = folder_of(key);
        if let std::collections::hash_map::Entry::Vacant(slot) = listed.entry(folder.clone()) {
            let found = storage.list(slot.key()).await.map_err(|e| e.to_string());
            slot.insert(found.map(|objects| objects.into_iter().map(|o| o.key).collect()));
        }
        let there = listed[&folder]
            .as_ref()
            .map(|set| set.contains(*key))
            .map_err(Clone::clone);
        out.insert(key.to_string(), there);
    }
    out
}

/// Rejects keys that could escape a backend's prefix or directory.
pub fn check_key(key: &str) -> Result<(), StorageError> {
    let bad = key.is_empty()
        || key.starts_with('/')
        || key
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..")
        || key.contains('\0');
    if bad {
        return Err(StorageError::Other(format!("invalid object key {key:?}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_backends_from_urls() {
        let o = StorageOptions::default();
        assert!(open("./backups", &o).unwrap().describe().ends_with("backups"));
        assert_eq!(open("file:///var/backups", &o).unwrap().describe(), "/var/backups");
        assert!(open("file://relative", &o).is_err());
        assert!(open("ftp://x", &o).is_err());
        assert!(open("", &o).is_err());
        assert!(open("s3://", &o).is_err());
        // The in-memory store exists for unit tests only: a cron job must never record backups
        // that exist nowhere.
        assert!(open("memory://", &o).is_err());
    }

    #[test]
    fn mistyped_urls_are_not_taken_for_folders() {
        let o = StorageOptions::default();
        for (typo, meant) in [
            ("s3:/bucket", "s3://bucket"),
            ("s3:bucket/x", "s3://bucket/x"),
            ("supabase:/b", "supabase://b"),
            ("s3//bucket", "s3://bucket"),
            ("supabase//b/p", "supabase://b/p"),
            ("file:/var/b", "file:///var/b"),
        ] {
            let err = open(typo, &o)
                .err()
                .unwrap_or_else(|| panic!("{typo} was accepted"))
                .to_string();
            assert!(err.contains("mistyped URL") && err.contains(meant), "{typo}: {err}");
        }
        for fine in ["./s3:/bucket", "backups", "/var/backups/s3:x", "./backups/2026"] {
            assert!(open(fine, &o).is_ok(), "{fine}");
        }
        assert_eq!(local_root("file:///var/b"), Some("/var/b".into()));
        assert_eq!(local_root("s3://b/p"), None);
    }

    #[test]
    fn keys_under_another_prefix_of_the_bucket_are_found() {
        let names = [
            "mindcare/a.sql",
            "new/mindcare/b.sql",
            "old/deep/mindcare/c.sql",
            "new/mindcare/a.sql",
        ];
        let keys: Vec<String> = ["mindcare/a.sql", "mindcare/b.sql", "mindcare/c.sql", "mindcare/d.sql"]
            .map(String::from)
            .to_vec();
        let found = keys_elsewhere(names, "new", &keys);
        assert_eq!(found.get("mindcare/a.sql").map(String::as_str), Some(""));
        assert_eq!(found.get("mindcare/b.sql"), None, "under our own prefix: not elsewhere");
        assert_eq!(found.get("mindcare/c.sql").map(String::as_str), Some("old/deep"));
        assert_eq!(found.get("mindcare/d.sql"), None);
        let at_root = keys_elsewhere(names, "", &keys);
        assert_eq!(
            at_root.get("mindcare/a.sql").map(String::as_str),
            Some("new"),
            "the root is our own prefix there"
        );
        assert_eq!(at_root.get("mindcare/b.sql").map(String::as_str), Some("new"));
    }

    #[test]
    fn rejects_escaping_keys() {
        assert!(check_key("a/b.sql").is_ok());
        for bad in ["", "/abs", "a/../b", "a//b", "./a"] {
            assert!(check_key(bad).is_err(), "{bad}");
        }
    }
}
