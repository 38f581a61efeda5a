//! Just-in-time elevation policy. Pure: values in, decisions out. No I/O and no clock reads:
//! time comes in as `now` (unix seconds) and time zones come in already resolved, so every
//! rule is unit-tested here and the HTTP layer only maps [`RefusalKind`] to a problem type.
//!
//! Life cycle (the state the store holds, made current by [`effective_state`]):
//!
//! ```text
//! pending ──approvals──▶ approved ──first certificate──▶ active ──duration over──▶ expired
//!    │ denied / cancelled / revoked   │ cancelled / revoked       │ cancelled / revoked
//!    └─ pending_timeout ─▶ timed_out  └─ use_within ─▶ lapsed
//! ```
//!
//! Rules that always hold:
//! - deny by default: a request is granted only when the requester holds an eligible role
//!   and either *every* configured auto-approval condition holds or `approval.count`
//!   distinct members of `approval.groups` approve;
//! - the requester never decides their own request, not even as a member of an approver
//!   group, and one person counts once;
//! - a recent sign-in is a *browser* sign-in with an `auth_time`: a missing `auth_time`, a
//!   device-flow or token-exchange session never counts;
//! - approve, deny and revoke need a sign-in within `[admin] approver_recent_auth`, so whoever
//!   loses an approver group at the IdP loses the power within that time;
//! - a certificate is issued only to the requester, only while the request is approved or
//!   active, and the grant's clock starts at its first certificate;
//! - every deadline is exclusive: at `deadline` the state is already over (as OpenSSH treats
//!   `valid_before`).

use crate::names::{escaped, Principal};
use crate::policy::{BaseGrant, Identity, Policy, Refusal};
use pedm_api::duration::format as fmt_duration;
use pedm_api::ElevationState;
use serde_json::{Map, Value};
use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

/// The longest reason or comment, in characters (not bytes).
pub const TEXT_MAX_CHARS: usize = 200;

/// How far in the future an `auth_time` may lie (clock skew between IdP and CA) and still
/// count; anything further is a forged or broken clock and never counts.
pub const AUTH_TIME_SKEW_SECS: i64 = 60;

/// Session sign-in methods, as the store records them. Only [`METHOD_BROWSER`] ever counts
/// as a recent sign-in.
pub const METHOD_BROWSER: &str = "browser";
/// RFC 8628 device flow: the person at the keyboard may not be the one who approved it.
pub const METHOD_DEVICE: &str = "device";
/// Token exchange (automation): no person signed in.
pub const METHOD_TOKEN: &str = "token";

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

fn list(items: impl IntoIterator<Item = impl AsRef<str>>) -> String {
    let v: Vec<String> = items.into_iter().map(|s| escaped(s.as_ref())).collect();
    if v.is_empty() {
        "(none)".into()
    } else {
        v.join(", ")
    }
}

fn intersects(a: &BTreeSet<String>, b: &BTreeSet<String>) -> bool {
    a.iter().any(|x| b.contains(x))
}

// ---------------------------------------------------------------------------------------
// Configuration values

/// One `[[elevations]]` entry, validated (see `config.rs`): a non-empty principal list, at
/// least one eligible role, a positive `max_duration`, and at least one of `approval` and
/// `auto_approve` (otherwise nobody could ever grant it).
#[derive(Debug, Clone)]
pub struct Elevation {
    /// `[a-z0-9_-]{1,32}`: it goes into file names (`PATH-elev-NAME-cert.pub`).
    pub name: String,
    pub principals: Vec<Principal>,
    /// Role names; the requester must hold one of them.
    pub eligible_roles: BTreeSet<String>,
    /// `[[trusted_issuers]]` whose automation identities ([`METHOD_TOKEN`]) may request it;
    /// empty: none may.
    pub eligible_issuers: BTreeSet<String>,
    /// The longest grant; also the default when the request names no duration.
    pub max_duration: Duration,
    /// An approved request lapses unless its first certificate is issued this soon.
    pub use_within: Duration,
    /// A pending request times out after this.
    pub pending_timeout: Duration,
    /// When set, the requester's browser sign-in must be this recent at request and at first use.
    pub require_recent_auth: Option<Duration>,
    pub approval: Option<ApprovalRule>,
    pub auto_approve: Option<AutoApprove>,
}

/// `approval = { groups, count }`: `count` distinct members of `groups`, never the requester.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalRule {
    /// Never empty.
    pub groups: BTreeSet<String>,
    /// At least 1.
    pub count: u32,
}

/// `auto_approve = { groups, reason_matches, hours }`: approved at once when every condition
/// given holds (AND). One with no condition at all never approves anything (config refuses it).
#[derive(Debug, Clone)]
pub struct AutoApprove {
    /// The requester is in one of these groups (never empty when given).
    pub groups: Option<BTreeSet<String>>,
    /// Compiled as `^(?:PATTERN)$` from a pattern that is valid on its own, so it always
    /// matches the *whole* reason.
    pub reason_matches: Option<regex::Regex>,
    pub hours: Option<Hours>,
}

impl AutoApprove {
    /// Compiles `pattern` so that it matches only a whole reason. The pattern is first
    /// compiled alone: `a)|(b` would otherwise become `^(?:a)|(b)$`, which is valid but
    /// anchored on one side only.
    pub fn whole_match(pattern: &str) -> Result<regex::Regex, regex::Error> {
        regex::Regex::new(pattern)?;
        regex::Regex::new(&format!("^(?:{pattern})$"))
    }
}

const DAY_NAMES: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

/// `hours = { days, from, to, tz }`: weekdays and a local time window `[from, to)` in an IANA
/// time zone, so DST moves the window with the wall clock. `from < to`; windows that cross
/// midnight are written as two elevations or not at all.
#[derive(Debug, Clone)]
pub struct Hours {
    /// Monday first.
    days: [bool; 7],
    /// Minutes after local midnight; `to` may be 24:00 (1440).
    from: u32,
    to: u32,
    days_text: String,
    tz_name: String,
    tz: jiff::tz::TimeZone,
}

/// Why an `hours` table was refused; `field` is `days`, `from` or `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoursError {
    pub field: &'static str,
    pub message: String,
}

impl Hours {
    /// Checks and builds the window. `tz` has been resolved from `tz_name` by the caller
    /// (that reads the zone database, which is I/O).
    pub fn new(
        days: &str,
        from: &str,
        to: &str,
        tz_name: &str,
        tz: jiff::tz::TimeZone,
    ) -> Result<Self, HoursError> {
        let err = |field, message: String| HoursError { field, message };
        let day_set = parse_days(days).map_err(|m| err("days", m))?;
        let from_min = parse_clock(from, false).map_err(|m| err("from", m))?;
        let to_min = parse_clock(to, true).map_err(|m| err("to", m))?;
        if from_min >= to_min {
            return Err(err(
                "to",
                format!(
                    "{} is not after from = {}; the window is [from, to) on the same day",
                    escaped(to),
                    escaped(from)
                ),
            ));
        }
        Ok(Hours {
            days: day_set,
            from: from_min,
            to: to_min,
            days_text: days.to_string(),
            tz_name: tz_name.to_string(),
            tz,
        })
    }

    /// Local weekday (Monday = 0) and second of the day at `now`; `None` outside the range
    /// of representable times.
    fn local(&self, now: i64) -> Option<(usize, u32, jiff::civil::DateTime)> {
        let ts = jiff::Timestamp::from_second(now).ok()?;
        let dt = self.tz.to_datetime(ts);
        let day = usize::try_from(dt.weekday().to_monday_zero_offset()).ok()?;
        let second = u32::try_from(
            i32::from(dt.hour()) * 3600 + i32::from(dt.minute()) * 60 + i32::from(dt.second()),
        )
        .ok()?;
        Some((day, second, dt))
    }

    /// Whether `now` is on one of the days and in `[from, to)` local time.
    pub fn contains(&self, now: i64) -> bool {
        self.local(now).is_some_and(|(day, second, _)| {
            self.days[day] && second >= self.from * 60 && second < self.to * 60
        })
    }

    /// Why `now` is inside or outside, for explanations.
    fn describe(&self, now: i64) -> String {
        match self.local(now) {
            Some((day, _, dt)) => format!(
                "it is {} {} in {}",
                DAY_NAMES[day],
                dt.strftime("%Y-%m-%d %H:%M:%S"),
                self.tz_name
            ),
            None => "the time is out of range".into(),
        }
    }
}

impl fmt::Display for Hours {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:02}:{:02}-{:02}:{:02} {}",
            self.days_text,
            self.from / 60,
            self.from % 60,
            self.to / 60,
            self.to % 60,
            self.tz_name
        )
    }
}

/// `Mon-Fri`, `Sat,Sun`, `Mon,Wed-Fri`: comma-separated days or ascending ranges of the
/// English three-letter names (`Fri-Mon` is refused: write `Fri-Sun,Mon`).
fn parse_days(text: &str) -> Result<[bool; 7], String> {
    let day = |s: &str| {
        DAY_NAMES.iter().position(|d| *d == s).ok_or_else(|| {
            format!(
                "{} is not a day; write Mon, Tue, Wed, Thu, Fri, Sat or Sun, ranges like Mon-Fri, separated by commas",
                escaped(s)
            )
        })
    };
    let mut days = [false; 7];
    for item in text.split(',') {
        let item = item.trim();
        let (a, b) = match item.split_once('-') {
            Some((a, b)) => (day(a)?, day(b)?),
            None => {
                let d = day(item)?;
                (d, d)
            }
        };
        if a > b {
            return Err(format!(
                "{} runs backwards; ranges go Mon to Sun (write e.g. Fri-Sun,Mon)",
                escaped(item)
            ));
        }
        for d in days.iter_mut().take(b + 1).skip(a) {
            *d = true;
        }
    }
    Ok(days)
}

/// `HH:MM`, 00:00–23:59 (and 24:00 when `allow_end_of_day`), as minutes after midnight.
fn parse_clock(text: &str, allow_end_of_day: bool) -> Result<u32, String> {
    let bad = || {
        format!(
            "{} is not a time of day; write HH:MM from 00:00 to 23:59{}",
            escaped(text),
            if allow_end_of_day { " (or 24:00)" } else { "" }
        )
    };
    let b = text.as_bytes();
    if b.len() != 5 || b[2] != b':' || ![0, 1, 3, 4].iter().all(|&i| b[i].is_ascii_digit()) {
        return Err(bad());
    }
    let num = |i: usize| u32::from(b[i] - b'0') * 10 + u32::from(b[i + 1] - b'0');
    let (h, m) = (num(0), num(3));
    if (h < 24 && m < 60) || (allow_end_of_day && h == 24 && m == 0) {
        Ok(h * 60 + m)
    } else {
        Err(bad())
    }
}

