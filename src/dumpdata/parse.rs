//! Reading a dumpdata file as a stream: the top-level JSON array, one object at a time, each at
//! most [`MAX_OBJECT`] bytes, so memory stays bounded whatever the file's size (Django writes the
//! whole array on one line unless `--indent` was given).

use std::io::BufRead;

use anyhow::{bail, Result};
use serde::Deserialize;
use serde_json::{Map, Value};

/// The largest object (one row) read: half the native format's longest line (32 MiB), which a
/// row becomes (base64 binary grows by half as hex).
pub const MAX_OBJECT: usize = 16 << 20;

/// One dumpdata object: `{"model": "app_label.model", "pk": …, "fields": {…}}`. `pk` is absent in
/// a `--natural-primary` dump.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Object {
    pub model: String,
    #[serde(default)]
    pub pk: Option<Value>,
    pub fields: Map<String, Value>,
}

/// Whether `input` starts (after white space and a byte order mark) like a dumpdata file: `[`.
/// The native json format starts with its header object, `{`.
pub fn looks_like_dumpdata(input: &mut dyn BufRead) -> std::io::Result<bool> {
    let mut seen = 0usize;
    loop {
        let chunk = input.fill_buf()?;
        if chunk.is_empty() {
            return Ok(false);
        }
        let mut used = 0;
        for &b in chunk {
            match b {
                b' ' | b'\t' | b'\r' | b'\n' | 0xEF | 0xBB | 0xBF => used += 1,
                b'[' => return Ok(true),
                _ => return Ok(false),
            }
        }
        input.consume(used);
        seen += used;
        if seen > 4096 {
            return Ok(false);
        }
    }
}

/// The objects of a dumpdata array, in order.
pub struct Objects<R> {
    input: R,
    state: State,
    /// Objects read so far (the 1-based number of the last one).
    pub number: u64,
    buf: Vec<u8>,
}

#[derive(PartialEq)]
enum State {
    Start,
    First,
    Next,
    Done,
}

impl<R: BufRead> Objects<R> {
    pub fn new(input: R) -> Self {
        Objects {
            input,
            state: State::Start,
            number: 0,
            buf: Vec::new(),
        }
    }

    /// The next object, or None at the end of the array (and of the file).
    pub fn next_object(&mut self) -> Result<Option<Object>> {
        if !self.next_raw()? {
            return Ok(None);
        }
        match serde_json::from_slice::<Object>(&self.buf) {
            Ok(o) => Ok(Some(o)),
            // serde's message can quote the data; only where and what kind of fault is said.
            Err(e) => bail!(
                "object {} is not a dumpdata object ({}, at byte {} of it): the file is damaged or not a dumpdata backup",
                self.number,
                match e.classify() {
                    serde_json::error::Category::Data => "not the model/pk/fields shape",
                    serde_json::error::Category::Eof => "it ends early",
                    _ => "invalid JSON",
                },
                e.column()
            ),
        }
    }

    fn peek(&mut self) -> Result<Option<u8>> {
        loop {
            let chunk = self.input.fill_buf()?;
            match chunk.first() {
                None => return Ok(None),
                Some(b' ' | b'\t' | b'\r' | b'\n') => self.input.consume(1),
                Some(&b) => return Ok(Some(b)),
            }
        }
    }

    fn expect(&mut self, what: &[u8], said: &str) -> Result<u8> {
        match self.peek()? {
            Some(b) if what.contains(&b) => {
                self.input.consume(1);
                Ok(b)
            }
            None => bail!(
                "the file ends before the end of the dumpdata array (after object {}): it is truncated",
                self.number
            ),
            Some(_) => bail!(
                "{said} (after object {}): the file is damaged or not a dumpdata backup",
                self.number
            ),
        }
    }

