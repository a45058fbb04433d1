//! The schema's structure in the native format (version 3): the statements that create it again,
//! split like pg_dump's sections. `pre_data` comes before the rows are loaded (types, functions,
//! sequences, tables with their columns, defaults, identity, NOT NULL and CHECK constraints, views,
//! sequence ownership, comments); `post_data` after them (primary, unique and exclusion keys,
//! indexes, foreign keys, triggers, rules, statistics, materialized view contents, comments on
//! those), so a restore into a new schema builds every index once and checks every foreign key in
//! one join, as pg_restore does.
//!
//! As in pg_dump's output every name is qualified (the server printed the definitions with only
//! `pg_catalog` on the search path) and the statements run with an empty search path, so they
//! create the schema under the name it was dumped from. Objects the format does not carry are
//! listed in `not_carried`, and a restore that would have to create them refuses instead of
//! creating something different.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use super::objects::{Relation, SchemaObjects};
use crate::pg::sql::{literal, qualified, quote_ident};
use crate::restore::guard::{self, Scope};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Structure {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_comment: Option<String>,
    pub pre_data: Vec<Ddl>,
    pub post_data: Vec<Ddl>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_carried: Vec<String>,
}

/// One statement, and what it creates (for error messages).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ddl {
    pub object: String,
    pub sql: String,
}

fn ddl(object: impl Into<String>, sql: impl Into<String>) -> Ddl {
    Ddl {
        object: object.into(),
        sql: sql.into(),
    }
}

fn comment(kind: &str, target: &str, text: &Option<String>) -> Option<Ddl> {
    text.as_ref().map(|t| {
        ddl(
            format!("comment on {kind} {target}"),
            format!("COMMENT ON {kind} {target} IS {}", literal(t)),
        )
    })
}

/// ` WITH (a='1', b='x')` from `reloptions`.
fn with_options(options: &[String]) -> String {
    if options.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = options
        .iter()
        .map(|o| match o.split_once('=') {
            Some((k, v)) => format!("{}={}", quote_ident(k), literal(v)),
            None => quote_ident(o),
        })
        .collect();
    format!(" WITH ({})", parts.join(", "))
}

fn strip_semicolon(def: &str) -> &str {
    def.trim_end().trim_end_matches(';').trim_end()
}

/// The relations whose structure is carried: plain tables, views and materialized views.
fn carried(r: &Relation) -> bool {
    match r.kind.as_str() {
        "r" => !r.is_partition && !r.inherits,
        "v" | "m" => true,
        _ => false,
    }
}

