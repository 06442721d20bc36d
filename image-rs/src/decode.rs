//! The stages of a layer apply between the blob and the unpacker, each on its own thread and
//! joined by bounded channels of chunks, so they use the cores concurrently: blob → decrypt
//! ([`decrypt_stage`], encrypted layers only) → decompress ([`decompress_stage`]) → unpack.
//! Failures travel through the stream ([`DecodeFailed`]); the blob is always read to its end so
//! the HMAC and download verdicts are known.

use std::io::{self, BufRead, Read};
use std::sync::{Arc, mpsc};

use crate::decrypt::LayerKey;
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

/// Reads into `buf` until it is full or the reader ends or fails; returns the bytes read and
/// the failure, if any.
fn fill(reader: &mut dyn Read, buf: &mut [u8]) -> (usize, Option<io::Error>) {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (filled, Some(e)),
        }
    }
    (filled, None)
}

impl ChunkSender {
    /// An empty chunk buffer, reusing one the next stage is done with when there is one.
    fn buffer(&self) -> Vec<u8> {
        self.back
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(DECODE_CHUNK))
    }

    /// Sends `chunk` on; false if the next stage hung up.
    fn send(&self, chunk: Vec<u8>) -> bool {
        self.tx.send(Ok(chunk)).is_ok()
    }

    /// Sends `reader`'s bytes in chunks until it ends, fails or the next stage hangs up.
    fn forward(&self, reader: &mut dyn Read) -> Forwarded {
        loop {
            let mut chunk = self.buffer();
            chunk.resize(DECODE_CHUNK, 0);
            let (filled, failed) = fill(reader, &mut chunk);
            chunk.truncate(filled);
            if filled > 0 && !self.send(chunk) {
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

/// The decrypt stage. It reads the ciphertext in chunks and hands each one both to a MAC
/// thread of its own (the HMAC is over the ciphertext, so it runs beside the decryption) and,
/// decrypted, to the decompressor. At the end of the blob the HMAC is checked, and only then
/// does the decompressor see the end of its stream. The digest of the decrypted blob named in
/// the private options is not computed: the blob digest and the wrapped key in the pinned
/// manifest fix the decrypted bytes, and the diff_id checks what they decompress to (see
/// [`crate::decrypt`]). If the decompressor hangs up, the rest of the blob still goes through
/// the HMAC, so its verdict is always known. Returns the verdict, which is the one that counts:
/// when it is an error, the decompressor only learns that this stage failed.
pub(crate) fn decrypt_stage(
    mut ciphertext: impl Read,
    key: LayerKey,
    out: ChunkSender,
) -> io::Result<()> {
    let (mut mac, mut decrypter) = key.split();
    let (read, mac) = std::thread::scope(|scope| {
        let (to_mac, for_mac) = mpsc::sync_channel::<Arc<Vec<u8>>>(DECODE_QUEUE);
        let (mac_done, from_mac) = mpsc::channel::<Arc<Vec<u8>>>();
        let mac_thread = scope.spawn(move || {
            for chunk in for_mac {
                mac.update(&chunk);
                // This stage may be gone already; the chunk is then just freed.
                let _ = mac_done.send(chunk);
            }
            mac
        });
        let mut spare = Vec::new();
        let mut decompressing = true;
        let read = loop {
            // Ciphertext buffers come back once the MAC thread is done with them.
            spare.extend(from_mac.try_iter().filter_map(|c| Arc::try_unwrap(c).ok()));
            let mut chunk = spare
                .pop()
                .unwrap_or_else(|| Vec::with_capacity(DECODE_CHUNK));
            chunk.resize(DECODE_CHUNK, 0);
            let (filled, failed) = fill(&mut ciphertext, &mut chunk);
            if let Some(e) = failed {
                break Err(e);
            }
            if filled == 0 {
                break Ok(());
            }
            chunk.truncate(filled);
            let chunk = Arc::new(chunk);
            if to_mac.send(Arc::clone(&chunk)).is_err() {
                break Err(io::Error::other("the MAC thread stopped"));
            }
            if decompressing {
                let mut plain = out.buffer();
                plain.resize(filled, 0);
                decrypter.decrypt_into(&chunk, &mut plain);
                decompressing = out.send(plain);
            }
        };
        drop(to_mac);
        let mac = mac_thread
            .join()
            .map_err(|_| io::Error::other("MAC thread panicked"));
        (read, mac)
    });
    let verdict = read
        .and(mac)
        .and_then(|mac| mac.verify().map_err(io::Error::other));
    match verdict {
        Ok(()) => Ok(()),
        Err(e) => {
            out.fail(io::Error::new(e.kind(), "decrypting the layer blob failed"));
            Err(e)
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
) -> io::Result<()> {
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
    io::copy(&mut plain, &mut io::sink()).map(drop)
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
