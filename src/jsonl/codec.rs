//! The rows of the json format. The server sends each table with plain `COPY … TO STDOUT` (text
//! format, as pg_dump does, so the dump costs the server no more than pg_dump), and these codecs
//! turn its rows into JSON objects and back into COPY text for the restore:
//!
//! * integers (`smallint`, `integer`, `bigint`) become JSON numbers and booleans JSON booleans;
//! * every other value is its PostgreSQL text form as a JSON string (numeric keeps every digit,
//!   timestamps their microseconds and offset, bytea is `\x…` hex, arrays `{…}`, json and jsonb
//!   their own text), so the restore hands the server back exactly what it printed;
//! * SQL NULL is JSON `null`; a json value `null` is the string `"null"`; `''` is `""`.

use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, Visitor};

use super::Column;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Integer,
    Boolean,
    Text,
}

impl Kind {
    fn of(type_name: &str) -> Kind {
        match type_name {
            "smallint" | "integer" | "bigint" => Kind::Integer,
            "boolean" => Kind::Boolean,
            _ => Kind::Text,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CodecError(String);

/// COPY text rows of one table → JSON Lines objects.
pub struct RowEncoder {
    /// `"name":` per column, JSON-escaped once.
    keys: Vec<Vec<u8>>,
    kinds: Vec<Kind>,
    /// The start of a row whose end has not arrived yet.
    partial: Vec<u8>,
}

impl RowEncoder {
    pub fn new(columns: &[Column]) -> RowEncoder {
        RowEncoder {
            keys: columns
                .iter()
                .map(|c| {
                    let mut k = serde_json::to_vec(&c.name).expect("a string serializes");
                    k.push(b':');
                    k
                })
                .collect(),
            kinds: columns.iter().map(|c| Kind::of(&c.type_name)).collect(),
            partial: Vec::new(),
        }
    }

    /// Appends a JSON line to `out` for every row completed by `chunk`; a row cut at the end of the
    /// chunk is kept for the next call.
    pub fn encode(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), CodecError> {
        let mut rest = chunk;
        if !self.partial.is_empty() {
            match memchr::memchr(b'\n', rest) {
                Some(end) => {
                    self.partial.extend_from_slice(&rest[..end]);
                    let row = std::mem::take(&mut self.partial);
                    self.encode_row(&row, out)?;
                    rest = &rest[end + 1..];
                }
                None => {
                    self.partial.extend_from_slice(rest);
                    return Ok(());
                }
            }
        }
        while let Some(end) = memchr::memchr(b'\n', rest) {
            self.encode_row(&rest[..end], out)?;
            rest = &rest[end + 1..];
        }
        self.partial.extend_from_slice(rest);
        Ok(())
    }

    /// Fails if the table's data stopped in the middle of a row.
    pub fn finish(&self) -> Result<(), CodecError> {
        if self.partial.is_empty() {
            Ok(())
        } else {
            Err(CodecError("the server's data stopped in the middle of a row".into()))
        }
    }

    fn encode_row(&self, row: &[u8], out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.push(b'{');
        let mut rest = Some(row);
        for (i, (key, kind)) in self.keys.iter().zip(&self.kinds).enumerate() {
            let Some(fields) = rest else {
                return Err(self.wrong_width(row));
            };
            let (field, next) = match memchr::memchr(b'\t', fields) {
                Some(tab) => (&fields[..tab], Some(&fields[tab + 1..])),
                None => (fields, None),
            };
            rest = next;
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(key);
            match (field, kind) {
                (b"\\N", _) => out.extend_from_slice(b"null"),
                (_, Kind::Integer) => out.extend_from_slice(field),
                (b"t", Kind::Boolean) => out.extend_from_slice(b"true"),
                (b"f", Kind::Boolean) => out.extend_from_slice(b"false"),
                _ => copy_text_to_json(field, out),
            }
        }
        // A table without columns has empty rows; any other row must have been used up exactly.
        if rest.is_some_and(|r| !(r.is_empty() && self.keys.is_empty())) {
            return Err(self.wrong_width(row));
        }
        out.extend_from_slice(b"}\n");
        Ok(())
    }

    fn wrong_width(&self, row: &[u8]) -> CodecError {
        let fields = if row.is_empty() {
            0
        } else {
            memchr::memchr_iter(b'\t', row).count() + 1
        };
        CodecError(format!(
            "the server sent a row of {fields} fields for a table of {} columns",
            self.keys.len()
        ))
    }
}

/// Bytes that COPY's text form or JSON strings spell differently.
const fn special() -> [bool; 256] {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        t[b] = true;
        b += 1;
    }
    t[b'\\' as usize] = true;
    t[b'"' as usize] = true;
    t
}
static SPECIAL: [bool; 256] = special();

/// One COPY text field (backslash escapes) as a JSON string.
fn copy_text_to_json(field: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    let mut i = 0;
    let mut plain = 0;
    while i < field.len() {
        let b = field[i];
        if !SPECIAL[b as usize] {
            i += 1;
            continue;
        }
        out.extend_from_slice(&field[plain..i]);
        i += 1;
        let byte = if b == b'\\' {
            let Some(&e) = field.get(i) else {
                break; // COPY never ends a field with a lone backslash
            };
            i += 1;
            match e {
                b'n' => b'\n',
                b'r' => b'\r',
                b't' => b'\t',
                b'b' => 0x08,
                b'f' => 0x0c,
                b'v' => 0x0b,
                b'0'..=b'7' => {
                    let mut v = u32::from(e - b'0');
                    for _ in 0..2 {
                        match field.get(i) {
                            Some(&d @ b'0'..=b'7') => {
                                v = v * 8 + u32::from(d - b'0');
                                i += 1;
                            }
                            _ => break,
                        }
                    }
                    v as u8
                }
                b'x' if field.get(i).is_some_and(u8::is_ascii_hexdigit) => {
                    let mut v = 0u8;
                    for _ in 0..2 {
                        match field.get(i).and_then(|d| (*d as char).to_digit(16)) {
                            Some(d) => {
                                v = v * 16 + d as u8;
                                i += 1;
                            }
                            None => break,
                        }
                    }
                    v
                }
                other => other,
            }
        } else {
            b
        };
        push_json_byte(byte, out);
        plain = i;
    }
    out.extend_from_slice(&field[plain..]);
    out.push(b'"');
}

fn push_json_byte(b: u8, out: &mut Vec<u8>) {
    match b {
        b'"' => out.extend_from_slice(b"\\\""),
        b'\\' => out.extend_from_slice(b"\\\\"),
        b'\n' => out.extend_from_slice(b"\\n"),
        b'\r' => out.extend_from_slice(b"\\r"),
        b'\t' => out.extend_from_slice(b"\\t"),
        0x08 => out.extend_from_slice(b"\\b"),
        0x0c => out.extend_from_slice(b"\\f"),
        0..=0x1f => {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        }
        _ => out.push(b),
    }
}

/// JSON Lines objects of one table → COPY text rows, in the column order of the table's marker.
pub struct RowDecoder {
    names: Vec<String>,
    /// Where each column's value sits in `scratch`, or None for NULL / absent.
    fields: Vec<Option<(usize, usize)>>,
    scratch: Vec<u8>,
}

impl RowDecoder {
    pub fn new(columns: &[Column]) -> RowDecoder {
        RowDecoder {
            names: columns.iter().map(|c| c.name.clone()).collect(),
            fields: vec![None; columns.len()],
            scratch: Vec::new(),
        }
    }

    /// Appends the COPY text row for one JSON object line. A column the object leaves out is NULL.
    pub fn decode(&mut self, line: &[u8], out: &mut Vec<u8>) -> Result<(), CodecError> {
        self.scratch.clear();
        self.fields.iter_mut().for_each(|f| *f = None);
        // The line is checked as UTF-8 once, not string by string (a sixth of a restore's CPU).
        let line = std::str::from_utf8(line).map_err(|_| CodecError("a row that is not valid UTF-8".into()))?;
        let mut de = serde_json::Deserializer::from_str(line);
        RowSeed(self)
            .deserialize(&mut de)
            .and_then(|()| de.end())
            .map_err(|e| CodecError(e.to_string()))?;
        for (i, f) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(b'\t');
            }
            match f {
                Some((a, b)) => out.extend_from_slice(&self.scratch[*a..*b]),
                None => out.extend_from_slice(b"\\N"),
            }
        }
        out.push(b'\n');
        Ok(())
    }
}

