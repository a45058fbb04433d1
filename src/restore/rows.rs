//! A rows-only backup restored like every other: into a staging schema, as the loader role, then
//! swapped in. Rows only are a json backup of format version 2, a newer one whose source schema
//! held what the native format cannot carry, and the application's dumpdata backups: none of them
//! can create the schema. What they lack comes from the live schema, read by the tool the way a
//! native backup reads it (one snapshot, [`crate::jsonl::dump_skipping_rows`]): its structure,
//! and the rows of every table the backup does not hold (those are left as they are, as
//! `loaddata` leaves them). The load gets one whole-schema native stream:
//!
//! the live header (the backup's own columns for the tables it holds) · the live structure · for
//! each table, the backup's rows when it holds the table, the live rows otherwise · the live
//! sequences, the backup's values where it has them · the end, counting what was handed on.
//!
//! Nothing of the backup is ever SQL here: its rows go through COPY, its table and column names
//! must be the live schema's. The backup is spooled to a private temporary file first (read
//! once, each line bounded by [`MAX_LINE`], its end marker checked), so a damaged object is
//! refused before anything is created.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::time::Duration;

use anyhow::{Context as _, Result};
use tokio::sync::mpsc;

use crate::jsonl::{Header, JsonLinesReader, SequenceValue, Structure, TableSpec, FORMAT, MAX_LINE};
use crate::pg::target::DbTarget;

/// One table of the backup: its columns, and where its rows are in the spool.
struct Block {
    spec: TableSpec,
    start: u64,
    len: u64,
    rows: u64,
}

/// The backup's rows, read once into a private temporary file.
struct Spooled {
    file: File,
    blocks: BTreeMap<String, Block>,
    sequences: Vec<SequenceValue>,
}

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
    let spooled = tokio::task::spawn_blocking(move || spool(rows, &expected))
        .await
        .context("the reading task panicked")??;
    let client = session.connect().await?;
    // Named as the restore's sessions are, so that who blocks its reads can be told.
    super::run::prepare_session(&client, mark, lock_timeout).await?;
    if !super::state::schema_exists(&client, live).await? {
        return Ok(None);
    }
    let server_version: String = client.query_one("SHOW server_version", &[]).await?.get(0);
    let skip: BTreeSet<String> = spooled.blocks.keys().cloned().collect();
    let (tx, rx) = mpsc::channel(8);
    let schema = live.to_string();
    tokio::spawn(async move {
        // A failure reaches the reading side through the channel, in the dumper's own words.
        let _ = crate::jsonl::dump_skipping_rows(&client, &schema, &server_version, now, &skip, tx).await;
    });
    let live_name = live.to_string();
    tokio::task::spawn_blocking(move || Merge::start(BufReader::new(JsonLinesReader::new(rx)), spooled, &live_name))
        .await
        .context("the reading task panicked")?
}

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
    serde_json::from_slice(line).context("a damaged line")
}

