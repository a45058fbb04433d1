//! A rows-only backup restored like every other: into a staging schema, as the loader role, then
//! swapped in. Rows only are a json backup of format version 2, a newer one whose source schema
//! held what the native format cannot carry, and the application's dumpdata backups: none of them
//! can create the schema. What they lack comes from the live schema of the tenant, read by the
//! tool the way a native backup reads it (one snapshot, [`crate::jsonl::dump_skipping_rows`]): its
//! structure, and the rows of every table the backup does not hold (left as they are, as
//! `loaddata` leaves them; emptied when the backup is another tenant's, `--from-tenant`, so that no
//! clinic's rows end up beside another's — all but `django_migrations`, which describes the
//! structure). The load gets one whole-schema native stream:
//!
//! the live header (the backup's own columns for the tables it holds) · the live structure · the
//! backup's tables and rows, as they come · the live tables it does not hold, with their rows · the
//! live sequences, the backup's values where it has them · the end, counting what was handed on.
//!
//! Nothing of the backup is ever SQL here: its rows go through COPY, its table and column names
//! must be the live schema's. It streams through, checked line by line (each bounded by
//! [`MAX_LINE`], every table marker against its header, its end marker's count): a damaged object
//! fails the load, which leaves the tenant as it was, like any failed load.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, BufRead, BufReader, Read};
use std::time::Duration;

use anyhow::{Context as _, Result};
use tokio::sync::mpsc;

use crate::jsonl::{
    Header, JsonLinesReader, SequenceValue, Skip, Structure, TableSpec, FORMAT, FORMAT_VERSION, MAX_LINE,
    OLDEST_READABLE_VERSION,
};
use crate::pg::target::DbTarget;

/// The whole-schema stream for a rows-only backup (`rows`, of schema `source_schema`), completed
/// from the live schema `live`; `None` when `live` does not exist or holds what the native format
/// cannot create (the caller then loads the rows into the live tables). Its reads wait for a lock
/// no longer than `lock_timeout`, on a session named by `mark` (see [`super::run::Watch`]).
pub async fn whole_schema(
    session: &DbTarget,
    live: &str,
    source_schema: &str,
    rows: Box<dyn BufRead + Send>,
    lock_timeout: Duration,
    now: chrono::DateTime<chrono::Utc>,
    mark: &str,
) -> Result<Option<Box<dyn BufRead + Send>>> {
    let expected = source_schema.to_string();
    let backup = tokio::task::spawn_blocking(move || Backup::open(rows, &expected))
        .await
        .context("the reading task panicked")??;
    let client = session.connect().await?;
    // Named as the restore's sessions are, so that who blocks its reads can be told.
    super::run::prepare_session(&client, mark, lock_timeout).await?;
    if !super::state::schema_exists(&client, live).await? {
        return Ok(None);
    }
    let server_version: String = client.query_one("SHOW server_version", &[]).await?.get(0);
    let (tx, rx) = mpsc::channel(8);
    let (schema, another) = (live.to_string(), source_schema != live);
    let held: BTreeSet<String> = backup.specs.keys().cloned().collect();
    let kept = BTreeSet::from([MIGRATIONS.to_string()]);
    tokio::spawn(async move {
        // Another tenant's backup: no live row is kept beside its rows, but the record of the
        // migrations that made the structure it gets.
        let skip = match another {
            true => Skip::AllBut(&kept),
            false => Skip::Tables(&held),
        };
        // A failure reaches the reading side through the channel, in the dumper's own words.
        let _ = crate::jsonl::dump_skipping_rows(&client, &schema, &server_version, now, skip, tx).await;
    });
    let live_name = live.to_string();
    tokio::task::spawn_blocking(move || {
        Merge::start(BufReader::new(JsonLinesReader::new(rx)), backup, &live_name, another)
    })
    .await
    .context("the reading task panicked")?
}

