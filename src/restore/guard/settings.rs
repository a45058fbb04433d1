//! Which settings a dump may change, and how: pg_dump's own `SET`s at the top of a dump, a
//! function's `SET` clauses, and the search path (only the dump's own schema and pg_catalog).

use serde_json::Value;

use super::lexer::Verdict;
use super::tree::{constant_text, sval};
use super::Ctx;

/// Settings a dump may change, and how.
pub fn setting(body: &Value, ctx: &mut Ctx, top: bool) -> Result<Verdict, String> {
    let name = sval(&body["name"]).unwrap_or("").to_ascii_lowercase();
    let kind = body["kind"].as_i64().unwrap_or(0);
    let values: Vec<String> = body["args"]
        .as_array()
        .into_iter()
        .flatten()
        .map(constant_text)
        .collect();
    let value = values.first().map(|v| v.to_ascii_lowercase()).unwrap_or_default();
    // SET name = value, SET name TO DEFAULT, RESET name.
    if !matches!(kind, 1 | 2 | 5) {
        return Err(format!(
            "SET {name} in a form pg_dump does not write (SET TRANSACTION, RESET ALL, FROM CURRENT)"
        ));
    }
    let never = [
        "role",
        "session_authorization",
        "session_replication_role",
        "allow_system_table_mods",
        "allow_in_place_tablespaces",
        "ignore_system_indexes",
        "zero_damaged_pages",
        "default_transaction_read_only",
        "transaction_read_only",
        "local_preload_libraries",
        "session_preload_libraries",
    ];
    if never.contains(&name.as_str()) {
        return Err(format!("SET {name}"));
    }
    match name.as_str() {
        "lock_timeout" if top => {
            let local = if body["is_local"] == true { "LOCAL " } else { "" };
            return Ok(Verdict::Replace(format!(
                "SET {local}lock_timeout = '{}ms';",
                ctx.scope.lock_timeout_ms
            )));
        }
        "search_path" => {
            if kind != 1 {
                return Err("SET search_path back to the server's default, which may name other schemas".into());
            }
            search_path(&values, ctx, top)?;
        }
        "client_encoding" if !matches!(value.as_str(), "utf8" | "utf-8" | "unicode") => {
            return Err(format!("SET client_encoding = {value}: only UTF8 dumps are read"));
        }
        "standard_conforming_strings" if !matches!(value.as_str(), "on" | "true" | "1") && kind == 1 => {
            return Err("SET standard_conforming_strings = off: strings would be read differently".into());
        }
        "default_tablespace" if !value.is_empty() && top => {
            return Err("SET default_tablespace to a tablespace".into());
        }
        _ if !top => {} // a function's own SET clause
        "statement_timeout"
        | "idle_in_transaction_session_timeout"
        | "transaction_timeout"
        | "client_encoding"
        | "standard_conforming_strings"
        | "check_function_bodies"
        | "xmloption"
        | "client_min_messages"
        | "row_security"
        | "default_tablespace"
        | "default_table_access_method"
        | "default_toast_compression"
        | "default_with_oids"
        | "escape_string_warning" => {}
        _ => return Err(format!("SET {name}: not a setting pg_dump writes")),
    }
    Ok(Verdict::Forward)
}

/// A search_path may hold only the dump's own schema and pg_catalog.
pub fn search_path(values: &[String], ctx: &mut Ctx, top: bool) -> Result<(), String> {
    let entries: Vec<String> = values
        .iter()
        .flat_map(|v| v.split(','))
        .map(|e| e.trim().trim_matches('"').to_string())
        .filter(|e| !e.is_empty())
        .collect();
    for e in &entries {
        if !ctx.scope.refers_to_own(e) && e != "pg_catalog" {
            return Err(format!(
                "a search_path with {e}: only {} and pg_catalog may be searched",
                ctx.own()
            ));
        }
    }
    if top {
        *ctx.own_first = entries.first().is_some_and(|e| e == ctx.own());
    }
    Ok(())
}
