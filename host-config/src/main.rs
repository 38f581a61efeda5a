//! `pedm-host-config`: thin command-line edge; the work happens in the library modules.

use clap::{Parser, Subcommand};
use pedm_host_config::install::{self, InstallOptions};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "pedm-host-config",
    version,
    about = "Installs pedm-ssh CA trust into a stock OpenSSH sshd"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Fetch and verify the trust bundle, then install the CA keys, principals files, an empty
    /// KRL (if none) and the sshd drop-in, checked with `sshd -t` / `sshd -T` before use.
    Install(InstallArgs),
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
    /// Print a unified diff of what would change and write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Do not reload sshd after changing the drop-in.
    #[arg(long)]
    no_reload: bool,
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
    match cli.command {
        Command::Install(a) => {
            let opts = InstallOptions {
                ca_url: a.ca,
                trust_root: a.trust_root,
                host_config: a.config,
                etc_dir: a.etc_dir,
                sshd_config: a.sshd_config,
                sshd: a.sshd,
                dry_run: a.dry_run,
                no_reload: a.no_reload,
            };
            let fetch = |url: &str| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| pedm_api::ClientError::Transport {
                        url: url.to_string(),
                        message: e.to_string(),
                    })?;
                rt.block_on(async { pedm_api::Client::new(url)?.bundle().await })
            };
            install::run(
                &opts,
                fetch,
                now_unix(),
                &mut std::io::stdout(),
                &mut std::io::stderr(),
            )?;
            Ok(())
        }
    }
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