/// Reads the backup into a private temporary file: its header checked (the format, the schema it
/// was taken of), each table's rows in one piece, its sequences, its end marker's row count.
fn spool(mut input: Box<dyn BufRead + Send>, source_schema: &str) -> Result<Spooled> {
    let damaged = |what: &str| anyhow::anyhow!("{what}: the backup is damaged");
    let mut line = Vec::new();
    read_line(&mut input, &mut line).context("reading the backup (corrupt or truncated object)")?;
    let header: Header = serde_json::from_slice(&line).context("the backup has no tenant-backup json header")?;
    if header.format != FORMAT {
        anyhow::bail!("unsupported dump format {:?}", header.format);
    }
    if header.schema != source_schema {
        anyhow::bail!(
            "this json backup is of schema {}, not {source_schema}: it is not this tenant's backup, whatever its name or manifest says",
            header.schema
        );
    }
    let mut file = tempfile::tempfile().context("making a private temporary file")?;
    let mut out = BufWriter::new(&mut file);
    let mut blocks: BTreeMap<String, Block> = BTreeMap::new();
    let mut current: Option<Block> = None;
    let (mut offset, mut total) = (0u64, 0u64);
    let mut sequences = Vec::new();
    let mut ended = None;
    let finish = |block: Option<Block>, offset: u64, blocks: &mut BTreeMap<String, Block>| -> Result<()> {
        if let Some(mut b) = block {
            b.len = offset - b.start;
            if blocks.insert(b.spec.name.clone(), b).is_some() {
                return Err(damaged("a table twice"));
            }
        }
        Ok(())
    };
    loop {
        let n = read_line(&mut input, &mut line).context("reading the backup (corrupt or truncated object)")?;
        if n == 0 {
            break;
        }
        if ended.is_some() {
            return Err(damaged("lines after its end"));
        }
        if line.first() == Some(&b'{') {
            let block = current.as_mut().ok_or_else(|| damaged("a row before any table"))?;
            if line.last() != Some(&b'\n') {
                line.push(b'\n');
            }
            out.write_all(&line)?;
            offset += line.len() as u64;
            block.rows += 1;
            total += 1;
            continue;
        }
        let (kind, value) = marker(&line)?;
        match kind.as_str() {
            "table" => {
                let spec: TableSpec = serde_json::from_value(value)?;
                if !header.tables.contains(&spec) {
                    return Err(damaged(&format!("table {} does not match its header", spec.name)));
                }
                finish(current.take(), offset, &mut blocks)?;
                current = Some(Block {
                    spec,
                    start: offset,
                    len: 0,
                    rows: 0,
                });
            }
            // A newer backup whose structure does not carry every object: its rows are used.
            "structure" => {}
            "sequences" => sequences = serde_json::from_value(value)?,
            "end" => {
                ended = Some(
                    value["rows"]
                        .as_u64()
                        .ok_or_else(|| damaged("an end without a row count"))?,
                )
            }
            other => return Err(damaged(&format!("an unknown marker {other:?}"))),
        }
        if kind != "table" {
            finish(current.take(), offset, &mut blocks)?;
        }
    }
    finish(current.take(), offset, &mut blocks)?;
    match ended {
        Some(rows) if rows == total => {}
        Some(rows) => anyhow::bail!("the backup says it holds {rows} rows but {total} were read: it is damaged"),
        None => anyhow::bail!("the backup ends before its end marker: it is truncated"),
    }
    out.flush()?;
    drop(out);
    // Every table the header names is held, with no rows when it has no block.
    for spec in &header.tables {
        blocks.entry(spec.name.clone()).or_insert_with(|| Block {
            spec: spec.clone(),
            start: 0,
            len: 0,
            rows: 0,
        });
    }
    Ok(Spooled {
        file,
        blocks,
        sequences,
    })
}

/// The whole-schema stream, line by line: the live dump, with the backup's rows in place of the
/// live ones for the tables it holds.
struct Merge {
    live: BufReader<JsonLinesReader>,
    spooled: Spooled,
    /// Bytes ready to hand on.
    out: Vec<u8>,
    pos: usize,
    /// The backup's rows still to copy from the spool, for the current table.
    from_spool: u64,
    /// The live rows of the current table are dropped (the backup holds it).
    skipping: bool,
    rows: u64,
    done: bool,
    line: Vec<u8>,
}

impl Merge {
    /// Reads the live dump's header and structure: `None` when the structure cannot create the
    /// schema. The header's tables the backup holds get the backup's columns; a table or column
    /// the live schema does not have is refused (the application's migrations come first).
    fn start(
        live: BufReader<JsonLinesReader>,
        spooled: Spooled,
        name: &str,
    ) -> Result<Option<Box<dyn BufRead + Send>>> {
        let mut merge = Merge {
            live,
            spooled,
            out: Vec::new(),
            pos: 0,
            from_spool: 0,
            skipping: false,
            rows: 0,
            done: false,
            line: Vec::new(),
        };
        let mut line = Vec::new();
        read_line(&mut merge.live, &mut line).with_context(|| format!("reading {name}'s structure"))?;
        let mut header: Header = serde_json::from_slice(&line).context("the live schema's header")?;
        read_line(&mut merge.live, &mut line).with_context(|| format!("reading {name}'s structure"))?;
        let (kind, value) = marker(&line)?;
        anyhow::ensure!(kind == "structure", "the live schema's dump has no structure");
        let structure: Structure = serde_json::from_value(value)?;
        if !structure.not_carried.is_empty() {
            return Ok(None);
        }
        let mut problems = Vec::new();
        for block in merge.spooled.blocks.values() {
            let Some(live) = header.tables.iter_mut().find(|t| t.name == block.spec.name) else {
                problems.push(format!("{name} has no table {}", block.spec.name));
                continue;
            };
            for c in &block.spec.columns {
                if !live.columns.iter().any(|l| l.name == c.name) {
                    problems.push(format!("{name}.{} has no column {}", live.name, c.name));
                }
            }
            *live = block.spec.clone();
        }
        if !problems.is_empty() {
            // Named, a few: a hostile header may name a million tables.
            let more = problems.len().saturating_sub(10);
            problems.truncate(10);
            if more > 0 {
                problems.push(format!("and {more} more"));
            }
            anyhow::bail!(
                "the schema does not match the backup ({}): the backup holds rows, not tables, so run the application's migrations for this tenant first",
                problems.join("; ")
            );
        }
        merge.out = serde_json::to_vec(&header)?;
        merge.out.push(b'\n');
        merge.out.extend_from_slice(&line);
        Ok(Some(Box::new(BufReader::with_capacity(crate::jsonl::BATCH, merge))))
    }

