//! Elevation endpoints: request, list, show, approve, deny, cancel, revoke.
//!
//! Every decision is made by the pure `elevation` policy *inside* the store transaction that
//! writes it (`Store::change_elevation`), on the state read in that transaction, so two
//! approvers racing, or a revoke racing an approval, cannot both win.

use super::auth::SignedIn;
use super::error::{ApiError, ApiJson};
use super::routes::blocking;
use super::SharedState;
use crate::audit::AuditEvent;
use crate::authority::now_secs;
use crate::elevation::{self, Actor, Elevation, ElevationRefusal, Outcome, Reason, RefusalKind};
use crate::names::{ElevationId, Username};
use crate::policy::Identity;
use crate::store::{DecisionRow, ElevationChange, ElevationRow, SessionRow, StoreError};
use axum::extract::{Path, Query, State};
use axum::Json;
use pedm_api::{
    ApprovalView, DecisionRequest, ElevationList, ElevationRequest, ElevationState,
    ElevationSummary, ElevationView, ProblemType,
};
use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;

/// How far back "recent elevations" and "mine" look.
const RECENT_SECS: i64 = 30 * 86_400;

/// The signed-in caller as the elevation policy sees them. Roles are re-derived from the
/// groups stored with the session, so a role removed from the configuration stops counting.
pub fn actor(state: &SharedState, s: &SessionRow) -> Actor {
    if s.method == crate::elevation::METHOD_TOKEN {
        // Automation: no groups, and only the roles its issuer still maps to.
        let roles = crate::token::automation_grant(
            state.tokens.issuer(&s.issuer),
            &state.policy,
            &s.user,
            &s.subject,
            &s.roles,
        )
        .map(|g| g.roles.into_iter().collect())
        .unwrap_or_default();
        return Actor {
            user: s.user.clone(),
            groups: BTreeSet::new(),
            roles,
            auth_time: None,
            method: s.method.clone(),
            issuer: s.issuer.clone(),
        };
    }
    let groups: BTreeSet<String> = s.groups.iter().cloned().collect();
    let roles = Username::new(&s.user)
        .ok()
        .and_then(|username| {
            state
                .policy
                .base_grant(&Identity {
                    username,
                    groups: groups.clone(),
                })
                .ok()
        })
        .map(|g| g.roles.into_iter().collect())
        .unwrap_or_default();
    Actor {
        user: s.user.clone(),
        groups,
        roles,
        auth_time: s.auth_time,
        method: s.method.clone(),
        issuer: s.issuer.clone(),
    }
}

/// The HTTP answer for a policy refusal.
pub fn refusal_problem(r: &ElevationRefusal) -> ApiError {
    let kind = match r.kind() {
        RefusalKind::Invalid => ProblemType::InvalidReason,
        RefusalKind::Refused => ProblemType::ElevationRefused,
        RefusalKind::Forbidden => ProblemType::Forbidden,
        RefusalKind::Conflict => ProblemType::Conflict,
        RefusalKind::ReauthRequired => ProblemType::ReauthRequired,
        RefusalKind::NotFound => ProblemType::NotFound,
    };
    ApiError::new(kind, r.to_string())
}

/// Maps a store failure, turning a policy refusal raised inside a transaction into its
/// problem document.
pub fn store_problem(context: &str, e: StoreError) -> ApiError {
    match e {
        StoreError::Rejected(inner) => match inner.downcast::<ElevationRefusal>() {
            Ok(r) => refusal_problem(&r),
            Err(other) => ApiError::new(ProblemType::Conflict, other.to_string()),
        },
        StoreError::NotFound(what) => ApiError::new(ProblemType::NotFound, what),
        other => ApiError::internal(context, other),
    }
}

fn find<'a>(state: &'a SharedState, name: &str) -> Option<&'a Elevation> {
    state.elevations.iter().find(|e| e.name == name)
}

/// The state now (time-based transitions applied) and its deadline.
pub fn state_now(
    state: &SharedState,
    row: &ElevationRow,
    now: i64,
) -> (ElevationState, Option<i64>) {
    match find(state, &row.elevation) {
        Some(e) => elevation::effective_state(row.state, &row.times(), e, now),
        // An elevation removed from the configuration grants nothing any more.
        None if row.state.is_final() => (row.state, None),
        None => (ElevationState::Revoked, None),
    }
}