struct RowSeed<'a>(&'a mut RowDecoder);

impl<'de> DeserializeSeed<'de> for RowSeed<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RowSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a row object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let dec = self.0;
        let mut next = 0;
        while let Some(i) = map.next_key_seed(KeySeed {
            names: &dec.names,
            expected: next,
        })? {
            let start = dec.scratch.len();
            let present = map.next_value_seed(ValueSeed(&mut dec.scratch))?;
            if dec.fields[i].is_some() {
                return Err(de::Error::custom(format_args!(
                    "column {:?} appears twice",
                    dec.names[i]
                )));
            }
            dec.fields[i] = present.then_some((start, dec.scratch.len()));
            next = i + 1;
        }
        Ok(())
    }
}

/// A key: the index of its column (the expected next one is tried first).
struct KeySeed<'a> {
    names: &'a [String],
    expected: usize,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = usize;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for KeySeed<'_> {
    type Value = usize;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a column name")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<usize, E> {
        if self.names.get(self.expected).is_some_and(|n| n == v) {
            return Ok(self.expected);
        }
        self.names
            .iter()
            .position(|n| n == v)
            .ok_or_else(|| E::custom(format_args!("column {v:?} is not in the table's column list")))
    }
}

/// A value, written into the buffer as COPY text; false for NULL.
struct ValueSeed<'a>(&'a mut Vec<u8>);

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = bool;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string, number, boolean or null")
    }
    fn visit_unit<E>(self) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_none<E>(self) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_bool<E>(self, v: bool) -> Result<bool, E> {
        self.0.push(if v { b't' } else { b'f' });
        Ok(true)
    }
    fn visit_i64<E>(self, v: i64) -> Result<bool, E> {
        self.0.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
        Ok(true)
    }
    fn visit_u64<E>(self, v: u64) -> Result<bool, E> {
        self.0.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
        Ok(true)
    }
    fn visit_f64<E>(self, v: f64) -> Result<bool, E> {
        self.0.extend_from_slice(v.to_string().as_bytes());
        Ok(true)
    }
    fn visit_str<E>(self, v: &str) -> Result<bool, E> {
        json_to_copy_text(v.as_bytes(), self.0);
        Ok(true)
    }
    /// A string the JSON spelled without any escape: it holds no backslash (that would be an
    /// escape) and no control character (JSON forbids them raw, and the parser refuses them), so
    /// it is its own COPY text.
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<bool, E> {
        self.0.extend_from_slice(v.as_bytes());
        Ok(true)
    }
}