    /// Fills `out` with what comes next; false at the end.
    fn next(&mut self) -> io::Result<bool> {
        self.out.clear();
        self.pos = 0;
        if self.from_spool > 0 {
            let want = self.from_spool.min(crate::jsonl::BATCH as u64);
            self.out.resize(want as usize, 0);
            self.spooled.file.read_exact(&mut self.out)?;
            self.from_spool -= want;
            return Ok(true);
        }
        if self.done {
            return Ok(false);
        }
        let mut line = std::mem::take(&mut self.line);
        let result = self.next_line(&mut line);
        self.line = line;
        result
    }

    fn next_line(&mut self, line: &mut Vec<u8>) -> io::Result<bool> {
        if read_line(&mut self.live, line)? == 0 {
            return Err(io::Error::other("the live schema's dump ended early"));
        }
        if line.first() == Some(&b'{') {
            if !self.skipping {
                self.rows += 1;
                self.out.extend_from_slice(line);
            }
            return Ok(true);
        }
        let (kind, value) = marker(line).map_err(io::Error::other)?;
        self.skipping = false;
        match kind.as_str() {
            "table" => {
                let spec: TableSpec = serde_json::from_value(value).map_err(io::Error::other)?;
                match self.spooled.blocks.get(&spec.name) {
                    Some(block) => {
                        self.skipping = true;
                        self.out = line_of(&("table", &block.spec));
                        self.spooled.file.seek(SeekFrom::Start(block.start))?;
                        self.from_spool = block.len;
                        self.rows += block.rows;
                    }
                    None => self.out.extend_from_slice(line),
                }
            }
            "sequences" => {
                let mut live: Vec<SequenceValue> = serde_json::from_value(value).map_err(io::Error::other)?;
                for s in &mut live {
                    if let Some(b) = self.spooled.sequences.iter().find(|b| b.name == s.name) {
                        *s = b.clone();
                    }
                }
                self.out = line_of(&("sequences", &live));
            }
            "end" => {
                let tables = value["tables"].clone();
                self.out = line_of(&("end", serde_json::json!({"tables": tables, "rows": self.rows})));
                self.done = true;
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

    fn spooled(lines: &[&str]) -> Result<Spooled> {
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        spool(Box::new(io::Cursor::new(text.into_bytes())), "bienestar")
    }

    #[test]
    fn a_whole_backup_is_spooled_with_every_table_it_names() {
        let mut s = spooled(&[
            HEADER,
            TABLE,
            r#"{"id":"1"}"#,
            r#"{"id":"2"}"#,
            r#"["sequences",[]]"#,
            r#"["end",{"tables":2,"rows":2}]"#,
        ])
        .unwrap();
        assert_eq!(s.blocks["t"].rows, 2);
        assert_eq!(s.blocks["u"].rows, 0, "named by the header, held with no rows");
        let mut rows = String::new();
        s.file.seek(SeekFrom::Start(s.blocks["t"].start)).unwrap();
        (&mut s.file).take(s.blocks["t"].len).read_to_string(&mut rows).unwrap();
        assert_eq!(rows, "{\"id\":\"1\"}\n{\"id\":\"2\"}\n");
    }

    #[test]
    fn a_damaged_or_foreign_backup_is_refused() {
        let end = r#"["end",{"tables":2,"rows":1}]"#;
        for (lines, why) in [
            (vec![HEADER, TABLE, r#"{"id":"1"}"#], "truncated"),
            (
                vec![HEADER, TABLE, r#"{"id":"1"}"#, r#"["end",{"tables":2,"rows":5}]"#],
                "holds 5 rows",
            ),
            (vec![HEADER, r#"{"id":"1"}"#, end], "a row before any table"),
            (vec![HEADER, TABLE, r#"{"id":"1"}"#, TABLE, end], "a table twice"),
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
        ] {
            let err = format!(
                "{:#}",
                spooled(&lines).err().unwrap_or_else(|| panic!("{why}: accepted"))
            );
            assert!(err.contains(why), "{why}: {err}");
        }
    }
}
