//! A local stand-in for Supabase Storage (the gateway's `/storage/v1` plus the storage server behind
//! it) that answers the way the real server's code does. Followed: supabase/storage **v1.70.6**
//! (commit 4fa61fb, the newest release stored; DESIGN §8 says "measured against v1.11.2", but
//! list-v2 only exists from v1.19.0 and DatabaseReadOnly from v1.48.3, so the facts there are
//! from a later server), with the libraries it pins: fastify 5.11 (find-my-way 9.7 router) and
//! @tus/server 2.4.2. Files read:
//!
//! * errors: `src/internal/errors/{codes,storage-error,renderable}.ts`, `src/http/error-handler.ts`
//!   (HTTP 400 unless the code is 500, with the real status as a string in `statusCode`; `withStatusCode`
//!   errors such as DatabaseTimeout keep theirs, 544), `src/storage/database/errors.ts` (pg error
//!   codes → KeyAlreadyExists, AccessDenied for row-level security, DatabaseReadOnly, …),
//!   `src/http/not-found-handler.ts` and fastify's `lib/four-oh-four.js` / `onBadUrl`;
//! * auth: `src/http/plugins/jwt.ts` (the JWT in `Authorization`; a role other than service_role
//!   goes through row-level security, which without policies hides every bucket and object),
//!   `src/http/schemas/auth.ts` (routes built with `createDefaultSchema` require `Authorization`);
//! * objects: `src/http/routes/object/*.ts`, `src/storage/object.ts`, `src/storage/uploader.ts`,
//!   `src/storage/limits.ts` (key and bucket-name regexes, 1000-name delete cap),
//!   `src/storage/database/pg.ts`, `migrations/tenant/0063-fix-search-name-relative-to-prefix.sql`
//!   (`storage.search`: list v1 is case-insensitive, one folder level, names relative to the prefix),
//!   `0050-search-v2-optimised.sql` (list-v2), `src/storage/renderer/{renderer,head,info}.ts`;
//! * buckets: `src/http/routes/bucket/{index,getBucket,getAllBuckets}.ts`; a bucket's own
//!   `file_size_limit` and `allowed_mime_types` ([`BucketSettings`]) as `src/storage/object.ts`
//!   (`uploadFromRequest`), `src/storage/uploader.ts` (`fileUploadFromRequest`,
//!   `validateMimeType`, `getStandardMaxFileSizeLimit`) and the TUS routes' `maxSize` and
//!   `onCreate` apply them;
//! * TUS: `src/http/routes/tus/{index,lifecycle}.ts`, `src/storage/protocols/tus/upload-id.ts`,
//!   @tus/server's `server.ts`, `handlers/{Post,Patch,Head,Delete}Handler.ts`,
//!   `validators/HeaderValidator.ts`, @tus/utils `constants.ts` and `models/Metadata.ts` (errors
//!   raised inside the TUS handler come back as plain text with the real status, e.g. `409 The
//!   resource already exists` on create, `409 Upload-Offset conflict\n` on PATCH);
//! * paths: find-my-way's `lib/url-sanitizer.js` (`decodeURI` on the path, reserved escapes decoded
//!   only inside parameters, `%25` decoded once; a malformed escape is fastify's 400 FST_ERR_BAD_URL).
//!
//! Against v1.11.2 (@tus/server 1.7) the differences that matter here: no list-v2, no
//! DatabaseReadOnly (a read-only database was a 500 DatabaseError), and no JSON 404 handler for
//! `/object` and `/bucket` (every unknown route got fastify's plain one). Object info and HEAD
//! (`GET /object/info/authenticated/…`, `HEAD /object/authenticated/…`) exist in both.
//!
//! Not the server's code, so only approximated: the gateway (a request without `apikey` gets 401,
//! a new-style `sb_…` key is turned into its role's JWT, anything outside `/storage/v1` gets
//! fastify's plain 404), and the gateway-level knobs below (`fail_uploads`, [`Fault::Gateway`]).
//! Not modelled: multipart form uploads, Range requests, public buckets, TUS concatenation, copy /
//! move. Stricter than the server: a standard upload sent without a Content-Length (chunked) is
//! held to the size limit too (v1.70.6 checks only a declared length).

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

/// The version `GET /version` reports: the server release this stub follows.
pub const SERVER_VERSION: &str = "1.70.6";

/// A fault a test can make the stub answer with (see [`Faults::rules`] and [`SupabaseStub::inject`]).
/// Database faults come the server's way: HTTP 400 with the status in the body for REST routes,
/// plain text with the real status for TUS routes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// pg 25006: `{"statusCode":"503","code":"DatabaseReadOnly",…}` (HTTP 400).
    DatabaseReadOnly,
    /// An advisory lock not had in time: `{"statusCode":"503","code":"LockTimeout",…}` (HTTP 400).
    LockTimeout,
    /// pg 57014: `{"statusCode":"544","code":"DatabaseTimeout",…}` with HTTP 544.
    DatabaseTimeout,
    /// pg 55P03: `{"statusCode":"423","code":"ResourceLocked",…}` (HTTP 400).
    ResourceLocked,
    /// `{"statusCode":"500","code":"InternalError",…}` with HTTP 500.
    InternalError,
    /// Too many database connections: HTTP 429, `"code":"SlowDown"`.
    TooManyConnections,
    /// The gateway in front of the server answers this status with a non-JSON body.
    Gateway(u16),
    /// The connection is closed without an answer.
    Disconnect,
    /// `{"statusCode":"409","code":"KeyAlreadyExists",…}` (HTTP 400; on TUS routes plain text
    /// `409 The resource already exists`): someone else stored the name meanwhile.
    KeyAlreadyExists,
    /// Another writer stores an object (`theirs`) under the name the request's resumable upload
    /// is for, just before the request is handled: the request then meets the taken name the
    /// way the server would.
    TakeName,
}

/// Answer requests whose method (any when `None`) and raw path (`/storage/v1/…`, with the query)
/// match with `fault`; `times: None` for every such request, `Some(n)` for the next `n`.
#[derive(Clone, Debug)]
pub struct FaultRule {
    pub method: Option<String>,
    pub path_contains: String,
    pub fault: Fault,
    pub times: Option<u32>,
}

#[derive(Default)]
pub struct Faults {
    /// The next N object uploads (standard, or TUS create) get the gateway's HTTP 503.
    pub fail_uploads: u32,
    /// Every request whose path or body (or TUS object name) contains this answers the server's
    /// 500 InternalError.
    pub always_500_for: Option<String>,
    /// The next TUS PATCH stores only half its bytes, then answers 500.
    pub break_next_patch: bool,
    /// Injected faults, checked in order after authentication (where the database is first used).
    pub rules: Vec<FaultRule>,
    /// `(method, path suffix)`: matching requests stall until this is cleared, GETs after half
    /// their body, others before they are handled (a storage that hangs mid-transfer).
    pub stall: Option<(String, String)>,
    /// `(method, path suffix)`: matching requests are handled at once but their answer waits
    /// until this is cleared (the server did it; the client has not heard yet).
    pub stall_answer: Option<(String, String)>,
    /// `(method, path part, n)`: the next `n` matching requests are carried out, but their answer
    /// never comes: the connection stays open and silent until the client gives up on it (a
    /// server or network that loses the answer).
    pub lose_answers: Option<(String, String, u32)>,
    /// Bulk deletes answer `200 []` and delete nothing (as a row-level security policy that lets
    /// the key read objects but not delete them would).
    pub silent_deletes: bool,
}

/// What the database row of an object holds besides its bytes.
#[derive(Clone, Debug)]
pub struct ObjectMeta {
    pub id: String,
    pub version: String,
    pub mimetype: String,
    pub cache_control: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A bucket's own limits (`storage.buckets`), as `GET /bucket/<id>` shows them; `None` is the
/// column's null. Set with [`SupabaseStub::set_bucket`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BucketSettings {
    /// `file_size_limit` in bytes. A standard upload may be at most the lower of it and the
    /// project's limit (`upload_limit`); a resumable one as well, except that 0 means "the
    /// project's limit" there (`bucket.file_size_limit || globalFileLimit`) while it refuses every
    /// non-empty standard upload.
    pub file_size_limit: Option<u64>,
    /// `allowed_mime_types`: `type/subtype` or `type/*`. A standard upload's `Content-Type` is
    /// checked when the list is not empty; a resumable upload's `contentType` metadata whenever the
    /// list is not null (JavaScript's `[]` is true), so an empty list refuses every typed one there.
    pub allowed_mime_types: Option<Vec<String>>,
}

/// A resumable upload, by its TUS id (`bucket/name/version`).
#[derive(Clone, Debug)]
pub struct TusUpload {
    pub bucket: String,
    pub name: String,
    pub version: String,
    /// `None` while the length is deferred (`Upload-Defer-Length: 1`), until a PATCH declares it.
    pub length: Option<u64>,
    pub data: Vec<u8>,
    /// Upload-Metadata as given, with `cacheControl` set the way the server's `onCreate` sets it.
    pub metadata: Vec<(String, Option<String>)>,
    pub created: DateTime<Utc>,
}

impl TusUpload {
    fn done(&self) -> bool {
        self.length == Some(self.data.len() as u64)
    }

    /// The upload without its bytes (which may be hundreds of MB, never copied for a request), and
    /// how many bytes it holds.
    fn described(&self) -> (TusUpload, u64) {
        let head = TusUpload {
            bucket: self.bucket.clone(),
            name: self.name.clone(),
            version: self.version.clone(),
            length: self.length,
            data: Vec::new(),
            metadata: self.metadata.clone(),
            created: self.created,
        };
        (head, self.data.len() as u64)
    }
}

pub struct State {
    /// The objects of the stub's bucket, name → bytes (tests read and write it directly).
    pub objects: BTreeMap<String, Vec<u8>>,
    /// Objects of any other bucket in `buckets`.
    pub other_objects: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    /// (bucket, name) → row data; made up for objects a test puts in `objects` itself.
    pub meta: HashMap<(String, String), ObjectMeta>,
    /// The buckets that exist (the stub's own at first).
    pub buckets: BTreeSet<String>,
    /// The project's keys: key → role (`service_role` bypasses row-level security; any other
    /// role sees and may write nothing). Starts with the key given to [`SupabaseStub::start`]
    /// and [`SupabaseStub::anon_key`].
    pub keys: HashMap<String, String>,
    /// Standard uploads above this many bytes answer 413 EntityTooLarge (the project's limit and
    /// the standard-upload limit; a bucket's own limit may be lower).
    pub upload_limit: usize,
    /// The project's limit for TUS uploads (none by default): declaring more answers 413
    /// "Maximum size exceeded", sending more 413 "upload's size exceeded". A bucket's own limit
    /// may be lower.
    pub tus_max_size: Option<u64>,
    /// Buckets' own limits, by bucket id; a bucket not here has none.
    pub bucket_settings: HashMap<String, BucketSettings>,
    /// Unfinished uploads expire this long after creation (the server's TUS_URL_EXPIRY_MS: 1 h):
    /// past it HEAD and PATCH answer 410, but, as on the server (which never runs @tus/server's
    /// `cleanUpExpiredUploads`), the upload and its bytes stay in `uploads` until it is cancelled.
    pub tus_expiry: chrono::Duration,
    /// When set, TUS create answers with a `Location` on this origin instead of the stub's own
    /// (a misconfigured or hostile proxy).
    pub tus_location_origin: Option<String>,
    pub uploads: HashMap<String, TusUpload>,
    pub faults: Faults,
    /// (method, path, had Authorization header) for every request.
    pub log: Vec<(String, String, bool)>,
    pub main_bucket: String,
    started: DateTime<Utc>,
    signing_secret: String,
}