fn approvers(decisions: &[DecisionRow]) -> BTreeSet<String> {
    decisions
        .iter()
        .filter(|d| d.decision == "approve")
        .map(|d| d.actor.clone())
        .collect()
}

fn view(
    state: &SharedState,
    row: &ElevationRow,
    decisions: &[DecisionRow],
    now: i64,
) -> ElevationView {
    let (st, deadline) = state_now(state, row, now);
    let approvals_needed = match (st, find(state, &row.elevation)) {
        (ElevationState::Pending, Some(e)) => {
            elevation::approval_progress(e, &approvers(decisions))
        }
        _ => 0,
    };
    ElevationView {
        id: row.id.clone(),
        requester: row.requester.clone(),
        elevation: row.elevation.clone(),
        principals: row.principals.clone(),
        reason: row.reason.clone(),
        duration_secs: row.duration_secs,
        state: st,
        created_at: row.created_at,
        approved_at: row.approved_at,
        approved_by: decisions
            .iter()
            .filter(|d| d.decision == "approve" || d.decision == "auto")
            .map(|d| d.actor.clone())
            .collect(),
        approvals_needed,
        started_at: row.started_at,
        ends_at: row.started_at.map(|s| s + row.duration_secs as i64),
        deadline,
        decisions: decisions
            .iter()
            .map(|d| ApprovalView {
                approver: d.actor.clone(),
                decision: d.decision.clone(),
                comment: d.comment.clone(),
                at: d.at,
            })
            .collect(),
        recent: Vec::new(),
    }
}

/// The decisions on a request, as just written.
async fn decisions_of(state: &SharedState, id: &str) -> Result<Vec<DecisionRow>, ApiError> {
    let id = id.to_string();
    Ok(blocking(state, move |s| {
        s.authority
            .store
            .elevation(&id)
            .map_err(|e| ApiError::internal("reading the elevation", e))
    })
    .await?
    .map(|(_, d)| d)
    .unwrap_or_default())
}