/// Django's record of the migrations applied to a schema: it describes the structure, which is the
/// live schema's, so it keeps its rows whoever's rows come in.
const MIGRATIONS: &str = "django_migrations";

/// One line of at most [`MAX_LINE`] bytes; 0 at the end.
fn read_line(input: &mut impl BufRead, line: &mut Vec<u8>) -> io::Result<usize> {
    line.clear();
    let n = input.take(MAX_LINE + 1).read_until(b'\n', line)?;
    if n as u64 > MAX_LINE {
        return Err(io::Error::other(format!(
            "a line longer than {} MiB, which tenant-backup never writes: the object is not a backup",
            MAX_LINE >> 20
        )));
    }
    Ok(n)
}

fn marker(line: &[u8]) -> Result<(String, serde_json::Value)> {
    serde_json::from_slice(line).map_err(|_| anyhow::anyhow!("a damaged line"))
}

fn damaged(what: &str) -> anyhow::Error {
    anyhow::anyhow!("{what}: the backup is damaged")
}

/// PostgreSQL's limits on what a header may name: identifiers of 63 bytes, 1,600 columns.
const NAME_BYTES: usize = 63;
const COLUMNS: usize = 1600;

/// The backup's side of the stream: its header checked once, then each line as it passes.
struct Backup {
    input: Box<dyn BufRead + Send>,
    /// The tables its header names, by name.
    specs: BTreeMap<String, TableSpec>,
    seen: BTreeSet<String>,
    in_table: bool,
    rows: u64,
    sequences: Vec<SequenceValue>,
    line: Vec<u8>,
}

impl Backup {
    /// Reads and checks the header: the format and its version, the schema it was taken of, and
    /// names PostgreSQL could hold, each once.
    fn open(mut input: Box<dyn BufRead + Send>, source_schema: &str) -> Result<Backup> {
        let mut line = Vec::new();
        read_line(&mut input, &mut line).context("reading the backup (corrupt or truncated object)")?;
        let header: Header = serde_json::from_slice(&line)
            .map_err(|_| anyhow::anyhow!("the backup has no tenant-backup json header"))?;
        if header.format != FORMAT || !(OLDEST_READABLE_VERSION..=FORMAT_VERSION).contains(&header.format_version) {
            anyhow::bail!(
                "unsupported dump format {:?}, version {}",
                header.format,
                header.format_version
            );
        }
        if header.schema != source_schema {
            anyhow::bail!(
                "this json backup is of schema {:?}, not {source_schema}: it is not this tenant's backup, whatever its name or manifest says",
                header.schema
            );
        }
        let mut specs = BTreeMap::new();
        for spec in header.tables {
            let mut columns = BTreeSet::new();
            let names_ok = spec.name.len() <= NAME_BYTES
                && spec.columns.len() <= COLUMNS
                && spec
                    .columns
                    .iter()
                    .all(|c| c.name.len() <= NAME_BYTES && columns.insert(c.name.as_str()));
            if !names_ok {
                return Err(damaged(&format!(
                    "its header names a table or column PostgreSQL cannot hold (table {:?})",
                    shown(&spec.name)
                )));
            }
            if let Some(spec) = specs.insert(spec.name.clone(), spec) {
                return Err(damaged(&format!(
                    "its header names table {:?} twice",
                    shown(&spec.name)
                )));
            }
        }
        Ok(Backup {
            input,
            specs,
            seen: BTreeSet::new(),
            in_table: false,
            rows: 0,
            sequences: Vec::new(),
            line,
        })
    }

