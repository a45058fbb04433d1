//! Every name a statement refers to, wherever it sits in the parse tree: relations only in the
//! dump's own schema or pg_catalog's views; functions, types, operators, collations and operator
//! classes in its own schema, pg_catalog, or owned by an installed extension; no function that
//! reaches outside the schema (files, sessions, settings, dynamic SQL, large objects, other
//! connections); and function bodies (SQL and PL/pgSQL) held to the same rules, with no dynamic SQL.

use serde_json::Value;

use super::settings::setting;
use super::tree::{constant_text, names_of, qualified_string};
use super::Ctx;

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

fn refers(ctx: &Ctx, names: &[&str]) -> Result<(), String> {
    if names.len() < 2 {
        return Ok(());
    }
    let (schema, name) = (names[names.len() - 2], names[names.len() - 1]);
    let own = ctx.scope.schema.as_str();
    if ctx.scope.refers_to_own(schema) || schema == "pg_catalog" {
        return Ok(());
    }
    if ctx
        .scope
        .names
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
                if k == "pktable" && child.is_object() {
                    referenced_table(child, ctx)?;
                    continue;
                }
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

/// A relation referred to: the dump's own (or a name the statement itself defines, such as a
/// CTE's); never the server's catalog (roles, sessions, settings, other schemas' definitions), and
/// never a temporary one (it would hide a table of the same name).
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
        "" if ctx.scope.names.catalog_relations.contains(name) => Err(format!(
            "{name} is the server's catalog: the dump may use only tables of {}",
            ctx.scope.schema
        )),
        "" => Ok(()),
        s if ctx.scope.refers_to_own(s) => Ok(()),
        s => Err(format!(
            "{s}.{name} is in another schema: the dump may use only tables of {}",
            ctx.scope.schema
        )),
    }
}

/// The table a foreign key references: the dump's own, or one of the shared schema (`public`),
/// which django-tenants' tenant apps point at. A key only constrains the dump's rows; it reads
/// nothing of another tenant.
fn referenced_table(rv: &Value, ctx: &Ctx) -> Result<(), String> {
    match rv["schemaname"].as_str().unwrap_or("") {
        "public" => Ok(()),
        _ => relation(rv, ctx),
    }
}

fn call(fc: &Value, ctx: &Ctx) -> Result<(), String> {
    let Some(names) = names_of(&fc["funcname"]) else {
        return Ok(());
    };
    function_ref(&names, ctx)?;
    let name = names.last().copied().unwrap_or("");
    // A string naming a relation of another schema (nextval('mindcare.seq'), …).
    for arg in fc["args"].as_array().into_iter().flatten() {
        if let Some(s) = arg["node"]["AConst"]["val"]["Sval"]["sval"].as_str() {
            let parts = qualified_string(s);
            if parts.len() >= 2 && !ctx.scope.refers_to_own(&parts[0]) && ctx.scope.names.schemas.contains(&parts[0]) {
                return Err(format!("{name}('{s}') names another schema"));
            }
        }
    }
    Ok(())
}

/// A function named anywhere — called, or named as a trigger's, an operator's or a type's
/// function — is the dump's own (created by the dump, its body checked then) or on the
/// allowlist of functions that only compute ([`super::Scope::functions`]). An unqualified name is
/// pg_catalog's when pg_catalog has it, since pg_catalog is searched first.
pub fn function_ref(names: &[&str], ctx: &Ctx) -> Result<(), String> {
    let name = names.last().copied().unwrap_or("");
    let own = ctx.scope.schema.as_str();
    let schema = match names.len() {
        0 | 1 if ctx.scope.names.catalog_functions.contains(name) => "pg_catalog",
        0 | 1 if ctx.scope.names.shared_functions.contains(name) => {
            return Err(format!(
                "{name}() unqualified: called with the application's search path it would be the shared schema's or an extension's {name}, which a dump may not call"
            ))
        }
        0 | 1 => return Ok(()),
        n => names[n - 2],
    };
    if ctx.scope.refers_to_own(schema)
        || ctx
            .scope
            .names
            .functions
            .contains(&(schema.to_string(), name.to_string()))
    {
        return Ok(());
    }
    Err(format!(
        "{schema}.{name}(): not a function a dump may call (only {own}'s own functions, and those of pg_catalog and extensions that only compute)"
    ))
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

/// Options that name functions (a range's `SUBTYPE_DIFF`, `CANONICAL`…): held to the allowlist.
const FUNCTION_OPTIONS: &[&str] = &[
    "function",
    "procedure",
    "restrict",
    "join",
    "sfunc",
    "finalfunc",
    "combinefunc",
    "serialfunc",
    "deserialfunc",
    "msfunc",
    "minvfunc",
    "mfinalfunc",
    "input",
    "output",
    "receive",
    "send",
    "typmod_in",
    "typmod_out",
    "analyze",
    "subscript",
    "canonical",
    "subtype_diff",
    "handler",
    "validator",
    "inline",
];

/// Options that hold qualified names: an identity's `SEQUENCE NAME`, a sequence's `OWNED BY`, and
/// every option that names a function.
fn def_elem(de: &Value, ctx: &Ctx) -> Result<(), String> {
    let arg = &de["arg"]["node"]["List"]["items"];
    match de["defname"].as_str() {
        Some("sequence_name") => names_of(arg).map_or(Ok(()), |n| own_name(ctx, &n, 2)),
        Some("owned_by") => match names_of(arg) {
            Some(n) if n.len() >= 3 => own_name(ctx, &n, 3),
            _ => Ok(()),
        },
        Some("security") if de["arg"]["node"]["Boolean"]["boolval"] == true => {
            Err("a SECURITY DEFINER function: it would run with the rights of whoever restored it".into())
        }
        Some(option) if FUNCTION_OPTIONS.contains(&option.to_ascii_lowercase().as_str()) => {
            let inner = &de["arg"]["node"];
            let names = names_of(&inner["TypeName"]["names"])
                .or_else(|| names_of(&inner["List"]["items"]))
                .or_else(|| names_of(&inner["ObjectWithArgs"]["objname"]))
                .or_else(|| inner["String"]["sval"].as_str().map(|s| vec![s]))
                .ok_or_else(|| format!("an option {option} that names a function this check cannot read"))?;
            function_ref(&names, ctx)
        }
        _ => Ok(()),
    }
}

fn own_name(ctx: &Ctx, names: &[&str], from_end: usize) -> Result<(), String> {
    match names.len().checked_sub(from_end).map(|i| names[i]) {
        Some(s) if !ctx.scope.refers_to_own(s) => Err(format!(
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
    let source = option("as")
        .and_then(|a| a["node"]["List"]["items"].as_array())
        .and_then(|items| items.first())
        .map(constant_text)
        .unwrap_or_default();
    bounded(&source)?;
    match language.as_str() {
        "sql" => {
            if !body["sql_body"].is_null() {
                return Ok(()); // BEGIN ATOMIC … END: already part of the statement's tree
            }
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

/// A function body is parsed again: it is held to the same bound as a statement.
fn bounded(source: &str) -> Result<(), String> {
    let tokens = super::bound::tokens(source.as_bytes());
    if tokens > super::MAX_TOKENS {
        return Err(format!(
            "a function body of {tokens} tokens, more than the {} a statement may have",
            super::MAX_TOKENS
        ));
    }
    Ok(())
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
