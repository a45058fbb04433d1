//! Compression of the dump stream. zstd is written as a run of independent frames of 8 MiB of
//! input each (any zstd decoder reads them as one stream): each frame is compressed from one
//! contiguous buffer, which zstd's streaming API, whose window wraps around a ring buffer, cannot
//! do, and which measured 17% less CPU at level 3 for a size within 0.5% (smaller, here).

use std::io::{self, Write};

use crate::error::UsageError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip { level: u32 },
    Zstd { level: i32 },
}

impl Compression {
    /// `zstd` (level 1–19, default 3), `gzip` (1–9, default 6) or `none`.
    pub fn from_name(name: &str, level: Option<i32>) -> Result<Self, UsageError> {
        match name {
            "none" => Ok(Compression::None),
            "gzip" => {
                let level = level.unwrap_or(6);
                if !(1..=9).contains(&level) {
                    return Err(UsageError::new(format!(
                        "--level {level} is out of range for gzip: use 1 to 9"
                    )));
                }
                Ok(Compression::Gzip { level: level as u32 })
            }
            "zstd" => {
                let level = level.unwrap_or(3);
                if !(1..=19).contains(&level) {
                    return Err(UsageError::new(format!(
                        "--level {level} is out of range for zstd: use 1 to 19"
                    )));
                }
                Ok(Compression::Zstd { level })
            }
            other => Err(UsageError::new(format!(
                "unknown compression {other:?}: use zstd, gzip or none"
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip { .. } => "gzip",
            Compression::Zstd { .. } => "zstd",
        }
    }

    /// The extension added after the format's own (`sql` → `sql.zst`).
    pub fn ext_suffix(self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Gzip { .. } => ".gz",
            Compression::Zstd { .. } => ".zst",
        }
    }

    pub fn from_ext(key: &str) -> Compression {
        if key.ends_with(".zst") {
            Compression::Zstd { level: 3 }
        } else if key.ends_with(".gz") {
            Compression::Gzip { level: 6 }
        } else {
            Compression::None
        }
    }

    pub fn encoder<W: Write>(self, out: W) -> io::Result<Encoder<W>> {
        Ok(match self {
            Compression::None => Encoder::None(out),
            Compression::Gzip { level } => {
                Encoder::Gzip(flate2::write::GzEncoder::new(out, flate2::Compression::new(level)))
            }
            Compression::Zstd { level } => Encoder::Zstd(Box::new(ZstdFrames::new(out, level)?)),
        })
    }

    /// A reader that undoes this compression.
    pub fn decoder<'a, R: io::BufRead + Send + 'a>(self, input: R) -> io::Result<Box<dyn io::Read + Send + 'a>> {
        Ok(match self {
            Compression::None => Box::new(input),
            Compression::Gzip { .. } => Box::new(flate2::bufread::MultiGzDecoder::new(input)),
            Compression::Zstd { .. } => Box::new(zstd::stream::read::Decoder::with_buffer(input)?),
        })
    }
}

/// In manifests a compression is its name; the level only matters when writing.
impl serde::Serialize for Compression {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Compression {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Compression::from_name(&name, None).map_err(serde::de::Error::custom)
    }
}

pub enum Encoder<W: Write> {
    None(W),
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(Box<ZstdFrames<W>>),
}

/// Input bytes per zstd frame: four of level 3's 2 MiB windows, so a frame's start loses little.
pub const ZSTD_FRAME: usize = 8 * 1024 * 1024;

/// zstd as independent frames, each compressed whole from one buffer (see the module's comment).
pub struct ZstdFrames<W: Write> {
    out: W,
    compressor: zstd::bulk::Compressor<'static>,
    input: Vec<u8>,
    output: Vec<u8>,
    frames: u64,
}

impl<W: Write> ZstdFrames<W> {
    fn new(out: W, level: i32) -> io::Result<Self> {
        Ok(ZstdFrames {
            out,
            compressor: zstd::bulk::Compressor::new(level)?,
            // Allocated when first needed: whole frames handed in are compressed where they are.
            input: Vec::new(),
            output: Vec::new(),
            frames: 0,
        })
    }

    fn flush_frame(&mut self) -> io::Result<()> {
        let input = std::mem::take(&mut self.input);
        self.compress(&input)?;
        self.input = input;
        self.input.clear();
        Ok(())
    }

