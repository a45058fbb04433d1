//! What the catalog holds for one schema, read only through indexes, so that the cost does not grow
//! with the number of schemas in the database: `pg_class` has no index on `relnamespace` alone, so
//! a filter on it scans every relation of every tenant. Instead the schema's oid comes first, then
//! the objects that depend on it (`pg_depend_reference_index`), then each per-relation catalog by
//! the relations' oids (`attrelid`, `conrelid`, `indrelid`, `tgrelid`, `seqrelid`, `ev_class`: all
//! indexed). The first query finds the objects; the rest go out pipelined, in one round trip.
//!
//! Comments are read from `pg_description` by its key in a subquery, not through
//! `obj_description`/`col_description`: those are SQL functions run through the function executor
//! for every row, four times the server time of the lookup (100 tenants' columns and indexes:
//! 170 ms against 47 ms).
//!
//! Definitions come from the server's own deparsers (`pg_get_indexdef`, `pg_get_constraintdef`,
//! `pg_get_viewdef`, `pg_get_functiondef`, `pg_get_triggerdef`, `pg_get_expr`, `format_type`) with
//! only `pg_catalog` on the search path, so every other name comes out qualified, as in pg_dump's
//! output.

use std::collections::{BTreeMap, HashMap};

use anyhow::{Context as _, Result};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Row};