/// `POST /v1/elevations`.
pub async fn request(
    State(state): State<SharedState>,
    SignedIn(session): SignedIn,
    ApiJson(req): ApiJson<ElevationRequest>,
) -> Result<Json<ElevationView>, ApiError> {
    let Some(e) = find(&state, &req.elevation) else {
        let known: Vec<&str> = state.elevations.iter().map(|e| e.name.as_str()).collect();
        return Err(ApiError::new(
            ProblemType::ElevationRefused,
            format!(
                "there is no elevation named {}; known: {}",
                crate::names::escaped(&req.elevation),
                if known.is_empty() {
                    "(none)".to_string()
                } else {
                    known.join(", ")
                }
            ),
        ));
    };
    let reason = Reason::new(&req.reason).map_err(|r| refusal_problem(&r))?;
    let who = actor(&state, &session);
    let now = now_secs();
    let duration = req.duration_secs.map(Duration::from_secs);
    let decision = match elevation::decide_request(e, &who, &reason, duration, now) {
        Ok(d) => d,
        Err(r) => {
            let (user, name, why) = (who.user.clone(), e.name.clone(), r.to_string());
            let _ = blocking(&state, move |s| {
                s.authority
                    .record(&AuditEvent::new(
                        user.clone(),
                        "elevation.refused",
                        format!("user={user}"),
                        json!({ "elevation": name, "reason": why }),
                    ))
                    .map_err(|e| ApiError::internal("recording a refusal", e))
            })
            .await;
            return Err(refusal_problem(&r));
        }
    };
    let id = ElevationId::random();
    let auto = matches!(decision.outcome, Outcome::AutoApproved);
    let row = ElevationRow {
        id: id.to_string(),
        requester: who.user.clone(),
        session_id: session.id.clone(),
        elevation: e.name.clone(),
        principals: e.principals.iter().map(|p| p.to_string()).collect(),
        reason: reason.as_str().to_string(),
        duration_secs: decision.duration.as_secs(),
        state: if auto {
            ElevationState::Approved
        } else {
            ElevationState::Pending
        },
        created_at: now,
        approved_at: auto.then_some(now),
        started_at: None,
        ended_at: None,
    };
    let subject = format!("elevation={id}");
    let mut events = vec![AuditEvent::new(
        who.user.clone(),
        "elevation.request",
        subject.clone(),
        json!({
            "elevation": row.elevation,
            "principals": row.principals,
            "reason": row.reason,
            "duration_secs": row.duration_secs,
        }),
    )];
    let auto_decision = auto.then(|| DecisionRow {
        elevation_id: row.id.clone(),
        actor: "policy".into(),
        decision: "auto".into(),
        comment: None,
        at: now,
    });
    if auto {
        events.push(AuditEvent::new(
            "policy",
            "elevation.auto_approve",
            subject,
            json!({ "elevation": row.elevation, "requester": row.requester }),
        ));
    }
    let stored = row.clone();
    // The decisions are the ones just written: the policy's, if it approved.
    let decisions: Vec<DecisionRow> = auto_decision.iter().cloned().collect();
    blocking(&state, move |s| {
        s.authority
            .store
            .create_elevation(&stored, auto_decision.as_ref(), &events)
            .map_err(|e| ApiError::internal("storing the elevation request", e))
    })
    .await?;
    Ok(Json(view(&state, &row, &decisions, now)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[serde(default)]
    approvable: bool,
}

/// Whether `who` may decide `row` now (pending, an eligible approver, not the requester, not
/// already counted).
fn may_decide(
    state: &SharedState,
    who: &Actor,
    row: &ElevationRow,
    decisions: &[DecisionRow],
    now: i64,
) -> bool {
    let Some(e) = find(state, &row.elevation) else {
        return false;
    };
    let (st, _) = state_now(state, row, now);
    let Some(rule) = &e.approval else {
        return false;
    };
    st == ElevationState::Pending
        && row.requester != who.user
        && rule.groups.iter().any(|g| who.groups.contains(g))
        && !approvers(decisions).contains(&who.user)
}

/// `GET /v1/elevations[?approvable=true]`.
pub async fn list(
    State(state): State<SharedState>,
    SignedIn(session): SignedIn,
    Query(q): Query<ListQuery>,
) -> Result<Json<ElevationList>, ApiError> {
    let who = actor(&state, &session);
    let now = now_secs();
    let elevations = blocking(&state, move |s| {
        let store = &s.authority.store;
        let fail = |e| ApiError::internal("reading elevations", e);
        if !q.approvable {
            let rows = store
                .elevations_of(&who.user, now - RECENT_SECS)
                .map_err(fail)?;
            let mut out = Vec::new();
            for r in rows {
                let d = store
                    .elevation(&r.id)
                    .map_err(fail)?
                    .map(|(_, d)| d)
                    .unwrap_or_default();
                out.push(view(s, &r, &d, now));
            }
            return Ok(out);
        }
        let mut out = Vec::new();
        for r in store.open_elevations().map_err(fail)? {
            let d = store
                .elevation(&r.id)
                .map_err(fail)?
                .map(|(_, d)| d)
                .unwrap_or_default();
            if !may_decide(s, &who, &r, &d, now) {
                continue;
            }
            let mut v = view(s, &r, &d, now);
            v.recent = recent_of(s, &r.requester, &r.id, now)?;
            out.push(v);
        }
        Ok(out)
    })
    .await?;
    Ok(Json(ElevationList {
        elevations,
        ca_time: now,
    }))
}

fn recent_of(
    s: &SharedState,
    user: &str,
    except: &str,
    now: i64,
) -> Result<Vec<ElevationSummary>, ApiError> {
    Ok(s.authority
        .store
        .elevations_of(user, now - RECENT_SECS)
        .map_err(|e| ApiError::internal("reading elevations", e))?
        .into_iter()
        .filter(|r| r.id != except)
        .take(20)
        .map(|r| ElevationSummary {
            state: state_now(s, &r, now).0,
            id: r.id,
            elevation: r.elevation,
            created_at: r.created_at,
            reason: r.reason,
        })
        .collect())
}

fn parse_id(text: &str) -> Result<ElevationId, ApiError> {
    ElevationId::parse(text).ok_or_else(|| {
        ApiError::new(
            ProblemType::NotFound,
            "no such elevation request (IDs are 12 letters and digits)",
        )
    })
}

fn not_found() -> ApiError {
    ApiError::new(
        ProblemType::NotFound,
        "no such elevation request, or not one you may see",
    )
}

/// `GET /v1/elevations/{id}`: the requester's own, or one the caller may decide or revoke.
pub async fn show(
    State(state): State<SharedState>,
    SignedIn(session): SignedIn,
    Path(id): Path<String>,
) -> Result<Json<ElevationView>, ApiError> {
    let id = parse_id(&id)?;
    let who = actor(&state, &session);
    let now = now_secs();
    let v = blocking(&state, move |s| {
        let Some((row, d)) = s
            .authority
            .store
            .elevation(id.as_str())
            .map_err(|e| ApiError::internal("reading the elevation", e))?
        else {
            return Err(not_found());
        };
        let admin = s.config.admin.groups.iter().any(|g| who.groups.contains(g));
        let approver = find(s, &row.elevation)
            .and_then(|e| e.approval.as_ref())
            .is_some_and(|rule| rule.groups.iter().any(|g| who.groups.contains(g)));
        if row.requester != who.user && !admin && !approver {
            return Err(not_found());
        }
        let mut v = view(s, &row, &d, now);
        if row.requester != who.user {
            v.recent = recent_of(s, &row.requester, &row.id, now)?;
        }
        Ok(v)
    })
    .await?;
    Ok(Json(v))
}

#[derive(Debug, Clone, Copy)]
enum Action {
    Approve,
    Deny,
    Cancel,
    Revoke,
}

async fn act(
    state: SharedState,
    session: SessionRow,
    id: String,
    req: DecisionRequest,
    action: Action,
) -> Result<Json<ElevationView>, ApiError> {
    let id = parse_id(&id)?;
    let comment = match (&req.comment, action) {
        (Some(c), _) => Some(Reason::comment(c).map_err(|r| refusal_problem(&r))?),
        (None, Action::Deny) => {
            return Err(ApiError::new(
                ProblemType::InvalidReason,
                "a denial needs a comment saying why (--comment TEXT)",
            ))
        }
        (None, _) => None,
    };
    let who = actor(&state, &session);
    let now = now_secs();
    let approver_recent_auth = state.config.admin.approver_recent_auth.0;
    let admin_groups: BTreeSet<String> = state.config.admin.groups.iter().cloned().collect();
    let row = blocking(&state, move |s| {
        let mut decide = |row: &ElevationRow,
                          decisions: &[DecisionRow]|
         -> Result<ElevationChange, crate::store::Rejection> {
            let e = find(s, &row.elevation).ok_or_else(|| -> crate::store::Rejection {
                format!(
                    "the elevation {} is no longer configured; nothing can be decided on it",
                    row.elevation
                )
                .into()
            })?;
            let (st, _) = elevation::effective_state(row.state, &row.times(), e, now);
            let mut change = ElevationChange {
                state: st,
                approved_at: row.approved_at,
                started_at: row.started_at,
                ended_at: row.ended_at,
                decision: Some(DecisionRow {
                    elevation_id: row.id.clone(),
                    actor: who.user.clone(),
                    decision: String::new(),
                    comment: comment.as_ref().map(|c| c.as_str().to_string()),
                    at: now,
                }),
                event: AuditEvent::new(
                    who.user.clone(),
                    "",
                    format!("elevation={}", row.id),
                    json!({
                        "elevation": row.elevation,
                        "requester": row.requester,
                        "comment": comment.as_ref().map(|c| c.as_str()),
                    }),
                ),
            };
            let (decision, audit_action) = match action {
                Action::Approve => {
                    let prior = approvers(decisions);
                    elevation::check_decider(
                        e,
                        &row.requester,
                        st,
                        &prior,
                        &who,
                        approver_recent_auth,
                        now,
                    )?;
                    let mut after = prior;
                    after.insert(who.user.clone());
                    if elevation::approval_progress(e, &after) == 0 {
                        change.state = ElevationState::Approved;
                        change.approved_at = Some(now);
                        ("approve", "elevation.approve")
                    } else {
                        ("approve", "elevation.approval")
                    }
                }
                Action::Deny => {
                    elevation::check_decider(
                        e,
                        &row.requester,
                        st,
                        &approvers(decisions),
                        &who,
                        approver_recent_auth,
                        now,
                    )?;
                    change.state = ElevationState::Denied;
                    change.ended_at = Some(now);
                    ("deny", "elevation.deny")
                }
                Action::Cancel => {
                    elevation::check_cancel(st, &row.requester, &who)?;
                    change.state = ElevationState::Cancelled;
                    change.ended_at = Some(now);
                    ("cancel", "elevation.cancel")
                }
                Action::Revoke => {
                    elevation::check_revoker(
                        e,
                        st,
                        &row.requester,
                        &who,
                        &admin_groups,
                        approver_recent_auth,
                        now,
                    )?;
                    change.state = ElevationState::Revoked;
                    change.ended_at = Some(now);
                    ("revoke", "elevation.revoke")
                }
            };
            if let Some(d) = change.decision.as_mut() {
                d.decision = decision.into();
            }
            change.event.action = audit_action.into();
            Ok(change)
        };
        s.authority
            .store
            .change_elevation(id.as_str(), &mut decide)
            .map_err(|e| store_problem("deciding the elevation", e))?
            .ok_or_else(not_found)
    })
    .await?;
    let decisions = decisions_of(&state, &row.id).await?;
    Ok(Json(view(&state, &row, &decisions, now_secs())))
}

/// The optional body of a decision: empty, or `{"comment": …}` and nothing else.
fn decision_body(body: &[u8]) -> Result<DecisionRequest, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(DecisionRequest::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            ProblemType::InvalidRequest,
            format!("the body must be {{\"comment\": \"…\"}} or empty: {e}"),
        )
    })
}

