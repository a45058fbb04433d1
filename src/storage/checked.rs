//! The backend contract, kept once for every backend (as rustic's backends wrap one another): a
//! backend does its I/O and reports what it saw; this wrapper decides what may be called absent.
//! A "not found", a `None` size, an empty or short listing are only passed on once the backend's
//! [`probe`](Storage::probe) has shown the bucket exists and the credentials can list and read it;
//! before that they are the probe's error (an unmounted volume, a missing bucket, a key row-level
//! security blinds), never a proven absence. Each backend caches its own probe, so this costs one
//! probe per process.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;

use super::{Access, GrowingFile, ObjectInfo, Storage, StorageError, Stray, Unfinished};

pub struct Checked {
    inner: Arc<dyn Storage>,
}

impl Checked {
    pub fn wrap(inner: Arc<dyn Storage>) -> Arc<dyn Storage> {
        Arc::new(Checked { inner })
    }

    /// The bucket is visible: what absence rests on.
    async fn seen(&self) -> Result<(), StorageError> {
        self.inner.probe(Access::Read).await
    }

    /// `e`, unless it is a "not found" the probe does not back.
    async fn proven(&self, e: StorageError) -> StorageError {
        match e {
            StorageError::NotFound(key) => match self.seen().await {
                Ok(()) => StorageError::NotFound(key),
                Err(e) => e,
            },
            other => other,
        }
    }
}

#[async_trait]
impl Storage for Checked {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn probe(&self, access: Access) -> Result<(), StorageError> {
        self.inner.probe(access).await
    }

    async fn put_file(&self, key: &str, path: &Path) -> Result<(), StorageError> {
        self.inner.put_file(key, path).await
    }

    async fn put_growing(&self, key: &str, file: GrowingFile) -> Result<(), StorageError> {
        self.inner.put_growing(key, file).await
    }

    fn spool_dir(&self, key: &str) -> Option<PathBuf> {
        self.inner.spool_dir(key)
    }

    async fn put_bytes(&self, key: &str, bytes: Vec<u8>) -> Result<(), StorageError> {
        self.inner.put_bytes(key, bytes).await
    }

    async fn get_to_file(&self, key: &str, path: &Path) -> Result<u64, StorageError> {
        match self.inner.get_to_file(key, path).await {
            Err(e) => Err(self.proven(e).await),
            ok => ok,
        }
    }

    async fn get_bytes(&self, key: &str) -> Result<Vec<u8>, StorageError> {
        match self.inner.get_bytes(key).await {
            Err(e) => Err(self.proven(e).await),
            ok => ok,
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        self.seen().await?;
        self.inner.list(prefix).await
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        match self.inner.delete(key).await {
            Err(e) => Err(self.proven(e).await),
            ok => ok,
        }
    }

    async fn size(&self, key: &str) -> Result<Option<u64>, StorageError> {
        match self.inner.size(key).await? {
            None => self.seen().await.map(|()| None),
            some => Ok(some),
        }
    }

    async fn delete_many(&self, keys: &[String]) -> Vec<Result<(), StorageError>> {
        let mut out = Vec::with_capacity(keys.len());
        for result in self.inner.delete_many(keys).await {
            out.push(match result {
                Err(e) => Err(self.proven(e).await),
                ok => ok,
            });
        }
        out
    }

    async fn elsewhere(&self, keys: &[String]) -> Result<HashMap<String, String>, StorageError> {
        self.seen().await?;
        self.inner.elsewhere(keys).await
    }

    async fn unfinished(&self, prefix: &str) -> Result<Vec<Unfinished>, StorageError> {
        self.seen().await?;
        self.inner.unfinished(prefix).await
    }

    async fn strays(&self, prefix: &str) -> Result<Vec<Stray>, StorageError> {
        self.seen().await?;
        self.inner.strays(prefix).await
    }

    async fn discard_unfinished(&self, upload: &Unfinished) -> Result<(), StorageError> {
        match self.inner.discard_unfinished(upload).await {
            Err(e) => Err(self.proven(e).await),
            ok => ok,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backend that cannot see its bucket and, like Supabase with a blinded key, answers every
    /// question with "nothing there".
    struct Blind;

    #[async_trait]
    impl Storage for Blind {
        fn describe(&self) -> String {
            "blind://".into()
        }
        async fn probe(&self, _: Access) -> Result<(), StorageError> {
            Err(StorageError::Other("cannot see blind://".into()))
        }
        async fn put_bytes(&self, _: &str, _: Vec<u8>) -> Result<(), StorageError> {
            Ok(())
        }
        async fn get_to_file(&self, key: &str, _: &Path) -> Result<u64, StorageError> {
            Err(StorageError::NotFound(key.into()))
        }
        async fn get_bytes(&self, key: &str) -> Result<Vec<u8>, StorageError> {
            Err(StorageError::NotFound(key.into()))
        }
        async fn list(&self, _: &str) -> Result<Vec<ObjectInfo>, StorageError> {
            Ok(Vec::new())
        }
        async fn delete(&self, key: &str) -> Result<(), StorageError> {
            Err(StorageError::NotFound(key.into()))
        }
        async fn size(&self, _: &str) -> Result<Option<u64>, StorageError> {
            Ok(None)
        }
    }

    #[tokio::test]
    async fn nothing_is_absent_until_the_probe_passed() {
        let blind = Checked::wrap(Arc::new(Blind));
        let unseen =
            |r: Result<(), StorageError>| matches!(r, Err(StorageError::Other(m)) if m == "cannot see blind://");
        assert!(unseen(blind.get_bytes("t/a").await.map(|_| ())));
        assert!(unseen(
            blind.get_to_file("t/a", Path::new("/nowhere")).await.map(|_| ())
        ));
        assert!(unseen(blind.list("t/").await.map(|_| ())));
        assert!(unseen(blind.delete("t/a").await));
        assert!(unseen(blind.size("t/a").await.map(|_| ())));
        assert!(unseen(blind.unfinished("t/").await.map(|_| ())));
        let many = blind.delete_many(&["t/a".into(), "t/b".into()]).await;
        assert!(many.into_iter().all(unseen));

        let seen = Checked::wrap(Arc::new(super::super::Memory::default()));
        assert!(matches!(seen.get_bytes("t/a").await, Err(StorageError::NotFound(_))));
        assert_eq!(seen.size("t/a").await.unwrap(), None);
    }
}
