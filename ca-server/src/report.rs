//! The usage report: per elevation and per principal, how often it was requested and how each
//! request ended, and how long grants really lasted, so a security team sees which privileges
//! are used and which standing roles could shrink. Pure: rows in, a report out.

use crate::store::{DecisionRow, ElevationRow};
use pedm_api::ElevationState;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;

/// Counts for one elevation or one principal.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub requested: u64,
    pub auto_approved: u64,
    /// Approved by people (the last needed approval given).
    pub approved_by_person: u64,
    pub denied: u64,
    pub lapsed: u64,
    pub timed_out: u64,
    pub cancelled: u64,
    pub revoked: u64,
    /// Requests still pending, approved-unused or active at the report's time.
    pub open: u64,
    /// Grants that were used (had a first certificate).
    pub used: u64,
    /// Seconds the used grants lasted: from first use to their end, revocation or now.
    pub grant_seconds_total: u64,
    pub grant_seconds_max: u64,
    /// Distinct requesters.
    pub requesters: u64,
}

/// The report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub since: i64,
    pub until: i64,
    pub by_elevation: BTreeMap<String, Usage>,
    pub by_principal: BTreeMap<String, Usage>,
}

/// One request as the report sees it: its row, decisions and state at `now`.
pub struct Entry<'a> {
    pub row: &'a ElevationRow,
    pub decisions: &'a [DecisionRow],
    pub state_now: ElevationState,
}

fn add(u: &mut Usage, e: &Entry<'_>, now: i64) {
    u.requested += 1;
    let auto = e.decisions.iter().any(|d| d.decision == "auto");
    if auto {
        u.auto_approved += 1;
    } else if e.row.approved_at.is_some() {
        u.approved_by_person += 1;
    }
    match e.state_now {
        ElevationState::Denied => u.denied += 1,
        ElevationState::Lapsed => u.lapsed += 1,
        ElevationState::TimedOut => u.timed_out += 1,
        ElevationState::Cancelled => u.cancelled += 1,
        ElevationState::Revoked => u.revoked += 1,
        ElevationState::Pending | ElevationState::Approved | ElevationState::Active => u.open += 1,
        ElevationState::Expired => {}
    }
    if let Some(start) = e.row.started_at {
        u.used += 1;
        let planned_end = start + e.row.duration_secs as i64;
        let end = e
            .row
            .ended_at
            .unwrap_or(planned_end)
            .min(planned_end)
            .min(now);
        let secs = (end - start).max(0) as u64;
        u.grant_seconds_total += secs;
        u.grant_seconds_max = u.grant_seconds_max.max(secs);
    }
}

