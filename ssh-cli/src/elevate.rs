//! `pedm-ssh elevate`: ask for an elevation, wait for it if asked to, and fetch its
//! certificate.
//!
//! The elevated certificate is a second certificate on the same key, written beside it as
//! `PATH-elev-NAME-cert.pub` (NAME from the CA's answer, refused unless it is
//! `[a-z0-9_-]{1,32}`), while `PATH-cert.pub` is renewed from the same answer. Everything the
//! CA sends is checked before any file is written: both certificates must be user
//! certificates for our key, and the elevated one must be for the elevation we asked about.
//! With an agent, the elevated certificate is added first and the base one second (see
//! [`agent`](crate::agent) for why), each for its own remaining life.

use crate::app::Ctx;
use crate::certfile::{self, CertInfo};
use crate::cli::ElevateArgs;
use crate::elevview::{approvers, duration_text, ended_text, progress_text, time_left};
use crate::escape::{escape, escape_list};
use crate::exit::{Exit, Failure};
use crate::issue::{self, AgentResult};
use crate::keys::{self, UserKey};
use crate::signedin::SignedIn;
use crate::spinner::Progress;
use crate::{agent, paths, reason, timefmt};
use pedm_api::{
    CertRequest, CertResponse, ClientError, ElevationRequest, ElevationState, ElevationView,
};
use std::time::Duration;

/// How far past the request's deadline `--wait` keeps polling by default, so that the CA's
/// own verdict (`timed_out`, exit 4) is what the user sees rather than our clock's.
const DEADLINE_GRACE: Duration = Duration::from_secs(5);

/// How long `--wait` waits when the CA gave no deadline and `--timeout` was not given.
const DEFAULT_WAIT: Duration = Duration::from_secs(3600);

/// How often the terminal spinner is redrawn between polls.
const SPINNER_TICK: Duration = Duration::from_millis(125);

/// `pedm-ssh elevate`. Returns 0 when a certificate was fetched, 5 when the request is left
/// pending.
pub async fn run(ctx: &Ctx, args: &ElevateArgs) -> Result<Exit, Failure> {
    // Local checks first: a refused reason is never sent.
    if let Some(r) = &args.reason {
        reason::require_valid(r, "--reason")?;
    }
    let s = SignedIn::load(ctx, args.ca.as_deref())?;
    let key_path = match &args.key {
        Some(k) => paths::absolute_key(k)?,
        None => s.saved.key_path.clone(),
    };
    let key = keys::ensure_key(&key_path)?;
    if key.created {
        eprintln!("created a new key {}", key.path.display());
    }
    // `skew`: the CA's clock minus ours, known for a request made just now (its
    // `created_at` is the CA's "now"); 0 otherwise.
    let (view, skew) =
        match (&args.fetch, &args.elevation, &args.reason) {
            (Some(id), _, _) => {
                let v = s
                    .client
                    .elevation(s.token(), id)
                    .await
                    .map_err(|e| s.fail(&e))?;
                (v, 0)
            }
            (None, Some(elevation), Some(reason)) => {
                let req = ElevationRequest {
                    elevation: elevation.clone(),
                    reason: reason.clone(),
                    duration_secs: args.duration.map(|d| d.as_secs()),
                };
                let v = s
                    .client
                    .request_elevation(s.token(), &req)
                    .await
                    .map_err(|e| s.fail(&e))?;
                let skew = v.created_at.saturating_sub(timefmt::now_unix());
                println!(
                    "requested {} for {} (request {})",
                    escape(&v.elevation),
                    duration_text(v.duration_secs),
                    escape(&v.id)
                );
                (v, skew)
            }
            // clap requires ELEVATION and --reason unless --fetch is given.
            _ => return Err(Failure::plain(
                Exit::Usage,
                "give ELEVATION and --reason TEXT, or --fetch ID (see `pedm-ssh elevate --help`)",
            )),
        };
    let view = match view.state {
        ElevationState::Approved | ElevationState::Active => view,
        ElevationState::Pending if args.wait => {
            match wait(ctx, &s, view, skew, args.timeout).await? {
                Waited::Decided(v) => v,
                Waited::Interrupted(v) => {
                    print_pending(
                        &v,
                        timefmt::now_unix().saturating_add(skew),
                        "stopped waiting",
                    );
                    return Ok(Exit::Pending);
                }
            }
        }
        ElevationState::Pending => {
            print_pending(&view, timefmt::now_unix().saturating_add(skew), "");
            return Ok(Exit::Pending);
        }
        _ => return Err(ended(&view)),
    };
    println!("approved by {}", approvers(&view));
    fetch(ctx, &s, &key, &view).await?;
    Ok(Exit::Ok)
}

