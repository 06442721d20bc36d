//! The decoder stage of a layer apply: reading the blob, decrypting and decompressing it run on
//! their own thread and hand the decoded tar stream in chunks to the unpacker, so both stages use
//! a core. Failures travel through the stream ([`DecodeFailed`]); the blob is always read to its
//! end so the HMAC and download verdicts are known.

use std::io::{self, Read};
use std::sync::mpsc;

use crate::manifest::Compression;

/// Read buffer for layer blobs.
pub(crate) const BLOB_BUFFER: usize = 256 * 1024;

/// Bytes per chunk handed from the decoder thread to the unpacker.
pub(crate) const DECODE_CHUNK: usize = 256 * 1024;
/// Chunks in flight between them.
pub(crate) const DECODE_QUEUE: usize = 8;

/// A failure of the decoder thread (reading, decrypting or decompressing the blob), carried to
/// the unpacker through the decoded stream.
#[derive(Debug, thiserror::Error)]
#[error("decoding the layer blob failed")]
struct DecodeFailed(#[source] io::Error);

/// The decoder thread: decompresses `plain` into chunks for the unpacker until it ends, fails or
/// the unpacker hangs up; then reads `plain` to its end (so the HMAC and download verdicts are
/// always known) and returns how that went.
pub(crate) fn decode(
    mut plain: Box<dyn Read + Send + '_>,
    compression: Compression,
    tx: mpsc::SyncSender<io::Result<Vec<u8>>>,
    back: mpsc::Receiver<Vec<u8>>,
) -> io::Result<u64> {
    {
        let decoder: io::Result<Box<dyn Read + '_>> = match compression {
            Compression::None => Ok(Box::new(&mut plain)),
            Compression::Gzip => Ok(Box::new(flate2::read::MultiGzDecoder::new(
                io::BufReader::with_capacity(BLOB_BUFFER, &mut plain),
            ))),
            Compression::Zstd => zstd::stream::read::Decoder::new(&mut plain).and_then(|mut d| {
                d.window_log_max(27)?;
                Ok(Box::new(d) as Box<dyn Read + '_>)
            }),
        };
        match decoder {
            Err(e) => {
                let _ = tx.send(Err(io::Error::other(DecodeFailed(e))));
            }
            Ok(mut decoder) => loop {
                let mut chunk = back
                    .try_recv()
                    .unwrap_or_else(|_| Vec::with_capacity(DECODE_CHUNK));
                chunk.resize(DECODE_CHUNK, 0);
                let mut filled = 0;
                let mut failed = None;
                while filled < chunk.len() {
                    match decoder.read(&mut chunk[filled..]) {
                        Ok(0) => break,
                        Ok(n) => filled += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    }
                }
                chunk.truncate(filled);
                if filled > 0 && tx.send(Ok(chunk)).is_err() {
                    break;
                }
                if let Some(e) = failed {
                    let _ = tx.send(Err(io::Error::other(DecodeFailed(e))));
                    break;
                }
                if filled == 0 {
                    break;
                }
            },
        }
    }
    // The unpacker sees the end of the stream (or its error) now, not after the drain.
    drop(tx);
    io::copy(&mut plain, &mut io::sink())
}

/// The unpacker's side of the decoded stream; returns used chunks to the decoder for reuse.
pub(crate) struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
    back: mpsc::Sender<Vec<u8>>,
    chunk: Vec<u8>,
    pos: usize,
    failed: bool,
}

impl ChannelReader {
    pub(crate) fn new(
        rx: mpsc::Receiver<io::Result<Vec<u8>>>,
        back: mpsc::Sender<Vec<u8>>,
    ) -> Self {
        Self {
            rx,
            back,
            chunk: Vec::new(),
            pos: 0,
            failed: false,
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            if self.failed {
                return Err(io::Error::other(DecodeFailed(io::Error::other(
                    "read after a decoding failure",
                ))));
            }
            match self.rx.recv() {
                Ok(Ok(next)) => {
                    let used = std::mem::replace(&mut self.chunk, next);
                    if used.capacity() > 0 {
                        // The decoder may be gone already; the chunk is then just freed.
                        let _ = self.back.send(used);
                    }
                    self.pos = 0;
                }
                Ok(Err(e)) => {
                    self.failed = true;
                    return Err(e);
                }
                // The decoder finished: end of stream.
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Whether an I/O error chain holds a [`DecodeFailed`].
pub(crate) fn decode_failed_in(err: &io::Error) -> bool {
    crate::store::io_chain_holds::<DecodeFailed>(err)
}
