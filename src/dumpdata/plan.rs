//! Where each model, field and many-to-many list of a dumpdata file goes, decided from the
//! file's objects and the tenant's tables, and every object checked against it.

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;

use anyhow::{bail, Result};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::catalog::Table;
use super::convert;
use super::parse::{Object, Objects};
use crate::error::UsageError;
use crate::jsonl::{Column, Header, SequenceValue, TableSpec};

/// Django's own apps whose models set their `db_table`.
const KNOWN: &[(&str, &str)] = &[
    ("contenttypes.contenttype", "django_content_type"),
    ("admin.logentry", "django_admin_log"),
    ("sessions.session", "django_session"),
    ("sites.site", "django_site"),
    ("redirects.redirect", "django_redirect"),
    ("flatpages.flatpage", "django_flatpage"),
];

pub struct Plan {
    pub models: Vec<ModelPlan>,
    pub throughs: Vec<Through>,
    /// Objects in the file.
    pub objects: u64,
    /// Rows loaded: the objects and the many-to-many pairs.
    pub rows: u64,
    index: BTreeMap<String, usize>,
}

pub struct ModelPlan {
    pub model: String,
    pub table: String,
    pk: Column,
    /// field → column, for every field the model's objects carry but many-to-many lists.
    fields: Vec<(String, Column)>,
    /// field → index in `throughs`.
    m2m: Vec<(String, usize)>,
    sequence: Option<String>,
    max_pk: Option<i64>,
}

/// The table behind a many-to-many field: (its key,) the object's column, the other model's.
pub struct Through {
    pub table: String,
    model: usize,
    field: String,
    id: Option<Column>,
    source: Column,
    target: Column,
    sequence: Option<String>,
    count: u64,
}

/// What could not be placed, all of it, said at once.
#[derive(Default)]
struct Refusals {
    models: BTreeSet<String>,
    fields: BTreeSet<String>,
    natural: BTreeSet<String>,
}

impl Plan {
    pub fn read(
        input: Box<dyn BufRead + Send>,
        tables: &BTreeMap<String, Table>,
        overrides: &[(String, String)],
        schema: &str,
    ) -> Result<Plan> {
        let mut plan = Plan {
            models: Vec::new(),
            throughs: Vec::new(),
            objects: 0,
            rows: 0,
            index: BTreeMap::new(),
        };
        let mut skipped: BTreeSet<String> = BTreeSet::new();
        let mut refusals = Refusals::default();
        let mut objects = Objects::new(input);
        let mut scratch = Vec::new();
        while let Some(o) = objects.next_object()? {
            plan.objects += 1;
            let n = objects.number;
            if skipped.contains(&o.model) {
                continue;
            }
            let i = match plan.index.get(&o.model) {
                Some(i) => *i,
                None => match plan.place(&o, tables, overrides, &mut refusals)? {
                    Some(i) => i,
                    None => {
                        skipped.insert(o.model.clone());
                        continue;
                    }
                },
            };
            if o.pk.is_none() {
                refusals
                    .natural
                    .insert(format!("{} (objects without pk: --natural-primary)", o.model));
                continue;
            }
            let m = &plan.models[i];
            let table = &tables[&m.table];
            for (f, c) in &m.fields {
                if o.fields.get(f).is_some_and(Value::is_array) && table.references.contains_key(&c.name) {
                    refusals
                        .natural
                        .insert(format!("{}.{f} (a key given as a list: --natural-foreign)", o.model));
                }
            }
            for (f, _) in &m.m2m {
                if let Some(Value::Array(items)) = o.fields.get(f) {
                    if items.iter().any(|v| v.is_array()) {
                        refusals
                            .natural
                            .insert(format!("{}.{f} (keys given as lists: --natural-foreign)", o.model));
                    }
                }
            }
            if !refusals.is_empty() {
                continue;
            }
            // Checked and thrown away: the load converts again, from the second reading.
            scratch.clear();
            let pk = plan.row(i, &o, n, &mut scratch)?;
            let pairs = plan.pairs(i, &o, n, &mut |_, _| Ok(()))?;
            let m = &mut plan.models[i];
            if let Some(pk) = pk {
                m.max_pk = Some(m.max_pk.map_or(pk, |x: i64| x.max(pk)));
            }
            for (t, count) in pairs {
                plan.throughs[t].count += count;
            }
        }
        refusals.refuse(schema)?;
        plan.rows = plan.objects + plan.throughs.iter().map(|t| t.count).sum::<u64>();
        Ok(plan)
    }