/// The failure (exit 4) for a request that ended without a usable grant.
fn ended(view: &ElevationView) -> Failure {
    Failure::new(
        Exit::Denied,
        ended_text(view),
        "ask again with `pedm-ssh elevate ELEVATION --reason TEXT` if you still need it",
    )
}

/// What to do with a request that waits for an approval.
fn print_pending(view: &ElevationView, now: i64, prefix: &str) {
    let id = escape(&view.id);
    if !prefix.is_empty() {
        println!("{prefix}");
    }
    println!("request {id} is {}", progress_text(view, now));
    println!("id: {id}");
    println!(
        "next: an approver runs `pedm-ssh approve {id}`; then run `pedm-ssh elevate --fetch {id}` (add --wait to wait for the decision), or `pedm-ssh cancel {id}`"
    );
}

/// How a wait ended without a failure.
enum Waited {
    /// Approved (or already active): fetch.
    Decided(ElevationView),
    /// Ctrl-C: still pending.
    Interrupted(ElevationView),
}

/// Whether a client error is worth another poll (the CA or the network hiccuped) rather
/// than the end of the wait.
fn is_transient(e: &ClientError) -> bool {
    match e {
        ClientError::Transport { .. } => true,
        ClientError::Status { status } => *status >= 500,
        _ => false,
    }
}

/// How long to wait: `--timeout`, else until the request's deadline (by the CA's clock,
/// estimated as ours plus `skew`) and a little grace, else an hour.
fn wait_budget(view: &ElevationView, skew: i64, now: i64, timeout: Option<Duration>) -> Duration {
    if let Some(t) = timeout {
        return t;
    }
    match view.deadline {
        Some(d) => {
            let left = d.saturating_sub(now.saturating_add(skew));
            Duration::from_secs(u64::try_from(left).unwrap_or(0)) + DEADLINE_GRACE
        }
        None => DEFAULT_WAIT,
    }
}

/// Polls the request every [`Ctx::poll_interval`] until it leaves `pending`, showing the
/// state on stderr.
async fn wait(
    ctx: &Ctx,
    s: &SignedIn,
    mut view: ElevationView,
    skew: i64,
    timeout: Option<Duration>,
) -> Result<Waited, Failure> {
    let budget = wait_budget(&view, skew, timefmt::now_unix(), timeout);
    let end = tokio::time::Instant::now() + budget;
    let interval = ctx.poll_interval();
    let mut progress = Progress::new(ctx.stderr_is_terminal);
    let id = escape(&view.id);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut unreachable = false;
    loop {
        let now_ca = timefmt::now_unix().saturating_add(skew);
        match view.state {
            ElevationState::Pending => {}
            ElevationState::Approved | ElevationState::Active => {
                progress.clear();
                return Ok(Waited::Decided(view));
            }
            _ => {
                progress.clear();
                return Err(ended(&view));
            }
        }
        let plain = format!(
            "waiting for approval of {id}: pending, {} approval{} needed",
            view.approvals_needed,
            if view.approvals_needed == 1 { "" } else { "s" }
        );
        let spin = format!(
            "waiting for approval of {id}: {}",
            progress_text(&view, now_ca)
        );
        progress.update(&plain, &spin);
        let now = tokio::time::Instant::now();
        if now >= end {
            progress.clear();
            return Err(Failure::new(
                Exit::Error,
                format!(
                    "gave up waiting after {}: request {id} is still pending",
                    timefmt::duration(i64::try_from(budget.as_secs()).unwrap_or(i64::MAX))
                ),
                format!("wait again with `pedm-ssh elevate --fetch {id} --wait`, or withdraw it with `pedm-ssh cancel {id}`"),
            ));
        }
        let next_poll = (now + interval).min(end);
        loop {
            let step = if progress.is_terminal() {
                (tokio::time::Instant::now() + SPINNER_TICK).min(next_poll)
            } else {
                next_poll
            };
            tokio::select! {
                _ = tokio::time::sleep_until(step) => {}
                _ = &mut ctrl_c => {
                    progress.clear();
                    return Ok(Waited::Interrupted(view));
                }
            }
            if tokio::time::Instant::now() >= next_poll {
                break;
            }
            let now_ca = timefmt::now_unix().saturating_add(skew);
            progress.tick(&format!(
                "waiting for approval of {id}: {}",
                progress_text(&view, now_ca)
            ));
        }
        match s.client.elevation(s.token(), &view.id).await {
            Ok(v) => {
                if unreachable {
                    progress.note("the CA answers again");
                    unreachable = false;
                }
                view = v;
            }
            Err(e) if is_transient(&e) => {
                if !unreachable {
                    progress.note(&format!(
                        "warning: {}; still waiting",
                        escape(&e.to_string())
                    ));
                    unreachable = true;
                }
            }
            Err(e) => {
                progress.clear();
                return Err(s.fail(&e));
            }
        }
    }
}

