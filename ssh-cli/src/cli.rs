//! The command line: clap definitions and help text (exit codes and an example for each
//! command live here, so `--help` is the reference).

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

/// The exit code table, as a literal so `concat!` can put it into every `--help`.
macro_rules! exit_codes {
    () => {
        "Exit codes (the same for every command):
  0  ok
  1  error (network, files, the CA failed, sign-in or --wait timed out)
  2  usage (wrong command line)
  3  sign-in needed (no session, or the session expired or was revoked): run `pedm-ssh login`
  4  denied (no role, username refused, forbidden, the identity provider said no, or an
     elevation was refused, denied, cancelled, revoked, timed out or lapsed)
  5  pending (an elevation request waits for approval: `pedm-ssh elevate --fetch ID --wait`)"
    };
}

/// The exit code table, for tests and docs.
pub const EXIT_CODES: &str = exit_codes!();

/// `pedm-ssh`: sign in through your identity provider and get a short-lived SSH
/// certificate.
#[derive(Debug, Parser)]
#[command(
    name = "pedm-ssh",
    version,
    about = "Sign in through your identity provider and get a short-lived SSH certificate",
    long_about = "Sign in through your company's identity provider (via the pedm-ssh CA) and get \
an OpenSSH user certificate that lives minutes and carries only the principals of your role. \
The key is ~/.ssh/pedm_ed25519 (created if missing), the certificate ~/.ssh/pedm_ed25519-cert.pub, \
the session $XDG_CONFIG_HOME/pedm-ssh/session.json (mode 0600). With SSH_AUTH_SOCK set, key and \
certificate are also added to ssh-agent for the certificate's lifetime.",
    after_help = concat!(
        "Examples:
  pedm-ssh login --ca https://ca.example.com     sign in and get a certificate
  pedm-ssh login --ca https://ca.example.com --no-browser
  pedm-ssh cert                                  renew the certificate
  pedm-ssh status                                who am I, how long is left
  pedm-ssh logout                                revoke the session
  pedm-ssh elevate db-admin --reason INC-1234 --for 15m --wait
  pedm-ssh requests                              requests waiting for your decision
  pedm-ssh approve ID                            show a request and approve it

",
        exit_codes!()
    )
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Sign in through the browser, save the session, get a certificate.
    #[command(
        long_about = "Sign in: opens the identity provider's page in your browser (or, with \
--no-browser, prints its URL alone on one line of stderr), waits up to 5 minutes for the \
redirect to http://127.0.0.1:PORT/callback, saves the session, writes PATH-cert.pub and adds \
the key to ssh-agent when SSH_AUTH_SOCK is set.",
        after_help = concat!(
            "Examples:
  pedm-ssh login --ca https://ca.example.com
  PEDM_CA=https://ca.example.com pedm-ssh login --no-browser
  pedm-ssh login --ca https://ca.example.com --key ~/.ssh/work_ed25519
  pedm-ssh login --reauth        # authenticate again (an elevation or an approval needs a recent sign-in)
  pedm-ssh login --device        # no browser here: enter the printed code on another device
  pedm-ssh login --id-token-file \"$TOKEN_FILE\"   # CI: a trusted issuer's ID token (mode 0600)

",
            exit_codes!()
        )
    )]
    Login(LoginArgs),
    /// Renew the certificate with the saved session.
    #[command(after_help = concat!(
        "Examples:
  pedm-ssh cert
  pedm-ssh cert --key ~/.ssh/work_ed25519

",
        exit_codes!()
    ))]
    Cert(CertArgs),
    /// Show identity, principals, time left and clock skew.
    #[command(after_help = concat!(
        "Examples:
  pedm-ssh status
  pedm-ssh status || pedm-ssh login --ca https://ca.example.com   # exit 3: not signed in
  pedm-ssh status --json | jq .certificate.valid_before

",
        exit_codes!()
    ))]
    Status(StatusArgs),
    /// Print a shell completion script.
    #[command(after_help = concat!(
        "Examples:
  pedm-ssh completions bash > /etc/bash_completion.d/pedm-ssh
  pedm-ssh completions zsh > \"${fpath[1]}/_pedm-ssh\"
  pedm-ssh completions fish > ~/.config/fish/completions/pedm-ssh.fish

