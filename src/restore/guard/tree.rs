//! Reading pg_query's parse tree (its protobuf, serialised as JSON): names, constants, and
//! names written in strings.

use serde_json::Value;

pub fn sval(v: &Value) -> Option<&str> {
    v.as_str()
}

/// `[{"node":{"String":{"sval":"s"}}}, …]` → `["s", …]`.
pub fn names_of(list: &Value) -> Option<Vec<&str>> {
    let items = list.as_array()?;
    if items.is_empty() {
        return None;
    }
    items.iter().map(|i| i["node"]["String"]["sval"].as_str()).collect()
}

/// A constant (`AConst`, or a bare `String`/`Integer` node) as text.
pub fn constant_text(node: &Value) -> String {
    let inner = node.get("node").unwrap_or(node);
    let c = inner.get("AConst").map(|c| &c["val"]).unwrap_or(inner);
    for (key, field) in [
        ("Sval", "sval"),
        ("String", "sval"),
        ("Ival", "ival"),
        ("Integer", "ival"),
        ("Fval", "fval"),
        ("Boolval", "boolval"),
    ] {
        if let Some(v) = c.get(key).map(|x| &x[field]) {
            return match v {
                Value::String(s) => s.clone(),
                Value::Null => match key {
                    "Ival" | "Integer" => "0".into(),
                    "Boolval" => "false".into(),
                    _ => String::new(),
                },
                other => other.to_string(),
            };
        }
    }
    String::new()
}

/// `"We""ird".seq` / `s.t` as SQL writes names in strings: its parts, unquoted (lowercased unless quoted).
pub fn qualified_string(s: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut chars = s.trim().chars().peekable();
    loop {
        let mut part = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                if c == '"' {
                    if chars.peek() == Some(&'"') {
                        chars.next();
                        part.push('"');
                    } else {
                        break;
                    }
                } else {
                    part.push(c);
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' {
                    break;
                }
                part.extend(c.to_lowercase());
                chars.next();
            }
        }
        parts.push(part);
        if chars.next() != Some('.') {
            return parts;
        }
    }
}
