//! Splits a plain dump into what psql would see: SQL statements, psql meta-commands and COPY data,
//! following psql's own lexer (`psqlscan.l`): quotes, dollar quotes, comments, parentheses and
//! `BEGIN … END` bodies decide where a statement ends, a backslash outside them starts a
//! meta-command, `:name` is a psql variable. COPY data passes through line by line, unbuffered,
//! up to its `\.` line. What the [`Sink`] decides for each statement is written out, so the same
//! lexer serves the check and the feed.

use memchr::{memchr, memchr_iter, memmem, memrchr};

use super::{Refusal, Stop};

/// What becomes of one statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Passed on as it is.
    Forward,
    /// Passed on, and the lines after it are COPY data up to `\.`.
    CopyIn,
    /// Replaced by this one-line statement (the line count is kept).
    Replace(String),
    /// Replaced by this text, the whole statement's with names rewritten (its lines are the same).
    Rewritten(String),
    /// A COPY, rewritten: passed on as this text, and the lines after it are COPY data up to `\.`.
    CopyInRewritten(String),
    /// Left out (its lines become empty, so that line numbers stay the same).
    Blank,
}

/// A psql meta-command pg_dump itself writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Meta {
    Restrict(String),
    Unrestrict(String),
}

pub trait Sink {
    /// A whole statement, from its first token's line to the line of its `;`.
    fn statement(&mut self, text: &[u8], line: u64, last_line: u64) -> Result<Verdict, Stop>;
    fn meta(&mut self, meta: Meta, line: u64) -> Result<(), Stop>;
    fn output(&mut self, bytes: &[u8]) -> Result<(), Stop>;
}

/// The largest statement kept in memory to be checked. Parsing copies a statement several times
/// (the parser's buffer, its tree, the tree's protobuf and the tree read from it), so this bounds
/// a check to about 100 MB. pg_dump writes rows as COPY data, which is never held; only a dump made
/// with `--inserts` has a statement per row, and a row this large is refused.
pub const MAX_STATEMENT: usize = 16 << 20;
const TRAILER: &[u8] = b"-- PostgreSQL database dump complete";

#[derive(Clone, Debug, PartialEq, Eq)]
enum Quote {
    None,
    /// Inside `'…'`; `escape` for `E'…'` strings, where a backslash escapes.
    Single {
        escape: bool,
    },
    /// Just after a closing quote: a quote on a later line continues the same string.
    After {
        escape: bool,
        newline: bool,
    },
    Double,
    Dollar(Vec<u8>),
    Block(u32),
}

pub struct Lexer {
    /// A line not yet complete.
    pending: Vec<u8>,
    /// The statement so far (whole lines and the start of the current one).
    stmt: Vec<u8>,
    /// Line of the statement's first token, once there is one, and its offset in `stmt`.
    stmt_line: Option<u64>,
    stmt_start: usize,
    /// Number of the line being read (1-based).
    line: u64,
    quote: Quote,
    paren: u32,
    begin: u32,
    /// First letters of the statement's first identifiers, to spot `CREATE [OR REPLACE] FUNCTION`.
    idents: [u8; 4],
    ident_count: usize,
    copy: Option<CopyState>,
    /// After a COPY statement's `;`: only blanks may follow on its line.
    copy_next: bool,
    complete: bool,
}

struct CopyState {
    /// Bytes of the current data line so far, and the first three of them: enough to recognise
    /// a line that is exactly `\.` or `\.\r`.
    len: usize,
    head: [u8; 3],
}

impl CopyState {
    /// Takes the current line up to its end, if `bytes` holds it: `(bytes used, it was \.)`.
    fn piece(&mut self, bytes: &[u8]) -> Option<(usize, bool)> {
        let end = memchr(b'\n', bytes);
        let body = &bytes[..end.unwrap_or(bytes.len())];
        for (k, &b) in body.iter().enumerate().take(3usize.saturating_sub(self.len)) {
            self.head[self.len + k] = b;
        }
        self.len += body.len();
        let i = end?;
        let head = &self.head[..self.len.min(3)];
        let marker = (self.len == 2 && head == b"\\.") || (self.len == 3 && head == b"\\.\r");
        self.len = 0;
        Some((i + 1, marker))
    }
}

