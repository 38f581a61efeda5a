//! How elevation requests are shown. Every string in an [`ElevationView`] is untrusted:
//! the requester's name and reason, approvers' names and comments come from other users,
//! and all of it goes through [`escape`] here, so a reason with a newline or an escape
//! sequence cannot forge lines on an approver's terminal.

use crate::escape::{escape, escape_list};
use crate::timefmt;
use pedm_api::{ElevationState, ElevationSummary, ElevationView};
use std::time::Duration;

/// A requested duration as the command line writes it (`15m`, `90s`).
pub fn duration_text(secs: u64) -> String {
    pedm_api::duration::format(Duration::from_secs(secs))
}

/// Who approved: `carol, erin`, or `policy (automatic)` when the CA's policy did. Policy
/// approval is told by the `auto` decision, never by a name (a user may be called anything).
pub fn approvers(view: &ElevationView) -> String {
    if view.decisions.iter().any(|d| d.decision == "auto") {
        "policy (automatic)".to_string()
    } else {
        escape_list(&view.approved_by)
    }
}

/// What the deadline means in the view's state, with the time left: `times out in 58m 2s`,
/// `use within 59m 0s`, `ends in 12m 3s`; `-` for final states or without a deadline.
pub fn time_left(view: &ElevationView, now: i64) -> String {
    let Some(deadline) = view.deadline else {
        return "-".to_string();
    };
    let left = timefmt::duration(deadline.saturating_sub(now));
    match view.state {
        ElevationState::Pending => format!("times out in {left}"),
        ElevationState::Approved => format!("use within {left}"),
        ElevationState::Active => format!("ends in {left}"),
        _ => "-".to_string(),
    }
}

/// The last decision of `kind` (`approve` or `deny`), as `by carol: "comment"`.
fn last_decision(view: &ElevationView, kind: &str) -> Option<String> {
    let d = view.decisions.iter().rev().find(|d| d.decision == kind)?;
    Some(match &d.comment {
        Some(c) => format!("by {}: {}", escape(&d.approver), escape(c)),
        None => format!("by {}", escape(&d.approver)),
    })
}

/// Why a request ended without (or before the end of) its grant, for the message of exit 4.
pub fn ended_text(view: &ElevationView) -> String {
    let id = escape(&view.id);
    match view.state {
        ElevationState::Denied => match last_decision(view, "deny") {
            Some(d) => format!("request {id} was denied {d}"),
            None => format!("request {id} was denied"),
        },
        ElevationState::Cancelled => format!("request {id} was cancelled"),
        ElevationState::Revoked => match last_decision(view, "revoke") {
            Some(d) => format!("elevation {id} was revoked {d}"),
            None => format!("elevation {id} was revoked"),
        },
        ElevationState::TimedOut => {
            format!("request {id} timed out: nobody decided before its deadline")
        }
        ElevationState::Lapsed => {
            format!("elevation {id} lapsed: it was approved but not used in time")
        }
        ElevationState::Expired => format!("elevation {id} has expired"),
        s => format!("request {id} is {}", s.as_str()),
    }
}

/// The one-line state of a request as the waiting requester sees it.
pub fn progress_text(view: &ElevationView, now: i64) -> String {
    match view.state {
        ElevationState::Pending => {
            let n = view.approvals_needed;
            format!(
                "pending, {n} approval{} needed, {}",
                if n == 1 { "" } else { "s" },
                time_left(view, now)
            )
        }
        s => s.as_str().to_string(),
    }
}

/// A past elevation in an approver's view: `ID  NAME  STATE  AGE ago  reason`.
fn recent_line(r: &ElevationSummary, now: i64) -> String {
    format!(
        "{}  {}  {}  {} ago  {}",
        escape(&r.id),
        escape(&r.elevation),
        r.state.as_str(),
        timefmt::duration(now.saturating_sub(r.created_at)),
        escape(&r.reason)
    )
}

/// The block an approver reads before deciding: who, what, why, how long, and the
/// requester's recent elevations. `now` is the CA's clock when known.
pub fn request_block(view: &ElevationView, now: i64) -> String {
    let mut out = String::new();
    let mut line = |label: &str, value: String| {
        out.push_str(&format!("  {label:<12}{value}\n"));
    };
    line("requester:", escape(&view.requester));
    line("elevation:", escape(&view.elevation));
    line("principals:", escape_list(&view.principals));
    line("reason:", escape(&view.reason));
    line("duration:", duration_text(view.duration_secs));
    line(
        "asked:",
        format!(
            "{} ago ({})",
            timefmt::duration(now.saturating_sub(view.created_at)),
            timefmt::utc(view.created_at)
        ),
    );
    match view.state {
        ElevationState::Pending => line(
            "approvals:",
            format!("{} more needed", view.approvals_needed),
        ),
        _ => line("state:", view.state.as_str().to_string()),
    }
    if let Some(deadline) = view.deadline {
        line(
            "deadline:",
            format!("{} ({})", timefmt::utc(deadline), time_left(view, now)),
        );
    }
    for d in &view.decisions {
        let comment = d.comment.as_deref().map(escape).unwrap_or_default();
        line(
            "decision:",
            format!(
                "{} {} {} ago{}{}",
                escape(&d.approver),
                escape(&d.decision),
                timefmt::duration(now.saturating_sub(d.at)),
                if comment.is_empty() { "" } else { ": " },
                comment
            ),
        );
    }
    if view.recent.is_empty() {
        line("recent:", "none in the last 30 days".to_string());
    } else {
        line(
            "recent:",
            format!("{} in the last 30 days", view.recent.len()),
        );
        for r in &view.recent {
            out.push_str(&format!("  {:<12}{}\n", "", recent_line(r, now)));
        }
    }
    out
}