#[derive(Clone, Debug, Default)]
pub struct SchemaObjects {
    pub comment: Option<String>,
    /// Tables, views, materialized views and sequences, by oid.
    pub relations: Vec<Relation>,
    pub columns: Vec<Attribute>,
    pub constraints: Vec<Constraint>,
    pub indexes: Vec<Index>,
    pub triggers: Vec<Trigger>,
    pub sequences: Vec<Sequence>,
    pub functions: Vec<Function>,
    pub enums: Vec<EnumType>,
    pub extensions: Vec<String>,
    pub rules: Vec<Rule>,
    pub statistics: Vec<String>,
    /// `(view, view it reads)`, both in the schema.
    pub view_deps: Vec<(u32, u32)>,
    /// Objects the native structure does not carry, described by the server.
    pub unsupported: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct Relation {
    pub oid: u32,
    pub name: String,
    /// `r` table, `p` partitioned table, `v` view, `m` materialized view, `S` sequence, …
    pub kind: String,
    pub unlogged: bool,
    pub options: Vec<String>,
    pub is_partition: bool,
    /// A typed table (`OF type`) or an inheritance child: carried as data only.
    pub inherits: bool,
    pub row_security: bool,
    pub force_row_security: bool,
    /// `d`, `n`, `f`, `i`.
    pub replica_identity: String,
    pub populated: bool,
    pub comment: Option<String>,
    pub view_def: Option<String>,
    pub tablespace: Option<String>,
}

impl Relation {
    /// A table whose rows the dump carries (a partitioned table's through the parent).
    pub fn holds_data(&self) -> bool {
        matches!(self.kind.as_str(), "r" | "p") && !self.is_partition
    }
}

#[derive(Clone, Debug)]
pub struct Attribute {
    pub rel: u32,
    pub num: i16,
    pub name: String,
    pub type_name: String,
    pub not_null: bool,
    /// `a` (always), `d` (by default) or empty.
    pub identity: String,
    /// `s` (stored) or empty.
    pub generated: String,
    pub default: Option<String>,
    pub collation: Option<String>,
    pub comment: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Constraint {
    pub rel: u32,
    pub name: String,
    /// `p`, `u`, `x`, `c`, `f`, `t`.
    pub kind: String,
    pub def: String,
    pub validated: bool,
    pub local: bool,
    pub references: u32,
    pub comment: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Index {
    pub rel: u32,
    pub name: String,
    pub def: String,
    pub clustered: bool,
    pub replica_identity: bool,
    /// Made by a primary key, unique or exclusion constraint (created with it).
    pub of_constraint: bool,
    pub valid: bool,
    pub comment: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Trigger {
    pub rel: u32,
    pub name: String,
    pub def: String,
    /// `O` (origin, the default), `D` disabled, `R` replica, `A` always.
    pub enabled: String,
    pub comment: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Sequence {
    pub oid: u32,
    pub type_name: String,
    pub start: i64,
    pub increment: i64,
    pub max: i64,
    pub min: i64,
    pub cache: i64,
    pub cycle: bool,
    pub last_value: Option<i64>,
    /// The column that owns it: `(table oid, column number, 'a' OWNED BY | 'i' identity)`.
    pub owner: Option<(u32, i32, String)>,
}

#[derive(Clone, Debug)]
pub struct Function {
    pub name: String,
    pub kind: String,
    pub identity_args: String,
    pub def: Option<String>,
    /// Its body is parsed at creation (`BEGIN ATOMIC`), or its signature uses a row type of the
    /// schema: it can only be created once the tables are there.
    pub needs_tables: bool,
    pub comment: Option<String>,
}

#[derive(Clone, Debug)]
pub struct EnumType {
    pub name: String,
    pub labels: Vec<String>,
    pub comment: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Rule {
    pub rel: u32,
    pub name: String,
    pub def: String,
    pub comment: Option<String>,
}

const OBJECTS: &str = "\
SELECT n.oid, (SELECT dsc.description FROM pg_description dsc \
     WHERE dsc.objoid = n.oid AND dsc.classoid = 'pg_catalog.pg_namespace'::regclass AND dsc.objsubid = 0), current_setting('server_version_num')::int, \
  ARRAY(SELECT d.objid FROM pg_depend d WHERE d.refclassid = 'pg_namespace'::regclass AND d.refobjid = n.oid \
        AND d.classid = 'pg_class'::regclass AND NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = d.classid \
        AND e.objid = d.objid AND e.deptype = 'e') ORDER BY 1), \
  ARRAY(SELECT d.objid FROM pg_depend d WHERE d.refclassid = 'pg_namespace'::regclass AND d.refobjid = n.oid \
        AND d.classid = 'pg_proc'::regclass AND NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = d.classid \
        AND e.objid = d.objid AND e.deptype = 'e') ORDER BY 1), \
  ARRAY(SELECT d.objid FROM pg_depend d WHERE d.refclassid = 'pg_namespace'::regclass AND d.refobjid = n.oid \
        AND d.classid = 'pg_type'::regclass AND NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = d.classid \
        AND e.objid = d.objid AND e.deptype = 'e') ORDER BY 1), \
  ARRAY(SELECT d.objid FROM pg_depend d WHERE d.refclassid = 'pg_namespace'::regclass AND d.refobjid = n.oid \
        AND d.classid = 'pg_statistic_ext'::regclass ORDER BY 1), \
  ARRAY(SELECT x.extname::text FROM pg_depend d JOIN pg_extension x ON x.oid = d.objid \
        WHERE d.refclassid = 'pg_namespace'::regclass AND d.refobjid = n.oid AND d.classid = 'pg_extension'::regclass ORDER BY 1), \
  ARRAY(SELECT pg_describe_object(d.classid, d.objid, d.objsubid) FROM pg_depend d \
        WHERE d.refclassid = 'pg_namespace'::regclass AND d.refobjid = n.oid \
        AND d.classid NOT IN ('pg_class'::regclass, 'pg_proc'::regclass, 'pg_type'::regclass, \
                              'pg_statistic_ext'::regclass, 'pg_extension'::regclass) \
        AND NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = d.classid AND e.objid = d.objid AND e.deptype = 'e') \
        ORDER BY 1), \
  n.nspname::text \
FROM pg_namespace n WHERE n.nspname = ANY($1::text[]::name[])";

const RELATIONS: &str = "\
SELECT c.oid, c.relname::text, c.relkind::text, c.relpersistence = 'u', coalesce(c.reloptions::text[], '{}'), \
  c.relispartition, c.reloftype <> 0 OR EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhrelid = c.oid), \
  c.relrowsecurity, c.relforcerowsecurity, c.relreplident::text, c.relispopulated, (SELECT dsc.description FROM pg_description dsc \
     WHERE dsc.objoid = c.oid AND dsc.classoid = 'pg_catalog.pg_class'::regclass AND dsc.objsubid = 0), \
  CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid) END, \
  (SELECT t.spcname::text FROM pg_tablespace t WHERE t.oid = c.reltablespace) \
FROM pg_class c WHERE c.oid = ANY($1) ORDER BY c.oid";

const COLUMNS: &str = "\
SELECT a.attrelid, a.attnum, a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attidentity::text, \
  a.attgenerated::text, \
  (SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d WHERE d.adrelid = a.attrelid AND d.adnum = a.attnum), \
  (SELECT format('%I.%I', (SELECT cn.nspname FROM pg_namespace cn WHERE cn.oid = co.collnamespace), co.collname) \
     FROM pg_collation co WHERE co.oid = a.attcollation \
     AND a.attcollation <> (SELECT t.typcollation FROM pg_type t WHERE t.oid = a.atttypid)), \
  (SELECT dsc.description FROM pg_description dsc \
     WHERE dsc.objoid = a.attrelid AND dsc.classoid = 'pg_catalog.pg_class'::regclass AND dsc.objsubid = a.attnum) \
FROM pg_attribute a WHERE a.attrelid = ANY($1) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attrelid, a.attnum";

const CONSTRAINTS: &str = "\
SELECT k.conrelid, k.conname::text, k.contype::text, pg_get_constraintdef(k.oid), k.convalidated, k.conislocal, \
  k.confrelid, (SELECT dsc.description FROM pg_description dsc \
     WHERE dsc.objoid = k.oid AND dsc.classoid = 'pg_catalog.pg_constraint'::regclass AND dsc.objsubid = 0) \
FROM pg_constraint k WHERE k.conrelid = ANY($1) ORDER BY k.conrelid, k.conname";

const INDEXES: &str = "\
SELECT i.indrelid, (SELECT c.relname::text FROM pg_class c WHERE c.oid = i.indexrelid), pg_get_indexdef(i.indexrelid), \
  i.indisclustered, i.indisreplident, \
  EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conrelid = i.indrelid AND k.conindid = i.indexrelid \
          AND k.contype IN ('p', 'u', 'x')), \
  i.indisvalid, (SELECT dsc.description FROM pg_description dsc \
     WHERE dsc.objoid = i.indexrelid AND dsc.classoid = 'pg_catalog.pg_class'::regclass AND dsc.objsubid = 0) \
FROM pg_index i WHERE i.indrelid = ANY($1) ORDER BY 2";

const TRIGGERS: &str = "\
SELECT t.tgrelid, t.tgname::text, pg_get_triggerdef(t.oid), t.tgenabled::text, (SELECT dsc.description FROM pg_description dsc \
     WHERE dsc.objoid = t.oid AND dsc.classoid = 'pg_catalog.pg_trigger'::regclass AND dsc.objsubid = 0) \
FROM pg_trigger t WHERE t.tgrelid = ANY($1) AND NOT t.tgisinternal ORDER BY 1, 2";

/// A sequence's current value: read in the dump's own snapshot only (it opens the sequence).
const SEQUENCE_VALUE: &str =
    "CASE WHEN has_sequence_privilege(s.seqrelid, 'SELECT,USAGE') THEN pg_sequence_last_value(s.seqrelid) END";

const SEQUENCES: &str = "\
SELECT s.seqrelid, format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement, s.seqmax, s.seqmin, s.seqcache, s.seqcycle, \
  CASE WHEN has_sequence_privilege(s.seqrelid, 'SELECT,USAGE') THEN pg_sequence_last_value(s.seqrelid) END, \
  o.refobjid, o.refobjsubid, o.deptype::text \
FROM pg_sequence s LEFT JOIN LATERAL ( \
  SELECT d.refobjid, d.refobjsubid, d.deptype FROM pg_depend d WHERE d.classid = 'pg_class'::regclass \
    AND d.objid = s.seqrelid AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i') LIMIT 1) o ON true \
WHERE s.seqrelid = ANY($1) ORDER BY s.seqrelid";

/// `{body}` is `p.prosqlbody IS NOT NULL` from PostgreSQL 14 on, `false` before.
const FUNCTIONS: &str = "\
SELECT p.proname::text, p.prokind::text, pg_get_function_identity_arguments(p.oid), \
  CASE WHEN p.prokind IN ('f', 'p', 'w') THEN pg_get_functiondef(p.oid) END, \
  {body} OR EXISTS (SELECT 1 FROM pg_depend d JOIN pg_type t ON t.oid = d.refobjid \
    WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.refclassid = 'pg_type'::regclass \
    AND t.typnamespace = p.pronamespace AND t.typtype <> 'e' \
    AND (t.typrelid <> 0 OR (SELECT e.typrelid FROM pg_type e WHERE e.oid = t.typelem) <> 0)), \
  (SELECT dsc.description FROM pg_description dsc \
     WHERE dsc.objoid = p.oid AND dsc.classoid = 'pg_catalog.pg_proc'::regclass AND dsc.objsubid = 0), p.oid \
FROM pg_proc p WHERE p.oid = ANY($1) ORDER BY p.oid";

const TYPES: &str = "\
SELECT t.typname::text, t.typtype::text, \
  ARRAY(SELECT e.enumlabel::text FROM pg_enum e WHERE e.enumtypid = t.oid ORDER BY e.enumsortorder), \
  (SELECT dsc.description FROM pg_description dsc \
     WHERE dsc.objoid = t.oid AND dsc.classoid = 'pg_catalog.pg_type'::regclass AND dsc.objsubid = 0), format_type(t.oid, NULL), t.oid \
FROM pg_type t WHERE t.oid = ANY($1) ORDER BY t.oid";

const RULES: &str = "\
SELECT r.ev_class, r.rulename::text, pg_get_ruledef(r.oid), (SELECT dsc.description FROM pg_description dsc \
     WHERE dsc.objoid = r.oid AND dsc.classoid = 'pg_catalog.pg_rewrite'::regclass AND dsc.objsubid = 0) \
FROM pg_rewrite r WHERE r.ev_class = ANY($1) AND r.rulename <> '_RETURN' ORDER BY 1, 2";

const VIEW_DEPS: &str = "\
SELECT DISTINCT r.ev_class, d.refobjid FROM pg_rewrite r \
JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid \
WHERE r.ev_class = ANY($1) AND d.refclassid = 'pg_class'::regclass AND d.refobjid = ANY($1) AND d.refobjid <> r.ev_class";

const POLICIES: &str = "\
SELECT format('policy %I on %s', p.polname, p.polrelid::regclass), p.polrelid FROM pg_policy p WHERE p.polrelid = ANY($1) ORDER BY 1";

const STATISTICS: &str =
    "SELECT pg_get_statisticsobjdef(s.oid), s.oid FROM pg_statistic_ext s WHERE s.oid = ANY($1) ORDER BY s.oid";

/// Catalog reads that must stay on indexes, whatever the planner thinks of the catalogs' sizes.
/// Set inside the caller's transaction and put back afterwards (the data is read with seq scans).
/// JIT is off for them: the planner's estimates for `= ANY(oids)` over 100 tenants pass
/// `jit_optimize_above_cost`, and compiling the expressions of the batched fingerprint alone cost
/// 1.5 s of server CPU per 100 tenants (EXPLAIN ANALYZE at 1,000 tenants: 1.8 s in all, 0.3 s
/// without the compilation), for a statement that reads a few thousand index entries. (`jit` is
/// set only where the server has it, from PostgreSQL 11: `current_setting(…, true)` is NULL
/// before.)
const INDEXES_ONLY: &str = "SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off; \
     SELECT pg_catalog.set_config('jit', 'off', true) WHERE pg_catalog.current_setting('jit', true) IS NOT NULL";
/// Puts back what [`INDEXES_ONLY`] set but `jit` ([`JIT_BACK`]).
const INDEXES_ONLY_END: &str =
    "SET LOCAL enable_seqscan TO DEFAULT; SET LOCAL enable_bitmapscan TO DEFAULT; SET LOCAL search_path TO DEFAULT";
/// `SET LOCAL jit TO DEFAULT` where the server has `jit`.
const JIT_BACK: &str =
    "SELECT pg_catalog.set_config(s.name, s.reset_val, true) FROM pg_catalog.pg_settings s WHERE s.name = 'jit'";
/// The fingerprint's generic plan for the rest of the dump's transaction (which runs no other
/// prepared statement), where the server has `plan_cache_mode` (PostgreSQL 12).
const GENERIC_PLAN: &str = "SELECT pg_catalog.set_config('plan_cache_mode', 'force_generic_plan', true) \
     WHERE pg_catalog.current_setting('plan_cache_mode', true) IS NOT NULL";

/// How much of the schema to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Tables, their columns and foreign keys: enough to load data.
    Tables,
    /// Everything the native format carries.
    Structure,
}

/// A cheap fingerprint of every catalog row the structure read depends on, for each schema of
/// `$1`: the namespace's objects (its `pg_depend` rows), and each object's catalog rows by key and
/// `xmin`. Any DDL that commits in between changes one of them (a new row, a row gone, or a new row
/// version with its own `xmin`), so a structure read in another snapshot, for many tenants at once,
/// is used only when the tenant's own snapshot shows the very same rows. No deparser runs: each part
/// is an index lookup (one condition per part: an `OR` of two would scan a whole catalog, as
/// bitmap scans are off). With `$2` it also reads the schema's sequences' current values (which are
/// not transactional, and must be read after the snapshot that reads the rows).
const FINGERPRINT: &str = "\
SELECT n.nspname::text, md5(concat_ws('/', n.xmin, d.deps, \
  (SELECT string_agg(concat_ws(':', c.oid, c.xmin), ',' ORDER BY c.oid) FROM pg_class c WHERE c.oid = ANY(d.rels)), \
  (SELECT string_agg(concat_ws(':', a.attrelid, a.attnum, a.xmin), ',' ORDER BY a.attrelid, a.attnum) \
     FROM pg_attribute a WHERE a.attrelid = ANY(d.rels)), \
  (SELECT string_agg(concat_ws(':', x.oid, x.xmin), ',' ORDER BY x.oid) FROM pg_attrdef x WHERE x.adrelid = ANY(d.rels)), \
  (SELECT string_agg(concat_ws(':', k.oid, k.xmin), ',' ORDER BY k.oid) FROM pg_constraint k WHERE k.conrelid = ANY(d.rels)), \
  (SELECT string_agg(concat_ws(':', i.indexrelid, i.xmin, c.xmin), ',' ORDER BY i.indexrelid) \
     FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = ANY(d.rels)), \
  (SELECT string_agg(concat_ws(':', t.oid, t.xmin), ',' ORDER BY t.oid) FROM pg_trigger t WHERE t.tgrelid = ANY(d.rels)), \
  (SELECT string_agg(concat_ws(':', r.oid, r.xmin), ',' ORDER BY r.oid) FROM pg_rewrite r WHERE r.ev_class = ANY(d.rels)), \
  (SELECT string_agg(concat_ws(':', s.seqrelid, s.xmin), ',' ORDER BY s.seqrelid) FROM pg_sequence s WHERE s.seqrelid = ANY(d.rels)), \
  (SELECT string_agg(concat_ws(':', p.oid, p.xmin), ',' ORDER BY p.oid) FROM pg_policy p WHERE p.polrelid = ANY(d.rels)), \
  (SELECT string_agg(concat_ws(':', h.inhrelid, h.inhseqno, h.xmin), ',' ORDER BY h.inhrelid, h.inhseqno) \
     FROM pg_inherits h WHERE h.inhrelid = ANY(d.rels)), \
  (SELECT string_agg(concat_ws(':', e.objid, e.objsubid, e.refclassid, e.refobjid, e.refobjsubid, e.deptype), ',' \
     ORDER BY e.objid, e.objsubid, e.refclassid, e.refobjid, e.refobjsubid) FROM pg_depend e \
     WHERE e.classid = 'pg_class'::regclass AND e.objid = ANY(d.rels)), \
  (SELECT string_agg(concat_ws(':', e.objid, e.objsubid, e.refclassid, e.refobjid, e.refobjsubid, e.deptype), ',' \
     ORDER BY e.objid, e.objsubid, e.refclassid, e.refobjid, e.refobjsubid) FROM pg_depend e \
     WHERE e.classid = 'pg_proc'::regclass AND e.objid = ANY(d.procs)), \
  (SELECT string_agg(concat_ws(':', e.objid, e.objsubid, e.refclassid, e.refobjid, e.refobjsubid, e.deptype), ',' \
     ORDER BY e.objid, e.objsubid, e.refclassid, e.refobjid, e.refobjsubid) FROM pg_depend e \
     WHERE e.classid = 'pg_type'::regclass AND e.objid = ANY(d.types)), \
  (SELECT string_agg(concat_ws(':', e.objid, e.objsubid, e.refclassid, e.refobjid, e.refobjsubid, e.deptype), ',' \
     ORDER BY e.objid, e.objsubid, e.refclassid, e.refobjid, e.refobjsubid) FROM pg_depend e \
     WHERE e.classid = 'pg_rewrite'::regclass AND e.objid = ANY(o.rules)), \
  (SELECT string_agg(concat_ws(':', p.oid, p.xmin), ',' ORDER BY p.oid) FROM pg_proc p WHERE p.oid = ANY(d.procs)), \
  (SELECT string_agg(concat_ws(':', t.oid, t.xmin), ',' ORDER BY t.oid) FROM pg_type t WHERE t.oid = ANY(d.types)), \
  (SELECT string_agg(concat_ws(':', e.oid, e.xmin), ',' ORDER BY e.oid) FROM pg_enum e WHERE e.enumtypid = ANY(d.types)), \
  (SELECT string_agg(concat_ws(':', x.oid, x.xmin), ',' ORDER BY x.oid) FROM pg_statistic_ext x WHERE x.oid = ANY(d.stats)), \
  (SELECT string_agg(concat_ws(':', x.oid, x.xmin), ',' ORDER BY x.oid) FROM pg_extension x WHERE x.oid = ANY(d.exts)), \
  (SELECT string_agg(concat_ws(':', c.objoid, c.classoid, c.objsubid, c.xmin), ',' ORDER BY c.objoid, c.classoid, c.objsubid) \
     FROM pg_description c WHERE c.objoid = ANY(ARRAY[n.oid] || d.rels || d.procs || d.types || o.cons || o.indexes || o.triggers || o.rules)) \
  )), \
  ARRAY(SELECT s.seqrelid FROM pg_sequence s WHERE $2 AND s.seqrelid = ANY(d.rels) ORDER BY 1), \
  ARRAY(SELECT CASE WHEN has_sequence_privilege(s.seqrelid, 'SELECT,USAGE') THEN pg_sequence_last_value(s.seqrelid) END \
        FROM pg_sequence s WHERE $2 AND s.seqrelid = ANY(d.rels) ORDER BY s.seqrelid) \
FROM pg_namespace n \
CROSS JOIN LATERAL ( \
  SELECT string_agg(concat_ws(':', d.classid, d.objid, d.objsubid, d.deptype), ',' ORDER BY d.classid, d.objid, d.objsubid) AS deps, \
    coalesce(array_agg(d.objid) FILTER (WHERE d.classid = 'pg_class'::regclass), '{}') AS rels, \
    coalesce(array_agg(d.objid) FILTER (WHERE d.classid = 'pg_proc'::regclass), '{}') AS procs, \
    coalesce(array_agg(d.objid) FILTER (WHERE d.classid = 'pg_type'::regclass), '{}') AS types, \
    coalesce(array_agg(d.objid) FILTER (WHERE d.classid = 'pg_statistic_ext'::regclass), '{}') AS stats, \
    coalesce(array_agg(d.objid) FILTER (WHERE d.classid = 'pg_extension'::regclass), '{}') AS exts \
  FROM pg_depend d WHERE d.refclassid = 'pg_namespace'::regclass AND d.refobjid = n.oid) d \
CROSS JOIN LATERAL ( \
  SELECT ARRAY(SELECT k.oid FROM pg_constraint k WHERE k.conrelid = ANY(d.rels)) AS cons, \
    ARRAY(SELECT i.indexrelid FROM pg_index i WHERE i.indrelid = ANY(d.rels)) AS indexes, \
    ARRAY(SELECT t.oid FROM pg_trigger t WHERE t.tgrelid = ANY(d.rels)) AS triggers, \
    ARRAY(SELECT r.oid FROM pg_rewrite r WHERE r.ev_class = ANY(d.rels)) AS rules) o \
WHERE n.nspname = ANY($1::text[]::name[])";

/// The name under which a run's connections keep [`FINGERPRINT`] prepared ([`prepare_fingerprint`]).
/// It is executed with its generic plan (`plan_cache_mode`): the server's own choice stayed with a
/// custom plan for every tenant (the generic one is estimated for ten schemas), planned again each
/// time, 1.0-1.5 ms a tenant at 1,000 tenants against 0.04 ms (`EXPLAIN ANALYZE`), for the same
/// index lookups.
const FINGERPRINT_NAME: &str = "tenant_backup_fingerprint";

/// Prepares the fingerprint on a session connection, for the dumps it will run with a prefetched
/// structure (a session-level prepared statement: a run's connections are session connections).
pub async fn prepare_fingerprint(client: &Client) -> Result<()> {
    client
        .batch_execute(&format!("PREPARE {FINGERPRINT_NAME} (text[], bool) AS {FINGERPRINT}"))
        .await?;
    Ok(())
}

/// The schema's fingerprint and its sequences' values now, through the prepared statement (see
/// [`prepare_fingerprint`]), after `opening` (the dump's `BEGIN`), all in one round trip; the
/// catalog settings it needs are put back after it, but for `jit` and the generic plan, left for
/// the rest of the dump's transaction (its `COPY`s plan no query). None when the schema is gone.
async fn fingerprint_now(
    client: &Client,
    opening: &str,
    schema: &str,
) -> Result<Option<(String, HashMap<u32, Option<i64>>)>> {
    use tokio_postgres::SimpleQueryMessage;
    let sql = format!(
        "{opening}; SET LOCAL search_path = pg_catalog; {INDEXES_ONLY}; {GENERIC_PLAN}; \
         EXECUTE {FINGERPRINT_NAME}(ARRAY[{}]::text[], true); {INDEXES_ONLY_END}",
        crate::pg::sql::literal(schema)
    );
    // The fingerprint's row, not the settings' (one column each).
    let Some(row) = client.simple_query(&sql).await?.into_iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) if r.len() == 4 => Some(r),
        _ => None,
    }) else {
        return Ok(None);
    };
    let array = |i: usize| -> Vec<String> {
        let text = row.get(i).unwrap_or("{}");
        let inner = text.trim_start_matches('{').trim_end_matches('}');
        if inner.is_empty() {
            Vec::new()
        } else {
            inner.split(',').map(str::to_string).collect()
        }
    };
    let mut values = HashMap::new();
    for (oid, value) in array(2).into_iter().zip(array(3)) {
        let oid: u32 = oid.parse().context("a sequence's oid")?;
        let value = match value.as_str() {
            "NULL" => None,
            v => Some(v.parse::<i64>().context("a sequence's value")?),
        };
        values.insert(oid, value);
    }
    Ok(Some((row.get(1).unwrap_or_default().to_string(), values)))
}

/// Schemas whose structure one run reads in one go (one statement per catalog for all of them).
/// The chunk's rows and objects are the run's largest allocation: at 100 a run's peak RSS was
/// 44 MB at 1,000 tenants against 26 MB at 10, at 25 it is 30 MB; the server plans each batched
/// statement once a chunk (about 9 ms a chunk in all), 3.6 s more at 10,000 tenants than at 100.
pub const PREFETCH_CHUNK: usize = 25;

async fn query(client: &Client, sql: &str, oids: &Vec<u32>) -> Result<Vec<Row>> {
    Ok(client
        .query_typed(sql, &[(oids as &(dyn ToSql + Sync), Type::OID_ARRAY)])
        .await?)
}

/// The rows each catalog query gave for one schema.
#[derive(Default)]
struct Rows<'a> {
    relations: Vec<&'a Row>,
    columns: Vec<&'a Row>,
    constraints: Vec<&'a Row>,
    indexes: Vec<&'a Row>,
    triggers: Vec<&'a Row>,
    sequences: Vec<&'a Row>,
    procs: Vec<&'a Row>,
    types: Vec<&'a Row>,
    rules: Vec<&'a Row>,
    view_deps: Vec<&'a Row>,
    policies: Vec<&'a Row>,
    stats: Vec<&'a Row>,
}

/// The oids the per-relation queries take, from the relations found.
struct Oids {
    with_columns: Vec<u32>,
    seqs: Vec<u32>,
    tables: Vec<u32>,
    views: Vec<u32>,
}

fn oids_of(relations: &[Relation]) -> Oids {
    let of = |keep: &dyn Fn(&str) -> bool| -> Vec<u32> {
        relations.iter().filter(|r| keep(&r.kind)).map(|r| r.oid).collect()
    };
    Oids {
        with_columns: of(&|k| k != "S"),
        seqs: of(&|k| k == "S"),
        tables: of(&|k| matches!(k, "r" | "p")),
        views: of(&|k| matches!(k, "v" | "m")),
    }
}

fn functions_sql(version: i32) -> String {
    FUNCTIONS.replace(
        "{body}",
        if version >= 140000 {
            "p.prosqlbody IS NOT NULL"
        } else {
            "false"
        },
    )
}

/// What the batched read found for one schema: its objects, and the fingerprint of the catalog
/// rows they came from (see [`SchemaObjects::still_current`]).
#[derive(Clone, Debug)]
pub struct Prefetched {
    pub objects: SchemaObjects,
    /// None when read in an exported snapshot: a dump that cannot import it reads its structure
    /// again in its own snapshot (a late tenant, rare; the batched fingerprint cost the server
    /// more than those reads).
    fingerprint: Option<String>,
    /// The snapshot the read was made in, exported for the dump to import, while its reader
    /// still holds it open ([`SchemaObjects::read_many_exported`]).
    pub snapshot: Option<std::sync::Arc<SnapshotLease>>,
}

impl Prefetched {
    /// Whether a dump in its own snapshot can tell the catalog is unchanged (else it reads the
    /// structure again there).
    pub fn has_fingerprint(&self) -> bool {
        self.fingerprint.is_some()
    }
}

/// A share in a snapshot another connection exported and holds open: the dump that imports it
/// reads its rows in the very snapshot its structure was read in. Dropped once imported (or not
/// to be), so the holder knows when nobody needs the snapshot any more.
pub struct SnapshotLease {
    pub id: String,
    /// Told when the lease is dropped.
    pub on_drop: Option<Box<dyn Fn() + Send + Sync>>,
}

impl std::fmt::Debug for SnapshotLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotLease").field("id", &self.id).finish()
    }
}