/// A fetched elevation, written to disk.
struct Fetched {
    elevated: CertInfo,
    base: CertInfo,
    ca_time: i64,
}

/// Checks the CA's answer for `view` and `key` and writes both certificates. Nothing is
/// written unless everything checks out.
fn write_certificates(
    resp: &CertResponse,
    key: &UserKey,
    view_id: &str,
) -> Result<Fetched, Failure> {
    let base = certfile::check_issued(&resp.base.certificate, &key.public, &key.path)?;
    let Some(elev) = &resp.elevation else {
        return Err(Failure::plain(
            Exit::Error,
            format!(
                "the CA sent no elevated certificate for {}; nothing was written; tell the CA operator",
                escape(view_id)
            ),
        ));
    };
    if elev.elevation_id != view_id {
        return Err(Failure::plain(
            Exit::Error,
            format!(
                "the CA sent the certificate of elevation {} instead of {}; nothing was written; tell the CA operator",
                escape(&elev.elevation_id),
                escape(view_id)
            ),
        ));
    }
    let elev_path = paths::elevation_certificate_of(&key.path, &elev.elevation)
        .map_err(|e| Failure::plain(Exit::Error, e.to_string()))?;
    let elev_cert = certfile::check_issued(&elev.cert.certificate, &key.public, &key.path)?;
    let elevated = certfile::save_at(elev_path, &elev_cert)?;
    let base = certfile::save(&key.path, &base)?;
    Ok(Fetched {
        elevated,
        base,
        ca_time: resp.ca_time,
    })
}

/// Adds the elevated certificate to the agent for its remaining life.
async fn add_elevated(
    key: &UserKey,
    cert_line: &str,
    cert: &CertInfo,
    ca_time: i64,
) -> AgentResult {
    let Some(secs) = agent::lifetime(cert.valid_before, ca_time) else {
        eprintln!("warning: the elevated certificate has no time left; not adding it to ssh-agent");
        return AgentResult::Failed;
    };
    match agent::add_with_certificate(&key.path, cert_line, secs).await {
        Ok(()) => AgentResult::Added(secs),
        Err(e) => {
            eprintln!(
                "warning: could not add the elevated certificate to ssh-agent ({}); use `ssh -i {} -o CertificateFile={}` instead",
                escape(&e.to_string()),
                key.path.display(),
                cert.path.display()
            );
            AgentResult::Failed
        }
    }
}

fn agent_text(a: &AgentResult) -> String {
    match a {
        AgentResult::Added(secs) => format!(
            "added for {}",
            timefmt::duration(i64::try_from(*secs).unwrap_or(i64::MAX))
        ),
        AgentResult::NoAgent => "not used (SSH_AUTH_SOCK is not set)".to_string(),
        AgentResult::Failed => "not added (see the warning above)".to_string(),
    }
}