/// The configured elevation called `name`.
pub fn find<'a>(
    elevations: &'a [Elevation],
    name: &str,
) -> Result<&'a Elevation, ElevationRefusal> {
    elevations
        .iter()
        .find(|e| e.name == name)
        .ok_or_else(|| ElevationRefusal::UnknownElevation {
            name: escaped(name),
            known: list(elevations.iter().map(|e| e.name.as_str())),
        })
}

// ---------------------------------------------------------------------------------------
// Input values

/// A reason (or a decision's comment): 1–200 characters, not only whitespace, with no
/// control character (C0 incl. tab, newline and ESC, DEL, C1), no line or paragraph
/// separator and no bidirectional override or isolate (U+202A–U+202E, U+2066–U+2069), so it
/// can be shown to approvers and written to logs without forging lines or reordering text.
/// Refused, never rewritten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason(String);

impl Reason {
    pub fn new(text: &str) -> Result<Self, ElevationRefusal> {
        check_text("reason", text).map(|()| Reason(text.to_string()))
    }

    /// The same rules for an approver's comment.
    pub fn comment(text: &str) -> Result<Self, ElevationRefusal> {
        check_text("comment", text).map(|()| Reason(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn forbidden_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

fn check_text(what: &'static str, text: &str) -> Result<(), ElevationRefusal> {
    let n = text.chars().count();
    let problem = if text.chars().all(char::is_whitespace) {
        "is empty; say in a few words why (a ticket reference, say)".to_string()
    } else if n > TEXT_MAX_CHARS {
        format!("has {n} characters; at most {TEXT_MAX_CHARS} are allowed")
    } else if let Some(c) = text.chars().find(|&c| forbidden_char(c)) {
        format!(
            "contains U+{:04X} ({}); control characters, line breaks and bidirectional overrides are not allowed: write one line of plain text",
            c as u32,
            escaped(&c.to_string())
        )
    } else {
        return Ok(());
    };
    Err(ElevationRefusal::InvalidText { what, problem })
}

/// Who acts: the session's user with the groups, roles and sign-in recorded at sign-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub user: String,
    pub groups: BTreeSet<String>,
    pub roles: BTreeSet<String>,
    /// The IdP's `auth_time` (unix seconds), if the ID token had one.
    pub auth_time: Option<i64>,
    /// [`METHOD_BROWSER`], [`METHOD_DEVICE`] or [`METHOD_TOKEN`].
    pub method: String,
    /// The issuer of the session's identity (a `[[trusted_issuers]]` one for tokens).
    pub issuer: String,
}

impl Actor {
    /// An automation identity from token exchange: no person, no groups.
    pub fn is_automation(&self) -> bool {
        self.method == METHOD_TOKEN
    }
}

/// Times of one request, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Times {
    pub created_at: i64,
    pub approved_at: Option<i64>,
    /// The first certificate: the grant's clock starts here.
    pub started_at: Option<i64>,
    /// The granted duration, fixed at request.
    pub duration_secs: u64,
}

// ---------------------------------------------------------------------------------------
// Refusals

/// How the HTTP layer reports a refusal (kept free of axum).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// The reason or comment is malformed: `invalid-reason` (400).
    Invalid,
    /// Policy says no to this request: `elevation-refused` (403).
    Refused,
    /// The caller may not act on this request: `forbidden` (403).
    Forbidden,
    /// The request's state does not allow it: `conflict` (409).
    Conflict,
    /// A more recent sign-in would allow it: `reauth-required` (401).
    ReauthRequired,
    /// Someone else's request: answered like an unknown one, `not-found` (404).
    NotFound,
}

/// Why an elevation action is refused. Every message says what was wrong and what to do;
/// user-supplied text in it is escaped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElevationRefusal {
    #[error("the {what} {problem}")]
    InvalidText { what: &'static str, problem: String },
    #[error("there is no elevation named {name}; configured: {known}")]
    UnknownElevation { name: String, known: String },
    #[error("elevation {elevation:?} does not list the issuer {issuer} in eligible_issuers, so its automation identities may not request it")]
    IssuerNotEligible { elevation: String, issuer: String },
    #[error("automation identities (token exchange) can never {action} elevation requests")]
    AutomationCannot { action: &'static str },
    #[error("elevation {elevation:?} is for the roles {eligible}; your roles are {yours}")]
    NotEligible {
        elevation: String,
        eligible: String,
        yours: String,
    },
    #[error("{requested} is longer than elevation {elevation:?} allows: the maximum is {max}; ask for {max} or less")]
    TooLong {
        elevation: String,
        requested: String,
        max: String,
    },
    #[error("a duration of zero grants nothing; ask for up to {max}")]
    ZeroDuration { max: String },
    #[error("{action} needs a browser sign-in within the last {within}, but {why}; run `pedm-ssh login --reauth` and try again")]
    ReauthRequired {
        action: String,
        within: String,
        why: String,
    },
    #[error("elevation {elevation:?} is granted only automatically and its conditions do not hold: {failed}")]
    ConditionsNotMet { elevation: String, failed: String },
    #[error("cannot {action} this request: it is {}{}", .state.as_str(), state_hint(.state))]
    WrongState {
        action: &'static str,
        state: ElevationState,
    },
    #[error("nobody decides requests for elevation {elevation:?}: it has no approval rule and is granted only automatically")]
    NoApprovalRule { elevation: String },
    #[error("you cannot {action} your own request; another member of {groups} must")]
    OwnRequest {
        action: &'static str,
        groups: String,
    },
    #[error("only members of {groups} may {action} requests for elevation {elevation:?}, and your groups (as of your last sign-in) are {yours}")]
    NotApprover {
        action: &'static str,
        elevation: String,
        groups: String,
        yours: String,
    },
    #[error("you have already approved this request and one person counts once; it still needs {needed} approval(s) from other members of {groups}")]
    AlreadyApproved { needed: u32, groups: String },
    #[error("only members of {groups} (approvers) or {admins} (admins) may revoke requests for elevation {elevation:?}")]
    NotRevoker {
        elevation: String,
        groups: String,
        admins: String,
    },
    #[error("this is your own request: end it with `pedm-ssh cancel ID` instead of revoking it")]
    RevokeOwn,
    #[error("only the requester may cancel a request; approvers and admins revoke it instead")]
    NotRequester,
    #[error(
        "this elevation request is not yours; certificates are issued only for your own requests"
    )]
    NotYours,
}

fn state_hint(state: &ElevationState) -> &'static str {
    match state {
        ElevationState::Pending => " and still waiting for approval",
        ElevationState::Approved | ElevationState::Active => " (already decided)",
        ElevationState::Expired => ": its time is over; request the elevation again",
        ElevationState::Denied => ": an approver denied it",
        ElevationState::Cancelled => ": the requester cancelled it",
        ElevationState::Revoked => ": it was revoked",
        ElevationState::Lapsed => ": it was not used in time after approval; request it again",
        ElevationState::TimedOut => ": nobody decided it in time; request it again",
    }
}

impl ElevationRefusal {
    /// How the HTTP layer reports it.
    pub fn kind(&self) -> RefusalKind {
        use ElevationRefusal::*;
        match self {
            InvalidText { .. } => RefusalKind::Invalid,
            UnknownElevation { .. }
            | NotEligible { .. }
            | TooLong { .. }
            | ZeroDuration { .. }
            | ConditionsNotMet { .. } => RefusalKind::Refused,
            ReauthRequired { .. } => RefusalKind::ReauthRequired,
            WrongState { .. } | AlreadyApproved { .. } => RefusalKind::Conflict,
            NoApprovalRule { .. }
            | OwnRequest { .. }
            | NotApprover { .. }
            | NotRevoker { .. }
            | RevokeOwn
            | NotRequester
            | IssuerNotEligible { .. }
            | AutomationCannot { .. } => RefusalKind::Forbidden,
            NotYours => RefusalKind::NotFound,
        }
    }

    /// A short stable label for metrics and audit details.
    pub fn label(&self) -> &'static str {
        use ElevationRefusal::*;
        match self {
            InvalidText { .. } => "invalid-text",
            UnknownElevation { .. } => "unknown-elevation",
            NotEligible { .. } => "not-eligible",
            TooLong { .. } | ZeroDuration { .. } => "duration",
            ReauthRequired { .. } => "reauth-required",
            ConditionsNotMet { .. } => "conditions-not-met",
            WrongState { .. } => "wrong-state",
            NoApprovalRule { .. } => "no-approval-rule",
            OwnRequest { .. } => "own-request",
            NotApprover { .. } => "not-approver",
            AlreadyApproved { .. } => "already-approved",
            NotRevoker { .. } | RevokeOwn => "not-revoker",
            NotRequester => "not-requester",
            NotYours => "not-yours",
            IssuerNotEligible { .. } => "issuer-not-eligible",
            AutomationCannot { .. } => "automation",
        }
    }
}

// ---------------------------------------------------------------------------------------
// Recent authentication

/// Why a sign-in does not count as recent, or `None` when it does.
fn stale_auth(auth_time: Option<i64>, method: &str, within: Duration, now: i64) -> Option<String> {
    if method != METHOD_BROWSER {
        return Some(if method == METHOD_DEVICE || method == METHOD_TOKEN {
            format!("this session came from the {method} flow, which never counts as a recent sign-in; sign in with the browser")
        } else {
            format!(
                "this session's sign-in method {} never counts as a recent sign-in",
                escaped(method)
            )
        });
    }
    let Some(at) = auth_time else {
        return Some("the identity provider did not say when you signed in (no auth_time)".into());
    };
    if at > now.saturating_add(AUTH_TIME_SKEW_SECS) {
        return Some(format!(
            "the sign-in time is {}s in the future (clock skew at the identity provider?)",
            at - now
        ));
    }
    let age = now.saturating_sub(at);
    if age > secs(within) {
        return Some(format!("you signed in {} ago", fmt_age(age)));
    }
    None
}

fn fmt_age(secs: i64) -> String {
    fmt_duration(Duration::from_secs(u64::try_from(secs).unwrap_or(0)))
}

/// Whether a session's sign-in counts as recent: only a browser sign-in whose `auth_time`
/// is at most `within` ago (and at most [`AUTH_TIME_SKEW_SECS`] in the future). A missing
/// `auth_time` never counts; neither do device-flow and token-exchange sessions, whatever
/// their `auth_time` says, and neither does an unknown method.
pub fn recent_auth(auth_time: Option<i64>, method: &str, within: Duration, now: i64) -> bool {
    stale_auth(auth_time, method, within, now).is_none()
}

fn require_recent(
    actor: &Actor,
    within: Duration,
    now: i64,
    action: impl FnOnce() -> String,
) -> Result<(), ElevationRefusal> {
    match stale_auth(actor.auth_time, &actor.method, within, now) {
        None => Ok(()),
        Some(why) => Err(ElevationRefusal::ReauthRequired {
            action: action(),
            within: fmt_duration(within),
            why,
        }),
    }
}

// ---------------------------------------------------------------------------------------
// Requests

/// What happens to an accepted request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every auto-approval condition holds: approved at once.
    AutoApproved,
    /// Waits for this many distinct approvers.
    Pending { approvals_needed: u32 },
}

