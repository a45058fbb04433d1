//! Loading a whole schema fast, the way pg_restore does: inside the restore's transaction, the
//! foreign keys between the schema's tables, its key constraints and its indexes are dropped before
//! the data is copied in and created again afterwards — one index build and one validating join
//! per object instead of index maintenance and a deferred foreign-key check for every row.
//!
//! Only what can be put back exactly is touched: objects of plain, unpartitioned tables, in the
//! default tablespace, without comments, that are not the table's cluster or replica-identity index
//! and that nothing outside the set depends on (a foreign key from another schema keeps the key it
//! references). Everything else simply stays in place and is maintained row by row.

use anyhow::{Context as _, Result};
use tokio_postgres::types::Type;
use tokio_postgres::Client;

/// One object to drop before the load and create after it.
#[derive(Clone, Debug)]
pub struct Object {
    pub drop: String,
    pub create: String,
}

/// The objects, in drop order: foreign keys, then key constraints, then plain indexes. Creating
/// runs in the reverse order.
#[derive(Clone, Debug, Default)]
pub struct Rebuild {
    pub objects: Vec<Object>,
}

const PLAN: &str = r#"
WITH tabs AS (
  SELECT c.oid FROM pg_class c
  WHERE c.oid = ANY (ARRAY(SELECT d.objid FROM pg_depend d WHERE d.refclassid = 'pg_namespace'::regclass
                      AND d.refobjid = (SELECT oid FROM pg_namespace WHERE nspname = $1) AND d.classid = 'pg_class'::regclass))
    AND c.relkind = 'r' AND NOT c.relispartition),
fks AS (
  SELECT k.oid, k.conrelid, k.conname FROM pg_constraint k
  WHERE k.contype = 'f' AND k.conparentid = 0
    AND k.conrelid IN (SELECT oid FROM tabs) AND k.confrelid IN (SELECT oid FROM tabs)
    AND NOT EXISTS (SELECT 1 FROM pg_description d WHERE d.objoid = k.oid AND d.classoid = 'pg_constraint'::regclass)),
keys AS (
  SELECT k.oid, k.conrelid, k.conname FROM pg_constraint k
  JOIN pg_index i ON i.indexrelid = k.conindid JOIN pg_class ic ON ic.oid = i.indexrelid
  WHERE k.contype IN ('p', 'u', 'x') AND k.conparentid = 0 AND k.conrelid IN (SELECT oid FROM tabs)
    AND NOT i.indisclustered AND NOT i.indisreplident AND ic.reltablespace = 0
    AND NOT EXISTS (SELECT 1 FROM pg_description d WHERE d.objoid = k.oid AND d.classoid = 'pg_constraint'::regclass)
    AND NOT EXISTS (SELECT 1 FROM pg_description d WHERE d.objoid = ic.oid AND d.classoid = 'pg_class'::regclass)
    AND NOT EXISTS (SELECT 1 FROM pg_depend d JOIN pg_constraint f ON f.oid = d.objid
                    WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = k.conindid
                      AND d.classid = 'pg_constraint'::regclass AND f.contype = 'f'
                      AND f.oid NOT IN (SELECT oid FROM fks))),
idx AS (
  SELECT i.indexrelid, i.indrelid FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
  WHERE i.indrelid IN (SELECT oid FROM tabs) AND i.indisvalid AND i.indisready
    AND NOT i.indisclustered AND NOT i.indisreplident AND ic.reltablespace = 0
    AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conrelid = i.indrelid AND k.conindid = i.indexrelid
                      AND k.contype IN ('p', 'u', 'x'))
    AND NOT EXISTS (SELECT 1 FROM pg_description d WHERE d.objoid = ic.oid AND d.classoid = 'pg_class'::regclass)
    AND NOT EXISTS (SELECT 1 FROM pg_depend d JOIN pg_constraint f ON f.oid = d.objid
                    WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = i.indexrelid
                      AND d.classid = 'pg_constraint'::regclass AND f.contype = 'f'
                      AND f.oid NOT IN (SELECT oid FROM fks)))
SELECT 1, format('ALTER TABLE %s DROP CONSTRAINT %I', k.conrelid::regclass, k.conname),
       format('ALTER TABLE %s ADD CONSTRAINT %I %s', k.conrelid::regclass, k.conname, pg_get_constraintdef(k.oid))
FROM fks k
UNION ALL
SELECT 2, format('ALTER TABLE %s DROP CONSTRAINT %I', k.conrelid::regclass, k.conname),
       format('ALTER TABLE %s ADD CONSTRAINT %I %s', k.conrelid::regclass, k.conname, pg_get_constraintdef(k.oid))
FROM keys k
UNION ALL
SELECT 3, format('DROP INDEX %s', i.indexrelid::regclass), pg_get_indexdef(i.indexrelid)
FROM idx i
ORDER BY 1, 2
"#;

impl Rebuild {
    /// Reads what can be dropped and created again. Run it inside the restore's transaction, after
    /// the tables are locked, so that nothing changes between this and the drops.
    pub async fn plan(client: &Client, schema: &str) -> Result<Rebuild> {
        // regclass prints names qualified only when they are not on the search path. The schema's
        // tables are found through pg_depend, and the plan kept on indexes, so the cost does not
        // grow with the other tenants' catalog rows.
        client
            .batch_execute("SET LOCAL search_path = pg_catalog; SET LOCAL enable_seqscan = off")
            .await?;
        let rows = client
            .query_typed(PLAN, &[(&schema, Type::TEXT)])
            .await
            .context("reading the schema's indexes and constraints")?;
        // The definitions are fully qualified now; triggers and defaults run with the usual path.
        client
            .batch_execute("SET LOCAL search_path = DEFAULT; SET LOCAL enable_seqscan = DEFAULT")
            .await?;
        Ok(Rebuild {
            objects: rows
                .iter()
                .map(|r| Object {
                    drop: r.get(1),
                    create: r.get(2),
                })
                .collect(),
        })
    }

    pub async fn drop_all(&self, client: &Client) -> Result<()> {
        for o in &self.objects {
            client.batch_execute(&o.drop).await.with_context(|| o.drop.clone())?;
        }
        Ok(())
    }

    /// Creates everything again; a foreign key added back checks every row in one join.
    pub async fn create_all(&self, client: &Client) -> Result<()> {
        for o in self.objects.iter().rev() {
            client
                .batch_execute(&o.create)
                .await
                .with_context(|| o.create.clone())?;
        }
        Ok(())
    }
}
