//! Every name a statement refers to, wherever it sits in the parse tree: relations only in the
//! dump's own schema or pg_catalog's views; functions, types, operators, collations and operator
//! classes in its own schema, pg_catalog, or owned by an installed extension; no function that
//! reaches outside the schema (files, sessions, settings, dynamic SQL, large objects, other
//! connections); and function bodies (SQL and PL/pgSQL) held to the same rules, with no dynamic SQL.

use serde_json::Value;

use super::rules::{setting, Ctx};

/// Keys whose value is a qualified name (`[schema, name]`), as opposed to column lists.
const QUALIFIED: &[&str] = &[
    "funcname",
    "names",
    "name",
    "opclass",
    "collation",
    "collname",
    "objname",
    "defnames",
    "type_name",
    "domainname",
    "opclassname",
    "opfamilyname",
    "conversion_name",
    "func_name",
    "cfgname",
    "dictname",
];

/// Statements that may sit inside another (a view's query, a rule's actions, a function body…).
const NESTED: &[&str] = &[
    "SelectStmt",
    "InsertStmt",
    "UpdateStmt",
    "DeleteStmt",
    "MergeStmt",
    "ReturnStmt",
    "PlassignStmt",
    "CallStmt",
    // `ALTER TABLE … REPLICA IDENTITY USING INDEX i`, as pg_dump writes it: names an index of the
    // same table.
    "ReplicaIdentityStmt",
];

/// Functions whose names say they reach outside the schema: files, server and sessions, settings,
/// other connections, large objects, queries given as text.
const DENIED_PREFIXES: &[&str] = &[
    "pg_read_",
    "pg_ls_",
    "pg_stat_file",
    "pg_file_",
    "lo_",
    "dblink",
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_promote",
    "pg_switch_wal",
    "pg_create_",
    "pg_drop_replication_slot",
    "pg_copy_",
    "pg_replication_",
    "pg_logical_",
    "pg_backup_",
    "pg_start_backup",
    "pg_stop_backup",
    "pg_wal_replay_",
    "pg_log_backend_memory_contexts",
    "pg_notify",
    "pg_advisory",
    "pg_try_advisory",
    "pg_stat_reset",
    "pg_stat_statements_reset",
    "binary_upgrade_",
    "pg_import_system_collations",
    "pg_export_snapshot",
    "pg_prewarm",
    "brin_summarize",
    "brin_desummarize",
    "gin_clean_pending_list",
    "pg_truncate_visibility_map",
    "query_to_xml",
    "cursor_to_xml",
    "table_to_xml",
    "schema_to_xml",
    "database_to_xml",
    "ts_stat",
    "ts_rewrite",
    "set_config",
];

/// Types whose literals name objects (`'s.t'::regclass`).
const REG_TYPES: &[&str] = &[
    "regclass",
    "regproc",
    "regprocedure",
    "regoper",
    "regoperator",
    "regtype",
    "regnamespace",
    "regconfig",
    "regdictionary",
    "regcollation",
];

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

fn refers(ctx: &Ctx, names: &[&str]) -> Result<(), String> {
    if names.len() < 2 {
        return Ok(());
    }
    let (schema, name) = (names[names.len() - 2], names[names.len() - 1]);
    let own = ctx.scope.schema.as_str();
    if schema == own || schema == "pg_catalog" {
        return Ok(());
    }
    if ctx
        .scope
        .extension_members
        .contains(&(schema.to_string(), name.to_string()))
    {
        return Ok(());
    }
    Err(format!(
        "{schema}.{name} is in another schema: the dump may refer only to {own}, pg_catalog and what extensions provide"
    ))
}

/// Walks every node of a statement.
pub fn walk(v: &Value, ctx: &mut Ctx) -> Result<(), String> {
    match v {
        Value::Object(map) => {
            if map.contains_key("relname") && map.contains_key("schemaname") {
                relation(v, ctx)?;
            }
            for (k, child) in map {
                if QUALIFIED.contains(&k.as_str()) {
                    if let Some(names) = names_of(child) {
                        refers(ctx, &names)?;
                    }
                }
                match k.as_str() {
                    "FuncCall" => call(child, ctx)?,
                    "TypeCast" => cast(child, ctx)?,
                    "DefElem" => def_elem(child, ctx)?,
                    "VariableSetStmt" => {
                        setting(child, ctx, false)?;
                    }
                    "TransactionStmt" => return Err("transaction control inside a statement".into()),
                    k if k.ends_with("Stmt") && !NESTED.contains(&k) => {
                        return Err(format!("a {} inside another statement", k.trim_end_matches("Stmt")));
                    }
                    _ => {}
                }
                walk(child, ctx)?;
            }
            Ok(())
        }
        Value::Array(items) => items.iter().try_for_each(|i| walk(i, ctx)),
        _ => Ok(()),
    }
}