impl Drop for SnapshotLease {
    fn drop(&mut self) {
        if let Some(release) = &self.on_drop {
            release();
        }
    }
}

impl SchemaObjects {
    /// Reads the schema's objects inside the caller's transaction (a dump's snapshot). None when
    /// the schema does not exist. The planner settings and search path it needs are put back
    /// afterwards.
    pub async fn read(client: &Client, schema: &str, scope: Scope) -> Result<Option<SchemaObjects>> {
        client
            .batch_execute(&format!("SET LOCAL search_path = pg_catalog; {INDEXES_ONLY}"))
            .await?;
        let result = Self::read_inner(client, schema, scope)
            .await
            .with_context(|| format!("reading the catalog of schema {schema}"))?;
        // (Only after a read that went through: a failed one aborted the transaction, and its
        // own error is the one to tell.)
        client.batch_execute(&format!("{INDEXES_ONLY_END}; {JIT_BACK}")).await?;
        Ok(result)
    }

    async fn read_inner(client: &Client, schema: &str, scope: Scope) -> Result<Option<SchemaObjects>> {
        let names = vec![schema.to_string()];
        let rows = client.query_typed(OBJECTS, &[(&names, Type::TEXT_ARRAY)]).await?;
        let Some(top) = rows.first() else {
            return Ok(None);
        };
        let rels: Vec<u32> = top.get(3);
        let relations = query(client, RELATIONS, &rels).await?;
        let oids = oids_of(&relations.iter().map(relation).collect::<Vec<_>>());
        if scope == Scope::Tables {
            let (columns, constraints) = futures::try_join!(
                query(client, COLUMNS, &oids.with_columns),
                query(client, CONSTRAINTS, &oids.with_columns)
            )?;
            let mut out = new_objects(top);
            out.relations = relations.iter().map(relation).collect();
            out.columns = columns.iter().map(attribute).collect();
            out.constraints = constraints.iter().map(constraint).collect();
            return Ok(Some(out));
        }
        let (procs, types, stats): (Vec<u32>, Vec<u32>, Vec<u32>) = (top.get(4), top.get(5), top.get(6));
        let functions = functions_sql(top.get(2));
        // One round trip: the driver pipelines queries that are awaited together.
        let (columns, constraints, indexes, triggers, sequences, procs, types, rules, view_deps, policies, stats) = futures::try_join!(
            query(client, COLUMNS, &oids.with_columns),
            query(client, CONSTRAINTS, &oids.with_columns),
            query(client, INDEXES, &oids.with_columns),
            query(client, TRIGGERS, &oids.with_columns),
            query(client, SEQUENCES, &oids.seqs),
            query(client, &functions, &procs),
            query(client, TYPES, &types),
            query(client, RULES, &oids.tables),
            query(client, VIEW_DEPS, &oids.views),
            query(client, POLICIES, &oids.tables),
            query(client, STATISTICS, &stats),
        )?;
        fn all(v: &[Row]) -> Vec<&Row> {
            v.iter().collect()
        }
        Ok(Some(assemble(
            top,
            Rows {
                relations: all(&relations),
                columns: all(&columns),
                constraints: all(&constraints),
                indexes: all(&indexes),
                triggers: all(&triggers),
                sequences: all(&sequences),
                procs: all(&procs),
                types: all(&types),
                rules: all(&rules),
                view_deps: all(&view_deps),
                policies: all(&policies),
                stats: all(&stats),
            },
        )))
    }

