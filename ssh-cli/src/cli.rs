//! The command line: clap definitions and help text (exit codes and an example for each
//! command live here, so `--help` is the reference).

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// The exit code table, as a literal so `concat!` can put it into every `--help`.
macro_rules! exit_codes {
    () => {
        "Exit codes (the same for every command):
  0  ok
  1  error (network, files, the CA failed, sign-in timed out)
  2  usage (wrong command line)
  3  sign-in needed (no session, or the session expired or was revoked): run `pedm-ssh login`
  4  denied (no role, username refused, forbidden, or the identity provider said no)
  5  pending (waiting for an approval; reserved)"
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

",
        exit_codes!()
    ))]
    Status(StatusArgs),
    /// Revoke the session at the CA, delete it here, remove the key from ssh-agent.
    #[command(after_help = concat!(
        "Examples:
  pedm-ssh logout
  pedm-ssh logout --local-only     # the CA is unreachable: forget the session here only

",
        exit_codes!()
    ))]
    Logout(LogoutArgs),
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
        for sub in ["login", "cert", "status", "logout"] {
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
