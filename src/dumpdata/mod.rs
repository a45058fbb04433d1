//! The old application's `dumpdata` backups (`backup-json-<schema>-<timestamp>.json`, plain or
//! gzip): a JSON array of `{"model": "app_label.model", "pk": …, "fields": {…}}` objects, which
//! the application wrote with `python manage.py dumpdata` when pg_dump was missing. Restored
//! without Python or Django:
//!
//! * [`parse`] reads the array one object at a time (bounded memory, one line or indented);
//! * [`catalog`] reads the tenant's tables, and [`plan`] places every model in a table (Django's
//!   `<app_label>_<model>`, or `--model-table app.model=table`), every field in a column (`field`,
//!   or `field_id` for a foreign key) or, for a many-to-many list, a through table
//!   (`<table>_<field>`), refusing at once every model or field it cannot place, and natural keys;
//! * [`convert`] spells each value as the column's type wants it;
//! * [`stream`] turns the file into the native format's version 2 stream (rows only), which
//!   `jsonl::restore` loads into the existing tables with its guarantees: one transaction, the
//!   tables the dump covers replaced and the rest untouched, the previous rows kept, sequences set,
//!   history kept, foreign keys checked.
//!
//! The file is read twice: once to plan and check every object before anything is touched, once
//! to load.

mod catalog;
mod convert;
mod parse;
mod plan;
mod stream;

use std::io::BufRead;
use std::sync::Arc;

use anyhow::Result;
use chrono::{DateTime, Utc};
use tokio_postgres::Client;

pub use parse::looks_like_dumpdata;
pub use plan::Plan;

/// Opens the (decompressed) file from its start, once per pass.
pub type Opener = Arc<dyn Fn() -> Result<Box<dyn BufRead + Send>> + Send + Sync>;

/// A dumpdata backup, checked against the tenant's tables and ready to load.
pub struct Dumpdata {
    pub plan: Arc<Plan>,
    /// The native format's header for it (version 2: rows into the existing tables).
    pub header: crate::jsonl::Header,
    open: Opener,
}

impl Dumpdata {
    /// Reads the whole file once, placing every model and field in `schema`'s tables and checking
    /// every value; refuses (nothing touched) what it cannot place. `overrides` are
    /// `--model-table` pairs (`app.model` or `app.model.m2m_field` → table).
    pub async fn prepare(
        client: &Client,
        schema: &str,
        created_at: DateTime<Utc>,
        overrides: &[(String, String)],
        open: Opener,
    ) -> Result<Dumpdata> {
        let tables = catalog::read(client, schema).await?;
        let overrides = overrides.to_vec();
        let schema_name = schema.to_string();
        let opener = open.clone();
        let plan =
            tokio::task::spawn_blocking(move || Plan::read(opener()?, &tables, &overrides, &schema_name)).await??;
        let header = plan.header(schema, created_at);
        Ok(Dumpdata {
            plan: Arc::new(plan),
            header,
            open,
        })
    }

    /// The native version 2 stream of the file, for `jsonl::restore`.
    pub fn stream(&self) -> Box<dyn BufRead + Send> {
        stream::start(self.plan.clone(), self.header.clone(), self.open.clone())
    }

    /// One line for the restore plan.
    pub fn describe(&self) {
        eprintln!(
            "  dumpdata the application's dumpdata backup: {} object(s) of {} model(s), into {} table(s) ({}); many-to-many tables: {}",
            self.plan.objects,
            self.plan.models.len(),
            self.plan.models.len() + self.plan.throughs.len(),
            self.plan
                .models
                .iter()
                .map(|m| format!("{} → {}", m.model, m.table))
                .collect::<Vec<_>>()
                .join(", "),
            if self.plan.throughs.is_empty() {
                "none".to_string()
            } else {
                self.plan.throughs.iter().map(|t| t.table.as_str()).collect::<Vec<_>>().join(", ")
            }
        );
    }
}

/// Whether the file `open` reads is a dumpdata backup.
pub fn is_dumpdata(open: &Opener) -> Result<bool> {
    let mut input = open()?;
    Ok(looks_like_dumpdata(&mut *input)?)
}

/// `--model-table app.model=table` (or `app.model.field=table` for a many-to-many field's table).
pub fn parse_override(s: &str) -> Result<(String, String), String> {
    let (model, table) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected app_label.model=table"))?;
    let (model, table) = (model.trim().to_ascii_lowercase(), table.trim().to_string());
    let dots = model.matches('.').count();
    if !(1..=2).contains(&dots) || model.split('.').any(str::is_empty) || table.is_empty() || table.len() > 63 {
        return Err(format!(
            "{s:?}: expected app_label.model=table (or app_label.model.field=table for a many-to-many table), the table a name of 1 to 63 bytes"
        ));
    }
    Ok((model, table))
}

/// For restore and verify: when `source` is a json backup whose content is the application's
/// dumpdata, it read and checked against the tenant's tables (see [`Dumpdata::prepare`]); None for
/// anything else.
pub async fn recognise(
    client: &Client,
    source: &crate::restore::Source,
    path: &std::path::Path,
    shown: &crate::progress::Shown,
    overrides: &[(String, String)],
) -> Result<Option<Dumpdata>> {
    if source.format != crate::backup::format::DumpFormat::Json {
        return Ok(None);
    }
    let open: Opener = {
        let (path, source, shown) = (path.to_path_buf(), source.clone(), shown.clone());
        Arc::new(move || crate::restore::open_decompressed(&path, &source, &shown))
    };
    if !is_dumpdata(&open)? {
        return Ok(None);
    }
    tracing::info!("{}: the application's dumpdata backup", source.key);
    Dumpdata::prepare(client, &source.source_schema, source.created_at, overrides, open)
        .await
        .map(Some)
}
