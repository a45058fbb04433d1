//! Restore, atomically, keeping the history.
//!
//! The whole restore is one psql session fed on stdin: `BEGIN`, rename the live schema aside, the
//! dump (which recreates the schema), carry over the newer history rows, `COMMIT`. psql runs with
//! `ON_ERROR_STOP`, and `COMMIT` is sent only once the whole dump has streamed through complete, so
//! any failure (a bad statement, a truncated or corrupt object, a lock timeout) ends the session
//! without committing: the live schema is exactly as before.

use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result};
use chrono::{DateTime, Utc};
use serde::Serialize;
use tempfile::NamedTempFile;
use tokio_postgres::types::Type;
use tokio_postgres::Client;

use crate::backup::compress::Compression;
use crate::backup::key::ObjectKey;
use crate::backup::manifest::Manifest;
use crate::backup::spool::sha256_file;
use crate::error::UsageError;
use crate::pg::catalog::{BackupRecord, Catalog, Tenant};
use crate::pg::dumpscan::PlainDumpScanner;
use crate::pg::sql::quote_ident;
use crate::pg::target::DbTarget;
use crate::pg::tools::{apply_env, DumpFormat};
use crate::storage::{Storage, StorageError};

/// Which backup to restore.
#[derive(Clone, Debug)]
pub enum Which {
    Id(i64),
    Latest,
    Key(String),
}

/// A backup, resolved and described.
#[derive(Clone, Debug, Serialize)]
pub struct Source {
    pub key: String,
    pub record_id: Option<i64>,
    /// When the backup was taken: rows of the history newer than this are carried over.
    pub created_at: DateTime<Utc>,
    /// The schema the dump creates.
    pub source_schema: String,
    #[serde(skip)]
    pub format: DumpFormat,
    #[serde(skip)]
    pub compression: Compression,
    pub size: Option<u64>,
    pub manifest: Option<Manifest>,
}

/// Finds the backup and checks it belongs to `tenant` (or to `from_tenant`, when given).
pub async fn resolve(
    catalog: &Catalog,
    client: &Client,
    storage: &dyn Storage,
    tenant: &Tenant,
    which: &Which,
    from_tenant: Option<&str>,
) -> Result<Source> {
    let schema = &tenant.schema_name;
    let history_of = from_tenant.unwrap_or(schema);
    let records = catalog.records(client, history_of).await?;
    let record: Option<BackupRecord> = match which {
        Which::Id(id) => Some(records.iter().find(|r| r.id == *id).cloned().ok_or_else(|| {
            UsageError::new(format!(
                "backup id {id} not found in {history_of}'s history: run `tenant-backup list --tenant {history_of}`"
            ))
        })?),
        Which::Latest => Some(
            records
                .first()
                .cloned()
                .ok_or_else(|| UsageError::new(format!("{history_of} has no backups yet: nothing to restore")))?,
        ),
        Which::Key(key) => records.iter().find(|r| &r.file_path == key).cloned(),
    };
    let key = match (&record, which) {
        (Some(r), _) => r.file_path.clone(),
        (None, Which::Key(k)) => k.clone(),
        (None, _) => unreachable!("ids and latest always resolve to a record"),
    };
    let manifest = match storage.get_bytes(&ObjectKey::manifest_key(&key)).await {
        Ok(bytes) => Some(Manifest::from_bytes(&bytes).with_context(|| format!("reading the manifest of {key}"))?),
        Err(StorageError::NotFound(_)) => None,
        Err(e) => return Err(anyhow::Error::new(e).context(format!("reading the manifest of {key}"))),
    };
    let parsed = ObjectKey::parse(&key);
    let owner = manifest
        .as_ref()
        .map(|m| m.tenant.clone())
        .or_else(|| parsed.as_ref().map(|p| p.schema.clone()));
    let source_schema = match (&owner, from_tenant) {
        (Some(o), Some(f)) if o != f => {
            return Err(UsageError::new(format!("{key} is a backup of {o}, not of {f} (--from-tenant)")).into())
        }
        (Some(o), None) if o != schema => {
            return Err(UsageError::new(format!(
            "{key} is a backup of tenant {o}, not {schema}: add --from-tenant {o} to restore it into {schema} anyway"
        ))
            .into())
        }
        (Some(o), _) => o.clone(),
        (None, Some(f)) => f.to_string(),
        (None, None) if record.is_some() => schema.clone(),
        (None, None) => {
            return Err(UsageError::new(format!(
                "cannot tell which tenant {key} belongs to (no manifest, unknown name): add --from-tenant SCHEMA"
            ))
            .into())
        }
    };
    let format = match manifest.as_ref().map(|m| m.format.as_str()) {
        Some("dump") => DumpFormat::Custom,
        Some("sql") => DumpFormat::Plain,
        Some("json") => DumpFormat::Json,
        Some(other) => anyhow::bail!("{key} has format {other:?}, which this version cannot restore"),
        None if key.ends_with(".dump") || key.contains(".dump.") => DumpFormat::Custom,
        None if key.ends_with(".json") || key.contains(".json.") => DumpFormat::Json,
        None => DumpFormat::Plain,
    };
    let created_at = record
        .as_ref()
        .map(|r| r.created_at)
        .or_else(|| manifest.as_ref().map(|m| m.started_at))
        .or_else(|| parsed.as_ref().map(|p| p.created.and_utc()))
        .with_context(|| format!("cannot tell when {key} was taken"))?;
    Ok(Source {
        compression: Compression::from_ext(&key),
        record_id: record.as_ref().map(|r| r.id),
        size: manifest
            .as_ref()
            .map(|m| m.size)
            .or(record.as_ref().map(|r| r.file_size as u64)),
        key,
        created_at,
        source_schema,
        format,
        manifest,
    })
}