/// An accepted request: its duration (the asked one or `max_duration`) and outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestDecision {
    pub duration: Duration,
    pub outcome: Outcome,
}

/// One auto-approval condition, evaluated: its name and setting, whether it holds, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    /// `groups …`, `reason_matches …` or `hours …`.
    pub rule: String,
    pub holds: bool,
    pub why: String,
}

/// Everything [`decide_request`] looks at, kept so that [`explain`] shows the very same
/// evaluation it decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assessment {
    pub eligible: bool,
    /// `None` when the elevation has no `auto_approve`.
    pub conditions: Option<Vec<Condition>>,
    pub result: Result<RequestDecision, ElevationRefusal>,
}

/// Evaluates each configured auto-approval condition. `reason: None` (only from
/// [`explain`]) makes `reason_matches` fail.
fn auto_conditions(
    a: &AutoApprove,
    requester: &Actor,
    reason: Option<&Reason>,
    now: i64,
) -> Vec<Condition> {
    let mut out = Vec::new();
    if let Some(groups) = &a.groups {
        let mine: Vec<&String> = groups.intersection(&requester.groups).collect();
        out.push(Condition {
            rule: format!("groups {}", list(groups)),
            holds: !mine.is_empty(),
            why: if mine.is_empty() {
                format!(
                    "{} is in none of them (groups: {})",
                    escaped(&requester.user),
                    list(&requester.groups)
                )
            } else {
                format!("{} is in {}", escaped(&requester.user), list(mine))
            },
        });
    }
    if let Some(re) = &a.reason_matches {
        let (holds, why) = match reason {
            Some(r) if re.is_match(r.as_str()) => (
                true,
                format!("the reason {} matches as a whole", escaped(r.as_str())),
            ),
            Some(r) => (
                false,
                format!(
                    "the reason {} does not match as a whole",
                    escaped(r.as_str())
                ),
            ),
            None => (false, "no reason given".to_string()),
        };
        out.push(Condition {
            rule: format!("reason_matches {}", escaped(re.as_str())),
            holds,
            why,
        });
    }
    if let Some(h) = &a.hours {
        let holds = h.contains(now);
        out.push(Condition {
            rule: format!("hours {h}"),
            holds,
            why: format!(
                "{}, {} the window",
                h.describe(now),
                if holds { "inside" } else { "outside" }
            ),
        });
    }
    out
}

/// The whole request decision, with the evaluation behind it. Checks in this order, the
/// first failure deciding: eligible role; duration (default `max_duration`, zero and more
/// than `max_duration` refused); `require_recent_auth`; then auto-approval when every
/// condition holds (at least one must be configured), else pending when an approval rule
/// exists, else refused naming the failed conditions.
pub fn assess(
    e: &Elevation,
    requester: &Actor,
    reason: Option<&Reason>,
    duration: Option<Duration>,
    now: i64,
) -> Assessment {
    let eligible = intersects(&e.eligible_roles, &requester.roles);
    let conditions = e
        .auto_approve
        .as_ref()
        .map(|a| auto_conditions(a, requester, reason, now));
    let result = (|| {
        if requester.is_automation() && !e.eligible_issuers.contains(&requester.issuer) {
            return Err(ElevationRefusal::IssuerNotEligible {
                elevation: e.name.clone(),
                issuer: escaped(&requester.issuer),
            });
        }
        if !eligible {
            return Err(ElevationRefusal::NotEligible {
                elevation: e.name.clone(),
                eligible: list(&e.eligible_roles),
                yours: list(&requester.roles),
            });
        }
        let duration = duration.unwrap_or(e.max_duration);
        if duration.is_zero() {
            return Err(ElevationRefusal::ZeroDuration {
                max: fmt_duration(e.max_duration),
            });
        }
        if duration > e.max_duration {
            return Err(ElevationRefusal::TooLong {
                elevation: e.name.clone(),
                requested: fmt_duration(duration),
                max: fmt_duration(e.max_duration),
            });
        }
        if let Some(within) = e.require_recent_auth {
            require_recent(requester, within, now, || {
                format!("requesting elevation {:?}", e.name)
            })?;
        }
        let auto = conditions
            .as_ref()
            .is_some_and(|c| !c.is_empty() && c.iter().all(|c| c.holds));
        let outcome = if auto {
            Outcome::AutoApproved
        } else if let Some(rule) = &e.approval {
            Outcome::Pending {
                approvals_needed: rule.count,
            }
        } else {
            let failed = conditions
                .iter()
                .flatten()
                .filter(|c| !c.holds)
                .map(|c| format!("{}: {}", c.rule, c.why))
                .collect::<Vec<_>>();
            return Err(ElevationRefusal::ConditionsNotMet {
                elevation: e.name.clone(),
                failed: if failed.is_empty() {
                    "no condition is configured".into()
                } else {
                    failed.join("; ")
                },
            });
        };
        Ok(RequestDecision { duration, outcome })
    })();
    Assessment {
        eligible,
        conditions,
        result,
    }
}

/// Decides a new request. See [`assess`] for the order of checks; the reason has already
/// passed [`Reason::new`].
pub fn decide_request(
    e: &Elevation,
    requester: &Actor,
    reason: &Reason,
    duration: Option<Duration>,
    now: i64,
) -> Result<RequestDecision, ElevationRefusal> {
    assess(e, requester, Some(reason), duration, now).result
}

// ---------------------------------------------------------------------------------------
// State

/// The state a stored request is really in at `now`, and the deadline of that state.
///
/// - pending until `created_at + pending_timeout`, then timed_out;
/// - approved until `approved_at + use_within`, then lapsed;
/// - active until `started_at + duration`, then expired;
/// - final states stay, without a deadline.
///
/// Deadlines are exclusive: at the deadline second the state is already over. A missing
/// `approved_at` or `started_at` (never written by the store) counts from `created_at`,
/// the earliest possible time, so a broken row ends sooner, never later.
pub fn effective_state(
    stored: ElevationState,
    t: &Times,
    e: &Elevation,
    now: i64,
) -> (ElevationState, Option<i64>) {
    let (deadline, over) = match stored {
        ElevationState::Pending => (
            t.created_at.saturating_add(secs(e.pending_timeout)),
            ElevationState::TimedOut,
        ),
        ElevationState::Approved => (
            t.approved_at
                .unwrap_or(t.created_at)
                .saturating_add(secs(e.use_within)),
            ElevationState::Lapsed,
        ),
        ElevationState::Active => (active_end(t), ElevationState::Expired),
        s => return (s, None),
    };
    if now >= deadline {
        (over, None)
    } else {
        (stored, Some(deadline))
    }
}

fn active_end(t: &Times) -> i64 {
    t.started_at
        .unwrap_or(t.created_at)
        .saturating_add(i64::try_from(t.duration_secs).unwrap_or(i64::MAX))
}

/// Approvals still needed: `count` minus the *distinct* approvers (a set, so one person
/// counts once); 0 means approved. Without an approval rule nobody approves, so 0.
pub fn approval_progress(e: &Elevation, approvers: &BTreeSet<String>) -> u32 {
    let given = u32::try_from(approvers.len()).unwrap_or(u32::MAX);
    e.approval
        .as_ref()
        .map_or(0, |a| a.count.saturating_sub(given))
}

/// May `decider` approve or deny this request? Checks, in order: the elevation has an
/// approval rule; the decider is not the requester (even as a group member); the decider is
/// in `approval.groups`; the request is pending (`state_now` is the effective state); the
/// decider has not approved it already; the decider's browser sign-in is within
/// `approver_recent_auth`. Re-authentication is asked for last, only when it would help.
pub fn check_decider(
    e: &Elevation,
    requester: &str,
    state_now: ElevationState,
    prior_approvers: &BTreeSet<String>,
    decider: &Actor,
    approver_recent_auth: Duration,
    now: i64,
) -> Result<(), ElevationRefusal> {
    // Explicit, not only through the empty group list: no person stands behind a token.
    if decider.is_automation() {
        return Err(ElevationRefusal::AutomationCannot { action: "decide" });
    }
    let Some(rule) = &e.approval else {
        return Err(ElevationRefusal::NoApprovalRule {
            elevation: e.name.clone(),
        });
    };
    if decider.user == requester {
        return Err(ElevationRefusal::OwnRequest {
            action: "decide",
            groups: list(&rule.groups),
        });
    }
    if !intersects(&rule.groups, &decider.groups) {
        return Err(ElevationRefusal::NotApprover {
            action: "decide",
            elevation: e.name.clone(),
            groups: list(&rule.groups),
            yours: list(&decider.groups),
        });
    }
    if state_now != ElevationState::Pending {
        return Err(ElevationRefusal::WrongState {
            action: "decide",
            state: state_now,
        });
    }
    if prior_approvers.contains(&decider.user) {
        return Err(ElevationRefusal::AlreadyApproved {
            needed: approval_progress(e, prior_approvers),
            groups: list(&rule.groups),
        });
    }
    require_recent(decider, approver_recent_auth, now, || {
        "approving or denying".into()
    })
}

/// May `who` revoke this request or grant? Members of `approval.groups` and of the admin
/// groups may, with a browser sign-in within `approver_recent_auth`, while it is pending,
/// approved or active. The requester cancels instead (so the audit tells a withdrawal from
/// an intervention), even when they are an approver or admin.
pub fn check_revoker(
    e: &Elevation,
    state_now: ElevationState,
    requester: &str,
    who: &Actor,
    admin_groups: &BTreeSet<String>,
    approver_recent_auth: Duration,
    now: i64,
) -> Result<(), ElevationRefusal> {
    if who.is_automation() {
        return Err(ElevationRefusal::AutomationCannot { action: "revoke" });
    }
    if who.user == requester {
        return Err(ElevationRefusal::RevokeOwn);
    }
    let approver = e
        .approval
        .as_ref()
        .is_some_and(|a| intersects(&a.groups, &who.groups));
    if !approver && !intersects(admin_groups, &who.groups) {
        return Err(ElevationRefusal::NotRevoker {
            elevation: e.name.clone(),
            groups: list(e.approval.iter().flat_map(|a| a.groups.iter())),
            admins: list(admin_groups),
        });
    }
    if state_now.is_final() {
        return Err(ElevationRefusal::WrongState {
            action: "revoke",
            state: state_now,
        });
    }
    require_recent(who, approver_recent_auth, now, || "revoking".into())
}

/// May `who` cancel this request? Only the requester, while it is pending, approved or
/// active. No recent sign-in is needed: cancelling only gives up privilege.
pub fn check_cancel(
    state_now: ElevationState,
    requester: &str,
    who: &Actor,
) -> Result<(), ElevationRefusal> {
    if who.user != requester {
        return Err(ElevationRefusal::NotRequester);
    }
    if state_now.is_final() {
        return Err(ElevationRefusal::WrongState {
            action: "cancel",
            state: state_now,
        });
    }
    Ok(())
}

