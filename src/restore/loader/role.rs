//! The loader role and the tool's connection: what they are and can do, the bootstrap, the
//! one-time SQL when the tool cannot make things right itself, and `doctor`'s check.

use anyhow::Result;
use tokio_postgres::Client;

use super::{bootstrap_lock, loader_role, reach_outside, Grants};
use crate::pg::connect::pg_context;
use crate::pg::sql::{literal, quote_ident};

/// What the tool's connection is and can do about the loader role, read from the catalog.
#[derive(Debug, Clone)]
pub struct Readiness {
    /// The loader role of this database ([`loader_role`]).
    pub role_name: String,
    pub admin: String,
    pub admin_superuser: bool,
    pub admin_createrole: bool,
    /// Whether the admin has the loader's privileges (membership with INHERIT).
    pub admin_member: bool,
    /// PG16+: whether the admin holds ADMIN OPTION on the loader (needed to set its password).
    pub admin_has_admin_option: bool,
    pub server_major: u32,
    /// `None`: the role does not exist.
    pub role: Option<RoleFacts>,
}

#[derive(Debug, Clone)]
pub struct RoleFacts {
    /// Attributes that must be off (SUPERUSER, CREATEROLE, …), by name, when on.
    pub wrong_attributes: Vec<&'static str>,
    /// Roles the loader is a member of (it must be none).
    pub member_of: Vec<String>,
}

impl Readiness {
    pub async fn read(admin: &Client) -> Result<Readiness> {
        let row = admin
            .query_one(
                "SELECT current_user::text, r.rolsuper, r.rolcreaterole, \
                        current_setting('server_version_num')::int / 10000, current_database()::text \
                 FROM pg_roles r WHERE r.rolname = current_user",
                &[],
            )
            .await
            .map_err(pg_context("reading the tool's role"))?;
        let server_major: i32 = row.get(3);
        let database: String = row.get(4);
        let mut readiness = Readiness {
            role_name: loader_role(&database),
            admin: row.get(0),
            admin_superuser: row.get(1),
            admin_createrole: row.get(2),
            admin_member: false,
            admin_has_admin_option: false,
            server_major: server_major as u32,
            role: None,
        };
        let role = admin
            .query_opt(
                "SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls, rolinherit, \
                        pg_has_role(current_user, oid, 'USAGE'), \
                        pg_has_role(current_user, oid, 'MEMBER WITH ADMIN OPTION'), \
                        ARRAY(SELECT m.roleid::regrole::text FROM pg_auth_members m WHERE m.member = r.oid ORDER BY 1) \
                 FROM pg_roles r WHERE rolname = $1",
                &[&readiness.role_name],
            )
            .await
            .map_err(pg_context("reading the loader role"))?;
        if let Some(r) = role {
            let mut wrong = Vec::new();
            for (i, name) in [
                "SUPERUSER",
                "CREATEROLE",
                "CREATEDB",
                "REPLICATION",
                "BYPASSRLS",
                "INHERIT",
            ]
            .into_iter()
            .enumerate()
            {
                if r.get::<_, bool>(i) {
                    wrong.push(name);
                }
            }
            readiness.admin_member = r.get(6);
            readiness.admin_has_admin_option = r.get(7);
            readiness.role = Some(RoleFacts {
                wrong_attributes: wrong,
                member_of: r.get(8),
            });
        }
        Ok(readiness)
    }

    /// Whether the admin may set another role's password: superuser, or CREATEROLE (and, from
    /// PostgreSQL 16, ADMIN OPTION on that role).
    fn can_manage(&self) -> bool {
        self.admin_superuser
            || self.admin_createrole && (self.server_major < 16 || self.role.is_none() || self.admin_has_admin_option)
    }

