//! A backup on the operator's disk (`restore --path FILE`, `verify --path FILE`): the bucket is
//! down, or the file came from the application's download button. It is untrusted input like any
//! object: its manifest, when one lies beside it (`FILE.manifest.json`), is held to the same
//! claims, signature and checksum as in the bucket; without one, its tenant is told by its name
//! (the tool's and the application's `backup-<format>-<schema>-<time>…`) or by `--from-tenant`,
//! and its format and compression by its content. It is copied into a private temporary file
//! before anything reads it, so it cannot change between the check and the load.

use std::io::Read;
use std::path::Path;

use anyhow::{Context as _, Result};
use chrono::{DateTime, Utc};

use super::source::Source;
use crate::backup::compress::Compression;
use crate::backup::format::DumpFormat;
use crate::backup::key::ObjectKey;
use crate::backup::manifest::Manifest;
use crate::error::UsageError;

/// A manifest is a few hundred bytes; a larger file beside the backup is not one.
const MAX_MANIFEST: u64 = 1 << 20;

/// The backup at `path`, described as [`super::resolve_at`] describes a bucket object.
pub fn source(path: &Path, tenant: &str, from_tenant: Option<&str>) -> Result<Source> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| UsageError::new(format!("--path {shown}: {e}")))?;
    if !meta.is_file() {
        return Err(UsageError::new(format!("--path {shown} is not a regular file")).into());
    }
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| UsageError::new(format!("--path {shown}: the file name is not UTF-8")))?
        .to_string();
    let manifest = read_manifest(path)?;
    let expected = from_tenant.unwrap_or(tenant);
    if let Some(m) = manifest {
        // The manifest must be this file's: the object it describes has this file's name.
        if m.key.rsplit('/').next() != Some(name.as_str()) {
            anyhow::bail!(
                "{shown}: the manifest beside it is the manifest of {}, not of a file named {name}: a backup was copied over another (or renamed); nothing was read",
                m.key
            );
        }
        refuse_other_owner(&m.tenant, tenant, from_tenant, &shown.to_string())?;
        tracing::info!("{shown}: backup {} of {} (its manifest is beside it)", m.key, m.tenant);
        return Ok(Source {
            key: m.key.clone(),
            record_id: None,
            created_at: m.started_at,
            source_schema: m.tenant.clone(),
            format: m.format,
            compression: m.compression,
            size: Some(m.size),
            decrypt: None,
            path: Some(path.to_path_buf()),
            manifest: Some(m),
        });
    }
    let owner = owner_by_name(&name);
    if let Some(o) = &owner {
        refuse_other_owner(o, tenant, from_tenant, &shown.to_string())?;
    } else if from_tenant.is_none() {
        return Err(UsageError::new(format!(
            "cannot tell which tenant {shown} belongs to (no manifest beside it, and its name is not a backup's name): restore it with --from-tenant SCHEMA (--from-tenant {tenant} if it is {tenant}'s own), or give it the name the backup had (backup-<format>-<schema>-<YYYY-MM-DD-HHMMSS>.<ext>, as the history's file_name says)"
        ))
        .into());
    }
    let source_schema = owner.unwrap_or_else(|| expected.to_string());
    let key = format!("{source_schema}/{name}");
    let (format, compression) = sniff(path, &key)?;
    let created_at = ObjectKey::parse(&key)
        .map(|k| k.created.and_utc())
        .or_else(|| meta.modified().ok().map(DateTime::<Utc>::from))
        .context("cannot tell when the file was made")?;
    tracing::info!(
        "{shown}: a {} backup of {source_schema} ({}), without a manifest",
        format.key_name(),
        compression.name()
    );
    Ok(Source {
        key,
        record_id: None,
        created_at,
        source_schema,
        format,
        compression,
        size: Some(meta.len()),
        manifest: None,
        decrypt: None,
        path: Some(path.to_path_buf()),
    })
}

/// Copies the file into the restore's private temporary file; returns its size.
pub async fn copy(from: &Path, to: &Path) -> Result<u64> {
    let (from, to) = (from.to_path_buf(), to.to_path_buf());
    tokio::task::spawn_blocking(move || -> Result<u64> {
        let mut input = std::fs::File::open(&from).with_context(|| format!("opening {}", from.display()))?;
        let mut output = std::fs::OpenOptions::new().write(true).truncate(true).open(&to)?;
        let n = std::io::copy(&mut input, &mut output).with_context(|| format!("reading {}", from.display()))?;
        output.sync_all()?;
        Ok(n)
    })
    .await?
}