impl Default for Lexer {
    fn default() -> Self {
        Lexer {
            pending: Vec::new(),
            stmt: Vec::new(),
            stmt_line: None,
            stmt_start: 0,
            line: 1,
            quote: Quote::None,
            paren: 0,
            begin: 0,
            idents: [0; 4],
            ident_count: 0,
            copy: None,
            copy_next: false,
            complete: false,
        }
    }
}

fn ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn ident_cont(b: u8) -> bool {
    ident_start(b) || b.is_ascii_digit() || b == b'$'
}

impl Lexer {
    /// True once pg_dump's closing comment has gone by.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// Lines read so far.
    pub fn lines(&self) -> u64 {
        self.line - 1
    }

    pub fn feed(&mut self, mut chunk: &[u8], sink: &mut dyn Sink) -> Result<(), Stop> {
        while !chunk.is_empty() {
            if self.copy.is_some() {
                chunk = self.copy_data(chunk, sink)?;
                continue;
            }
            match memchr(b'\n', chunk) {
                Some(i) => {
                    self.pending.extend_from_slice(&chunk[..=i]);
                    chunk = &chunk[i + 1..];
                    let line = std::mem::take(&mut self.pending);
                    self.sql_line(&line, sink)?;
                    self.pending = line;
                    self.pending.clear();
                }
                None => {
                    self.pending.extend_from_slice(chunk);
                    if self.pending.len() > MAX_STATEMENT {
                        return Err(self.refuse_at(
                            self.line,
                            "a line longer than 16 MiB outside COPY data, too long to check",
                        ));
                    }
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// The end of the dump: nothing may be left half-way.
    pub fn finish(&mut self, sink: &mut dyn Sink) -> Result<(), Stop> {
        if self.copy.is_some() {
            return Err(self.refuse_at(self.line, "the dump ends inside COPY data: it is truncated"));
        }
        if !self.pending.is_empty() {
            let line = std::mem::take(&mut self.pending);
            self.sql_line(&line, sink)?;
        }
        if self.copy.is_some() || self.copy_next {
            return Err(self.refuse_at(self.line, "the dump ends at a COPY without its data: it is truncated"));
        }
        let inside_quote = !matches!(self.quote, Quote::None | Quote::After { .. });
        if let Some(line) = self.stmt_line.or(inside_quote.then_some(self.line)) {
            return Err(self.refuse_at(line, "the dump ends inside a statement: it is truncated"));
        }
        let rest = std::mem::take(&mut self.stmt);
        sink.output(&rest)
    }

    fn refuse_at(&self, line: u64, why: &str) -> Stop {
        Stop::Refused(Refusal {
            line,
            reason: why.to_string(),
        })
    }

    /// COPY data: passed on as it comes, until a line that is exactly `\.`. Only lines that begin
    /// with `\.` are looked at; the rest is skipped by a vectorised search.
    fn copy_data<'c>(&mut self, chunk: &'c [u8], sink: &mut dyn Sink) -> Result<&'c [u8], Stop> {
        let state = self.copy.as_mut().expect("in COPY data");
        let mut pos = 0;
        while pos < chunk.len() {
            if state.len == 0 {
                let rest = &chunk[pos..];
                let candidate = if rest.starts_with(b"\\.") {
                    Some(0)
                } else {
                    memmem::find(rest, b"\n\\.").map(|i| i + 1)
                };
                let Some(start) = candidate else {
                    // No line here starts with `\.`: complete lines go by, a partial one is kept track of.
                    let whole = memrchr(b'\n', rest).map_or(0, |i| i + 1);
                    self.line += memchr_iter(b'\n', &rest[..whole]).count() as u64;
                    state.piece(&rest[whole..]);
                    break;
                };
                self.line += memchr_iter(b'\n', &rest[..start]).count() as u64;
                pos += start;
            }
            match state.piece(&chunk[pos..]) {
                None => break,
                Some((used, end)) => {
                    pos += used;
                    self.line += 1;
                    if end {
                        self.copy = None;
                        sink.output(&chunk[..pos])?;
                        return Ok(&chunk[pos..]);
                    }
                }
            }
        }
        sink.output(chunk)?;
        Ok(&chunk[chunk.len()..])
    }

    /// One whole line of SQL (with its `\n`, except perhaps the last line of the dump).
    fn sql_line(&mut self, line: &[u8], sink: &mut dyn Sink) -> Result<(), Stop> {
        let n = self.line;
        if line.contains(&0) {
            return Err(self.refuse_at(n, "a NUL byte outside COPY data"));
        }
        if let Quote::After { escape, .. } = self.quote {
            self.quote = Quote::After { escape, newline: true };
        }
        if self.quote == Quote::None && line.starts_with(TRAILER) {
            self.complete = true;
        }
        let mut start = 0; // where the part of this line that belongs to `self.stmt` begins
        let mut i = 0;
        let len = line.len();
        while i < len {
            let b = line[i];
            match &mut self.quote {
                Quote::Single { escape } => {
                    match b {
                        b'\\' if *escape => i += 1,
                        b'\'' if line.get(i + 1) == Some(&b'\'') => i += 1,
                        b'\'' => {
                            self.quote = Quote::After {
                                escape: *escape,
                                newline: false,
                            }
                        }
                        _ => {}
                    }
                    i += 1;
                    continue;
                }
                Quote::After { escape, newline } => match b {
                    b' ' | b'\t' | b'\r' | b'\n' | b'\x0c' => {
                        i += 1;
                        continue;
                    }
                    b'\'' if *newline => {
                        self.quote = Quote::Single { escape: *escape };
                        i += 1;
                        continue;
                    }
                    _ => self.quote = Quote::None,
                },
                Quote::Double => {
                    if b == b'"' {
                        if line.get(i + 1) == Some(&b'"') {
                            i += 1;
                        } else {
                            self.quote = Quote::None;
                        }
                    }
                    i += 1;
                    continue;
                }
                Quote::Dollar(tag) => {
                    if b == b'$' && line[i..].starts_with(tag) {
                        i += tag.len();
                        self.quote = Quote::None;
                    } else {
                        i += 1;
                    }
                    continue;
                }
                Quote::Block(depth) => {
                    if line[i..].starts_with(b"*/") {
                        *depth -= 1;
                        if *depth == 0 {
                            self.quote = Quote::None;
                        }
                        i += 2;
                    } else if line[i..].starts_with(b"/*") {
                        *depth += 1;
                        i += 2;
                    } else {
                        i += 1;
                    }
                    continue;
                }
                Quote::None => {}
            }
            // Outside any quote or comment.
            if self.copy_next && !matches!(b, b' ' | b'\t' | b'\r' | b'\n') {
                return Err(self.refuse_at(n, "something follows a COPY statement on its line"));
            }
            match b {
                b' ' | b'\t' | b'\r' | b'\n' | b'\x0c' | b'\x0b' => i += 1,
                b'-' if line.get(i + 1) == Some(&b'-') => break, // a comment to the end of the line
                b'/' if line.get(i + 1) == Some(&b'*') => {
                    self.quote = Quote::Block(1);
                    i += 2;
                }
                b'\'' => {
                    let escape = i >= 1 && matches!(line[i - 1], b'e' | b'E') && (i < 2 || !ident_cont(line[i - 2]));
                    self.token(n, i - start);
                    self.quote = Quote::Single { escape };
                    i += 1;
                }
                b'"' => {
                    self.token(n, i - start);
                    self.quote = Quote::Double;
                    i += 1;
                }
                b'$' if i == 0 || !ident_cont(line[i - 1]) => {
                    self.token(n, i - start);
                    match dollar_tag(&line[i..]) {
                        Some(tag) => {
                            i += tag.len();
                            self.quote = Quote::Dollar(tag.to_vec());
                        }
                        None => i += 1,
                    }
                }
                b'\\' => {
                    // Allowed only where a statement could start: nothing but blanks and
                    // comments before it.
                    let only_blanks_before = line[start..i].iter().all(|c| c.is_ascii_whitespace());
                    if self.stmt_line.is_some() || !only_blanks_before {
                        return Err(self.refuse_at(n, &meta_refusal(&line[i..])));
                    }
                    let meta = parse_meta(&line[i..]).ok_or_else(|| self.refuse_at(n, &meta_refusal(&line[i..])))?;
                    // Whatever came before (blanks, comments) goes out; the command's line stays empty.
                    let before = std::mem::take(&mut self.stmt);
                    sink.output(&before)?;
                    sink.meta(meta, n)?;
                    sink.output(if line.ends_with(b"\n") { b"\n" } else { b"" })?;
                    self.line += 1;
                    return Ok(());
                }
                b':' => {
                    self.token(n, i - start);
                    match line.get(i + 1) {
                        Some(b':') | Some(b'=') => i += 2,
                        Some(&c) if ident_start(c) || matches!(c, b'\'' | b'"' | b'{') => {
                            return Err(
                                self.refuse_at(n, "a psql variable (:name) outside quotes: psql would substitute it")
                            );
                        }
                        _ => i += 1,
                    }
                }
                b'(' => {
                    self.paren += 1;
                    self.token(n, i - start);
                    i += 1;
                }
                b')' => {
                    self.paren = self.paren.saturating_sub(1);
                    self.token(n, i - start);
                    i += 1;
                }
                b';' if self.paren == 0 && self.begin == 0 => {
                    self.token(n, i - start);
                    self.stmt.extend_from_slice(&line[start..=i]);
                    if self.stmt.len() > MAX_STATEMENT {
                        return Err(self.refuse_at(n, "a statement larger than 16 MiB, too large to check (a row this large in a dump made with --inserts: back up with COPY, the default)"));
                    }
                    self.end_statement(sink)?;
                    i += 1;
                    start = i;
                }
                c if ident_start(c) => {
                    let end = i + line[i..].iter().position(|&c| !ident_cont(c)).unwrap_or(len - i);
                    self.identifier(&line[i..end]);
                    self.token(n, i - start);
                    i = end;
                }
                c if c.is_ascii_digit() => {
                    self.token(n, i - start);
                    i += line[i..].iter().position(|&c| !ident_cont(c)).unwrap_or(len - i);
                }
                _ => {
                    self.token(n, i - start);
                    i += 1;
                }
            }
        }
        self.stmt.extend_from_slice(&line[start..]);
        // Blanks and comments before any statement go out as they come (psql drops them too):
        // only a statement is held, so comments cannot fill the memory a statement may take.
        if self.stmt_line.is_none() && !self.copy_next && matches!(self.quote, Quote::None | Quote::Block(_)) {
            let before = std::mem::take(&mut self.stmt);
            sink.output(&before)?;
        }
        if self.stmt.len() > MAX_STATEMENT {
            return Err(self.refuse_at(n, "a statement larger than 16 MiB, too large to check (a row this large in a dump made with --inserts: back up with COPY, the default)"));
        }
        if line.ends_with(b"\n") {
            self.line += 1;
            if self.copy_next {
                self.copy_next = false;
                let rest = std::mem::take(&mut self.stmt);
                sink.output(&rest)?;
                self.copy = Some(CopyState { len: 0, head: [0; 3] });
            }
        }
        Ok(())
    }

    /// A token at `at` bytes into the current line's part of the statement.
    fn token(&mut self, line: u64, at: usize) {
        if self.stmt_line.is_none() {
            self.stmt_line = Some(line);
            self.stmt_start = self.stmt.len() + at;
        }
    }

    /// psql's heuristic for `CREATE [OR REPLACE] FUNCTION|PROCEDURE … BEGIN ATOMIC … END`.
    fn identifier(&mut self, word: &[u8]) {
        if self.ident_count == 0 {
            self.idents = [0; 4];
        }
        let is = |w: &str| word.eq_ignore_ascii_case(w.as_bytes());
        if (is("create") || is("function") || is("procedure") || is("or") || is("replace")) && self.ident_count < 4 {
            self.idents[self.ident_count] = word[0].to_ascii_lowercase();
        }
        self.ident_count += 1;
        let id = self.idents;
        let function = id[0] == b'c'
            && (id[1] == b'f' || id[1] == b'p' || (id[1] == b'o' && id[2] == b'r' && (id[3] == b'f' || id[3] == b'p')));
        if function && self.paren == 0 {
            if is("begin") {
                self.begin += 1;
            } else if is("case") {
                if self.begin >= 1 {
                    self.begin += 1;
                }
            } else if is("end") && self.begin > 0 {
                self.begin -= 1;
            }
        }
    }

    fn end_statement(&mut self, sink: &mut dyn Sink) -> Result<(), Stop> {
        let text = std::mem::take(&mut self.stmt);
        let line = self.stmt_line.take().unwrap_or(self.line);
        self.ident_count = 0;
        let verdict = sink.statement(&text, line, self.line)?;
        // Blanks and comments before the statement stay, so that line numbers stay.
        let (before, body) = text.split_at(self.stmt_start.min(text.len()));
        let newlines = body.iter().filter(|&&c| c == b'\n').count();
        match verdict {
            Verdict::Forward => sink.output(&text)?,
            Verdict::CopyIn => {
                sink.output(&text)?;
                self.copy_next = true;
            }
            Verdict::Rewritten(sql) => sink.output(sql.as_bytes())?,
            Verdict::CopyInRewritten(sql) => {
                sink.output(sql.as_bytes())?;
                self.copy_next = true;
            }
            Verdict::Replace(sql) => {
                sink.output(before)?;
                sink.output(sql.as_bytes())?;
                sink.output(&b"\n".repeat(newlines))?;
            }
            Verdict::Blank => {
                sink.output(before)?;
                sink.output(&b"\n".repeat(newlines))?;
            }
        }
        self.stmt = text;
        self.stmt.clear();
        Ok(())
    }
}

/// `$tag$` (or `$$`) at the start of `s`.
fn dollar_tag(s: &[u8]) -> Option<&[u8]> {
    let body = &s[1..];
    if body.first() == Some(&b'$') {
        return Some(&s[..2]);
    }
    if !body.first().is_some_and(|&c| ident_start(c)) {
        return None;
    }
    let end = body.iter().position(|&c| !(ident_start(c) || c.is_ascii_digit()))?;
    (body[end] == b'$').then(|| &s[..end + 2])
}

/// `\restrict KEY` or `\unrestrict KEY`, alone on the line, the key as pg_dump makes them.
fn parse_meta(line: &[u8]) -> Option<Meta> {
    let text = std::str::from_utf8(line).ok()?.trim_end();
    let mut words = text.split_ascii_whitespace();
    let command = words.next()?;
    let key = words.next()?;
    if words.next().is_some() || !key.bytes().all(|c| c.is_ascii_alphanumeric()) {
        return None;
    }
    match command {
        "\\restrict" => Some(Meta::Restrict(key.to_string())),
        "\\unrestrict" => Some(Meta::Unrestrict(key.to_string())),
        _ => None,
    }
}

fn meta_refusal(at: &[u8]) -> String {
    let name: String = at
        .iter()
        .skip(1)
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, b'!' | b'?' | b';' | b':'))
        .take(20)
        .map(|&c| c as char)
        .collect();
    format!("the psql meta-command \\{name} (only pg_dump's own \\restrict and \\unrestrict lines are allowed)")
}