impl Structure {
    /// The statements that create `objects` again. Pure: the catalog has been read already.
    pub fn from_objects(schema: &str, objects: &SchemaObjects) -> Structure {
        let q = |name: &str| qualified(schema, name);
        let mut s = Structure {
            schema_comment: objects.comment.clone(),
            not_carried: objects.unsupported.clone(),
            ..Default::default()
        };
        let name_of: BTreeMap<u32, &Relation> = objects.relations.iter().map(|r| (r.oid, r)).collect();
        let carried_rels: BTreeSet<u32> = objects.relations.iter().filter(|r| carried(r)).map(|r| r.oid).collect();
        let pre = &mut s.pre_data;
        let mut comments = Vec::new();

        for x in &objects.extensions {
            pre.push(ddl(
                format!("extension {x}"),
                format!(
                    "CREATE EXTENSION IF NOT EXISTS {} WITH SCHEMA {}",
                    quote_ident(x),
                    quote_ident(schema)
                ),
            ));
        }
        for e in &objects.enums {
            let labels: Vec<String> = e.labels.iter().map(|l| literal(l)).collect();
            let t = q(&e.name);
            pre.push(ddl(
                format!("type {}", e.name),
                format!("CREATE TYPE {t} AS ENUM ({})", labels.join(", ")),
            ));
            comments.extend(comment("TYPE", &t, &e.comment));
        }
        let function = |f: &super::objects::Function| {
            let what = if f.kind == "p" { "PROCEDURE" } else { "FUNCTION" };
            let sig = format!("{}({})", q(&f.name), f.identity_args);
            (
                ddl(
                    format!("{} {}({})", what.to_lowercase(), f.name, f.identity_args),
                    f.def.clone().unwrap_or_default(),
                ),
                comment(what, &sig, &f.comment),
            )
        };
        for f in objects.functions.iter().filter(|f| !f.needs_tables) {
            let (d, c) = function(f);
            pre.push(d);
            comments.extend(c);
        }

        // Sequences: identity ones are created with their column, the others on their own.
        let identity: BTreeMap<(u32, i16), &super::objects::Sequence> = objects
            .sequences
            .iter()
            .filter_map(|q| match &q.owner {
                Some((rel, col, kind)) if kind == "i" => Some(((*rel, *col as i16), q)),
                _ => None,
            })
            .collect();
        let seq_options = |q: &super::objects::Sequence| {
            format!(
                "START WITH {} INCREMENT BY {} MINVALUE {} MAXVALUE {} CACHE {}{}",
                q.start,
                q.increment,
                q.min,
                q.max,
                q.cache,
                if q.cycle { " CYCLE" } else { " NO CYCLE" }
            )
        };
        let mut owned_by = Vec::new();
        for sq in &objects.sequences {
            let Some(rel) = name_of.get(&sq.oid) else { continue };
            let name = q(&rel.name);
            comments.extend(comment("SEQUENCE", &name, &rel.comment));
            if matches!(&sq.owner, Some((_, _, k)) if k == "i") {
                continue;
            }
            pre.push(ddl(
                format!("sequence {}", rel.name),
                format!(
                    "CREATE {}SEQUENCE {name} AS {} {}",
                    if rel.unlogged { "UNLOGGED " } else { "" },
                    sq.type_name,
                    seq_options(sq)
                ),
            ));
            if let Some((table, col, _)) = &sq.owner {
                let column = objects.columns_of(*table).find(|a| i32::from(a.num) == *col);
                if let (Some(t), Some(c)) = (name_of.get(table).filter(|t| carried(t)), column) {
                    owned_by.push(ddl(
                        format!("ownership of sequence {}", rel.name),
                        format!("ALTER SEQUENCE {name} OWNED BY {}.{}", q(&t.name), quote_ident(&c.name)),
                    ));
                }
            }
        }

        let mut table_extras = Vec::new();
        for rel in objects.relations.iter().filter(|r| r.kind == "r" && carried(r)) {
            let t = q(&rel.name);
            let mut lines = Vec::new();
            for a in objects.columns_of(rel.oid) {
                let mut line = format!("    {} {}", quote_ident(&a.name), a.type_name);
                if let Some(c) = &a.collation {
                    line.push_str(&format!(" COLLATE {c}"));
                }
                match (&a.default, a.generated.as_str()) {
                    (Some(expr), "s") => line.push_str(&format!(" GENERATED ALWAYS AS ({expr}) STORED")),
                    (Some(expr), _) => line.push_str(&format!(" DEFAULT {expr}")),
                    _ => {}
                }
                if !a.identity.is_empty() {
                    let how = if a.identity == "a" { "ALWAYS" } else { "BY DEFAULT" };
                    line.push_str(&format!(" GENERATED {how} AS IDENTITY"));
                    if let Some(sq) = identity.get(&(rel.oid, a.num)) {
                        let seq = name_of.get(&sq.oid).map(|r| r.name.as_str()).unwrap_or_default();
                        line.push_str(&format!(" (SEQUENCE NAME {} {})", q(seq), seq_options(sq)));
                    }
                }
                if a.not_null {
                    line.push_str(" NOT NULL");
                }
                lines.push(line);
                comments.extend(comment("COLUMN", &format!("{t}.{}", quote_ident(&a.name)), &a.comment));
            }
            for k in objects
                .constraints
                .iter()
                .filter(|k| k.rel == rel.oid && k.kind == "c" && k.validated && k.local)
            {
                lines.push(format!("    CONSTRAINT {} {}", quote_ident(&k.name), k.def));
            }
            let space = rel
                .tablespace
                .as_ref()
                .map(|s| format!(" TABLESPACE {}", quote_ident(s)))
                .unwrap_or_default();
            pre.push(ddl(
                format!("table {}", rel.name),
                format!(
                    "CREATE {}TABLE {t} (\n{}\n){}{space}",
                    if rel.unlogged { "UNLOGGED " } else { "" },
                    lines.join(",\n"),
                    with_options(&rel.options)
                ),
            ));
            comments.extend(comment("TABLE", &t, &rel.comment));
            if rel.row_security {
                table_extras.push(ddl(
                    format!("row security of {}", rel.name),
                    format!("ALTER TABLE {t} ENABLE ROW LEVEL SECURITY"),
                ));
            }
            if rel.force_row_security {
                table_extras.push(ddl(
                    format!("row security of {}", rel.name),
                    format!("ALTER TABLE {t} FORCE ROW LEVEL SECURITY"),
                ));
            }
            let replica = match rel.replica_identity.as_str() {
                "f" => Some("FULL"),
                "n" => Some("NOTHING"),
                _ => None,
            };
            if let Some(r) = replica {
                table_extras.push(ddl(
                    format!("replica identity of {}", rel.name),
                    format!("ALTER TABLE {t} REPLICA IDENTITY {r}"),
                ));
            }
        }
        for f in objects.functions.iter().filter(|f| f.needs_tables) {
            let (d, c) = function(f);
            pre.push(d);
            comments.extend(c);
        }
        for rel in view_order(objects) {
            let v = q(&rel.name);
            let def = strip_semicolon(rel.view_def.as_deref().unwrap_or_default());
            let (what, sql) = if rel.kind == "m" {
                (
                    "MATERIALIZED VIEW",
                    format!(
                        "CREATE MATERIALIZED VIEW {v}{} AS\n{def}\nWITH NO DATA",
                        with_options(&rel.options)
                    ),
                )
            } else {
                (
                    "VIEW",
                    format!("CREATE VIEW {v}{} AS\n{def}", with_options(&rel.options)),
                )
            };
            pre.push(ddl(format!("{} {}", what.to_lowercase(), rel.name), sql));
            comments.extend(comment(what, &v, &rel.comment));
            for a in objects.columns_of(rel.oid) {
                comments.extend(comment("COLUMN", &format!("{v}.{}", quote_ident(&a.name)), &a.comment));
            }
        }
        pre.extend(owned_by);
        pre.extend(table_extras);
        pre.extend(comments);

        let post = &mut s.post_data;
        let mut comments = Vec::new();
        let on = |rel: u32| q(&name_of[&rel].name);
        let constraints: Vec<_> = objects
            .constraints
            .iter()
            .filter(|k| carried_rels.contains(&k.rel) && k.local)
            .collect();
        let add = |k: &super::objects::Constraint| {
            ddl(
                format!("constraint {} on {}", k.name, name_of[&k.rel].name),
                format!(
                    "ALTER TABLE {} ADD CONSTRAINT {} {}",
                    on(k.rel),
                    quote_ident(&k.name),
                    k.def
                ),
            )
        };
        for k in constraints
            .iter()
            .filter(|k| matches!(k.kind.as_str(), "p" | "u" | "x"))
        {
            post.push(add(k));
        }
        let indexes: Vec<_> = objects
            .indexes
            .iter()
            .filter(|i| carried_rels.contains(&i.rel) && i.valid)
            .collect();
        for i in indexes.iter().filter(|i| !i.of_constraint) {
            post.push(ddl(format!("index {}", i.name), i.def.clone()));
        }
        for i in &indexes {
            let (t, x) = (on(i.rel), quote_ident(&i.name));
            let qx = q(&i.name);
            if i.clustered {
                post.push(ddl(
                    format!("cluster mark of {}", name_of[&i.rel].name),
                    format!("ALTER TABLE {t} CLUSTER ON {x}"),
                ));
            }
            if i.replica_identity {
                post.push(ddl(
                    format!("replica identity of {}", name_of[&i.rel].name),
                    format!("ALTER TABLE {t} REPLICA IDENTITY USING INDEX {x}"),
                ));
            }
            comments.extend(comment("INDEX", &qx, &i.comment));
        }
        for k in constraints.iter().filter(|k| k.kind == "c" && !k.validated) {
            post.push(add(k));
        }
        for k in constraints.iter().filter(|k| k.kind == "f") {
            post.push(add(k));
        }
        for k in &constraints {
            if k.kind != "t" {
                comments.extend(comment(
                    "CONSTRAINT",
                    &format!("{} ON {}", quote_ident(&k.name), on(k.rel)),
                    &k.comment,
                ));
            }
        }
        for tg in objects.triggers.iter().filter(|t| carried_rels.contains(&t.rel)) {
            let (t, n) = (on(tg.rel), quote_ident(&tg.name));
            post.push(ddl(
                format!("trigger {} on {}", tg.name, name_of[&tg.rel].name),
                tg.def.clone(),
            ));
            let state = match tg.enabled.as_str() {
                "D" => Some("DISABLE TRIGGER"),
                "R" => Some("ENABLE REPLICA TRIGGER"),
                "A" => Some("ENABLE ALWAYS TRIGGER"),
                _ => None,
            };
            if let Some(state) = state {
                post.push(ddl(
                    format!("state of trigger {}", tg.name),
                    format!("ALTER TABLE {t} {state} {n}"),
                ));
            }
            comments.extend(comment("TRIGGER", &format!("{n} ON {t}"), &tg.comment));
        }
        for r in objects.rules.iter().filter(|r| carried_rels.contains(&r.rel)) {
            post.push(ddl(format!("rule {}", r.name), r.def.clone()));
            comments.extend(comment(
                "RULE",
                &format!("{} ON {}", quote_ident(&r.name), on(r.rel)),
                &r.comment,
            ));
        }
        for (i, def) in objects.statistics.iter().enumerate() {
            post.push(ddl(format!("statistics object {}", i + 1), def.clone()));
        }
        for m in objects.relations.iter().filter(|r| r.kind == "m" && r.populated) {
            post.push(ddl(
                format!("contents of materialized view {}", m.name),
                format!("REFRESH MATERIALIZED VIEW {}", q(&m.name)),
            ));
        }
        post.extend(comments);
        s
    }

