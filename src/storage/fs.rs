//! A local directory. Objects appear under their final name only complete: they are written to a
//! hidden temporary file beside it (`.<name>.<random>.partial`), synced, then hard-linked into
//! place, which also fails (rather than overwrites) when the name is taken. A backup's spool is
//! written straight into the object's folder ([`Storage::spool_dir`]), so storing it is one fsync
//! and a link, no copy. A crash can leave the temporary file behind: [`Storage::unfinished`] finds
//! those.
//!
//! "Not found" is only said once the directory itself is known to be there: an unmounted volume or
//! a mistyped path is an error, never a bucket with nothing in it.

use std::io;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use tokio::sync::OnceCell;

use super::{check_key, Access, ObjectInfo, Storage, StorageError, Stray, Unfinished};

pub struct LocalDir {
    root: PathBuf,
    /// Whether the directory was seen, checked once.
    seen: OnceCell<Result<(), String>>,
}

impl LocalDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalDir {
            root: root.into(),
            seen: OnceCell::new(),
        }
    }

    fn path(&self, key: &str) -> Result<PathBuf, StorageError> {
        check_key(key)?;
        no_links_below(&self.root, key)?;
        Ok(self.root.join(key))
    }

    /// The directory exists and can be listed.
    async fn seen(&self) -> Result<(), StorageError> {
        let root = self.root.clone();
        let result = self
            .seen
            .get_or_init(|| async move {
                let problem = match std::fs::metadata(&root) {
                    Ok(m) if m.is_dir() => match std::fs::read_dir(&root) {
                        Ok(_) => return Ok(()),
                        Err(e) => format!("it cannot be listed ({e})"),
                    },
                    Ok(_) => "it is not a directory".to_string(),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        "it does not exist (is the volume mounted?)".to_string()
                    }
                    Err(e) => e.to_string(),
                };
                Err(format!(
                    "cannot see the storage directory {}: {problem}; nothing was deleted or called missing. Fix --storage / BACKUP_STORAGE",
                    root.display()
                ))
            })
            .await;
        result.clone().map_err(StorageError::Other)
    }

    /// What `walk` finds under `prefix`, in key order.
    async fn listing(&self, prefix: &str, want: Want) -> Result<Vec<ObjectInfo>, StorageError> {
        self.seen().await?;
        let root = self.root.clone();
        let prefix = prefix.to_string();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            walk(&root, &start(&root, &prefix), &prefix, want, &mut out)?;
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await
        .map_err(|e| StorageError::Other(e.to_string()))?
    }

    /// `NotFound` for `key`, once the directory is known to be there.
    async fn absent(&self, key: &str) -> StorageError {
        match self.seen().await {
            Ok(()) => StorageError::NotFound(key.to_string()),
            Err(e) => e,
        }
    }

    async fn not_found_or(&self, e: io::Error, key: &str, doing: &str) -> StorageError {
        if e.kind() == io::ErrorKind::NotFound {
            self.absent(key).await
        } else if let Some(why) = not_regular(&e) {
            StorageError::Other(format!("{key}: {why}"))
        } else {
            StorageError::io(format!("{doing} {key}"), e)
        }
    }
}

/// Links `staged` to `dest` without overwriting, then removes `staged`. Not once a stop is asked
/// for: the caller would not hear of the object, so nobody would delete it again.
fn publish(staged: &Path, dest: &Path, key: &str) -> Result<(), StorageError> {
    let result = link_into_place(staged, dest, key);
    let _ = std::fs::remove_file(staged);
    result
}

