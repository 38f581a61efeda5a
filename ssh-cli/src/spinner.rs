//! Progress on stderr while `elevate --wait` polls: a spinner that redraws one line when
//! stderr is a terminal, otherwise one plain line per change (for logs and CI).

use std::io::Write;

const FRAMES: [char; 4] = ['|', '/', '-', '\\'];

/// Erase the current terminal line and return to its start.
const CLEAR_LINE: &str = "\r\u{1b}[2K";

/// Shows the waiting state. `text` passed in must already be escaped.
#[derive(Debug)]
pub struct Progress {
    terminal: bool,
    frame: usize,
    /// What the plain mode printed last, so it prints changes only.
    last_plain: Option<String>,
    /// Whether a spinner line is on screen.
    drawn: bool,
}

impl Progress {
    pub fn new(terminal: bool) -> Self {
        Self {
            terminal,
            frame: 0,
            last_plain: None,
            drawn: false,
        }
    }

    /// Whether this redraws a spinner (and so wants frequent [`tick`](Self::tick)s).
    pub fn is_terminal(&self) -> bool {
        self.terminal
    }

    /// The spinner line for `frame`: `\r`, erase, frame, text.
    pub fn spinner_line(frame: usize, text: &str) -> String {
        format!("{CLEAR_LINE}{} {text}", FRAMES[frame % FRAMES.len()])
    }

    /// Terminal: redraws the spinner with `text` (time left and all). Plain: nothing.
    pub fn tick(&mut self, text: &str) {
        if !self.terminal {
            return;
        }
        self.frame = self.frame.wrapping_add(1);
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "{}", Self::spinner_line(self.frame, text));
        let _ = err.flush();
        self.drawn = true;
    }

    /// A new state: terminal, redraws; plain, prints `key_text` on its own line if it
    /// differs from the last one printed.
    pub fn update(&mut self, key_text: &str, spinner_text: &str) {
        if self.terminal {
            self.tick(spinner_text);
        } else if self.last_plain.as_deref() != Some(key_text) {
            eprintln!("{key_text}");
            self.last_plain = Some(key_text.to_string());
        }
    }

    /// A message on its own line (the spinner, if any, is erased first and redrawn by the
    /// next tick).
    pub fn note(&mut self, text: &str) {
        self.clear();
        eprintln!("{text}");
    }

    /// Erases the spinner line, if one is drawn.
    pub fn clear(&mut self) {
        if self.drawn {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "{CLEAR_LINE}");
            let _ = err.flush();
            self.drawn = false;
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spinner_frames_cycle_and_clear_the_line() {
        assert_eq!(Progress::spinner_line(0, "x"), "\r\u{1b}[2K| x");
        assert_eq!(Progress::spinner_line(1, "x"), "\r\u{1b}[2K/ x");
        assert_eq!(Progress::spinner_line(5, "x"), "\r\u{1b}[2K/ x");
        assert!(!Progress::new(false).is_terminal());
    }

    #[test]
    fn plain_mode_remembers_what_it_printed() {
        let mut p = Progress::new(false);
        p.update("a", "a…");
        assert_eq!(p.last_plain.as_deref(), Some("a"));
        p.tick("ignored");
        assert!(!p.drawn);
    }
}