    /// Puts the next table marker or row in `out`; false once the end marker is read, its row
    /// count checked, and nothing follows it.
    fn next(&mut self, out: &mut Vec<u8>) -> Result<bool> {
        loop {
            let n = read_line(&mut self.input, &mut self.line)
                .context("reading the backup (corrupt or truncated object)")?;
            if n == 0 {
                anyhow::bail!("the backup ends before its end marker: it is truncated");
            }
            if self.line.first() == Some(&b'{') {
                if !self.in_table {
                    return Err(damaged("a row before any table"));
                }
                out.extend_from_slice(&self.line);
                if self.line.last() != Some(&b'\n') {
                    out.push(b'\n');
                }
                self.rows += 1;
                return Ok(true);
            }
            let (kind, value) = marker(&self.line)?;
            match kind.as_str() {
                "table" => {
                    let spec: TableSpec =
                        serde_json::from_value(value).map_err(|_| damaged("a damaged table marker"))?;
                    if self.specs.get(&spec.name) != Some(&spec) {
                        return Err(damaged(&format!(
                            "table {:?} does not match its header",
                            shown(&spec.name)
                        )));
                    }
                    if !self.seen.insert(spec.name.clone()) {
                        return Err(damaged(&format!(
                            "table {:?} comes twice (its rows are not together)",
                            shown(&spec.name)
                        )));
                    }
                    self.in_table = true;
                    out.extend_from_slice(&line_of(&("table", &spec)));
                    return Ok(true);
                }
                // A newer backup whose structure does not carry every object: its rows are used.
                "structure" => {}
                "sequences" => {
                    self.sequences = serde_json::from_value(value).map_err(|_| damaged("damaged sequences"))?;
                    self.in_table = false;
                }
                "end" => {
                    let rows = value["rows"]
                        .as_u64()
                        .ok_or_else(|| damaged("an end without a row count"))?;
                    if rows != self.rows {
                        anyhow::bail!(
                            "the backup says it holds {rows} rows but {} were read: it is damaged",
                            self.rows
                        );
                    }
                    if read_line(&mut self.input, &mut self.line)? != 0 {
                        return Err(damaged("lines after its end"));
                    }
                    return Ok(false);
                }
                other => return Err(damaged(&format!("an unknown marker {:?}", shown(other)))),
            }
        }
    }
}

/// A name from the backup, as shown in a message: at most 63 characters.
fn shown(name: &str) -> String {
    name.chars().take(NAME_BYTES).collect()
}

#[derive(PartialEq)]
enum Phase {
    Backup,
    Live,
    Done,
}

/// The whole-schema stream, line by line: the head, the backup's tables, then the live ones.
struct Merge {
    live: BufReader<JsonLinesReader>,
    backup: Backup,
    phase: Phase,
    /// Bytes ready to hand on.
    out: Vec<u8>,
    pos: usize,
    /// The live table now read is one the backup holds: its marker and rows are dropped.
    skipping: bool,
    live_rows: u64,
    line: Vec<u8>,
}

