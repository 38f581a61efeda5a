//! `pedm-ssh requests` (the pending requests I may decide) and `pedm-ssh elevations`
//! (mine): listings of the CA's elevation views, as text or as the CA's JSON.

use crate::app::Ctx;
use crate::cli::{ElevationsArgs, RequestsArgs};
use crate::elevview::{self, request_block, table, time_left};
use crate::escape::{escape, to_json_pretty};
use crate::exit::{Exit, Failure};
use crate::signedin::SignedIn;
use pedm_api::ElevationList;

/// Prints `list` as one pretty JSON document, terminal-safe.
pub fn print_json<T: serde::Serialize>(value: &T) -> Result<(), Failure> {
    let text = to_json_pretty(value).map_err(|e| {
        Failure::plain(
            Exit::Error,
            format!("cannot encode the answer as JSON: {e}; try again without --json"),
        )
    })?;
    println!("{text}");
    Ok(())
}

/// The text of `pedm-ssh requests`.
pub fn requests_text(list: &ElevationList) -> String {
    if list.elevations.is_empty() {
        return "no elevation requests wait for your decision\n".to_string();
    }
    let n = list.elevations.len();
    let mut out = format!(
        "{n} elevation request{} wait{} for your decision:\n",
        if n == 1 { "" } else { "s" },
        if n == 1 { "s" } else { "" }
    );
    for v in &list.elevations {
        out.push_str(&format!("\nrequest {}\n", escape(&v.id)));
        out.push_str(&request_block(v, list.ca_time));
    }
    out.push_str("\nnext: `pedm-ssh approve ID` or `pedm-ssh deny ID --comment TEXT`\n");
    out
}

/// The text of `pedm-ssh elevations`.
pub fn elevations_text(list: &ElevationList) -> String {
    if list.elevations.is_empty() {
        return "you have no elevations; ask for one with `pedm-ssh elevate ELEVATION --reason TEXT`\n"
            .to_string();
    }
    let mut rows = vec![vec![
        "ID".to_string(),
        "ELEVATION".to_string(),
        "PRINCIPALS".to_string(),
        "STATE".to_string(),
        "FOR".to_string(),
        "TIME LEFT".to_string(),
        "REASON".to_string(),
    ]];
    for v in &list.elevations {
        rows.push(vec![
            escape(&v.id),
            escape(&v.elevation),
            crate::escape::escape_list(&v.principals),
            v.state.as_str().to_string(),
            elevview::duration_text(v.duration_secs),
            time_left(v, list.ca_time),
            escape(&v.reason),
        ]);
    }
    table(&rows)
}

/// `pedm-ssh requests [--json]`.
pub async fn run_requests(ctx: &Ctx, args: &RequestsArgs) -> Result<(), Failure> {
    let s = SignedIn::load(ctx, args.ca.as_deref())?;
    let list = s
        .client
        .elevations(s.token(), true)
        .await
        .map_err(|e| s.fail(&e))?;
    if args.json {
        return print_json(&list);
    }
    print!("{}", requests_text(&list));
    Ok(())
}

/// `pedm-ssh elevations [--json]`.
pub async fn run_elevations(ctx: &Ctx, args: &ElevationsArgs) -> Result<(), Failure> {
    let s = SignedIn::load(ctx, args.ca.as_deref())?;
    let list = s
        .client
        .elevations(s.token(), false)
        .await
        .map_err(|e| s.fail(&e))?;
    if args.json {
        return print_json(&list);
    }
    print!("{}", elevations_text(&list));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elevview::test_support::view;
    use pedm_api::ElevationState;

    #[test]
    fn requests_listing() {
        let mut v = view(ElevationState::Pending);
        v.reason = "line1\nline2 \u{1b}[2J".into();
        let list = ElevationList {
            elevations: vec![v],
            ca_time: 1030,
        };
        let t = requests_text(&list);
        assert!(
            t.starts_with("1 elevation request waits for your decision:\n"),
            "{t}"
        );
        assert!(t.contains("\nrequest k3j9x0q2m1ab\n"), "{t}");
        assert!(
            t.contains("  reason:     line1\\nline2 \\u{1b}[2J\n"),
            "{t}"
        );
        assert!(t.contains("asked:      30s ago"), "{t}");
        assert!(!t.contains('\u{1b}'));
        let empty = ElevationList {
            elevations: vec![],
            ca_time: 0,
        };
        assert!(requests_text(&empty).contains("no elevation requests"));
    }

    #[test]
    fn elevations_listing_shows_state_and_time_left() {
        let mut a = view(ElevationState::Active);
        a.deadline = Some(1000 + 723);
        let mut p = view(ElevationState::Pending);
        p.id = "pppppppppppp".into();
        let list = ElevationList {
            elevations: vec![a, p],
            ca_time: 1000,
        };
        let t = elevations_text(&list);
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[0].starts_with("ID            ELEVATION  PRINCIPALS  STATE"),
            "{t}"
        );
        assert!(
            lines[1].contains("active") && lines[1].contains("ends in 12m 3s"),
            "{t}"
        );
        assert!(
            lines[2].contains("pending") && lines[2].contains("times out in 1h 0m"),
            "{t}"
        );
        assert!(lines[1].contains("  15m  "), "{t}");
    }
}
