//! `pedm-ssh ensure` and `pedm-ssh ssh`: make sure the base certificate has at least a
//! margin of life left, renewing it with the saved session only when it has not.
//!
//! The fast path reads the certificate file beside the key and compares its end with the
//! local clock corrected by the last clock skew seen from the CA (saved by every
//! certificate request in `$XDG_CONFIG_HOME/pedm-ssh/clock-skew`): no network call, so
//! `ssh_config`'s `Match exec` can run it before every connection.

use crate::app::Ctx;
use crate::certfile::{self, CertInfo};
use crate::escape::escape;
use crate::exit::{self, Exit, Failure};
use crate::issue::{self, Issued};
use crate::{fsutil, keys, paths, session, sshconfig, timefmt};
use clap::Args;
use pedm_api::Client;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The default `--margin`.
pub const DEFAULT_MARGIN: Duration = Duration::from_secs(60);

fn parse_margin(text: &str) -> Result<Duration, String> {
    pedm_api::duration::parse(text).map_err(|e| e.to_string())
}

/// `pedm-ssh ensure`.
#[derive(Debug, Args)]
pub struct EnsureArgs {
    /// Print nothing on success.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Renew when the certificate has less than this left, e.g. 60s or 5m.
    #[arg(long, value_name = "DURATION", value_parser = parse_margin, default_value = "60s")]
    pub margin: Duration,
    /// Private key whose certificate to check [default: the one used at sign-in].
    #[arg(long, value_name = "PATH")]
    pub key: Option<PathBuf>,
    /// CA URL for a renewal [default: the one saved at sign-in].
    #[arg(long, env = "PEDM_CA", value_name = "URL")]
    pub ca: Option<String>,
}

/// `pedm-ssh ssh`.
#[derive(Debug, Args)]
pub struct SshArgs {
    /// Renew when the certificate has less than this left.
    #[arg(long, value_name = "DURATION", value_parser = parse_margin, default_value = "60s")]
    pub margin: Duration,
    /// The arguments for `ssh`, the host among them (`--` before them if the first starts
    /// with `--`).
    #[arg(
        value_name = "SSH_ARGS",
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub ssh_args: Vec<OsString>,
}

/// The file holding the last clock skew seen (`ca_time - local`, seconds).
pub fn skew_file(env: &paths::Env) -> Result<PathBuf, paths::NoHome> {
    Ok(paths::config_dir(env)?.join("clock-skew"))
}

/// Remembers `skew` for the next [`ensure`] (best effort: a failure only loses the
/// correction).
pub fn save_skew(env: &paths::Env, skew: i64) {
    if let Ok(file) = skew_file(env) {
        if let Some(dir) = file.parent() {
            if fsutil::ensure_private_dir(dir).is_err() {
                return;
            }
        }
        let _ = fsutil::write_atomic(
            &file,
            format!("{skew}\n").as_bytes(),
            fsutil::PRIVATE_FILE_MODE,
        );
    }
}

/// The last skew saved, 0 if none (or unreadable).
pub fn load_skew(env: &paths::Env) -> i64 {
    skew_file(env)
        .ok()
        .and_then(|f| std::fs::read_to_string(f).ok())
        .and_then(|t| t.trim().parse::<i64>().ok())
        .unwrap_or(0)
}

/// Whether `cert` still has more than `margin` of life at `now` (the CA's clock).
pub fn is_fresh(cert: &CertInfo, now: i64, margin: Duration) -> bool {
    let margin = i64::try_from(margin.as_secs()).unwrap_or(i64::MAX);
    cert.valid_after <= now && cert.valid_before.saturating_sub(now) > margin
}

/// What [`ensure`] did.
#[derive(Debug)]
pub enum Outcome {
    /// The certificate had enough life left; nothing was asked of the CA.
    Fresh { cert: CertInfo, now: i64 },
    /// It was renewed.
    Renewed(Box<Issued>),
}