/// Downloads the object to a temporary file and checks it against its manifest before anything
/// runs. Backups without a manifest (made by the old application) pass with a warning.
pub async fn fetch_verified(storage: &dyn Storage, source: &Source) -> Result<NamedTempFile> {
    let file = tempfile::Builder::new()
        .prefix("tenant-backup-restore-")
        .tempfile()
        .context("creating a temporary file")?;
    let size = storage
        .get_to_file(&source.key, file.path())
        .await
        .with_context(|| format!("downloading {} from {}", source.key, storage.describe()))?;
    match &source.manifest {
        Some(m) => {
            let path = file.path().to_path_buf();
            let sha = tokio::task::spawn_blocking(move || sha256_file(&path)).await??;
            if size != m.size || sha != m.sha256 {
                anyhow::bail!(
                    "{} does not match its manifest (size {size} vs {}, sha256 {sha} vs {}): the object is corrupt or was changed; nothing was restored",
                    source.key,
                    m.size,
                    m.sha256
                );
            }
            tracing::info!("checksum ok: {} ({} bytes, sha256 {})", source.key, size, &sha[..16]);
        }
        None => tracing::warn!(
            "{} has no manifest (an old backup): there is no checksum to verify it against",
            source.key
        ),
    }
    Ok(file)
}

/// `bienestar__pre_restore_20261122223000`, cut to PostgreSQL's 63-byte limit.
pub fn pre_restore_name(schema: &str, at: DateTime<Utc>) -> String {
    let suffix = format!("__pre_restore_{}", at.format("%Y%m%d%H%M%S"));
    let mut cut = 63 - suffix.len();
    while !schema.is_char_boundary(cut.min(schema.len())) {
        cut -= 1;
    }
    format!("{}{suffix}", &schema[..cut.min(schema.len())])
}

/// Where the restored schema goes.
#[derive(Clone, Debug)]
pub enum Target {
    /// Replace the tenant's schema; the old one is renamed aside (and dropped when asked).
    Replace {
        schema: String,
        exists: bool,
        drop_previous: bool,
    },
    /// A new schema, leaving everything else untouched.
    Into { schema: String },
    /// Restore, count every table's rows, roll back: `verify`.
    Scratch,
}

pub struct Plan {
    pub prologue: String,
    pub epilogue: String,
    /// The renamed previous schema, when one is kept.
    pub kept_as: Option<String>,
}

const COUNT_MARK: &str = "tenant-backup-count";