    /// What is wrong, one phrase each; empty when a restore can use the loader.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let role_name = &self.role_name;
        match &self.role {
            None => out.push(format!("the role {role_name} does not exist")),
            Some(r) => {
                if !r.wrong_attributes.is_empty() {
                    out.push(format!(
                        "{role_name} has {} (it must have none of them)",
                        r.wrong_attributes.join(", ")
                    ));
                }
                if !r.member_of.is_empty() {
                    out.push(format!(
                        "{role_name} is a member of {} (it must be a member of no role)",
                        r.member_of.join(", ")
                    ));
                }
            }
        }
        if !self.can_manage() {
            out.push(format!(
                "{} cannot set {role_name}'s password (it needs CREATEROLE{})",
                self.admin,
                if self.server_major >= 16 {
                    " and ADMIN OPTION on the role"
                } else {
                    ""
                }
            ));
        }
        if self.role.is_some() && !self.admin_superuser && !self.admin_member {
            out.push(format!(
                "{} is not a member of {role_name} (it must be, to create the staging schema for it and take the restored objects back)",
                self.admin
            ));
        }
        out
    }

    /// Whether the tool can create the role itself, on first use.
    pub(super) fn can_bootstrap(&self) -> bool {
        self.role.is_none() && (self.admin_superuser || self.admin_createrole)
    }

    /// The one-time SQL for a superuser (or the provider's console) that makes the setup right.
    pub fn one_time_sql(&self) -> String {
        let admin = quote_ident(&self.admin);
        let role = quote_ident(&self.role_name);
        let mut sql = Vec::new();
        match &self.role {
            None => sql.push(format!("CREATE ROLE {role} NOLOGIN NOINHERIT;")),
            Some(r) => {
                if !r.wrong_attributes.is_empty() {
                    sql.push(format!(
                        "ALTER ROLE {role} NOLOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB NOREPLICATION NOBYPASSRLS NOINHERIT;"
                    ));
                }
                for parent in &r.member_of {
                    sql.push(format!("REVOKE {} FROM {role};", quote_ident(parent)));
                }
            }
        }
        if !self.admin_superuser {
            if !self.admin_createrole {
                sql.push(format!("ALTER ROLE {admin} CREATEROLE;"));
            }
            if !self.admin_member || self.server_major >= 16 && !self.admin_has_admin_option {
                sql.push(if self.server_major >= 16 {
                    format!("GRANT {role} TO {admin} WITH ADMIN TRUE, INHERIT TRUE;")
                } else {
                    format!("GRANT {role} TO {admin};")
                });
            }
        }
        sql.join("\n")
    }
}

/// `doctor`'s check: whether restores into this database can load as the loader role (or the
/// first one will create it), and the one-time SQL when not. `tenant_schemas` are the live
/// schemas whose owners the restored objects go to.
pub async fn doctor(admin: &Client, tenant_schemas: &[String]) -> (bool, String) {
    let ready = match Readiness::read(admin).await {
        Ok(r) => r,
        Err(e) => return (false, format!("{e:#}")),
    };
    let role = &ready.role_name;
    let mut problems = if ready.can_bootstrap() {
        Vec::new()
    } else {
        ready.problems()
    };
    let owners = admin
        .query(
            "SELECT DISTINCT nspowner::regrole::text FROM pg_namespace \
             WHERE nspname = ANY($1) AND NOT pg_has_role(current_user, nspowner, 'USAGE') ORDER BY 1",
            &[&tenant_schemas],
        )
        .await;
    match owners {
        Ok(rows) if !rows.is_empty() => problems.push(format!(
            "{} cannot give restored objects to {} (the owner of tenant schemas; it must be a member of that role)",
            ready.admin,
            rows.iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<_>>()
                .join(", ")
        )),
        Ok(_) => {}
        Err(e) => problems.push(format!("cannot read the tenant schemas' owners: {e}")),
    }
    if ready.role.is_some() && problems.is_empty() {
        match reach_outside(admin, role, "", &Grants::default()).await {
            Ok(reach) if !reach.is_empty() => problems.push(format!(
                "{role} could reach beyond a staging schema: {} (revoke those privileges from PUBLIC or from {role})",
                reach.join("; ")
            )),
            Ok(_) => {}
            Err(e) => problems.push(format!("{e:#}")),
        }
    }
    if !problems.is_empty() {
        let sql = ready.one_time_sql();
        let fix = if sql.is_empty() {
            String::new()
        } else {
            format!(
                "; run this once as a superuser (on Supabase, Neon or Render: in the provider's SQL console as the database owner):\n{sql}"
            )
        };
        return (false, format!("{}{fix}", problems.join("; ")));
    }
    if ready.role.is_none() {
        return (
            true,
            format!(
                "{role} does not exist yet: the first restore creates it ({} may create roles); restores load as it",
                ready.admin
            ),
        );
    }
    (
        true,
        format!(
            "restores load as {role} (no attributes, a member of no role, reaching nothing outside its staging schema); {} sets its login per restore",
            ready.admin
        ),
    )
}