/// A relation referred to: the dump's own, or pg_catalog's and information_schema's views; never
/// a temporary one (it would hide a pg_catalog table of the same name).
fn relation(rv: &Value, ctx: &Ctx) -> Result<(), String> {
    let schema = rv["schemaname"].as_str().unwrap_or("");
    let name = rv["relname"].as_str().unwrap_or("?");
    if rv["relpersistence"] == "t" {
        return Err(format!("a temporary table ({name})"));
    }
    if rv["catalogname"].as_str().is_some_and(|c| !c.is_empty()) {
        return Err(format!("{name} in another database"));
    }
    match schema {
        "" | "pg_catalog" | "information_schema" => Ok(()),
        s if s == ctx.scope.schema => Ok(()),
        s => Err(format!(
            "{s}.{name} is in another schema: the dump may use only tables of {}",
            ctx.scope.schema
        )),
    }
}

fn call(fc: &Value, ctx: &Ctx) -> Result<(), String> {
    let Some(names) = names_of(&fc["funcname"]) else {
        return Ok(());
    };
    let own_function = names.len() >= 2 && names[names.len() - 2] == ctx.scope.schema;
    let name = names.last().copied().unwrap_or("").to_ascii_lowercase();
    if !own_function && DENIED_PREFIXES.iter().any(|p| name.starts_with(p)) {
        return Err(format!("a call of {name}(), which reaches outside the schema"));
    }
    // A string naming a relation of another schema (nextval('mindcare.seq'), …).
    for arg in fc["args"].as_array().into_iter().flatten() {
        if let Some(s) = arg["node"]["AConst"]["val"]["Sval"]["sval"].as_str() {
            let parts = qualified_string(s);
            if parts.len() >= 2 && ctx.scope.other_schemas.contains(&parts[0]) {
                return Err(format!("{name}('{s}') names another schema"));
            }
        }
    }
    Ok(())
}

/// `'s.t'::regclass`: the named object must be the schema's own (or pg_catalog's).
fn cast(tc: &Value, ctx: &Ctx) -> Result<(), String> {
    let Some(ty) = names_of(&tc["type_name"]["names"]) else {
        return Ok(());
    };
    let ty = ty.last().copied().unwrap_or("");
    if !REG_TYPES.contains(&ty) {
        return Ok(());
    }
    if let Some(s) = tc["arg"]["node"]["AConst"]["val"]["Sval"]["sval"].as_str() {
        let parts = qualified_string(s);
        let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
        if ty == "regnamespace" {
            return refers(ctx, &[&parts[0], "x"]).map_err(|_| format!("'{s}'::regnamespace names another schema"));
        }
        refers(ctx, &refs)?;
    }
    Ok(())
}

/// Options that hold qualified names: an identity's `SEQUENCE NAME`, a sequence's `OWNED BY`.
fn def_elem(de: &Value, ctx: &Ctx) -> Result<(), String> {
    let arg = &de["arg"]["node"]["List"]["items"];
    match de["defname"].as_str() {
        Some("sequence_name") => names_of(arg).map_or(Ok(()), |n| own_name(ctx, &n, 2)),
        Some("owned_by") => match names_of(arg) {
            Some(n) if n.len() >= 3 => own_name(ctx, &n, 3),
            _ => Ok(()),
        },
        _ => Ok(()),
    }
}

fn own_name(ctx: &Ctx, names: &[&str], from_end: usize) -> Result<(), String> {
    match names.len().checked_sub(from_end).map(|i| names[i]) {
        Some(s) if s != ctx.scope.schema => Err(format!(
            "{} is in another schema than {}",
            names.join("."),
            ctx.scope.schema
        )),
        _ => Ok(()),
    }
}

/// A function's body: SQL and PL/pgSQL are parsed and held to the same rules; PL/pgSQL may not
/// run dynamic SQL (`EXECUTE`), which cannot be checked; other languages are refused.
pub fn function_body(body: &Value, ctx: &mut Ctx) -> Result<(), String> {
    let options: Vec<&Value> = body["options"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| &o["node"]["DefElem"])
        .collect();
    let option = |name: &str| options.iter().find(|o| o["defname"] == name).map(|o| &o["arg"]);
    let language = option("language")
        .map(constant_text)
        .unwrap_or_else(|| "sql".into())
        .to_ascii_lowercase();
    match language.as_str() {
        "sql" => {
            if !body["sql_body"].is_null() {
                return Ok(()); // BEGIN ATOMIC … END: already part of the statement's tree
            }
            let source = option("as")
                .and_then(|a| a["node"]["List"]["items"].as_array())
                .and_then(|items| items.first())
                .map(constant_text)
                .unwrap_or_default();
            let parsed =
                pg_query::parse(&source, 0).map_err(|e| format!("a SQL function body that cannot be parsed ({e})"))?;
            for raw in &parsed.protobuf.stmts {
                if let Some(node) = raw.stmt.as_ref().and_then(|s| s.node.as_ref()) {
                    body_statement(node, ctx)?;
                }
            }
            Ok(())
        }
        "plpgsql" => {
            let tree = plpgsql_tree(ctx.text).map_err(|e| format!("a PL/pgSQL body that cannot be parsed ({e})"))?;
            plpgsql(&tree, ctx)
        }
        other => Err(format!(
            "a function in language {other}: only sql and plpgsql bodies can be checked"
        )),
    }
}