static NO_OBJECTS: BTreeMap<String, Vec<u8>> = BTreeMap::new();

impl State {
    fn objects_of(&self, bucket: &str) -> &BTreeMap<String, Vec<u8>> {
        if bucket == self.main_bucket {
            &self.objects
        } else {
            self.other_objects.get(bucket).unwrap_or(&NO_OBJECTS)
        }
    }

    fn objects_mut(&mut self, bucket: &str) -> &mut BTreeMap<String, Vec<u8>> {
        if bucket == self.main_bucket {
            &mut self.objects
        } else {
            self.other_objects.entry(bucket.to_string()).or_default()
        }
    }

    fn settings(&self, bucket: &str) -> BucketSettings {
        self.bucket_settings.get(bucket).cloned().unwrap_or_default()
    }

    /// `getStandardMaxFileSizeLimit`: the lower of the bucket's limit (when set, 0 included) and
    /// the project's.
    fn standard_max(&self, bucket: &str) -> u64 {
        let project = self.upload_limit as u64;
        match self.settings(bucket).file_size_limit {
            Some(own) => own.min(project),
            None => project,
        }
    }

    /// The TUS server's `maxSize` for an upload into `bucket`: the bucket's limit unless it is
    /// null or 0, capped by the project's; `None` for no limit at all.
    fn tus_max(&self, bucket: &str) -> Option<u64> {
        match (
            self.settings(bucket).file_size_limit.filter(|&l| l > 0),
            self.tus_max_size,
        ) {
            (Some(own), Some(project)) => Some(own.min(project)),
            (own, project) => own.or(project),
        }
    }

    fn exists(&self, bucket: &str, name: &str) -> bool {
        self.buckets.contains(bucket) && self.objects_of(bucket).contains_key(name)
    }

    fn meta_of(&self, bucket: &str, name: &str) -> ObjectMeta {
        self.meta
            .get(&(bucket.to_string(), name.to_string()))
            .cloned()
            .unwrap_or_else(|| ObjectMeta {
                id: uuid_from(&format!("{bucket}/{name}")),
                version: uuid_from(&format!("v:{bucket}/{name}")),
                mimetype: "application/octet-stream".into(),
                cache_control: "no-cache".into(),
                created_at: self.started,
                updated_at: self.started,
            })
    }

    fn store(
        &mut self,
        bucket: &str,
        name: &str,
        data: Vec<u8>,
        mimetype: String,
        cache_control: String,
        version: String,
    ) {
        let now = Utc::now();
        let key = (bucket.to_string(), name.to_string());
        let (id, created_at) = match self.meta.get(&key) {
            Some(m) if self.exists(bucket, name) => (m.id.clone(), m.created_at),
            _ => (uuid(), now),
        };
        self.meta.insert(
            key,
            ObjectMeta {
                id,
                version,
                mimetype,
                cache_control,
                created_at,
                updated_at: now,
            },
        );
        self.objects_mut(bucket).insert(name.to_string(), data);
    }
}

pub struct SupabaseStub {
    /// What SUPABASE_URL would be (the gateway; the API is under `/storage/v1`).
    pub url: String,
    /// The service_role key given to `start`.
    pub key: String,
    /// A key of the same project with the `anon` role (a JWT, or `sb_publishable_…` when `key` is
    /// an `sb_…` key).
    pub anon_key: String,
    pub bucket: String,
    /// As started; the stub reads `state.upload_limit`, which a test may change.
    pub upload_limit: usize,
    pub state: Arc<Mutex<State>>,
}

/// An answer from [`SupabaseStub::call`].
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

