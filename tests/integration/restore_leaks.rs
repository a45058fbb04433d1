//! Issue #14, items 2 and 5 for restore and verify: a failing load never prints a patient's row,
//! and schema names that broke the scripts around the dump (a `$tb$` inside, a multi-byte
//! character across byte 40) restore and verify like any other.

use crate::support::*;

#[test]
fn restore_errors_name_the_table_and_line_but_never_row_data() {
    let db = TestDb::new();
    let b = db.backup(&["--tenant", "bienestar", "--compress", "none"]);
    let key = b["key"].as_str().unwrap();
    let original = object_text(&db, key);
    let live = db.fingerprint("bienestar");
    // A patient row of the dump: id, uuid, document_id, first_name, last_name, …
    let copy = original.find("COPY bienestar.appointments_patient ").unwrap();
    let row_start = copy + original[copy..].find('\n').unwrap() + 1;
    let row_end = row_start + original[row_start..].find('\n').unwrap();
    let row = &original[row_start..row_end];
    let fields: Vec<&str> = row.split('\t').collect();
    let (document, last_name) = (fields[2], fields[4]);
    let row_line = line_of(&original, row);
    let cases = [
        // A value the column's type rejects: birth_date (column 8).
        ("bad value", {
            let mut f = fields.clone();
            f[7] = "SECRET-not-a-date";
            f.join("\t")
        }),
        // A NOT NULL column without a value: the server's DETAIL would print the whole row.
        ("null", {
            let mut f = fields.clone();
            f[3] = "\\N";
            f.join("\t")
        }),
    ];
    for (what, bad_row) in cases {
        let dump = format!("{}{bad_row}{}", &original[..row_start], &original[row_end..]);
        tamper(&db, key, dump.as_bytes());
        for args in [
            vec!["restore", "--tenant", "bienestar", "--file", key, "--yes"],
            vec!["verify", "--tenant", "bienestar"],
        ] {
            let out = db.cmd().args(&args).output().unwrap();
            let stderr = text(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{what} {}: {stderr}", args[0]);
            for private in [document, last_name, "SECRET"] {
                assert!(
                    !stderr.contains(private),
                    "{what} {}: {private:?} leaked:\n{stderr}",
                    args[0]
                );
            }
            assert!(
                stderr.contains("appointments_patient") && stderr.contains(&format!("line {row_line}")),
                "{what} {}: the table and the line are named:\n{stderr}",
                args[0]
            );
            assert_eq!(db.fingerprint("bienestar"), live);
        }
    }
}

#[test]
fn awkward_schema_names_are_refused_cleanly_and_the_longest_names_work() {
    // Names django-tenants would reject (a `$tb$` inside, byte 40 inside a multi-byte character)
    // are refused before anything runs: exit 2, never a panic.
    let long = format!("{}ñb", "a".repeat(39)); // byte 40 is inside the ñ
    for name in ["mind$tb$care", long.as_str()] {
        let db = TestDb::new();
        db.sql(&format!(
            "ALTER SCHEMA mindcare RENAME TO {}; UPDATE public.tenants_clinic SET schema_name = '{name}' WHERE schema_name = 'mindcare'",
            quote(name)
        ));
        for args in [
            vec!["backup", "--tenant", name],
            vec!["verify", "--tenant", name],
            vec!["restore", "--tenant", name, "--latest", "--yes"],
        ] {
            let out = db.cmd().args(&args).output().unwrap();
            assert_fails(&out, 2, "django-tenants");
        }
    }
    // The longest name django-tenants accepts: every derived name (the pre-restore copy, the hold
    // name) is cut to PostgreSQL's 63 bytes, and restores round-trip.
    let name = "m".repeat(63);
    let name = name.as_str();
    let db = TestDb::new();
    db.sql(&format!(
        "ALTER SCHEMA mindcare RENAME TO {}; UPDATE public.tenants_clinic SET schema_name = '{name}' WHERE schema_name = 'mindcare'",
        quote(name)
    ));
    let before = db.fingerprint(name);
    for format in ["sql", "custom"] {
        db.backup(&["--tenant", name, "--format", format]);
        for args in [
            vec!["verify", "--tenant", name],
            vec!["restore", "--tenant", name, "--latest", "--yes", "--into", "copy_of_it"],
            vec!["restore", "--tenant", name, "--latest", "--yes"],
        ] {
            let out = db.cmd().args(&args).output().unwrap();
            assert!(out.status.success(), "{format} {}: {}", args[0], text(&out.stderr));
        }
        db.sql("DROP SCHEMA copy_of_it CASCADE");
        let data = |f: Vec<(String, String)>| {
            f.into_iter()
                .filter(|(t, _)| t != "backups_backuprecord")
                .collect::<Vec<_>>()
        };
        assert_eq!(data(db.fingerprint(name)), data(before.clone()), "{format}");
    }
}