/// A statement inside a function body: data, not definitions.
fn body_statement(node: &pg_query::NodeEnum, ctx: &mut Ctx) -> Result<(), String> {
    let json = serde_json::to_value(node).map_err(|e| e.to_string())?;
    let kind = json
        .as_object()
        .and_then(|m| m.keys().next().cloned())
        .unwrap_or_default();
    if !NESTED.contains(&kind.as_str()) {
        return Err(format!("a {} in a function body", kind.trim_end_matches("Stmt")));
    }
    walk(&json, ctx)
}

fn plpgsql(v: &Value, ctx: &mut Ctx) -> Result<(), String> {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                match k.as_str() {
                    "PLpgSQL_stmt_dynexecute" | "PLpgSQL_stmt_dynfors" => {
                        return Err(
                            "dynamic SQL (EXECUTE) in a PL/pgSQL function: what it runs cannot be checked".into(),
                        )
                    }
                    "dynquery" if !child.is_null() => {
                        return Err(
                            "dynamic SQL (… EXECUTE) in a PL/pgSQL function: what it runs cannot be checked".into(),
                        )
                    }
                    "PLpgSQL_expr" => {
                        let query = child["query"].as_str().unwrap_or("");
                        let mode = child["parseMode"].as_i64().unwrap_or(0) as i32;
                        let parsed = pg_query::parse(query, mode)
                            .map_err(|e| format!("a PL/pgSQL statement that cannot be parsed ({e})"))?;
                        for raw in &parsed.protobuf.stmts {
                            if let Some(node) = raw.stmt.as_ref().and_then(|s| s.node.as_ref()) {
                                body_statement(node, ctx)?;
                            }
                        }
                    }
                    "PLpgSQL_type" => {
                        let ty = child["typname"].as_str().unwrap_or("");
                        let parts = qualified_string(ty.split('%').next().unwrap_or(""));
                        let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
                        refers(ctx, &refs)?;
                    }
                    _ => plpgsql(child, ctx)?,
                }
            }
            Ok(())
        }
        Value::Array(items) => items.iter().try_for_each(|i| plpgsql(i, ctx)),
        _ => Ok(()),
    }
}

/// libpg_query's PL/pgSQL tree, as JSON. libpg_query is called directly rather than through
/// `pg_query::parse_plpgsql` because it writes broken JSON for the "promise" variables every trigger
/// function has (`TG_OP`, `NEW`…: an array element `{}}`), which is mended here.
fn plpgsql_tree(sql: &str) -> Result<Value, String> {
    use std::ffi::{c_char, c_int, CStr, CString};
    #[repr(C)]
    struct PgQueryError {
        message: *mut c_char,
        funcname: *mut c_char,
        filename: *mut c_char,
        lineno: c_int,
        cursorpos: c_int,
        context: *mut c_char,
    }
    #[repr(C)]
    struct PgQueryPlpgsqlParseResult {
        plpgsql_funcs: *mut c_char,
        error: *mut PgQueryError,
    }
    extern "C" {
        fn pg_query_parse_plpgsql(input: *const c_char) -> PgQueryPlpgsqlParseResult;
        fn pg_query_free_plpgsql_parse_result(result: PgQueryPlpgsqlParseResult);
    }
    let input = CString::new(sql).map_err(|_| "a NUL byte".to_string())?;
    // SAFETY: the declarations are libpg_query's own (pg_query.h), which the pg_query crate links
    // in; the result is read before it is freed, once.
    let text = unsafe {
        let result = pg_query_parse_plpgsql(input.as_ptr());
        let text = if !result.error.is_null() {
            Err(CStr::from_ptr((*result.error).message).to_string_lossy().into_owned())
        } else {
            Ok(CStr::from_ptr(result.plpgsql_funcs).to_string_lossy().into_owned())
        };
        pg_query_free_plpgsql_parse_result(result);
        text
    }?;
    // An array element written as `{}}` (legitimately an element is followed by `,` or `]`).
    let mended = text.replace(",{}}", ",{}").replace("[{}}", "[{}");
    serde_json::from_str(&mended).map_err(|e| e.to_string())
}
