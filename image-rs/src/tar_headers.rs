//! Size limits on tar extension headers, checked before a byte of their bodies is read.
//!
//! The `tar` crate reads the body of a GNU long-name (`L`) or long-link (`K`) entry and of a PAX
//! extension (`x`) whole into memory (`read_to_end`) before it yields the entry they describe, so
//! checking a name's length afterwards comes too late: a 60 MiB long name costs 60 MiB. Rather
//! than replace the parser, [`HeaderGuard`] sits between the layer stream and `tar::Archive`:
//! it follows the archive's 512-byte block structure itself, inspects every header block before
//! handing it on, and refuses the layer when an extension header declares more than its limit
//! ([`MAX_LONG_NAME_BYTES`], [`MAX_PAX_BYTES`]). The guard mirrors `tar`'s framing rules (the
//! size a PAX `size` record gives the next member, the headers `tar` treats as extensions); the
//! bodies it keeps are PAX records only, bounded by [`MAX_PAX_BYTES`]. GNU sparse members with
//! extension blocks (which `tar` reads before the unpacker can refuse the member) are refused here.

use std::io::{self, Read};

use tar::{EntryType, Header};

use crate::unpack::PATH_MAX;

/// Largest GNU long-name or long-link body accepted: `PATH_MAX` plus a margin for the NUL
/// terminator and padding some writers add. Names are then held to `PATH_MAX` by the unpacker.
pub const MAX_LONG_NAME_BYTES: u64 = PATH_MAX as u64 + 512;

/// Largest PAX extension body (local `x` or global `g`) accepted. Real images carry a path, a
/// link path, times, ids and a few extended attributes: a few KiB.
pub const MAX_PAX_BYTES: u64 = 64 * 1024;

const BLOCK: usize = 512;

/// An extension header whose declared body exceeds its limit (carried inside the `io::Error`
/// the guard returns to `tar`, found again by [`refusal_in`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderRefusal {
    /// The declared body size passes the limit for this kind of header.
    #[error("{kind} header of {size} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Which extension header.
        kind: &'static str,
        /// Its declared size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A GNU sparse member with extension blocks.
    #[error("GNU sparse member")]
    Sparse,
}

/// Finds a [`HeaderRefusal`] anywhere in an I/O error's chain.
pub(crate) fn refusal_in(err: &io::Error) -> Option<HeaderRefusal> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = err.get_ref().map(|e| e as _);
    while let Some(e) = source {
        if let Some(refusal) = e.downcast_ref::<HeaderRefusal>() {
            return Some(*refusal);
        }
        if let Some(io) = e.downcast_ref::<io::Error>() {
            source = io.get_ref().map(|e| e as _);
            continue;
        }
        source = e.source();
    }
    None
}

/// A reader that hands a tar stream on unchanged, refusing oversized extension headers before
/// their bodies are read (see the module docs).
pub(crate) struct HeaderGuard<R> {
    inner: R,
    /// Bytes handed on so far.
    pos: u64,
    /// Offset of the next header block; `u64::MAX` once the framing is unknown (the parser fails
    /// on the same header, so nothing more is read).
    next_header: u64,
    /// The header block being handed on.
    block: [u8; BLOCK],
    block_len: usize,
    block_served: usize,
    /// Body of the PAX `x` member being read (bounded by [`MAX_PAX_BYTES`]) and where it ends.
    pax: Option<(Vec<u8>, u64)>,
    /// The `size` record of the last PAX `x` member, for the member it describes.
    pax_size: Option<u64>,
}

impl<R: Read> HeaderGuard<R> {
    pub(crate) fn new(inner: R) -> Self {
        Self {
            inner,
            pos: 0,
            next_header: 0,
            block: [0; BLOCK],
            block_len: 0,
            block_served: 0,
            pax: None,
            pax_size: None,
        }
    }