    /// The first object of a model: its table, and where each of its fields goes.
    fn place(
        &mut self,
        o: &Object,
        tables: &BTreeMap<String, Table>,
        overrides: &[(String, String)],
        refusals: &mut Refusals,
    ) -> Result<Option<usize>> {
        let model = &o.model;
        let valid = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        };
        let Some((app, name)) = model.split_once('.').filter(|(a, m)| valid(a) && valid(m)) else {
            bail!(
                "object {} names model {:?}, which is not an app_label.model label: the file is damaged or not a dumpdata backup",
                self.objects,
                model.chars().take(64).collect::<String>()
            );
        };
        let over = |key: &str| overrides.iter().find(|(k, _)| k == key).map(|(_, t)| t.clone());
        let table_name = over(model)
            .or_else(|| KNOWN.iter().find(|(m, _)| m == model).map(|(_, t)| t.to_string()))
            .unwrap_or_else(|| format!("{app}_{name}"));
        let Some(table) = tables.get(&table_name) else {
            refusals.models.insert(format!("{model} (no table {table_name})"));
            return Ok(None);
        };
        if self.models.iter().any(|m| m.table == table_name) {
            bail!("two models of the dump go to table {table_name}: give one of them its own with --model-table");
        }
        let Some(pk) = table.pk.as_deref().and_then(|p| table.column(p)) else {
            refusals
                .models
                .insert(format!("{model} (table {table_name} has no one-column primary key)"));
            return Ok(None);
        };
        let index = self.models.len();
        let mut fields = Vec::new();
        let mut m2m = Vec::new();
        for (f, v) in &o.fields {
            if let Some(c) = table.column(f).or_else(|| table.column(&format!("{f}_id"))) {
                if c.name == pk.name || fields.iter().any(|(_, x): &(String, Column)| x.name == c.name) {
                    bail!(
                        "{model}: two of its fields go to column {table_name}.{}: the file is damaged",
                        c.name
                    );
                }
                fields.push((f.clone(), c.clone()));
                continue;
            }
            let through_name = over(&format!("{model}.{f}")).unwrap_or_else(|| format!("{table_name}_{f}"));
            match (v, tables.get(&through_name)) {
                (Value::Array(_), Some(t)) => match through(t, &through_name, &table_name, name) {
                    Some((id, source, target)) => {
                        m2m.push((f.clone(), self.throughs.len()));
                        self.throughs.push(Through {
                            table: through_name,
                            model: index,
                            field: f.clone(),
                            id,
                            source,
                            target,
                            sequence: t.sequence.clone(),
                            count: 0,
                        });
                    }
                    None => {
                        refusals.fields.insert(format!(
                            "{model}.{f} (table {through_name} is not a many-to-many table of {table_name})"
                        ));
                    }
                },
                (Value::Array(_), None) => {
                    refusals.fields.insert(format!(
                        "{model}.{f} (no column {f} or {f}_id in {table_name}, no many-to-many table {through_name})"
                    ));
                }
                _ => {
                    refusals
                        .fields
                        .insert(format!("{model}.{f} (no column {f} or {f}_id in {table_name})"));
                }
            }
        }
        self.models.push(ModelPlan {
            model: model.clone(),
            table: table_name,
            pk: pk.clone(),
            fields,
            m2m,
            sequence: table.sequence.clone(),
            max_pk: None,
        });
        self.index.insert(model.clone(), index);
        Ok(Some(index))
    }

    /// Which model an object is of, as planned.
    pub fn model_of(&self, o: &Object, number: u64) -> Result<usize> {
        match self.index.get(&o.model) {
            Some(i) => Ok(*i),
            None => {
                bail!("object {number} is of a model the first reading did not see: the file changed while it was read")
            }
        }
    }

    /// The object as a native row (a JSON object line) appended to `out`; its key, when an integer.
    pub fn row(&self, i: usize, o: &Object, number: u64, out: &mut Vec<u8>) -> Result<Option<i64>> {
        let m = &self.models[i];
        if o.fields.len() != m.fields.len() + m.m2m.len()
            || !m
                .fields
                .iter()
                .map(|(f, _)| f)
                .chain(m.m2m.iter().map(|(f, _)| f))
                .all(|f| o.fields.contains_key(f))
        {
            bail!(
                "object {number} ({}) has other fields than the model's first object: the file is damaged",
                m.model
            );
        }
        let wrong = |field: &str, c: &Column, why: String| {
            anyhow::anyhow!(
                "object {number} ({}): {field} does not fit column {}.{} ({}): it is {why}",
                m.model,
                m.table,
                c.name,
                c.type_name
            )
        };
        let pk_value = o.pk.as_ref().unwrap_or(&Value::Null);
        if pk_value.is_null() {
            bail!("object {number} ({}) has no pk", m.model);
        }
        let pk = convert::value(pk_value, &m.pk.type_name).map_err(|why| wrong("its pk", &m.pk, why))?;
        let mut row = Map::new();
        row.insert(m.pk.name.clone(), pk.clone());
        for (f, c) in &m.fields {
            let v = convert::value(&o.fields[f], &c.type_name).map_err(|why| wrong(&format!("field {f}"), c, why))?;
            row.insert(c.name.clone(), v);
        }
        serde_json::to_writer(&mut *out, &row)?;
        out.push(b'\n');
        Ok(pk.as_i64())
    }

    /// The object's many-to-many pairs, each handed to `each` (through index, row line); returns
    /// the count per through table.
    pub fn pairs(
        &self,
        i: usize,
        o: &Object,
        number: u64,
        each: &mut dyn FnMut(usize, &[u8]) -> Result<()>,
    ) -> Result<Vec<(usize, u64)>> {
        let m = &self.models[i];
        let mut counts = Vec::new();
        let mut line = Vec::new();
        for (f, t) in &m.m2m {
            let through = &self.throughs[*t];
            let Some(Value::Array(items)) = o.fields.get(f) else {
                bail!(
                    "object {number} ({}): field {f} is not a list: the file is damaged",
                    m.model
                );
            };
            let source = convert::value(o.pk.as_ref().unwrap_or(&Value::Null), &through.source.type_name)
                .map_err(|why| anyhow::anyhow!("object {number} ({}): its pk is {why}", m.model))?;
            for item in items {
                let target = convert::value(item, &through.target.type_name).map_err(|why| {
                    anyhow::anyhow!(
                        "object {number} ({}): an item of {f} does not fit column {}.{} ({}): it is {why}",
                        m.model,
                        through.table,
                        through.target.name,
                        through.target.type_name
                    )
                })?;
                if target.is_null() {
                    bail!("object {number} ({}): {f} holds a null: the file is damaged", m.model);
                }
                line.clear();
                let mut row = Map::new();
                row.insert(through.source.name.clone(), source.clone());
                row.insert(through.target.name.clone(), target);
                serde_json::to_writer(&mut line, &row)?;
                line.push(b'\n');
                each(*t, &line)?;
            }
            counts.push((*t, items.len() as u64));
        }
        Ok(counts)
    }

    /// A through table's row with its key, which the load numbers 1, 2, … in the file's order (as
    /// the application added them), so the table comes back as it was.
    pub fn with_id(&self, t: usize, n: u64, line: &[u8], out: &mut Vec<u8>) {
        match &self.throughs[t].id {
            Some(id) => {
                out.extend_from_slice(b"{");
                out.extend_from_slice(&serde_json::to_vec(&id.name).unwrap_or_default());
                out.extend_from_slice(format!(":{n},").as_bytes());
                out.extend_from_slice(&line[1..]);
            }
            None => out.extend_from_slice(line),
        }
    }

    pub fn through_of(&self, t: usize) -> (usize, &str) {
        (self.throughs[t].model, &self.throughs[t].field)
    }

    pub fn spec(&self, i: usize) -> TableSpec {
        let m = &self.models[i];
        TableSpec {
            name: m.table.clone(),
            columns: std::iter::once(m.pk.clone())
                .chain(m.fields.iter().map(|(_, c)| c.clone()))
                .collect(),
        }
    }

    pub fn through_spec(&self, t: usize) -> TableSpec {
        let t = &self.throughs[t];
        TableSpec {
            name: t.table.clone(),
            columns: t.id.iter().chain([&t.source, &t.target]).cloned().collect(),
        }
    }

    /// The native format's header: version 2, rows only, of `schema`.
    pub fn header(&self, schema: &str, created_at: DateTime<Utc>) -> Header {
        Header {
            format: crate::jsonl::FORMAT.into(),
            format_version: 2,
            tool_version: env!("CARGO_PKG_VERSION").into(),
            schema: schema.into(),
            server_version: String::new(),
            created_at,
            tables: (0..self.models.len())
                .map(|i| self.spec(i))
                .chain((0..self.throughs.len()).map(|t| self.through_spec(t)))
                .collect(),
        }
    }

    /// Every key's sequence past the largest key loaded.
    pub fn sequences(&self) -> Vec<SequenceValue> {
        let models = self
            .models
            .iter()
            .filter_map(|m| Some((m.sequence.clone()?, m.max_pk?)));
        let throughs = self
            .throughs
            .iter()
            .filter(|t| t.id.is_some() && t.count > 0)
            .filter_map(|t| Some((t.sequence.clone()?, t.count as i64)));
        models
            .chain(throughs)
            .map(|(name, last)| SequenceValue {
                name,
                last_value: Some(last),
                is_called: true,
            })
            .collect()
    }
}