    /// Creates the schema and everything that goes before the data, inside the caller's
    /// transaction.
    pub async fn create_pre_data(&self, client: &Client, scope: &Scope) -> Result<()> {
        let schema = scope.schema.as_str();
        self.refuse_incomplete(schema)?;
        let s = quote_ident(schema);
        // A restore aims the structure at a staging schema it has created already.
        if scope.dumped_as.is_none() {
            client
                .batch_execute(&format!("CREATE SCHEMA {s}"))
                .await
                .with_context(|| format!("creating schema {schema}"))?;
        }
        if let Some(c) = &self.schema_comment {
            client
                .batch_execute(&format!("COMMENT ON SCHEMA {s} IS {}", literal(c)))
                .await?;
        }
        run(client, scope, &self.pre_data).await
    }

    /// Keys, indexes, foreign keys, triggers and the rest, once the rows are in.
    pub async fn create_post_data(&self, client: &Client, scope: &Scope) -> Result<()> {
        run(client, scope, &self.post_data).await
    }

    /// Holds every statement to the restore guard, as a restore will (a backup checks itself).
    pub fn check(&self, scope: &Scope) -> Result<(), String> {
        let mut own_first = false;
        for d in self.pre_data.iter().chain(&self.post_data) {
            guard::single(&d.sql, scope, &mut own_first)
                .map_err(|why| format!("{} would be refused by a restore: {why}", d.object))?;
        }
        Ok(())
    }

