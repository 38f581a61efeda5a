//! `pedm-ssh login --device`: sign in without a browser on this machine, by the OAuth 2.0
//! device authorization flow (RFC 8628) **through the CA**. This process never talks to the
//! identity provider: it asks the CA to start (`/v1/auth/device/start`), shows the user the
//! verification URL and user code, and polls the CA (`/v1/auth/device/poll`) with the poll
//! token only the CA and this process know. The IdP's device code never leaves the CA.
//!
//! Pacing: wait `interval` seconds (5 when the CA gives none) before each poll; on
//! `slow_down` wait at least 5 s longer from then on (RFC 8628 §3.5). The hidden test knob
//! `PEDM_SSH_POLL_MS` (see [`crate::app::POLL_ENV`]) replaces the wait.
//!
//! Endings: `expired_token` (the CA's `login-refused`) exits 3, `access_denied` (the CA's
//! `forbidden`) exits 4. A device-flow session never counts as a recent sign-in: elevations
//! that need one still require `pedm-ssh login --reauth` in a browser.

use crate::app::Ctx;
use crate::cli::LoginArgs;
use crate::escape::escape;
use crate::exit::{self, Exit, Failure};
use crate::{keys, paths, timefmt};
use pedm_api::{Client, ClientError, DevicePollRequest, DevicePollResponse, ProblemType};
use std::time::{Duration, Instant};

/// RFC 8628 §3.2: the interval when none is given.
pub const DEFAULT_INTERVAL_SECS: u64 = 5;

/// RFC 8628 §3.5: how much a `slow_down` adds.
pub const SLOW_DOWN_SECS: u64 = 5;

/// Never wait longer than this between polls, whatever the CA says.
const MAX_INTERVAL_SECS: u64 = 60;

/// The interval to start with, from the CA's `interval` (0 means none was given).
pub fn initial_interval(from_ca: u64) -> u64 {
    if from_ca == 0 {
        DEFAULT_INTERVAL_SECS
    } else {
        from_ca.min(MAX_INTERVAL_SECS)
    }
}

/// The interval after one poll's answer: unchanged while `pending`; after `slow_down` the
/// CA's new interval, but at least 5 s more than before.
pub fn next_interval(current: u64, answer: &DevicePollResponse) -> u64 {
    match answer {
        DevicePollResponse::SlowDown { interval } => (*interval)
            .max(current.saturating_add(SLOW_DOWN_SECS))
            .min(MAX_INTERVAL_SECS),
        DevicePollResponse::Pending | DevicePollResponse::Complete(_) => current,
    }
}

/// How long to sleep before the next poll: the interval, or the test override.
pub fn wait_for(interval_secs: u64, override_wait: Option<Duration>) -> Duration {
    override_wait.unwrap_or(Duration::from_secs(interval_secs))
}

fn poll_failure(err: &ClientError, ca_url: &str) -> Failure {
    match err {
        ClientError::Problem(p) if p.kind() == Some(ProblemType::LoginRefused) => Failure::new(
            Exit::SignInRequired,
            format!("device sign-in failed: {}", escape(&p.detail)),
            "start again with `pedm-ssh login --device` and enter the new code in time",
        ),
        ClientError::Problem(p) if p.kind() == Some(ProblemType::Forbidden) => Failure::new(
            Exit::Denied,
            format!("device sign-in refused: {}", escape(&p.detail)),
            "the sign-in was not approved; ask your identity provider's administrator if this is unexpected",
        ),
        other => exit::from_client(other, ca_url),
    }
}