/// When an elevated certificate may be issued, and until when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IssueWindow {
    /// This is the first certificate: the store moves the request to active with
    /// `started_at = now`.
    pub first_use: bool,
    /// The grant's end; the certificate's `valid_before` must not pass it.
    pub ends_at: i64,
}

/// May `who` get a certificate for this request now? Only the requester (others are
/// refused without learning whose it is); the state is made current here with
/// [`effective_state`], so a stored state alone cannot leak a certificate past a deadline.
/// Approved: first use, the clock starts now and `require_recent_auth` is checked again.
/// Active: until `started_at + duration`. Anything else is refused by its state.
pub fn check_issue(
    e: &Elevation,
    stored: ElevationState,
    t: &Times,
    requester: &str,
    who: &Actor,
    now: i64,
) -> Result<IssueWindow, ElevationRefusal> {
    if who.user != requester {
        return Err(ElevationRefusal::NotYours);
    }
    match effective_state(stored, t, e, now).0 {
        ElevationState::Approved => {
            if let Some(within) = e.require_recent_auth {
                require_recent(who, within, now, || {
                    format!("the first use of elevation {:?}", e.name)
                })?;
            }
            Ok(IssueWindow {
                first_use: true,
                ends_at: now.saturating_add(i64::try_from(t.duration_secs).unwrap_or(i64::MAX)),
            })
        }
        ElevationState::Active => Ok(IssueWindow {
            first_use: false,
            ends_at: active_end(t),
        }),
        state => Err(ElevationRefusal::WrongState {
            action: "use",
            state,
        }),
    }
}

// ---------------------------------------------------------------------------------------
// Explanation (`pedm-ca policy explain`)

/// What `pedm-ca policy explain` concludes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Granted,
    /// Would wait for approvals.
    Pending,
    Refused,
}

/// The elevation part of an explanation.
#[derive(Debug, Clone)]
pub enum ElevationExplanation {
    Unknown(ElevationRefusal),
    Known {
        elevation: Box<Elevation>,
        /// The requester's roles (from the base decision).
        roles: BTreeSet<String>,
        /// The reason as given, or why it is refused.
        reason: Option<Result<Reason, ElevationRefusal>>,
        assessment: Assessment,
    },
}

/// Why a user would get a base certificate and an elevation, or why not; see its `Display`.
#[derive(Debug, Clone)]
pub struct Explanation {
    pub user: String,
    pub groups: Vec<String>,
    pub at: i64,
    pub base: Result<BaseGrant, Refusal>,
    pub elevation: Option<ElevationExplanation>,
}

/// The claims an IdP would send for `user` with `groups`, so that the explanation runs the
/// very same [`Policy::identity`] checks: the username claim, or, for an email-derived
/// username, a verified `user@` the first allowed domain (a `user` with `@` is taken as the
/// email itself).
fn synthetic_claims(policy: &Policy, user: &str, groups: &[String]) -> Map<String, Value> {
    let mut claims = Map::new();
    match &policy.username_source {
        crate::policy::UsernameSource::Claim(name) => {
            claims.insert(name.clone(), Value::String(user.into()));
        }
        crate::policy::UsernameSource::Email { allowed_domains } => {
            let email = if user.contains('@') {
                user.to_string()
            } else {
                let domain = allowed_domains
                    .iter()
                    .next()
                    .map_or("invalid", String::as_str);
                format!("{user}@{domain}")
            };
            claims.insert("email".into(), Value::String(email));
            claims.insert("email_verified".into(), Value::Bool(true));
        }
    }
    claims.insert(
        policy.groups_claim.clone(),
        Value::Array(groups.iter().cloned().map(Value::String).collect()),
    );
    claims
}

/// Explains what `user` with `groups` would get at `at`: the base decision and, when
/// `elevation` is given, the request decision exactly as [`decide_request`] makes it (via
/// [`assess`]). The requester is assumed to have just signed in through the browser, since
/// `require_recent_auth` depends on a session, not on policy. Without `reason`,
/// `reason_matches` does not hold.
pub fn explain(
    policy: &Policy,
    elevations: &[Elevation],
    user: &str,
    groups: &[String],
    elevation: Option<&str>,
    reason: Option<&str>,
    at: i64,
) -> Explanation {
    let identity: Result<Identity, Refusal> =
        policy.identity(&synthetic_claims(policy, user, groups));
    let base = identity
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|i| policy.base_grant(i));
    let elevation = elevation.map(|name| match find(elevations, name) {
        Err(r) => ElevationExplanation::Unknown(r),
        Ok(e) => {
            let roles: BTreeSet<String> = base
                .as_ref()
                .map(|g| g.roles.iter().cloned().collect())
                .unwrap_or_default();
            let actor = Actor {
                user: identity
                    .as_ref()
                    .map(|i| i.username.to_string())
                    .unwrap_or_else(|_| user.to_string()),
                groups: groups.iter().cloned().collect(),
                roles: roles.clone(),
                auth_time: Some(at),
                method: METHOD_BROWSER.into(),
                issuer: String::new(),
            };
            let reason = reason.map(Reason::new);
            let valid = reason.as_ref().and_then(|r| r.as_ref().ok());
            let assessment = assess(e, &actor, valid, None, at);
            ElevationExplanation::Known {
                elevation: Box::new(e.clone()),
                roles,
                reason,
                assessment,
            }
        }
    });
    Explanation {
        user: user.to_string(),
        groups: groups.to_vec(),
        at,
        base,
        elevation,
    }
}

