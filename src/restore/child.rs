//! Child programs (psql, pg_restore) that never outlive the tool: killed when the Rust side lets go
//! of them (an error, a panic, a cancelled task), and by the kernel when the tool itself dies
//! (`PR_SET_PDEATHSIG`), so no psql is ever left holding a restore's transaction open.

use std::ops::{Deref, DerefMut};
use std::process::{Child, Command};

/// A running child, killed and reaped when dropped unless it was waited for.
pub struct Owned(Option<Child>);

impl Owned {
    pub fn spawn(cmd: &mut Command) -> std::io::Result<Owned> {
        dies_with_parent(cmd);
        cmd.spawn().map(|c| Owned(Some(c)))
    }
}

impl Deref for Owned {
    type Target = Child;
    fn deref(&self) -> &Child {
        self.0.as_ref().expect("the child is there until dropped")
    }
}

impl DerefMut for Owned {
    fn deref_mut(&mut self) -> &mut Child {
        self.0.as_mut().expect("the child is there until dropped")
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

/// The kernel kills the child (SIGKILL) when the thread that started it, or the whole tool, dies.
#[cfg(target_os = "linux")]
fn dies_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: only async-signal-safe calls (prctl, getppid, _exit) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The tool may have died between fork and prctl.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn dies_with_parent(_: &mut Command) {}