    /// The next element's bytes into `self.buf`; false at the end of the array.
    fn next_raw(&mut self) -> Result<bool> {
        match self.state {
            State::Done => return Ok(false),
            State::Start => {
                self.expect(b"[", "a dumpdata backup is a JSON array")?;
                self.state = State::First;
                if self.peek()? == Some(b']') {
                    self.input.consume(1);
                    return self.end();
                }
            }
            State::First => {}
            State::Next => {
                if self.expect(b",]", "expected , or ] between objects")? == b']' {
                    return self.end();
                }
            }
        }
        self.state = State::Next;
        if self.peek()? != Some(b'{') {
            bail!(
                "element {} of the array is not an object: the file is damaged or not a dumpdata backup",
                self.number + 1
            );
        }
        self.number += 1;
        self.buf.clear();
        let (mut depth, mut in_str, mut esc) = (0usize, false, false);
        loop {
            let chunk = self.input.fill_buf()?;
            if chunk.is_empty() {
                bail!("the file ends inside object {}: it is truncated", self.number);
            }
            let mut used = chunk.len();
            let mut closed = false;
            for (i, &b) in chunk.iter().enumerate() {
                if in_str {
                    if esc {
                        esc = false;
                    } else if b == b'\\' {
                        esc = true;
                    } else if b == b'"' {
                        in_str = false;
                    }
                    continue;
                }
                match b {
                    b'"' => in_str = true,
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth = depth.saturating_sub(1);
                        if depth == 0 {
                            used = i + 1;
                            closed = true;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            if self.buf.len() + used > MAX_OBJECT {
                bail!(
                    "object {} is larger than {} MiB, more than any row this tool restores: the file is not a backup it can read",
                    self.number,
                    MAX_OBJECT >> 20
                );
            }
            self.buf.extend_from_slice(&chunk[..used]);
            self.input.consume(used);
            if closed {
                return Ok(true);
            }
        }
    }

    fn end(&mut self) -> Result<bool> {
        self.state = State::Done;
        if self.peek()?.is_some() {
            bail!("there is more after the end of the dumpdata array: the file is damaged or not a dumpdata backup");
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(text: &str) -> Result<Vec<Object>> {
        let mut o = Objects::new(text.as_bytes());
        let mut out = Vec::new();
        while let Some(x) = o.next_object()? {
            out.push(x);
        }
        Ok(out)
    }

    #[test]
    fn reads_one_line_and_indented_arrays() {
        let one = r#"[{"model": "a.b", "pk": 1, "fields": {"x": "}{\"]"}}, {"model": "a.b", "pk": 2, "fields": {"l": [1, [2]]}}]"#;
        let v = all(one).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].fields["x"], "}{\"]");
        let indented = "[\n{\n  \"model\": \"a.b\",\n  \"pk\": 1,\n  \"fields\": {}\n}\n]\n";
        assert_eq!(all(indented).unwrap().len(), 1);
        assert_eq!(all("[]").unwrap().len(), 0);
        assert!(looks_like_dumpdata(&mut "\u{feff} \n[".as_bytes()).unwrap());
        assert!(!looks_like_dumpdata(&mut "{\"format\"".as_bytes()).unwrap());
    }

    #[test]
    fn an_object_without_end_is_refused_at_the_bound_not_held() {
        use std::io::Read as _;
        let head = br#"[{"model": "a.b", "pk": 1, "fields": {"x": ""#;
        let endless = head.chain(std::io::repeat(b'a').take(1 << 40));
        let mut o = Objects::new(std::io::BufReader::new(endless));
        let e = format!("{:#}", o.next_object().unwrap_err());
        assert!(e.contains("larger than 16 MiB"), "{e}");
    }

    #[test]
    fn refuses_damage_without_quoting_data() {
        for bad in [
            r#"[{"model": "a.b", "pk": 1, "fields": {}}"#,
            r#"[{"model": "a.b", "pk": 1, "fields": {"x": "secret"#,
            r#"[{"model": "a.b", "pk": 1, "fields": {"x": "secret"}} {"#,
            r#"[{"model": "a.b", "pk": 1, "fieldz": {"x": "secret"}}]"#,
            r#"[{"model": 7, "pk": 1, "fields": {"x": "secret"}}]"#,
            r#"[1]"#,
            r#"[] x"#,
            r#"{"format": "tenant-backup-jsonl"}"#,
        ] {
            let e = format!("{:#}", all(bad).unwrap_err());
            assert!(!e.contains("secret"), "{e}");
        }
    }
}