macro_rules! action_handler {
    ($name:ident, $action:expr, $doc:literal) => {
        #[doc = $doc]
        pub async fn $name(
            State(state): State<SharedState>,
            SignedIn(session): SignedIn,
            Path(id): Path<String>,
            body: axum::body::Bytes,
        ) -> Result<Json<ElevationView>, ApiError> {
            act(state, session, id, decision_body(&body)?, $action).await
        }
    };
}

action_handler!(
    approve,
    Action::Approve,
    "`POST /v1/elevations/{id}/approve`."
);
action_handler!(deny, Action::Deny, "`POST /v1/elevations/{id}/deny`.");
action_handler!(cancel, Action::Cancel, "`POST /v1/elevations/{id}/cancel`.");
action_handler!(revoke, Action::Revoke, "`POST /v1/elevations/{id}/revoke`.");

/// Writes the time-based transitions (timed out, lapsed, expired) with their audit records,
/// so the log shows every state a request went through. Run periodically by `serve`.
pub fn sweep(state: &SharedState) -> Result<usize, crate::store::StoreError> {
    let now = now_secs();
    let mut written = 0;
    for row in state.authority.store.open_elevations()? {
        let (st, _) = state_now(state, &row, now);
        if st == row.state {
            continue;
        }
        let mut decide = |current: &ElevationRow,
                          _: &[DecisionRow]|
         -> Result<ElevationChange, crate::store::Rejection> {
            let (st, _) = state_now(state, current, now);
            if st == current.state {
                return Err("changed meanwhile".into());
            }
            Ok(ElevationChange {
                state: st,
                approved_at: current.approved_at,
                started_at: current.started_at,
                ended_at: Some(now),
                decision: None,
                event: AuditEvent::new(
                    "system",
                    &format!("elevation.{}", st.as_str()),
                    format!("elevation={}", current.id),
                    json!({ "elevation": current.elevation, "requester": current.requester }),
                ),
            })
        };
        match state.authority.store.change_elevation(&row.id, &mut decide) {
            Ok(_) => written += 1,
            Err(StoreError::Rejected(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}
