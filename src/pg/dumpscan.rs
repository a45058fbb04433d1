//! Reads a plain-format dump as it streams past, to count each table's rows (for the manifest) and to
//! see pg_dump's closing line (a dump without it is truncated). Memory stays bounded: only the start
//! of the current line is kept.

use std::collections::BTreeMap;

const KEEP: usize = 4096;
const TRAILER: &[u8] = b"-- PostgreSQL database dump complete";

#[derive(Default)]
pub struct PlainDumpScanner {
    line: Vec<u8>,
    line_truncated: bool,
    /// Quote state and whether a `;` outside quotes was seen, over the whole current line (not just
    /// the part kept), so a long INSERT line is still read right.
    line_in_quote: bool,
    line_has_end: bool,
    state: State,
    counts: BTreeMap<String, u64>,
    complete: bool,
}

#[derive(Default)]
enum State {
    #[default]
    Sql,
    /// Inside `COPY t (...) FROM stdin;` data, until a `\.` line.
    Copy { table: String, rows: u64 },
    /// Inside an `INSERT INTO` statement (made by `--inserts`), which may span lines.
    Insert { in_quote: bool },
}

impl PlainDumpScanner {
    pub fn feed(&mut self, mut chunk: &[u8]) {
        while !chunk.is_empty() {
            if let State::Insert { in_quote } = &mut self.state {
                // Quotes can hide `;` and newlines, so scan byte by byte until the statement ends.
                let mut end = None;
                for (i, &b) in chunk.iter().enumerate() {
                    match b {
                        b'\'' => *in_quote = !*in_quote,
                        b';' if !*in_quote => {
                            end = Some(i + 1);
                            break;
                        }
                        _ => {}
                    }
                }
                match end {
                    Some(i) => {
                        self.state = State::Sql;
                        // The rest of the line after `;` is the newline.
                        chunk = &chunk[i..];
                        self.line.clear();
                        self.line_truncated = true; // skip what remains of this line
                        continue;
                    }
                    None => return,
                }
            }
            match memchr::memchr(b'\n', chunk) {
                Some(i) => {
                    self.push(&chunk[..i]);
                    self.end_line();
                    chunk = &chunk[i + 1..];
                }
                None => {
                    self.push(chunk);
                    return;
                }
            }
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        if matches!(self.state, State::Copy { .. }) {
            // A data row: only "is it exactly `\.`" matters, so three bytes are enough.
            let room = 3usize.saturating_sub(self.line.len());
            self.line.extend_from_slice(&bytes[..bytes.len().min(room)]);
            return;
        }
        if matches!(self.state, State::Sql) {
            for &b in bytes {
                match b {
                    b'\'' => self.line_in_quote = !self.line_in_quote,
                    b';' if !self.line_in_quote => self.line_has_end = true,
                    _ => {}
                }
            }
        }
        let room = KEEP.saturating_sub(self.line.len());
        if bytes.len() > room {
            self.line_truncated = true;
        }
        self.line.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn end_line(&mut self) {
        let line = std::mem::take(&mut self.line);
        let skip =
            std::mem::replace(&mut self.line_truncated, false) && matches!(self.state, State::Sql) && line.is_empty();
        let in_quote = std::mem::replace(&mut self.line_in_quote, false);
        let ended = std::mem::replace(&mut self.line_has_end, false);
        match &mut self.state {
            State::Copy { table, rows } => {
                if line == b"\\." {
                    *self.counts.entry(std::mem::take(table)).or_insert(0) += *rows;
                    self.state = State::Sql;
                } else {
                    *rows += 1;
                }
            }
            State::Sql if !skip => {
                if let Some(rest) = line.strip_prefix(b"COPY ") {
                    if line.ends_with(b" FROM stdin;") {
                        if let Some(table) = table_name(rest) {
                            self.state = State::Copy { table, rows: 0 };
                        }
                    }
                } else if let Some(rest) = line.strip_prefix(b"INSERT INTO ") {
                    if let Some(table) = table_name(rest) {
                        *self.counts.entry(table).or_insert(0) += 1;
                        if !ended {
                            self.state = State::Insert { in_quote };
                        }
                    }
                } else if line.starts_with(TRAILER) {
                    self.complete = true;
                }
            }
            _ => {}
        }
        self.line = line;
        self.line.clear();
    }

    /// True once pg_dump's closing comment has gone by.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    pub fn into_counts(self) -> BTreeMap<String, u64> {
        self.counts
    }
}

/// `schema.table (…` or `"we""ird".table …` → the unqualified table name.
fn table_name(rest: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(rest);
    let mut parts = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        let mut ident = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        ident.push('"');
                    }
                    '"' => break,
                    c => ident.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' || c == ' ' || c == '(' {
                    break;
                }
                ident.push(c);
                chars.next();
            }
        }
        parts.push(ident);
        if chars.peek() == Some(&'.') {
            chars.next();
        } else {
            break;
        }
    }
    parts.pop().filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(input: &[u8], chunk: usize) -> (BTreeMap<String, u64>, bool) {
        let mut s = PlainDumpScanner::default();
        for c in input.chunks(chunk) {
            s.feed(c);
        }
        let complete = s.is_complete();
        (s.into_counts(), complete)
    }

    const DUMP: &[u8] = b"SET x = 1;\nCOPY s.a (id, t) FROM stdin;\n1\tfoo\n2\t\\\\.\n3\tCOPY s.b (x) FROM stdin;\n\\.\n\nCOPY \"we\"\"ird\".\"b c\" (x) FROM stdin;\n\\.\n\nINSERT INTO s.c VALUES (1, 'a;\nINSERT INTO s.c VALUES (9);\n');\nINSERT INTO s.c VALUES (2, 'x');\n--\n-- PostgreSQL database dump complete\n--\n";

    #[test]
    fn counts_copy_and_insert_rows_across_any_chunking() {
        for chunk in [1, 2, 3, 7, 64, 4096] {
            let (counts, complete) = scan(DUMP, chunk);
            assert!(complete, "chunk {chunk}");
            assert_eq!(counts.get("a"), Some(&3), "chunk {chunk}");
            assert_eq!(counts.get("b c"), Some(&0), "chunk {chunk}");
            assert_eq!(counts.get("c"), Some(&2), "chunk {chunk}: {counts:?}");
        }
    }

    #[test]
    fn truncated_dump_is_not_complete() {
        let (_, complete) = scan(&DUMP[..DUMP.len() - 30], 5);
        assert!(!complete);
    }
}
