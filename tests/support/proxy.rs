//! A TCP proxy in front of the test cluster that forwards everything, and once (the first time a
//! client sends `COMMIT` as a simple query) passes that COMMIT on to the server and then cuts the
//! client off: the server commits, the client never hears back. What a network failure at the worst
//! moment looks like.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub struct CutAtCommit {
    pub port: u16,
    /// How many connections were cut (0 or 1).
    pub cuts: Arc<AtomicUsize>,
}

impl CutAtCommit {
    /// Listens on a free port of 127.0.0.1 and forwards to `upstream` (a port of 127.0.0.1).
    pub fn start(upstream: u16) -> CutAtCommit {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let armed = Arc::new(AtomicBool::new(true));
        let cuts = Arc::new(AtomicUsize::new(0));
        let counter = cuts.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let (armed, cuts) = (armed.clone(), counter.clone());
                std::thread::spawn(move || {
                    if let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) {
                        relay(client, server, &armed, &cuts);
                    }
                });
            }
        });
        CutAtCommit { port, cuts }
    }

    /// `url` (of the test cluster) pointed at the proxy instead.
    pub fn url(&self, url: &str) -> String {
        let (before, after) = url.rsplit_once('@').unwrap();
        let (_, path) = after.split_once('/').unwrap();
        format!("{before}@127.0.0.1:{}/{path}", self.port)
    }
}

fn relay(mut client: TcpStream, server: TcpStream, armed: &AtomicBool, cuts: &AtomicUsize) {
    let cut = Arc::new(AtomicBool::new(false));
    // Server to client: plain copy, dropped once the client is cut off.
    {
        let (mut from, mut to, cut) = (server.try_clone().unwrap(), client.try_clone().unwrap(), cut.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 16384];
            while let Ok(n) = from.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if !cut.load(Ordering::SeqCst) && to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            let _ = to.shutdown(Shutdown::Both);
        });
    }
    let mut server = server;
    // Client to server: message by message, so a COMMIT is recognised.
    let mut startup = true;
    loop {
        let message = if startup {
            read_startup(&mut client)
        } else {
            read_typed(&mut client)
        };
        let Some(message) = message else { break };
        // Decided before the COMMIT goes out, so that not even a quick answer gets back.
        let cut_now = !startup && is_commit(&message) && armed.swap(false, Ordering::SeqCst);
        if cut_now {
            cut.store(true, Ordering::SeqCst);
        }
        if server.write_all(&message).is_err() {
            break;
        }
        if startup {
            // SSLRequest and GSSENCRequest are answered with one byte; the real startup follows.
            let code = u32::from_be_bytes([message[4], message[5], message[6], message[7]]);
            startup = code == 80877103 || code == 80877104;
            continue;
        }
        if cut_now {
            cuts.fetch_add(1, Ordering::SeqCst);
            let _ = client.shutdown(Shutdown::Both);
            // Give the server time to carry the COMMIT out, then hang up on it too.
            std::thread::sleep(Duration::from_millis(500));
            let _ = server.shutdown(Shutdown::Both);
            return;
        }
    }
    let _ = server.shutdown(Shutdown::Both);
}

fn read_startup(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let n = u32::from_be_bytes(len) as usize;
    let mut msg = len.to_vec();
    msg.resize(n.max(8), 0);
    s.read_exact(&mut msg[4..]).ok()?;
    Some(msg)
}

fn read_typed(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = [0u8; 5];
    s.read_exact(&mut head).ok()?;
    let n = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let mut msg = head.to_vec();
    msg.resize(1 + n, 0);
    s.read_exact(&mut msg[5..]).ok()?;
    Some(msg)
}

/// A simple-protocol `Query` whose text is COMMIT (any case, optional `;`, whitespace).
fn is_commit(msg: &[u8]) -> bool {
    if msg[0] != b'Q' {
        return false;
    }
    let text = String::from_utf8_lossy(&msg[5..]);
    let text = text.trim_end_matches('\0').trim().trim_end_matches(';').trim();
    text.eq_ignore_ascii_case("commit")
}
