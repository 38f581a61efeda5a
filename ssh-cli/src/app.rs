//! Dispatch from the parsed command line to the commands, with the process environment
//! gathered once so the commands themselves read no global state but the clock.

use crate::cli::{Cli, Command};
use crate::exit::{Exit, Failure};
use crate::paths::Env;
use crate::{decide, elevate, issue, login, logout, requests, status};
use std::ffi::OsString;
use std::io::IsTerminal;
use std::time::Duration;

/// How often `elevate --wait` asks the CA about a pending request.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(2);

/// Hidden knob for tests: the poll interval in milliseconds (at least 10).
pub const POLL_ENV: &str = "PEDM_SSH_POLL_MS";

/// What the commands need from the environment.
#[derive(Debug, Clone, Default)]
pub struct Ctx {
    /// `HOME` and `XDG_CONFIG_HOME`.
    pub env: Env,
    /// `SSH_AUTH_SOCK` when set and not empty: only then is the agent used.
    pub agent_socket: Option<OsString>,
    /// Whether stdin is a terminal (someone can answer a question).
    pub stdin_is_terminal: bool,
    /// Whether stderr is a terminal (a spinner may redraw its line).
    pub stderr_is_terminal: bool,
    /// [`POLL_ENV`] when set and valid; otherwise [`DEFAULT_POLL_INTERVAL`].
    pub poll_override: Option<Duration>,
}

impl Ctx {
    /// Reads the process environment.
    pub fn from_process() -> Self {
        Self {
            env: Env::from_process(),
            agent_socket: crate::agent::socket_from_env(),
            stdin_is_terminal: std::io::stdin().is_terminal(),
            stderr_is_terminal: std::io::stderr().is_terminal(),
            poll_override: std::env::var(POLL_ENV).ok().and_then(|v| parse_poll_ms(&v)),
        }
    }

    /// The interval between two polls of a pending request.
    pub fn poll_interval(&self) -> Duration {
        self.poll_override.unwrap_or(DEFAULT_POLL_INTERVAL)
    }
}

/// `PEDM_SSH_POLL_MS`: whole milliseconds, at least 10 (so a typo cannot hammer the CA).
fn parse_poll_ms(text: &str) -> Option<Duration> {
    text.trim()
        .parse::<u64>()
        .ok()
        .filter(|ms| *ms >= 10)
        .map(Duration::from_millis)
}

/// Runs one command; `Ok` carries the exit code of a command that did its job (0, or 5
/// for a request left pending).
pub async fn run(cli: Cli, ctx: &Ctx) -> Result<Exit, Failure> {
    let ok = |r: Result<(), Failure>| r.map(|()| Exit::Ok);
    match cli.command {
        Command::Login(a) => ok(login::run(ctx, &a).await),
        Command::Cert(a) => ok(issue::run(ctx, &a).await),
        Command::Status(a) => ok(status::run(ctx, &a).await),
        Command::Completions { shell } => {
            let mut cmd = <crate::cli::Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "pedm-ssh", &mut std::io::stdout());
            Ok(Exit::Ok)
        }
        Command::Logout(a) => ok(logout::run(ctx, &a).await),
        Command::Elevate(a) => elevate::run(ctx, &a).await,
        Command::Requests(a) => ok(requests::run_requests(ctx, &a).await),
        Command::Elevations(a) => ok(requests::run_elevations(ctx, &a).await),
        Command::Approve(a) => ok(decide::approve(ctx, &a).await),
        Command::Deny(a) => ok(decide::deny(ctx, &a).await),
        Command::Cancel(a) => ok(decide::cancel(ctx, &a).await),
        Command::Revoke(a) => ok(decide::revoke(ctx, &a).await),
        Command::Ensure(a) => ok(crate::ensure::run(ctx, &a).await),
        Command::Ssh(a) => ok(crate::ensure::run_ssh(ctx, &a).await),
        Command::Config(a) => ok(crate::sshconfig::run(ctx, &a)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_interval_override() {
        assert_eq!(parse_poll_ms("50"), Some(Duration::from_millis(50)));
        assert_eq!(parse_poll_ms("5"), None);
        assert_eq!(parse_poll_ms("x"), None);
        assert_eq!(parse_poll_ms("-1"), None);
        assert_eq!(Ctx::default().poll_interval(), DEFAULT_POLL_INTERVAL);
        let ctx = Ctx {
            poll_override: Some(Duration::from_millis(20)),
            ..Ctx::default()
        };
        assert_eq!(ctx.poll_interval(), Duration::from_millis(20));
    }
}