/// Gets the certificates of an approved or active elevation, writes them and loads them
/// into the agent.
async fn fetch(
    ctx: &Ctx,
    s: &SignedIn,
    key: &UserKey,
    view: &ElevationView,
) -> Result<(), Failure> {
    let req = CertRequest {
        public_key: issue::public_key_line(&key.public)?,
        elevation_id: Some(view.id.clone()),
    };
    let resp = s.client.certs(s.token(), &req).await.map_err(|e| {
        let mut f = s.fail(&e);
        // A stale sign-in at first use: the grant waits; say how to pick it up afterwards.
        if f.exit == Exit::SignInRequired {
            let then = format!(
                "then get the certificate with `pedm-ssh elevate --fetch {}`",
                escape(&view.id)
            );
            f.next = Some(match f.next.take() {
                Some(n) => format!("{n}; {then}"),
                None => then,
            });
        }
        f
    })?;
    let f = write_certificates(&resp, key, &view.id)?;
    let skew = f.ca_time.saturating_sub(timefmt::now_unix());
    if let Some(w) = timefmt::skew_warning(skew) {
        eprintln!("warning: {w}");
    }
    let (elev_agent, base_agent) = match &ctx.agent_socket {
        None => (AgentResult::NoAgent, AgentResult::NoAgent),
        Some(_) => {
            // The elevated one first: the plain key then keeps the base certificate's life.
            let line = resp
                .elevation
                .as_ref()
                .map(|e| e.cert.certificate.as_str())
                .unwrap_or_default();
            let e = add_elevated(key, line, &f.elevated, f.ca_time).await;
            let b = issue::add_to_agent(key, &f.base, f.ca_time).await;
            (e, b)
        }
    };
    let e = &f.elevated;
    println!("elevated certificate: {}", e.path.display());
    println!("principals: {}", escape_list(&e.principals));
    println!(
        "valid until: {} ({})",
        timefmt::utc(e.valid_before),
        timefmt::relative(e.valid_before, f.ca_time)
    );
    println!("serial: {} (key id {})", e.serial, escape(&e.key_id));
    println!("ssh-agent: {}", agent_text(&elev_agent));
    println!(
        "base certificate: {} (renewed; {})",
        f.base.path.display(),
        timefmt::relative(f.base.valid_before, f.ca_time)
    );
    println!("ssh-agent (base): {}", agent_text(&base_agent));
    println!(
        "use it: ssh USER@HOST through ssh-agent, or ssh -i {} -o CertificateFile={} USER@HOST",
        key.path.display(),
        e.path.display()
    );
    if view.state == ElevationState::Approved {
        println!(
            "grant: {}, started with this first certificate",
            duration_text(view.duration_secs)
        );
    } else {
        println!("grant: {}", time_left(view, f.ca_time));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elevview::test_support::view;

    #[test]
    fn wait_budget_defaults_to_the_deadline() {
        let v = view(ElevationState::Pending); // deadline 4600
        assert_eq!(wait_budget(&v, 0, 4000, None), Duration::from_secs(605));
        // The CA's clock is 100 s ahead of ours: less time is left.
        assert_eq!(wait_budget(&v, 100, 4000, None), Duration::from_secs(505));
        // Past the deadline: only the grace.
        assert_eq!(wait_budget(&v, 0, 9000, None), DEADLINE_GRACE);
        assert_eq!(
            wait_budget(&v, 0, 4000, Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
        let mut nd = v.clone();
        nd.deadline = None;
        assert_eq!(wait_budget(&nd, 0, 4000, None), DEFAULT_WAIT);
    }

    #[test]
    fn transient_errors() {
        assert!(is_transient(&ClientError::Transport {
            url: "x".into(),
            message: "refused".into()
        }));
        assert!(is_transient(&ClientError::Status { status: 502 }));
        assert!(!is_transient(&ClientError::Status { status: 404 }));
        let p = pedm_api::Problem::new(pedm_api::ProblemType::SignInRequired, "x");
        assert!(!is_transient(&ClientError::Problem(p)));
    }

    #[test]
    fn ended_requests_exit_4() {
        for st in [
            ElevationState::Denied,
            ElevationState::Cancelled,
            ElevationState::Revoked,
            ElevationState::TimedOut,
            ElevationState::Lapsed,
            ElevationState::Expired,
        ] {
            assert_eq!(ended(&view(st)).exit, Exit::Denied, "{st:?}");
        }
    }
}
