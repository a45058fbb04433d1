//! A local stand-in for Supabase Storage that follows the real server's API and quirks (DESIGN §8):
//! `apikey` always, `Bearer` only for JWT keys; errors as HTTP 400 with the real code in the JSON
//! body; a size limit on standard uploads; list one folder level with limit/offset; bulk delete;
//! TUS create / PATCH / HEAD with offsets. Faults can be injected per test.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct Faults {
    /// The next N object uploads (standard or TUS create) answer 503.
    pub fail_uploads: u32,
    /// Every request whose path contains this answers 500.
    pub always_500_for: Option<String>,
    /// The next TUS PATCH stores only half its bytes, then answers 500.
    pub break_next_patch: bool,
}

#[derive(Default)]
pub struct State {
    pub objects: BTreeMap<String, Vec<u8>>,
    pub uploads: HashMap<String, (String, u64, Vec<u8>)>,
    pub faults: Faults,
    /// (method, path, had Authorization header) for every request.
    pub log: Vec<(String, String, bool)>,
}

pub struct SupabaseStub {
    pub url: String,
    pub key: String,
    pub bucket: String,
    pub upload_limit: usize,
    pub state: Arc<Mutex<State>>,
}

struct Request {
    method: String,
    path: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl SupabaseStub {
    pub fn start(key: &str, bucket: &str, upload_limit: usize) -> SupabaseStub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let (k, b, s) = (key.to_string(), bucket.to_string(), state.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (k, b, s) = (k.clone(), b.clone(), s.clone());
                std::thread::spawn(move || serve(stream, &k, &b, upload_limit, &s));
            }
        });
        SupabaseStub {
            url,
            key: key.into(),
            bucket: bucket.into(),
            upload_limit,
            state,
        }
    }

    pub fn keys(&self) -> Vec<String> {
        self.state.lock().unwrap().objects.keys().cloned().collect()
    }
}

fn serve(stream: TcpStream, key: &str, bucket: &str, limit: usize, state: &Mutex<State>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let Some(req) = read_request(&mut reader) else { return };
    let (status, headers, body) = handle(&req, key, bucket, limit, state);
    let mut out = stream;
    let mut head = format!(
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = out.write_all(head.as_bytes());
    let _ = out.write_all(&body);
}

fn read_request(r: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).ok()?;
    Some(Request {
        method,
        path,
        headers,
        body,
    })
}

type Reply = (u16, Vec<(String, String)>, Vec<u8>);

/// Supabase's habit: HTTP 400 with the real status in the body.
fn error(code: u16, error: &str, message: &str) -> Reply {
    let body = serde_json::json!({"statusCode": code.to_string(), "error": error, "message": message});
    (
        400,
        vec![("Content-Type".into(), "application/json".into())],
        body.to_string().into_bytes(),
    )
}

fn json(v: serde_json::Value) -> Reply {
    (
        200,
        vec![("Content-Type".into(), "application/json".into())],
        v.to_string().into_bytes(),
    )
}