    /// The structure of many schemas at once, in a read-only transaction of its own on `client`
    /// (which must not be in one): one statement per catalog for all of them, instead of one per
    /// catalog for each. Each schema's objects come with the fingerprint of the catalog rows they
    /// were read from; a dump uses them only if its own snapshot shows the same rows
    /// ([`SchemaObjects::still_current`]). Sequences' values are not read here (they are read in
    /// each dump's snapshot), so the transaction locks no tenant relation for them. Schemas that
    /// do not exist are left out.
    pub async fn read_many(client: &Client, schemas: &[String]) -> Result<BTreeMap<String, Prefetched>> {
        client
            .batch_execute(&format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; {}; SET LOCAL search_path = pg_catalog; {INDEXES_ONLY}",
                super::VALUE_SETTINGS
            ))
            .await?;
        let result = Self::read_many_inner(client, schemas, true).await;
        let end = client.batch_execute("COMMIT").await;
        let out = result.context("reading the catalog of many schemas at once")?;
        end?;
        Ok(out)
    }

    /// [`SchemaObjects::read_many`] in a snapshot exported first (`pg_export_snapshot`), whose
    /// transaction is left open on `client`: the caller holds it while dumps import the snapshot
    /// ([`SchemaObjects::imported`]), then ends it. Returns the snapshot's id with the objects (no
    /// lease set: the caller hands those out). On failure the transaction is rolled back.
    pub async fn read_many_exported(
        client: &Client,
        schemas: &[String],
    ) -> Result<(String, BTreeMap<String, Prefetched>)> {
        let read = async {
            client
                .batch_execute(&format!(
                    "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; {}",
                    super::VALUE_SETTINGS
                ))
                .await?;
            let row = client.query_one("SELECT pg_catalog.pg_export_snapshot()", &[]).await?;
            let id: String = row.get(0);
            client
                .batch_execute(&format!("SET LOCAL search_path = pg_catalog; {INDEXES_ONLY}"))
                .await?;
            let out = Self::read_many_inner(client, schemas, false).await?;
            client.batch_execute(INDEXES_ONLY_END).await?;
            anyhow::Ok((id, out))
        };
        match read.await {
            Ok(read) => Ok(read),
            Err(e) => {
                let _ = client.batch_execute("ROLLBACK").await;
                Err(e.context("reading the catalog of many schemas at once in an exported snapshot"))
            }
        }
    }

    /// Begins the dump's transaction on `client` in the snapshot `objects` were read in
    /// (`SET TRANSACTION SNAPSHOT`), with the dump's value settings, and reads the sequences'
    /// values into `objects` (they are not transactional: read after the snapshot, as pg_dump reads
    /// them), all in one round trip. No fingerprint is needed: the structure and the rows come from
    /// one snapshot. An error (the holder let the snapshot go) leaves `objects` as they were and
    /// the transaction aborted: the caller rolls back.
    pub async fn imported(client: &Client, snapshot: &str, objects: &mut SchemaObjects) -> Result<()> {
        use tokio_postgres::SimpleQueryMessage;
        let seqs: Vec<String> = objects.sequences.iter().map(|s| s.oid.to_string()).collect();
        let mut sql = format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}; {}",
            crate::pg::sql::literal(snapshot),
            super::VALUE_SETTINGS
        );
        if !seqs.is_empty() {
            sql.push_str(&format!(
                "; SELECT s.oid, CASE WHEN pg_catalog.has_sequence_privilege(s.oid, 'SELECT,USAGE') \
                 THEN pg_catalog.pg_sequence_last_value(s.oid) END \
                 FROM pg_catalog.unnest('{{{}}}'::pg_catalog.oid[]) AS s(oid)",
                seqs.join(",")
            ));
        }
        let mut values = HashMap::new();
        for m in client.simple_query(&sql).await? {
            if let SimpleQueryMessage::Row(r) = m {
                let oid: u32 = r.get(0).unwrap_or_default().parse().context("a sequence's oid")?;
                let value = match r.get(1) {
                    None => None,
                    Some(v) => Some(v.parse::<i64>().context("a sequence's value")?),
                };
                values.insert(oid, value);
            }
        }
        for s in &mut objects.sequences {
            s.last_value = values.get(&s.oid).copied().flatten();
        }
        Ok(())
    }

    async fn read_many_inner(
        client: &Client,
        schemas: &[String],
        fingerprints: bool,
    ) -> Result<BTreeMap<String, Prefetched>> {
        let names = schemas.to_vec();
        let tops = client.query_typed(OBJECTS, &[(&names, Type::TEXT_ARRAY)]).await?;
        let Some(first) = tops.first() else {
            return Ok(BTreeMap::new());
        };
        // Which schema (its place in `tops`) each object belongs to.
        let mut owner: HashMap<u32, usize> = HashMap::new();
        let (mut rels, mut procs, mut types, mut stats) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (i, top) in tops.iter().enumerate() {
            for (col, all) in [(3, &mut rels), (4, &mut procs), (5, &mut types), (6, &mut stats)] {
                let oids: Vec<u32> = top.get(col);
                owner.extend(oids.iter().map(|o| (*o, i)));
                all.extend(oids);
            }
        }
        let relations = query(client, RELATIONS, &rels).await?;
        let oids = oids_of(&relations.iter().map(relation).collect::<Vec<_>>());
        let functions = functions_sql(first.get(2));
        let sequences_sql = SEQUENCES.replace(SEQUENCE_VALUE, "NULL::int8");
        let with_values = false;
        let (
            columns,
            constraints,
            indexes,
            triggers,
            sequences,
            procs,
            types,
            rules,
            view_deps,
            policies,
            stats,
            prints,
        ) = futures::try_join!(
            query(client, COLUMNS, &oids.with_columns),
            query(client, CONSTRAINTS, &oids.with_columns),
            query(client, INDEXES, &oids.with_columns),
            query(client, TRIGGERS, &oids.with_columns),
            query(client, &sequences_sql, &oids.seqs),
            query(client, &functions, &procs),
            query(client, TYPES, &types),
            query(client, RULES, &oids.tables),
            query(client, VIEW_DEPS, &oids.views),
            query(client, POLICIES, &oids.tables),
            query(client, STATISTICS, &stats),
            async {
                if !fingerprints {
                    return Ok(Vec::new());
                }
                Ok(client
                    .query_typed(FINGERPRINT, &[(&names, Type::TEXT_ARRAY), (&with_values, Type::BOOL)])
                    .await?)
            },
        )?;
        let mut per: Vec<Rows> = tops.iter().map(|_| Rows::default()).collect();
        macro_rules! spread {
            ($rows:expr, $key:expr, $field:ident) => {
                for r in $rows.iter() {
                    if let Some(&i) = owner.get(&r.get::<_, u32>($key)) {
                        per[i].$field.push(r);
                    }
                }
            };
        }
        spread!(relations, 0, relations);
        spread!(columns, 0, columns);
        spread!(constraints, 0, constraints);
        spread!(indexes, 0, indexes);
        spread!(triggers, 0, triggers);
        spread!(sequences, 0, sequences);
        spread!(procs, 6, procs);
        spread!(types, 5, types);
        spread!(rules, 0, rules);
        spread!(policies, 1, policies);
        spread!(stats, 1, stats);
        // Only the schema's own views, as a read of that schema alone gives them.
        for r in view_deps.iter() {
            let (from, to): (u32, u32) = (r.get(0), r.get(1));
            if let (Some(&i), Some(&j)) = (owner.get(&from), owner.get(&to)) {
                if i == j {
                    per[i].view_deps.push(r);
                }
            }
        }
        let prints: HashMap<String, String> = prints.iter().map(|r| (r.get(0), r.get(1))).collect();
        let mut out = BTreeMap::new();
        for (top, rows) in tops.iter().zip(per) {
            let name: String = top.get(9);
            let fingerprint = match prints.get(&name) {
                Some(f) => Some(f.clone()),
                None if fingerprints => continue,
                None => None,
            };
            out.insert(
                name,
                Prefetched {
                    objects: assemble(top, rows),
                    fingerprint,
                    snapshot: None,
                },
            );
        }
        Ok(out)
    }

    /// In the transaction `opening` starts (a dump's snapshot, begun in the same round trip):
    /// `prefetched`'s objects when the schema's catalog rows are still the ones they were read
    /// from, with the sequences' values read now; None when anything changed since (a migration
    /// ran in between) or when `prefetched` has no fingerprint to compare (it was read in an
    /// exported snapshot), and the caller reads the schema again in its own snapshot. The
    /// connection has the fingerprint prepared ([`prepare_fingerprint`]), as a run's connections do.
    pub async fn still_current(
        client: &Client,
        opening: &str,
        schema: &str,
        prefetched: Prefetched,
    ) -> Result<Option<SchemaObjects>> {
        let Some(expected) = prefetched.fingerprint else {
            client.batch_execute(opening).await?;
            return Ok(None);
        };
        let read = fingerprint_now(client, opening, schema).await;
        let Some((fingerprint, values)) = read.with_context(|| format!("reading the catalog of schema {schema}"))?
        else {
            return Ok(None);
        };
        if fingerprint != expected {
            return Ok(None);
        }
        let mut objects = prefetched.objects;
        for s in &mut objects.sequences {
            s.last_value = values.get(&s.oid).copied().flatten();
        }
        Ok(Some(objects))
    }

    pub fn relation(&self, oid: u32) -> Option<&Relation> {
        self.relations.iter().find(|r| r.oid == oid)
    }

    pub fn columns_of(&self, rel: u32) -> impl Iterator<Item = &Attribute> {
        self.columns.iter().filter(move |a| a.rel == rel)
    }
}

