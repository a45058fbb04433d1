//! The stub against what the real server answers (see the files named at the top of
//! supabase_stub.rs). Named `storage_stub_…` so `cargo test --test integration storage` runs them.

use serde_json::{json, Value};

use super::{BucketSettings, Fault, SupabaseStub};

const SERVICE: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJyb2xlIjoic2VydmljZV9yb2xlIn0.c2ln";

fn stub() -> SupabaseStub {
    SupabaseStub::start(SERVICE, "backups", 1000)
}

fn put(s: &SupabaseStub, key: &str, name: &str, body: &[u8]) -> super::Response {
    let path = format!("/storage/v1/object/backups/{name}");
    s.call_as(
        key,
        "POST",
        &path,
        &[("Content-Type", "application/octet-stream")],
        body,
    )
}

fn post_json(s: &SupabaseStub, key: &str, path: &str, body: Value) -> super::Response {
    let body = body.to_string();
    s.call_as(
        key,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
}

fn delete(s: &SupabaseStub, key: &str, bucket: &str, prefixes: Value) -> super::Response {
    let body = json!({ "prefixes": prefixes }).to_string();
    let path = format!("/storage/v1/object/{bucket}");
    s.call_as(
        key,
        "DELETE",
        &path,
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
}

fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn storage_stub_errors_are_http_400_with_the_real_status_in_the_body() {
    let s = stub();
    let ok = put(&s, SERVICE, "t/a.sql", b"one");
    assert_eq!(
        (ok.status, ok.json()["Key"].clone()),
        (200, json!("backups/t/a.sql")),
        "{}",
        ok.text()
    );

    let dup = put(&s, SERVICE, "t/a.sql", b"two");
    assert_eq!(dup.status, 400);
    assert_eq!(
        dup.json(),
        json!({"statusCode": "409", "code": "KeyAlreadyExists", "error": "Duplicate", "message": "The resource already exists"})
    );
    let missing = s.call_as(
        SERVICE,
        "GET",
        "/storage/v1/object/authenticated/backups/t/none",
        &[],
        b"",
    );
    assert_eq!(missing.status, 400);
    assert_eq!(
        missing.json(),
        json!({"statusCode": "404", "code": "NoSuchKey", "error": "not_found", "message": "Object not found"})
    );
    let head = s.call_as(
        SERVICE,
        "HEAD",
        "/storage/v1/object/authenticated/backups/t/none",
        &[],
        b"",
    );
    assert_eq!((head.status, head.body.len()), (400, 0), "HEAD errors carry no body");

    let big = put(&s, SERVICE, "t/big", &[7u8; 1001]);
    assert_eq!((big.status, big.json()["statusCode"].clone()), (400, json!("413")));
    assert_eq!(big.json()["code"], "EntityTooLarge");

    s.inject(Some("POST"), "/object/backups/", Fault::DatabaseReadOnly, Some(1));
    let ro = put(&s, SERVICE, "t/b", b"x");
    assert_eq!((ro.status, ro.json()["statusCode"].clone()), (400, json!("503")));
    assert_eq!(ro.json()["code"], "DatabaseReadOnly");
    s.inject(None, "/object/backups/", Fault::LockTimeout, Some(1));
    let lock = put(&s, SERVICE, "t/b", b"x");
    assert_eq!((lock.status, lock.json()["code"].clone()), (400, json!("LockTimeout")));
    assert_eq!(lock.json()["statusCode"], "503");
    s.inject(None, "/object/backups/", Fault::DatabaseTimeout, Some(1));
    let slow = put(&s, SERVICE, "t/b", b"x");
    assert_eq!((slow.status, slow.json()["statusCode"].clone()), (544, json!("544")));
    assert_eq!(put(&s, SERVICE, "t/b", b"x").status, 200, "the faults were used up");

    let bad = put(&s, "eyJ-not-a-key", "t/c", b"x");
    assert_eq!(bad.status, 400);
    assert_eq!(
        bad.json(),
        json!({"statusCode": "403", "code": "AccessDenied", "error": "Unauthorized", "message": "Invalid Compact JWS"})
    );
    let no_bearer = s.call("POST", "/storage/v1/object/backups/t/c", &[("apikey", SERVICE)], b"x");
    assert_eq!(
        no_bearer.json()["message"],
        "headers must have required property 'authorization'"
    );
    let no_apikey = s.call("POST", "/storage/v1/object/backups/t/c", &[], b"x");
    assert_eq!(no_apikey.status, 401);
}

#[test]
fn storage_stub_list_and_delete_answer_200_empty_to_anon_keys_and_missing_buckets() {
    let s = stub();
    for n in ["t/x.sql", "t/y.sql", "t/deep/z", "top"] {
        assert_eq!(put(&s, SERVICE, n, b"data").status, 200);
    }
    let list = |key: &str, bucket: &str, prefix: &str| {
        let path = format!("/storage/v1/object/list/{bucket}");
        post_json(
            &s,
            key,
            &path,
            json!({"prefix": prefix, "limit": 100, "offset": 0,
            "sortBy": {"column": "name", "order": "asc"}}),
        )
    };
    let root = list(SERVICE, "backups", "");
    assert_eq!(names(&root.json()), ["t", "top"]);
    assert_eq!(root.json()[0]["id"], Value::Null, "a folder");
    assert_eq!(root.json()[1]["metadata"]["size"], 4);
    assert_eq!(names(&list(SERVICE, "backups", "t").json()), ["deep", "x.sql", "y.sql"]);
    assert_eq!(
        names(&list(SERVICE, "backups", "T/").json()),
        ["deep", "x.sql", "y.sql"],
        "case-insensitive"
    );
    for (key, bucket) in [(s.anon_key.as_str(), "backups"), (SERVICE, "nobucket")] {
        let r = list(key, bucket, "t");
        assert_eq!((r.status, r.json()), (200, json!([])));
        let r = delete(&s, key, bucket, json!(["top"]));
        assert_eq!((r.status, r.json()), (200, json!([])));
    }
    assert!(s.keys().contains(&"top".to_string()));
    let r = delete(&s, SERVICE, "backups", json!(["t", "top", "nope", "top"]));
    assert_eq!(
        (r.status, names(&r.json())),
        (200, vec!["top".to_string()]),
        "exact names, only those deleted"
    );
    let r = delete(&s, SERVICE, "backups", json!([]));
    assert_eq!(r.json()["message"], "body/prefixes must NOT have fewer than 1 items");

    let b = s.call_as(SERVICE, "GET", "/storage/v1/bucket/backups", &[], b"");
    assert_eq!((b.status, b.json()["id"].clone()), (200, json!("backups")));
    for (key, bucket) in [(SERVICE, "nobucket"), (s.anon_key.as_str(), "backups")] {
        let b = s.call_as(key, "GET", &format!("/storage/v1/bucket/{bucket}"), &[], b"");
        assert_eq!((b.status, b.json()["statusCode"].clone()), (400, json!("404")));
        assert_eq!(b.json()["code"], "NoSuchBucket");
    }
    let anon_get = s.call_as(
        &s.anon_key,
        "GET",
        "/storage/v1/object/authenticated/backups/t/x.sql",
        &[],
        b"",
    );
    assert_eq!(anon_get.json()["code"], "NoSuchKey");
    let anon_put = put(&s, &s.anon_key, "t/new", b"x");
    assert_eq!(anon_put.json()["message"], "new row violates row-level security policy");
    assert_eq!(anon_put.json()["statusCode"], "403");
}

#[test]
fn storage_stub_routes_paths_and_keys_like_the_server() {
    let s = stub();
    let r = s.call_as(SERVICE, "POST", "/foo", &[], b"");
    assert_eq!(r.status, 404);
    assert_eq!(
        r.json(),
        json!({"message": "Route POST:/foo not found", "error": "Not Found", "statusCode": 404})
    );
    assert_eq!(
        s.call_as(SERVICE, "POST", "/object/list/backups", &[], b"").status,
        404,
        "no /storage/v1"
    );
    let r = s.call_as(SERVICE, "GET", "/storage/v1/object/x", &[], b"");
    assert_eq!((r.status, r.json()["code"].clone()), (404, json!("InvalidRequest")));

    for (path, key) in [
        ("a%25b", "a%b"),
        ("%C3%A9t%C3%A9", "été"),
        ("a%23b", "a#b"),
        ("a%0Ab", "a\nb"),
        ("a~b", "a~b"),
    ] {
        let r = put(&s, SERVICE, path, b"x");
        assert_eq!(
            (r.status, r.json()["code"].clone()),
            (400, json!("InvalidKey")),
            "{path}"
        );
        assert_eq!(r.json()["message"], format!("Invalid key: {key}"));
    }
    let r = put(&s, SERVICE, "a%E9", b"x");
    assert_eq!((r.status, r.json()["code"].clone()), (400, json!("FST_ERR_BAD_URL")));
    assert_eq!(put(&s, SERVICE, "dir%2Fname%20one", b"abc").status, 200);
    assert_eq!(put(&s, SERVICE, "q%3Fmark", b"abc").status, 200);
    assert_eq!(s.keys(), ["dir/name one", "q?mark"]);

    let head = s.call_as(
        SERVICE,
        "HEAD",
        "/storage/v1/object/authenticated/backups/dir/name%20one",
        &[],
        b"",
    );
    assert_eq!((head.status, head.header("content-length")), (200, Some("3")));
    let info = s.call_as(
        SERVICE,
        "GET",
        "/storage/v1/object/info/authenticated/backups/dir/name%20one",
        &[],
        b"",
    );
    assert_eq!((info.status, info.json()["size"].clone()), (200, json!(3)));

    let signed = post_json(
        &s,
        SERVICE,
        "/storage/v1/object/sign/backups/dir/name%20one",
        json!({"expiresIn": 60}),
    );
    let url = signed.json()["signedURL"].as_str().unwrap().to_string();
    assert!(url.starts_with("/object/sign/backups/dir/name one?token="), "{url}");
    let got = s.call("GET", &format!("/storage/v1{}", url.replace(' ', "%20")), &[], b"");
    assert_eq!((got.status, got.body), (200, b"abc".to_vec()));
}

#[test]
fn storage_stub_list_v2_pages_with_a_cursor_and_is_case_sensitive() {
    let s = stub();
    for n in ["p/a", "p/B", "p/c", "p/d/e", "P/x"] {
        assert_eq!(put(&s, SERVICE, n, b"1").status, 200);
    }
    let page = |cursor: Option<&str>, delimiter: bool| {
        let mut body = json!({"prefix": "p/", "limit": 2, "with_delimiter": delimiter});
        if let Some(c) = cursor {
            body["cursor"] = json!(c);
        }
        post_json(&s, SERVICE, "/storage/v1/object/list-v2/backups", body).json()
    };
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let p = page(cursor.as_deref(), false);
        seen.extend(names(&p["objects"]));
        if p["hasNext"] != json!(true) {
            break;
        }
        cursor = Some(p["nextCursor"].as_str().unwrap().to_string());
    }
    assert_eq!(seen, ["p/B", "p/a", "p/c", "p/d/e"], "byte order, P/x left out");
    let first = page(None, true);
    assert_eq!(names(&first["objects"]), ["p/B", "p/a"]);
    let second = page(first["nextCursor"].as_str(), true);
    assert_eq!(
        (names(&second["objects"]), names(&second["folders"])),
        (vec!["p/c".to_string()], vec!["p/d/".to_string()])
    );
    let anon = post_json(
        &s,
        &s.anon_key,
        "/storage/v1/object/list-v2/backups",
        json!({"prefix": "p/"}),
    );
    assert_eq!(anon.json(), json!({"hasNext": false, "folders": [], "objects": []}));
    let bad = post_json(
        &s,
        SERVICE,
        "/storage/v1/object/list-v2/backups",
        json!({"cursor": "bm9wZQ=="}),
    );
    assert_eq!(bad.json()["message"], "Invalid Parameter continuation token");
}

#[test]
fn storage_stub_tus_create_patch_head_and_cancel_answer_like_tus_server() {
    let s = SupabaseStub::start("sb_secret_stubtest", "backups", 1000);
    let b64 = |v: &str| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(v)
    };
    let create = |key: &str, name: &str, len: usize| {
        let meta = format!(
            "bucketName {},objectName {},contentType {}",
            b64("backups"),
            b64(name),
            b64("application/octet-stream")
        );
        let len = len.to_string();
        s.call_as(
            key,
            "POST",
            "/storage/v1/upload/resumable",
            &[
                ("Tus-Resumable", "1.0.0"),
                ("Upload-Length", &len),
                ("Upload-Metadata", &meta),
            ],
            b"",
        )
    };
    let tus = |method: &str, url: &str, extra: &[(&str, &str)], body: &[u8]| {
        let path = url.strip_prefix(&s.url).unwrap();
        let mut h = vec![("Tus-Resumable", "1.0.0")];
        h.extend_from_slice(extra);
        s.call_as(&s.key, method, path, &h, body)
    };
    let patch_headers = |offset: &'static str| {
        [
            ("Upload-Offset", offset),
            ("Content-Type", "application/offset+octet-stream"),
        ]
    };

    let c = create(&s.key, "big.sql", 10);
    assert_eq!(c.status, 201, "{}", c.text());
    let loc = c.header("location").unwrap().to_string();
    assert!(
        loc.starts_with(&format!("{}/storage/v1/upload/resumable/", s.url)),
        "{loc}"
    );
    let p = tus("PATCH", &loc, &patch_headers("0"), b"abcd");
    assert_eq!((p.status, p.header("upload-offset")), (204, Some("4")));
    let p = tus("PATCH", &loc, &patch_headers("0"), b"abcd");
    assert_eq!((p.status, p.text()), (409, "Upload-Offset conflict\n".to_string()));
    let h = tus("HEAD", &loc, &[], b"");
    assert_eq!(
        (h.status, h.header("upload-offset"), h.header("upload-length")),
        (200, Some("4"), Some("10"))
    );
    s.inject(Some("PATCH"), "/upload/resumable/", Fault::DatabaseReadOnly, Some(1));
    let p = tus("PATCH", &loc, &patch_headers("4"), b"efghij");
    assert_eq!(
        (p.status, p.text()),
        (
            503,
            "The database is currently in read-only mode. Please try again later.".to_string()
        )
    );
    assert_eq!(tus("DELETE", &loc, &[], b"").status, 204);
    assert_eq!(tus("HEAD", &loc, &[], b"").status, 404);

    let c = create(&s.key, "done.sql", 3);
    let loc = c.header("location").unwrap().to_string();
    let p = tus("PATCH", &loc, &patch_headers("0"), b"xyz");
    assert_eq!((p.status, p.header("tus-complete")), (204, Some("1")));
    assert_eq!(s.keys(), ["done.sql"]);
    let again = create(&s.key, "done.sql", 3);
    assert_eq!(
        (again.status, again.text()),
        (409, "The resource already exists".to_string())
    );
    let d = tus("DELETE", &loc, &[("x-upsert", "true")], b"");
    assert_eq!(
        (d.status, d.text()),
        (400, "Cannot terminate an already completed upload".to_string())
    );

    let anon = create(&s.anon_key, "anon.sql", 3);
    assert_eq!(
        (anon.status, anon.text()),
        (403, "new row violates row-level security policy".to_string())
    );
    let meta = format!("bucketName {},objectName {}", b64("nobucket"), b64("x"));
    let nob = s.call_as(
        &s.key,
        "POST",
        "/storage/v1/upload/resumable",
        &[
            ("Tus-Resumable", "1.0.0"),
            ("Upload-Length", "3"),
            ("Upload-Metadata", &meta),
        ],
        b"",
    );
    assert_eq!((nob.status, nob.text()), (404, "Bucket not found".to_string()));
    let no_tus = s.call_as(
        &s.key,
        "POST",
        "/storage/v1/upload/resumable",
        &[("Upload-Length", "3")],
        b"",
    );
    assert_eq!(no_tus.status, 412);

    // New-style keys: only in apikey; in Authorization they are not a JWT.
    let bearer = s.call(
        "GET",
        "/storage/v1/bucket/backups",
        &[("apikey", &s.key), ("Authorization", &format!("Bearer {}", s.key))],
        b"",
    );
    assert_eq!(bearer.json()["message"], "Invalid Compact JWS");
    let unknown = s.call(
        "GET",
        "/storage/v1/bucket/backups",
        &[("apikey", "sb_secret_wrong")],
        b"",
    );
    assert_eq!(unknown.status, 401);
}

