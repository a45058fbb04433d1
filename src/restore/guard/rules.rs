//! Which statements a dump may hold: the kinds pg_dump writes for one schema, each creating or
//! changing only objects of that schema. The parse tree is read as JSON (`pg_query`'s protobuf,
//! serialised), so that one walk ([`super::names`]) finds every name however deep it sits.

use serde_json::Value;

use super::lexer::Verdict;
use super::names;
use super::settings::{search_path, setting};
use super::tree::{constant_text, names_of, qualified_string, sval};
use super::Ctx;

/// Statements that create or change objects, and where their target's name is.
const DDL: &[(&str, Target)] = &[
    ("CreateStmt", Target::Relation("relation")),
    ("CreateSeqStmt", Target::Relation("sequence")),
    ("AlterSeqStmt", Target::Relation("sequence")),
    ("IndexStmt", Target::Relation("relation")),
    ("ViewStmt", Target::Relation("view")),
    ("CreateTableAsStmt", Target::Into),
    ("RefreshMatViewStmt", Target::Relation("relation")),
    ("CreateTrigStmt", Target::Relation("relation")),
    ("RuleStmt", Target::Relation("relation")),
    ("CreatePolicyStmt", Target::Relation("table")),
    ("AlterPolicyStmt", Target::Relation("table")),
    ("CompositeTypeStmt", Target::Relation("typevar")),
    ("AlterTableStmt", Target::Relation("relation")),
    ("CreateStatsStmt", Target::Names("defnames")),
    ("AlterStatsStmt", Target::Names("defnames")),
    ("CreateEnumStmt", Target::Names("type_name")),
    ("AlterEnumStmt", Target::Names("type_name")),
    ("CreateRangeStmt", Target::Names("type_name")),
    ("CreateDomainStmt", Target::Names("domainname")),
    ("AlterDomainStmt", Target::Names("type_name")),
    ("CreateFunctionStmt", Target::Names("funcname")),
    ("AlterFunctionStmt", Target::Function),
    ("CommentStmt", Target::Object),
    ("DropStmt", Target::Objects),
    ("RenameStmt", Target::Renamed),
    ("InsertStmt", Target::Relation("relation")),
];