/// The schema-level part of `OBJECTS`' row.
fn new_objects(top: &Row) -> SchemaObjects {
    SchemaObjects {
        comment: top.get(1),
        extensions: top.get(7),
        unsupported: top.get(8),
        ..Default::default()
    }
}

/// A schema's objects from its rows of every catalog query.
fn assemble(top: &Row, rows: Rows<'_>) -> SchemaObjects {
    let mut out = new_objects(top);
    out.relations = rows.relations.iter().map(|r| relation(r)).collect();
    out.columns = rows.columns.iter().map(|r| attribute(r)).collect();
    out.constraints = rows.constraints.iter().map(|r| constraint(r)).collect();
    out.indexes = rows.indexes.iter().map(|r| index(r)).collect();
    out.triggers = rows.triggers.iter().map(|r| trigger(r)).collect();
    out.sequences = rows.sequences.iter().map(|r| sequence(r)).collect();
    for p in &rows.procs {
        let kind: String = p.get(1);
        let name: String = p.get(0);
        let def: Option<String> = p.get(3);
        if def.is_none() {
            let args: String = p.get(2);
            out.unsupported.push(format!("aggregate {name}({args})"));
            continue;
        }
        out.functions.push(Function {
            name,
            kind,
            identity_args: p.get(2),
            def,
            needs_tables: p.get(4),
            comment: p.get(5),
        });
    }
    for t in &rows.types {
        let typtype: String = t.get(1);
        if typtype == "e" {
            out.enums.push(EnumType {
                name: t.get(0),
                labels: t.get(2),
                comment: t.get(3),
            });
        } else {
            let what = match typtype.as_str() {
                "d" => "domain",
                "c" => "composite type",
                "r" => "range type",
                "m" => "multirange type",
                _ => "type",
            };
            let name: String = t.get(4);
            out.unsupported.push(format!("{what} {name}"));
        }
    }
    out.rules = rows
        .rules
        .iter()
        .map(|r| Rule {
            rel: r.get(0),
            name: r.get(1),
            def: r.get(2),
            comment: r.get(3),
        })
        .collect();
    out.view_deps = rows.view_deps.iter().map(|r| (r.get(0), r.get(1))).collect();
    out.unsupported
        .extend(rows.policies.iter().map(|r| r.get::<_, String>(0)));
    out.statistics = rows.stats.iter().map(|r| r.get(0)).collect();
    for r in &out.relations {
        let what = match r.kind.as_str() {
            "p" => Some("partitioned table"),
            "f" => Some("foreign table"),
            "c" => Some("composite type"),
            _ if r.is_partition => Some("partition"),
            _ if r.inherits => Some("typed or inheriting table"),
            _ => None,
        };
        if let Some(what) = what {
            out.unsupported.push(format!("{what} {}", r.name));
        }
    }
    out
}