#[test]
fn storage_stub_tus_deferred_length_is_declared_by_a_patch_like_tus_server() {
    let s = SupabaseStub::start("sb_secret_stubtest", "backups", 1000);
    let meta = {
        use base64::Engine as _;
        let b64 = |v: &str| base64::engine::general_purpose::STANDARD.encode(v);
        format!("bucketName {},objectName {}", b64("backups"), b64("grow.sql"))
    };
    let c = s.call_as(
        &s.key,
        "POST",
        "/storage/v1/upload/resumable",
        &[
            ("Tus-Resumable", "1.0.0"),
            ("Upload-Defer-Length", "1"),
            ("Upload-Metadata", &meta),
        ],
        b"",
    );
    assert_eq!(c.status, 201, "{}", c.text());
    let loc = c.header("location").unwrap().to_string();
    let tus = |method: &str, extra: &[(&str, &str)], body: &[u8]| {
        let path = loc.strip_prefix(&s.url).unwrap();
        let mut h = vec![
            ("Tus-Resumable", "1.0.0"),
            ("Content-Type", "application/offset+octet-stream"),
        ];
        h.extend_from_slice(extra);
        s.call_as(&s.key, method, path, &h, body)
    };
    let p = tus("PATCH", &[("Upload-Offset", "0")], b"abcd");
    assert_eq!((p.status, p.header("tus-complete")), (204, None));
    let h = tus("HEAD", &[], b"");
    assert_eq!(
        (
            h.header("upload-offset"),
            h.header("upload-defer-length"),
            h.header("upload-length")
        ),
        (Some("4"), Some("1"), None),
        "the length is not known yet"
    );
    assert!(s.keys().is_empty(), "no object before the length is declared");
    let short = tus("PATCH", &[("Upload-Offset", "4"), ("Upload-Length", "3")], b"x");
    assert_eq!(
        (short.status, short.text()),
        (
            400,
            "Upload-Length or Upload-Defer-Length header required\n".to_string()
        )
    );
    let p = tus("PATCH", &[("Upload-Offset", "4"), ("Upload-Length", "6")], b"ef");
    assert_eq!((p.status, p.header("tus-complete")), (204, Some("1")));
    assert_eq!(s.state.lock().unwrap().objects["grow.sql"], b"abcdef");
}