#[derive(Clone, Copy)]
enum Target {
    /// A RangeVar field.
    Relation(&'static str),
    /// A qualified-name list field.
    Names(&'static str),
    /// `into.rel` (CREATE TABLE / MATERIALIZED VIEW … AS).
    Into,
    /// `func.objname` (ALTER FUNCTION).
    Function,
    /// `object` per `objtype` (COMMENT ON).
    Object,
    /// `objects` per `remove_type` (DROP).
    Objects,
    /// `relation` or `object` per `rename_type` (ALTER … RENAME).
    Renamed,
}

/// The verdict on one parsed statement (`{"Kind": {…}}`), or why it is refused.
pub fn check(stmt: &Value, ctx: &mut Ctx) -> Result<Verdict, String> {
    let Some((kind, body)) = stmt.as_object().and_then(|m| m.iter().next()) else {
        return Err("an empty statement".into());
    };
    match kind.as_str() {
        "TransactionStmt" => Err(
            "transaction control (BEGIN, COMMIT, ROLLBACK, SAVEPOINT, PREPARE TRANSACTION…): the restore is one transaction of the tool's own"
                .into(),
        ),
        "VariableSetStmt" => setting(body, ctx, true),
        "SelectStmt" => select_call(body, ctx),
        "CreateSchemaStmt" => {
            if sval(&body["schemaname"]) != Some(ctx.own()) {
                return Err(format!(
                    "CREATE SCHEMA {}: the dump may only create its own schema, {}",
                    body["schemaname"].as_str().unwrap_or("?"),
                    ctx.own()
                ));
            }
            if !body["authrole"].is_null() || body["schema_elts"].as_array().is_some_and(|a| !a.is_empty()) {
                return Err("CREATE SCHEMA with AUTHORIZATION or with elements, which pg_dump does not write".into());
            }
            // Aimed at a staging schema: the restore has created it already.
            Ok(match ctx.scope.dumped_as {
                Some(_) => Verdict::Blank,
                None => Verdict::Forward,
            })
        }
        "CopyStmt" => {
            let from_stdin = body["is_from"] == true
                && body["is_program"] != true
                && sval(&body["filename"]).is_none_or(str::is_empty)
                && body["query"].is_null();
            if !from_stdin {
                return Err("a COPY that is not COPY … FROM stdin: it would read or write files or programs of the server".into());
            }
            relation_target(&body["relation"], ctx)?;
            names::walk(body, ctx)?;
            Ok(Verdict::CopyIn)
        }
        // Ownership and privileges: the restore owns what it creates, as with pg_dump
        // --no-owner --no-privileges. Left out when they concern the schema's own objects.
        "AlterOwnerStmt" => {
            if body["relation"].is_object() {
                relation_target(&body["relation"], ctx)?;
            } else {
                object_target(&body["object"], body["object_type"].as_i64().unwrap_or(0), ctx)?;
            }
            Ok(Verdict::Blank)
        }
        "GrantStmt" => {
            let objtype = body["objtype"].as_i64().unwrap_or(0);
            for o in body["objects"].as_array().into_iter().flatten() {
                if body["targtype"] == 2 {
                    // … ON ALL TABLES IN SCHEMA s
                    object_target(o, SCHEMA, ctx)?;
                } else {
                    object_target(o, objtype, ctx)?;
                }
            }
            Ok(Verdict::Blank)
        }
        "AlterDefaultPrivilegesStmt" => {
            let schemas: Vec<&Value> = body["options"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|o| o["node"]["DefElem"]["defname"] == "schemas")
                .flat_map(|o| o["node"]["DefElem"]["arg"]["node"]["List"]["items"].as_array().into_iter().flatten())
                .collect();
            if schemas.is_empty() {
                return Err("ALTER DEFAULT PRIVILEGES for every schema".into());
            }
            for s in schemas {
                object_target(s, SCHEMA, ctx)?;
            }
            Ok(Verdict::Blank)
        }
        "AlterTableStmt" if owner_changes_only(body) => {
            relation_target(&body["relation"], ctx)?;
            Ok(Verdict::Blank)
        }
        k => {
            let Some((_, target)) = DDL.iter().find(|(name, _)| *name == k) else {
                return Err(format!("{}: not a statement pg_dump writes for one schema", describe(k)));
            };
            check_target(*target, body, ctx)?;
            if k == "CreateFunctionStmt" {
                names::function_body(body, ctx)?;
            }
            if k == "CreateTrigStmt" {
                let funcname = names_of(&body["funcname"]).ok_or("a trigger whose function cannot be read")?;
                names::function_ref(&funcname, ctx)?;
            }
            if k == "RenameStmt" && body["rename_type"] == SCHEMA {
                return Err("ALTER SCHEMA … RENAME".into());
            }
            names::walk(body, ctx)?;
            Ok(Verdict::Forward)
        }
    }
}

const SCHEMA: i64 = 37;

/// `CreateStmt` → `CREATE TABLE` … for messages.
fn describe(kind: &str) -> String {
    let known = [
        ("DoStmt", "DO"),
        ("CallStmt", "CALL"),
        ("UpdateStmt", "UPDATE"),
        ("DeleteStmt", "DELETE"),
        ("TruncateStmt", "TRUNCATE"),
        ("CreateExtensionStmt", "CREATE EXTENSION"),
        ("AlterObjectSchemaStmt", "ALTER … SET SCHEMA"),
        ("CreateRoleStmt", "CREATE ROLE"),
        ("AlterRoleStmt", "ALTER ROLE"),
        ("AlterRoleSetStmt", "ALTER ROLE … SET"),
        ("AlterDatabaseSetStmt", "ALTER DATABASE … SET"),
        ("AlterSystemStmt", "ALTER SYSTEM"),
        ("LoadStmt", "LOAD"),
        ("ExecuteStmt", "EXECUTE"),
        ("PrepareStmt", "PREPARE"),
        ("LockStmt", "LOCK"),
        ("NotifyStmt", "NOTIFY"),
        ("ListenStmt", "LISTEN"),
        ("ExplainStmt", "EXPLAIN"),
        ("GrantRoleStmt", "GRANT role"),
        ("SecLabelStmt", "SECURITY LABEL"),
        ("CreateEventTrigStmt", "CREATE EVENT TRIGGER"),
        (
            "DefineStmt",
            "CREATE OPERATOR, AGGREGATE, COLLATION, base TYPE or TEXT SEARCH object",
        ),
        ("AlterTypeStmt", "ALTER TYPE … SET"),
        ("CreateOpClassStmt", "CREATE OPERATOR CLASS"),
        ("CreateOpFamilyStmt", "CREATE OPERATOR FAMILY"),
        ("AlterOpFamilyStmt", "ALTER OPERATOR FAMILY"),
        ("CreateConversionStmt", "CREATE CONVERSION"),
        ("CreateCastStmt", "CREATE CAST"),
        ("AlterTsconfigurationStmt", "ALTER TEXT SEARCH CONFIGURATION"),
        ("AlterTsdictionaryStmt", "ALTER TEXT SEARCH DICTIONARY"),
    ];
    known
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, d)| d.to_string())
        .unwrap_or_else(|| kind.trim_end_matches("Stmt").to_string())
}

