//! Manifest signatures: HMAC-SHA256 over a manifest's canonical bytes, with a key only the tool's
//! operators hold (`BACKUP_SIGNING_KEY`). Whoever can write the bucket can rewrite an object and
//! its manifest's sha256, but not forge this.

use hmac::{Hmac, Mac};
use sha2::Sha256;

const SCHEME: &str = "hmac-sha256:";

/// `hmac-sha256:<hex>` of `canonical`.
pub fn sign(key: &[u8], canonical: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(canonical);
    format!("{SCHEME}{}", hex::encode(mac.finalize().into_bytes()))
}

/// Whether `signature` is `sign(key, canonical)`, compared in constant time.
pub fn verify(key: &[u8], canonical: &[u8], signature: &str) -> bool {
    let Some(hex_part) = signature.strip_prefix(SCHEME) else {
        return false;
    };
    let Ok(bytes) = hex::decode(hex_part) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(canonical);
    mac.verify_slice(&bytes).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_check_content_and_key() {
        let key = b"0123456789abcdef0123456789abcdef";
        let s = sign(key, b"manifest");
        assert!(verify(key, b"manifest", &s));
        assert!(!verify(key, b"manifest!", &s));
        assert!(!verify(b"another key, just as long as that", b"manifest", &s));
        assert!(!verify(key, b"manifest", "sha256:00"));
        assert!(!verify(key, b"manifest", &s.replace(SCHEME, "hmac-sha256:zz")));
    }
}
