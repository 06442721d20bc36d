//! The stages of a layer apply between the blob and the unpacker, each on its own thread and
//! joined by bounded channels of chunks, so they use the cores concurrently: blob → decrypt
//! ([`decrypt_stage`], encrypted layers only) → decompress ([`decompress_stage`]) → unpack.
//! Failures travel through the stream ([`DecodeFailed`]); the blob is always read to its end so
//! the HMAC and download verdicts are known.

use std::io::{self, BufRead, Read};
use std::sync::mpsc;

use crate::manifest::Compression;

/// Read buffer for layer blobs.
pub(crate) const BLOB_BUFFER: usize = 256 * 1024;

/// Bytes per chunk handed from one stage to the next.
pub(crate) const DECODE_CHUNK: usize = 256 * 1024;
/// Chunks in flight between two stages.
pub(crate) const DECODE_QUEUE: usize = 8;

/// A failure of a stage (reading, decrypting or decompressing the blob), carried to the next
/// stage through the stream.
#[derive(Debug, thiserror::Error)]
#[error("decoding the layer blob failed")]
struct DecodeFailed(#[source] io::Error);

/// The sending side of a stage: a bounded channel of chunks, and the used chunks coming back.
pub(crate) struct ChunkSender {
    tx: mpsc::SyncSender<io::Result<Vec<u8>>>,
    back: mpsc::Receiver<Vec<u8>>,
}

/// A bounded channel of chunks from one stage to the next.
pub(crate) fn chunk_channel() -> (ChunkSender, ChannelReader) {
    let (tx, rx) = mpsc::sync_channel(DECODE_QUEUE);
    let (back_tx, back) = mpsc::channel();
    (ChunkSender { tx, back }, ChannelReader::new(rx, back_tx))
}

/// How forwarding a reader down a [`ChunkSender`] ended.
enum Forwarded {
    /// The reader reached its end.
    End,
    /// The reader failed.
    Failed(io::Error),
    /// The next stage hung up.
    HungUp,
}

impl ChunkSender {
    /// Sends `reader`'s bytes in chunks until it ends, fails or the next stage hangs up.
    fn forward(&self, reader: &mut dyn Read) -> Forwarded {
        loop {
            let mut chunk = self
                .back
                .try_recv()
                .unwrap_or_else(|_| Vec::with_capacity(DECODE_CHUNK));
            chunk.resize(DECODE_CHUNK, 0);
            let mut filled = 0;
            let mut failed = None;
            while filled < chunk.len() {
                match reader.read(&mut chunk[filled..]) {
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
            if filled > 0 && self.tx.send(Ok(chunk)).is_err() {
                return Forwarded::HungUp;
            }
            if let Some(e) = failed {
                return Forwarded::Failed(e);
            }
            if filled == 0 {
                return Forwarded::End;
            }
        }
    }

    /// Ends the stream with `err` (the next stage may be gone already).
    fn fail(self, err: io::Error) {
        let _ = self.tx.send(Err(io::Error::other(DecodeFailed(err))));
    }
}

/// The decrypt stage: sends the decrypted blob on to the decompressor until it ends, fails or
/// the decompressor hangs up, then reads it to its end, so the HMAC and download verdicts are
/// always known. Returns that verdict, which is the one that counts: when it is an error, the
/// decompressor only learns that this stage failed.
pub(crate) fn decrypt_stage(mut plain: impl Read, out: ChunkSender) -> io::Result<u64> {
    match out.forward(&mut plain) {
        Forwarded::End => Ok(0),
        Forwarded::Failed(e) => {
            out.fail(io::Error::new(e.kind(), "decrypting the layer blob failed"));
            Err(e)
        }
        Forwarded::HungUp => {
            drop(out);
            io::copy(&mut plain, &mut io::sink())
        }
    }
}

/// The decompress stage: decompresses `plain` into chunks for the unpacker until it ends, fails
/// or the unpacker hangs up; then reads `plain` to its end (so the HMAC and download verdicts
/// are always known) and returns how that went.
pub(crate) fn decompress_stage(
    mut plain: Box<dyn BufRead + Send + '_>,
    compression: Compression,
    out: ChunkSender,
) -> io::Result<u64> {
    {
        let decoder: io::Result<Box<dyn Read + '_>> = match compression {
            Compression::None => Ok(Box::new(&mut plain)),
            Compression::Gzip => Ok(Box::new(flate2::bufread::MultiGzDecoder::new(&mut plain))),
            Compression::Zstd => {
                zstd::stream::read::Decoder::with_buffer(&mut plain).and_then(|mut d| {
                    d.window_log_max(27)?;
                    Ok(Box::new(d) as Box<dyn Read + '_>)
                })
            }
        };
        let forwarded = match decoder {
            Err(e) => Forwarded::Failed(e),
            Ok(mut decoder) => out.forward(&mut decoder),
        };
        // The unpacker sees the end of the stream (or its error) now, not after the drain.
        match forwarded {
            Forwarded::Failed(e) => out.fail(e),
            Forwarded::End | Forwarded::HungUp => drop(out),
        }
    }
    io::copy(&mut plain, &mut io::sink())
}

/// The receiving side of a stage's stream; returns used chunks to the sender for reuse.
pub(crate) struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
    back: mpsc::Sender<Vec<u8>>,
    chunk: Vec<u8>,
    pos: usize,
    failed: bool,
}

impl ChannelReader {
    fn new(rx: mpsc::Receiver<io::Result<Vec<u8>>>, back: mpsc::Sender<Vec<u8>>) -> Self {
        Self {
            rx,
            back,
            chunk: Vec::new(),
            pos: 0,
            failed: false,
        }
    }
}

impl BufRead for ChannelReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
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
                        // The sender may be gone already; the chunk is then just freed.
                        let _ = self.back.send(used);
                    }
                    self.pos = 0;
                }
                Ok(Err(e)) => {
                    self.failed = true;
                    return Err(e);
                }
                // The sender finished: end of stream.
                Err(_) => return Ok(&[]),
            }
        }
        Ok(&self.chunk[self.pos..])
    }

    fn consume(&mut self, amount: usize) {
        self.pos = (self.pos + amount).min(self.chunk.len());
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = buf.len().min(available.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

/// Whether an I/O error chain holds a [`DecodeFailed`].
pub(crate) fn decode_failed_in(err: &io::Error) -> bool {
    crate::store::io_chain_holds::<DecodeFailed>(err)
}
