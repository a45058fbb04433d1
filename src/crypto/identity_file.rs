//! The master identity in a file: written durably before anything refers to it (`keys init` and
//! `keys rotate --save-identity FILE`), and read only when no one else can read it (`--identity`),
//! as ssh treats a private key.

use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::MasterIdentity;
use crate::error::UsageError;

/// Refuses a key file that group or others may read or write: `what` names it in the message.
pub fn check_private(path: &Path, what: &str) -> Result<(), UsageError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| UsageError::new(format!("{what} {}: cannot read it ({e})", path.display())))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(UsageError::new(format!(
            "{what} {} is open to others (mode {mode:03o}): a master identity must be readable by its owner only. Run `chmod 600 {}`",
            path.display(),
            path.display()
        )));
    }
    Ok(())
}

/// Reads an identity file, refusing one others may read.
pub fn read(path: &Path, what: &str) -> Result<MasterIdentity, UsageError> {
    check_private(path, what)?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| UsageError::new(format!("{what} {}: cannot read it ({e})", path.display())))?;
    MasterIdentity::parse(&text, &format!("{what} {}", path.display()))
}

/// Whether `path` exists (an identity a previous run wrote, or something else in the way).
pub fn exists(path: &Path) -> bool {
    path.symlink_metadata().is_ok()
}

/// Writes `identity` to `path`, a file that must not exist yet: mode 0600, written to a
/// temporary file in the same folder, synced, linked into place without overwriting, and the
/// folder synced, so that once this returns the identity survives a crash or a power cut.
pub fn save(path: &Path, identity: &MasterIdentity, made_by: &str) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let fail = |e: io::Error| anyhow::anyhow!("writing the new master identity to {}: {e}", path.display());
    if exists(path) {
        return Err(UsageError::new(format!(
            "{} already exists: the new master identity is never written over a file; name another",
            path.display()
        ))
        .into());
    }
    let mut tmp = tempfile::Builder::new()
        .prefix(".tenant-backup-identity-")
        .permissions(std::fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .map_err(fail)?;
    let text = format!(
        "# created by {made_by}\n# public key: {}\n{}\n",
        identity.recipient().as_string(),
        identity.secret_string().expose()
    );
    tmp.write_all(text.as_bytes()).map_err(fail)?;
    tmp.as_file().sync_all().map_err(fail)?;
    tmp.persist_noclobber(path).map_err(|e| fail(e.error))?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(fail)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_identities_are_private_durable_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.age");
        let id = super::super::NewMaster::generate().identity;
        save(&path, &id, "test").unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(
            read(&path, "--identity").unwrap().recipient().as_string(),
            id.recipient().as_string()
        );
        assert!(save(&path, &id, "test").is_err(), "overwrote");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = read(&path, "--identity").err().unwrap().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        // Only the identity file itself: no temporary left beside it.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