/// The SQL around the dump. Every name is quoted; the backup time is a literal we format ourselves.
pub fn plan(
    source: &Source,
    target: &Target,
    catalog: &Catalog,
    records_exist: bool,
    lock_timeout: Duration,
    now: DateTime<Utc>,
) -> Plan {
    let s = &source.source_schema;
    let hold = format!("{}__restore_hold", &s[..s.len().min(40)]);
    let q_s = quote_ident(s);
    let mut pro = format!("BEGIN;\nSET LOCAL lock_timeout = '{}ms';\n", lock_timeout.as_millis());
    let mut epi = String::from("\n");
    let mut kept_as = None;
    // If the dump creates a schema other than the target, move the live one of that name aside
    // for the duration, and give the restored one the target's name.
    let rename_result = |target: &str, epi: &mut String| {
        if target != s {
            epi.push_str(&format!("ALTER SCHEMA {q_s} RENAME TO {};\n", quote_ident(target)));
            epi.push_str(&rename_if_exists(&hold, s));
        }
    };
    let hold_source = |target: &str, pro: &mut String| {
        if target != s {
            pro.push_str(&rename_if_exists(s, &hold));
        }
    };
    match target {
        Target::Replace {
            schema: t,
            exists,
            drop_previous,
        } => {
            let old = pre_restore_name(t, now);
            if *exists {
                pro.push_str(&format!(
                    "ALTER SCHEMA {} RENAME TO {};\n",
                    quote_ident(t),
                    quote_ident(&old)
                ));
            }
            hold_source(t, &mut pro);
            rename_result(t, &mut epi);
            if *exists && records_exist {
                epi.push_str(&carry_history(catalog, t, &old, source, t != s));
            }
            if *exists {
                if *drop_previous {
                    epi.push_str(&format!("DROP SCHEMA {} CASCADE;\n", quote_ident(&old)));
                } else {
                    kept_as = Some(old);
                }
            }
            epi.push_str("COMMIT;\n");
        }
        Target::Into { schema: t } => {
            hold_source(t, &mut pro);
            if t == s {
                unreachable!("--into names a new schema");
            }
            rename_result(t, &mut epi);
            epi.push_str("COMMIT;\n");
        }
        Target::Scratch => {
            pro.push_str(&rename_if_exists(s, &hold));
            epi.push_str(&format!(
                "SELECT '{COUNT_MARK}|' || c.relname || '|' || (xpath('/row/n/text()', query_to_xml(format('SELECT count(*) AS n FROM %I.%I', n.nspname, c.relname), false, true, '')))[1]::text \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = {} AND c.relkind IN ('r', 'p') ORDER BY 1;\n",
                literal(s)
            ));
            epi.push_str("ROLLBACK;\n");
        }
    }
    Plan {
        prologue: pro,
        epilogue: epi,
        kept_as,
    }
}

/// Copies into the restored history every row of the previous one that is newer than the backup
/// (all of them when the backup came from another tenant), dropping `created_by_id`s whose user
/// does not exist in the restored users table, and moves the identity past them.
fn carry_history(catalog: &Catalog, target: &str, old: &str, source: &Source, cross_tenant: bool) -> String {
    let new_t = catalog.records_in(target);
    let old_t = catalog.records_in(old);
    let users = format!("{}.{}", quote_ident(target), quote_ident("users_user"));
    let since = source.created_at.format("%Y-%m-%d %H:%M:%S%.6f+00");
    let mut sql = String::new();
    let filter = if cross_tenant {
        sql.push_str(&format!("DELETE FROM {new_t};\n"));
        String::new()
    } else {
        format!("WHERE o.created_at >= '{since}'::timestamptz")
    };
    sql.push_str(&insert_history(&new_t, &users, &format!("{old_t} o {filter}")));
    sql
}

/// Copies history rows from `from` (a FROM clause whose rows are aliased `o`) into `records`,
/// dropping `created_by_id`s whose user is not in `users` (its foreign key would fail at COMMIT),
/// then moves the id sequence past them, so the next backup gets a fresh id.
pub fn insert_history(records: &str, users: &str, from: &str) -> String {
    format!(
        "INSERT INTO {records} (id, file_name, file_path, file_size, backup_type, created_at, created_by_id) \
         SELECT o.id, o.file_name, o.file_path, o.file_size, o.backup_type, o.created_at, \
                CASE WHEN EXISTS (SELECT 1 FROM {users} u WHERE u.id = o.created_by_id) THEN o.created_by_id END \
         FROM {from} ON CONFLICT (id) DO NOTHING;\n\
         SELECT setval(pg_get_serial_sequence({}, 'id'), GREATEST((SELECT max(id) FROM {records}), 1));\n",
        literal(records)
    )
}

/// `ALTER SCHEMA from RENAME TO to`, when `from` exists.
fn rename_if_exists(from: &str, to: &str) -> String {
    format!(
        "DO $tb$ BEGIN IF EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = {}) THEN EXECUTE {}; END IF; END $tb$;\n",
        literal(from),
        literal(&format!(
            "ALTER SCHEMA {} RENAME TO {}",
            quote_ident(from),
            quote_ident(to)
        ))
    )
}

/// A SQL string literal.
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Row counts printed by a `Target::Scratch` run.
pub type Counts = std::collections::BTreeMap<String, u64>;

