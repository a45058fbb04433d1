//! `list [--tenant S] [--check]`

use anyhow::Result;
use serde::Serialize;

use crate::app::context::Context;
use crate::app::output::{human_size, table};
use crate::cli::ListArgs;
use crate::cmd::Outcome;
use crate::out;
use crate::pg::catalog::BackupRecord;
use crate::storage::{place, Access, Place};

#[derive(Serialize)]
struct TenantHistory {
    tenant: String,
    backups: Vec<Listed>,
    /// Why the history could not be read (the others are listed all the same).
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// With `--check`: where a row's object is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum InBucket {
    Yes,
    Missing,
    /// Not under this storage's prefix, but under another prefix of the same bucket (the storage
    /// URL's prefix changed).
    Elsewhere,
    /// The file is outside the bucket (the old application's `/var/backups/…`).
    Outside,
    /// The row points outside its tenant's folder: not followed.
    Foreign,
}

#[derive(Serialize)]
struct Listed {
    #[serde(flatten)]
    record: BackupRecord,
    /// With `--check`: whether the object is in the bucket.
    #[serde(skip_serializing_if = "Option::is_none")]
    exists: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    in_bucket: Option<InBucket>,
    /// With `in_bucket: elsewhere`: the bucket's prefix that holds the object (`""`: its root).
    #[serde(skip_serializing_if = "Option::is_none")]
    prefix: Option<String>,
    /// An encrypted backup whose tenant key was forgotten: nobody can read it any more.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    key_forgotten: bool,
}

pub async fn run(args: ListArgs, ctx: &Context) -> Result<Outcome> {
    let client = ctx.connect().await?;
    let mut problems = 0;
    let tenants = match &args.tenant {
        Some(name) => vec![ctx.catalog.tenant(&client, name).await?],
        None => {
            let (tenants, rejected) = ctx.catalog.tenants_checked(&client).await?;
            problems += rejected.len();
            tenants
        }
    };
    if args.check {
        // "MISSING" is only said of a bucket the storage has shown it can see.
        ctx.storage.probe(Access::Read).await?;
    }
    // Tenants whose key exists (one query): an encrypted backup of any other can never be read.
    let keyed = ctx.key_store.tenants(&client).await?;
    // Every tenant's history in a few statements, not two queries per tenant.
    let schemas: Vec<String> = tenants.into_iter().map(|t| t.schema_name).collect();
    let read = ctx.catalog.histories(&client, &schemas, true).await?;
    let mut histories = Vec::new();
    for (schema, records) in schemas.into_iter().zip(read) {
        let backups = Vec::new();
        let records = match records {
            Ok(records) => records,
            Err(e) => {
                eprintln!("error: tenant {schema}: {e:#}");
                histories.push(TenantHistory {
                    tenant: schema,
                    backups,
                    error: Some(format!("{e:#}")),
                });
                continue;
            }
        };
        let mut backups = backups;
        // One listing of the tenant's folder answers every row, not one request per row.
        let stored: std::collections::HashSet<String> = if args.check
            && records
                .iter()
                .any(|r| matches!(place(&r.file_path, &schema), Place::Tenant(_)))
        {
            let objects = ctx.storage.list(&format!("{schema}/")).await?;
            objects.into_iter().map(|o| o.key).collect()
        } else {
            Default::default()
        };
        // Rows not under this prefix: looked for under the bucket's other prefixes (one listing
        // of the bucket, once).
        let missing: Vec<String> = records
            .iter()
            .filter_map(|r| match place(&r.file_path, &schema) {
                Place::Tenant(key) if args.check && !stored.contains(key) => Some(key.to_string()),
                _ => None,
            })
            .collect();
        let elsewhere = match missing.is_empty() {
            true => Default::default(),
            false => ctx.storage.elsewhere(&missing).await?,
        };
        for record in records {
            let in_bucket = if args.check {
                Some(match place(&record.file_path, &schema) {
                    Place::Tenant(key) if stored.contains(key) => InBucket::Yes,
                    Place::Tenant(key) if elsewhere.contains_key(key) => InBucket::Elsewhere,
                    Place::Tenant(_) => InBucket::Missing,
                    Place::Outside(_) => InBucket::Outside,
                    Place::Foreign(_) => InBucket::Foreign,
                })
            } else {
                None
            };
            if matches!(in_bucket, Some(InBucket::Missing | InBucket::Foreign)) {
                problems += 1;
            }
            let key_forgotten = record.file_path.ends_with(".age") && !keyed.contains(&schema);
            let prefix = match in_bucket {
                Some(InBucket::Elsewhere) => elsewhere.get(record.file_path.as_str()).cloned(),
                _ => None,
            };
            backups.push(Listed {
                prefix,
                key_forgotten,
                record,
                exists: in_bucket.map(|s| s == InBucket::Yes),
                in_bucket,
            });
        }
        histories.push(TenantHistory {
            tenant: schema,
            backups,
            error: None,
        });
    }
    let broken = histories.iter().filter(|h| h.error.is_some()).count();
    let outcome = Outcome::from_failures(problems + broken);
    if ctx.output.json {
        ctx.output.json(&histories)?;
        return Ok(outcome);
    }
    let mut rows = Vec::new();
    for h in &histories {
        for l in &h.backups {
            let b = &l.record;
            let file = match place(&b.file_path, &h.tenant) {
                Place::Tenant(k) if l.key_forgotten => format!("{k} (key forgotten: unreadable)"),
                Place::Tenant(k) => k.to_string(),
                Place::Outside(p) => format!("outside the bucket: {p}"),
                Place::Foreign(p) => format!("{p} (not under {}/)", h.tenant),
            };
            let mut row = vec![
                h.tenant.clone(),
                b.id.to_string(),
                file,
                human_size(b.file_size.max(0) as u64),
                b.backup_type.clone(),
                b.created_at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
                b.created_by_email
                    .clone()
                    .or_else(|| b.created_by_id.map(|id| id.to_string()))
                    .unwrap_or_else(|| "-".into()),
            ];
            if let Some(state) = l.in_bucket {
                row.push(match state {
                    InBucket::Yes => "yes".into(),
                    InBucket::Missing => "MISSING".into(),
                    InBucket::Elsewhere => match l.prefix.as_deref() {
                        Some("") | None => "in another prefix: the bucket's root".into(),
                        Some(p) => format!("in another prefix: {p}/"),
                    },
                    InBucket::Outside => "outside bucket".into(),
                    InBucket::Foreign => format!("FOREIGN (not under {}/)", h.tenant),
                });
            }
            rows.push(row);
        }
    }
    if rows.is_empty() {
        eprintln!("no backups recorded");
        return Ok(outcome);
    }
    let mut headers = vec!["tenant", "id", "file", "size", "type", "created_at", "created_by"];
    if args.check {
        headers.push("in bucket");
    }
    out!("{}", table(&headers, &rows))?;
    Ok(outcome)
}