impl Explanation {
    /// Granted only when the base decision grants and the elevation (if asked) would be
    /// approved at once; pending when it would wait for people; refused otherwise (also
    /// when the base decision refuses: no session, no elevation).
    pub fn verdict(&self) -> Verdict {
        if self.base.is_err() {
            return Verdict::Refused;
        }
        match &self.elevation {
            None => Verdict::Granted,
            Some(ElevationExplanation::Unknown(_)) => Verdict::Refused,
            Some(ElevationExplanation::Known {
                reason, assessment, ..
            }) => match (reason, &assessment.result) {
                (Some(Err(_)), _) | (_, Err(_)) => Verdict::Refused,
                (_, Ok(d)) => match d.outcome {
                    Outcome::AutoApproved => Verdict::Granted,
                    Outcome::Pending { .. } => Verdict::Pending,
                },
            },
        }
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = jiff::Timestamp::from_second(self.at)
            .map(|t| t.to_string())
            .unwrap_or_else(|_| self.at.to_string());
        writeln!(
            f,
            "user {}, groups {}, at {at}",
            escaped(&self.user),
            list(&self.groups)
        )?;
        match &self.base {
            Ok(g) => {
                writeln!(f, "base certificate: granted by role(s) {}", list(&g.roles))?;
                writeln!(
                    f,
                    "  principals: {}",
                    list(g.principals.iter().map(Principal::as_str))
                )?;
                writeln!(f, "  ttl: {}", fmt_duration(g.ttl))?;
                writeln!(f, "  extensions: {}", list(&g.extensions))?;
            }
            Err(r) => writeln!(f, "base certificate: refused: {r}")?,
        }
        match &self.elevation {
            None => {}
            Some(ElevationExplanation::Unknown(r)) => writeln!(f, "elevation: refused: {r}")?,
            Some(ElevationExplanation::Known {
                elevation: e,
                roles,
                reason,
                assessment: a,
            }) => {
                writeln!(
                    f,
                    "elevation {:?}: principals {}, at most {}, used within {} of approval, pending at most {}",
                    e.name,
                    list(e.principals.iter().map(Principal::as_str)),
                    fmt_duration(e.max_duration),
                    fmt_duration(e.use_within),
                    fmt_duration(e.pending_timeout),
                )?;
                writeln!(
                    f,
                    "  eligible: {} (eligible roles {}; the user's roles {})",
                    yes_no(a.eligible),
                    list(&e.eligible_roles),
                    list(roles)
                )?;
                match reason {
                    None => writeln!(f, "  reason: none given (a request needs one)")?,
                    Some(Ok(r)) => writeln!(f, "  reason: {}", escaped(r.as_str()))?,
                    Some(Err(err)) => writeln!(f, "  reason: refused: {err}")?,
                }
                if let Some(within) = e.require_recent_auth {
                    writeln!(
                        f,
                        "  recent sign-in: a browser sign-in within {} at request and at first use (assumed here)",
                        fmt_duration(within)
                    )?;
                }
                match &a.conditions {
                    None => writeln!(f, "  auto-approval: not configured")?,
                    Some(conds) => {
                        writeln!(f, "  auto-approval (every condition must hold):")?;
                        for c in conds {
                            writeln!(f, "    {}: {}, {}", c.rule, yes_no(c.holds), c.why)?;
                        }
                    }
                }
                match &e.approval {
                    None => writeln!(f, "  approval by people: none (granted only automatically)")?,
                    Some(r) => writeln!(
                        f,
                        "  approval by people: {} distinct member(s) of {}, never the requester",
                        r.count,
                        list(&r.groups)
                    )?,
                }
            }
        }
        let outcome = match (&self.base, &self.elevation) {
            (Err(_), None) => "refused".to_string(),
            (Err(_), Some(_)) => {
                "refused: no base certificate, so no session to request an elevation from".into()
            }
            (Ok(_), None) => "granted".into(),
            (Ok(_), Some(ElevationExplanation::Unknown(r))) => format!("refused: {r}"),
            (
                Ok(_),
                Some(ElevationExplanation::Known {
                    reason, assessment, ..
                }),
            ) => match (reason, &assessment.result) {
                (Some(Err(r)), _) | (_, Err(r)) => format!("refused: {r}"),
                (_, Ok(d)) => match d.outcome {
                    Outcome::AutoApproved => format!(
                        "granted at once (auto-approved) for up to {}",
                        fmt_duration(d.duration)
                    ),
                    Outcome::Pending { approvals_needed } => format!(
                        "pending: waits for {approvals_needed} approval(s), then lasts up to {}",
                        fmt_duration(d.duration)
                    ),
                },
            },
        };
        writeln!(f, "result: {outcome}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{PrincipalTemplate, Role, UsernameSource};
    use ElevationState::*;

    const H: i64 = 3600;
    /// Fri 2024-03-29 07:30:00 UTC = 08:30 CET in Berlin.
    const FRI_0830_BERLIN: i64 = 1_711_697_400;

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn berlin() -> jiff::tz::TimeZone {
        jiff::tz::TimeZone::get("Europe/Berlin").unwrap()
    }

    fn ts(rfc3339: &str) -> i64 {
        rfc3339.parse::<jiff::Timestamp>().unwrap().as_second()
    }

    fn office_hours() -> Hours {
        Hours::new("Mon-Fri", "08:00", "18:00", "Europe/Berlin", berlin()).unwrap()
    }

    fn auto(groups: Option<&[&str]>, re: Option<&str>, hours: Option<Hours>) -> AutoApprove {
        AutoApprove {
            groups: groups.map(set),
            reason_matches: re.map(|r| AutoApprove::whole_match(r).unwrap()),
            hours,
        }
    }

    /// db-admin: engineers, at most 30m, 1 approval by security, auto for oncall with INC-n.
    fn db_admin() -> Elevation {
        Elevation {
            name: "db-admin".into(),
            principals: vec![Principal::new("db-admin").unwrap()],
            eligible_roles: set(&["engineer"]),
            eligible_issuers: BTreeSet::new(),
            max_duration: Duration::from_secs(1800),
            use_within: Duration::from_secs(3600),
            pending_timeout: Duration::from_secs(3600),
            require_recent_auth: None,
            approval: Some(ApprovalRule {
                groups: set(&["security"]),
                count: 1,
            }),
            auto_approve: Some(auto(Some(&["oncall"]), Some("INC-[0-9]+"), None)),
        }
    }

    fn actor(user: &str, groups: &[&str]) -> Actor {
        Actor {
            user: user.into(),
            groups: set(groups),
            roles: set(&["engineer"]),
            auth_time: Some(FRI_0830_BERLIN - 60),
            method: METHOD_BROWSER.into(),
            issuer: "https://idp.example.com".into(),
        }
    }

    const CI: &str = "https://ci.example.com";

    /// An automation identity `ci.<subject>` of the CI issuer with `roles`.
    fn token_actor(subject: &str, roles: &[&str]) -> Actor {
        Actor {
            user: format!("ci.{subject}"),
            groups: BTreeSet::new(),
            roles: set(roles),
            auth_time: None,
            method: METHOD_TOKEN.into(),
            issuer: CI.into(),
        }
    }

    #[test]
    fn token_actors_need_their_issuer_listed() {
        let mut e = db_admin();
        e.auto_approve = Some(auto(None, Some("INC-[0-9]+"), None));
        let a = token_actor("deploy", &["engineer"]);
        let r = request(&e, &a, "INC-1").unwrap_err();
        assert_eq!(r.kind(), RefusalKind::Forbidden);
        assert_eq!(r.label(), "issuer-not-eligible");
        assert!(r.to_string().contains(CI), "{r}");
        e.eligible_issuers = set(&["https://other.example.com"]);
        assert_eq!(
            request(&e, &a, "INC-1").unwrap_err().label(),
            "issuer-not-eligible"
        );
        e.eligible_issuers = set(&[CI]);
        assert_eq!(outcome(&e, &a, "INC-1"), Outcome::AutoApproved);
        assert_eq!(
            outcome(&e, &a, "no ticket"),
            Outcome::Pending {
                approvals_needed: 1
            }
        );
        // Listed issuer, but the mapped roles are not eligible.
        let r = request(&e, &token_actor("deploy", &["auditor"]), "INC-1").unwrap_err();
        assert_eq!(r.label(), "not-eligible");
        // A person is not affected by eligible_issuers.
        e.eligible_issuers = BTreeSet::new();
        assert_eq!(
            outcome(&e, &actor("bob", &["eng"]), "INC-1"),
            Outcome::AutoApproved
        );
    }

    #[test]
    fn token_actors_never_decide_or_revoke() {
        // Even with an approver group (which token sessions never have), refused by method.
        let mut t = token_actor("alice", &["engineer"]);
        t.groups = set(&["security"]);
        t.auth_time = Some(FRI_0830_BERLIN - 60);
        let r = decide(&db_admin(), Pending, &[], &t).unwrap_err();
        assert_eq!(r.kind(), RefusalKind::Forbidden);
        assert_eq!(r.label(), "automation");
        let mut browser = t.clone();
        browser.method = METHOD_BROWSER.into();
        assert_eq!(decide(&db_admin(), Pending, &[], &browser), Ok(()));
        let r = check_revoker(
            &db_admin(),
            Pending,
            "bob",
            &t,
            &set(&["security"]),
            AR,
            FRI_0830_BERLIN,
        )
        .unwrap_err();
        assert_eq!(r.label(), "automation");
    }

    fn reason(s: &str) -> Reason {
        Reason::new(s).unwrap()
    }

    fn request(e: &Elevation, a: &Actor, r: &str) -> Result<RequestDecision, ElevationRefusal> {
        decide_request(e, a, &reason(r), None, FRI_0830_BERLIN)
    }

    fn outcome(e: &Elevation, a: &Actor, r: &str) -> Outcome {
        request(e, a, r).unwrap().outcome
    }

    const PENDING1: Outcome = Outcome::Pending {
        approvals_needed: 1,
    };

    // --- reasons -----------------------------------------------------------------------

    #[test]
    fn reasons_accept_printable_text_up_to_200_characters() {
        for ok in [
            "INC-1234",
            "x",
            "  leading space",
            "Ünïcödé ✓ 数据库",
            &"a".repeat(200),
        ] {
            assert_eq!(Reason::new(ok).unwrap().as_str(), ok);
            assert!(Reason::comment(ok).is_ok());
        }
        // 200 characters, more than 200 bytes.
        assert!(Reason::new(&"é".repeat(200)).is_ok());
    }

    #[test]
    fn reasons_refuse_empty_long_control_and_bidi() {
        let bad = [
            "".to_string(),
            "   ".into(),
            "a".repeat(201),
            "é".repeat(201),
            "INC-1\nroot".into(),
            "\x1b[31mred".into(),
            "tab\there".into(),
            "cr\r".into(),
            "nul\0".into(),
            "del\x7f".into(),
            "c1\u{85}".into(),
            "c1\u{9b}31m".into(),
            "ls\u{2028}".into(),
            "ps\u{2029}".into(),
        ];
        for b in bad.iter().cloned().chain(
            ('\u{202A}'..='\u{202E}')
                .chain('\u{2066}'..='\u{2069}')
                .map(|c| format!("ok{c}gnp")),
        ) {
            let r = Reason::new(&b).unwrap_err();
            assert_eq!(r.kind(), RefusalKind::Invalid, "{b:?}");
            let msg = r.to_string();
            assert!(msg.starts_with("the reason "), "{msg}");
            assert!(
                !msg.chars().any(forbidden_char),
                "message must be escaped: {msg:?}"
            );
            assert!(Reason::comment(&b)
                .unwrap_err()
                .to_string()
                .starts_with("the comment "));
        }
        assert!(Reason::new(&"a".repeat(201))
            .unwrap_err()
            .to_string()
            .contains("201 characters; at most 200"));
        assert!(Reason::new("\x1b[31m")
            .unwrap_err()
            .to_string()
            .contains("U+001B"));
        assert!(Reason::new("")
            .unwrap_err()
            .to_string()
            .contains("is empty"));
    }

    // --- recent authentication -----------------------------------------------------------

    #[test]
    fn recent_auth_rules() {
        let now = 10_000;
        let m = Duration::from_secs(900);
        assert!(recent_auth(Some(now - 900), METHOD_BROWSER, m, now));
        assert!(recent_auth(Some(now), METHOD_BROWSER, m, now));
        assert!(!recent_auth(Some(now - 901), METHOD_BROWSER, m, now));
        // A missing auth_time never counts.
        assert!(!recent_auth(None, METHOD_BROWSER, m, now));
        // Device flow and token exchange never count, however fresh.
        assert!(!recent_auth(Some(now), METHOD_DEVICE, m, now));
        assert!(!recent_auth(Some(now), METHOD_TOKEN, m, now));
        assert!(!recent_auth(Some(now), "something-else", m, now));
        // Up to 60 s in the future is clock skew; beyond that it never counts.
        assert!(recent_auth(Some(now + 60), METHOD_BROWSER, m, now));
        assert!(!recent_auth(Some(now + 61), METHOD_BROWSER, m, now));
    }

    #[test]
    fn request_needs_recent_auth_when_configured() {
        let mut e = db_admin();
        e.require_recent_auth = Some(Duration::from_secs(900));
        let mut a = actor("bob", &["eng"]);
        a.auth_time = Some(FRI_0830_BERLIN - 900);
        assert_eq!(outcome(&e, &a, "x"), PENDING1);
        a.auth_time = Some(FRI_0830_BERLIN - 901);
        let r = request(&e, &a, "x").unwrap_err();
        assert_eq!(r.kind(), RefusalKind::ReauthRequired);
        let msg = r.to_string();
        assert!(
            msg.contains("pedm-ssh login --reauth") && msg.contains("15m"),
            "{msg}"
        );
        a.auth_time = None;
        assert!(request(&e, &a, "x")
            .unwrap_err()
            .to_string()
            .contains("auth_time"));
        a.auth_time = Some(FRI_0830_BERLIN);
        a.method = METHOD_DEVICE.into();
        assert!(request(&e, &a, "x")
            .unwrap_err()
            .to_string()
            .contains("device"));
        a.method = METHOD_TOKEN.into();
        // Automation needs its issuer listed first; then it never counts as recent either.
        assert_eq!(
            request(&e, &a, "x").unwrap_err().kind(),
            RefusalKind::Forbidden
        );
        e.eligible_issuers = set(&[a.issuer.as_str()]);
        assert_eq!(
            request(&e, &a, "x").unwrap_err().kind(),
            RefusalKind::ReauthRequired
        );
        // Without require_recent_auth, a device session may request.
        a.method = METHOD_DEVICE.into();
        assert_eq!(outcome(&db_admin(), &a, "x"), PENDING1);
    }

    // --- eligibility and duration ------------------------------------------------------

    #[test]
    fn only_eligible_roles_may_request() {
        let mut a = actor("dave", &["oncall"]);
        a.roles = set(&["auditor"]);
        let r = request(&db_admin(), &a, "INC-1234").unwrap_err();
        assert_eq!(r.kind(), RefusalKind::Refused);
        assert!(r.to_string().contains("\"engineer\"") && r.to_string().contains("\"auditor\""));
        a.roles = set(&["auditor", "engineer"]);
        assert_eq!(outcome(&db_admin(), &a, "INC-1234"), Outcome::AutoApproved);
        a.roles = BTreeSet::new();
        let r = request(&db_admin(), &a, "x").unwrap_err();
        assert!(r.to_string().contains("your roles are (none)"), "{r}");
    }

    #[test]
    fn duration_defaults_to_max_and_is_bounded() {
        let e = db_admin();
        let a = actor("bob", &["eng"]);
        let d = |secs| decide_request(&e, &a, &reason("x"), secs, FRI_0830_BERLIN);
        assert_eq!(d(None).unwrap().duration, Duration::from_secs(1800));
        assert_eq!(
            d(Some(Duration::from_secs(900))).unwrap().duration,
            Duration::from_secs(900)
        );
        assert_eq!(
            d(Some(Duration::from_secs(1800))).unwrap().duration,
            Duration::from_secs(1800)
        );
        let r = d(Some(Duration::from_secs(1801))).unwrap_err();
        assert_eq!(r.kind(), RefusalKind::Refused);
        assert!(r.to_string().contains("the maximum is 30m"), "{r}");
        let r = d(Some(Duration::from_secs(3600))).unwrap_err();
        assert!(
            r.to_string().contains("1h is longer") && r.to_string().contains("30m"),
            "{r}"
        );
        let r = d(Some(Duration::ZERO)).unwrap_err();
        assert_eq!(r, ElevationRefusal::ZeroDuration { max: "30m".into() });
    }

    // --- auto-approval -----------------------------------------------------------------

    #[test]
    fn reason_must_match_as_a_whole() {
        let e = db_admin();
        let alice = actor("alice", &["oncall"]);
        assert_eq!(outcome(&e, &alice, "INC-1234"), Outcome::AutoApproved);
        for r in [
            "INC-1 give me root",
            "because",
            "xINC-1234",
            "INC-1234x",
            "INC-",
            "inc-1234",
        ] {
            assert_eq!(outcome(&e, &alice, r), PENDING1, "{r}");
        }
        // Alternation cannot escape the anchors.
        let re = AutoApprove::whole_match("INC-[0-9]+|CHG-[0-9]+").unwrap();
        assert!(re.is_match("CHG-1") && !re.is_match("xCHG-1") && !re.is_match("INC-1 x"));
        // A pattern that only balances once wrapped is refused.
        assert!(AutoApprove::whole_match("a)|(b").is_err());
        assert!(AutoApprove::whole_match("(").is_err());
    }

    #[test]
    fn group_condition_alone() {
        let mut e = db_admin();
        e.auto_approve = Some(auto(Some(&["oncall", "sre"]), None, None));
        assert_eq!(
            outcome(&e, &actor("alice", &["eng", "sre"]), "because"),
            Outcome::AutoApproved
        );
        assert_eq!(outcome(&e, &actor("bob", &["eng"]), "because"), PENDING1);
    }

    #[test]
    fn reason_condition_alone() {
        let mut e = db_admin();
        e.auto_approve = Some(auto(None, Some("INC-[0-9]+"), None));
        assert_eq!(
            outcome(&e, &actor("bob", &["eng"]), "INC-1234"),
            Outcome::AutoApproved
        );
        assert_eq!(
            outcome(&e, &actor("bob", &["eng"]), "INC-1 give me root"),
            PENDING1
        );
    }

    #[test]
    fn hours_condition_alone() {
        let mut e = db_admin();
        e.auto_approve = Some(auto(None, None, Some(office_hours())));
        let bob = actor("bob", &["eng"]);
        let at = |t: &str| {
            decide_request(&e, &bob, &reason("x"), None, ts(t))
                .unwrap()
                .outcome
        };
        // Friday 08:30 in Berlin (CET, UTC+1).
        assert_eq!(at("2024-03-29T07:30:00Z"), Outcome::AutoApproved);
        // 07:59:59 local is before the window; 08:00:00 is in; 18:00:00 is out.
        assert_eq!(at("2024-03-29T06:59:59Z"), PENDING1);
        assert_eq!(at("2024-03-29T07:00:00Z"), Outcome::AutoApproved);
        assert_eq!(at("2024-03-29T16:59:59Z"), Outcome::AutoApproved);
        assert_eq!(at("2024-03-29T17:00:00Z"), PENDING1);
        // Saturday and Sunday are outside, at any hour.
        assert_eq!(at("2024-03-30T10:00:00Z"), PENDING1);
        assert_eq!(at("2024-03-31T10:00:00Z"), PENDING1);
    }

    #[test]
    fn hours_follow_dst_in_berlin() {
        let h = office_hours();
        // Mon 2024-04-01 is after the switch to CEST (UTC+2) on Sun 2024-03-31 01:00 UTC.
        // 06:30 UTC is 08:30 local: inside (a fixed UTC+1 would say 07:30, outside).
        assert!(h.contains(ts("2024-04-01T06:30:00Z")));
        // 16:30 UTC is 18:30 local: outside (a fixed UTC+1 would say 17:30, inside).
        assert!(!h.contains(ts("2024-04-01T16:30:00Z")));
        // And back to CET on Sun 2024-10-27: Mon 2024-10-28 07:30 UTC is 08:30 local.
        assert!(h.contains(ts("2024-10-28T07:30:00Z")));
        assert!(!h.contains(ts("2024-10-28T06:30:00Z")));
        // At the transition itself: 01:00-03:00 local on Sunday; 02:xx does not exist.
        let night = Hours::new("Sun", "01:00", "03:00", "Europe/Berlin", berlin()).unwrap();
        assert!(night.contains(ts("2024-03-31T00:59:59Z"))); // 01:59:59 CET
        assert!(!night.contains(ts("2024-03-31T01:00:00Z"))); // 03:00:00 CEST
        assert!(!night.contains(ts("2024-03-30T00:30:00Z"))); // Saturday
    }

    #[test]
    fn hours_parsing() {
        let days = |d: &str| Hours::new(d, "00:00", "24:00", "UTC", jiff::tz::TimeZone::UTC);
        // Mon 2024-04-01 .. Sun 2024-04-07, at noon UTC.
        let week: Vec<i64> = (1..=7)
            .map(|d| ts(&format!("2024-04-0{d}T12:00:00Z")))
            .collect();
        let on = |h: &Hours| week.iter().map(|t| h.contains(*t)).collect::<Vec<_>>();
        assert_eq!(
            on(&days("Mon-Fri").unwrap()),
            [true, true, true, true, true, false, false]
        );
        assert_eq!(
            on(&days("Sat,Sun").unwrap()),
            [false, false, false, false, false, true, true]
        );
        assert_eq!(
            on(&days("Mon,Wed-Fri").unwrap()),
            [true, false, true, true, true, false, false]
        );
        assert_eq!(
            on(&days("Mon, Sun").unwrap()),
            [true, false, false, false, false, false, true]
        );
        // The whole day until midnight with to = 24:00.
        assert!(days("Mon").unwrap().contains(ts("2024-04-01T23:59:59Z")));
        assert!(!days("Mon").unwrap().contains(ts("2024-04-02T00:00:00Z")));
        for bad in [
            "",
            "Mo",
            "mon",
            "Monday",
            "Fri-Mon",
            "Mon-",
            "Mon,,Tue",
            "Mon-Wed-Fri",
            "1-5",
        ] {
            assert_eq!(days(bad).unwrap_err().field, "days", "{bad:?}");
        }
        let clock = |f: &str, t: &str| Hours::new("Mon", f, t, "UTC", jiff::tz::TimeZone::UTC);
        for bad in [
            "8:00", "08:0", "0800", "24:00", "23:60", "08:00:00", "-1:00", "ab:cd", "０8:00",
        ] {
            assert_eq!(clock(bad, "23:00").unwrap_err().field, "from", "{bad:?}");
        }
        for bad in ["24:01", "25:00", "8"] {
            assert_eq!(clock("01:00", bad).unwrap_err().field, "to", "{bad:?}");
        }
        assert_eq!(clock("18:00", "08:00").unwrap_err().field, "to");
        assert_eq!(clock("08:00", "08:00").unwrap_err().field, "to");
        assert!(clock("00:00", "00:01").is_ok());
        assert_eq!(
            office_hours().to_string(),
            "Mon-Fri 08:00-18:00 Europe/Berlin"
        );
    }

    #[test]
    fn all_conditions_must_hold() {
        let mut e = db_admin();
        e.auto_approve = Some(auto(
            Some(&["oncall"]),
            Some("INC-[0-9]+"),
            Some(office_hours()),
        ));
        let alice = actor("alice", &["oncall"]);
        let bob = actor("bob", &["eng"]);
        let weekend = ts("2024-03-30T10:00:00Z");
        let d = |a: &Actor, r: &str, now| {
            decide_request(&e, a, &reason(r), None, now)
                .unwrap()
                .outcome
        };
        assert_eq!(
            d(&alice, "INC-1234", FRI_0830_BERLIN),
            Outcome::AutoApproved
        );
        // Each one failing alone is enough to need a person.
        assert_eq!(d(&bob, "INC-1234", FRI_0830_BERLIN), PENDING1);
        assert_eq!(d(&alice, "because", FRI_0830_BERLIN), PENDING1);
        assert_eq!(d(&alice, "INC-1234", weekend), PENDING1);
        assert_eq!(d(&bob, "because", weekend), PENDING1);
        // The default db-admin policy (groups AND reason).
        let e = db_admin();
        assert_eq!(outcome(&e, &alice, "INC-1234"), Outcome::AutoApproved);
        assert_eq!(outcome(&e, &alice, "INC-1 give me root"), PENDING1);
        assert_eq!(outcome(&e, &alice, "because"), PENDING1);
        assert_eq!(outcome(&e, &bob, "INC-1234"), PENDING1);
    }

    #[test]
    fn auto_approve_without_conditions_approves_nothing() {
        let mut e = db_admin();
        e.auto_approve = Some(auto(None, None, None));
        assert_eq!(outcome(&e, &actor("bob", &["eng"]), "x"), PENDING1);
        e.approval = None;
        let r = request(&e, &actor("bob", &["eng"]), "x").unwrap_err();
        assert!(r.to_string().contains("no condition is configured"), "{r}");
    }

    #[test]
    fn auto_only_elevation_refuses_naming_failed_conditions() {
        let mut e = db_admin();
        e.approval = None;
        e.auto_approve = Some(auto(
            Some(&["oncall"]),
            Some("INC-[0-9]+"),
            Some(office_hours()),
        ));
        assert_eq!(
            outcome(&e, &actor("alice", &["oncall"]), "INC-7"),
            Outcome::AutoApproved
        );
        let r = decide_request(
            &e,
            &actor("bob", &["eng"]),
            &reason("because"),
            None,
            FRI_0830_BERLIN,
        )
        .unwrap_err();
        assert_eq!(r.kind(), RefusalKind::Refused);
        let msg = r.to_string();
        assert!(
            msg.contains("granted only automatically and its conditions do not hold"),
            "{msg}"
        );
        assert!(msg.contains("groups \"oncall\""), "{msg}");
        assert!(msg.contains("reason_matches"), "{msg}");
        assert!(
            !msg.contains("hours"),
            "hours held, so it is not listed: {msg}"
        );
    }

    #[test]
    fn count_sets_approvals_needed() {
        let mut e = db_admin();
        e.approval = Some(ApprovalRule {
            groups: set(&["security"]),
            count: 2,
        });
        assert_eq!(
            outcome(&e, &actor("bob", &["eng"]), "x"),
            Outcome::Pending {
                approvals_needed: 2
            }
        );
    }

    // --- states --------------------------------------------------------------------------

    fn times(created: i64, approved: Option<i64>, started: Option<i64>) -> Times {
        Times {
            created_at: created,
            approved_at: approved,
            started_at: started,
            duration_secs: 600,
        }
    }

    #[test]
    fn effective_state_transitions_at_the_boundary_second() {
        let e = db_admin(); // pending_timeout 1h, use_within 1h
        let t = times(1000, None, None);
        assert_eq!(
            effective_state(Pending, &t, &e, 1000 + H - 1),
            (Pending, Some(1000 + H))
        );
        assert_eq!(effective_state(Pending, &t, &e, 1000 + H), (TimedOut, None));
        let t = times(1000, Some(2000), None);
        assert_eq!(
            effective_state(Approved, &t, &e, 2000 + H - 1),
            (Approved, Some(2000 + H))
        );
        assert_eq!(effective_state(Approved, &t, &e, 2000 + H), (Lapsed, None));
        let t = times(1000, Some(2000), Some(3000));
        assert_eq!(effective_state(Active, &t, &e, 3599), (Active, Some(3600)));
        assert_eq!(effective_state(Active, &t, &e, 3600), (Expired, None));
        // An active grant does not lapse: use_within no longer applies.
        assert_eq!(
            effective_state(Active, &times(0, Some(0), Some(10 * H)), &e, 10 * H + 1).0,
            Active
        );
        for s in [Expired, Denied, Cancelled, Revoked, Lapsed, TimedOut] {
            assert_eq!(effective_state(s, &t, &e, 0), (s, None));
            assert_eq!(effective_state(s, &t, &e, i64::MAX), (s, None));
        }
        // Missing times count from created_at (earliest), never later.
        let t = times(1000, None, None);
        assert_eq!(effective_state(Approved, &t, &e, 1000 + H), (Lapsed, None));
        assert_eq!(effective_state(Active, &t, &e, 1600), (Expired, None));
    }

    #[test]
    fn approval_progress_counts_distinct_people() {
        let mut e = db_admin();
        assert_eq!(approval_progress(&e, &set(&[])), 1);
        assert_eq!(approval_progress(&e, &set(&["carol"])), 0);
        e.approval = Some(ApprovalRule {
            groups: set(&["security"]),
            count: 2,
        });
        assert_eq!(approval_progress(&e, &set(&["carol"])), 1);
        assert_eq!(approval_progress(&e, &set(&["carol", "carol"])), 1);
        assert_eq!(approval_progress(&e, &set(&["carol", "erin"])), 0);
        assert_eq!(approval_progress(&e, &set(&["carol", "erin", "frank"])), 0);
        e.approval = None;
        assert_eq!(approval_progress(&e, &set(&[])), 0);
    }

    // --- deciders ------------------------------------------------------------------------

    const AR: Duration = Duration::from_secs(3600);

    fn decide(
        e: &Elevation,
        state: ElevationState,
        prior: &[&str],
        who: &Actor,
    ) -> Result<(), ElevationRefusal> {
        check_decider(e, "bob", state, &set(prior), who, AR, FRI_0830_BERLIN)
    }

    #[test]
    fn approver_in_group_may_decide() {
        assert_eq!(
            decide(&db_admin(), Pending, &[], &actor("carol", &["security"])),
            Ok(())
        );
    }

    #[test]
    fn self_approval_is_refused_even_for_a_group_member() {
        let erin = actor("erin", &["eng", "security"]);
        assert_eq!(decide(&db_admin(), Pending, &[], &erin), Ok(()));
        let r = check_decider(
            &db_admin(),
            "erin",
            Pending,
            &set(&[]),
            &erin,
            AR,
            FRI_0830_BERLIN,
        )
        .unwrap_err();
        assert_eq!(r.kind(), RefusalKind::Forbidden);
        assert!(r.to_string().contains("your own request"), "{r}");
    }

    #[test]
    fn approver_not_in_group_is_refused() {
        let r = decide(
            &db_admin(),
            Pending,
            &[],
            &actor("alice", &["oncall", "eng"]),
        )
        .unwrap_err();
        assert_eq!(r.kind(), RefusalKind::Forbidden);
        assert!(
            r.to_string().contains("only members of \"security\""),
            "{r}"
        );
    }

    #[test]
    fn one_person_counts_once() {
        let mut e = db_admin();
        e.approval = Some(ApprovalRule {
            groups: set(&["security"]),
            count: 2,
        });
        let carol = actor("carol", &["security"]);
        let erin = actor("erin", &["eng", "security"]);
        assert_eq!(decide(&e, Pending, &[], &carol), Ok(()));
        let r = decide(&e, Pending, &["carol"], &carol).unwrap_err();
        assert_eq!(r.kind(), RefusalKind::Conflict);
        assert!(
            r.to_string().contains("already approved") && r.to_string().contains("still needs 1"),
            "{r}"
        );
        assert_eq!(approval_progress(&e, &set(&["carol"])), 1);
        // carol and erin together make two.
        assert_eq!(decide(&e, Pending, &["carol"], &erin), Ok(()));
        assert_eq!(approval_progress(&e, &set(&["carol", "erin"])), 0);
    }

    #[test]
    fn deciding_needs_pending() {
        let carol = actor("carol", &["security"]);
        for s in [
            Approved, Active, Expired, Denied, Cancelled, Revoked, Lapsed, TimedOut,
        ] {
            let r = decide(&db_admin(), s, &[], &carol).unwrap_err();
            assert_eq!(r.kind(), RefusalKind::Conflict, "{s:?}");
            assert!(r.to_string().contains(s.as_str()), "{r}");
        }
        // A pending request past its timeout cannot be approved.
        let e = db_admin();
        let (state, _) = effective_state(Pending, &times(0, None, None), &e, H);
        assert_eq!(state, TimedOut);
        assert!(decide(&e, state, &[], &carol).is_err());
    }

    #[test]
    fn stale_approver_sign_in_needs_reauth() {
        let mut carol = actor("carol", &["security"]);
        carol.auth_time = Some(FRI_0830_BERLIN - 3600);
        assert_eq!(decide(&db_admin(), Pending, &[], &carol), Ok(()));
        carol.auth_time = Some(FRI_0830_BERLIN - 3601);
        let r = decide(&db_admin(), Pending, &[], &carol).unwrap_err();
        assert_eq!(r.kind(), RefusalKind::ReauthRequired);
        assert!(r.to_string().contains("pedm-ssh login --reauth"), "{r}");
        carol.auth_time = None;
        assert_eq!(
            decide(&db_admin(), Pending, &[], &carol)
                .unwrap_err()
                .kind(),
            RefusalKind::ReauthRequired
        );
        carol.auth_time = Some(FRI_0830_BERLIN);
        carol.method = METHOD_DEVICE.into();
        assert_eq!(
            decide(&db_admin(), Pending, &[], &carol)
                .unwrap_err()
                .kind(),
            RefusalKind::ReauthRequired
        );
        carol.method = METHOD_TOKEN.into();
        // Automation never decides, before any question of re-authentication.
        let r = decide(&db_admin(), Pending, &[], &carol).unwrap_err();
        assert_eq!(r.kind(), RefusalKind::Forbidden);
        assert_eq!(r.label(), "automation");
        carol.method = METHOD_DEVICE.into();
        // Reauth is asked for only when it would help.
        carol.auth_time = None;
        assert_eq!(
            decide(&db_admin(), Denied, &[], &carol).unwrap_err().kind(),
            RefusalKind::Conflict
        );
    }

    #[test]
    fn without_approval_rule_nobody_decides() {
        let mut e = db_admin();
        e.approval = None;
        let r = decide(&e, Pending, &[], &actor("carol", &["security"])).unwrap_err();
        assert_eq!(r.kind(), RefusalKind::Forbidden);
        assert!(r.to_string().contains("no approval rule"));
    }

    // --- revoke and cancel ---------------------------------------------------------------

    fn revoke(state: ElevationState, who: &Actor) -> Result<(), ElevationRefusal> {
        check_revoker(
            &db_admin(),
            state,
            "bob",
            who,
            &set(&["sec-admin"]),
            AR,
            FRI_0830_BERLIN,
        )
    }

    #[test]
    fn approvers_and_admins_may_revoke() {
        for s in [Pending, Approved, Active] {
            assert_eq!(revoke(s, &actor("carol", &["security"])), Ok(()));
            assert_eq!(revoke(s, &actor("root-admin", &["sec-admin"])), Ok(()));
            let r = revoke(s, &actor("alice", &["oncall"])).unwrap_err();
            assert_eq!(r.kind(), RefusalKind::Forbidden);
            assert!(r.to_string().contains("\"sec-admin\""), "{r}");
        }
        for s in [Expired, Denied, Cancelled, Revoked, Lapsed, TimedOut] {
            assert_eq!(
                revoke(s, &actor("carol", &["security"]))
                    .unwrap_err()
                    .kind(),
                RefusalKind::Conflict
            );
        }
        let mut stale = actor("carol", &["security"]);
        stale.auth_time = Some(FRI_0830_BERLIN - 3601);
        assert_eq!(
            revoke(Active, &stale).unwrap_err().kind(),
            RefusalKind::ReauthRequired
        );
        // The requester cancels instead, even as an approver.
        let r = revoke(Active, &actor("bob", &["security"])).unwrap_err();
        assert_eq!(r, ElevationRefusal::RevokeOwn);
        // Admins may revoke an auto-only elevation too.
        let mut e = db_admin();
        e.approval = None;
        let admin = actor("root-admin", &["sec-admin"]);
        assert_eq!(
            check_revoker(
                &e,
                Active,
                "bob",
                &admin,
                &set(&["sec-admin"]),
                AR,
                FRI_0830_BERLIN
            ),
            Ok(())
        );
        assert!(check_revoker(
            &e,
            Active,
            "bob",
            &actor("carol", &["security"]),
            &set(&["sec-admin"]),
            AR,
            FRI_0830_BERLIN
        )
        .is_err());
    }

    #[test]
    fn only_the_requester_may_cancel() {
        let bob = actor("bob", &["eng"]);
        for s in [Pending, Approved, Active] {
            assert_eq!(check_cancel(s, "bob", &bob), Ok(()));
            assert_eq!(
                check_cancel(s, "bob", &actor("carol", &["security"])),
                Err(ElevationRefusal::NotRequester)
            );
        }
        for s in [Expired, Denied, Cancelled, Revoked, Lapsed, TimedOut] {
            let r = check_cancel(s, "bob", &bob).unwrap_err();
            assert_eq!(r.kind(), RefusalKind::Conflict);
        }
        // A stale or device session may still give up privilege.
        let mut b = bob.clone();
        b.auth_time = None;
        b.method = METHOD_DEVICE.into();
        assert_eq!(check_cancel(Active, "bob", &b), Ok(()));
    }

    // --- issuing -------------------------------------------------------------------------

    #[test]
    fn first_use_starts_the_clock() {
        let e = db_admin();
        let bob = actor("bob", &["eng"]);
        let t = times(1000, Some(2000), None);
        let w = check_issue(&e, Approved, &t, "bob", &bob, 2500).unwrap();
        assert_eq!(
            w,
            IssueWindow {
                first_use: true,
                ends_at: 2500 + 600
            }
        );
        // Once active, the end stays started_at + duration.
        let t = times(1000, Some(2000), Some(2500));
        assert_eq!(
            check_issue(&e, Active, &t, "bob", &bob, 3000).unwrap(),
            IssueWindow {
                first_use: false,
                ends_at: 3100
            }
        );
        assert_eq!(
            check_issue(&e, Active, &t, "bob", &bob, 3099)
                .unwrap()
                .ends_at,
            3100
        );
        let r = check_issue(&e, Active, &t, "bob", &bob, 3100).unwrap_err();
        assert_eq!(r.kind(), RefusalKind::Conflict);
        assert!(r.to_string().contains("expired"), "{r}");
    }

    #[test]
    fn issue_for_another_user_is_refused_without_saying_whose() {
        let e = db_admin();
        let t = times(1000, Some(2000), Some(2500));
        for s in [Approved, Active, Pending, Denied] {
            let r = check_issue(
                &e,
                s,
                &t,
                "alice",
                &actor("bob", &["eng", "security"]),
                2600,
            )
            .unwrap_err();
            assert_eq!(r, ElevationRefusal::NotYours);
            assert!(!r.to_string().contains("alice"));
            assert_eq!(r.kind(), RefusalKind::NotFound);
        }
    }

    #[test]
    fn issue_refused_unless_approved_or_active() {
        let e = db_admin();
        let bob = actor("bob", &["eng"]);
        let t = times(1000, Some(2000), None);
        for s in [
            Pending, Expired, Denied, Cancelled, Revoked, Lapsed, TimedOut,
        ] {
            let r = check_issue(&e, s, &t, "bob", &bob, 2001).unwrap_err();
            assert_eq!(
                r,
                ElevationRefusal::WrongState {
                    action: "use",
                    state: s
                }
            );
            assert!(r.to_string().contains(s.as_str()));
        }
        // Approved but past use_within: lapsed, even if the store still says approved.
        let r = check_issue(&e, Approved, &t, "bob", &bob, 2000 + H).unwrap_err();
        assert_eq!(
            r,
            ElevationRefusal::WrongState {
                action: "use",
                state: Lapsed
            }
        );
        assert!(r.to_string().contains("not used in time"), "{r}");
    }

    #[test]
    fn first_use_rechecks_recent_auth() {
        let mut e = db_admin();
        e.require_recent_auth = Some(Duration::from_secs(900));
        let mut bob = actor("bob", &["eng"]);
        let t = times(1000, Some(2000), None);
        bob.auth_time = Some(2500 - 900);
        assert!(check_issue(&e, Approved, &t, "bob", &bob, 2500).is_ok());
        bob.auth_time = Some(2500 - 901);
        let r = check_issue(&e, Approved, &t, "bob", &bob, 2500).unwrap_err();
        assert_eq!(r.kind(), RefusalKind::ReauthRequired);
        assert!(r.to_string().contains("first use"), "{r}");
        // Later certificates of an active grant do not need it again.
        let t = times(1000, Some(2000), Some(2400));
        assert!(check_issue(&e, Active, &t, "bob", &bob, 2500).is_ok());
    }

    #[test]
    fn refusal_kinds() {
        use ElevationRefusal::*;
        assert_eq!(NotYours.kind(), RefusalKind::NotFound);
        assert_eq!(RevokeOwn.kind(), RefusalKind::Forbidden);
        assert_eq!(NotRequester.kind(), RefusalKind::Forbidden);
        assert_eq!(
            ZeroDuration { max: "1m".into() }.kind(),
            RefusalKind::Refused
        );
        assert_eq!(
            WrongState {
                action: "use",
                state: Denied
            }
            .kind(),
            RefusalKind::Conflict
        );
        assert_eq!(NotYours.label(), "not-yours");
        let r = find(&[db_admin()], "root\x1b[0m").unwrap_err();
        assert_eq!(r.kind(), RefusalKind::Refused);
        assert!(
            r.to_string().contains("\\u{1b}") && r.to_string().contains("\"db-admin\""),
            "{r}"
        );
        assert!(find(&[db_admin()], "db-admin").is_ok());
    }

    // --- explain -------------------------------------------------------------------------

    fn policy() -> Policy {
        Policy {
            roles: vec![Role {
                name: "engineer".into(),
                groups: set(&["eng"]),
                principals: vec![PrincipalTemplate::Username],
                max_cert_ttl: Some(Duration::from_secs(600)),
                extensions: set(&["permit-pty"]),
            }],
            elevation_principals: [Principal::new("db-admin").unwrap()].into(),
            reserved_principals: set(&["root", "break-glass"]),
            username_source: UsernameSource::Claim("preferred_username".into()),
            groups_claim: "groups".into(),
            default_ttl: Duration::from_secs(900),
            automation_prefixes: BTreeSet::new(),
        }
    }

    fn groups(g: &[&str]) -> Vec<String> {
        g.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn explain_base_only() {
        let x = explain(
            &policy(),
            &[db_admin()],
            "bob",
            &groups(&["eng"]),
            None,
            None,
            FRI_0830_BERLIN,
        );
        assert_eq!(x.verdict(), Verdict::Granted);
        let text = x.to_string();
        assert!(text.contains("granted by role(s) \"engineer\""), "{text}");
        assert!(
            text.contains("principals: \"bob\"") && text.contains("ttl: 10m"),
            "{text}"
        );
        let x = explain(
            &policy(),
            &[],
            "dave",
            &groups(&["contractors"]),
            None,
            None,
            0,
        );
        assert_eq!(x.verdict(), Verdict::Refused);
        assert!(x
            .to_string()
            .contains("base certificate: refused: none of the groups"));
        let x = explain(&policy(), &[], "db-admin", &groups(&["eng"]), None, None, 0);
        assert_eq!(x.verdict(), Verdict::Refused);
        assert!(x.to_string().contains("equals a principal"));
    }

    #[test]
    fn explain_auto_approved() {
        let mut e = db_admin();
        e.auto_approve = Some(auto(
            Some(&["oncall"]),
            Some("INC-[0-9]+"),
            Some(office_hours()),
        ));
        e.require_recent_auth = Some(Duration::from_secs(900));
        let x = explain(
            &policy(),
            &[e.clone()],
            "alice",
            &groups(&["eng", "oncall"]),
            Some("db-admin"),
            Some("INC-1234"),
            FRI_0830_BERLIN,
        );
        assert_eq!(x.verdict(), Verdict::Granted);
        let text = x.to_string();
        assert!(text.contains("eligible: yes"), "{text}");
        assert!(
            text.contains("groups \"oncall\": yes, \"alice\" is in \"oncall\""),
            "{text}"
        );
        assert!(
            text.contains("reason_matches \"^(?:INC-[0-9]+)$\": yes"),
            "{text}"
        );
        assert!(text.contains("hours Mon-Fri 08:00-18:00 Europe/Berlin: yes, it is Fri 2024-03-29 08:30:00 in Europe/Berlin, inside"), "{text}");
        assert!(
            text.contains("result: granted at once (auto-approved) for up to 30m"),
            "{text}"
        );
        assert!(text.contains("within 15m"), "{text}");
        // The same at the weekend: pending, the hours line says no.
        let x = explain(
            &policy(),
            &[e],
            "alice",
            &groups(&["eng", "oncall"]),
            Some("db-admin"),
            Some("INC-1234"),
            ts("2024-03-30T10:00:00Z"),
        );
        assert_eq!(x.verdict(), Verdict::Pending);
        let text = x.to_string();
        assert!(text.contains("Europe/Berlin: no, it is Sat"), "{text}");
        assert!(
            text.contains("result: pending: waits for 1 approval(s)"),
            "{text}"
        );
    }

    #[test]
    fn explain_refusals() {
        let es = [db_admin()];
        // Not eligible: no engineer role.
        let mut p = policy();
        p.roles.push(Role {
            name: "auditor".into(),
            groups: set(&["audit"]),
            principals: vec![PrincipalTemplate::Username],
            max_cert_ttl: None,
            extensions: BTreeSet::new(),
        });
        let x = explain(
            &p,
            &es,
            "dave",
            &groups(&["audit"]),
            Some("db-admin"),
            Some("x"),
            0,
        );
        assert_eq!(x.verdict(), Verdict::Refused);
        let text = x.to_string();
        assert!(
            text.contains("eligible: no")
                && text.contains("result: refused: elevation \"db-admin\" is for the roles"),
            "{text}"
        );
        // Unknown elevation.
        let x = explain(&p, &es, "bob", &groups(&["eng"]), Some("nope"), None, 0);
        assert_eq!(x.verdict(), Verdict::Refused);
        assert!(x.to_string().contains("no elevation named \"nope\""));
        // A bad reason.
        let x = explain(
            &p,
            &es,
            "bob",
            &groups(&["eng"]),
            Some("db-admin"),
            Some("a\nb"),
            0,
        );
        assert_eq!(x.verdict(), Verdict::Refused);
        assert!(
            x.to_string()
                .contains("reason: refused: the reason contains U+000A"),
            "{x}"
        );
        // No base certificate, no elevation.
        let x = explain(
            &p,
            &es,
            "dave",
            &groups(&["nothing"]),
            Some("db-admin"),
            Some("x"),
            0,
        );
        assert_eq!(x.verdict(), Verdict::Refused);
        // No reason: reason_matches cannot hold, so a person must approve.
        let x = explain(
            &p,
            &es,
            "alice",
            &groups(&["eng", "oncall"]),
            Some("db-admin"),
            None,
            0,
        );
        assert_eq!(x.verdict(), Verdict::Pending);
        assert!(x.to_string().contains("no, no reason given"), "{x}");
    }

    #[test]
    fn explain_decides_as_decide_request() {
        let e = db_admin();
        for (user, g, r) in [
            ("alice", &["eng", "oncall"][..], "INC-1234"),
            ("alice", &["eng", "oncall"][..], "because"),
            ("bob", &["eng"][..], "INC-1234"),
        ] {
            let x = explain(
                &policy(),
                std::slice::from_ref(&e),
                user,
                &groups(g),
                Some("db-admin"),
                Some(r),
                FRI_0830_BERLIN,
            );
            let mut a = actor(user, g);
            a.auth_time = Some(FRI_0830_BERLIN);
            let d = decide_request(&e, &a, &reason(r), None, FRI_0830_BERLIN);
            let Some(ElevationExplanation::Known { assessment, .. }) = &x.elevation else {
                panic!("known elevation")
            };
            assert_eq!(assessment.result, d);
        }
    }

    #[test]
    fn explain_with_email_usernames() {
        let mut p = policy();
        p.username_source = UsernameSource::Email {
            allowed_domains: set(&["example.com"]),
        };
        let x = explain(&p, &[], "bob", &groups(&["eng"]), None, None, 0);
        assert_eq!(x.verdict(), Verdict::Granted, "{x}");
        let x = explain(
            &p,
            &[],
            "bob@evil.example",
            &groups(&["eng"]),
            None,
            None,
            0,
        );
        assert_eq!(x.verdict(), Verdict::Refused);
    }
}
