//! Stopping cleanly on SIGTERM (what Render sends a cron job), SIGINT and SIGHUP.
//!
//! [`or_signal`] runs a command until it ends or a signal arrives. On a signal it waits for the
//! commit sections in progress ([`shield`], [`commit_point`]) so that what was committed is
//! reported as committed, then stops the child programs ([`spawn`]: SIGINT, which makes psql and
//! pg_dump cancel their query, then SIGKILL), cancels the driver's queries ([`on_stop`]), drops
//! the command (temporary files and connections go with it; advisory locks die with their
//! session) and waits for the clean-ups that need the network ([`defer`]: aborting uploads,
//! deleting an object no row points to). A second signal exits at once.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::process::Command;
use std::sync::{LazyLock, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long a stop waits for a commit section to end.
const COMMIT_PATIENCE: Duration = Duration::from_secs(10);
/// How long children get to exit after SIGINT before SIGKILL.
const CHILD_GRACE: Duration = Duration::from_secs(3);
/// How long a stop waits for its network clean-ups (and driver cancels).
const CLEANUP_PATIENCE: Duration = Duration::from_secs(8);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Term,
    Int,
    Hup,
}

impl Signal {
    pub fn number(self) -> i32 {
        match self {
            Signal::Term => libc::SIGTERM,
            Signal::Int => libc::SIGINT,
            Signal::Hup => libc::SIGHUP,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Signal::Term => "SIGTERM",
            Signal::Int => "SIGINT",
            Signal::Hup => "SIGHUP",
        }
    }

    /// 128 + the signal's number, as a shell reports a process the signal killed: 143, 130, 129.
    pub fn exit_code(self) -> u8 {
        128 + self.number() as u8
    }
}

/// The error of work refused because a stop is under way.
#[derive(Debug, thiserror::Error)]
#[error("stopped by a signal")]
pub struct Stopped;

#[derive(Default)]
struct State {
    requested: Option<Signal>,
    /// Commit sections in progress.
    shields: usize,
}

static STATE: LazyLock<watch::Sender<State>> = LazyLock::new(|| watch::Sender::new(State::default()));

/// The signal that asked for a stop, if one did.
pub fn requested() -> Option<Signal> {
    STATE.borrow().requested
}

/// A commit section: while one is alive a stop waits (up to 10 s) before it drops the work, so a
/// commit that started is seen through and reported. Hold it from the point of no return until
/// the outcome is noted, with no `.await` between the commit and that note.
#[must_use = "the section ends when the shield is dropped"]
pub struct Shield(());

/// Enters a commit section, or `None` when a stop was asked for (then do not commit).
pub fn shield() -> Option<Shield> {
    let mut entered = false;
    STATE.send_modify(|s| {
        if s.requested.is_none() {
            s.shields += 1;
            entered = true;
        }
    });
    entered.then_some(Shield(()))
}

impl Drop for Shield {
    fn drop(&mut self) {
        STATE.send_modify(|s| s.shields -= 1);
    }
}

thread_local! {
    /// Shields raised by [`commit_point`] on this thread, inside [`blocking`].
    static RAISED: std::cell::RefCell<Option<Vec<Shield>>> = const { std::cell::RefCell::new(None) };
}

/// In blocking code run through [`blocking`]: the point of no return. From here until the result
/// is back on the async side a stop waits. `Err` when a stop was asked for: do not commit.
/// Outside [`blocking`] it only checks.
pub fn commit_point() -> Result<(), Stopped> {
    let shield = shield().ok_or(Stopped)?;
    RAISED.with(|r| match r.borrow_mut().as_mut() {
        Some(raised) => raised.push(shield),
        None => drop(shield),
    });
    Ok(())
}

/// `spawn_blocking` whose [`commit_point`]s hold until the result has been handed back, so that a
/// stop never drops the caller between a commit on the blocking thread and its report.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    let (out, raised) = tokio::task::spawn_blocking(move || {
        RAISED.with(|r| *r.borrow_mut() = Some(Vec::new()));
        let out = work();
        (out, RAISED.with(|r| r.borrow_mut().take()))
    })
    .await?;
    drop(raised);
    Ok(out)
}

/// `io::copy` for blocking threads that gives up once a stop is asked for, rather than finish a
/// large copy for work that was abandoned (and be cut off at exit, leaving its file behind).
pub fn copy(
    input: &mut (impl std::io::Read + ?Sized),
    out: &mut (impl std::io::Write + ?Sized),
) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0;
    loop {
        if requested().is_some() {
            return Err(std::io::Error::other(Stopped));
        }
        match input.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => {
                out.write_all(&buf[..n])?;
                total += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

// ---- child programs ----

/// Process groups of the children started through [`spawn`] that are still running.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn children() -> MutexGuard<'static, Vec<u32>> {
    CHILDREN.lock().unwrap_or_else(|e| e.into_inner())
}

/// A child program started through [`spawn`]. Dereferences to [`std::process::Child`]; dropped
/// while still running, it is killed (its whole process group) and reaped.
pub struct Child {
    inner: std::process::Child,
}

/// Starts `cmd` in a process group of its own (so a terminal's Ctrl-C reaches only us, and we
/// stop the child and its own children together), killed by the kernel if this process dies
/// without stopping it. Refused once a stop is under way.
pub fn spawn(cmd: &mut Command) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id() as libc::pid_t;
    cmd.process_group(0);
    // SAFETY: prctl and getppid are async-signal-safe, and the closure allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent died before prctl took effect: nobody would ever stop us.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let mut running = children();
    if requested().is_some() {
        return Err(std::io::Error::new(std::io::ErrorKind::Interrupted, Stopped));
    }
    let inner = cmd.spawn()?;
    running.push(inner.id());
    Ok(Child { inner })
}