fn handle(req: &Request, key: &str, bucket: &str, limit: usize, state: &Mutex<State>) -> Reply {
    let mut st = state.lock().unwrap();
    st.log.push((
        req.method.clone(),
        req.path.clone(),
        req.headers.contains_key("authorization"),
    ));
    let Some(path) = req.path.strip_prefix("/storage/v1") else {
        return (404, vec![], b"not found".to_vec());
    };

    // Auth: apikey always; Authorization only for JWTs, and then it must match.
    let apikey_ok = req.headers.get("apikey").map(String::as_str) == Some(key);
    let bearer = req.headers.get("authorization").map(String::as_str);
    let bearer_ok = if key.starts_with("eyJ") {
        bearer == Some(&format!("Bearer {key}"))
    } else {
        bearer.is_none()
    };
    if !apikey_ok || !bearer_ok {
        return error(403, "Unauthorized", "Invalid Compact JWS");
    }
    if let Some(frag) = &st.faults.always_500_for {
        let body = String::from_utf8_lossy(&req.body);
        if path.contains(frag.as_str()) || body.contains(frag.as_str()) {
            return (500, vec![], b"internal error".to_vec());
        }
    }

    // TUS
    if path == "/upload/resumable" && req.method == "POST" {
        if st.faults.fail_uploads > 0 {
            st.faults.fail_uploads -= 1;
            return (503, vec![], b"unavailable".to_vec());
        }
        if req.headers.get("tus-resumable").map(String::as_str) != Some("1.0.0") {
            return (412, vec![], b"Tus-Resumable required".to_vec());
        }
        let length: u64 = req
            .headers
            .get("upload-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let meta = decode_metadata(req.headers.get("upload-metadata").map(String::as_str).unwrap_or(""));
        let (Some(b), Some(name)) = (meta.get("bucketName"), meta.get("objectName")) else {
            return error(400, "InvalidRequest", "bucketName and objectName are required");
        };
        if b != bucket {
            return error(404, "Bucket not found", "Bucket not found");
        }
        if st.objects.contains_key(name) {
            return error(409, "Duplicate", "The resource already exists");
        }
        let id = format!("u{}", st.uploads.len() + 1);
        st.uploads.insert(id.clone(), (name.clone(), length, Vec::new()));
        return (
            201,
            vec![
                ("Location".into(), format!("/storage/v1/upload/resumable/{id}")),
                ("Tus-Resumable".into(), "1.0.0".into()),
            ],
            vec![],
        );
    }
    if let Some(id) = path.strip_prefix("/upload/resumable/") {
        let Some(up) = st.uploads.get(id).cloned() else {
            return (404, vec![], vec![]);
        };
        let (name, length, mut data) = up;
        match req.method.as_str() {
            "HEAD" => {
                return (
                    200,
                    vec![
                        ("Upload-Offset".into(), data.len().to_string()),
                        ("Upload-Length".into(), length.to_string()),
                    ],
                    vec![],
                )
            }
            "PATCH" => {
                let offset: u64 = req
                    .headers
                    .get("upload-offset")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(u64::MAX);
                if offset != data.len() as u64 {
                    return (
                        409,
                        vec![("Upload-Offset".into(), data.len().to_string())],
                        b"offset mismatch".to_vec(),
                    );
                }
                if st.faults.break_next_patch {
                    st.faults.break_next_patch = false;
                    data.extend_from_slice(&req.body[..req.body.len() / 2]);
                    st.uploads.insert(id.to_string(), (name, length, data));
                    return (500, vec![], b"connection lost".to_vec());
                }
                data.extend_from_slice(&req.body);
                let new_offset = data.len();
                if new_offset as u64 == length {
                    st.uploads.remove(id);
                    st.objects.insert(name, data);
                } else {
                    st.uploads.insert(id.to_string(), (name, length, data));
                }
                return (
                    204,
                    vec![
                        ("Upload-Offset".into(), new_offset.to_string()),
                        ("Tus-Resumable".into(), "1.0.0".into()),
                    ],
                    vec![],
                );
            }
            _ => return (405, vec![], vec![]),
        }
    }

    if let Some(rest) = path.strip_prefix("/object/list/") {
        if rest != bucket {
            return error(404, "Bucket not found", "Bucket not found");
        }
        let q: serde_json::Value = serde_json::from_slice(&req.body).unwrap_or_default();
        let prefix = q["prefix"].as_str().unwrap_or("").trim_matches('/').to_string();
        let limit = q["limit"].as_u64().unwrap_or(100) as usize;
        let offset = q["offset"].as_u64().unwrap_or(0) as usize;
        let base = if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}/")
        };
        // One folder level: files directly inside, and folder names once.
        let mut entries: BTreeMap<String, serde_json::Value> = BTreeMap::new();
        for (k, v) in &st.objects {
            let Some(rel) = k.strip_prefix(&base) else { continue };
            match rel.split_once('/') {
                Some((folder, _)) => {
                    entries
                        .entry(folder.to_string())
                        .or_insert(serde_json::json!({"name": folder, "id": null, "metadata": null}));
                }
                None => {
                    entries.insert(
                        rel.to_string(),
                        serde_json::json!({"name": rel, "id": format!("id-{k}"), "updated_at": "2026-01-01T00:00:00Z",
                            "metadata": {"size": v.len(), "mimetype": "application/octet-stream"}}),
                    );
                }
            }
        }
        let page: Vec<serde_json::Value> = entries.into_values().skip(offset).take(limit).collect();
        return json(serde_json::Value::Array(page));
    }
    if let Some(rest) = path.strip_prefix("/object/authenticated/") {
        let (b, name) = rest.split_once('/').unwrap_or((rest, ""));
        if b != bucket {
            return error(404, "Bucket not found", "Bucket not found");
        }
        return match st.objects.get(name) {
            Some(v) => (
                200,
                vec![("Content-Type".into(), "application/octet-stream".into())],
                v.clone(),
            ),
            None => error(404, "not_found", "Object not found"),
        };
    }
    if let Some(rest) = path.strip_prefix("/object/") {
        if req.method == "DELETE" {
            if rest != bucket {
                return error(404, "Bucket not found", "Bucket not found");
            }
            let q: serde_json::Value = serde_json::from_slice(&req.body).unwrap_or_default();
            let prefixes: Vec<String> = q["prefixes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(String::from))
                .collect();
            if prefixes.len() > 1000 {
                return error(400, "InvalidRequest", "too many prefixes");
            }
            let deleted: Vec<serde_json::Value> = prefixes
                .iter()
                .filter(|p| st.objects.remove(p.as_str()).is_some())
                .map(|p| serde_json::json!({"name": p, "bucket_id": bucket}))
                .collect();
            return json(serde_json::Value::Array(deleted));
        }
        if req.method == "POST" {
            let (b, name) = rest.split_once('/').unwrap_or((rest, ""));
            if b != bucket {
                return error(404, "Bucket not found", "Bucket not found");
            }
            if st.faults.fail_uploads > 0 {
                st.faults.fail_uploads -= 1;
                return (503, vec![], b"unavailable".to_vec());
            }
            if req.body.len() > limit {
                return error(413, "Payload too large", "The object exceeded the maximum allowed size");
            }
            let upsert = req.headers.get("x-upsert").map(String::as_str) == Some("true");
            if st.objects.contains_key(name) && !upsert {
                return error(409, "Duplicate", "The resource already exists");
            }
            st.objects.insert(name.to_string(), req.body.clone());
            return json(serde_json::json!({"Key": format!("{bucket}/{name}"), "Id": "x"}));
        }
    }
    (404, vec![], b"no such route".to_vec())
}

fn decode_metadata(raw: &str) -> HashMap<String, String> {
    use base64::Engine as _;
    raw.split(',')
        .filter_map(|pair| {
            let (k, v) = pair.trim().split_once(' ')?;
            let bytes = base64::engine::general_purpose::STANDARD.decode(v).ok()?;
            Some((k.to_string(), String::from_utf8(bytes).ok()?))
        })
        .collect()
}
