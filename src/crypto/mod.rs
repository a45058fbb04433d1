//! Encryption and authenticity of stored backups.
//!
//! * Every backup is encrypted with [age](https://age-encryption.org) (X25519) to **its tenant's own
//!   key**. Tenant keys live in a table of the tool's own in `public` ([`keys`]) and in the bucket
//!   ([`bucket`]), each identity wrapped (age-encrypted) to one master recipient, so the bucket and
//!   the master identity restore every tenant after the database is lost. The cron job holds only
//!   the master *recipient* (public); reading a backup needs the master *identity*. Deleting a
//!   tenant's key (`keys forget`: its row and its bucket copies) makes every copy of that tenant's
//!   encrypted backups unreadable.
//! * Every manifest carries an HMAC-SHA256 over its canonical content when a signing key is set
//!   ([`sign`]), so a rewritten object with a rewritten manifest is refused.
//! * [`stream`]: the encrypting writer inside the backup pipeline and the decrypting reader inside
//!   restore, verify and download.

pub mod bucket;
pub mod identity_file;
pub mod keys;
pub mod sign;
pub mod stream;

use std::str::FromStr;

use age::secrecy::ExposeSecret;

use crate::error::UsageError;
use crate::secret::Secret;

/// The master key pair's public half, from `BACKUP_AGE_RECIPIENT`.
#[derive(Clone)]
pub struct MasterRecipient(pub age::x25519::Recipient);

/// The master key pair's secret half, from `BACKUP_AGE_IDENTITY` or `--identity FILE`.
#[derive(Clone)]
pub struct MasterIdentity(pub age::x25519::Identity);

impl std::fmt::Debug for MasterIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterIdentity(***)")
    }
}

impl MasterRecipient {
    pub fn parse(raw: &str) -> Result<Self, UsageError> {
        age::x25519::Recipient::from_str(raw.trim())
            .map(MasterRecipient)
            .map_err(|_| {
                UsageError::new(
                "BACKUP_AGE_RECIPIENT is not an age recipient (age1…): use the line `tenant-backup keys init` printed",
            )
            })
    }

    pub fn as_string(&self) -> String {
        self.0.to_string()
    }
}

impl MasterIdentity {
    /// `AGE-SECRET-KEY-1…`, alone or as the one key line of an age identity file (comments allowed).
    pub fn parse(raw: &str, from: &str) -> Result<Self, UsageError> {
        let line = raw
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .unwrap_or("");
        age::x25519::Identity::from_str(line).map(MasterIdentity).map_err(|_| {
            UsageError::new(format!(
                "{from} holds no age identity (AGE-SECRET-KEY-1…): use the line `tenant-backup keys init` printed"
            ))
        })
    }

    pub fn recipient(&self) -> MasterRecipient {
        MasterRecipient(self.0.to_public())
    }

    pub fn secret_string(&self) -> Secret<String> {
        Secret::new(self.0.to_string().expose_secret().to_string())
    }
}

/// A tenant's identity, unwrapped to read its backups. Prints as `***`.
#[derive(Clone)]
pub struct TenantKey(pub age::x25519::Identity);

impl std::fmt::Debug for TenantKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TenantKey(***)")
    }
}

/// What the run knows of keys, from the environment (and `--identity`).
#[derive(Clone, Default)]
pub struct KeyConfig {
    /// Set: every backup is encrypted (to its tenant's key, wrapped to this recipient).
    pub recipient: Option<MasterRecipient>,
    /// Set where backups are read (restore, verify, download).
    pub identity: Option<MasterIdentity>,
    /// Set: manifests are signed, and reads refuse unsigned or wrongly signed ones.
    pub signing_key: Option<Secret<Vec<u8>>>,
    /// Where the identity was read from, when from a file (`--identity`).
    pub identity_file: Option<std::path::PathBuf>,
}