fn owner_changes_only(body: &Value) -> bool {
    let cmds = body["cmds"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    !cmds.is_empty() && cmds.iter().all(|c| c["node"]["AlterTableCmd"]["subtype"] == 27)
}

fn check_target(target: Target, body: &Value, ctx: &Ctx) -> Result<(), String> {
    match target {
        Target::Relation(field) => relation_target(&body[field], ctx),
        Target::Names(field) => names_target(&body[field], ctx),
        Target::Into => relation_target(&body["into"]["rel"], ctx),
        Target::Function => names_target(&body["func"]["objname"], ctx),
        Target::Object => object_target(&body["object"], body["objtype"].as_i64().unwrap_or(0), ctx),
        Target::Objects => {
            let kind = body["remove_type"].as_i64().unwrap_or(0);
            for o in body["objects"].as_array().into_iter().flatten() {
                object_target(o, kind, ctx)?;
            }
            Ok(())
        }
        Target::Renamed => {
            if body["relation"].is_object() {
                relation_target(&body["relation"], ctx)
            } else {
                object_target(&body["object"], body["rename_type"].as_i64().unwrap_or(0), ctx)
            }
        }
    }
}

fn elsewhere(ctx: &Ctx, schema: &str, name: &str) -> String {
    format!(
        "{schema}.{name} is in another schema: the dump may only create or change objects of {}",
        ctx.own()
    )
}

/// A created or changed relation: in the dump's own schema (named, or by the search_path).
fn relation_target(rv: &Value, ctx: &Ctx) -> Result<(), String> {
    let schema = sval(&rv["schemaname"]).unwrap_or("");
    let name = sval(&rv["relname"]).unwrap_or("?");
    if schema == ctx.own() || (schema.is_empty() && *ctx.own_first) {
        return Ok(());
    }
    if schema.is_empty() {
        return Err(format!(
            "{name} has no schema and the search_path does not start with {}",
            ctx.own()
        ));
    }
    Err(elsewhere(ctx, schema, name))
}

/// A created or changed object named by a qualified-name list.
fn names_target(list: &Value, ctx: &Ctx) -> Result<(), String> {
    let names = names_of(list).ok_or("a name that cannot be read")?;
    qualified_target(&names, 2, ctx)
}

/// `names` ends with the object's name, its schema `from_end` places from the end (if there).
fn qualified_target(names: &[&str], from_end: usize, ctx: &Ctx) -> Result<(), String> {
    let name = names.last().copied().unwrap_or("?");
    match names.len().checked_sub(from_end).map(|i| names[i]) {
        Some(schema) if schema == ctx.own() => Ok(()),
        Some(schema) => Err(elsewhere(ctx, schema, name)),
        None if *ctx.own_first => Ok(()),
        None => Err(format!(
            "{name} has no schema and the search_path does not start with {}",
            ctx.own()
        )),
    }
}

/// Object types whose names are (schema, parent, name): columns, constraints, triggers, policies, rules.
const PARENTED: &[i64] = &[7, 41, 45, 29, 36];
/// Object types that do not live in a schema at all (databases, roles, extensions, languages…).
const GLOBAL: &[i64] = &[1, 6, 10, 12, 15, 16, 17, 18, 22, 23, 28, 31, 32, 33, 34, 39, 43, 44, 51];

/// An object node of COMMENT, DROP, GRANT, ALTER … OWNER, ALTER … RENAME.
fn object_target(node: &Value, objtype: i64, ctx: &Ctx) -> Result<(), String> {
    if GLOBAL.contains(&objtype) {
        return Err("an object outside any schema (a database, role, extension, language…)".into());
    }
    let inner = node.get("node").unwrap_or(node);
    if let Some(s) = inner.get("String") {
        let name = sval(&s["sval"]).unwrap_or("?");
        return if objtype == SCHEMA && name == ctx.own() {
            Ok(())
        } else if objtype == SCHEMA {
            Err(format!(
                "schema {name}: the dump may only touch its own schema, {}",
                ctx.own()
            ))
        } else {
            qualified_target(&[name], 2, ctx)
        };
    }
    if let Some(rv) = inner.get("RangeVar") {
        return relation_target(rv, ctx);
    }
    if let Some(o) = inner.get("ObjectWithArgs") {
        return names_target(&o["objname"], ctx);
    }
    if let Some(t) = inner.get("TypeName") {
        return names_target(&t["names"], ctx);
    }
    if let Some(items) = inner.get("List").and_then(|l| l["items"].as_array()) {
        // COMMENT ON CONSTRAINT c ON DOMAIN d: (TypeName, name).
        if let Some(t) = items.iter().find_map(|i| i["node"].get("TypeName")) {
            return names_target(&t["names"], ctx);
        }
        let names = names_of(&inner["List"]["items"]).ok_or("a name that cannot be read")?;
        let from_end = if PARENTED.contains(&objtype) { 3 } else { 2 };
        return qualified_target(&names, from_end, ctx);
    }
    Err("an object that cannot be read".into())
}

/// The SELECTs pg_dump writes: `pg_catalog.set_config('search_path', …, false)` and
/// `pg_catalog.setval('schema.sequence', n, bool)`.
fn select_call(body: &Value, ctx: &mut Ctx) -> Result<Verdict, String> {
    let bare = [
        "from_clause",
        "values_lists",
        "group_clause",
        "sort_clause",
        "distinct_clause",
        "window_clause",
        "locking_clause",
    ]
    .iter()
    .all(|k| body[*k].as_array().is_none_or(|a| a.is_empty()))
        && [
            "into_clause",
            "where_clause",
            "having_clause",
            "with_clause",
            "larg",
            "rarg",
            "limit_count",
            "limit_offset",
        ]
        .iter()
        .all(|k| body[*k].is_null());
    let targets = body["target_list"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let call = &targets
        .first()
        .map(|t| &t["node"]["ResTarget"]["val"]["node"]["FuncCall"]);
    let refuse = || "a SELECT: pg_dump's only set the search_path or a sequence".to_string();
    let Some(call) = call.filter(|c| c.is_object() && bare && targets.len() == 1) else {
        return Err(refuse());
    };
    let fname = names_of(&call["funcname"]).ok_or_else(refuse)?;
    let args: Vec<&Value> = call["args"].as_array().into_iter().flatten().collect();
    let consts: Vec<Option<&Value>> = args.iter().map(|a| a["node"].get("AConst")).collect();
    if consts.iter().any(Option::is_none) {
        return Err(refuse());
    }
    match fname.as_slice() {
        ["pg_catalog", "set_config"] | ["set_config"] if args.len() == 3 => {
            if constant_text(args[0]) != "search_path" {
                return Err(format!("set_config('{}', …)", constant_text(args[0])));
            }
            search_path(&[constant_text(args[1])], ctx, true)?;
        }
        ["pg_catalog", "setval"] | ["setval"] if (2..=3).contains(&args.len()) => {
            let seq = qualified_string(&constant_text(args[0]));
            let refs: Vec<&str> = seq.iter().map(String::as_str).collect();
            qualified_target(&refs, 2, ctx)?;
        }
        _ => {
            return Err(format!(
                "SELECT {}(…): pg_dump's only set the search_path or a sequence",
                fname.join(".")
            ))
        }
    }
    Ok(Verdict::Forward)
}
