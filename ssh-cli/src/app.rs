//! Dispatch from the parsed command line to the commands, with the process environment
//! gathered once so the commands themselves read no global state but the clock.

use crate::cli::{Cli, Command};
use crate::exit::Failure;
use crate::paths::Env;
use crate::{issue, login, logout, status};
use std::ffi::OsString;

/// What the commands need from the environment.
#[derive(Debug, Clone, Default)]
pub struct Ctx {
    /// `HOME` and `XDG_CONFIG_HOME`.
    pub env: Env,
    /// `SSH_AUTH_SOCK` when set and not empty: only then is the agent used.
    pub agent_socket: Option<OsString>,
}

impl Ctx {
    /// Reads the process environment.
    pub fn from_process() -> Self {
        Self {
            env: Env::from_process(),
            agent_socket: crate::agent::socket_from_env(),
        }
    }
}

/// Runs one command.
pub async fn run(cli: Cli, ctx: &Ctx) -> Result<(), Failure> {
    match cli.command {
        Command::Login(a) => login::run(ctx, &a).await,
        Command::Cert(a) => issue::run(ctx, &a).await,
        Command::Status(a) => status::run(ctx, &a).await,
        Command::Logout(a) => logout::run(ctx, &a).await,
    }
}