",
        exit_codes!()
    ))]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Revoke the session at the CA, delete it here, remove the key from ssh-agent.
    #[command(after_help = concat!(
        "Examples:
  pedm-ssh logout
  pedm-ssh logout --local-only     # the CA is unreachable: forget the session here only

",
        exit_codes!()
    ))]
    Logout(LogoutArgs),
    /// Ask for a just-in-time elevation; fetch its certificate once approved.
    #[command(
        long_about = "Ask for an elevation (extra principals for a bounded time) with a reason. \
When policy approves it at once, the elevated certificate is fetched right away and written as \
PATH-elev-NAME-cert.pub beside the key (the base certificate PATH-cert.pub is renewed too and \
survives the elevation); with SSH_AUTH_SOCK set both are added to ssh-agent, each for its own \
remaining life (ssh-add only picks up PATH-cert.pub by itself, so for the elevated one pedm-ssh \
gives it a copy of the key, mode 0600, in a private 0700 directory beside the key, deleted right \
after). Otherwise the request ID is printed and pedm-ssh exits 5 (pending); with \
--wait it polls the CA until a decision, then fetches. `--fetch ID` gets the certificate of an \
approved or active elevation later. The grant's clock starts with its first certificate.",
        after_help = concat!(
            "Examples:
  pedm-ssh elevate db-admin --reason INC-1234 --for 15m
  pedm-ssh elevate db-admin --reason 'rotate replication password' --wait
  pedm-ssh elevate --fetch k3j9x0q2m1ab            # after someone approved it
  pedm-ssh elevate --fetch k3j9x0q2m1ab --wait     # wait for the decision, then fetch

",
            exit_codes!()
        )
    )]
    Elevate(ElevateArgs),
    /// List the pending elevation requests you may approve or deny.
    #[command(after_help = concat!(
        "Examples:
  pedm-ssh requests
  pedm-ssh requests --json | jq '.elevations[].id'

",
        exit_codes!()
    ))]
    Requests(RequestsArgs),
    /// Show an elevation request and approve it (asks to confirm).
    #[command(
        long_about = "Fetch the request, show the requester, the elevation and its principals, \
the reason, the duration and the requester's recent elevations, then ask `approve? [y/N]` on \
the terminal. Without a terminal on stdin, --yes is required (exit 2 otherwise, and nothing is \
sent).",
        after_help = concat!(
            "Examples:
  pedm-ssh approve k3j9x0q2m1ab
  pedm-ssh approve k3j9x0q2m1ab --comment 'matches INC-1234' --yes

",
            exit_codes!()
        )
    )]
    Approve(ApproveArgs),
    /// Deny an elevation request (a comment is required).
    #[command(after_help = concat!(
        "Examples:
  pedm-ssh deny k3j9x0q2m1ab --comment 'use the read-only role for this'

",
        exit_codes!()
    ))]
    Deny(DenyArgs),
    /// Cancel your own elevation request or grant.
    #[command(after_help = concat!(
        "Examples:
  pedm-ssh cancel k3j9x0q2m1ab

",
        exit_codes!()
    ))]
    Cancel(CancelArgs),
    /// End an elevation early (approvers and admins).
    #[command(after_help = concat!(
        "Examples:
  pedm-ssh revoke k3j9x0q2m1ab --comment 'incident closed'

",
        exit_codes!()
    ))]
    Revoke(RevokeArgs),
    /// List your elevations with their state and time left.
    #[command(after_help = concat!(
        "Examples:
  pedm-ssh elevations
  pedm-ssh elevations --json

",
        exit_codes!()
    ))]
    Elevations(ElevationsArgs),
    /// Make sure the certificate has at least a margin of life left (renew it if not).
    #[command(
        long_about = "Exit 0 at once, without any network call, when the certificate beside \
the key has more than --margin left (on the local clock corrected by the clock skew last seen \
from the CA); otherwise renew it with the saved session, as `pedm-ssh cert` does. Also \
rewrites $XDG_CONFIG_HOME/pedm-ssh/elevations.conf, which the `pedm-ssh config` snippet \
includes. Meant for ssh_config's `Match exec` (see `pedm-ssh config`).",
        after_help = concat!(
            "Examples:
  pedm-ssh ensure
  pedm-ssh ensure --quiet --margin 5m && scp build.tar host:

",
            exit_codes!()
        )
    )]
    Ensure(crate::ensure::EnsureArgs),
    /// Renew the certificate if needed, then run ssh with the given arguments.
    #[command(after_help = concat!(
        "Examples:
  pedm-ssh ssh alice@db1.example.com
  pedm-ssh ssh -p 2222 -L 5432:localhost:5432 db1.example.com

