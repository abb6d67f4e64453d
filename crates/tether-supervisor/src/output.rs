//! Service output: every line of every child's stdout and stderr, read as it
//! arrives (no polling), kept in a ring buffer per service, appended to a log
//! file when configured, and broadcast to whoever follows (the terminal,
//! `tether logs -f`).

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::broadcast;

use crate::event::unix_ms;

/// One line of output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Line {
    pub service: String,
    pub stream: Stream,
    pub text: String,
    pub time_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Where output goes. Cheap to clone.
#[derive(Debug, Clone)]
pub struct OutputHub {
    lines: broadcast::Sender<Line>,
    buffers: Arc<Mutex<HashMap<String, VecDeque<Line>>>>,
    keep: usize,
}

/// Lines longer than this are cut into pieces of this size, so one endless
/// line cannot exhaust memory.
const MAX_LINE: usize = 64 * 1024;

impl OutputHub {
    /// A hub keeping the last `keep` lines of each service.
    pub fn new(keep: usize) -> OutputHub {
        let (lines, _) = broadcast::channel(4096);
        OutputHub {
            lines,
            buffers: Arc::default(),
            keep,
        }
    }

    /// Follows every new line. A follower that falls far behind misses
    /// lines (and learns how many from the channel).
    pub fn subscribe(&self) -> broadcast::Receiver<Line> {
        self.lines.subscribe()
    }

    /// The kept lines of `service` (or of every service), oldest first.
    pub fn recent(&self, service: Option<&str>) -> Vec<Line> {
        let buffers = self.buffers.lock().unwrap_or_else(|e| e.into_inner());
        let mut lines: Vec<Line> = match service {
            Some(name) => buffers
                .get(name)
                .map(|b| b.iter().cloned().collect())
                .unwrap_or_default(),
            None => buffers.values().flat_map(|b| b.iter().cloned()).collect(),
        };
        lines.sort_by_key(|l| l.time_ms);
        lines
    }

    /// The last `n` lines of `service`, for a diagnosis.
    pub fn tail(&self, service: &str, n: usize) -> Vec<String> {
        let buffers = self.buffers.lock().unwrap_or_else(|e| e.into_inner());
        buffers
            .get(service)
            .map(|b| {
                b.iter()
                    .skip(b.len().saturating_sub(n))
                    .map(|l| l.text.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn push(&self, line: Line) {
        {
            let mut buffers = self.buffers.lock().unwrap_or_else(|e| e.into_inner());
            let buffer = buffers.entry(line.service.clone()).or_default();
            if buffer.len() >= self.keep {
                buffer.pop_front();
            }
            buffer.push_back(line.clone());
        }
        // No follower is fine.
        let _ = self.lines.send(line);
    }

    /// Reads `pipe` line by line until it closes, keeping and broadcasting
    /// each line, and appending it to `file` if given.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: a partial line is lost, nothing else.
    pub async fn pump(
        self,
        service: String,
        stream: Stream,
        pipe: impl AsyncRead + Unpin,
        file: Option<Arc<LogFile>>,
    ) {
        let mut reader = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match read_line_capped(&mut reader, &mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                buf.pop();
            }
            let text = String::from_utf8_lossy(&buf).into_owned();
            if let Some(file) = &file {
                file.write_line(&text);
            }
            self.push(Line {
                service: service.clone(),
                stream,
                text,
                time_ms: unix_ms(SystemTime::now()),
            });
            // Lines already in the buffer come without touching the pipe,
            // so nothing else would make a flooding service's pump yield:
            // this does, every so many lines, and the rest of the stack
            // (status, control, the printer) keeps its turn.
            tokio::task::coop::consume_budget().await;
        }
    }
}

/// Reads up to and including a newline, or `MAX_LINE` bytes.
async fn read_line_capped(
    reader: &mut BufReader<impl AsyncRead + Unpin>,
    buf: &mut Vec<u8>,
) -> std::io::Result<usize> {
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(buf.len());
        }
        let room = MAX_LINE - buf.len();
        let take = available
            .iter()
            .take(room)
            .position(|b| *b == b'\n')
            .map(|i| i + 1);
        let n = take.unwrap_or_else(|| available.len().min(room));
        buf.extend_from_slice(&available[..n]);
        reader.consume(n);
        if take.is_some() || buf.len() >= MAX_LINE {
            return Ok(buf.len());
        }
    }
}

/// A service's log file, appended to. A write that fails (a full disk, a
/// removed mount) never stops the service: the line still goes to the
/// buffer and the followers, the loss is counted, and said at 1, 5, 20, 50,
/// then every 100 lost lines.
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    file: Mutex<std::fs::File>,
    lost: AtomicU64,
}

impl LogFile {
    /// Opens `path` for appending (mode 0600). A missing directory is
    /// created (0700), and that is said, not done silently.
    ///
    /// # Errors
    ///
    /// When the directory cannot be made or the file cannot be opened.
    pub fn open(path: &Path) -> std::io::Result<LogFile> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && !dir.exists()
        {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
            tracing::warn!(
                "log directory {} did not exist; created it (mode 0700)",
                dir.display()
            );
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        Ok(LogFile {
            path: path.to_path_buf(),
            file: Mutex::new(file),
            lost: AtomicU64::new(0),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Lines that could not be written so far.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    fn write_line(&self, text: &str) {
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = writeln!(file, "{text}") {
            let lost = self.lost.fetch_add(1, Ordering::Relaxed) + 1;
            if tether_resilience::milestone(lost) {
                tracing::warn!(
                    "cannot write to log file {}: {e} ({lost} {} lost so far)",
                    self.path.display(),
                    if lost == 1 { "line" } else { "lines" }
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_kept_broadcast_and_capped() {
        let hub = OutputHub::new(2);
        let mut follow = hub.subscribe();
        let input: &[u8] = b"one\ntwo\r\nthree";
        hub.clone()
            .pump("db".into(), Stream::Stdout, input, None)
            .await;
        assert_eq!(follow.recv().await.unwrap().text, "one");
        assert_eq!(follow.recv().await.unwrap().text, "two");
        assert_eq!(follow.recv().await.unwrap().text, "three");
        assert_eq!(
            hub.tail("db", 5),
            ["two", "three"],
            "the ring keeps the last 2"
        );
        assert!(hub.tail("nope", 5).is_empty());
    }

    #[tokio::test]
    async fn endless_lines_are_cut() {
        let hub = OutputHub::new(10);
        let long = vec![b'x'; MAX_LINE * 2 + 10];
        hub.clone()
            .pump("s".into(), Stream::Stderr, long.as_slice(), None)
            .await;
        let lines = hub.recent(Some("s"));
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].text.len(), MAX_LINE);
        assert_eq!(lines[2].text.len(), 10);
    }
}