/// Links the (synced) file `src` to `dest` without overwriting, and syncs the directory so the
/// name survives a crash. `src` stays.
fn link_into_place(src: &Path, dest: &Path, key: &str) -> Result<(), StorageError> {
    if crate::stop::commit_point().is_err() {
        return Err(StorageError::Other(format!("storing {key}: stopped by a signal")));
    }
    match std::fs::hard_link(src, dest) {
        Ok(()) => {
            let dir = dest.parent().expect("object paths have a parent");
            if let Err(e) = sync_dir(dir) {
                // Not known to survive a crash: not stored.
                let _ = std::fs::remove_file(dest);
                return Err(StorageError::io(format!("syncing {}", dir.display()), e));
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(StorageError::AlreadyExists(key.to_string())),
        Err(e) => Err(StorageError::io(format!("storing {}", dest.display()), e)),
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Creates the object's folder if needed, durably: a folder made here is synced into its parent.
fn ensure_dir(dir: &Path) -> Result<(), StorageError> {
    if dir.is_dir() {
        return Ok(());
    }
    let fail = |e| StorageError::io(format!("creating directory {}", dir.display()), e);
    std::fs::create_dir_all(dir).map_err(fail)?;
    if let Some(parent) = dir.parent() {
        sync_dir(parent).map_err(fail)?;
    }
    Ok(())
}

/// Whether `file` can be hard-linked into `dir`: the same filesystem.
fn same_filesystem(file: &Path, dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(file), std::fs::metadata(dir)) {
        (Ok(f), Ok(d)) => f.dev() == d.dev(),
        _ => false,
    }
}

/// Stores `src` under `dest`: on the same filesystem by syncing it and linking it into place (the
/// object is the caller's file, no copy), else as a synced copy.
fn store_file(src: &Path, dest: &Path, key: &str) -> Result<(), StorageError> {
    let dir = dest.parent().expect("object paths have a parent");
    ensure_dir(dir)?;
    if same_filesystem(src, dir) {
        let synced = std::fs::File::open(src).and_then(|f| f.sync_all());
        synced.map_err(|e| StorageError::io(format!("syncing {}", src.display()), e))?;
        match link_into_place(src, dest, key) {
            // A filesystem without hard links (or a rename race): copy instead.
            Err(StorageError::Io { error: source, .. })
                if matches!(
                    source.raw_os_error(),
                    Some(libc::EXDEV | libc::EPERM | libc::EOPNOTSUPP | libc::EMLINK)
                ) => {}
            other => return other,
        }
    }
    let staged = stage(dest, key, |out| {
        crate::stop::copy(&mut std::fs::File::open(src)?, out).map(|_| ())
    })?;
    publish(&staged, dest, key)
}

fn stage(
    dest: &Path,
    key: &str,
    write: impl FnOnce(&mut std::fs::File) -> io::Result<()>,
) -> Result<PathBuf, StorageError> {
    let dir = dest.parent().expect("object paths have a parent");
    ensure_dir(dir)?;
    let name = dest.file_name().and_then(|n| n.to_str()).unwrap_or("object");
    let staged = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".partial")
        .tempfile_in(dir)
        .map_err(|e| StorageError::io(format!("creating a temporary file in {}", dir.display()), e))?;
    let (mut file, path) = staged
        .keep()
        .map_err(|e| StorageError::io("keeping temporary file", e.error))?;
    let written = write(&mut file).and_then(|()| file.sync_all());
    if let Err(e) = written {
        let _ = std::fs::remove_file(&path);
        return Err(StorageError::io(format!("writing {key}"), e));
    }
    Ok(path)
}

#[async_trait]
impl Storage for LocalDir {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    async fn probe(&self, _access: Access) -> Result<(), StorageError> {
        self.seen().await
    }

    async fn put_file(&self, key: &str, path: &Path) -> Result<(), StorageError> {
        let dest = self.path(key)?;
        let src = path.to_path_buf();
        let key = key.to_string();
        crate::stop::blocking(move || store_file(&src, &dest, &key))
            .await
            .map_err(|e| StorageError::Other(e.to_string()))?
    }

    fn spool_dir(&self, key: &str) -> Option<PathBuf> {
        let dir = self.path(key).ok()?.parent()?.to_path_buf();
        ensure_dir(&dir).ok()?;
        Some(dir)
    }

    async fn put_bytes(&self, key: &str, bytes: Vec<u8>) -> Result<(), StorageError> {
        let dest = self.path(key)?;
        let key = key.to_string();
        crate::stop::blocking(move || {
            let staged = stage(&dest, &key, |out| io::Write::write_all(out, &bytes))?;
            publish(&staged, &dest, &key)
        })
        .await
        .map_err(|e| StorageError::Other(e.to_string()))?
    }

    async fn get_to_file(&self, key: &str, path: &Path) -> Result<u64, StorageError> {
        check_key(key)?;
        let (root, owned, dest) = (self.root.clone(), key.to_string(), path.to_path_buf());
        let copied = tokio::task::spawn_blocking(move || {
            let mut src = open_regular(&root, &owned)?;
            let mut out = std::fs::File::create(&dest)?;
            io::copy(&mut src, &mut out)
        })
        .await
        .map_err(|e| StorageError::Other(e.to_string()))?;
        match copied {
            Ok(n) => Ok(n),
            Err(e) => Err(self.not_found_or(e, key, "reading").await),
        }
    }

    async fn get_bytes(&self, key: &str) -> Result<Vec<u8>, StorageError> {
        check_key(key)?;
        let (root, owned) = (self.root.clone(), key.to_string());
        let read = tokio::task::spawn_blocking(move || {
            let mut bytes = Vec::new();
            io::Read::read_to_end(&mut open_regular(&root, &owned)?, &mut bytes).map(|_| bytes)
        })
        .await
        .map_err(|e| StorageError::Other(e.to_string()))?;
        match read {
            Ok(b) => Ok(b),
            Err(e) => Err(self.not_found_or(e, key, "reading").await),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        self.listing(prefix, Want::Objects).await
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let path = self.path(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.not_found_or(e, key, "deleting").await),
        }
    }

    async fn size(&self, key: &str) -> Result<Option<u64>, StorageError> {
        check_key(key)?;
        let (root, owned) = (self.root.clone(), key.to_string());
        let meta = tokio::task::spawn_blocking(move || open_regular(&root, &owned)?.metadata())
            .await
            .map_err(|e| StorageError::Other(e.to_string()))?;
        match meta {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => self.seen().await.map(|()| None),
            Err(e) => Err(self.not_found_or(e, key, "checking").await),
        }
    }

    async fn strays(&self, prefix: &str) -> Result<Vec<Stray>, StorageError> {
        let found = self.listing(prefix, Want::Strays).await?;
        Ok(found
            .into_iter()
            .map(|o| Stray {
                what: STRAY.to_string(),
                key: o.key,
            })
            .collect())
    }

    async fn unfinished(&self, prefix: &str) -> Result<Vec<Unfinished>, StorageError> {
        let found = self.listing(prefix, Want::Partials).await?;
        Ok(found
            .into_iter()
            .map(|o| Unfinished {
                id: o.key.clone(),
                key: o.key,
                started: o.modified,
            })
            .collect())
    }

    async fn discard_unfinished(&self, upload: &Unfinished) -> Result<(), StorageError> {
        let path = self.path(&upload.id)?;
        if !is_partial(&upload.id) {
            return Err(StorageError::Other(format!(
                "{} is not a temporary upload file: not removed",
                upload.id
            )));
        }
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.not_found_or(e, &upload.id, "removing").await),
        }
    }
}

