//! An in-memory bucket for unit tests.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use async_trait::async_trait;

use super::{check_key, Access, ObjectInfo, Storage, StorageError};

#[derive(Default)]
pub struct Memory {
    objects: Mutex<BTreeMap<String, Vec<u8>>>,
}

impl Memory {
    fn insert(&self, key: &str, bytes: Vec<u8>) -> Result<(), StorageError> {
        check_key(key)?;
        let mut objects = self.objects.lock().expect("memory storage lock");
        if objects.contains_key(key) {
            return Err(StorageError::AlreadyExists(key.to_string()));
        }
        objects.insert(key.to_string(), bytes);
        Ok(())
    }

    fn read(&self, key: &str) -> Result<Vec<u8>, StorageError> {
        let objects = self.objects.lock().expect("memory storage lock");
        objects
            .get(key)
            .cloned()
            .ok_or_else(|| StorageError::NotFound(key.to_string()))
    }
}

#[async_trait]
impl Storage for Memory {
    fn describe(&self) -> String {
        "memory://".to_string()
    }

    async fn probe(&self, _access: Access) -> Result<(), StorageError> {
        Ok(())
    }

    async fn put_file(&self, key: &str, path: &Path) -> Result<(), StorageError> {
        let bytes = std::fs::read(path).map_err(|e| StorageError::io(format!("reading {}", path.display()), e))?;
        self.insert(key, bytes)
    }

    async fn put_bytes(&self, key: &str, bytes: Vec<u8>) -> Result<(), StorageError> {
        self.insert(key, bytes)
    }

    async fn get_to_file(&self, key: &str, path: &Path) -> Result<u64, StorageError> {
        let bytes = self.read(key)?;
        std::fs::write(path, &bytes).map_err(|e| StorageError::io(format!("writing {}", path.display()), e))?;
        Ok(bytes.len() as u64)
    }

    async fn get_bytes(&self, key: &str) -> Result<Vec<u8>, StorageError> {
        self.read(key)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        let objects = self.objects.lock().expect("memory storage lock");
        Ok(objects
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| ObjectInfo {
                key: k.clone(),
                size: v.len() as u64,
                modified: None,
            })
            .collect())
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let mut objects = self.objects.lock().expect("memory storage lock");
        objects
            .remove(key)
            .map(|_| ())
            .ok_or_else(|| StorageError::NotFound(key.to_string()))
    }

    async fn size(&self, key: &str) -> Result<Option<u64>, StorageError> {
        let objects = self.objects.lock().expect("memory storage lock");
        Ok(objects.get(key).map(|v| v.len() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn behaves_like_a_bucket() {
        let m = Memory::default();
        m.put_bytes("a/1", b"x".to_vec()).await.unwrap();
        assert!(matches!(
            m.put_bytes("a/1", vec![]).await,
            Err(StorageError::AlreadyExists(_))
        ));
        assert_eq!(m.size("a/1").await.unwrap(), Some(1));
        assert_eq!(m.list("a/").await.unwrap().len(), 1);
        m.delete("a/1").await.unwrap();
        assert!(matches!(m.get_bytes("a/1").await, Err(StorageError::NotFound(_))));
    }
}
