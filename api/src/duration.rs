//! Human durations as used in configuration and on the command line: `"20s"`, `"15m"`, `"8h"`, `"7d"`.

use std::time::Duration;

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration; write a number and a unit, e.g. \"15m\"")]
    Empty,
    #[error("{0:?} is not a duration; write a whole number followed by s, m, h or d, e.g. \"20s\" or \"15m\"")]
    Malformed(String),
    #[error("{0:?} is zero; a duration must be positive")]
    Zero(String),
    #[error("{0:?} is longer than ten years")]
    Overflow(String),
}

/// Ten years: nothing in this system legitimately lasts longer.
const MAX_SECS: u64 = 3650 * 86_400;

/// Parses `N` followed by exactly one unit of `s`, `m`, `h` or `d`; nothing else is accepted.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    let malformed = || DurationError::Malformed(text.to_string());
    let (digits, unit) = text.split_at(text.len() - 1);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.len() > 12 {
        return Err(malformed());
    }
    let n: u64 = digits.parse().map_err(|_| malformed())?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(malformed()),
    };
    if n == 0 {
        return Err(DurationError::Zero(text.to_string()));
    }
    let secs = n
        .checked_mul(scale)
        .filter(|s| *s <= MAX_SECS)
        .ok_or_else(|| DurationError::Overflow(text.to_string()))?;
    Ok(Duration::from_secs(secs))
}

/// Formats a duration in the largest unit that divides it, the inverse of [`parse`].
pub fn format(d: Duration) -> String {
    let s = d.as_secs();
    if s > 0 && s.is_multiple_of(86_400) {
        format!("{}d", s / 86_400)
    } else if s > 0 && s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s > 0 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_each_unit() {
        assert_eq!(parse("20s").unwrap(), Duration::from_secs(20));
        assert_eq!(parse("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse("8h").unwrap(), Duration::from_secs(28_800));
        assert_eq!(parse("7d").unwrap(), Duration::from_secs(604_800));
    }

    #[test]
    fn refuses_everything_else() {
        for bad in [
            "", "s", "15", "15 m", "1.5h", "-5m", "5M", "5min", "m5", "+5m", " 5m", "5m ",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} must be refused");
        }
        assert_eq!(parse("0s"), Err(DurationError::Zero("0s".into())));
        assert!(matches!(
            parse("999999999999d"),
            Err(DurationError::Overflow(_))
        ));
        assert!(matches!(parse("3651d"), Err(DurationError::Overflow(_))));
        assert!(parse("3650d").is_ok());
    }

    #[test]
    fn format_round_trips() {
        for s in ["20s", "90s", "15m", "8h", "7d"] {
            assert_eq!(format(parse(s).unwrap()), s);
        }
    }
}