/// One of our own temporary files: `.<name>.<random>.partial`.
fn is_partial(key: &str) -> bool {
    let name = key.rsplit('/').next().unwrap_or(key);
    name.starts_with('.') && name.ends_with(".partial")
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Want {
    /// Objects: regular files, hidden ones skipped.
    Objects,
    /// Our temporary `.partial` files, which a crash leaves behind.
    Partials,
    /// What is neither a folder nor a regular file (symbolic links, FIFOs, sockets, devices):
    /// never read, listed so `cleanup --orphans` can name them.
    Strays,
}

/// How a stray is described: the words `not_regular` uses too.
const STRAY: &str = "not a regular file (a symbolic link, FIFO, socket or device): never read, written through or deleted by this tool; remove it by hand";

/// Opens the object `key` (already checked by `check_key`) for reading without following a
/// symbolic link anywhere below `root`: each folder is opened relative to the one before with
/// `O_NOFOLLOW | O_DIRECTORY`, the object with `O_NOFOLLOW | O_NONBLOCK` (a FIFO is never waited
/// on), and it must be a regular file. So nothing outside the root is ever read, whatever the
/// bucket directory holds, and no check-then-open race lets a link in. The root itself may be a
/// link: the operator chose it.
fn open_regular(root: &Path, key: &str) -> io::Result<std::fs::File> {
    use std::ffi::CString;
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    let c = |s: &[u8]| CString::new(s).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput));
    let open_at = |dir: Option<&OwnedFd>, name: &CString, flags: libc::c_int| -> io::Result<OwnedFd> {
        use std::os::fd::AsRawFd;
        let at = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
        // SAFETY: `name` is a NUL-terminated string and `at` an open directory (or AT_FDCWD);
        // the returned descriptor is owned by nobody else.
        let fd = unsafe { libc::openat(at, name.as_ptr(), flags | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and is not owned elsewhere.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    };
    let mut dir = open_at(
        None,
        &c(root.as_os_str().as_bytes())?,
        libc::O_RDONLY | libc::O_DIRECTORY,
    )?;
    let mut parts = key.split('/').peekable();
    while let Some(part) = parts.next() {
        let name = c(part.as_bytes())?;
        if parts.peek().is_some() {
            dir = open_at(Some(&dir), &name, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW)?;
            continue;
        }
        let file = std::fs::File::from(open_at(
            Some(&dir),
            &name,
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK,
        )?);
        if !file.metadata()?.is_file() {
            return Err(io::Error::from_raw_os_error(libc::ELOOP));
        }
        return Ok(file);
    }
    Err(io::Error::from(io::ErrorKind::InvalidInput))
}

/// Why `e` (from `open_regular`) is a refusal rather than an ordinary error: a symbolic link (or
/// special file) met where an object or one of its folders should be.
fn not_regular(e: &io::Error) -> Option<&'static str> {
    matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)).then_some(STRAY)
}