/// A many-to-many table's key and its two columns: the one pointing at the object's table
/// (`from_<model>_id` when both point at it) and the other.
fn through(t: &Table, name: &str, table: &str, model: &str) -> Option<(Option<Column>, Column, Column)> {
    let id = t.pk.as_deref().and_then(|p| t.column(p)).cloned();
    let rest: Vec<&Column> = t
        .columns
        .iter()
        .filter(|c| Some(&c.name) != id.as_ref().map(|i| &i.name))
        .collect();
    if rest.len() != 2 {
        return None;
    }
    let own = |c: &Column| t.references.get(&c.name).is_some_and(|r| r == table);
    let (source, target) = if let (Some(s), Some(d)) = (
        rest.iter().find(|c| c.name == format!("from_{model}_id")),
        rest.iter().find(|c| c.name == format!("to_{model}_id")),
    ) {
        (*s, *d)
    } else if rest[0].name == format!("{model}_id") || (own(rest[0]) && !own(rest[1])) {
        (rest[0], rest[1])
    } else if rest[1].name == format!("{model}_id") || (own(rest[1]) && !own(rest[0])) {
        (rest[1], rest[0])
    } else {
        tracing::debug!("{name}: cannot tell which column is {table}'s");
        return None;
    };
    Some((id, source.clone(), target.clone()))
}