    /// Reads the next header block (up to 512 bytes; fewer only at end of stream).
    fn fill_block(&mut self) -> io::Result<()> {
        self.block_len = 0;
        self.block_served = 0;
        // Bounded: every pass reads at least one byte or ends the loop.
        while self.block_len < BLOCK {
            match self.inner.read(&mut self.block[self.block_len..]) {
                Ok(0) => break,
                Ok(n) => self.block_len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        if self.block_len < BLOCK {
            // A short header: the parser reports the truncation.
            self.next_header = u64::MAX;
            return Ok(());
        }
        let end = self.pos + BLOCK as u64;
        if self.block.iter().all(|b| *b == 0) {
            self.next_header = end;
            return Ok(());
        }
        self.inspect(end).map_err(io::Error::other)
    }

    /// Checks the header in `block` (ending at stream offset `end`) and finds the next one.
    fn inspect(&mut self, end: u64) -> Result<(), HeaderRefusal> {
        let header = Header::from_byte_slice(&self.block);
        let recognized = header.as_gnu().is_some() || header.as_ustar().is_some();
        let kind = header.entry_type();
        let Ok(declared) = header.entry_size() else {
            self.next_header = u64::MAX;
            return Ok(());
        };
        let is_extension = kind.is_gnu_longname()
            || kind.is_gnu_longlink()
            || kind.is_pax_local_extensions()
            || kind.is_pax_global_extensions();
        // `tar` gives a PAX `size` to the next non-extension header, and forgets the PAX
        // records whenever it yields a member (every header but a recognized L, K or x).
        let size = match self.pax_size {
            Some(pax) if !is_extension => pax,
            _ => declared,
        };
        let limit = |kind, limit| {
            if declared > limit {
                Err(HeaderRefusal::TooLarge {
                    kind,
                    size: declared,
                    limit,
                })
            } else {
                Ok(())
            }
        };
        let yields = !(recognized
            && (kind.is_gnu_longname()
                || kind.is_gnu_longlink()
                || kind.is_pax_local_extensions()));
        if yields {
            self.pax_size = None;
        }
        match kind {
            // Extension blocks follow the header: `tar` reads them before the unpacker could
            // refuse the member (without them, the unpacker refuses it by name).
            EntryType::GNUSparse if header.as_gnu().is_some_and(|g| g.isextended[0] != 0) => {
                return Err(HeaderRefusal::Sparse);
            }
            _ if recognized && kind.is_gnu_longname() => {
                limit("GNU long name", MAX_LONG_NAME_BYTES)?
            }
            _ if recognized && kind.is_gnu_longlink() => {
                limit("GNU long link", MAX_LONG_NAME_BYTES)?
            }
            _ if recognized && kind.is_pax_local_extensions() => {
                limit("PAX extension", MAX_PAX_BYTES)?;
                self.pax = Some((Vec::with_capacity(declared as usize), end + declared));
                self.pax_size = None;
            }
            _ if kind.is_pax_global_extensions() => limit("PAX global extension", MAX_PAX_BYTES)?,
            _ => {}
        }
        self.next_header = size
            .checked_next_multiple_of(BLOCK as u64)
            .and_then(|padded| end.checked_add(padded))
            .unwrap_or(u64::MAX);
        Ok(())
    }

    /// Once the PAX body is complete, keeps its `size` record (as `tar` reads it).
    fn finish_pax(&mut self) {
        if let Some((body, body_end)) = &self.pax
            && self.block_served == self.block_len
            && self.pos >= *body_end
        {
            self.pax_size = pax_size(body);
            self.pax = None;
        }
    }
}

/// The `size` record of a PAX body, read the way `tar` reads it (the first malformed record
/// ends the search).
fn pax_size(body: &[u8]) -> Option<u64> {
    for record in tar::PaxExtensions::new(body) {
        let record = record.ok()?;
        if record.key() != Ok("size") {
            continue;
        }
        return record.value().ok()?.parse().ok();
    }
    None
}

impl<R: Read> Read for HeaderGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.block_served == self.block_len && self.pos == self.next_header {
            self.fill_block()?;
        }
        if self.block_served < self.block_len {
            let n = (self.block_len - self.block_served).min(buf.len());
            buf[..n].copy_from_slice(&self.block[self.block_served..self.block_served + n]);
            self.block_served += n;
            self.pos += n as u64;
            self.finish_pax();
            return Ok(n);
        }
        let room = self.next_header.saturating_sub(self.pos);
        let want = usize::try_from(room).unwrap_or(usize::MAX).min(buf.len());
        let n = self.inner.read(&mut buf[..want])?;
        if let Some((body, body_end)) = &mut self.pax {
            let take = usize::try_from(body_end.saturating_sub(self.pos))
                .unwrap_or(usize::MAX)
                .min(n);
            body.extend_from_slice(&buf[..take]);
        }
        self.pos += n as u64;
        self.finish_pax();
        Ok(n)
    }
}
