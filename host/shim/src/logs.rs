//! Where the serving shim's log lines go: containerd's `log` fifo in the bundle of each live task
//! of the pod. containerd reads that fifo of every task it created (and copies it into its own
//! log), so the pod's shim writes to the fifo of its oldest live task, and to the next one when
//! that task is deleted or nobody reads its fifo. A deleted task's fifo is closed, which
//! ends containerd's copy of it — except the pod's last one, kept until the shim exits so that
//! its final lines (the VM stopping, the shim exiting) still reach containerd. Writes never
//! block: a line no fifo takes at once is dropped.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

/// The name of the log fifo in a bundle.
pub const LOG_FIFO: &str = "log";

/// The log fifos of the pod's live tasks, oldest first.
#[derive(Debug, Default)]
pub struct LogSink {
    fifos: Mutex<Vec<(String, File)>>,
}

impl LogSink {
    /// An empty sink (lines go nowhere until a task's fifo is added).
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Adds task `id`'s fifo (`bundle/log`), if containerd made one. Not an error when absent:
    /// containerd makes it only when it reads shim logs.
    pub fn add(&self, id: &str, bundle: &Path) {
        let Ok(file) = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(nix::libc::O_NONBLOCK)
            .open(bundle.join(LOG_FIFO))
        else {
            return;
        };
        let mut fifos = self.fifos.lock().unwrap_or_else(PoisonError::into_inner);
        if !fifos.iter().any(|(known, _)| known == id) {
            fifos.push((id.to_owned(), file));
        }
    }

    /// Whether any fifo is open.
    pub fn is_open(&self) -> bool {
        !self
            .fifos
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }

    /// Closes task `id`'s fifo (the task is deleted), unless it is the last one.
    pub fn remove(&self, id: &str) {
        let mut fifos = self.fifos.lock().unwrap_or_else(PoisonError::into_inner);
        if fifos.len() > 1 {
            fifos.retain(|(known, _)| known != id);
        }
    }

    /// Writes one line to the oldest fifo whose reader takes it. A fifo nobody reads (EPIPE:
    /// containerd is restarting) stays: containerd reopens it when it is back.
    fn write_line(&self, line: &[u8]) {
        let mut fifos = self.fifos.lock().unwrap_or_else(PoisonError::into_inner);
        for (_, file) in fifos.iter_mut() {
            match file.write_all(line) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                // Full (containerd is slow) or another failure: the line is dropped.
                Err(_) => return,
            }
        }
    }
}

/// One log line's writer: buffers what the formatter writes and hands it to the sink at once.
#[derive(Debug)]
pub struct LineWriter {
    sink: Arc<LogSink>,
    line: Vec<u8>,
}

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.line.is_empty() {
            self.sink.write_line(&self.line);
        }
    }
}

/// The `tracing` writer over a sink.
#[derive(Debug, Clone)]
pub struct MakeLineWriter(pub Arc<LogSink>);

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for MakeLineWriter {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            sink: self.0.clone(),
            line: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// A bundle with a log fifo and a reader on it, as containerd has.
    fn bundle_with_reader(dir: &Path, name: &str) -> (std::path::PathBuf, File) {
        let bundle = dir.join(name);
        std::fs::create_dir_all(&bundle).unwrap();
        let fifo = bundle.join(LOG_FIFO);
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        (bundle, reader)
    }

    fn drain(reader: &mut File) -> String {
        let mut buf = [0u8; 4096];
        match reader.read(&mut buf) {
            Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
            Err(_) => String::new(),
        }
    }

    fn log(sink: &Arc<LogSink>, line: &str) {
        let mut w = tracing_subscriber::fmt::MakeWriter::make_writer(&MakeLineWriter(sink.clone()));
        w.write_all(line.as_bytes()).unwrap();
    }

    #[test]
    fn lines_go_to_the_oldest_live_task_and_move_on_when_it_goes() {
        let dir = tempfile::tempdir().unwrap();
        let (first, mut first_reader) = bundle_with_reader(dir.path(), "first");
        let (second, mut second_reader) = bundle_with_reader(dir.path(), "second");
        let (third, third_reader) = bundle_with_reader(dir.path(), "third");
        let sink = LogSink::new();
        sink.add("first", &first);
        sink.add("second", &second);
        sink.add("third", &third);
        // A bundle without a fifo (containerd not reading) is skipped.
        sink.add("none", dir.path());

        log(&sink, "one\n");
        assert_eq!(drain(&mut first_reader), "one\n");
        assert_eq!(drain(&mut second_reader), "");

        // The first task is deleted: the next live one carries the pod's lines.
        sink.remove("first");
        log(&sink, "two\n");
        assert_eq!(drain(&mut first_reader), "");
        assert_eq!(drain(&mut second_reader), "two\n");

        // Nobody reads the second one (EPIPE): the line reaches the third. Once a reader is back
        // (containerd restarted), the second, older one carries the lines again.
        drop(second_reader);
        let mut third_reader = third_reader;
        log(&sink, "three\n");
        assert_eq!(drain(&mut third_reader), "three\n");
        let mut second_reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NONBLOCK)
            .open(second.join(LOG_FIFO))
            .unwrap();
        log(&sink, "four\n");
        assert_eq!(drain(&mut second_reader), "four\n");
        assert_eq!(drain(&mut third_reader), "");

        // The last task's fifo stays for the shim's final lines; adding it again changes nothing.
        sink.remove("second");
        sink.add("third", &third);
        sink.remove("third");
        assert_eq!(sink.fifos.lock().unwrap().len(), 1);
        log(&sink, "five\n");
        assert_eq!(drain(&mut third_reader), "five\n");
    }
}