/// A decoded string as one COPY text field.
fn json_to_copy_text(s: &[u8], out: &mut Vec<u8>) {
    let mut plain = 0;
    for (i, &b) in s.iter().enumerate() {
        let escaped: &[u8] = match b {
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            _ => continue,
        };
        out.extend_from_slice(&s[plain..i]);
        out.extend_from_slice(escaped);
        plain = i + 1;
    }
    out.extend_from_slice(&s[plain..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols(spec: &[(&str, &str)]) -> Vec<Column> {
        spec.iter()
            .map(|(n, t)| Column {
                name: n.to_string(),
                type_name: t.to_string(),
            })
            .collect()
    }

    fn encode(columns: &[Column], chunks: &[&[u8]]) -> String {
        let mut enc = RowEncoder::new(columns);
        let mut out = Vec::new();
        for c in chunks {
            enc.encode(c, &mut out).unwrap();
        }
        enc.finish().unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn copy_rows_become_json_objects() {
        let c = cols(&[("id", "bigint"), ("ok", "boolean"), ("body", "text"), ("j", "jsonb")]);
        let out = encode(
            &c,
            &[b"1\tt\tline1\\r\\nline2\\\\back\\t\"q\"\t{\"a\": null}\n2\tf\t\t\\N\n3\t\\N\t\\\\.\tnull\n"],
        );
        assert_eq!(
            out,
            "{\"id\":1,\"ok\":true,\"body\":\"line1\\r\\nline2\\\\back\\t\\\"q\\\"\",\"j\":\"{\\\"a\\\": null}\"}\n\
             {\"id\":2,\"ok\":false,\"body\":\"\",\"j\":null}\n\
             {\"id\":3,\"ok\":null,\"body\":\"\\\\.\",\"j\":\"null\"}\n"
        );
        for line in out.lines() {
            serde_json::from_str::<serde_json::Value>(line).unwrap();
        }
    }

    #[test]
    fn rows_split_anywhere_between_chunks_encode_the_same() {
        let c = cols(&[("id", "integer"), ("name", "text")]);
        let data = b"1\tAna \\\\ \xc3\xb1\n22\t\\x01\\001\x01\n";
        let whole = encode(&c, &[data]);
        for cut in 0..data.len() {
            assert_eq!(encode(&c, &[&data[..cut], &data[cut..]]), whole, "cut at {cut}");
        }
        assert!(whole.contains("\"\\u0001\\u0001\\u0001\""), "{whole}");
    }

    #[test]
    fn a_row_of_the_wrong_width_or_cut_short_is_an_error() {
        let c = cols(&[("id", "integer"), ("name", "text")]);
        let mut out = Vec::new();
        assert!(RowEncoder::new(&c).encode(b"1\n", &mut out).is_err());
        assert!(RowEncoder::new(&c).encode(b"1\ta\tb\n", &mut out).is_err());
        let mut enc = RowEncoder::new(&c);
        enc.encode(b"1\ta", &mut out).unwrap();
        assert!(enc.finish().is_err());
        assert_eq!(encode(&[], &[b"\n\n"]), "{}\n{}\n");
    }

    #[test]
    fn json_objects_come_back_as_the_same_copy_rows() {
        let c = cols(&[("id", "bigint"), ("ok", "boolean"), ("body", "text"), ("j", "jsonb")]);
        let copy: &[u8] =
            b"1\tt\tline1\\r\\nline2\\\\back\\t\"q\" \xc3\xb1\t{\"a\": null}\n2\tf\t\t\\N\n3\t\\N\t\\\\.\tnull\n";
        let json = encode(&c, &[copy]);
        let mut dec = RowDecoder::new(&c);
        let mut back = Vec::new();
        for line in json.lines() {
            dec.decode(line.as_bytes(), &mut back).unwrap();
        }
        assert_eq!(String::from_utf8_lossy(&back), String::from_utf8_lossy(copy));
    }

    #[test]
    fn decoding_accepts_any_key_order_and_missing_keys_and_names_bad_input() {
        let c = cols(&[("a", "integer"), ("b", "text"), ("c", "numeric")]);
        let mut dec = RowDecoder::new(&c);
        let mut out = Vec::new();
        dec.decode(br#"{"c":1.5,"a":-7}"#, &mut out).unwrap();
        assert_eq!(out, b"-7\t\\N\t1.5\n");
        let err = |line: &[u8]| {
            RowDecoder::new(&c)
                .decode(line, &mut Vec::new())
                .unwrap_err()
                .to_string()
        };
        assert!(err(br#"{"zz":1}"#).contains("\"zz\" is not in the table's column list"));
        assert!(err(br#"{"a":1,"a":2}"#).contains("appears twice"));
        assert!(err(br#"{"b":[1]}"#).contains("a string, number, boolean or null"));
        assert!(err(br#"{"a":1"#).contains("EOF"));
        assert!(err(br#"{"a":1} x"#).contains("trailing"));
        // A string is copied as it stands when it has no escape: a raw tab, newline or backslash
        // would end a COPY field or row, so a line holding one is refused, never passed on.
        for raw in [&b"{\"b\":\"x\ty\"}"[..], b"{\"b\":\"x\ny\"}", b"{\"b\":\"x\ry\"}"] {
            assert!(
                err(raw).contains("control character"),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
        assert!(err(b"{\"b\":\"\xff\"}").contains("not valid UTF-8"));
        let mut out = Vec::new();
        dec.decode(br#"{"b":"plain \u00f1","c":"x\\y"}"#, &mut out).unwrap();
        assert_eq!(out, "\\N\tplain \u{f1}\tx\\\\y\n".as_bytes());
    }
}
