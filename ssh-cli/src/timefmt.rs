//! Clock and time display helpers. Times on the wire are unix seconds; people read UTC
//! RFC 3339 and short durations.

use std::time::{SystemTime, UNIX_EPOCH};

/// The local clock in unix seconds (0 if it is before 1970, which only a broken clock is).
pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `2024-05-01T12:00:00Z`; the raw number if it is out of range.
pub fn utc(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("@{unix}"))
}

/// A compact duration: `45s`, `9m 59s`, `7h 59m`, `3d 4h`.
pub fn duration(secs: i64) -> String {
    let s = secs.max(0);
    let (d, h, m, s2) = (s / 86_400, (s / 3600) % 24, (s / 60) % 60, s % 60);
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {s2}s")
    } else {
        format!("{s2}s")
    }
}

/// "in 9m 59s" for a future instant, "expired 3m 0s ago" for a past one, relative to `now`.
pub fn relative(at: i64, now: i64) -> String {
    let left = at.saturating_sub(now);
    if left > 0 {
        format!("{} left", duration(left))
    } else {
        format!("expired {} ago", duration(-left))
    }
}

/// The skew beyond which pedm-ssh warns: certificates are back-dated by about a minute and
/// live minutes, so a clock off by more than this makes them look not-yet-valid or expired.
pub const SKEW_WARN_SECS: i64 = 30;

/// A warning when the CA's clock and ours differ by more than [`SKEW_WARN_SECS`].
/// `skew` is `ca_time - local`.
pub fn skew_warning(skew: i64) -> Option<String> {
    if skew.unsigned_abs() <= SKEW_WARN_SECS.unsigned_abs() {
        return None;
    }
    let dir = if skew > 0 { "behind" } else { "ahead of" };
    Some(format!(
        "this machine's clock is {} {dir} the CA's; certificate times will look wrong here: fix the clock (e.g. enable NTP with `timedatectl set-ntp true`)",
        duration(skew.saturating_abs())
    ))
}

/// Signed skew text for display, e.g. `+2s (CA ahead)`.
pub fn skew_text(skew: i64) -> String {
    match skew {
        0 => "0s".to_string(),
        s if s > 0 => format!("+{s}s (the CA's clock is ahead of this machine's)"),
        s => format!("{s}s (the CA's clock is behind this machine's)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(duration(45), "45s");
        assert_eq!(duration(599), "9m 59s");
        assert_eq!(duration(8 * 3600 - 1), "7h 59m");
        assert_eq!(duration(3 * 86_400 + 4 * 3600), "3d 4h");
        assert_eq!(duration(-5), "0s");
        assert_eq!(relative(110, 100), "10s left");
        assert_eq!(relative(100, 280), "expired 3m 0s ago");
    }

    #[test]
    fn skew_threshold() {
        assert!(skew_warning(0).is_none());
        assert!(skew_warning(30).is_none());
        assert!(skew_warning(-30).is_none());
        assert!(skew_warning(31).unwrap().contains("behind"));
        assert!(skew_warning(-31).unwrap().contains("ahead of"));
        assert!(skew_warning(i64::MIN).is_some());
    }
}
