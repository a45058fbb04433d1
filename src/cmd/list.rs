//! `list [--tenant S]`

use anyhow::Result;
use serde::Serialize;

use crate::app::context::Context;
use crate::app::output::{human_size, table};
use crate::cli::ListArgs;
use crate::cmd::Outcome;
use crate::pg::catalog::BackupRecord;
use crate::storage::check_key;

#[derive(Serialize)]
struct TenantHistory {
    tenant: String,
    backups: Vec<Listed>,
}

#[derive(Serialize)]
struct Listed {
    #[serde(flatten)]
    record: BackupRecord,
    /// With `--check`: whether the object is in the bucket.
    #[serde(skip_serializing_if = "Option::is_none")]
    exists: Option<bool>,
}

pub async fn run(args: ListArgs, ctx: &Context) -> Result<Outcome> {
    let client = ctx.connect().await?;
    let tenants = match &args.tenant {
        Some(name) => vec![ctx.catalog.tenant(&client, name).await?],
        None => ctx.catalog.tenants(&client).await?,
    };
    // Every tenant's history in a few statements, not two queries per tenant.
    let schemas: Vec<String> = tenants.into_iter().map(|t| t.schema_name).collect();
    let records = ctx.catalog.histories(&client, &schemas, true).await?;
    let mut histories = Vec::new();
    for (schema, records) in schemas.into_iter().zip(records) {
        let mut backups = Vec::new();
        for record in records? {
            let exists = if args.check {
                Some(check_key(&record.file_path).is_ok() && ctx.storage.size(&record.file_path).await?.is_some())
            } else {
                None
            };
            backups.push(Listed { record, exists });
        }
        histories.push(TenantHistory {
            tenant: schema,
            backups,
        });
    }
    if ctx.output.json {
        ctx.output.json(&histories)?;
        return Ok(Outcome::Done);
    }
    let mut rows = Vec::new();
    for h in &histories {
        for l in &h.backups {
            let b = &l.record;
            let mut row = vec![
                h.tenant.clone(),
                b.id.to_string(),
                b.file_path.clone(),
                human_size(b.file_size.max(0) as u64),
                b.backup_type.clone(),
                b.created_at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
                b.created_by_email
                    .clone()
                    .or_else(|| b.created_by_id.map(|id| id.to_string()))
                    .unwrap_or_else(|| "-".into()),
            ];
            if let Some(e) = l.exists {
                row.push(if e { "yes".into() } else { "MISSING".into() });
            }
            rows.push(row);
        }
    }
    if rows.is_empty() {
        eprintln!("no backups recorded");
        return Ok(Outcome::Done);
    }
    print!(
        "{}",
        table(
            &["tenant", "id", "file", "size", "type", "created_at", "created_by"],
            &rows
        )
    );
    Ok(Outcome::Done)
}