impl Child {
    /// SIGKILL to the child's process group, from another thread. Only while the child is not yet
    /// waited for (its id cannot have been reused).
    pub fn kill_group(&self) {
        signal_group(self.inner.id(), libc::SIGKILL);
    }
}

impl std::ops::Deref for Child {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl std::ops::DerefMut for Child {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.inner
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let pid = self.inner.id();
        if let Ok(None) = self.inner.try_wait() {
            signal_group(pid, libc::SIGKILL);
            let _ = self.inner.wait();
        }
        children().retain(|p| *p != pid);
    }
}

fn signal_group(pgid: u32, signal: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(-(pgid as libc::pid_t), signal);
    }
}

/// SIGINT to every child's group (psql and pg_dump then cancel their query on the server), and
/// SIGKILL to those still running after the grace period.
async fn stop_children() {
    for pgid in children().iter() {
        signal_group(*pgid, libc::SIGINT);
    }
    let deadline = tokio::time::Instant::now() + CHILD_GRACE;
    while !children().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for pgid in children().iter() {
        signal_group(*pgid, libc::SIGKILL);
    }
}

// ---- the driver's queries, and clean-ups ----

type Boxed = Pin<Box<dyn Future<Output = ()> + Send>>;

static ON_STOP: Mutex<BTreeMap<u64, Boxed>> = Mutex::new(BTreeMap::new());
static DEFERRED: Mutex<Vec<JoinHandle<bool>>> = Mutex::new(Vec::new());

/// `action` runs if a stop comes while the returned guard lives (e.g. cancelling a connection's
/// query, which the server would otherwise finish or keep waiting for after we have gone).
pub fn on_stop(action: impl Future<Output = ()> + Send + 'static) -> OnStop {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    ON_STOP
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id, Box::pin(action));
    OnStop(id)
}

#[must_use = "the action is forgotten when the guard is dropped"]
pub struct OnStop(u64);

impl Drop for OnStop {
    fn drop(&mut self) {
        ON_STOP.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.0);
    }
}

/// Runs a clean-up that needs the runtime (aborting an upload, deleting an object) from a `Drop`;
/// it resolves to whether it succeeded. The process waits for these before it exits.
pub fn defer(cleanup: impl Future<Output = bool> + Send + 'static) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        DEFERRED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(runtime.spawn(cleanup));
    }
}

/// Waits (up to 8 s) for the deferred clean-ups; false when one failed or did not finish.
pub async fn finish_deferred() -> bool {
    let work = async {
        let mut all_ok = true;
        loop {
            let pending: Vec<_> = std::mem::take(&mut *DEFERRED.lock().unwrap_or_else(|e| e.into_inner()));
            if pending.is_empty() {
                return all_ok;
            }
            for handle in pending {
                all_ok &= handle.await.unwrap_or(false);
            }
        }
    };
    tokio::time::timeout(CLEANUP_PATIENCE, work).await.unwrap_or(false)
}

// ---- signals ----

/// How a stopped run ended.
#[derive(Clone, Copy, Debug)]
pub struct Stop {
    pub signal: Signal,
    /// A commit section was still running when the stop stopped waiting for it: its outcome is
    /// not known.
    pub commit_interrupted: bool,
    /// Every clean-up that needed the network was done.
    pub cleaned_up: bool,
}

/// Runs `work` to its end, or until SIGTERM, SIGINT or SIGHUP; then stops as the module says.
/// Waits for deferred clean-ups either way.
pub async fn or_signal<F: Future>(work: F) -> Result<F::Output, Stop> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut work = Box::pin(work);
    let listening = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    );
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = listening else {
        tracing::warn!("cannot listen for signals: a stop will not clean up after itself");
        let out = work.await;
        finish_deferred().await;
        return Ok(out);
    };
    let first = async {
        tokio::select! {
            _ = term.recv() => Signal::Term,
            _ = int.recv() => Signal::Int,
            _ = hup.recv() => Signal::Hup,
        }
    };
    // Commit sections already running are seen through, with the work still being driven.
    let stopping = async {
        let signal = first.await;
        STATE.send_modify(|s| s.requested = Some(signal));
        exit_at_once_on_another_signal();
        let mut state = STATE.subscribe();
        let settled = tokio::time::timeout(COMMIT_PATIENCE, state.wait_for(|s| s.shields == 0)).await;
        (signal, settled.is_err())
    };
    let (signal, commit_interrupted) = tokio::select! {
        biased;
        out = &mut work => {
            finish_deferred().await;
            return Ok(out);
        }
        stop = stopping => stop,
    };
    let cancels: Vec<Boxed> = std::mem::take(&mut *ON_STOP.lock().unwrap_or_else(|e| e.into_inner()))
        .into_values()
        .collect();
    let cancel = tokio::time::timeout(CLEANUP_PATIENCE, futures::future::join_all(cancels));
    let _ = tokio::join!(stop_children(), cancel);
    drop(work);
    let cleaned_up = finish_deferred().await;
    Err(Stop {
        signal,
        commit_interrupted,
        cleaned_up,
    })
}

extern "C" fn exit_now(signal: libc::c_int) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(128 + signal) }
}

/// After the first signal, another one ends the process on the spot (children die with it:
/// [`spawn`] asked the kernel for that).
fn exit_at_once_on_another_signal() {
    for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction with a handler that only calls _exit is valid.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = exit_now as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_128_plus_the_signal() {
        assert_eq!(
            [Signal::Term, Signal::Int, Signal::Hup].map(Signal::exit_code),
            [143, 130, 129]
        );
    }
}