/// Refuses to write or delete `key` when a folder on its way below `root` is a symbolic link:
/// what is written or deleted stays inside the root.
fn no_links_below(root: &Path, key: &str) -> Result<(), StorageError> {
    let mut path = root.to_path_buf();
    let folders = key.rsplit_once('/').map_or("", |(f, _)| f);
    for part in folders.split('/').filter(|p| !p.is_empty()) {
        path.push(part);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(StorageError::Other(format!("{key}: {} is {STRAY}", path.display())))
            }
            // Not a folder: writing fails with the OS's own error.
            Ok(m) if !m.is_dir() => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(StorageError::io(format!("checking {}", path.display()), e)),
        }
    }
    Ok(())
}

/// Collects regular files under `dir` whose key starts with `prefix`: objects, or our own hidden
/// temporary files.
/// Where a listing of `prefix` starts: the deepest folder the prefix names (`t/` lists `root/t`
/// alone, not every tenant's folder in turn: cleanup lists each tenant's folder, and walking the
/// whole bucket for each was quadratic in the number of tenants). A prefix with a hidden or odd
/// segment starts at the root, where `walk` applies its rules.
fn start(root: &Path, prefix: &str) -> PathBuf {
    let Some((folders, _)) = prefix.rsplit_once('/') else {
        return root.to_path_buf();
    };
    let plain = |s: &str| !s.is_empty() && !s.starts_with('.') && !s.contains('\\');
    // A folder that is a symbolic link is never listed through: the walk from the root meets it
    // as what it is.
    if folders.split('/').all(plain) && no_links_below(root, &format!("{folders}/")).is_ok() {
        root.join(folders)
    } else {
        root.to_path_buf()
    }
}