fn read_manifest(path: &Path) -> Result<Option<Manifest>> {
    let mut beside = path.as_os_str().to_owned();
    beside.push(".manifest.json");
    let beside = std::path::PathBuf::from(beside);
    let file = match std::fs::File::open(&beside) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(anyhow::Error::new(e).context(format!("opening {}", beside.display()))),
    };
    let mut bytes = Vec::new();
    file.take(MAX_MANIFEST + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_MANIFEST {
        anyhow::bail!("{} is not a manifest (larger than 1 MiB)", beside.display());
    }
    Manifest::from_bytes(&bytes)
        .map(Some)
        .map_err(|e| anyhow::anyhow!("{} is not a manifest ({})", beside.display(), e.classify_name()))
}

trait Classify {
    fn classify_name(&self) -> &'static str;
}

impl Classify for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "unreadable",
            serde_json::error::Category::Syntax => "invalid JSON",
            serde_json::error::Category::Data => "not a manifest's fields",
            serde_json::error::Category::Eof => "it ends early",
        }
    }
}

fn refuse_other_owner(owner: &str, tenant: &str, from_tenant: Option<&str>, shown: &str) -> Result<(), UsageError> {
    match from_tenant {
        Some(f) if f != owner => Err(UsageError::new(format!(
            "{shown} is a backup of {owner}, not of {f} (--from-tenant)"
        ))),
        None if owner != tenant => Err(UsageError::new(format!(
            "{shown} is a backup of tenant {owner}, not {tenant}: add --from-tenant {owner} to restore it into {tenant} anyway"
        ))),
        _ => Ok(()),
    }
}

/// The tenant a backup's file name names: `backup-<format>-<schema>-<time>…` (the tool's and the
/// application's names).
fn owner_by_name(name: &str) -> Option<String> {
    let rest = name.strip_prefix("backup-").or_else(|| name.strip_prefix("auto-"))?;
    let (_, rest) = rest.split_once('-')?;
    rest.match_indices('-')
        .map(|(i, _)| &rest[..i])
        .find(|schema| ObjectKey::parse(&format!("{schema}/{name}")).is_some())
        .map(str::to_string)
}

/// Format and compression from the bytes: gzip and zstd by their magic numbers, then pg_dump's
/// custom archive (`PGDMP`), json (`{` or `[`), or plain SQL. An encrypted file is read with its
/// manifest or by its `.age` name.
fn sniff(path: &Path, key: &str) -> Result<(DumpFormat, Compression)> {
    let mut head = [0u8; 32];
    let n = read_up_to(&mut std::fs::File::open(path)?, &mut head)?;
    let head = &head[..n];
    if head.starts_with(b"age-encryption.org/") {
        if !key.ends_with(".age") {
            return Err(UsageError::new(format!(
                "{} is encrypted: put its manifest beside it ({}.manifest.json), or keep the .age at the end of its name",
                path.display(),
                path.display()
            ))
            .into());
        }
        return Ok((
            DumpFormat::from_key(key),
            Compression::from_ext(key.trim_end_matches(".age")),
        ));
    }
    let compression = if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip { level: 6 }
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd { level: 3 }
    } else {
        Compression::None
    };
    let mut plain = [0u8; 512];
    let n = read_up_to(
        &mut *super::access::open_plain(path, compression, None).context("reading the file")?,
        &mut plain,
    )
    .with_context(|| format!("{}: not a {} file", path.display(), compression.name()))?;
    let text = &plain[..n];
    let first = text
        .iter()
        .find(|b| !b.is_ascii_whitespace() && !matches!(b, 0xEF | 0xBB | 0xBF));
    let format = if text.starts_with(b"PGDMP") {
        DumpFormat::Custom
    } else if matches!(first, Some(b'{' | b'[')) {
        DumpFormat::Json
    } else {
        DumpFormat::Plain
    };
    Ok((format, compression))
}

fn read_up_to(input: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match input.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tenant_a_name_says() {
        assert_eq!(
            owner_by_name("backup-json-clinica_demo-2025-01-10-120000.json").as_deref(),
            Some("clinica_demo")
        );
        assert_eq!(
            owner_by_name("auto-sql-mind-care-2026-11-22-220101-3.sql.zst").as_deref(),
            Some("mind-care")
        );
        assert_eq!(owner_by_name("clinic.sql"), None);
        assert_eq!(owner_by_name("backup-json-x.json"), None);
    }
}