/// `pedm-ssh login --device`.
pub async fn run(ctx: &Ctx, args: &LoginArgs) -> Result<(), Failure> {
    let ca_url = args.ca.trim().to_string();
    // The URL first: a refused CA must leave nothing behind.
    let client = Client::new(&ca_url).map_err(|e| exit::from_client(&e, &ca_url))?;
    let session_path = paths::session_file(&ctx.env)?;
    let key_path = match &args.key {
        Some(k) => paths::absolute_key(k)?,
        None => paths::default_key(&ctx.env)?,
    };
    let start = match client.device_start().await {
        Ok(s) => s,
        Err(ClientError::Problem(p)) if p.kind() == Some(ProblemType::NotFound) => {
            return Err(Failure::new(
                Exit::Error,
                format!(
                    "the CA at {} does not offer device sign-in",
                    escape(&ca_url)
                ),
                "sign in with the browser (`pedm-ssh login`), or ask the CA operator to set [oidc] device_flow = true",
            ))
        }
        Err(e) => return Err(exit::from_client(&e, &ca_url)),
    };
    let key = keys::ensure_key(&key_path)?;
    if key.created {
        eprintln!("created a new key {}", key.path.display());
    }
    eprintln!(
        "to sign in, open this URL on any device and enter the code (until {}):",
        timefmt::utc(start.expires_at)
    );
    eprintln!("{}", escape(&start.verification_uri));
    eprintln!("code: {}", escape(&start.user_code));
    if let Some(complete) = &start.verification_uri_complete {
        eprintln!("or open, with the code filled in: {}", escape(complete));
    }
    eprintln!("only enter a code you asked for yourself; pedm-ssh is waiting…");

    let mut interval = initial_interval(start.interval);
    let left = start.expires_at.saturating_sub(timefmt::now_unix()).max(0);
    // A local end too, in case the CA's clock or answers never get there.
    let deadline = Instant::now() + Duration::from_secs(left as u64 + 30);
    let req = DevicePollRequest {
        poll_token: start.poll_token.clone(),
    };
    let sess = loop {
        if Instant::now() >= deadline {
            return Err(Failure::new(
                Exit::SignInRequired,
                "device sign-in failed: the device code expired before the sign-in finished",
                "start again with `pedm-ssh login --device` and enter the new code in time",
            ));
        }
        tokio::time::sleep(wait_for(interval, ctx.poll_override)).await;
        let answer = client
            .device_poll(&req)
            .await
            .map_err(|e| poll_failure(&e, &ca_url))?;
        interval = next_interval(interval, &answer);
        match answer {
            DevicePollResponse::Complete(s) => break s,
            DevicePollResponse::SlowDown { .. } => {
                eprintln!("the CA asks to poll less often: every {interval} s now");
            }
            DevicePollResponse::Pending => {}
        }
    };
    crate::login::complete(ctx, &client, &ca_url, &session_path, &key, sess).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_interval_is_five_seconds() {
        assert_eq!(initial_interval(0), 5);
        assert_eq!(initial_interval(3), 3);
        assert_eq!(initial_interval(3600), MAX_INTERVAL_SECS);
    }

    #[test]
    fn pending_keeps_the_interval() {
        assert_eq!(next_interval(5, &DevicePollResponse::Pending), 5);
        assert_eq!(next_interval(7, &DevicePollResponse::Pending), 7);
    }

    #[test]
    fn slow_down_adds_at_least_five_seconds() {
        // The CA's new interval wins when it is larger …
        assert_eq!(
            next_interval(5, &DevicePollResponse::SlowDown { interval: 12 }),
            12
        );
        // … but never less than five more than now, even if the CA says less.
        assert_eq!(
            next_interval(5, &DevicePollResponse::SlowDown { interval: 5 }),
            10
        );
        assert_eq!(
            next_interval(10, &DevicePollResponse::SlowDown { interval: 0 }),
            15
        );
        // Repeated slow_downs keep adding, up to the cap.
        let mut i = 5;
        for _ in 0..100 {
            i = next_interval(i, &DevicePollResponse::SlowDown { interval: 0 });
        }
        assert_eq!(i, MAX_INTERVAL_SECS);
    }

    #[test]
    fn wait_is_the_interval_unless_overridden() {
        assert_eq!(wait_for(5, None), Duration::from_secs(5));
        assert_eq!(
            wait_for(5, Some(Duration::from_millis(50))),
            Duration::from_millis(50)
        );
    }

    #[test]
    fn refusals_map_to_exit_codes() {
        let p = |k: ProblemType, d: &str| ClientError::Problem(pedm_api::Problem::new(k, d));
        let f = poll_failure(
            &p(ProblemType::LoginRefused, "the device code expired"),
            "https://ca",
        );
        assert_eq!(f.exit, Exit::SignInRequired);
        assert!(f.message.contains("expired"), "{}", f.message);
        let f = poll_failure(
            &p(ProblemType::Forbidden, "denied at the identity provider"),
            "https://ca",
        );
        assert_eq!(f.exit, Exit::Denied);
        let f = poll_failure(&p(ProblemType::IdpUnavailable, "down"), "https://ca");
        assert_eq!(f.exit, Exit::Error);
    }
}