impl Refusals {
    fn is_empty(&self) -> bool {
        self.models.is_empty() && self.fields.is_empty() && self.natural.is_empty()
    }

    fn refuse(self, schema: &str) -> Result<()> {
        if !self.natural.is_empty() {
            return Err(UsageError::new(format!(
                "this dumpdata backup uses natural keys ({}): tenant-backup restores dumps whose objects carry their pk and whose relations are ids; load this one with the application (`python manage.py loaddata`) into {schema}, or use another backup; nothing was changed",
                self.natural.into_iter().collect::<Vec<_>>().join("; ")
            ))
            .into());
        }
        if self.models.is_empty() && self.fields.is_empty() {
            return Ok(());
        }
        let mut parts = Vec::new();
        if !self.models.is_empty() {
            parts.push(format!(
                "models without a table in {schema}: {}",
                self.models.into_iter().collect::<Vec<_>>().join(", ")
            ));
        }
        if !self.fields.is_empty() {
            parts.push(format!(
                "fields without a column: {}",
                self.fields.into_iter().collect::<Vec<_>>().join(", ")
            ));
        }
        Err(UsageError::new(format!(
            "this dumpdata backup does not fit {schema}'s tables ({}): if a model has its own db_table, say where it goes with --model-table app_label.model=table (a many-to-many field's table: app_label.model.field=table); if the tables are missing or older, run the application's migrations for {schema} first (`python manage.py migrate_schemas --schema={schema}`); nothing was changed",
            parts.join("; ")
        ))
        .into())
    }
}
