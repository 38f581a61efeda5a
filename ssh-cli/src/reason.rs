//! The rule for reasons and comments, checked here before anything is sent (the CA checks
//! it again): 1–200 characters, none of them a control character. A reason is shown to
//! approvers and written to the audit log; a newline or an escape sequence in it could
//! forge lines there.

use crate::exit::{Exit, Failure};

/// The longest reason or comment, in characters.
pub const MAX_CHARS: usize = 200;

/// What is wrong with a reason or comment, if anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    Empty,
    TooLong(usize),
    /// The first control character and its position (0-based, in characters).
    Control(char, usize),
}

/// Checks `text` against the rule.
pub fn check(text: &str) -> Result<(), Problem> {
    if text.is_empty() {
        return Err(Problem::Empty);
    }
    if let Some((i, c)) = text.chars().enumerate().find(|(_, c)| c.is_control()) {
        return Err(Problem::Control(c, i));
    }
    let n = text.chars().count();
    if n > MAX_CHARS {
        return Err(Problem::TooLong(n));
    }
    Ok(())
}

/// The failure (exit 1) for a refused `--reason` or `--comment`, stating the rule.
pub fn require_valid(text: &str, option: &str) -> Result<(), Failure> {
    let what = match check(text) {
        Ok(()) => return Ok(()),
        Err(Problem::Empty) => "is empty".to_string(),
        Err(Problem::TooLong(n)) => format!("has {n} characters"),
        Err(Problem::Control(c, i)) => format!(
            "contains the control character {} at position {}",
            c.escape_unicode(),
            i + 1
        ),
    };
    Err(Failure::plain(
        Exit::Error,
        format!(
            "{option} {what}; use 1-{MAX_CHARS} printable characters, without control characters (no newlines, tabs or escape sequences)"
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule() {
        assert_eq!(check("INC-1234"), Ok(()));
        assert_eq!(check("Zoë needs the replica — see INC-1"), Ok(()));
        assert_eq!(check(&"x".repeat(200)), Ok(()));
        assert_eq!(check(&"é".repeat(200)), Ok(()), "characters, not bytes");
        assert_eq!(check(""), Err(Problem::Empty));
        assert_eq!(check(&"x".repeat(201)), Err(Problem::TooLong(201)));
        assert_eq!(check("a\nb"), Err(Problem::Control('\n', 1)));
        assert_eq!(check("\u{1b}[2J"), Err(Problem::Control('\u{1b}', 0)));
        assert_eq!(check("tab\there"), Err(Problem::Control('\t', 3)));
        assert_eq!(check("c1\u{9b}x"), Err(Problem::Control('\u{9b}', 2)));
        assert_eq!(check("del\u{7f}"), Err(Problem::Control('\u{7f}', 3)));
    }

    #[test]
    fn refusal_states_the_rule_and_is_one_line() {
        let f = require_valid("a\u{1b}[2Jb", "--reason").unwrap_err();
        assert_eq!(f.exit, Exit::Error);
        let text = f.to_string();
        assert!(text.contains("--reason contains the control character \\u{1b} at position 2"));
        assert!(text.contains("1-200 printable characters"), "{text}");
        assert!(!text.contains('\u{1b}') && !text.contains('\n'), "{text}");
        assert!(require_valid("ok", "--comment").is_ok());
        assert!(require_valid("", "--comment")
            .unwrap_err()
            .to_string()
            .contains("--comment is empty"));
    }
}
