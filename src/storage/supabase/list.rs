//! Listing: list-v2 with a cursor (names compared case-sensitively, however deep), or, on servers
//! before it (v1.19), one folder level a call from the prefix's own folder.

use reqwest::Method;
use serde::Deserialize;

use super::names::encode_segment;
use super::{Supabase, PAGE};
use crate::storage::{ObjectInfo, StorageError};

impl Supabase {
    pub(super) fn prefix_of(&self, key_prefix: &str) -> String {
        if self.prefix.is_empty() {
            key_prefix.to_string()
        } else {
            format!("{}/{key_prefix}", self.prefix)
        }
    }

    /// Every object whose name starts with the prefix: list-v2 pages with a cursor, names compared
    /// case-sensitively, however deep. `None` when the server has no list-v2 (before v1.19).
    pub(super) async fn list_v2(&self, key_prefix: &str) -> Result<Option<Vec<ObjectInfo>>, StorageError> {
        let Some(entries) = self.list_v2_names(&self.prefix_of(key_prefix)).await? else {
            return Ok(None);
        };
        let mut out = Vec::new();
        for o in entries {
            let Some(key) = self.key_of(&o.name) else { continue };
            if key.starts_with(key_prefix) {
                out.push(ObjectInfo {
                    key,
                    size: o.metadata.and_then(|m| m.size).unwrap_or(0),
                    modified: o.updated_at,
                });
            }
        }
        Ok(Some(out))
    }

    /// Every object of the bucket whose full name (this storage's prefix included) starts with
    /// `full`, by list-v2; `None` when the server has no list-v2.
    pub(super) async fn list_v2_names(&self, full: &str) -> Result<Option<Vec<Entry>>, StorageError> {
        let path = format!("/object/list-v2/{}", encode_segment(&self.bucket));
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut body = serde_json::json!({
                "prefix": full, "limit": PAGE, "with_delimiter": false,
                "sortBy": {"column": "name", "order": "asc"}
            });
            if let Some(c) = &cursor {
                body["cursor"] = serde_json::Value::from(c.as_str());
            }
            let resp = match self
                .exchange("listing the bucket", || self.request(Method::POST, &path).json(&body))
                .await?
            {
                Ok(r) => r,
                // fastify's "Route … not found": a server older than list-v2.
                Err(f) if cursor.is_none() && f.http == 404 && f.body.contains("Route ") => return Ok(None),
                Err(f) => return Err(self.fail(full, &f)),
            };
            let page: ListV2 = self
                .timeouts
                .json(resp)
                .await
                .map_err(|e| StorageError::Other(format!("reading a bucket listing: {e}")))?;
            out.extend(page.objects.into_iter().filter(|o| o.id.is_some()));
            match (page.has_next, page.next_cursor) {
                (true, Some(next)) if cursor.as_ref() != Some(&next) => cursor = Some(next),
                (true, _) => {
                    return Err(StorageError::Other(
                        "the bucket listing said there is more but gave no new cursor".into(),
                    ))
                }
                (false, _) => return Ok(Some(out)),
            }
        }
    }

    /// Servers before list-v2: one folder level a call, every page, starting at the prefix's own
    /// folder and going only into folders that can hold names with the prefix. That server
    /// matches folders case-insensitively, so a listing may show more than is there, never less:
    /// cleanup checks each object it would act on by its exact name before deleting a row.
    pub(super) async fn list_v1(&self, key_prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        let mut out = Vec::new();
        let start = key_prefix
            .rsplit_once('/')
            .map(|(d, _)| d.to_string())
            .unwrap_or_default();
        let mut folders = vec![start];
        while let Some(rel) = folders.pop() {
            let folder = self.prefix_of(&rel);
            let folder = folder.trim_end_matches('/');
            for e in self.list_folder(folder).await? {
                let key = if rel.is_empty() {
                    e.name.clone()
                } else {
                    format!("{rel}/{}", e.name)
                };
                if e.id.is_none() {
                    let dir = format!("{key}/");
                    if dir.starts_with(key_prefix) || key_prefix.starts_with(&dir) {
                        folders.push(key);
                    }
                } else if key.starts_with(key_prefix) {
                    out.push(ObjectInfo {
                        size: e.metadata.and_then(|m| m.size).unwrap_or(0),
                        modified: e.updated_at,
                        key,
                    });
                }
            }
        }
        Ok(out)
    }

    /// One folder level, every page (`POST /object/list/<bucket>`).
    async fn list_folder(&self, folder: &str) -> Result<Vec<Entry>, StorageError> {
        let path = format!("/object/list/{}", encode_segment(&self.bucket));
        let mut out = Vec::new();
        let mut offset = 0;
        loop {
            let body = serde_json::json!({
                "prefix": folder, "limit": PAGE, "offset": offset,
                "sortBy": {"column": "name", "order": "asc"}
            });
            let resp = self
                .send("listing the bucket", folder, || {
                    self.request(Method::POST, &path).json(&body)
                })
                .await?;
            let page: Vec<Entry> = self
                .timeouts
                .json(resp)
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
struct ListV2 {
    #[serde(rename = "hasNext", default)]
    has_next: bool,
    #[serde(rename = "nextCursor")]
    next_cursor: Option<String>,
    #[serde(default)]
    objects: Vec<Entry>,
}

#[derive(Deserialize)]
pub(super) struct Entry {
    pub name: String,
    /// `null` for folders.
    id: Option<String>,
    updated_at: Option<chrono::DateTime<chrono::Utc>>,
    metadata: Option<EntryMeta>,
}

#[derive(Deserialize)]
struct EntryMeta {
    size: Option<u64>,
}