impl SupabaseStub {
    /// A stub whose project has the service key `key` (unless `key` is a JWT whose `role` claim
    /// says otherwise) and one bucket, `bucket`, taking standard uploads up to `upload_limit` bytes.
    pub fn start(key: &str, bucket: &str, upload_limit: usize) -> SupabaseStub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let anon_key = if key.starts_with("sb_") {
            "sb_publishable_stub_anon_key".to_string()
        } else {
            fake_jwt(&json!({"iss": "supabase", "ref": "stub", "role": "anon"}))
        };
        let mut keys = HashMap::new();
        keys.insert(
            key.to_string(),
            role_claim(key).unwrap_or_else(|| "service_role".into()),
        );
        keys.insert(anon_key.clone(), "anon".to_string());
        let state = Arc::new(Mutex::new(State {
            objects: BTreeMap::new(),
            other_objects: BTreeMap::new(),
            meta: HashMap::new(),
            buckets: [bucket.to_string()].into_iter().collect(),
            keys,
            upload_limit,
            tus_max_size: None,
            bucket_settings: HashMap::new(),
            tus_expiry: chrono::Duration::hours(1),
            tus_location_origin: None,
            uploads: HashMap::new(),
            faults: Faults::default(),
            log: Vec::new(),
            main_bucket: bucket.to_string(),
            started: Utc::now(),
            signing_secret: format!("{:032x}", rand::random::<u128>()),
        }));
        let (s, origin) = (state.clone(), url.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (s, origin) = (s.clone(), origin.clone());
                std::thread::spawn(move || serve(stream, &s, &origin));
            }
        });
        SupabaseStub {
            url,
            key: key.into(),
            anon_key,
            bucket: bucket.into(),
            upload_limit,
            state,
        }
    }

    /// The names in the stub's bucket.
    pub fn keys(&self) -> Vec<String> {
        self.state.lock().unwrap().objects.keys().cloned().collect()
    }

    /// Sets a bucket's own size and MIME limits (as the dashboard's "Edit bucket" would).
    pub fn set_bucket(&self, bucket: &str, settings: BucketSettings) {
        self.state
            .lock()
            .unwrap()
            .bucket_settings
            .insert(bucket.to_string(), settings);
    }

    /// Adds a fault rule (see [`FaultRule`]).
    pub fn inject(&self, method: Option<&str>, path_contains: &str, fault: Fault, times: Option<u32>) {
        self.state.lock().unwrap().faults.rules.push(FaultRule {
            method: method.map(String::from),
            path_contains: path_contains.into(),
            fault,
            times,
        });
    }

    /// One raw HTTP request to the stub (`path` as sent, e.g. `/storage/v1/object/…`), for tests of
    /// the stub itself.
    pub fn call(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        let addr = self.url.trim_start_matches("http://");
        let mut s = TcpStream::connect(addr).unwrap();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("Connection: close\r\n\r\n");
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(body).unwrap();
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("an HTTP answer");
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        Response {
            status,
            headers,
            body: raw[split + 4..].to_vec(),
        }
    }

    /// [`call`](Self::call) with `key` the way the client sends it: `apikey`, and `Authorization`
    /// too for a JWT.
    pub fn call_as(&self, key: &str, method: &str, path: &str, extra: &[(&str, &str)], body: &[u8]) -> Response {
        let bearer = format!("Bearer {key}");
        let mut headers = vec![("apikey", key)];
        if key.starts_with("eyJ") {
            headers.push(("Authorization", bearer.as_str()));
        }
        headers.extend_from_slice(extra);
        self.call(method, path, &headers, body)
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP plumbing

struct Request {
    method: String,
    target: String,
    /// Lower-case names, in the order sent.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Close the connection without answering.
    hang_up: bool,
}

fn reply(status: u16, headers: Vec<(&str, String)>, body: impl Into<Vec<u8>>) -> Reply {
    Reply {
        status,
        headers: headers.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        body: body.into(),
        hang_up: false,
    }
}

fn json_reply(status: u16, v: &Value) -> Reply {
    reply(
        status,
        vec![("Content-Type", "application/json; charset=utf-8".into())],
        v.to_string(),
    )
}

fn serve(stream: TcpStream, state: &Mutex<State>, origin: &str) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let Some(req) = read_request(&mut reader) else { return };
    let stalls = |st: &State| {
        st.faults
            .stall
            .as_ref()
            .is_some_and(|(method, end)| req.method == *method && req.target.ends_with(end.as_str()))
    };
    let wait_while_stalled = || {
        while stalls(&state.lock().unwrap()) {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    if req.method != "GET" {
        wait_while_stalled();
    }
    let r = {
        let mut st = state.lock().unwrap();
        handle(&req, &mut st, origin)
    };
    let answer_stalls = |st: &State| {
        st.faults
            .stall_answer
            .as_ref()
            .is_some_and(|(method, end)| req.method == *method && req.target.ends_with(end.as_str()))
    };
    while answer_stalls(&state.lock().unwrap()) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let lost = {
        let mut st = state.lock().unwrap();
        match &mut st.faults.lose_answers {
            Some((method, part, n)) if *n > 0 && req.method == *method && req.target.contains(part.as_str()) => {
                *n -= 1;
                true
            }
            _ => false,
        }
    };
    if lost {
        // Silent until the client closes the connection.
        let _ = reader.read(&mut [0u8; 1]);
        return;
    }
    if r.hang_up {
        let _ = stream.shutdown(std::net::Shutdown::Both);
        return;
    }
    let mut out = stream;
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        r.status,
        reason(r.status),
        r.body.len()
    );
    for (k, v) in &r.headers {
        if !k.eq_ignore_ascii_case("content-length") {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    head.push_str("\r\n");
    let _ = out.write_all(head.as_bytes());
    // A HEAD answer carries the length of the body it would have had, not the body.
    if req.method != "HEAD" && r.status != 204 {
        let mut sent = 0;
        if req.method == "GET" && stalls(&state.lock().unwrap()) {
            sent = r.body.len() / 2;
            let _ = out.write_all(&r.body[..sent]);
            let _ = out.flush();
            wait_while_stalled();
        }
        let _ = out.write_all(&r.body[sent..]);
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        410 => "Gone",
        412 => "Precondition Failed",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

fn read_request(r: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let get = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).ok()?;
            let n = usize::from_str_radix(size.trim().split(';').next()?.trim(), 16).ok()?;
            let mut chunk = vec![0u8; n + 2];
            r.read_exact(&mut chunk).ok()?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else {
        let len: usize = get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        body = vec![0u8; len];
        r.read_exact(&mut body).ok()?;
    }
    Some(Request {
        method,
        target,
        headers,
        body,
    })
}

// ---------------------------------------------------------------------------------------------
// Errors, as the server renders them

/// A StorageBackendError: `status` goes in the body as a string; the HTTP status is 400 unless
/// `status` is 500, or `http` says otherwise (`withStatusCode`).
#[derive(Clone, Debug)]
struct StorageError {
    status: u16,
    code: &'static str,
    error: String,
    message: String,
    http: Option<u16>,
}

impl StorageError {
    fn new(status: u16, code: &'static str, error: Option<&str>, message: impl Into<String>) -> StorageError {
        StorageError {
            status,
            code,
            error: error.unwrap_or(code).to_string(),
            message: message.into(),
            http: None,
        }
    }

    /// As the REST routes answer: the fastify error handler, serialized by `errorSchema`.
    fn rest(&self) -> Reply {
        let http = self.http.unwrap_or(if self.status == 500 { 500 } else { 400 });
        error_body(http, &self.status.to_string(), &self.error, &self.message, self.code)
    }

    /// As the TUS routes answer errors raised inside the TUS handler (`onResponseError`): the real
    /// status and the message as plain text.
    fn tus(&self) -> Reply {
        tus_text(self.status, &self.message)
    }
}

fn error_body(http: u16, status: &str, error: &str, message: &str, code: &str) -> Reply {
    // errorSchema's order: statusCode, error, message, code.
    let body = format!(
        "{{\"statusCode\":{},\"error\":{},\"message\":{},\"code\":{}}}",
        Value::from(status),
        Value::from(error),
        Value::from(message),
        Value::from(code)
    );
    reply(
        http,
        vec![("Content-Type", "application/json; charset=utf-8".into())],
        body,
    )
}

fn no_such_bucket() -> StorageError {
    StorageError::new(404, "NoSuchBucket", Some("Bucket not found"), "Bucket not found")
}
fn no_such_key() -> StorageError {
    StorageError::new(404, "NoSuchKey", Some("not_found"), "Object not found")
}
fn invalid_key(key: &str) -> StorageError {
    StorageError::new(400, "InvalidKey", None, format!("Invalid key: {key}"))
}
fn invalid_bucket_name() -> StorageError {
    StorageError::new(400, "InvalidBucketName", Some("Invalid Input"), "Bucket name invalid")
}
fn key_already_exists() -> StorageError {
    StorageError::new(
        409,
        "KeyAlreadyExists",
        Some("Duplicate"),
        "The resource already exists",
    )
}
fn entity_too_large() -> StorageError {
    StorageError::new(
        413,
        "EntityTooLarge",
        Some("Payload too large"),
        "The object exceeded the maximum allowed size",
    )
}
fn invalid_mime_type(mime: &str) -> StorageError {
    StorageError::new(
        415,
        "InvalidMimeType",
        Some("invalid_mime_type"),
        format!("mime type {mime} is not supported"),
    )
}

/// `validateMimeType`: `type/subtype` against each `type/subtype` or `type/*` allowed.
fn check_mime_type(mime: &str, allowed: &[String]) -> Result<(), StorageError> {
    let requested: Vec<&str> = mime.split('/').collect();
    if requested.len() < 2 {
        return Err(invalid_mime_type(mime));
    }
    let fits = allowed.iter().any(|a| {
        let mut parts = a.split('/');
        let (ty, ext) = (parts.next().unwrap_or(""), parts.next());
        ty == requested[0] && ext.is_some_and(|ext| ext == "*" || ext == requested[1])
    });
    if fits {
        Ok(())
    } else {
        Err(invalid_mime_type(mime))
    }
}

fn access_denied(message: &str) -> StorageError {
    StorageError::new(403, "AccessDenied", Some("Unauthorized"), message)
}
fn rls_denied() -> StorageError {
    access_denied("new row violates row-level security policy")
}
fn invalid_jwt(message: &str) -> StorageError {
    StorageError::new(400, "InvalidJWT", None, message)
}
fn invalid_signature() -> StorageError {
    StorageError::new(400, "InvalidSignature", None, "Invalid signature")
}
fn invalid_parameter(name: &str) -> StorageError {
    StorageError::new(400, "InvalidParameter", None, format!("Invalid Parameter {name}"))
}
fn invalid_request(message: &str) -> StorageError {
    StorageError::new(400, "InvalidRequest", None, message)
}
fn invalid_upload_id(message: &str) -> StorageError {
    StorageError::new(400, "InvalidUploadId", None, message)
}

fn fault_error(f: Fault) -> Option<StorageError> {
    Some(match f {
        Fault::DatabaseReadOnly => StorageError::new(
            503,
            "DatabaseReadOnly",
            None,
            "The database is currently in read-only mode. Please try again later.",
        ),
        Fault::LockTimeout => StorageError::new(
            503,
            "LockTimeout",
            Some("acquiring_lock_timeout"),
            "acquiring lock timeout",
        ),
        Fault::DatabaseTimeout => StorageError {
            http: Some(544),
            ..StorageError::new(544, "DatabaseTimeout", None, "The connection to the database timed out")
        },
        Fault::ResourceLocked => StorageError::new(423, "ResourceLocked", None, "The resource is locked"),
        Fault::InternalError => StorageError::new(500, "InternalError", None, "Internal server error"),
        Fault::KeyAlreadyExists => key_already_exists(),
        _ => return None,
    })
}

fn render_fault(f: Fault, tus: bool) -> Reply {
    match f {
        Fault::TooManyConnections => {
            let body = r#"{"statusCode":"429","error":"too_many_connections","code":"SlowDown","message":"Too many connections issued to the database"}"#;
            reply(
                429,
                vec![("Content-Type", "application/json; charset=utf-8".into())],
                body,
            )
        }
        Fault::Gateway(status) => gateway_status(status),
        Fault::Disconnect => Reply {
            hang_up: true,
            ..reply(0, vec![], "")
        },
        other => {
            let e = fault_error(other).unwrap();
            if tus {
                e.tus()
            } else {
                e.rest()
            }
        }
    }
}

fn gateway_status(status: u16) -> Reply {
    reply(
        status,
        vec![("Content-Type", "text/plain".into())],
        format!(
            "{status} {}: the gateway could not reach the storage server",
            reason(status)
        ),
    )
}

/// The gateway's own refusals (Kong), not the storage server's.
fn gateway_refusal(message: &str) -> Reply {
    json_reply(401, &json!({ "message": message }))
}

/// fastify's default not-found answer (numeric statusCode, no `code`).
fn basic_404(method: &str, url: &str) -> Reply {
    json_reply(
        404,
        &json!({"message": format!("Route {method}:{url} not found"), "error": "Not Found", "statusCode": 404}),
    )
}

/// Unknown routes under `/object` and `/bucket` (`setRestNotFoundHandler`).
fn rest_404(method: &str, url: &str) -> Reply {
    error_body(
        404,
        "404",
        "Not Found",
        &format!("Route {method}:{url} not found"),
        "InvalidRequest",
    )
}

/// fastify's FST_ERR_BAD_URL for a path find-my-way cannot decode.
fn bad_url(url: &str) -> Reply {
    json_reply(
        400,
        &json!({"error": "Bad Request", "code": "FST_ERR_BAD_URL",
                "message": format!("'{url}' is not a valid url component"), "statusCode": 400}),
    )
}

/// A fastify error (validation, content-type parsing) through the storage error handler.
fn fastify_error(name: &str, message: &str) -> Reply {
    // {statusCode, error: err.name, code, message}, then errorSchema's order.
    error_body(400, "400", name, message, "InvalidRequest")
}

fn tus_text(status: u16, body: &str) -> Reply {
    let mut r = reply(status, tus_headers(), body.to_string());
    if !body.is_empty() {
        r.headers
            .push(("Content-Type".into(), "text/plain;charset=UTF-8".into()));
    }
    r
}

fn tus_headers() -> Vec<(&'static str, String)> {
    vec![
        ("Tus-Resumable", "1.0.0".into()),
        (
            "Access-Control-Expose-Headers",
            "Authorization, Content-Type, Location, Tus-Extension, Tus-Max-Size, Tus-Resumable, Tus-Version, \
             Upload-Concat, Upload-Defer-Length, Upload-Length, Upload-Metadata, Upload-Offset, \
             X-HTTP-Method-Override, X-Requested-With, X-Forwarded-Host, X-Forwarded-Proto, Forwarded"
                .into(),
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// Keys, paths and routes

/// The `role` claim of a JWT, if `key` is one with a readable payload.
fn role_claim(key: &str) -> Option<String> {
    let payload = key.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    v["role"].as_str().map(String::from)
}

fn fake_jwt(payload: &Value) -> String {
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    format!(
        "{}.{}.{}",
        b64(br#"{"alg":"HS256","typ":"JWT"}"#),
        b64(payload.to_string().as_bytes()),
        b64(&rand::random::<[u8; 32]>())
    )
}

fn uuid() -> String {
    format_uuid(rand::random::<u128>())
}

fn uuid_from(seed: &str) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(seed.as_bytes());
    format_uuid(u128::from_be_bytes(d[..16].try_into().unwrap()))
}

fn format_uuid(n: u128) -> String {
    let n = (n & !(0xf << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
    let h = format!("{n:032x}");
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

fn iso(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn http_date(t: &DateTime<Utc>) -> String {
    t.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

/// The S3 backend's ETag, in its form (32 hex digits, quoted). The server keeps the one S3 computed
/// while the bytes came in and never reads the object to answer; the stub makes one up from the
/// object's version and size, so an info request or a listing does not hash whole objects.
fn etag(meta: &ObjectMeta, data: &[u8]) -> String {
    use sha2::Digest;
    let seed = format!("{}:{}", meta.version, data.len());
    format!("\"{}\"", hex::encode(&sha2::Sha256::digest(seed.as_bytes())[..16]))
}

/// `limits.ts`: `^[A-Za-z0-9_/!.*'() &$=@;:+,?-]*$`, not empty.
fn is_valid_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_/!.*'() &$=@;:+,?-".contains(&b))
}

/// `limits.ts`: the same characters but `/`, 1 to 100 of them.
fn is_valid_bucket_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 101
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_!.*'() &$=@;:+,?-".contains(&b))
}

fn must_be_valid_bucket(name: &str) -> Result<(), StorageError> {
    if is_valid_bucket_name(name) {
        Ok(())
    } else {
        Err(invalid_bucket_name())
    }
}

fn must_be_valid_key(key: &str) -> Result<(), StorageError> {
    if is_valid_key(key) {
        Ok(())
    } else {
        Err(invalid_key(key))
    }
}

/// find-my-way's `decodeComponentChar`: the characters `decodeURI` leaves encoded, plus `%`.
fn component_char(hi: Option<u8>, lo: Option<u8>) -> Option<char> {
    Some(match (hi?, lo?) {
        (b'2', b'5') => '%',
        (b'2', b'3') => '#',
        (b'2', b'4') => '$',
        (b'2', b'6') => '&',
        (b'2', b'B' | b'b') => '+',
        (b'2', b'C' | b'c') => ',',
        (b'2', b'F' | b'f') => '/',
        (b'3', b'A' | b'a') => ':',
        (b'3', b'B' | b'b') => ';',
        (b'3', b'D' | b'd') => '=',
        (b'3', b'F' | b'f') => '?',
        (b'4', b'0') => '@',
        _ => return None,
    })
}

/// find-my-way's `safeDecodeURI` on a path without its query: `Ok((path, decode_params))`, the
/// path `decodeURI`-decoded (reserved escapes kept, `%25` kept as `%25`), or `Err` when
/// `decodeURI` would throw.
fn fmw_decode_path(path: &str) -> Result<(String, bool), ()> {
    let b = path.as_bytes();
    let (mut should_decode, mut decode_params) = (false, false);
    let mut work = String::with_capacity(path.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            match component_char(b.get(i + 1).copied(), b.get(i + 2).copied()) {
                None => {
                    should_decode = true;
                    work.push('%');
                    i += 1;
                }
                Some(c) => {
                    decode_params = true;
                    if c == '%' {
                        should_decode = true;
                        work.push_str("%2525");
                    } else {
                        work.push_str(&path[i..i + 3]);
                    }
                    i += 3;
                }
            }
        } else {
            let ch = path[i..].chars().next().unwrap();
            work.push(ch);
            i += ch.len_utf8();
        }
    }
    if should_decode {
        Ok((decode_uri(&work)?, decode_params))
    } else {
        Ok((work, decode_params))
    }
}

/// JavaScript's `decodeURI`.
fn decode_uri(s: &str) -> Result<String, ()> {
    let b = s.as_bytes();
    let hex = |i: usize| -> Result<u8, ()> {
        let h = b.get(i + 1..i + 3).ok_or(())?;
        u8::from_str_radix(std::str::from_utf8(h).map_err(|_| ())?, 16).map_err(|_| ())
    };
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'%' {
            let ch = s[i..].chars().next().unwrap();
            out.push(ch);
            i += ch.len_utf8();
            continue;
        }
        let first = hex(i)?;
        if first < 0x80 {
            if ";/?:@&=+$,#".contains(first as char) {
                out.push_str(&s[i..i + 3]);
            } else {
                out.push(first as char);
            }
            i += 3;
            continue;
        }
        let n = match first {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => return Err(()),
        };
        let mut bytes = vec![first];
        for k in 1..n {
            let at = i + 3 * k;
            if b.get(at) != Some(&b'%') {
                return Err(());
            }
            bytes.push(hex(at)?);
        }
        out.push_str(std::str::from_utf8(&bytes).map_err(|_| ())?);
        i += 3 * n;
    }
    Ok(out)
}

/// find-my-way's `safeDecodeURIComponent`, applied to each parameter when the path had a reserved
/// escape.
fn decode_param(p: &str, decode: bool) -> String {
    if !decode || !p.contains('%') {
        return p.to_string();
    }
    let b = p.as_bytes();
    let mut out = String::new();
    let mut last = 0;
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            out.push_str(&p[last..i]);
            match component_char(b.get(i + 1).copied(), b.get(i + 2).copied()) {
                Some(c) => out.push(c),
                None => out.push_str("null"),
            }
            last = (i + 3).min(b.len());
        }
        i += 1;
    }
    out.push_str(&p[last..]);
    out
}

/// `application/x-www-form-urlencoded` query values.
fn query_value(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| {
            let v = v.replace('+', " ");
            let mut bytes = Vec::new();
            let vb = v.as_bytes();
            let mut i = 0;
            while i < vb.len() {
                if vb[i] == b'%' {
                    if let Some(n) = vb
                        .get(i + 1..i + 3)
                        .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok())
                    {
                        bytes.push(n);
                        i += 3;
                        continue;
                    }
                }
                bytes.push(vb[i]);
                i += 1;
            }
            String::from_utf8_lossy(&bytes).into_owned()
        })
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    /// No JWT needed.
    Public,
    /// A valid JWT, else AccessDenied.
    Jwt,
    /// `allowInvalidJwt`: without a valid JWT the caller is an unauthenticated anon.
    Lenient,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Asset {
    Body,
    Head,
    Info,
}

enum Route {
    Status,
    Version,
    BucketList,
    BucketGet(String),
    List(String),
    ListV2(String),
    DeleteMany(String),
    DeleteOne(String, String),
    Create {
        bucket: String,
        key: String,
        put: bool,
    },
    Object {
        bucket: String,
        key: String,
        asset: Asset,
        lenient: bool,
    },
    PublicObject(String),
    Sign(String, String),
    SignedGet(String, String),
    TusCreate,
    Tus,
    TusOptions,
}

impl Route {
    fn access(&self) -> Access {
        match self {
            Route::Status | Route::Version | Route::PublicObject(_) | Route::SignedGet(..) | Route::TusOptions => {
                Access::Public
            }
            Route::Object { lenient: true, .. } => Access::Lenient,
            _ => Access::Jwt,
        }
    }

    /// Routes whose schema is `createDefaultSchema` or `authSchema`: `Authorization` required.
    fn needs_authorization_header(&self) -> bool {
        matches!(
            self,
            Route::BucketList
                | Route::BucketGet(_)
                | Route::List(_)
                | Route::DeleteMany(_)
                | Route::DeleteOne(..)
                | Route::Create { .. }
                | Route::Sign(..)
                | Route::Object { lenient: false, .. }
        )
    }

    fn is_tus(&self) -> bool {
        matches!(self, Route::TusCreate | Route::Tus | Route::TusOptions)
    }
}

/// `seg/rest` → (decoded seg, decoded rest); `rest` may be empty but the `/` must be there.
fn param_and_rest(p: &str, decode: bool) -> Option<(String, String)> {
    let (a, b) = p.split_once('/')?;
    Some((decode_param(a, decode), decode_param(b, decode)))
}

/// One parametric segment.
fn single(p: &str, decode: bool) -> Option<String> {
    (!p.contains('/')).then(|| decode_param(p, decode))
}

/// The server's routes (its own paths, without `/storage/v1`), static segments first as
/// find-my-way matches them.
fn route(method: &str, path: &str, decode: bool) -> Option<Route> {
    let p = path.strip_prefix('/')?;
    match (method, p) {
        ("GET", "status") => return Some(Route::Status),
        ("GET", "version") => return Some(Route::Version),
        ("GET", "bucket" | "bucket/") => return Some(Route::BucketList),
        ("POST", "upload/resumable" | "upload/resumable/") => return Some(Route::TusCreate),
        ("OPTIONS", "upload/resumable" | "upload/resumable/") => return Some(Route::TusOptions),
        _ => {}
    }
    if let Some(id) = p.strip_prefix("bucket/") {
        return match method {
            "GET" => single(id, decode).map(Route::BucketGet),
            _ => None,
        };
    }
    if let Some(rest) = p.strip_prefix("upload/resumable/") {
        if rest.is_empty() {
            return None;
        }
        return match method {
            "POST" => Some(Route::TusCreate),
            "PATCH" | "HEAD" | "DELETE" | "PUT" => Some(Route::Tus),
            "OPTIONS" => Some(Route::TusOptions),
            _ => None,
        };
    }
    let o = p.strip_prefix("object/")?;
    let object = |bucket: String, key: String, asset: Asset, lenient: bool| Route::Object {
        bucket,
        key,
        asset,
        lenient,
    };
    let sub = |prefix: &str| o.strip_prefix(prefix);
    let bucket_key = |s: Option<&str>| s.and_then(|s| param_and_rest(s, decode));
    match method {
        "GET" => {
            if let Some((b, k)) = bucket_key(sub("authenticated/")) {
                return Some(object(b, k, Asset::Body, false));
            }
            if let Some((b, k)) = bucket_key(sub("info/authenticated/")) {
                return Some(object(b, k, Asset::Info, false));
            }
            if let Some((b, _)) = bucket_key(sub("info/public/")) {
                return Some(Route::PublicObject(b));
            }
            if let Some((b, k)) = bucket_key(sub("info/")) {
                return Some(object(b, k, Asset::Info, true));
            }
            if let Some((b, _)) = bucket_key(sub("public/")) {
                return Some(Route::PublicObject(b));
            }
            if let Some((b, k)) = bucket_key(sub("sign/")) {
                return Some(Route::SignedGet(b, k));
            }
            bucket_key(Some(o)).map(|(b, k)| object(b, k, Asset::Body, true))
        }
        "HEAD" => {
            if let Some((b, k)) = bucket_key(sub("authenticated/")) {
                return Some(object(b, k, Asset::Head, false));
            }
            if let Some((b, _)) = bucket_key(sub("public/")) {
                return Some(Route::PublicObject(b));
            }
            bucket_key(Some(o)).map(|(b, k)| object(b, k, Asset::Head, true))
        }
        "POST" => {
            if let Some(b) = sub("list/").and_then(|s| single(s, decode)) {
                return Some(Route::List(b));
            }
            if let Some(b) = sub("list-v2/").and_then(|s| single(s, decode)) {
                return Some(Route::ListV2(b));
            }
            if let Some((b, k)) = bucket_key(sub("sign/")) {
                return Some(Route::Sign(b, k));
            }
            bucket_key(Some(o)).map(|(bucket, key)| Route::Create {
                bucket,
                key,
                put: false,
            })
        }
        "PUT" => bucket_key(Some(o)).map(|(bucket, key)| Route::Create { bucket, key, put: true }),
        "DELETE" => {
            if let Some(b) = single(o, decode) {
                return Some(Route::DeleteMany(b));
            }
            bucket_key(Some(o)).map(|(b, k)| Route::DeleteOne(b, k))
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Request validation (fastify + ajv, before the JWT is looked at)

#[derive(Clone, Copy)]
enum Ty {
    Str,
    Int { min: i64 },
    Bool,
    Enum(&'static [&'static str]),
    StrArray { min_items: usize },
    Obj(&'static [(&'static str, Ty, bool)]),
}

/// ajv's first error, as fastify words it.
fn check(v: Option<&Value>, ty: Ty, path: &str) -> Result<(), String> {
    let Some(v) = v else { return Ok(()) };
    match ty {
        Ty::Str => v.is_string().then_some(()).ok_or(format!("{path} must be string")),
        Ty::Bool => v.is_boolean().then_some(()).ok_or(format!("{path} must be boolean")),
        Ty::Int { min } => {
            let n = v
                .as_i64()
                .or_else(|| v.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
                .ok_or(format!("{path} must be integer"))?;
            (n >= min).then_some(()).ok_or(format!("{path} must be >= {min}"))
        }
        Ty::Enum(allowed) => {
            let s = v.as_str().ok_or(format!("{path} must be string"))?;
            allowed
                .contains(&s)
                .then_some(())
                .ok_or(format!("{path} must be equal to one of the allowed values"))
        }
        Ty::StrArray { min_items } => {
            let a = v.as_array().ok_or(format!("{path} must be array"))?;
            if a.len() < min_items {
                return Err(format!("{path} must NOT have fewer than {min_items} items"));
            }
            match a.iter().position(|x| !x.is_string()) {
                Some(i) => Err(format!("{path}/{i} must be string")),
                None => Ok(()),
            }
        }
        Ty::Obj(props) => {
            let o = v.as_object().ok_or(format!("{path} must be object"))?;
            if let Some((name, _, _)) = props.iter().find(|(n, _, req)| *req && !o.contains_key(*n)) {
                return Err(format!("{path} must have required property '{name}'"));
            }
            for (name, t, _) in props {
                check(o.get(*name), *t, &format!("{path}/{name}"))?;
            }
            Ok(())
        }
    }
}

const ORDER: Ty = Ty::Enum(&["asc", "desc"]);
const LIST_BODY: Ty = Ty::Obj(&[
    ("prefix", Ty::Str, true),
    ("limit", Ty::Int { min: 1 }, false),
    ("offset", Ty::Int { min: 0 }, false),
    (
        "sortBy",
        Ty::Obj(&[
            (
                "column",
                Ty::Enum(&["name", "updated_at", "created_at", "last_accessed_at"]),
                true,
            ),
            ("order", ORDER, false),
        ]),
        false,
    ),
    ("search", Ty::Str, false),
]);
const LIST_V2_BODY: Ty = Ty::Obj(&[
    ("prefix", Ty::Str, false),
    ("limit", Ty::Int { min: 1 }, false),
    ("cursor", Ty::Str, false),
    ("with_delimiter", Ty::Bool, false),
    (
        "sortBy",
        Ty::Obj(&[
            ("column", Ty::Enum(&["name", "updated_at", "created_at"]), true),
            ("order", ORDER, false),
        ]),
        false,
    ),
]);
const DELETE_BODY: Ty = Ty::Obj(&[("prefixes", Ty::StrArray { min_items: 1 }, true)]);
const SIGN_BODY: Ty = Ty::Obj(&[("expiresIn", Ty::Int { min: 1 }, true)]);

/// The JSON body as fastify parses it: `None` unless the content type is JSON.
fn json_body(req: &Request) -> Result<Option<Value>, Reply> {
    let ct = req.header("content-type").unwrap_or("");
    if !ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .eq_ignore_ascii_case("application/json")
    {
        return Ok(None);
    }
    if req.body.is_empty() {
        return Err(fastify_error(
            "FastifyError",
            "Body cannot be empty when content-type is set to 'application/json'",
        ));
    }
    serde_json::from_slice(&req.body).map(Some).map_err(|_| {
        fastify_error(
            "FastifyError",
            "Body is not valid JSON but content-type is set to 'application/json'",
        )
    })
}

/// params, body, querystring, headers, in fastify's order; the parsed body back.
fn validate(route: &Route, req: &Request, query: &str, gateway_jwt: bool) -> Result<Value, Reply> {
    let schema = match route {
        Route::List(_) => Some(LIST_BODY),
        Route::ListV2(_) => Some(LIST_V2_BODY),
        Route::DeleteMany(_) => Some(DELETE_BODY),
        Route::Sign(..) => Some(SIGN_BODY),
        _ => None,
    };
    let mut body = Value::Null;
    if let Some(schema) = schema {
        let parsed = json_body(req)?;
        // An unparsed body is `undefined`, which a body schema rejects as not an object.
        let v = parsed.unwrap_or(Value::Null);
        if !v.is_object() {
            return Err(fastify_error("Error", "body must be object"));
        }
        check(Some(&v), schema, "body").map_err(|m| fastify_error("Error", &m))?;
        body = v;
    }
    if matches!(route, Route::SignedGet(..)) && query_value(query, "token").is_none() {
        return Err(fastify_error(
            "Error",
            "querystring must have required property 'token'",
        ));
    }
    if route.needs_authorization_header() && req.header("authorization").is_none() && !gateway_jwt {
        return Err(fastify_error(
            "Error",
            "headers must have required property 'authorization'",
        ));
    }
    Ok(body)
}

// ---------------------------------------------------------------------------------------------
// Authentication

struct Who {
    role: String,
    authenticated: bool,
}

impl Who {
    fn anon() -> Who {
        Who {
            role: "anon".into(),
            authenticated: false,
        }
    }

    /// service_role has BYPASSRLS; every other role meets row-level security with no policies.
    fn sees_all(&self) -> bool {
        self.role == "service_role"
    }
}

/// The JWT the server would see: `Authorization: Bearer …`, or the one the gateway makes for a
/// known `sb_…` key sent only as `apikey`.
enum Token {
    Header(String),
    Gateway(String),
    None,
}

fn token_of(req: &Request, st: &State) -> Token {
    if let Some(h) = req.header("authorization") {
        let t = if h.len() > 6 && h[..6].eq_ignore_ascii_case("bearer") && h[6..].starts_with(char::is_whitespace) {
            h[6..].trim_start()
        } else {
            h
        };
        return Token::Header(t.to_string());
    }
    match req.header("apikey") {
        Some(k) if !k.starts_with("eyJ") && st.keys.contains_key(k) => Token::Gateway(st.keys[k].clone()),
        _ => Token::None,
    }
}

/// The gateway's key check, before the request reaches the server.
fn gateway_check(req: &Request, st: &State) -> Result<(), Reply> {
    let Some(apikey) = req.header("apikey") else {
        return Err(gateway_refusal("No API key found in request"));
    };
    if !apikey.starts_with("eyJ") && !st.keys.contains_key(apikey) {
        return Err(gateway_refusal("Invalid API key"));
    }
    Ok(())
}

/// The server's JWT check: the caller, or jose's message for a JWT that does not verify.
fn authenticate(req: &Request, st: &State) -> Result<Who, String> {
    let jwt = match token_of(req, st) {
        Token::Gateway(role) => {
            return Ok(Who {
                role,
                authenticated: true,
            })
        }
        Token::Header(t) => t,
        Token::None => String::new(),
    };
    match st.keys.get(&jwt) {
        Some(role) if jwt.starts_with("eyJ") => Ok(Who {
            role: role.clone(),
            authenticated: true,
        }),
        _ if jwt.split('.').count() != 3 => Err("Invalid Compact JWS".into()),
        _ => Err("signature verification failed".into()),
    }
}

// ---------------------------------------------------------------------------------------------
// The server

fn handle(req: &Request, st: &mut State, origin: &str) -> Reply {
    st.log.push((
        req.method.clone(),
        req.target.clone(),
        req.header("authorization").is_some(),
    ));
    // The gateway: /storage/v1/… goes to the storage server as /….
    let url = match req.target.strip_prefix("/storage/v1") {
        Some(rest) if rest.starts_with('/') => rest.to_string(),
        _ => return basic_404(&req.method, &req.target),
    };
    let (raw_path, query) = match url.find(['?', '#']) {
        Some(i) => (&url[..i], &url[i + 1..]),
        None => (url.as_str(), ""),
    };
    let Ok((path, decode)) = fmw_decode_path(raw_path) else {
        return bad_url(&url);
    };
    let Some(route) = route(&req.method, &path, decode) else {
        return if path.starts_with("/object") || path.starts_with("/bucket") {
            rest_404(&req.method, &url)
        } else {
            basic_404(&req.method, &url)
        };
    };
    if route.access() != Access::Public {
        if let Err(r) = gateway_check(req, st) {
            return r;
        }
    }
    // fastify validates the request before its preHandler hooks check the JWT.
    let gateway_jwt = matches!(token_of(req, st), Token::Gateway(_));
    let body = match validate(&route, req, query, gateway_jwt) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let who = match route.access() {
        Access::Public => Who::anon(),
        access => match authenticate(req, st) {
            Ok(who) => who,
            Err(_) if access == Access::Lenient => Who::anon(),
            Err(message) => return access_denied(&message).rest(),
        },
    };
    if let Some(r) = injected(req, st, route.is_tus()) {
        return r;
    }
    let result = match route {
        Route::Status => Ok(reply(200, vec![], "")),
        Route::Version => Ok(reply(
            200,
            vec![("Content-Type", "text/plain; charset=utf-8".into())],
            SERVER_VERSION,
        )),
        Route::BucketList => Ok(bucket_list(st, &who)),
        Route::BucketGet(id) => bucket_get(st, &who, &id),
        Route::List(b) => list_v1(st, &who, &b, &body),
        Route::ListV2(b) => list_v2(st, &who, &b, &body),
        Route::DeleteMany(b) => delete_many(st, &who, &b, &body),
        Route::DeleteOne(b, k) => delete_one(st, &who, &b, &k),
        Route::Create { bucket, key, put } => create(st, &who, req, &bucket, &key, put),
        Route::Object {
            bucket,
            key,
            asset,
            lenient: _,
        } => object(st, &who, &bucket, &key, asset, query),
        Route::PublicObject(_) => Err(no_such_bucket()),
        Route::Sign(b, k) => sign(st, &who, &b, &k, raw_path, &body),
        Route::SignedGet(b, k) => signed_get(st, &b, &k, query),
        Route::TusOptions => Ok(tus_options(st)),
        Route::TusCreate | Route::Tus => return tus(st, &who, req, origin),
    };
    result.unwrap_or_else(|e| e.rest())
}

/// Injected faults, and `always_500_for`.
fn injected(req: &Request, st: &mut State, tus: bool) -> Option<Reply> {
    if let Some(frag) = &st.faults.always_500_for {
        let subject = format!(
            "{}\n{}\n{}",
            req.target,
            String::from_utf8_lossy(&req.body),
            tus_subject(req)
        );
        if subject.contains(frag.as_str()) {
            return Some(render_fault(Fault::InternalError, tus));
        }
    }
    let i = st.faults.rules.iter().position(|r| {
        r.method.as_deref().is_none_or(|m| m.eq_ignore_ascii_case(&req.method))
            && req.target.contains(r.path_contains.as_str())
            && r.times != Some(0)
    })?;
    let rule = &mut st.faults.rules[i];
    let fault = rule.fault;
    if let Some(n) = &mut rule.times {
        *n -= 1;
        if *n == 0 {
            st.faults.rules.remove(i);
        }
    }
    if fault == Fault::TakeName {
        let name = tus_file_id(&req.target)
            .and_then(|id| parse_upload_id(&id).ok())
            .map(|(_, name, _)| name)
            .unwrap_or_else(|| tus_subject(req));
        let bucket = st.main_bucket.clone();
        st.store(
            &bucket,
            &name,
            b"theirs".to_vec(),
            "text/plain".into(),
            "no-cache".into(),
            uuid(),
        );
        return None;
    }
    Some(render_fault(fault, tus))
}

fn bucket_json(st: &State, id: &str) -> Value {
    let t = iso(&st.started);
    let own = st.settings(id);
    json!({"id": id, "name": id, "owner": "", "public": false, "file_size_limit": own.file_size_limit,
           "allowed_mime_types": own.allowed_mime_types, "created_at": t, "updated_at": t})
}

fn bucket_list(st: &State, who: &Who) -> Reply {
    let all: Vec<Value> = if who.sees_all() {
        st.buckets.iter().map(|b| bucket_json(st, b)).collect()
    } else {
        Vec::new()
    };
    json_reply(200, &Value::Array(all))
}

fn bucket_get(st: &State, who: &Who, id: &str) -> Result<Reply, StorageError> {
    if who.sees_all() && st.buckets.contains(id) {
        Ok(json_reply(200, &bucket_json(st, id)))
    } else {
        Err(no_such_bucket())
    }
}

/// The `metadata` column as the S3 backend fills it.
fn metadata_json(meta: &ObjectMeta, data: &[u8]) -> Value {
    json!({"eTag": etag(meta, data), "size": data.len(), "mimetype": meta.mimetype, "cacheControl": meta.cache_control,
           "lastModified": iso(&meta.updated_at), "contentLength": data.len(), "httpStatusCode": 200})
}

/// A row of `storage.search` / list-v2 for a file.
fn file_row(name: &str, meta: &ObjectMeta, data: &[u8]) -> Value {
    json!({"name": name, "id": meta.id, "updated_at": iso(&meta.updated_at), "created_at": iso(&meta.created_at),
           "last_accessed_at": iso(&meta.updated_at), "metadata": metadata_json(meta, data)})
}

fn folder_row(name: &str) -> Value {
    json!({"name": name, "id": null, "updated_at": null, "created_at": null, "last_accessed_at": null, "metadata": null})
}

/// `POST /object/list/<bucket>`: `storage.search` — one folder level under `prefix` (made to end
/// in `/`), prefix matched case-insensitively, names relative to it, folders and files in one
/// order (by lower-cased name), `limit` (≤ 1500) after `offset`.
fn list_v1(st: &State, who: &Who, bucket: &str, q: &Value) -> Result<Reply, StorageError> {
    must_be_valid_bucket(bucket)?;
    if !who.sees_all() || !st.buckets.contains(bucket) {
        return Ok(json_reply(200, &json!([])));
    }
    let mut prefix = q["prefix"].as_str().unwrap_or("").to_string();
    if !prefix.is_empty() && !prefix.ends_with('/') {
        prefix.push('/');
    }
    let full = format!("{prefix}{}", q["search"].as_str().unwrap_or(""));
    let full_lower = full.to_ascii_lowercase();
    let limit = q["limit"].as_u64().unwrap_or(100).min(1500) as usize;
    let offset = q["offset"].as_u64().unwrap_or(0) as usize;
    let column = q["sortBy"]["column"].as_str().unwrap_or("name");
    let desc = q["sortBy"]["order"].as_str() == Some("desc");
    let objects = st.objects_of(bucket);
    let mut names: Vec<&String> = objects
        .keys()
        .filter(|n| n.to_ascii_lowercase().starts_with(&full_lower))
        .collect();
    names.sort_by_key(|n| n.to_ascii_lowercase());
    // Where the folder part of a name ends (its `/` after the prefix and search), if it has one.
    let folder_end = |n: &str| n[full.len()..].find('/').map(|i| full.len() + i);
    let mut rows = Vec::new();
    if column == "name" {
        if desc {
            names.reverse();
        }
        let mut last_folder: Option<String> = None;
        for n in names {
            match folder_end(n) {
                Some(end) => {
                    let folder = n[..=end].to_ascii_lowercase();
                    if last_folder.as_ref() == Some(&folder) {
                        continue;
                    }
                    last_folder = Some(folder);
                    rows.push(folder_row(&n[prefix.len()..end]));
                }
                None => {
                    let meta = st.meta_of(bucket, n);
                    rows.push(file_row(&n[prefix.len()..], &meta, &objects[n]));
                }
            }
        }
    } else {
        // Sorted by a timestamp: the folders first (by name), then the files by that column.
        let mut folders: Vec<String> = names
            .iter()
            .filter_map(|n| folder_end(n).map(|end| n[prefix.len()..end].to_string()))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut files: Vec<(&String, ObjectMeta)> = names
            .iter()
            .filter(|n| folder_end(n).is_none())
            .map(|n| (*n, st.meta_of(bucket, n)))
            .collect();
        files.sort_by_key(|(n, m)| {
            let t = match column {
                "created_at" => m.created_at,
                _ => m.updated_at,
            };
            (t, (*n).clone())
        });
        if desc {
            folders.reverse();
            files.reverse();
        }
        rows.extend(folders.iter().map(|f| folder_row(f)));
        rows.extend(files.iter().map(|(n, m)| file_row(&n[prefix.len()..], m, &objects[*n])));
    }
    let page: Vec<Value> = rows.into_iter().skip(offset).take(limit).collect();
    Ok(json_reply(200, &Value::Array(page)))
}

/// list-v2's continuation token: base64 of `l:<start after>\no:<order>\nc:<column>\na:<after>`.
fn encode_cursor(parts: &[(char, Option<&str>)]) -> String {
    let text: Vec<String> = parts
        .iter()
        .filter_map(|(k, v)| v.filter(|v| !v.is_empty()).map(|v| format!("{k}:{v}")))
        .collect();
    base64::engine::general_purpose::STANDARD.encode(text.join("\n"))
}

fn decode_cursor(token: &str) -> Result<HashMap<char, String>, StorageError> {
    let e = base64::engine::general_purpose::STANDARD;
    let bytes = e
        .decode(token)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(token.trim_end_matches('=')))
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token.trim_end_matches('=')))
        .map_err(|_| invalid_parameter("continuation token"))?;
    let text = String::from_utf8_lossy(&bytes);
    let mut out = HashMap::new();
    for part in text.split('\n') {
        let mut chars = part.chars();
        let (Some(k), Some(':')) = (chars.next(), chars.next()) else {
            return Err(invalid_parameter("continuation token"));
        };
        if k.is_whitespace() || !"loca".contains(k) {
            return Err(invalid_parameter("continuation token"));
        }
        out.insert(k, chars.as_str().to_string());
    }
    Ok(out)
}

/// `POST /object/list-v2/<bucket>`: names under `prefix` compared case-sensitively, in byte order
/// (or by a timestamp), up to `limit` (≤ 1000) a page with a cursor; `with_delimiter` folds
/// deeper names into `folders` ("a/b/").
fn list_v2(st: &State, who: &Who, bucket: &str, q: &Value) -> Result<Reply, StorageError> {
    must_be_valid_bucket(bucket)?;
    let limit = q["limit"].as_u64().unwrap_or(1000).clamp(1, 1000) as usize;
    let prefix = q["prefix"].as_str().unwrap_or("");
    let delimiter = q["with_delimiter"].as_bool().unwrap_or(false);
    let cursor = match q["cursor"].as_str().filter(|c| !c.is_empty()) {
        Some(c) => Some(decode_cursor(c)?),
        None => None,
    };
    let from_cursor = |k: char| cursor.as_ref().and_then(|c| c.get(&k).cloned());
    let order = from_cursor('o').or_else(|| q["sortBy"]["order"].as_str().map(String::from));
    let column = from_cursor('c').or_else(|| q["sortBy"]["column"].as_str().map(String::from));
    let after = from_cursor('a');
    let start_after = from_cursor('l').filter(|s| !s.is_empty());
    let desc = order.as_deref() == Some("desc");
    if !who.sees_all() || !st.buckets.contains(bucket) {
        return Ok(json_reply(
            200,
            &json!({"hasNext": false, "folders": [], "objects": []}),
        ));
    }
    let objects = st.objects_of(bucket);
    let by_time = |m: &ObjectMeta| match column.as_deref() {
        Some("created_at") => Some(m.created_at),
        Some("updated_at") => Some(m.updated_at),
        _ => None,
    };
    let mut names: Vec<(&String, ObjectMeta)> = objects
        .keys()
        .filter(|n| n.starts_with(prefix))
        .map(|n| (n, st.meta_of(bucket, n)))
        .collect();
    let time_sort = !delimiter && column.as_deref().is_some_and(|c| c != "name");
    if time_sort {
        names.sort_by_key(|(n, m)| (by_time(m), (*n).clone()));
    } else {
        names.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    }
    if desc {
        names.reverse();
    }
    if let Some(sa) = &start_after {
        let after_t = after.as_deref().and_then(|a| a.parse::<DateTime<Utc>>().ok());
        names.retain(|(n, m)| {
            let beyond = |o: std::cmp::Ordering| if desc { o.is_lt() } else { o.is_gt() };
            if time_sort {
                if let Some(at) = after_t {
                    let t = by_time(m).map(|t| t.timestamp_millis()).unwrap_or(0);
                    return beyond((t, n.as_bytes()).cmp(&(at.timestamp_millis(), sa.as_bytes())));
                }
            }
            beyond(n.as_bytes().cmp(sa.as_bytes())) && !(delimiter && sa.ends_with('/') && n.starts_with(sa.as_str()))
        });
    }
    let levels = if prefix.is_empty() {
        1
    } else {
        prefix.split('/').count()
    };
    let mut rows: Vec<(bool, Value, String, ObjectMeta)> = Vec::new(); // (is folder, row, name, meta)
    let mut last_folder = String::new();
    for (n, m) in names {
        if rows.len() > limit {
            break;
        }
        if delimiter {
            if let Some(i) = n[prefix.len()..].find('/') {
                let folder = &n[..prefix.len() + i + 1];
                if folder != last_folder {
                    last_folder = folder.to_string();
                    rows.push((true, json!({"id": null, "name": folder}), folder.to_string(), m));
                }
                continue;
            }
        }
        let mut row = file_row(n, &m, &objects[n]);
        if delimiter {
            row["key"] = Value::from(n.split('/').nth(levels - 1).unwrap_or(""));
        }
        rows.push((false, row, n.clone(), m));
    }
    let has_next = rows.len() > limit;
    rows.truncate(limit);
    let mut out = json!({"hasNext": has_next});
    if has_next {
        let (_, _, last, meta) = rows.last().unwrap();
        let after = if time_sort {
            by_time(meta).map(|t| iso(&t))
        } else {
            None
        };
        out["nextCursor"] = Value::from(encode_cursor(&[
            ('l', Some(last.as_str())),
            ('o', order.as_deref()),
            ('c', column.as_deref()),
            ('a', after.as_deref()),
        ]));
        out["nextCursorKey"] = Value::from(last.as_str());
    }
    let (folders, files): (Vec<_>, Vec<_>) = rows.into_iter().partition(|r| r.0);
    out["folders"] = Value::Array(folders.into_iter().map(|r| r.1).collect());
    out["objects"] = Value::Array(files.into_iter().map(|r| r.1).collect());
    Ok(json_reply(200, &out))
}

/// `DELETE /object/<bucket>` `{"prefixes":[…]}`: exact names, at most 1000 (the hard limit the
/// docs state); back the rows deleted, which is none for a role under row-level security or a
/// bucket that does not exist.
fn delete_many(st: &mut State, who: &Who, bucket: &str, q: &Value) -> Result<Reply, StorageError> {
    let prefixes: Vec<String> = q["prefixes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    if prefixes.len() > 1000 {
        return Err(invalid_request(
            "Bulk object requests are limited to 1000 objects per request.",
        ));
    }
    must_be_valid_bucket(bucket)?;
    if !who.sees_all() || !st.buckets.contains(bucket) || st.faults.silent_deletes {
        return Ok(json_reply(200, &json!([])));
    }
    let mut seen = HashSet::new();
    let mut deleted = Vec::new();
    for p in prefixes {
        if !seen.insert(p.clone()) {
            continue;
        }
        let meta = st.meta_of(bucket, &p);
        if let Some(data) = st.objects_mut(bucket).remove(&p) {
            st.meta.remove(&(bucket.to_string(), p.clone()));
            let mut row = file_row(&p, &meta, &data);
            row["bucket_id"] = Value::from(bucket);
            row["version"] = Value::from(meta.version.as_str());
            row["user_metadata"] = Value::Null;
            deleted.push(row);
        }
    }
    Ok(json_reply(200, &Value::Array(deleted)))
}

/// `DELETE /object/<bucket>/<key>`: found as the superuser (the key is not checked), deleted under
/// row-level security.
fn delete_one(st: &mut State, who: &Who, bucket: &str, key: &str) -> Result<Reply, StorageError> {
    must_be_valid_bucket(bucket)?;
    if !st.exists(bucket, key) {
        return Err(no_such_key());
    }
    if !who.sees_all() {
        return Err(access_denied("Access denied"));
    }
    st.objects_mut(bucket).remove(key);
    st.meta.remove(&(bucket.to_string(), key.to_string()));
    Ok(json_reply(200, &json!({"message": "Successfully deleted"})))
}

/// `POST /object/<bucket>/<key>` (`x-upsert: true` to overwrite) and `PUT` (always overwrites).
fn create(st: &mut State, who: &Who, req: &Request, bucket: &str, key: &str, put: bool) -> Result<Reply, StorageError> {
    must_be_valid_bucket(bucket)?;
    if st.faults.fail_uploads > 0 {
        st.faults.fail_uploads -= 1;
        return Ok(gateway_status(503));
    }
    if !st.buckets.contains(bucket) {
        return Err(no_such_bucket());
    }
    // fileUploadFromRequest: the type first, then the size, both before the name is looked at.
    let mimetype = req
        .header("content-type")
        .filter(|t| !t.is_empty())
        .unwrap_or("application/octet-stream")
        .to_string();
    if let Some(allowed) = st.settings(bucket).allowed_mime_types.filter(|a| !a.is_empty()) {
        check_mime_type(&mimetype, &allowed)?;
    }
    if req.body.len() as u64 > st.standard_max(bucket) {
        return Err(entity_too_large());
    }
    must_be_valid_key(key)?;
    if !who.sees_all() {
        return Err(rls_denied());
    }
    let upsert = put || req.header("x-upsert") == Some("true");
    if st.exists(bucket, key) && !upsert {
        return Err(key_already_exists());
    }
    let cache = req.header("cache-control").unwrap_or("no-cache").to_string();
    st.store(bucket, key, req.body.clone(), mimetype, cache, uuid());
    let id = st.meta_of(bucket, key).id;
    Ok(json_reply(200, &json!({"Id": id, "Key": format!("{bucket}/{key}")})))
}

/// The headers of an asset answer (`Renderer.setHeaders`).
fn asset_headers(meta: &ObjectMeta, data: &[u8]) -> Vec<(&'static str, String)> {
    let ct = if meta.mimetype.contains("text/html") {
        "text/plain".to_string()
    } else {
        meta.mimetype.clone()
    };
    vec![
        ("Accept-Ranges", "bytes".into()),
        ("Content-Type", ct),
        ("ETag", etag(meta, data)),
        ("X-Robots-Tag", "none".into()),
        ("Last-Modified", http_date(&meta.updated_at)),
        ("Cache-Control", meta.cache_control.clone()),
    ]
}

/// `GET /object/authenticated/…`, `HEAD /object/authenticated/…`, `GET /object/info/authenticated/…`
/// and their `allowInvalidJwt` twins without `authenticated/`.
fn object(st: &State, who: &Who, bucket: &str, key: &str, asset: Asset, query: &str) -> Result<Reply, StorageError> {
    // The bucket is looked up as the superuser (a private bucket needs an authenticated caller),
    // the object under row-level security.
    if !who.authenticated || !st.buckets.contains(bucket) {
        return Err(no_such_bucket());
    }
    must_be_valid_key(key)?;
    if !who.sees_all() || !st.exists(bucket, key) {
        return Err(no_such_key());
    }
    let data = &st.objects_of(bucket)[key];
    let meta = st.meta_of(bucket, key);
    Ok(match asset {
        Asset::Info => {
            let body = json!({"id": meta.id, "name": key, "version": meta.version, "bucket_id": bucket,
                "size": data.len(), "content_type": meta.mimetype, "cache_control": meta.cache_control,
                "etag": etag(&meta, data), "metadata": null, "last_modified": iso(&meta.updated_at),
                "created_at": iso(&meta.created_at)});
            let mut r = json_reply(200, &body);
            r.headers.push(("ETag".into(), etag(&meta, data)));
            r.headers.push(("Last-Modified".into(), http_date(&meta.updated_at)));
            r.headers.push(("Cache-Control".into(), meta.cache_control.clone()));
            r
        }
        Asset::Head | Asset::Body => {
            let mut headers = asset_headers(&meta, data);
            if let Some(name) = query_value(query, "download") {
                headers.push((
                    "Content-Disposition",
                    if name.is_empty() {
                        "attachment;".into()
                    } else {
                        let enc = encode_uri_component(&name);
                        format!("attachment; filename={enc}; filename*=UTF-8''{enc}")
                    },
                ));
            }
            // A HEAD answer is written without its body, but with its length.
            reply(200, headers, data.clone())
        }
    })
}

/// JavaScript's `encodeURIComponent`.
fn encode_uri_component(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A signed-URL token: a JWT-shaped `{"url","scope","iat","exp"}` the stub can check.
fn sign_token(st: &State, url: &str, expires_in: i64) -> String {
    use sha2::Digest;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let now = Utc::now().timestamp();
    let head = b64(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = b64(
        json!({"url": url, "scope": "download", "iat": now, "exp": now + expires_in})
            .to_string()
            .as_bytes(),
    );
    let sig = b64(&sha2::Sha256::digest(format!("{}.{head}.{payload}", st.signing_secret)));
    format!("{head}.{payload}.{sig}")
}

/// `POST /object/sign/<bucket>/<key>` `{"expiresIn":N}` → `{"signedURL":"/object/sign/…?token=…"}`.
fn sign(st: &State, who: &Who, bucket: &str, key: &str, raw_path: &str, q: &Value) -> Result<Reply, StorageError> {
    must_be_valid_bucket(bucket)?;
    must_be_valid_key(key)?;
    if !who.sees_all() || !st.exists(bucket, key) {
        return Err(no_such_key());
    }
    // The server signs the path as sent, `decodeURI`-decoded (reserved escapes stay escaped).
    let signed_path = raw_path.strip_prefix("/object/sign/").unwrap_or("");
    let url = decode_uri(signed_path).unwrap_or_default();
    let token = sign_token(st, &url, q["expiresIn"].as_i64().unwrap_or(60));
    Ok(json_reply(
        200,
        &json!({"signedURL": format!("/object/sign/{url}?token={token}")}),
    ))
}

/// `GET /object/sign/<bucket>/<key>?token=…`.
fn signed_get(st: &State, bucket: &str, key: &str, query: &str) -> Result<Reply, StorageError> {
    use sha2::Digest;
    let token = query_value(query, "token").unwrap_or_default();
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        return Err(invalid_jwt("Invalid Compact JWS"));
    }
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let expect = b64.encode(sha2::Sha256::digest(format!(
        "{}.{}.{}",
        st.signing_secret, parts[0], parts[1]
    )));
    if parts[2] != expect {
        return Err(invalid_jwt("signature verification failed"));
    }
    let payload: Value = b64
        .decode(parts[1])
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let exp = payload["exp"].as_i64().unwrap_or(0);
    if exp < Utc::now().timestamp() {
        return Err(invalid_jwt("\"exp\" claim timestamp check failed"));
    }
    if payload["url"].as_str() != Some(&format!("{bucket}/{key}")) {
        return Err(invalid_signature());
    }
    if !st.exists(bucket, key) {
        return Err(no_such_key());
    }
    let data = &st.objects_of(bucket)[key];
    let meta = st.meta_of(bucket, key);
    let mut headers = asset_headers(&meta, data);
    headers.retain(|(k, _)| *k != "Cache-Control");
    headers.push((
        "Expires",
        http_date(&DateTime::from_timestamp(exp, 0).unwrap_or_default()),
    ));
    Ok(reply(200, headers, data.clone()))
}

// ---------------------------------------------------------------------------------------------
// TUS (`/upload/resumable`)

/// tus' `Metadata.parse`: `key base64,key,…`, strictly.
fn parse_tus_metadata(raw: &str) -> Option<Vec<(String, Option<String>)>> {
    if raw.trim().is_empty() {
        return None;
    }
    let mut out: Vec<(String, Option<String>)> = Vec::new();
    for pair in raw.split(',') {
        let tokens: Vec<&str> = pair.split(' ').collect();
        let key = tokens[0];
        let key_ok = !key.is_empty() && key.bytes().all(|b| b < 128 && b != b' ' && b != b',');
        if !key_ok || tokens.len() > 2 || out.iter().any(|(k, _)| k == key) {
            return None;
        }
        let value = match tokens.get(1) {
            None => None,
            Some(v) => {
                if v.len() % 4 != 0 {
                    return None;
                }
                let bytes = base64::engine::general_purpose::STANDARD.decode(v).ok()?;
                Some(String::from_utf8_lossy(&bytes).into_owned())
            }
        };
        out.push((key.to_string(), value));
    }
    Some(out)
}

fn stringify_tus_metadata(meta: &[(String, Option<String>)]) -> String {
    meta.iter()
        .map(|(k, v)| match v {
            Some(v) => format!("{k} {}", base64::engine::general_purpose::STANDARD.encode(v)),
            None => k.clone(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn meta_value<'a>(meta: &'a [(String, Option<String>)], key: &str) -> Option<&'a str> {
    meta.iter().find(|(k, _)| k == key).and_then(|(_, v)| v.as_deref())
}

/// The object names a TUS request is about (for `always_500_for`).
fn tus_subject(req: &Request) -> String {
    if !req.target.contains("/upload/resumable") {
        return String::new();
    }
    let from_meta = req
        .header("upload-metadata")
        .and_then(parse_tus_metadata)
        .and_then(|m| meta_value(&m, "objectName").map(String::from));
    from_meta.or_else(|| tus_file_id(&req.target)).unwrap_or_default()
}

/// `getFileIdFromRequest`: the last path segment, base64url-decoded (`bucket/name/version`).
fn tus_file_id(target: &str) -> Option<String> {
    let path = target.split(['?', '#']).next().unwrap_or("");
    let last = path.trim_end_matches('/').rsplit('/').next()?;
    if last.is_empty() || "/upload/resumable".contains(last) {
        return None;
    }
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let bytes = e
        .decode(last.trim_end_matches('='))
        .unwrap_or_else(|_| last.as_bytes().to_vec());
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// `UploadId.fromString` (path separator): `bucket/name…/version`, each part checked.
fn parse_upload_id(id: &str) -> Result<(String, String, String), StorageError> {
    // `tenant/` goes in front of the id: fewer than 3 parts with it is an invalid id.
    let all: Vec<&str> = id.split('/').collect();
    if all.len() < 2 {
        return Err(invalid_upload_id("Invalid upload id"));
    }
    let bucket = all[0];
    let version = *all.last().unwrap();
    let name = all[1..all.len() - 1].join("/");
    if version.is_empty() {
        return Err(invalid_upload_id("Version not provided"));
    }
    must_be_valid_bucket(bucket)?;
    must_be_valid_key(&name)?;
    Ok((bucket.to_string(), name, version.to_string()))
}

fn tus_options(st: &State) -> Reply {
    let mut h = tus_headers();
    h.push(("Tus-Version", "1.0.0".into()));
    h.push((
        "Tus-Extension",
        "creation,creation-with-upload,creation-defer-length,termination,expiration".into(),
    ));
    if let Some(max) = st.tus_max_size {
        h.push(("Tus-Max-Size", max.to_string()));
    }
    h.push((
        "Access-Control-Allow-Methods",
        "POST, HEAD, PATCH, OPTIONS, DELETE".into(),
    ));
    h.push(("Access-Control-Max-Age", "86400".into()));
    reply(204, h, "")
}

fn tus(st: &mut State, who: &Who, req: &Request, origin: &str) -> Reply {
    if req.header("tus-resumable").is_none() {
        return tus_text(412, "Tus-Resumable Required\n");
    }
    let invalid: Vec<&str> = req
        .headers
        .iter()
        .filter(|(name, value)| {
            let v = value.as_str();
            let is_int = |v: &str| v.parse::<u64>().is_ok_and(|n| n.to_string() == v);
            match name.as_str() {
                "upload-offset" | "upload-length" => !is_int(v),
                "upload-defer-length" => v != "1",
                "upload-metadata" => parse_tus_metadata(v).is_none(),
                "x-forwarded-proto" => v != "http" && v != "https",
                "tus-version" | "tus-resumable" => v != "1.0.0",
                "content-type" => req.method == "PATCH" && v != "application/offset+octet-stream",
                "upload-concat" => v != "partial" && !v.starts_with("final;"),
                _ => false,
            }
        })
        .map(|(name, _)| name.as_str())
        .collect();
    if !invalid.is_empty() {
        return tus_text(400, &format!("Invalid {}\n", invalid.join(" ")));
    }
    let result = match req.method.as_str() {
        "POST" => tus_create(st, who, req, origin),
        "PATCH" => tus_patch(st, who, req),
        "HEAD" => tus_head(st, req),
        "DELETE" => tus_delete(st, who, req),
        _ => Ok(tus_text(404, "Not found\n")),
    };
    result.unwrap_or_else(|e| e.tus())
}

/// `canUpload`: an insert (or upsert) tried and rolled back.
fn can_upload(st: &State, who: &Who, bucket: &str, name: &str, upsert: bool) -> Result<(), StorageError> {
    if !who.sees_all() {
        return Err(rls_denied());
    }
    if !upsert && st.exists(bucket, name) {
        return Err(key_already_exists());
    }
    Ok(())
}

fn tus_error(status: u16, body: &str) -> StorageError {
    StorageError::new(status, "TusError", None, body)
}

fn upload_expired(st: &State, up: &TusUpload) -> bool {
    !up.done() && Utc::now() > up.created + st.tus_expiry
}

fn expired_at(st: &State, up: &TusUpload, held: u64) -> bool {
    up.length != Some(held) && Utc::now() > up.created + st.tus_expiry
}

/// Finishing an upload (`onUploadFinish` → `completeUpload`).
fn tus_finish(st: &mut State, id: &str, upsert: bool) -> Result<(), StorageError> {
    let (up, _) = st.uploads[id].described();
    if !upsert && st.exists(&up.bucket, &up.name) {
        return Err(key_already_exists());
    }
    // The upload keeps its bytes (a finished upload stays known), the object gets a copy.
    let data = st.uploads[id].data.clone();
    let mimetype = meta_value(&up.metadata, "contentType")
        .unwrap_or("application/octet-stream")
        .to_string();
    let cache = meta_value(&up.metadata, "cacheControl")
        .unwrap_or("no-cache")
        .to_string();
    st.store(&up.bucket, &up.name, data, mimetype, cache, up.version);
    Ok(())
}

fn tus_create(st: &mut State, who: &Who, req: &Request, origin: &str) -> Result<Reply, StorageError> {
    if st.faults.fail_uploads > 0 {
        st.faults.fail_uploads -= 1;
        return Ok(gateway_status(503));
    }
    let length = req.header("upload-length");
    let defer = req.header("upload-defer-length");
    if length.is_none() == defer.is_none() {
        return Err(tus_error(400, "Upload-Length or Upload-Defer-Length header required\n"));
    }
    // A deferred length (S3Store and FileStore both have creation-defer-length) is declared by a
    // later PATCH.
    let length = length.and_then(|l| l.parse::<u64>().ok());
    let Some(mut metadata) = req.header("upload-metadata").and_then(parse_tus_metadata) else {
        return Err(invalid_request("Metadata header is required"));
    };
    let bucket = meta_value(&metadata, "bucketName").unwrap_or("").to_string();
    let name = meta_value(&metadata, "objectName").unwrap_or("").to_string();
    must_be_valid_bucket(&bucket)?;
    must_be_valid_key(&name)?;
    if !st.buckets.contains(&bucket) {
        return Err(no_such_bucket());
    }
    let max = st.tus_max(&bucket);
    if let (Some(max), Some(length)) = (max, length) {
        if length > max {
            return Err(tus_error(413, "Maximum size exceeded\n"));
        }
    }
    let upsert = req.header("x-upsert") == Some("true");
    can_upload(st, who, &bucket, &name, upsert)?;
    // onCreate: the declared type against the bucket's list, whenever the list is not null.
    if let (Some(ty), Some(allowed)) = (
        meta_value(&metadata, "contentType"),
        st.settings(&bucket).allowed_mime_types,
    ) {
        if !ty.is_empty() {
            check_mime_type(ty, &allowed)?;
        }
    }
    // onCreate: a number of seconds becomes max-age, anything else no-cache.
    let cache = match meta_value(&metadata, "cacheControl") {
        Some(c) if c.trim_start_matches('-').parse::<i64>().is_ok() => format!("max-age={c}"),
        _ => "no-cache".to_string(),
    };
    metadata.retain(|(k, _)| k != "cacheControl");
    metadata.push(("cacheControl".into(), Some(cache)));
    let version = uuid();
    let id = format!("{bucket}/{name}/{version}");
    let now = Utc::now();
    let mut up = TusUpload {
        bucket,
        name,
        version,
        length,
        data: Vec::new(),
        metadata,
        created: now,
    };
    let mut headers = tus_headers();
    // creation-with-upload
    if req.header("content-type") == Some("application/offset+octet-stream") && !req.body.is_empty() {
        // calculateMaxBodySize: the length, or (deferred) the maximum size.
        if length.or(max).is_some_and(|max| req.body.len() as u64 > max) {
            return Err(tus_error(413, "upload's size exceeded\n"));
        }
        up.data.extend_from_slice(&req.body);
        headers.push(("Upload-Offset", up.data.len().to_string()));
    }
    let done = up.done();
    st.uploads.insert(id.clone(), up);
    if done {
        tus_finish(st, &id, upsert)?;
        headers.push(("Tus-Complete", "1".into()));
    } else {
        headers.push(("Upload-Expires", http_date(&(now + st.tus_expiry))));
    }
    let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&id);
    let origin = st.tus_location_origin.as_deref().unwrap_or(origin);
    headers.push(("Location", format!("{origin}/storage/v1/upload/resumable/{encoded}")));
    Ok(reply(201, headers, ""))
}

/// The upload a PATCH / HEAD / DELETE names, checked the way `onIncomingRequest` checks it.
fn tus_target(req: &Request) -> Result<String, StorageError> {
    let Some(id) = tus_file_id(&req.target) else {
        return Err(tus_error(404, "The file for this url was not found\n"));
    };
    parse_upload_id(&id)?;
    Ok(id)
}

fn tus_patch(st: &mut State, who: &Who, req: &Request) -> Result<Reply, StorageError> {
    if tus_file_id(&req.target).is_none() {
        return Err(tus_error(404, "The file for this url was not found\n"));
    }
    let Some(offset) = req.header("upload-offset") else {
        return Err(tus_error(403, "Upload-Offset header required\n"));
    };
    let offset: u64 = offset.parse().unwrap_or(u64::MAX);
    if req.header("content-type").is_none() {
        return Err(tus_error(403, "Content-Type header required\n"));
    }
    let id = tus_target(req)?;
    let Some((up, held)) = st.uploads.get(&id).map(TusUpload::described) else {
        return Err(tus_error(404, "The file for this url was not found\n"));
    };
    let upsert = req.header("x-upsert") == Some("true");
    can_upload(st, who, &up.bucket, &up.name, upsert)?;
    if !st.buckets.contains(&up.bucket) {
        return Err(no_such_bucket());
    }
    if expired_at(st, &up, held) {
        return Err(tus_error(410, "The file for this url no longer exists\n"));
    }
    if offset != held {
        return Err(tus_error(409, "Upload-Offset conflict\n"));
    }
    // PatchHandler: an Upload-Length declares a deferred length, once, and not below the offset.
    let mut length = up.length;
    if let Some(declared) = req.header("upload-length").and_then(|l| l.parse::<u64>().ok()) {
        if length.is_some() || declared < offset {
            return Err(tus_error(400, "Upload-Length or Upload-Defer-Length header required\n"));
        }
        if st.tus_max(&up.bucket).is_some_and(|max| declared > max) {
            return Err(tus_error(413, "Maximum size exceeded\n"));
        }
        length = Some(declared);
        st.uploads.get_mut(&id).unwrap().length = length;
    }
    if length
        .or(st.tus_max(&up.bucket))
        .is_some_and(|max| offset + req.body.len() as u64 > max)
    {
        return Err(tus_error(413, "upload's size exceeded\n"));
    }
    if st.faults.break_next_patch {
        st.faults.break_next_patch = false;
        let up = st.uploads.get_mut(&id).unwrap();
        up.data.extend_from_slice(&req.body[..req.body.len() / 2]);
        return Err(tus_error(500, "Something went wrong receiving the file\n"));
    }
    let up = st.uploads.get_mut(&id).unwrap();
    up.data.extend_from_slice(&req.body);
    let (new_offset, done, created) = (up.data.len(), up.done(), up.created);
    let mut headers = tus_headers();
    headers.push(("Upload-Offset", new_offset.to_string()));
    if done {
        tus_finish(st, &id, upsert)?;
        headers.push(("Tus-Complete", "1".into()));
    } else {
        headers.push(("Upload-Expires", http_date(&(created + st.tus_expiry))));
    }
    Ok(reply(204, headers, ""))
}

fn tus_head(st: &State, req: &Request) -> Result<Reply, StorageError> {
    let id = tus_target(req)?;
    let Some(up) = st.uploads.get(&id) else {
        return Err(tus_error(404, "The file for this url was not found\n"));
    };
    if upload_expired(st, up) {
        return Err(tus_error(410, "The file for this url no longer exists\n"));
    }
    let mut headers = tus_headers();
    headers.push(("Cache-Control", "no-store".into()));
    headers.push(("Upload-Offset", up.data.len().to_string()));
    match up.length {
        Some(length) => headers.push(("Upload-Length", length.to_string())),
        // As long as the length is not known, HEAD says so.
        None => headers.push(("Upload-Defer-Length", "1".into())),
    }
    headers.push(("Upload-Metadata", stringify_tus_metadata(&up.metadata)));
    Ok(reply(200, headers, ""))
}

fn tus_delete(st: &mut State, who: &Who, req: &Request) -> Result<Reply, StorageError> {
    let id = tus_target(req)?;
    let Some((up, held)) = st.uploads.get(&id).map(TusUpload::described) else {
        return Err(tus_error(404, "The file for this url was not found\n"));
    };
    let upsert = req.header("x-upsert") == Some("true");
    can_upload(st, who, &up.bucket, &up.name, upsert)?;
    if up.length == Some(held) {
        return Err(tus_error(400, "Cannot terminate an already completed upload"));
    }
    st.uploads.remove(&id);
    Ok(reply(204, tus_headers(), ""))
}

#[cfg(test)]
#[path = "supabase_stub_tests.rs"]
mod tests;