/// Runs the restore: psql on the session target, fed prologue, dump, epilogue. Blocking.
pub fn run_psql(
    psql: &Path,
    pg_restore: &Path,
    target: &DbTarget,
    dump: &Path,
    source: &Source,
    plan: &Plan,
) -> Result<Counts> {
    // A custom archive becomes SQL through pg_restore; compressed ones are unpacked first.
    let mut unpacked: Option<NamedTempFile> = None;
    let mut pg_restore_child = None;
    let stream: Box<dyn Read + Send> = match source.format {
        DumpFormat::Plain => {
            let f = std::fs::File::open(dump)?;
            source.compression.decoder(BufReader::with_capacity(256 * 1024, f))?
        }
        DumpFormat::Json => anyhow::bail!("json backups are restored through the driver, not psql"),
        DumpFormat::Custom => {
            let archive: PathBuf = if source.compression == Compression::None {
                dump.to_path_buf()
            } else {
                let mut tmp = tempfile::Builder::new().prefix("tenant-backup-archive-").tempfile()?;
                let f = std::fs::File::open(dump)?;
                io::copy(&mut source.compression.decoder(BufReader::new(f))?, tmp.as_file_mut())?;
                let path = tmp.path().to_path_buf();
                unpacked = Some(tmp);
                path
            };
            let mut child = Command::new(pg_restore)
                .args(["--no-owner", "--no-privileges", "-f", "-"])
                .arg(&archive)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .with_context(|| format!("starting {}", pg_restore.display()))?;
            let out = child.stdout.take().expect("piped");
            pg_restore_child = Some(child);
            Box::new(out)
        }
    };

    let mut cmd = Command::new(psql);
    cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-f", "-"]);
    apply_env(&mut cmd, target);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("starting {}", psql.display()))?;
    let mut stdin = child.stdin.take().expect("piped");
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = BufReader::new(stdout).read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = BufReader::new(stderr).read_to_string(&mut s);
        s
    });

    let fed = feed(
        &mut stdin,
        stream,
        source.format == DumpFormat::Plain || pg_restore_child.is_some(),
        plan,
    );
    drop(stdin);
    let status = child.wait()?;
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = target.scrub(&err_reader.join().unwrap_or_default());
    if let Some(mut c) = pg_restore_child {
        let st = c.wait()?;
        let mut e = String::new();
        if let Some(mut s) = c.stderr.take() {
            let _ = s.read_to_string(&mut e);
        }
        if !st.success() {
            anyhow::bail!(
                "pg_restore could not read {}: {}; nothing was restored",
                source.key,
                e.trim()
            );
        }
    }
    drop(unpacked);
    match fed {
        Err(e) if status.success() => return Err(e.context("nothing was restored (the transaction was not committed)")),
        _ => {}
    }
    if !status.success() {
        let detail = stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect::<Vec<_>>()
            .join("\n");
        anyhow::bail!("the restore failed and was rolled back; the live schema is unchanged:\n{detail}");
    }
    fed?;
    let counts = stdout
        .lines()
        .filter_map(|l| l.strip_prefix(COUNT_MARK).and_then(|r| r.strip_prefix('|')))
        .filter_map(|r| {
            let (t, n) = r.rsplit_once('|')?;
            Some((t.to_string(), n.parse().ok()?))
        })
        .collect();
    Ok(counts)
}

/// Streams prologue, dump and (only if the dump arrived whole) epilogue into psql.
fn feed(stdin: &mut impl Write, mut stream: Box<dyn Read + Send>, check_trailer: bool, plan: &Plan) -> Result<()> {
    stdin
        .write_all(plan.prologue.as_bytes())
        .context("psql stopped early")?;
    let mut scanner = PlainDumpScanner::default();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(anyhow::Error::new(e).context("reading the dump (corrupt or truncated object)")),
        };
        scanner.feed(&buf[..n]);
        if stdin.write_all(&buf[..n]).is_err() {
            // psql stopped on an error; its stderr says which.
            return Ok(());
        }
    }
    if check_trailer && !scanner.is_complete() {
        anyhow::bail!("the dump is truncated (no closing line)");
    }
    stdin
        .write_all(plan.epilogue.as_bytes())
        .context("psql stopped early")?;
    Ok(())
}

/// The decompressed contents of a fetched object, as lines for the json loader.
pub fn open_decompressed(path: &Path, compression: Compression) -> Result<Box<dyn io::BufRead + Send>> {
    let f = std::fs::File::open(path)?;
    let decoder = compression.decoder(BufReader::with_capacity(256 * 1024, f))?;
    Ok(Box::new(BufReader::with_capacity(256 * 1024, decoder)))
}

/// Does `schema` exist, and does it hold the history table?
pub async fn schema_state(client: &Client, catalog: &Catalog, schema: &str) -> Result<(bool, bool)> {
    let rows = client
        .query_typed(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1), \
                    EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = $1 AND tablename = $2)",
            &[(&schema, Type::TEXT), (&catalog.records_table.as_str(), Type::TEXT)],
        )
        .await?;
    Ok((rows[0].get(0), rows[0].get(1)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn pre_restore_names_fit_in_63_bytes() {
        let at = Utc.with_ymd_and_hms(2026, 11, 22, 22, 30, 0).unwrap();
        assert_eq!(
            pre_restore_name("bienestar", at),
            "bienestar__pre_restore_20261122223000"
        );
        let long = "ñ".repeat(31); // 62 bytes
        let name = pre_restore_name(&long, at);
        assert!(
            name.len() <= 63 && name.ends_with("__pre_restore_20261122223000"),
            "{name}"
        );
    }
}