#[test]
fn storage_stub_a_buckets_own_size_and_mime_limits_answer_like_the_server() {
    // The project takes standard uploads up to 1000 bytes; the bucket its own 10, of two kinds.
    let s = stub();
    s.set_bucket(
        "backups",
        BucketSettings {
            file_size_limit: Some(10),
            allowed_mime_types: Some(vec!["application/octet-stream".into(), "text/*".into()]),
        },
    );
    let bucket = s.call_as(SERVICE, "GET", "/storage/v1/bucket/backups", &[], b"");
    assert_eq!(
        (
            bucket.json()["file_size_limit"].clone(),
            bucket.json()["allowed_mime_types"].clone()
        ),
        (json!(10), json!(["application/octet-stream", "text/*"]))
    );
    let typed = |ty: &str, name: &str, body: &[u8]| {
        let path = format!("/storage/v1/object/backups/{name}");
        s.call_as(SERVICE, "POST", &path, &[("Content-Type", ty)], body)
    };
    assert_eq!(typed("application/octet-stream", "t/ten", &[1; 10]).status, 200);
    assert_eq!(
        typed("text/plain", "t/text", b"x").status,
        200,
        "type/* allows its subtypes"
    );
    let big = typed("application/octet-stream", "t/eleven", &[1; 11]);
    assert_eq!(big.status, 400);
    assert_eq!(
        big.json(),
        json!({"statusCode": "413", "code": "EntityTooLarge", "error": "Payload too large",
               "message": "The object exceeded the maximum allowed size"})
    );
    // The type is checked before the size.
    let sql = typed("application/sql", "t/a.sql", &[1; 11]);
    assert_eq!(sql.status, 400);
    assert_eq!(
        sql.json(),
        json!({"statusCode": "415", "code": "InvalidMimeType", "error": "invalid_mime_type",
               "message": "mime type application/sql is not supported"})
    );
    assert_eq!(s.keys(), ["t/ten", "t/text"]);

    // Resumable uploads: the declared length against the bucket's limit, then (after the name is
    // checked) the declared type; a deferred length is held to the limit as the bytes come.
    let b64 = |v: &str| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(v)
    };
    let create = |name: &str, ty: &str, length: Option<&str>| {
        let meta = format!(
            "bucketName {},objectName {},contentType {}",
            b64("backups"),
            b64(name),
            b64(ty)
        );
        let mut h = vec![("Tus-Resumable", "1.0.0"), ("Upload-Metadata", meta.as_str())];
        match length {
            Some(l) => h.push(("Upload-Length", l)),
            None => h.push(("Upload-Defer-Length", "1")),
        }
        s.call_as(SERVICE, "POST", "/storage/v1/upload/resumable", &h, b"")
    };
    let c = create("r/big", "application/octet-stream", Some("11"));
    assert_eq!((c.status, c.text()), (413, "Maximum size exceeded\n".to_string()));
    let c = create("r/a.sql", "application/sql", Some("3"));
    assert_eq!(
        (c.status, c.text()),
        (415, "mime type application/sql is not supported".to_string())
    );
    let c = create("t/ten", "application/sql", Some("3"));
    assert_eq!(
        (c.status, c.text()),
        (409, "The resource already exists".to_string()),
        "the name before the type"
    );
    let c = create("r/grow", "application/octet-stream", None);
    assert_eq!(c.status, 201, "{}", c.text());
    let loc = c.header("location").unwrap().to_string();
    let patch = |extra: &[(&str, &str)], body: &[u8]| {
        let mut h = vec![
            ("Tus-Resumable", "1.0.0"),
            ("Content-Type", "application/offset+octet-stream"),
        ];
        h.extend_from_slice(extra);
        s.call_as(SERVICE, "PATCH", loc.strip_prefix(&s.url).unwrap(), &h, body)
    };
    assert_eq!(patch(&[("Upload-Offset", "0")], &[1; 8]).status, 204);
    let over = patch(&[("Upload-Offset", "8")], &[1; 3]);
    assert_eq!(
        (over.status, over.text()),
        (413, "upload's size exceeded\n".to_string())
    );
    let declared = patch(&[("Upload-Offset", "8"), ("Upload-Length", "11")], &[1; 3]);
    assert_eq!(
        (declared.status, declared.text()),
        (413, "Maximum size exceeded\n".to_string())
    );

    // A bucket limit of 0: every standard upload with a byte refused; resumable ones get the
    // project's limit. An empty type list: standard uploads unchecked, typed resumable ones refused.
    s.set_bucket(
        "backups",
        BucketSettings {
            file_size_limit: Some(0),
            allowed_mime_types: Some(vec![]),
        },
    );
    assert_eq!(typed("application/sql", "z/one", b"1").json()["statusCode"], "413");
    assert_eq!(typed("application/sql", "z/none", b"").status, 200);
    let c = create("z/r", "application/sql", Some("20"));
    assert_eq!(
        (c.status, c.text()),
        (415, "mime type application/sql is not supported".to_string())
    );
}
