//! `coffer-net-probe`: the TCP workload of the pod network benchmark (`tests/bench/net.rs`), a
//! static binary that runs in a busybox container, in a Coffer pod (in its VM) or a runc pod.
//!
//! `server --listen ADDR` accepts connections until it is killed. Each connection starts with one
//! byte: `c` (a connect probe: the server answers `k` and closes) or `t` (a throughput stream: the
//! server reads until the client shuts its side, then answers with the byte count, 8 bytes big
//! endian). `client --connect ADDR --connects N --bytes B` makes N sequential connect probes
//! (timing each from `connect` to the server's `k`), then sends B bytes in one stream (timing
//! from the first byte to the server's count), and prints one JSON line: `connect_us` (each
//! probe, microseconds) and `bytes`, `stream_us`.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use clap::{Parser, Subcommand};

/// How long one connection may take.
const IO_TIMEOUT: Duration = Duration::from_secs(120);
/// Write size of the throughput stream.
const CHUNK: usize = 64 * 1024;

#[derive(Debug, Parser)]
#[command(
    name = "coffer-net-probe",
    about = "TCP connect latency and throughput (Coffer's pod network benchmark)"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Answer connect probes and count throughput streams until killed.
    Server {
        /// Address to listen on.
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Measure against a server.
    Client {
        /// The server.
        #[arg(long)]
        connect: SocketAddr,
        /// Sequential connect probes.
        #[arg(long, default_value_t = 50)]
        connects: u32,
        /// Bytes of the throughput stream.
        #[arg(long, default_value_t = 16 << 20)]
        bytes: u64,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().mode {
        Mode::Server { listen } => serve(listen),
        Mode::Client {
            connect,
            connects,
            bytes,
        } => measure(connect, connects, bytes),
    }
}

fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).with_context(|| format!("listening on {listen}"))?;
    println!("listening on {listen}");
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        std::thread::spawn(move || {
            if let Err(err) = answer(stream) {
                eprintln!("connection: {err:#}");
            }
        });
    }
    Ok(())
}

fn answer(mut stream: TcpStream) -> anyhow::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let _ = stream.set_nodelay(true);
    let mut mode = [0u8; 1];
    stream.read_exact(&mut mode)?;
    match mode[0] {
        b'c' => stream.write_all(b"k")?,
        b't' => {
            let mut buf = vec![0u8; CHUNK];
            let mut total = 0u64;
            loop {
                let n = stream.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
            stream.write_all(&total.to_be_bytes())?;
        }
        other => anyhow::bail!("unknown mode byte {other:#x}"),
    }
    Ok(())
}

fn measure(server: SocketAddr, connects: u32, bytes: u64) -> anyhow::Result<()> {
    let mut connect_us = Vec::with_capacity(connects as usize);
    for _ in 0..connects {
        let started = Instant::now();
        let mut stream = TcpStream::connect_timeout(&server, IO_TIMEOUT)
            .with_context(|| format!("connecting to {server}"))?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        let _ = stream.set_nodelay(true);
        stream.write_all(b"c")?;
        let mut ack = [0u8; 1];
        stream.read_exact(&mut ack)?;
        ensure!(
            ack == *b"k",
            "the server answered {ack:?} to a connect probe"
        );
        connect_us.push(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
    }
    let mut stream = TcpStream::connect_timeout(&server, IO_TIMEOUT)
        .with_context(|| format!("connecting to {server}"))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream.write_all(b"t")?;
    let chunk = vec![0x5au8; CHUNK];
    let started = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = usize::try_from(left.min(CHUNK as u64)).unwrap_or(CHUNK);
        stream.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    stream.shutdown(Shutdown::Write)?;
    let mut count = [0u8; 8];
    stream.read_exact(&mut count)?;
    let stream_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    ensure!(
        u64::from_be_bytes(count) == bytes,
        "the server counted {} of {bytes} bytes",
        u64::from_be_bytes(count)
    );
    println!(
        "{}",
        serde_json::json!({"connect_us": connect_us, "bytes": bytes, "stream_us": stream_us})
    );
    Ok(())
}