impl Merge {
    /// Reads the live dump's header and structure: `None` when the structure cannot create the
    /// schema. The header's tables the backup holds get the backup's columns; a table or column
    /// the live schema does not have is refused (the application's migrations come first).
    fn start(
        mut live: BufReader<JsonLinesReader>,
        backup: Backup,
        name: &str,
        another: bool,
    ) -> Result<Option<Box<dyn BufRead + Send>>> {
        let mut line = Vec::new();
        read_line(&mut live, &mut line).with_context(|| format!("reading {name}'s structure"))?;
        let mut header: Header = serde_json::from_slice(&line).context("the live schema's header")?;
        read_line(&mut live, &mut line).with_context(|| format!("reading {name}'s structure"))?;
        let (kind, value) = marker(&line)?;
        anyhow::ensure!(kind == "structure", "the live schema's dump has no structure");
        let structure: Structure = serde_json::from_value(value)?;
        if !structure.not_carried.is_empty() {
            return Ok(None);
        }
        let live_specs: BTreeMap<String, usize> = header
            .tables
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        let (mut problems, mut more) = (Vec::new(), 0usize);
        let mut problem = |p: String| match problems.len() < 10 {
            true => problems.push(p),
            false => more += 1,
        };
        for spec in backup.specs.values() {
            let Some(&i) = live_specs.get(&spec.name) else {
                problem(format!("{name} has no table {:?}", spec.name));
                continue;
            };
            let live_columns: BTreeSet<&str> = header.tables[i].columns.iter().map(|c| c.name.as_str()).collect();
            for c in spec.columns.iter().filter(|c| !live_columns.contains(c.name.as_str())) {
                problem(format!("{name}.{} has no column {:?}", spec.name, c.name));
            }
        }
        if !problems.is_empty() {
            if more > 0 {
                problems.push(format!("and {more} more"));
            }
            anyhow::bail!(
                "the schema does not match the backup ({}): the backup holds rows, not tables, so run the application's migrations for this tenant first",
                problems.join("; ")
            );
        }
        for spec in backup.specs.values() {
            header.tables[live_specs[&spec.name]] = spec.clone();
        }
        if another {
            tracing::info!(
                "the backup is of another tenant (--from-tenant): the tables it does not hold are restored empty (but {MIGRATIONS}), with {name}'s structure"
            );
        }
        let mut out = serde_json::to_vec(&header)?;
        out.push(b'\n');
        out.extend_from_slice(&line);
        Ok(Some(Box::new(BufReader::with_capacity(
            crate::jsonl::BATCH,
            Merge {
                live,
                backup,
                phase: Phase::Backup,
                out,
                pos: 0,
                skipping: false,
                live_rows: 0,
                line: Vec::new(),
            },
        ))))
    }

    /// Fills `out` with what comes next; false at the end.
    fn next(&mut self) -> io::Result<bool> {
        self.out.clear();
        self.pos = 0;
        loop {
            match self.phase {
                Phase::Done => return Ok(false),
                Phase::Backup => match self.backup.next(&mut self.out) {
                    Ok(true) => return Ok(true),
                    Ok(false) => self.phase = Phase::Live,
                    Err(e) => return Err(io::Error::other(format!("{e:#}"))),
                },
                Phase::Live => {
                    let mut line = std::mem::take(&mut self.line);
                    let result = self.live_line(&mut line);
                    self.line = line;
                    if result? {
                        return Ok(true);
                    }
                }
            }
        }
    }

    /// One line of the live dump handed on (true), or dropped (false).
    fn live_line(&mut self, line: &mut Vec<u8>) -> io::Result<bool> {
        if read_line(&mut self.live, line)? == 0 {
            return Err(io::Error::other("the live schema's dump ended early"));
        }
        if line.first() == Some(&b'{') {
            if self.skipping {
                return Ok(false);
            }
            self.live_rows += 1;
            self.out.extend_from_slice(line);
            return Ok(true);
        }
        let (kind, value) = marker(line).map_err(io::Error::other)?;
        self.skipping = false;
        match kind.as_str() {
            "table" => {
                let spec: TableSpec = serde_json::from_value(value).map_err(io::Error::other)?;
                if self.backup.specs.contains_key(&spec.name) {
                    self.skipping = true;
                    return Ok(false);
                }
                self.out.extend_from_slice(line);
            }
            "sequences" => {
                let mut live: Vec<SequenceValue> = serde_json::from_value(value).map_err(io::Error::other)?;
                let theirs: BTreeMap<&str, &SequenceValue> =
                    self.backup.sequences.iter().map(|s| (s.name.as_str(), s)).collect();
                for s in &mut live {
                    if let Some(b) = theirs.get(s.name.as_str()) {
                        *s = (*b).clone();
                    }
                }
                self.out = line_of(&("sequences", &live));
            }
            "end" => {
                let rows = self.backup.rows + self.live_rows;
                self.out = line_of(&("end", serde_json::json!({"tables": value["tables"], "rows": rows})));
                self.phase = Phase::Done;
            }
            _ => self.out.extend_from_slice(line),
        }
        Ok(true)
    }
}