impl KeyConfig {
    /// From `BACKUP_AGE_RECIPIENT`, `BACKUP_AGE_IDENTITY` (or an identity file) and
    /// `BACKUP_SIGNING_KEY`. An identity alone implies its recipient.
    pub fn new(
        recipient: Option<&str>,
        identity: Option<&str>,
        identity_file: Option<&std::path::Path>,
        signing_key: Option<&str>,
    ) -> Result<Self, UsageError> {
        let nonempty = |s: Option<&str>| s.map(str::trim).filter(|s| !s.is_empty()).map(str::to_string);
        let identity = match (identity_file, nonempty(identity)) {
            (Some(path), _) => Some(identity_file::read(path, "--identity")?),
            (None, Some(raw)) => Some(MasterIdentity::parse(&raw, "BACKUP_AGE_IDENTITY")?),
            (None, None) => None,
        };
        let recipient = match nonempty(recipient) {
            Some(raw) => {
                let r = MasterRecipient::parse(&raw)?;
                if let Some(id) = &identity {
                    if id.recipient().as_string() != r.as_string() {
                        return Err(UsageError::new(
                            "BACKUP_AGE_IDENTITY does not match BACKUP_AGE_RECIPIENT: they must be the pair `tenant-backup keys init` printed (after `keys rotate`, both the new ones)",
                        ));
                    }
                }
                Some(r)
            }
            None => identity.as_ref().map(MasterIdentity::recipient),
        };
        let signing_key = match nonempty(signing_key) {
            Some(k) if k.len() < 32 => {
                return Err(UsageError::new(
                    "BACKUP_SIGNING_KEY is too short: use at least 32 characters (the line `tenant-backup keys init` printed)",
                ))
            }
            Some(k) => Some(Secret::new(k.into_bytes())),
            None => None,
        };
        Ok(KeyConfig {
            recipient,
            identity,
            signing_key,
            identity_file: identity_file.map(|p| p.to_path_buf()),
        })
    }

    pub fn encrypts(&self) -> bool {
        self.recipient.is_some()
    }
}

/// A fresh master key pair and signing key, as `keys init` prints them.
pub struct NewMaster {
    pub identity: MasterIdentity,
    pub signing_key: Secret<String>,
}

impl NewMaster {
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::fill(&mut bytes);
        NewMaster {
            identity: MasterIdentity(age::x25519::Identity::generate()),
            signing_key: Secret::new(hex::encode(bytes)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_is_checked() {
        let m = NewMaster::generate();
        let id = m.identity.secret_string().expose().clone();
        let rcpt = m.identity.recipient().as_string();
        let other = NewMaster::generate().identity.recipient().as_string();
        let key = m.signing_key.expose().clone();
        let ok = KeyConfig::new(Some(&rcpt), Some(&id), None, Some(&key)).unwrap();
        assert!(ok.encrypts() && ok.identity.is_some() && ok.signing_key.is_some());
        // An identity alone implies its recipient; a recipient alone is the cron job's case.
        assert_eq!(
            KeyConfig::new(None, Some(&id), None, None)
                .unwrap()
                .recipient
                .unwrap()
                .as_string(),
            rcpt
        );
        assert!(KeyConfig::new(Some(&rcpt), None, None, None)
            .unwrap()
            .identity
            .is_none());
        assert!(
            KeyConfig::new(Some(&other), Some(&id), None, None).is_err(),
            "mismatched pair"
        );
        assert!(KeyConfig::new(Some("age1nope"), None, None, None).is_err());
        assert!(KeyConfig::new(None, Some("AGE-SECRET-KEY-1NOPE"), None, None).is_err());
        assert!(KeyConfig::new(None, None, None, Some("short")).is_err());
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), format!("# created by tenant-backup\n{id}\n")).unwrap();
        // NamedTempFile is 0600.
        assert!(KeyConfig::new(None, None, Some(file.path()), None)
            .unwrap()
            .identity
            .is_some());
        // Nothing secret in an error.
        let err = KeyConfig::new(Some(&other), Some(&id), None, None)
            .err()
            .unwrap()
            .to_string();
        assert!(!err.contains(&id[15..]), "{err}");
    }
}