/// Builds the report over `entries` (requests created in `[since, now]`).
pub fn build(entries: &[Entry<'_>], since: i64, now: i64) -> Report {
    let mut by_elevation: BTreeMap<String, Usage> = BTreeMap::new();
    let mut by_principal: BTreeMap<String, Usage> = BTreeMap::new();
    let mut requesters: BTreeMap<String, std::collections::BTreeSet<&str>> = BTreeMap::new();
    for e in entries.iter().filter(|e| e.row.created_at >= since) {
        add(
            by_elevation.entry(e.row.elevation.clone()).or_default(),
            e,
            now,
        );
        requesters
            .entry(format!("e:{}", e.row.elevation))
            .or_default()
            .insert(&e.row.requester);
        for p in &e.row.principals {
            add(by_principal.entry(p.clone()).or_default(), e, now);
            requesters
                .entry(format!("p:{p}"))
                .or_default()
                .insert(&e.row.requester);
        }
    }
    for (name, u) in by_elevation.iter_mut() {
        u.requesters = requesters
            .get(&format!("e:{name}"))
            .map_or(0, |s| s.len() as u64);
    }
    for (name, u) in by_principal.iter_mut() {
        u.requesters = requesters
            .get(&format!("p:{name}"))
            .map_or(0, |s| s.len() as u64);
    }
    Report {
        since,
        until: now,
        by_elevation,
        by_principal,
    }
}

fn table(f: &mut fmt::Formatter<'_>, title: &str, rows: &BTreeMap<String, Usage>) -> fmt::Result {
    writeln!(f, "{title}")?;
    if rows.is_empty() {
        return writeln!(f, "  (no requests)");
    }
    writeln!(
        f,
        "  {:<20} {:>9} {:>5} {:>8} {:>6} {:>6} {:>8} {:>6} {:>5} {:>5} {:>10} {:>10}",
        "name",
        "requested",
        "auto",
        "approved",
        "denied",
        "lapsed",
        "timedout",
        "revoked",
        "open",
        "users",
        "avg grant",
        "max grant"
    )?;
    for (name, u) in rows {
        let avg = u.grant_seconds_total.checked_div(u.used).unwrap_or(0);
        writeln!(
            f,
            "  {:<20} {:>9} {:>5} {:>8} {:>6} {:>6} {:>8} {:>6} {:>5} {:>5} {:>10} {:>10}",
            name,
            u.requested,
            u.auto_approved,
            u.approved_by_person,
            u.denied,
            u.lapsed,
            u.timed_out,
            u.revoked,
            u.open,
            u.requesters,
            pedm_api::duration::format(std::time::Duration::from_secs(avg)),
            pedm_api::duration::format(std::time::Duration::from_secs(u.grant_seconds_max)),
        )?;
    }
    Ok(())
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        table(f, "by elevation:", &self.by_elevation)?;
        table(f, "by principal:", &self.by_principal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, elevation: &str, principals: &[&str], requester: &str) -> ElevationRow {
        ElevationRow {
            id: id.into(),
            requester: requester.into(),
            session_id: "s".into(),
            elevation: elevation.into(),
            principals: principals.iter().map(|s| s.to_string()).collect(),
            reason: "INC-1".into(),
            duration_secs: 600,
            state: ElevationState::Pending,
            created_at: 1000,
            approved_at: None,
            started_at: None,
            ended_at: None,
        }
    }

    fn decision(id: &str, what: &str) -> DecisionRow {
        DecisionRow {
            elevation_id: id.into(),
            actor: "carol".into(),
            decision: what.into(),
            comment: None,
            at: 1001,
        }
    }

    #[test]
    fn counts_outcomes_durations_and_requesters() {
        let mut auto = row("a", "db-admin", &["db-admin"], "alice");
        auto.approved_at = Some(1000);
        auto.started_at = Some(1100);
        let auto_d = [decision("a", "auto")];
        let mut revoked = row("b", "db-admin", &["db-admin", "postgres"], "bob");
        revoked.approved_at = Some(1010);
        revoked.started_at = Some(1020);
        revoked.ended_at = Some(1080);
        let person_d = [decision("b", "approve"), decision("b", "revoke")];
        let denied = row("c", "db-admin", &["db-admin"], "bob");
        let denied_d = [decision("c", "deny")];
        let pending = row("d", "deploy", &["deploy"], "alice");
        let mut old = row("e", "deploy", &["deploy"], "alice");
        old.created_at = 10;
        let entries = [
            Entry {
                row: &auto,
                decisions: &auto_d,
                state_now: ElevationState::Expired,
            },
            Entry {
                row: &revoked,
                decisions: &person_d,
                state_now: ElevationState::Revoked,
            },
            Entry {
                row: &denied,
                decisions: &denied_d,
                state_now: ElevationState::Denied,
            },
            Entry {
                row: &pending,
                decisions: &[],
                state_now: ElevationState::Pending,
            },
            Entry {
                row: &old,
                decisions: &[],
                state_now: ElevationState::TimedOut,
            },
        ];
        let r = build(&entries, 500, 5000);
        let db = &r.by_elevation["db-admin"];
        assert_eq!(
            (
                db.requested,
                db.auto_approved,
                db.approved_by_person,
                db.denied,
                db.revoked
            ),
            (3, 1, 1, 1, 1)
        );
        assert_eq!(db.used, 2);
        // auto: used from 1100 to its planned end 1700; revoked: 1020..1080.
        assert_eq!(db.grant_seconds_total, 600 + 60);
        assert_eq!(db.grant_seconds_max, 600);
        assert_eq!(db.requesters, 2);
        let deploy = &r.by_elevation["deploy"];
        assert_eq!(
            (deploy.requested, deploy.open, deploy.timed_out),
            (1, 1, 0),
            "before `since` is left out"
        );
        assert_eq!(r.by_principal["postgres"].requested, 1);
        assert_eq!(r.by_principal["db-admin"].requested, 3);
        let text = r.to_string();
        assert!(
            text.contains("db-admin") && text.contains("by principal:"),
            "{text}"
        );
    }

    #[test]
    fn an_active_grant_counts_until_now() {
        let mut active = row("a", "x", &["x"], "alice");
        active.approved_at = Some(1000);
        active.started_at = Some(1000);
        let d = [decision("a", "auto")];
        let r = build(
            &[Entry {
                row: &active,
                decisions: &d,
                state_now: ElevationState::Active,
            }],
            0,
            1100,
        );
        assert_eq!(r.by_elevation["x"].grant_seconds_total, 100);
        assert_eq!(r.by_elevation["x"].open, 1);
    }
}
