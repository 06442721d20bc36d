//! Content digests (`sha256:<64 hex>`) and readers that hash what flows through them.

use std::fmt;
use std::io::{self, Read};

use sha2::{Digest as _, Sha256};

/// Why a digest string was refused.
#[derive(Debug, thiserror::Error)]
pub enum DigestError {
    /// Only `sha256` digests are accepted.
    #[error("unsupported digest algorithm in {0:?}")]
    Algorithm(String),
    /// The hex part is not 64 lowercase hex characters.
    #[error("malformed sha256 digest {0:?}")]
    Malformed(String),
}

/// A validated `sha256:` digest.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

impl Digest {
    /// Parses `sha256:<64 lowercase hex>`.
    pub fn parse(text: &str) -> Result<Self, DigestError> {
        let Some(hex) = text.strip_prefix("sha256:") else {
            return Err(DigestError::Algorithm(text.to_owned()));
        };
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(DigestError::Malformed(text.to_owned()));
        }
        Ok(Self {
            hex: hex.to_owned(),
        })
    }

    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        Self::from_hasher(Sha256::new_with_prefix(data))
    }

    pub(crate) fn from_hasher(hasher: Sha256) -> Self {
        Self {
            hex: hex::encode(hasher.finalize()),
        }
    }

    /// The 64 hex characters (safe to use as a file name).
    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A reader that hashes and counts every byte read through it, refusing to read past `limit`.
#[derive(Debug)]
pub(crate) struct HashingReader<R> {
    inner: R,
    hasher: Option<Sha256>,
    count: u64,
    limit: u64,
}

impl<R: Read> HashingReader<R> {
    pub(crate) fn new(inner: R, limit: u64) -> Self {
        Self {
            inner,
            hasher: Some(Sha256::new()),
            count: 0,
            limit,
        }
    }

    /// Counts and limits without hashing ([`finish`](Self::finish) then returns `None`).
    pub(crate) fn counting(inner: R, limit: u64) -> Self {
        Self {
            inner,
            hasher: None,
            count: 0,
            limit,
        }
    }

    /// Reads the rest of the stream (so the digest covers all of it) and returns the digest,
    /// the byte count and whether any of the drained bytes was non-zero.
    pub(crate) fn finish(mut self) -> io::Result<(Option<Digest>, u64, bool)> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut nonzero = false;
        loop {
            let n = self.read(&mut buf)?;
            if n == 0 {
                break;
            }
            nonzero |= buf[..n].iter().any(|b| *b != 0);
        }
        Ok((self.hasher.map(Digest::from_hasher), self.count, nonzero))
    }
}

/// The error a [`HashingReader`] returns when its limit is passed; callers map it to a typed error.
#[derive(Debug, thiserror::Error)]
#[error("stream exceeds its limit of {0} bytes")]
pub(crate) struct LimitExceeded(pub(crate) u64);

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        if self.count > self.limit {
            return Err(io::Error::other(LimitExceeded(self.limit)));
        }
        if let Some(hasher) = self.hasher.as_mut() {
            hasher.update(&buf[..n]);
        }
        Ok(n)
    }
}

/// Finds a [`LimitExceeded`] anywhere in an I/O error's chain.
pub(crate) fn limit_in(err: &io::Error) -> Option<u64> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = err.get_ref().map(|e| e as _);
    while let Some(e) = source {
        if let Some(limit) = e.downcast_ref::<LimitExceeded>() {
            return Some(limit.0);
        }
        if let Some(io) = e.downcast_ref::<io::Error>() {
            source = io.get_ref().map(|e| e as _);
            continue;
        }
        source = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let d = Digest::of(b"abc");
        assert_eq!(
            d.to_string(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(Digest::parse(&d.to_string()).unwrap(), d);
        assert!(matches!(
            Digest::parse("sha512:00"),
            Err(DigestError::Algorithm(_))
        ));
        assert!(matches!(
            Digest::parse("sha256:../../etc"),
            Err(DigestError::Malformed(_))
        ));
        assert!(matches!(
            Digest::parse(&format!("sha256:{}", "A".repeat(64))),
            Err(DigestError::Malformed(_))
        ));
    }

    #[test]
    fn hashing_reader_limits_and_hashes() {
        let data = vec![1u8; 100];
        let mut r = HashingReader::new(&data[..], 50);
        let mut sink = Vec::new();
        let err = std::io::copy(&mut r, &mut sink).unwrap_err();
        assert_eq!(limit_in(&err), Some(50));
        let r = HashingReader::new(&data[..], 100);
        let (d, n, nonzero) = r.finish().unwrap();
        assert_eq!(n, 100);
        assert!(nonzero);
        assert_eq!(d, Some(Digest::of(&data)));
    }
}