    pub(super) fn refuse_incomplete(&self, schema: &str) -> Result<()> {
        if self.not_carried.is_empty() {
            return Ok(());
        }
        anyhow::bail!(
            "schema {schema} does not exist, and this json backup cannot create it: it does not carry {} \
             (restore a --format sql backup, or create the schema with the application's migrations and restore into it)",
            self.not_carried.join(", ")
        )
    }
}

/// Runs statements with an empty search path, as pg_dump's output does: every name is qualified.
/// The statements come from the object, which is not trusted: each one passes the restore guard
/// (the same rules as a plain dump's) and is sent alone, never several in one string.
async fn run(client: &Client, scope: &Scope, statements: &[Ddl]) -> Result<()> {
    client
        .batch_execute("SET LOCAL search_path = ''; SET LOCAL check_function_bodies = false")
        .await?;
    let mut own_first = false;
    for d in statements {
        let checked = guard::single(&d.sql, scope, &mut own_first).map_err(|why| {
            anyhow::anyhow!(
                "the backup's structure is refused at {}: {why} (the object is not what tenant-backup writes; nothing was changed)",
                d.object
            )
        })?;
        let Some(sql) = checked else { continue };
        client
            .batch_execute(&sql)
            .await
            .map_err(|e| anyhow::anyhow!("{}", crate::pg::connect::describe_pg_error_without_data(&e)))
            .with_context(|| format!("creating {} in {}", d.object, scope.schema))?;
    }
    client
        .batch_execute("SET LOCAL search_path TO DEFAULT; SET LOCAL check_function_bodies TO DEFAULT")
        .await?;
    Ok(())
}