fn walk(root: &Path, dir: &Path, prefix: &str, want: Want, out: &mut Vec<ObjectInfo>) -> Result<(), StorageError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StorageError::io(format!("listing {}", dir.display()), e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| StorageError::io(format!("listing {}", dir.display()), e))?;
        let path = entry.path();
        let Ok(rel) = path.strip_prefix(root) else { continue };
        let key = rel.to_string_lossy().replace('\\', "/");
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        let meta = entry
            .metadata()
            .map_err(|e| StorageError::io(format!("reading {}", path.display()), e))?;
        if meta.is_dir() {
            let dir_key = format!("{key}/");
            // A hidden folder (the bucket's `.keys/`) is listed only when the prefix names it.
            let named = hidden && prefix.starts_with(&dir_key);
            if (!hidden || named) && (dir_key.starts_with(prefix) || prefix.starts_with(&dir_key)) {
                walk(root, &path, prefix, want, out)?;
            }
        } else if want == Want::Strays {
            let within = key.starts_with(prefix) || prefix.starts_with(&format!("{key}/"));
            if !meta.is_file() && within {
                out.push(ObjectInfo {
                    key,
                    size: 0,
                    modified: None,
                });
            }
        } else if meta.is_file() && key.starts_with(prefix) && (hidden == (want == Want::Partials)) {
            if want == Want::Partials && !is_partial(&key) {
                continue;
            }
            let modified = meta.modified().ok().map(chrono::DateTime::<chrono::Utc>::from);
            out.push(ObjectInfo {
                key,
                size: meta.len(),
                modified,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_never_overwrites_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDir::new(dir.path());
        store.put_bytes("t/a.sql", b"one".to_vec()).await.unwrap();
        let err = store.put_bytes("t/a.sql", b"two".to_vec()).await.unwrap_err();
        assert!(matches!(err, StorageError::AlreadyExists(_)));
        assert_eq!(store.get_bytes("t/a.sql").await.unwrap(), b"one");
        let names: Vec<_> = std::fs::read_dir(dir.path().join("t"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[tokio::test]
    async fn a_hidden_folder_is_listed_only_when_named() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDir::new(dir.path());
        store.put_bytes(".keys/t/k.age", b"k".to_vec()).await.unwrap();
        store.put_bytes("t/a", b"x".to_vec()).await.unwrap();
        let keys = |p: &'static str| {
            let store = &store;
            async move {
                store
                    .list(p)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|o| o.key)
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(keys(".keys/t/").await, [".keys/t/k.age"]);
        assert_eq!(keys("").await, ["t/a"]);
        assert_eq!(keys("t/").await, ["t/a"]);
    }

    #[tokio::test]
    async fn links_and_fifos_are_strays_never_objects() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDir::new(dir.path().join("root"));
        store.put_bytes("t/a", b"x".to_vec()).await.unwrap();
        std::fs::write(dir.path().join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), dir.path().join("root/t/b")).unwrap();
        std::os::unix::fs::symlink(dir.path(), dir.path().join("root/u")).unwrap();
        let objects: Vec<_> = store.list("").await.unwrap().into_iter().map(|o| o.key).collect();
        assert_eq!(objects, ["t/a"]);
        let strays: Vec<_> = store.strays("").await.unwrap().into_iter().map(|o| o.key).collect();
        assert_eq!(strays, ["t/b", "u"]);
        assert!(store.get_bytes("t/b").await.is_err());
        assert!(store.size("t/b").await.is_err());
        assert!(store.get_bytes("u/secret").await.is_err());
        assert!(store.list("u/").await.unwrap().is_empty());
        assert!(store.put_bytes("u/new", b"x".to_vec()).await.is_err());
        assert!(store.delete("u/secret").await.is_err());
        assert!(dir.path().join("secret").exists() && !dir.path().join("new").exists());
    }

    #[tokio::test]
    async fn list_size_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDir::new(dir.path());
        let src = dir.path().join("src");
        std::fs::write(&src, b"hello").unwrap();
        store.put_file("t/b", &src).await.unwrap();
        store.put_bytes("t/a", b"x".to_vec()).await.unwrap();
        store.put_bytes("u/c", b"x".to_vec()).await.unwrap();
        let keys: Vec<_> = store.list("t/").await.unwrap().into_iter().map(|o| o.key).collect();
        assert_eq!(keys, ["t/a", "t/b"]);
        store.put_bytes("t/d/e", b"x".to_vec()).await.unwrap();
        store.put_bytes("tt/f", b"x".to_vec()).await.unwrap();
        let keys = |prefix: &'static str| {
            let store = &store;
            async move {
                store
                    .list(prefix)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|o| o.key)
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(keys("t/").await, ["t/a", "t/b", "t/d/e"]);
        assert_eq!(keys("t/d/").await, ["t/d/e"]);
        assert_eq!(keys("t").await, ["t/a", "t/b", "t/d/e", "tt/f"]);
        assert_eq!(keys("t/b").await, ["t/b"]);
        assert_eq!(keys("").await.len(), 6, "with the test's own src file");
        assert!(keys("nope/").await.is_empty());
        assert!(keys("../").await.is_empty());
        store.delete("t/d/e").await.unwrap();
        store.delete("tt/f").await.unwrap();
        assert_eq!(store.size("t/b").await.unwrap(), Some(5));
        store.delete("t/b").await.unwrap();
        assert_eq!(store.size("t/b").await.unwrap(), None);
        assert!(matches!(store.delete("t/b").await, Err(StorageError::NotFound(_))));
    }
}
