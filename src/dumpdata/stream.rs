//! The second reading: the dumpdata file as the native format's version 2 stream (header, each
//! table's rows after its marker, the many-to-many tables, the sequences, the end), produced on a
//! thread and read through a bounded channel.

use std::io::{BufRead, BufReader, Read};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;

use anyhow::Result;

use super::parse::Objects;
use super::plan::Plan;
use super::Opener;
use crate::jsonl::Header;

const CHUNK: usize = 256 * 1024;

pub fn start(plan: Arc<Plan>, header: Header, open: Opener) -> Box<dyn BufRead + Send> {
    let (tx, rx) = sync_channel::<Result<Vec<u8>, String>>(4);
    std::thread::spawn(move || {
        let mut out = Out {
            tx,
            buf: Vec::new(),
            gone: false,
        };
        if let Err(e) = produce(&plan, &header, &open, &mut out) {
            let _ = out.tx.send(Err(format!("{e:#}")));
        }
    });
    Box::new(BufReader::with_capacity(
        CHUNK,
        Chunks {
            rx,
            cur: Vec::new(),
            pos: 0,
        },
    ))
}

struct Out {
    tx: SyncSender<Result<Vec<u8>, String>>,
    buf: Vec<u8>,
    /// The reader went away (the load failed): stop quietly.
    gone: bool,
}

impl Out {
    fn line(&mut self, line: &[u8]) {
        self.buf.extend_from_slice(line);
        if self.buf.len() >= CHUNK {
            self.flush();
        }
    }
    fn marker(&mut self, marker: &impl serde::Serialize) -> Result<()> {
        let mut line = serde_json::to_vec(marker)?;
        line.push(b'\n');
        self.line(&line);
        Ok(())
    }
    fn flush(&mut self) {
        if !self.buf.is_empty() && !self.gone {
            self.gone = self.tx.send(Ok(std::mem::take(&mut self.buf))).is_err();
        }
        self.buf.clear();
    }
}

fn produce(plan: &Plan, header: &Header, open: &Opener, out: &mut Out) -> Result<()> {
    out.marker(header)?;
    let mut current: Option<usize> = None;
    let mut line = Vec::new();
    let mut objects = Objects::new(open()?);
    while let Some(o) = objects.next_object()? {
        if out.gone {
            return Ok(());
        }
        let i = plan.model_of(&o, objects.number)?;
        if current != Some(i) {
            out.marker(&("table", plan.spec(i)))?;
            current = Some(i);
        }
        line.clear();
        plan.row(i, &o, objects.number, &mut line)?;
        out.line(&line);
    }
    // Each many-to-many table: one more reading, its pairs numbered in the file's order.
    for t in 0..plan.throughs.len() {
        out.marker(&("table", plan.through_spec(t)))?;
        let (model, _) = plan.through_of(t);
        let mut n = 0u64;
        let mut objects = Objects::new(open()?);
        while let Some(o) = objects.next_object()? {
            if out.gone {
                return Ok(());
            }
            if plan.model_of(&o, objects.number)? != model {
                continue;
            }
            plan.pairs(model, &o, objects.number, &mut |which, pair| {
                if which == t {
                    n += 1;
                    line.clear();
                    plan.with_id(t, n, pair, &mut line);
                    out.line(&line);
                }
                Ok(())
            })?;
        }
    }
    out.marker(&("sequences", plan.sequences()))?;
    out.marker(&(
        "end",
        serde_json::json!({"tables": header.tables.len(), "rows": plan.rows}),
    ))?;
    out.flush();
    Ok(())
}

/// The channel's chunks as a byte stream; an error the producer sent is the reader's error.
struct Chunks {
    rx: Receiver<Result<Vec<u8>, String>>,
    cur: Vec<u8>,
    pos: usize,
}

impl Read for Chunks {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    self.cur = chunk;
                    self.pos = 0;
                }
                Ok(Err(message)) => return Err(std::io::Error::other(message)),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..n + self.pos]);
        self.pos += n;
        Ok(n)
    }
}
