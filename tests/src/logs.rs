//! Output of a child process, captured line by line while it runs.
//!
//! A child whose pipe is closed dies of EPIPE (or blocks when the pipe is full), so every
//! piped stream is read to its end by a thread of its own. Waiting for a line uses a condition
//! variable: no polling, and a stream that ends (the process died) stops the wait at once.

use std::io::{BufRead, BufReader, Read};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// Lines kept per process; the rest are counted but dropped, in case something logs in a loop.
const MAX_LINES: usize = 50_000;

#[derive(Default)]
struct State {
    lines: Vec<String>,
    dropped: usize,
    /// Streams that are still open.
    open: usize,
}

/// Captured lines of one or more streams (stdout and stderr may share one `Lines`).
#[derive(Clone, Default)]
pub struct Lines(Arc<(Mutex<State>, Condvar)>);

impl Lines {
    pub fn new() -> Lines {
        Lines::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.0
             .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Reads `pipe` to its end on a new thread, appending each line (lossy UTF-8, without the
    /// line break) with `prefix` in front.
    pub fn drain(&self, pipe: impl Read + Send + 'static, prefix: &str) -> thread::JoinHandle<()> {
        self.state().open += 1;
        let me = self.clone();
        let prefix = prefix.to_string();
        thread::spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let text = String::from_utf8_lossy(&buf);
                        me.push(format!("{prefix}{}", text.trim_end_matches(['\n', '\r'])));
                    }
                }
            }
            me.state().open -= 1;
            me.0 .1.notify_all();
        })
    }

    /// Appends one line.
    pub fn push(&self, line: String) {
        let mut st = self.state();
        if st.lines.len() < MAX_LINES {
            st.lines.push(line);
        } else {
            st.dropped += 1;
        }
        drop(st);
        self.0 .1.notify_all();
    }

    /// Everything captured so far.
    pub fn snapshot(&self) -> Vec<String> {
        let st = self.state();
        let mut out = st.lines.clone();
        if st.dropped > 0 {
            out.push(format!("[{} more lines dropped]", st.dropped));
        }
        out
    }

    /// The number of lines captured so far: a mark for [`Lines::wait_for`].
    pub fn len(&self) -> usize {
        self.state().lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether every stream has ended (the process closed them, usually by exiting).
    pub fn ended(&self) -> bool {
        self.state().open == 0
    }

    /// The captured lines joined for an error message.
    pub fn text(&self) -> String {
        self.snapshot().join("\n")
    }

    /// Waits for the first line at index `from` or later that satisfies `pred` and returns it
    /// with its index. Gives up when `timeout` has passed or every stream has ended without
    /// such a line; the timeout is a bound on failure only.
    pub fn wait_for(
        &self,
        from: usize,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<(usize, String)> {
        let deadline = Instant::now() + timeout;
        let mut st = self.state();
        let mut checked = from;
        loop {
            if let Some((i, l)) = st
                .lines
                .iter()
                .enumerate()
                .skip(checked)
                .find(|(_, l)| pred(l))
            {
                return Some((i, l.clone()));
            }
            checked = checked.max(st.lines.len());
            if st.open == 0 {
                return None;
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            st = self
                .0
                 .1
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }

    /// Waits until every stream has ended (at most `timeout`); returns whether they have.
    pub fn wait_ended(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.state();
        while st.open > 0 {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            st = self
                .0
                 .1
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
        true
    }

    /// Lines at index `from` or later.
    pub fn since(&self, from: usize) -> Vec<String> {
        self.state().lines.iter().skip(from).cloned().collect()
    }
}
