//! age as a stream: an encrypting writer for the backup pipeline (dump → compress → **encrypt** →
//! checksum → spool) and a decrypting reader for restore, verify and download. Memory holds one
//! 64 KiB age chunk at a time.

use std::io::{self, Read, Write};

/// Wraps `out` so that what is written reaches it encrypted to `recipient`. Call `finish()`.
pub fn encrypting<W: Write>(recipient: &age::x25519::Recipient, out: W) -> io::Result<age::stream::StreamWriter<W>> {
    let encryptor =
        age::Encryptor::with_recipients(std::iter::once(recipient as &dyn age::Recipient)).map_err(io::Error::other)?;
    encryptor.wrap_output(out)
}

/// The pipeline's encryption stage: age to a recipient, or nothing when backups are not encrypted.
pub enum Sealing<W: Write> {
    Clear(W),
    Age(age::stream::StreamWriter<W>),
}

impl<W: Write> Sealing<W> {
    pub fn new(recipient: Option<&age::x25519::Recipient>, out: W) -> io::Result<Self> {
        Ok(match recipient {
            None => Sealing::Clear(out),
            Some(r) => Sealing::Age(encrypting(r, out)?),
        })
    }

    /// Writes age's last chunk and hands back the inner writer.
    pub fn finish(self) -> io::Result<W> {
        match self {
            Sealing::Clear(w) => Ok(w),
            Sealing::Age(s) => s.finish(),
        }
    }
}

impl<W: Write> Write for Sealing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sealing::Clear(w) => w.write(buf),
            Sealing::Age(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sealing::Clear(w) => w.flush(),
            Sealing::Age(s) => s.flush(),
        }
    }
}

/// Reads `input` (an age file) decrypted with `identity`; a damaged or truncated file is an error
/// when it is read, never silently short.
pub fn decrypting<'a, R: Read + Send + 'a>(
    identity: &age::x25519::Identity,
    input: R,
) -> io::Result<Box<dyn Read + Send + 'a>> {
    let decryptor =
        age::Decryptor::new(input).map_err(|e| io::Error::other(format!("not a readable age file: {e}")))?;
    let reader = decryptor
        .decrypt(std::iter::once(identity as &dyn age::Identity))
        .map_err(|e| io::Error::other(format!("cannot decrypt: {e}")))?;
    Ok(Box::new(reader))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_the_wrong_key_and_damage() {
        let id = age::x25519::Identity::generate();
        let data: Vec<u8> = (0..300_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let mut w = encrypting(&id.to_public(), Vec::new()).unwrap();
        w.write_all(&data).unwrap();
        let sealed = w.finish().unwrap();
        assert!(
            !sealed.windows(16).any(|w| w == &data[4000..4016]),
            "ciphertext shows plaintext"
        );
        let mut out = Vec::new();
        decrypting(&id, sealed.as_slice())
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, data);
        let other = age::x25519::Identity::generate();
        assert!(decrypting(&other, sealed.as_slice()).is_err());
        let cut = &sealed[..sealed.len() - 100];
        let mut out = Vec::new();
        assert!(
            decrypting(&id, cut).unwrap().read_to_end(&mut out).is_err(),
            "truncation is an error"
        );
        let mut flipped = sealed.clone();
        let n = flipped.len() / 2;
        flipped[n] ^= 1;
        assert!(decrypting(&id, flipped.as_slice())
            .unwrap()
            .read_to_end(&mut Vec::new())
            .is_err());
    }
}