",
        exit_codes!()
    ))]
    Ssh(crate::ensure::SshArgs),
    /// Print an ssh_config snippet so plain ssh, scp, rsync and git renew on their own.
    #[command(
        long_about = "Print an ssh_config snippet: `Match exec \"/path/to/pedm-ssh ensure \
--quiet\"` (the absolute path of this pedm-ssh, so PATH does not matter), the CertificateFile \
and IdentityFile of the key, and an Include of the elevations file that `ensure` keeps \
up to date with the valid elevated certificates. Put it at the top of ~/.ssh/config.",
        after_help = concat!(
            "Examples:
  pedm-ssh config >> ~/.ssh/config    # then: ssh host, scp, rsync, git just work
  pedm-ssh config --key ~/.ssh/work_ed25519

",
            exit_codes!()
        )
    )]
    Config(crate::sshconfig::ConfigArgs),
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Base URL of the CA (https://, or http:// to 127.0.0.1 only).
    #[arg(long, env = "PEDM_CA", value_name = "URL")]
    pub ca: String,
    /// Private key to certify; created (Ed25519) if it does not exist.
    /// [default: ~/.ssh/pedm_ed25519]
    #[arg(long, value_name = "PATH")]
    pub key: Option<PathBuf>,
    /// Do not open a browser: print the sign-in URL alone on one line of stderr and wait.
    #[arg(long)]
    pub no_browser: bool,
    /// Make the identity provider authenticate you again even if it has a session
    /// (`max_age=0`), for elevations and approvals that need a recent sign-in.
    #[arg(long)]
    pub reauth: bool,
    /// Sign in without a browser on this machine (RFC 8628 device flow, if the CA offers it):
    /// prints a URL and a code to enter on any other device, then waits.
    #[arg(long, conflicts_with_all = ["reauth", "no_browser"])]
    pub device: bool,
    /// For automation: exchange the ID token in FILE (mode 0600; of an issuer the CA lists
    /// under [[trusted_issuers]]) for a session, without any browser or person.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["reauth", "no_browser", "device"])]
    pub id_token_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CertArgs {
    /// CA URL [default: the one saved at sign-in].
    #[arg(long, env = "PEDM_CA", value_name = "URL")]
    pub ca: Option<String>,
    /// Private key to certify [default: the one used at sign-in].
    #[arg(long, value_name = "PATH")]
    pub key: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print the status as one JSON document.
    #[arg(long)]
    pub json: bool,
    /// CA URL [default: the one saved at sign-in].
    #[arg(long, env = "PEDM_CA", value_name = "URL")]
    pub ca: Option<String>,
    /// Private key whose certificate to show [default: the one used at sign-in].
    #[arg(long, value_name = "PATH")]
    pub key: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct LogoutArgs {
    /// CA URL [default: the one saved at sign-in].
    #[arg(long, env = "PEDM_CA", value_name = "URL")]
    pub ca: Option<String>,
    /// Do not contact the CA; only delete the session here (it stays valid at the CA until
    /// it expires).
    #[arg(long)]
    pub local_only: bool,
}

/// `--for` and `--timeout`: a whole number and one unit of s, m, h or d.
fn parse_duration(text: &str) -> Result<Duration, String> {
    pedm_api::duration::parse(text).map_err(|e| e.to_string())
}

/// An elevation ID: letters and digits, as `pedm-ssh requests` and `elevations` show.
fn parse_id(text: &str) -> Result<String, String> {
    if !text.is_empty() && text.len() <= 64 && text.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Ok(text.to_string())
    } else {
        Err("an elevation ID is letters and digits, as `pedm-ssh requests` and `pedm-ssh elevations` show".into())
    }
}

#[derive(Debug, Args)]
pub struct ElevateArgs {
    /// The elevation to ask for, as your CA names it (e.g. db-admin).
    #[arg(
        value_name = "ELEVATION",
        required_unless_present = "fetch",
        conflicts_with = "fetch"
    )]
    pub elevation: Option<String>,
    /// Why you need it: 1-200 printable characters (shown to approvers and audited).
    #[arg(
        long,
        value_name = "TEXT",
        required_unless_present = "fetch",
        conflicts_with = "fetch"
    )]
    pub reason: Option<String>,
    /// How long the grant lasts once first used, e.g. 15m [default: the elevation's maximum].
    #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration, conflicts_with = "fetch")]
    pub duration: Option<Duration>,
    /// Wait for the decision (polling the CA), then fetch the certificate.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up (exit 1) after this long [default: the request's deadline].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, requires = "wait")]
    pub timeout: Option<Duration>,
    /// Fetch the certificate of this approved or active elevation instead of asking anew.
    #[arg(long, value_name = "ID", value_parser = parse_id)]
    pub fetch: Option<String>,
    /// Private key to certify [default: the one used at sign-in].
    #[arg(long, value_name = "PATH")]
    pub key: Option<PathBuf>,
    /// CA URL [default: the one saved at sign-in].
    #[arg(long, env = "PEDM_CA", value_name = "URL")]
    pub ca: Option<String>,
}