/// Rows as columns padded to their widest cell (in characters); the last column is not
/// padded. Cells must already be escaped.
pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let pad = widths[i].saturating_sub(cell.chars().count());
                line.push_str(cell);
                line.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
pub(crate) mod test_support {
    use pedm_api::{ElevationState, ElevationView};

    pub fn view(state: ElevationState) -> ElevationView {
        ElevationView {
            id: "k3j9x0q2m1ab".into(),
            requester: "bob".into(),
            elevation: "db-admin".into(),
            principals: vec!["db-admin".into()],
            reason: "INC-1234".into(),
            duration_secs: 900,
            state,
            created_at: 1000,
            approved_at: None,
            approved_by: vec![],
            approvals_needed: 1,
            started_at: None,
            ends_at: None,
            deadline: Some(4600),
            decisions: vec![],
            recent: vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::view;
    use super::*;
    use pedm_api::ApprovalView;

    #[test]
    fn time_left_names_what_the_deadline_means() {
        let mut v = view(ElevationState::Pending);
        assert_eq!(time_left(&v, 1000), "times out in 1h 0m");
        v.state = ElevationState::Approved;
        assert_eq!(time_left(&v, 4000), "use within 10m 0s");
        v.state = ElevationState::Active;
        assert_eq!(time_left(&v, 4599), "ends in 1s");
        assert_eq!(time_left(&v, 5000), "ends in 0s");
        v.state = ElevationState::Expired;
        assert_eq!(time_left(&v, 1000), "-");
        v.state = ElevationState::Active;
        v.deadline = None;
        assert_eq!(time_left(&v, 1000), "-");
    }

    #[test]
    fn approvers_and_endings() {
        let mut v = view(ElevationState::Approved);
        v.approved_by = vec!["policy".into()];
        v.decisions.push(ApprovalView {
            approver: "policy".into(),
            decision: "auto".into(),
            comment: None,
            at: 1,
        });
        assert_eq!(approvers(&v), "policy (automatic)");
        v.decisions.clear();
        v.approved_by = vec!["auto".into()];
        assert_eq!(approvers(&v), "auto", "a user named auto is a person");
        v.approved_by = vec!["carol".into(), "er\nin".into()];
        assert_eq!(approvers(&v), "carol, er\\nin");
        v.state = ElevationState::Denied;
        v.decisions.push(ApprovalView {
            approver: "carol\u{1b}[2J".into(),
            decision: "deny".into(),
            comment: Some("no\nway".into()),
            at: 1100,
        });
        let t = ended_text(&v);
        assert_eq!(
            t,
            "request k3j9x0q2m1ab was denied by carol\\u{1b}[2J: no\\nway"
        );
        v.state = ElevationState::TimedOut;
        assert!(ended_text(&v).contains("timed out"));
        v.state = ElevationState::Lapsed;
        assert!(ended_text(&v).contains("lapsed"));
    }

    #[test]
    fn request_block_escapes_everything_from_others() {
        let mut v = view(ElevationState::Pending);
        v.requester = "mallory\n  reason:     harmless".into();
        v.reason = "\u{1b}[2Jok\r".into();
        v.recent.push(ElevationSummary {
            id: "old".into(),
            elevation: "db-admin".into(),
            state: ElevationState::Expired,
            created_at: 900,
            reason: "earlier\u{7}".into(),
        });
        let b = request_block(&v, 1060);
        assert!(!b.contains('\u{1b}') && !b.contains('\r') && !b.contains('\u{7}'));
        assert_eq!(
            b.lines().filter(|l| l.starts_with("  reason:")).count(),
            1,
            "{b}"
        );
        assert!(
            b.contains("  requester:  mallory\\n  reason:     harmless\n"),
            "{b}"
        );
        assert!(b.contains("  reason:     \\u{1b}[2Jok\\r\n"), "{b}");
        assert!(b.contains("  duration:   15m\n"), "{b}");
        assert!(b.contains("  asked:      1m 0s ago"), "{b}");
        assert!(b.contains("  approvals:  1 more needed\n"), "{b}");
        assert!(b.contains("  recent:     1 in the last 30 days\n"), "{b}");
        assert!(
            b.contains("old  db-admin  expired  2m 40s ago  earlier\\u{7}\n"),
            "{b}"
        );
    }

    #[test]
    fn table_pads_columns() {
        let t = table(&[
            vec!["ID".into(), "STATE".into(), "REASON".into()],
            vec!["abc".into(), "pending".into(), "x".into()],
        ]);
        assert_eq!(t, "ID   STATE    REASON\nabc  pending  x\n");
        assert_eq!(table(&[]), "");
    }
}
