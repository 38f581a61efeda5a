//! `pedm-host-config`: thin command-line edge; the work happens in the library modules.

use clap::{Parser, Subcommand};
use pedm_host_config::ca::HttpCa;
use pedm_host_config::enroll::{self, EnrollOptions};
use pedm_host_config::install::{self, InstallOptions};
use pedm_host_config::refresh::{self, RefreshOptions};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "pedm-host-config",
    version,
    about = "Installs and refreshes pedm-ssh CA trust in a stock OpenSSH sshd"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Fetch and verify the trust bundle, then install the CA keys, principals files, an empty
    /// KRL (if none), the sshd drop-in (checked with `sshd -t` / `sshd -T` before use) and the
    /// systemd timer that runs `refresh`.
    Install(InstallArgs),
    /// Fetch the trust bundle and the signed KRL, verify both (pinned root; the bundle's
    /// active key; no rollback; not expired) and install them with the principals files.
    /// What the timer runs; a byte-identical bundle and KRL change nothing. Exits non-zero,
    /// keeping every file, if the CA is unreachable or serves anything refused.
    Refresh(RefreshArgs),
    /// Register this host's sshd host key with the CA using a one-time join token, so its
    /// signed check-ins count toward rotation coverage. Run after install.
    Enroll(EnrollArgs),
}

#[derive(Debug, clap::Args)]
struct InstallArgs {
    /// Base URL of the CA (https://, or http:// to loopback only).
    #[arg(long, value_name = "URL")]
    ca: String,
    /// Fingerprint of the trust root that must have signed the bundle (`SHA256:…`, as printed
    /// by `ssh-keygen -lf`).
    #[arg(long, value_name = "SHA256:…", value_parser = parse_pin)]
    trust_root: String,
    /// Host configuration (account -> principals mapping).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// sshd configuration directory [default: /etc/ssh].
    #[arg(long, value_name = "DIR")]
    etc_dir: Option<PathBuf>,
    /// Main sshd configuration file [default: ETC/sshd_config].
    #[arg(long, value_name = "FILE")]
    sshd_config: Option<PathBuf>,
    /// sshd binary used for the checks [default: /usr/sbin/sshd, else sshd on PATH].
    #[arg(long, value_name = "PATH")]
    sshd: Option<PathBuf>,
    /// Directory for the refresh service and timer units [default: /etc/systemd/system when
    /// ETC is /etc/ssh; with another --etc-dir none are written unless this is given].
    #[arg(long, value_name = "DIR")]
    systemd_dir: Option<PathBuf>,
    /// Print a unified diff of what would change and write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Do not reload sshd after changing the drop-in, and do not enable the timer.
    #[arg(long)]
    no_reload: bool,
}

#[derive(Debug, clap::Args)]
struct RefreshArgs {
    /// Host configuration [default: the one install used].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// sshd configuration directory [default: /etc/ssh].
    #[arg(long, value_name = "DIR")]
    etc_dir: Option<PathBuf>,
    /// CA URL for this run only [default: the one install saved].
    #[arg(long, value_name = "URL")]
    ca: Option<String>,
    /// Main sshd configuration file [default: the one install used, else ETC/sshd_config].
    #[arg(long, value_name = "FILE")]
    sshd_config: Option<PathBuf>,
    /// sshd binary used for the checks [default: /usr/sbin/sshd, else sshd on PATH].
    #[arg(long, value_name = "PATH")]
    sshd: Option<PathBuf>,
    /// Do not reload sshd even if the drop-in changed.
    #[arg(long)]
    no_reload: bool,
}

#[derive(Debug, clap::Args)]
struct EnrollArgs {
    /// One-time join token from `pedm-ca hosts token` (or set PEDM_JOIN_TOKEN, which keeps
    /// it out of the process list).
    #[arg(
        long,
        value_name = "T",
        env = "PEDM_JOIN_TOKEN",
        hide_env_values = true
    )]
    token: String,
    /// CA URL [default: the one install saved].
    #[arg(long, value_name = "URL")]
    ca: Option<String>,
    /// sshd configuration directory [default: /etc/ssh].
    #[arg(long, value_name = "DIR")]
    etc_dir: Option<PathBuf>,
    /// The sshd host public key (Ed25519); its private key, the same path without .pub,
    /// signs the check-ins [default: ETC/ssh_host_ed25519_key.pub].
    #[arg(long, value_name = "PATH")]
    host_key: Option<PathBuf>,
    /// The name this host has in coverage reports [default: the system host name].
    #[arg(long, value_name = "NAME")]
    host_name: Option<String>,
}

/// Accepts exactly the `SHA256:` + 43 unpadded base64 characters form of a fingerprint, so a
/// typo is a usage error rather than an "other signer" refusal.
fn parse_pin(s: &str) -> Result<String, String> {
    let ok = s.strip_prefix("SHA256:").is_some_and(|b| {
        b.len() == 43
            && b.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/')
    });
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not a SHA256:… key fingerprint (see `ssh-keygen -lf ROOT.pub`)"
        ))
    }
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    match cli.command {
        Command::Install(a) => {
            let opts = InstallOptions {
                ca_url: a.ca,
                trust_root: a.trust_root,
                host_config: a.config,
                etc_dir: a.etc_dir,
                sshd_config: a.sshd_config,
                sshd: a.sshd,
                systemd_dir: a.systemd_dir,
                dry_run: a.dry_run,
                no_reload: a.no_reload,
            };
            install::run(&opts, &HttpCa::connect, now_unix(), &mut out, &mut err)?;
        }
        Command::Refresh(a) => {
            let opts = RefreshOptions {
                host_config: a.config,
                etc_dir: a.etc_dir,
                sshd_config: a.sshd_config,
                ca_url: a.ca,
                sshd: a.sshd,
                no_reload: a.no_reload,
            };
            refresh::run(&opts, &HttpCa::connect, now_unix(), &mut out, &mut err)?;
        }
        Command::Enroll(a) => {
            let opts = EnrollOptions {
                token: a.token,
                ca_url: a.ca,
                etc_dir: a.etc_dir,
                host_key: a.host_key,
                host_name: a.host_name,
            };
            enroll::run(&opts, &HttpCa::connect, now_unix(), &mut out, &mut err)?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
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
    fn pin_format() {
        let good = format!("SHA256:{}", "A".repeat(43));
        assert_eq!(parse_pin(&good).unwrap(), good);
        assert!(parse_pin("SHA256:short").is_err());
        assert!(parse_pin(&format!("MD5:{}", "A".repeat(43))).is_err());
        assert!(parse_pin(&format!("SHA256:{}=", "A".repeat(42))).is_err());
    }
}