#[derive(Debug, Args)]
pub struct RequestsArgs {
    /// Print the CA's answer as one JSON document.
    #[arg(long)]
    pub json: bool,
    /// CA URL [default: the one saved at sign-in].
    #[arg(long, env = "PEDM_CA", value_name = "URL")]
    pub ca: Option<String>,
}

#[derive(Debug, Args)]
pub struct ElevationsArgs {
    /// Print the CA's answer as one JSON document.
    #[arg(long)]
    pub json: bool,
    /// CA URL [default: the one saved at sign-in].
    #[arg(long, env = "PEDM_CA", value_name = "URL")]
    pub ca: Option<String>,
}

#[derive(Debug, Args)]
pub struct ApproveArgs {
    /// The request ID (from `pedm-ssh requests`).
    #[arg(value_name = "ID", value_parser = parse_id)]
    pub id: String,
    /// A note for the audit log and the requester.
    #[arg(long, value_name = "TEXT")]
    pub comment: Option<String>,
    /// Do not ask; required when stdin is not a terminal.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// CA URL [default: the one saved at sign-in].
    #[arg(long, env = "PEDM_CA", value_name = "URL")]
    pub ca: Option<String>,
}

#[derive(Debug, Args)]
pub struct DenyArgs {
    /// The request ID (from `pedm-ssh requests`).
    #[arg(value_name = "ID", value_parser = parse_id)]
    pub id: String,
    /// Why not (required; the requester sees it).
    #[arg(long, value_name = "TEXT", required = true)]
    pub comment: String,
    /// CA URL [default: the one saved at sign-in].
    #[arg(long, env = "PEDM_CA", value_name = "URL")]
    pub ca: Option<String>,
}

#[derive(Debug, Args)]
pub struct CancelArgs {
    /// The request ID (from `pedm-ssh elevations`).
    #[arg(value_name = "ID", value_parser = parse_id)]
    pub id: String,
    /// CA URL [default: the one saved at sign-in].
    #[arg(long, env = "PEDM_CA", value_name = "URL")]
    pub ca: Option<String>,
}

#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// The elevation ID.
    #[arg(value_name = "ID", value_parser = parse_id)]
    pub id: String,
    /// Why it ends early (for the audit log and the requester).
    #[arg(long, value_name = "TEXT")]
    pub comment: Option<String>,
    /// CA URL [default: the one saved at sign-in].
    #[arg(long, env = "PEDM_CA", value_name = "URL")]
    pub ca: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn help_documents_exit_codes_and_examples() {
        let mut cmd = Cli::command();
        let main_help = cmd.render_long_help().to_string();
        assert!(main_help.contains(EXIT_CODES), "{main_help}");
        // Every subcommand, so a new one cannot ship without an example and the exit codes.
        let subs: Vec<String> = Cli::command()
            .get_subcommands()
            .map(|c| c.get_name().to_string())
            .filter(|n| n != "help")
            .collect();
        assert!(subs.len() >= 15, "{subs:?}");
        for sub in &subs {
            let sub = sub.as_str();
            let mut c = Cli::command();
            let s = c
                .find_subcommand_mut(sub)
                .unwrap()
                .render_long_help()
                .to_string();
            assert!(s.contains(EXIT_CODES), "{sub}: {s}");
            assert!(s.contains(&format!("pedm-ssh {sub}")), "{sub}: {s}");
        }
    }
}