fn relation(r: &Row) -> Relation {
    Relation {
        oid: r.get(0),
        name: r.get(1),
        kind: r.get(2),
        unlogged: r.get(3),
        options: r.get(4),
        is_partition: r.get(5),
        inherits: r.get(6),
        row_security: r.get(7),
        force_row_security: r.get(8),
        replica_identity: r.get(9),
        populated: r.get(10),
        comment: r.get(11),
        view_def: r.get(12),
        tablespace: r.get(13),
    }
}

fn attribute(r: &Row) -> Attribute {
    Attribute {
        rel: r.get(0),
        num: r.get(1),
        name: r.get(2),
        type_name: r.get(3),
        not_null: r.get(4),
        identity: r.get(5),
        generated: r.get(6),
        default: r.get(7),
        collation: r.get(8),
        comment: r.get(9),
    }
}

fn constraint(r: &Row) -> Constraint {
    Constraint {
        rel: r.get(0),
        name: r.get(1),
        kind: r.get(2),
        def: r.get(3),
        validated: r.get(4),
        local: r.get(5),
        references: r.get(6),
        comment: r.get(7),
    }
}

fn index(r: &Row) -> Index {
    Index {
        rel: r.get(0),
        name: r.get(1),
        def: r.get(2),
        clustered: r.get(3),
        replica_identity: r.get(4),
        of_constraint: r.get(5),
        valid: r.get(6),
        comment: r.get(7),
    }
}

fn trigger(r: &Row) -> Trigger {
    Trigger {
        rel: r.get(0),
        name: r.get(1),
        def: r.get(2),
        enabled: r.get(3),
        comment: r.get(4),
    }
}

fn sequence(r: &Row) -> Sequence {
    let owner_rel: Option<u32> = r.get(9);
    let owner_col: Option<i32> = r.get(10);
    let owner_kind: Option<String> = r.get(11);
    Sequence {
        oid: r.get(0),
        type_name: r.get(1),
        start: r.get(2),
        increment: r.get(3),
        max: r.get(4),
        min: r.get(5),
        cache: r.get(6),
        cycle: r.get(7),
        last_value: r.get(8),
        owner: match (owner_rel, owner_col, owner_kind) {
            (Some(rel), Some(col), Some(kind)) => Some((rel, col, kind)),
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_batched_read_leaves_out_exactly_the_sequence_value() {
        assert!(SEQUENCES.contains(SEQUENCE_VALUE));
        assert!(!SEQUENCES
            .replace(SEQUENCE_VALUE, "NULL::int8")
            .contains("pg_sequence_last_value"));
    }
}
