//! A file another thread is still writing (the spool while the dump runs), so a backend can upload
//! it as it grows. The writer says how far the file is readable ([`Grower::grew`]) and, at the end,
//! either that it is complete and valid ([`Grower::complete`]) or nothing (dropped): an abandoned
//! file, which a backend must never turn into an object.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

use super::StorageError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Growth {
    /// This many bytes are in the file and will not change.
    Writing(u64),
    /// The file is whole: this many bytes.
    Complete(u64),
    /// The writer gave up (the dump failed or was stopped).
    Abandoned,
}

/// The writer's side. Dropped without [`complete`](Self::complete), the file is abandoned.
pub struct Grower {
    tx: watch::Sender<Growth>,
    done: bool,
    given_up: Arc<AtomicBool>,
}

impl Grower {
    /// Whether the reader gave the file up ([`GrowingFile::give_up`]): writing more is pointless.
    pub fn given_up(&self) -> bool {
        self.given_up.load(Ordering::Relaxed)
    }

    /// The flag behind [`given_up`](Self::given_up), for a thread that watches it (one that ends a
    /// dump which writes nothing for a while).
    pub fn given_up_flag(&self) -> Arc<AtomicBool> {
        self.given_up.clone()
    }

    /// Bytes `..len` of the file are written and final.
    pub fn grew(&self, len: u64) {
        self.tx.send_replace(Growth::Writing(len));
    }

    /// The file is whole and may become an object.
    pub fn complete(mut self, len: u64) {
        self.done = true;
        self.tx.send_replace(Growth::Complete(len));
    }
}

impl Drop for Grower {
    fn drop(&mut self) {
        if !self.done {
            self.tx.send_replace(Growth::Abandoned);
        }
    }
}

/// What [`GrowingFile::wait_for`] saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Bytes readable now.
    pub len: u64,
    /// The file will not grow any more.
    pub complete: bool,
}

/// The reader's side: a path and how much of it can be read. Clones watch the same file.
#[derive(Clone)]
pub struct GrowingFile {
    path: PathBuf,
    rx: watch::Receiver<Growth>,
    given_up: Arc<AtomicBool>,
}

impl GrowingFile {
    /// A file being written at `path`, and the handle its writer reports through.
    pub fn new(path: impl Into<PathBuf>) -> (Grower, GrowingFile) {
        let (tx, rx) = watch::channel(Growth::Writing(0));
        let given_up = Arc::new(AtomicBool::new(false));
        let grower = Grower {
            tx,
            done: false,
            given_up: given_up.clone(),
        };
        (
            grower,
            GrowingFile {
                path: path.into(),
                rx,
                given_up,
            },
        )
    }

    /// A file that is already whole.
    pub fn complete_file(path: impl Into<PathBuf>, len: u64) -> GrowingFile {
        let (tx, rx) = watch::channel(Growth::Complete(len));
        drop(tx);
        GrowingFile {
            path: path.into(),
            rx,
            given_up: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Tells the writer that nothing will be made of the file (storage refused it for good), so
    /// it stops writing: the dump behind it is ended rather than run to its end for nothing.
    pub fn give_up(&self) {
        self.given_up.store(true, Ordering::Relaxed);
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the file is whole already (nothing to wait for).
    pub fn is_complete(&self) -> bool {
        matches!(*self.rx.borrow(), Growth::Complete(_))
    }

    /// Waits until at least `len` bytes are readable or the file is whole, whichever comes first.
    pub async fn wait_for(&mut self, len: u64) -> Result<Extent, StorageError> {
        loop {
            match *self.rx.borrow_and_update() {
                Growth::Complete(n) => return Ok(Extent { len: n, complete: true }),
                Growth::Writing(n) if n >= len => {
                    return Ok(Extent {
                        len: n,
                        complete: false,
                    })
                }
                Growth::Abandoned => return Err(abandoned(&self.path)),
                Growth::Writing(_) => {}
            }
            if self.rx.changed().await.is_err() {
                // The writer is gone: its last word stands.
                return match *self.rx.borrow() {
                    Growth::Complete(n) => Ok(Extent { len: n, complete: true }),
                    _ => Err(abandoned(&self.path)),
                };
            }
        }
    }

    /// Waits for the whole file; its length.
    pub async fn complete(&mut self) -> Result<u64, StorageError> {
        self.wait_for(u64::MAX).await.map(|e| e.len)
    }
}

fn abandoned(path: &Path) -> StorageError {
    StorageError::Abandoned(path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn readers_see_growth_completion_and_abandonment() {
        let (grower, mut file) = GrowingFile::new("/spool");
        let mut other = file.clone();
        grower.grew(10);
        assert_eq!(
            file.wait_for(5).await.unwrap(),
            Extent {
                len: 10,
                complete: false
            }
        );
        let waiting = tokio::spawn(async move { other.wait_for(100).await });
        grower.grew(50);
        grower.complete(60);
        assert_eq!(
            waiting.await.unwrap().unwrap(),
            Extent {
                len: 60,
                complete: true
            }
        );
        assert_eq!(file.complete().await.unwrap(), 60);

        let (grower, mut file) = GrowingFile::new("/spool");
        grower.grew(10);
        drop(grower);
        assert!(matches!(file.wait_for(5).await, Err(StorageError::Abandoned(_))));
        assert!(GrowingFile::complete_file("/f", 3).is_complete());
    }
}