pub(super) async fn bootstrap(admin: &Client, ready: &Readiness) -> Result<()> {
    let role = quote_ident(&ready.role_name);
    let key = bootstrap_lock();
    let tx = format!(
        "BEGIN; SELECT pg_advisory_xact_lock({key}); \
         DO $do$ BEGIN \
           IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {name}) THEN \
             CREATE ROLE {role} NOLOGIN NOINHERIT; \
           END IF; \
         END $do$; {grant} COMMIT;",
        name = literal(&ready.role_name),
        // A superuser has every role's privileges already; anyone else takes the loader's (on
        // PostgreSQL 16, the creator holds ADMIN OPTION on it and may grant it to itself).
        grant = if ready.admin_superuser {
            String::new()
        } else {
            format!("GRANT {role} TO {};", quote_ident(&ready.admin))
        },
    );
    if let Err(e) = admin.batch_execute(&tx).await {
        let _ = admin.batch_execute("ROLLBACK").await;
        return Err(pg_context(format!("creating the role {}", ready.role_name))(e));
    }
    tracing::info!(
        "created the role {} (NOLOGIN NOINHERIT), which restores into this database load as",
        ready.role_name
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(superuser: bool, createrole: bool, member: bool, role: bool, major: u32) -> Readiness {
        Readiness {
            role_name: loader_role("app"),
            admin: "app_owner".into(),
            admin_superuser: superuser,
            admin_createrole: createrole,
            admin_member: member,
            admin_has_admin_option: false,
            server_major: major,
            role: role.then(|| RoleFacts {
                wrong_attributes: vec![],
                member_of: vec![],
            }),
        }
    }

    #[test]
    fn a_role_per_database_named_plainly_or_hashed() {
        assert_eq!(loader_role("app"), "tenant_backup_loader_app");
        assert_eq!(loader_role("t123_4"), "tenant_backup_loader_t123_4");
        // Needs quoting, or too long for a role name: a stable hash instead.
        for name in ["My App", "a\"b", &"x".repeat(43)] {
            let role = loader_role(name);
            assert!(role.len() <= 63 && role.starts_with("tenant_backup_loader_"), "{role}");
            assert_eq!(role, loader_role(name));
        }
        assert_ne!(loader_role("My App"), loader_role("My App2"));
    }

    #[test]
    fn the_one_time_sql_asks_for_what_is_missing_only() {
        // An owner without CREATEROLE and no role yet (the managed case).
        let r = ready(false, false, false, false, 15);
        assert!(!r.can_bootstrap());
        assert_eq!(
            r.one_time_sql(),
            "CREATE ROLE \"tenant_backup_loader_app\" NOLOGIN NOINHERIT;\n\
             ALTER ROLE \"app_owner\" CREATEROLE;\n\
             GRANT \"tenant_backup_loader_app\" TO \"app_owner\";"
        );
        // With CREATEROLE the tool creates the role itself.
        assert!(ready(false, true, false, false, 15).can_bootstrap());
        assert!(ready(true, false, false, false, 15).can_bootstrap());
        // The role exists, the owner has CREATEROLE but is no member: only the grant.
        let r = ready(false, true, false, true, 15);
        assert_eq!(r.one_time_sql(), "GRANT \"tenant_backup_loader_app\" TO \"app_owner\";");
        assert_eq!(r.problems().len(), 1, "{:?}", r.problems());
        // PostgreSQL 16: ADMIN OPTION too, even for a member.
        let r = ready(false, true, true, true, 16);
        assert!(r.one_time_sql().contains("WITH ADMIN TRUE, INHERIT TRUE"));
        assert!(!r.problems().is_empty());
        // A superuser needs nothing once the role is right.
        let r = ready(true, false, false, true, 15);
        assert!(r.problems().is_empty());
        assert_eq!(r.one_time_sql(), "");
    }

    #[test]
    fn a_role_with_privileges_is_refused_with_the_fix() {
        let mut r = ready(true, false, false, true, 15);
        r.role = Some(RoleFacts {
            wrong_attributes: vec!["SUPERUSER", "INHERIT"],
            member_of: vec!["app_owner".into()],
        });
        let problems = r.problems().join("; ");
        assert!(problems.contains("has SUPERUSER, INHERIT"), "{problems}");
        assert!(problems.contains("is a member of app_owner"), "{problems}");
        let sql = r.one_time_sql();
        assert!(sql.contains("NOSUPERUSER") && sql.contains("NOINHERIT"), "{sql}");
        assert!(
            sql.contains("REVOKE \"app_owner\" FROM \"tenant_backup_loader_app\";"),
            "{sql}"
        );
    }
}