/// Views and materialized views, each after the views it reads (cycles cannot exist).
fn view_order(objects: &SchemaObjects) -> Vec<&Relation> {
    let views: Vec<&Relation> = objects
        .relations
        .iter()
        .filter(|r| matches!(r.kind.as_str(), "v" | "m"))
        .collect();
    let mut done: Vec<u32> = Vec::new();
    let mut out = Vec::new();
    let mut left = views;
    while !left.is_empty() {
        let (ready, wait): (Vec<&Relation>, Vec<&Relation>) = left.into_iter().partition(|v| {
            objects
                .view_deps
                .iter()
                .filter(|(from, _)| *from == v.oid)
                .all(|(_, to)| done.contains(to))
        });
        if ready.is_empty() {
            // Not possible in PostgreSQL; keep going rather than loop.
            out.extend(wait);
            break;
        }
        done.extend(ready.iter().map(|v| v.oid));
        out.extend(ready);
        left = wait;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jsonl::objects::{Attribute, Constraint, Index, Sequence};

    fn rel(oid: u32, name: &str, kind: &str) -> Relation {
        Relation {
            oid,
            name: name.into(),
            kind: kind.into(),
            unlogged: false,
            options: Vec::new(),
            is_partition: false,
            inherits: false,
            row_security: false,
            force_row_security: false,
            replica_identity: "d".into(),
            populated: true,
            comment: None,
            view_def: None,
            tablespace: None,
        }
    }

    fn column(rel: u32, num: i16, name: &str, type_name: &str) -> Attribute {
        Attribute {
            rel,
            num,
            name: name.into(),
            type_name: type_name.into(),
            not_null: true,
            identity: String::new(),
            generated: String::new(),
            default: None,
            collation: None,
            comment: None,
        }
    }

    /// A patient table with an identity key, a view over it, a view over that view (listed
    /// first), a foreign key, an index and comments.
    fn clinic() -> SchemaObjects {
        let mut id = column(1, 1, "id", "bigint");
        id.identity = "d".into();
        let mut notes = column(1, 2, "notes", "text");
        notes.not_null = false;
        notes.comment = Some("it's free text".into());
        let mut v_inner = rel(3, "active", "v");
        v_inner.view_def = Some(" SELECT id FROM s.patient;".into());
        let mut v_outer = rel(2, "active_count", "v");
        v_outer.view_def = Some(" SELECT count(*) FROM s.active;".into());
        v_outer.options = vec!["security_barrier=true".into()];
        let mut patient = rel(1, "patient", "r");
        patient.comment = Some("patients".into());
        SchemaObjects {
            relations: vec![
                patient,
                v_outer,
                v_inner,
                rel(4, "patient_id_seq", "S"),
                rel(5, "visit", "r"),
            ],
            columns: vec![id, notes, column(5, 1, "patient_id", "bigint")],
            constraints: vec![
                Constraint {
                    rel: 1,
                    name: "patient_pkey".into(),
                    kind: "p".into(),
                    def: "PRIMARY KEY (id)".into(),
                    validated: true,
                    local: true,
                    references: 0,
                    comment: None,
                },
                Constraint {
                    rel: 5,
                    name: "visit_patient_fk".into(),
                    kind: "f".into(),
                    def: "FOREIGN KEY (patient_id) REFERENCES s.patient(id) DEFERRABLE INITIALLY DEFERRED".into(),
                    validated: true,
                    local: true,
                    references: 1,
                    comment: Some("the patient".into()),
                },
            ],
            indexes: vec![
                Index {
                    rel: 1,
                    name: "patient_pkey".into(),
                    def: "CREATE UNIQUE INDEX patient_pkey ON s.patient USING btree (id)".into(),
                    clustered: false,
                    replica_identity: false,
                    of_constraint: true,
                    valid: true,
                    comment: None,
                },
                Index {
                    rel: 5,
                    name: "visit_patient".into(),
                    def: "CREATE INDEX visit_patient ON s.visit USING btree (patient_id)".into(),
                    clustered: true,
                    replica_identity: false,
                    of_constraint: false,
                    valid: true,
                    comment: None,
                },
            ],
            sequences: vec![Sequence {
                oid: 4,
                type_name: "bigint".into(),
                start: 1,
                increment: 1,
                max: i64::MAX,
                min: 1,
                cache: 1,
                cycle: false,
                last_value: Some(7),
                owner: Some((1, 1, "i".into())),
            }],
            view_deps: vec![(2, 3)],
            ..Default::default()
        }
    }

    #[test]
    fn tables_come_bare_before_the_data_and_keys_indexes_and_foreign_keys_after() {
        let s = Structure::from_objects("s", &clinic());
        let pre: Vec<&str> = s.pre_data.iter().map(|d| d.object.as_str()).collect();
        assert_eq!(
            pre,
            [
                "table patient",
                "table visit",
                "view active",
                "view active_count",
                "comment on COLUMN \"s\".\"patient\".\"notes\"",
                "comment on TABLE \"s\".\"patient\""
            ]
        );
        assert_eq!(
            s.pre_data[0].sql,
            "CREATE TABLE \"s\".\"patient\" (\n    \"id\" bigint GENERATED BY DEFAULT AS IDENTITY (SEQUENCE NAME \"s\".\"patient_id_seq\" \
             START WITH 1 INCREMENT BY 1 MINVALUE 1 MAXVALUE 9223372036854775807 CACHE 1 NO CYCLE) NOT NULL,\n    \"notes\" text\n)"
        );
        assert_eq!(
            s.pre_data[3].sql,
            "CREATE VIEW \"s\".\"active_count\" WITH (\"security_barrier\"='true') AS\n SELECT count(*) FROM s.active"
        );
        assert_eq!(
            s.pre_data[4].sql,
            "COMMENT ON COLUMN \"s\".\"patient\".\"notes\" IS 'it''s free text'"
        );
        let post: Vec<&str> = s.post_data.iter().map(|d| d.sql.as_str()).collect();
        assert_eq!(
            post,
            [
                "ALTER TABLE \"s\".\"patient\" ADD CONSTRAINT \"patient_pkey\" PRIMARY KEY (id)",
                "CREATE INDEX visit_patient ON s.visit USING btree (patient_id)",
                "ALTER TABLE \"s\".\"visit\" CLUSTER ON \"visit_patient\"",
                "ALTER TABLE \"s\".\"visit\" ADD CONSTRAINT \"visit_patient_fk\" FOREIGN KEY (patient_id) REFERENCES s.patient(id) DEFERRABLE INITIALLY DEFERRED",
                "COMMENT ON CONSTRAINT \"visit_patient_fk\" ON \"s\".\"visit\" IS 'the patient'",
            ]
        );
        assert!(s.not_carried.is_empty());
    }

    #[test]
    fn what_is_not_carried_is_named_and_refuses_a_new_schema() {
        let mut o = clinic();
        o.unsupported.push("domain s.positive".into());
        let s = Structure::from_objects("s", &o);
        let err = s.refuse_incomplete("s").unwrap_err().to_string();
        assert!(err.contains("does not carry domain s.positive"), "{err}");
        // And it survives the dump: serialized and read back unchanged.
        let back: Structure = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }
}