fn line_of<T: serde::Serialize>(v: &T) -> Vec<u8> {
    let mut out = serde_json::to_vec(v).expect("serializable");
    out.push(b'\n');
    out
}

impl Read for Merge {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos >= self.out.len() {
            if !self.next()? {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.out.len() - self.pos);
        buf[..n].copy_from_slice(&self.out[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = r#"{"format":"tenant-backup-jsonl","format_version":2,"tool_version":"0","schema":"bienestar","server_version":"15","created_at":"2026-01-01T00:00:00Z","tables":[{"name":"t","columns":[{"name":"id","type":"integer"}]},{"name":"u","columns":[{"name":"id","type":"integer"}]}]}"#;
    const TABLE: &str = r#"["table",{"name":"t","columns":[{"name":"id","type":"integer"}]}]"#;

    /// The backup's lines as they would be handed on, or the first error.
    fn through(lines: &[&str]) -> Result<String> {
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        let mut backup = Backup::open(Box::new(io::Cursor::new(text.into_bytes())), "bienestar")?;
        let mut out = Vec::new();
        while backup.next(&mut out)? {}
        Ok(String::from_utf8(out).unwrap())
    }

    #[test]
    fn a_whole_backup_passes_its_tables_and_rows() {
        let out = through(&[
            HEADER,
            TABLE,
            r#"{"id":"1"}"#,
            r#"{"id":"2"}"#,
            r#"["sequences",[]]"#,
            r#"["end",{"tables":2,"rows":2}]"#,
        ])
        .unwrap();
        assert_eq!(out, format!("{TABLE}\n{{\"id\":\"1\"}}\n{{\"id\":\"2\"}}\n"));
    }

    #[test]
    fn a_damaged_or_foreign_backup_is_refused() {
        let end = r#"["end",{"tables":2,"rows":1}]"#;
        let long = format!(
            r#"{{"format":"tenant-backup-jsonl","format_version":2,"tool_version":"0","schema":"bienestar","server_version":"15","created_at":"2026-01-01T00:00:00Z","tables":[{{"name":"{}","columns":[]}}]}}"#,
            "x".repeat(64)
        );
        let twice = HEADER.replace(r#"{"name":"u""#, r#"{"name":"t""#);
        let same_column = HEADER.replace(
            r#"[{"name":"id","type":"integer"}]}]"#,
            r#"[{"name":"id","type":"integer"},{"name":"id","type":"text"}]}]"#,
        );
        for (lines, why) in [
            (vec![HEADER, TABLE, r#"{"id":"1"}"#], "truncated"),
            (
                vec![HEADER, TABLE, r#"{"id":"1"}"#, r#"["end",{"tables":2,"rows":5}]"#],
                "holds 5 rows",
            ),
            (vec![HEADER, r#"{"id":"1"}"#, end], "a row before any table"),
            (vec![HEADER, TABLE, r#"{"id":"1"}"#, TABLE, end], "comes twice"),
            (
                vec![HEADER, TABLE, r#"{"id":"1"}"#, end, r#"{"id":"2"}"#],
                "after its end",
            ),
            (
                vec![HEADER, r#"["table",{"name":"v","columns":[]}]"#, end],
                "does not match its header",
            ),
            (vec![HEADER, TABLE, r#"["copy",{}]"#, end], "unknown marker"),
            (vec![&HEADER.replace("bienestar", "mindcare"), end], "not bienestar"),
            (
                vec![&HEADER.replace(r#""format_version":2"#, r#""format_version":1"#), end],
                "version 1",
            ),
            (vec![&long, end], "cannot hold"),
            (vec![&twice, end], "twice"),
            (vec![&same_column, end], "cannot hold"),
        ] {
            let err = format!(
                "{:#}",
                through(&lines).err().unwrap_or_else(|| panic!("{why}: accepted"))
            );
            assert!(err.contains(why), "{why}: {err}");
        }
    }
}