    /// One frame of `input`.
    fn compress(&mut self, input: &[u8]) -> io::Result<()> {
        self.output.clear();
        self.output.reserve(zstd::zstd_safe::compress_bound(input.len()));
        self.compressor.compress_to_buffer(input, &mut self.output)?;
        self.out.write_all(&self.output)?;
        self.frames += 1;
        Ok(())
    }

    fn finish(mut self) -> io::Result<W> {
        // Nothing written is still one (empty) frame: a valid zstd stream.
        if !self.input.is_empty() || self.frames == 0 {
            self.flush_frame()?;
        }
        Ok(self.out)
    }
}

impl<W: Write> Write for ZstdFrames<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.input.is_empty() && buf.len() >= ZSTD_FRAME {
            self.compress(&buf[..ZSTD_FRAME])?;
            return Ok(ZSTD_FRAME);
        }
        if self.input.capacity() == 0 {
            self.input.reserve_exact(ZSTD_FRAME);
        }
        let n = buf.len().min(ZSTD_FRAME - self.input.len());
        self.input.extend_from_slice(&buf[..n]);
        if self.input.len() == ZSTD_FRAME {
            self.flush_frame()?;
        }
        Ok(n)
    }

    /// Frames are whole or not written: what is buffered waits for its frame.
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

impl<W: Write> Encoder<W> {
    /// Writes the trailer and hands back the inner writer.
    pub fn finish(self) -> io::Result<W> {
        match self {
            Encoder::None(w) => Ok(w),
            Encoder::Gzip(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::None(w) => w.write(buf),
            Encoder::Gzip(e) => e.write(buf),
            Encoder::Zstd(e) => e.write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Encoder::None(w) => w.write_all(buf),
            Encoder::Gzip(e) => e.write_all(buf),
            Encoder::Zstd(e) => e.write_all(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::None(w) => w.flush(),
            Encoder::Gzip(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn every_compression_round_trips() {
        let data: Vec<u8> = (0..100_000u32).flat_map(|i| i.to_le_bytes()).collect();
        for c in [
            Compression::None,
            Compression::Gzip { level: 6 },
            Compression::Zstd { level: 3 },
        ] {
            let mut enc = c.encoder(Vec::new()).unwrap();
            enc.write_all(&data).unwrap();
            let packed = enc.finish().unwrap();
            let mut out = Vec::new();
            c.decoder(packed.as_slice()).unwrap().read_to_end(&mut out).unwrap();
            assert_eq!(out, data, "{}", c.name());
        }
    }

    #[test]
    fn zstd_frames_are_one_stream_to_any_decoder() {
        // Three frames and a bit, fed in odd-sized writes.
        let data: Vec<u8> = (0..(ZSTD_FRAME as u32 * 3 / 4 + 1000))
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let c = Compression::Zstd { level: 3 };
        let mut enc = c.encoder(Vec::new()).unwrap();
        for piece in data.chunks(100_003) {
            enc.write_all(piece).unwrap();
        }
        let packed = enc.finish().unwrap();
        let mut out = Vec::new();
        c.decoder(packed.as_slice()).unwrap().read_to_end(&mut out).unwrap();
        assert_eq!(out.len(), data.len());
        assert!(out == data);
        // Whole frames handed in at once are compressed where they are: the same stream.
        let mut enc = c.encoder(Vec::new()).unwrap();
        enc.write_all(&data).unwrap();
        assert!(enc.finish().unwrap() == packed);
        assert_eq!(zstd::stream::decode_all(packed.as_slice()).unwrap().len(), data.len());
        // An empty input is still a zstd stream.
        let empty = c.encoder(Vec::new()).unwrap().finish().unwrap();
        assert!(zstd::stream::decode_all(empty.as_slice()).unwrap().is_empty());
    }

    #[test]
    fn manifests_name_the_compression() {
        let z = serde_json::to_string(&Compression::Zstd { level: 9 }).unwrap();
        assert_eq!(z, "\"zstd\"");
        assert_eq!(
            serde_json::from_str::<Compression>("\"gzip\"").unwrap(),
            Compression::Gzip { level: 6 }
        );
        assert!(serde_json::from_str::<Compression>("\"lz4\"").is_err());
    }

    #[test]
    fn levels_are_checked() {
        assert!(Compression::from_name("zstd", Some(20)).is_err());
        assert!(Compression::from_name("gzip", Some(0)).is_err());
        assert!(Compression::from_name("lz4", None).is_err());
        assert_eq!(
            Compression::from_name("zstd", None).unwrap(),
            Compression::Zstd { level: 3 }
        );
    }
}