/// Makes sure the base certificate beside the key has more than `margin` left.
pub async fn ensure(
    ctx: &Ctx,
    ca: Option<&str>,
    key: Option<&Path>,
    margin: Duration,
) -> Result<(Outcome, PathBuf), Failure> {
    let Some(saved) = session::load(&paths::session_file(&ctx.env)?)? else {
        return Err(Failure::not_signed_in(ca));
    };
    let key_path = match key {
        Some(k) => paths::absolute_key(k)?,
        None => saved.key_path.clone(),
    };
    let now = timefmt::now_unix().saturating_add(load_skew(&ctx.env));
    // An unreadable certificate is simply replaced.
    if let Ok(Some(cert)) = certfile::load(&key_path) {
        if is_fresh(&cert, now, margin) {
            return Ok((Outcome::Fresh { cert, now }, key_path));
        }
    }
    let ca_url = ca.map(str::to_string).unwrap_or(saved.ca_url.clone());
    let client = Client::new(&ca_url).map_err(|e| exit::from_client(&e, &ca_url))?;
    let key = keys::ensure_key(&key_path)?;
    if key.created {
        eprintln!("created a new key {}", key.path.display());
    }
    let issued = issue::issue(ctx, &client, &ca_url, &saved.session_token, &key).await?;
    Ok((Outcome::Renewed(Box::new(issued)), key_path))
}

/// Rewrites `elevations.conf`, warning (not failing) when it cannot.
fn refresh_elevations(ctx: &Ctx, key: &Path, now: i64) {
    if let Err(e) = sshconfig::write_elevations(&ctx.env, key, now) {
        eprintln!(
            "warning: could not update the elevations file: {}",
            e.message
        );
    }
}

/// `pedm-ssh ensure`.
pub async fn run(ctx: &Ctx, args: &EnsureArgs) -> Result<(), Failure> {
    let (outcome, key) = ensure(ctx, args.ca.as_deref(), args.key.as_deref(), args.margin).await?;
    match outcome {
        Outcome::Fresh { cert, now } => {
            refresh_elevations(ctx, &key, now);
            if !args.quiet {
                println!(
                    "certificate ok: {} ({})",
                    cert.path.display(),
                    timefmt::relative(cert.valid_before, now)
                );
            }
        }
        Outcome::Renewed(issued) => {
            refresh_elevations(ctx, &key, issued.ca_time);
            if !args.quiet {
                println!("certificate renewed");
                issue::print_certificate(&issued);
            }
        }
    }
    Ok(())
}

/// The options `pedm-ssh ssh` puts before the user's: the key, its certificate and the
/// valid elevated certificates, so it works without the `pedm-ssh config` snippet.
fn identity_options(key: &Path, now: i64) -> Vec<OsString> {
    let mut out: Vec<OsString> = vec!["-i".into(), key.as_os_str().to_os_string()];
    let mut certs = vec![paths::certificate_of(key)];
    certs.extend(
        paths::elevation_certificates(key).into_iter().filter(
            |p| matches!(certfile::load_at(p.clone()), Ok(Some(c)) if c.valid_before > now),
        ),
    );
    for c in certs {
        let mut opt = OsString::from("CertificateFile=");
        opt.push(c.as_os_str());
        out.push("-o".into());
        out.push(opt);
    }
    out
}

/// `pedm-ssh ssh`: [`ensure`], then replaces this process with `ssh`.
pub async fn run_ssh(ctx: &Ctx, args: &SshArgs) -> Result<(), Failure> {
    let (outcome, key) = ensure(ctx, None, None, args.margin).await?;
    let now = match &outcome {
        Outcome::Fresh { now, .. } => *now,
        Outcome::Renewed(i) => i.ca_time,
    };
    refresh_elevations(ctx, &key, now);
    use std::os::unix::process::CommandExt;
    let err = std::process::Command::new("ssh")
        .args(identity_options(&key, now))
        .args(&args.ssh_args)
        .exec();
    Err(Failure::new(
        Exit::Error,
        format!("cannot run ssh: {}", escape(&err.to_string())),
        "install the OpenSSH client",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(after: i64, before: i64) -> CertInfo {
        CertInfo {
            path: PathBuf::from("/k-cert.pub"),
            serial: 1,
            key_id: "alice serial=1".into(),
            principals: vec!["alice".into()],
            valid_after: after,
            valid_before: before,
        }
    }

    #[test]
    fn freshness_needs_more_than_the_margin() {
        let m = Duration::from_secs(60);
        assert!(is_fresh(&cert(0, 1_061), 1_000, m));
        assert!(!is_fresh(&cert(0, 1_060), 1_000, m));
        assert!(!is_fresh(&cert(0, 900), 1_000, m));
        // Not yet valid: renewing is the right answer.
        assert!(!is_fresh(&cert(1_001, 5_000), 1_000, m));
    }

    #[test]
    fn skew_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let env = paths::Env {
            home: Some(dir.path().into()),
            xdg_config_home: Some(dir.path().join("x").into()),
        };
        assert_eq!(load_skew(&env), 0);
        save_skew(&env, -42);
        assert_eq!(load_skew(&env), -42);
        save_skew(&env, 7);
        assert_eq!(load_skew(&env), 7);
    }
}
