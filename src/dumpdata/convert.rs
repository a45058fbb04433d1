//! Values: how Django's serializer spelled a field, turned into what the native format's rows
//! carry for a column of a given type (integers and booleans as JSON, everything else as the
//! server's text form; see `jsonl::codec`). Errors name the column type and what was wrong,
//! never the value.

use base64::Engine as _;
use serde_json::Value;

/// One field's value for a column of type `ty` (as `format_type` prints it).
pub fn value(v: &Value, ty: &str) -> Result<Value, String> {
    if v.is_null() {
        return Ok(Value::Null);
    }
    match ty {
        "smallint" | "integer" | "bigint" => match v {
            Value::Number(n) if n.is_i64() || n.is_u64() => Ok(v.clone()),
            Value::String(s) => s
                .trim()
                .parse::<i64>()
                .map(Value::from)
                .map_err(|_| "a string that is not an integer".into()),
            Value::Array(_) => Err(natural()),
            _ => Err(format!("{}, not an integer", kind(v))),
        },
        "boolean" => match v {
            Value::Bool(_) => Ok(v.clone()),
            _ => Err(format!("{}, not a boolean", kind(v))),
        },
        "bytea" => match v {
            // Django's BinaryField: base64.
            Value::String(s) => base64::engine::general_purpose::STANDARD
                .decode(s.trim())
                .map(|b| Value::String(format!("\\x{}", hex::encode(b))))
                .map_err(|_| "a string that is not base64 (Django writes binary fields as base64)".into()),
            _ => Err(format!("{}, not base64 text", kind(v))),
        },
        // Django's JSONField: the value itself.
        "json" | "jsonb" => Ok(Value::String(v.to_string())),
        t if t.ends_with("[]") => {
            // Django's ArrayField: a JSON list, written as a string.
            let list = match v {
                Value::String(s) => {
                    serde_json::from_str::<Value>(s).map_err(|_| "a string that is not a JSON list".to_string())?
                }
                other => other.clone(),
            };
            match &list {
                Value::Array(_) => {
                    let mut out = String::new();
                    array_literal(&list, &mut out);
                    Ok(Value::String(out))
                }
                _ => Err(format!("{}, not a list", kind(&list))),
            }
        }
        _ => match v {
            Value::String(_) => Ok(v.clone()),
            Value::Number(n) => Ok(Value::String(n.to_string())),
            Value::Bool(b) => Ok(Value::String(b.to_string())),
            Value::Array(_) | Value::Object(_) => Err(format!("{}, not a single value", kind(v))),
            Value::Null => Ok(Value::Null),
        },
    }
}

fn natural() -> String {
    "a list where a key belongs (a natural key?)".into()
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// A JSON list as a PostgreSQL array literal: `{1,"a b",NULL,{2}}`.
fn array_literal(v: &Value, out: &mut String) {
    match v {
        Value::Array(items) => {
            out.push('{');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                match item {
                    Value::Null => out.push_str("NULL"),
                    Value::Array(_) => array_literal(item, out),
                    Value::String(s) => quoted(s, out),
                    other => quoted(&other.to_string(), out),
                }
            }
            out.push('}');
        }
        other => quoted(&other.to_string(), out),
    }
}

fn quoted(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn django_spellings_become_server_text() {
        assert_eq!(value(&json!("3"), "bigint").unwrap(), json!(3));
        assert_eq!(value(&json!(true), "boolean").unwrap(), json!(true));
        assert_eq!(value(&json!("AAH/"), "bytea").unwrap(), json!("\\x0001ff"));
        assert_eq!(
            value(&json!({"a": [1, null]}), "jsonb").unwrap(),
            json!(r#"{"a":[1,null]}"#)
        );
        assert_eq!(value(&json!("12.50"), "numeric(8,2)").unwrap(), json!("12.50"));
        assert_eq!(value(&json!(1.5), "double precision").unwrap(), json!("1.5"));
        assert_eq!(value(&json!(null), "jsonb").unwrap(), json!(null));
        assert_eq!(
            value(&json!(r#"["a \"b\"", null, "c"]"#), "character varying(5)[]").unwrap(),
            json!(r#"{"a \"b\"",NULL,"c"}"#)
        );
        assert_eq!(
            value(&json!([[1, 2], [3, 4]]), "integer[]").unwrap(),
            json!(r#"{{"1","2"},{"3","4"}}"#)
        );
    }

    #[test]
    fn refusals_do_not_quote_the_value() {
        for (v, ty) in [
            (json!("secret"), "bigint"),
            (json!("secret"), "boolean"),
            (json!("secret!"), "bytea"),
            (json!(["secret"]), "integer"),
            (json!({"k": "secret"}), "text"),
        ] {
            let e = value(&v, ty).unwrap_err();
            assert!(!e.contains("secret"), "{e}");
        }
    }
}
