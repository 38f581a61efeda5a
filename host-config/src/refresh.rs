//! `pedm-host-config refresh`: what the timer runs every few minutes. It fetches the trust
//! bundle and the signed KRL, accepts them only as a verified pair, and installs them with
//! the principals files through the same plan and checked apply as `install`.
//!
//! Invariants:
//! - The bundle is accepted only from the pinned root (unexpired, higher version, or
//!   byte-identical); a refused bundle or an unreachable CA leaves every file as it was and
//!   exits non-zero with the reason.
//! - The KRL is accepted only from the *active* key of the bundle just accepted (the
//!   installed one when byte-identical), unexpired and not older than the installed KRL. A
//!   refused or unavailable KRL leaves the installed KRL file and its version in force and
//!   exits non-zero, but does not hold back an accepted bundle: the root's word on which CA
//!   keys to trust stands on its own, so a stale KRL (the CA re-signs it with a new active
//!   key only at its next re-issue) can neither delay a rotation nor the removal of a revoked
//!   CA key from `TrustedUserCAKeys`.
//! - Every file is replaced atomically (temporary file, fsync, rename), so sshd, which
//!   re-reads the CA keys, principals and KRL on every connection and refuses every key
//!   while the KRL is missing or corrupt, never sees a partial file.
//! - A byte-identical bundle and KRL with unchanged principals is a quiet no-op: nothing is
//!   written, `no changes` is printed, exit 0.
//! - sshd is reloaded only when the drop-in itself changed.
//! - While the installed bundle or KRL is past its expiry, every run says so with a
//!   `WARNING:` line, whatever else happens (even with the CA unreachable): sshd keeps using
//!   the old files, and the host must not go stale silently.
//! - After every run that accepted a bundle (even if the KRL was refused) an enrolled host
//!   checks in with what is installed now; a failed check-in is a warning.

use crate::ca::Connect;
use crate::checkin;
use crate::hostfile::{self, HostFileError};
use crate::install::{self, InstallError, KrlFile, SshdMode};
use crate::state::{self, KrlState, State, STATE_FORMAT};
use crate::trust::{self, AcceptError};
use pedm_api::krl::KrlError;
use pedm_api::ClientError;
use std::io::Write;
use std::path::PathBuf;

/// Everything `refresh` is told on the command line; all of it defaults from state.json.
#[derive(Debug, Clone, Default)]
pub struct RefreshOptions {
    /// Host config; default: the one install used.
    pub host_config: Option<PathBuf>,
    pub etc_dir: Option<PathBuf>,
    /// Main sshd config; default: the one install used, else `ETC/sshd_config`.
    pub sshd_config: Option<PathBuf>,
    /// CA URL for this run only; default: the one install saved.
    pub ca_url: Option<String>,
    pub sshd: Option<PathBuf>,
    pub no_reload: bool,
}

/// Why `refresh` failed. Every variant but the two KRL ones means: the host's files are as
/// they were. `FetchKrl` and `Krl` mean: the installed KRL is as it was, and the accepted
/// bundle and the principals were installed (their `done` says so).
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error(transparent)]
    Local(#[from] InstallError),
    #[error(
        "nothing to refresh: {0} does not exist; run `pedm-host-config install --ca URL \
         --trust-root SHA256:… --config host.toml` first"
    )]
    NotInstalled(PathBuf),
    #[error(
        "no host config: {0} names none (it was written before refresh existed); pass \
         --config host.toml, or run install again"
    )]
    NoHostConfig(PathBuf),
    #[error(transparent)]
    HostFile(#[from] HostFileError),
    #[error(
        "cannot get the trust bundle: {0}; check the CA URL (--ca, or install's) and that the CA \
         is reachable; nothing was changed"
    )]
    FetchBundle(#[source] ClientError),
    #[error("{0}; nothing was changed")]
    Bundle(#[source] AcceptError),
    #[error(
        "cannot get the KRL: {source}; the CA must serve GET /v1/krl; the installed KRL stays \
         in force{done}"
    )]
    FetchKrl {
        #[source]
        source: ClientError,
        /// What was installed nevertheless (empty, or `; …`).
        done: String,
    },
    #[error("refusing the KRL: {source}; the installed KRL stays in force{done}")]
    Krl {
        #[source]
        source: KrlError,
        /// What was installed nevertheless (empty, or `; …`).
        done: String,
    },
    #[error("cannot print the result: {0}")]
    Output(#[from] std::io::Error),
}

/// Runs `refresh`, then prints the `WARNING:` lines for whatever installed trust has expired
/// (on success and on failure alike).
pub fn run(
    opts: &RefreshOptions,
    connect: Connect,
    now: i64,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), RefreshError> {
    let mut installed = None;
    let result = refresh(opts, connect, now, &mut installed, out, err);
    if let Some(state) = &installed {
        for w in stale_warnings(state, now) {
            writeln!(err, "{w}")?;
        }
    }
    result
}

/// `WARNING:` lines for an installed bundle or KRL past its expiry.
pub fn stale_warnings(state: &State, now: i64) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(expires_at) = state.bundle_expires_at.filter(|&t| now >= t) {
        out.push(format!(
            "WARNING: the installed trust bundle (version {}) expired {} ago (unix time \
             {expires_at}); sshd still trusts its CA keys, but this host cannot follow a key \
             rotation or a CA key revocation until it gets a bundle the trust root signed anew: \
             check that the CA is reachable and re-signs its bundle (with an offline root: \
             `pedm-ca bundle sign` and `bundle import`)",
            state.bundle_version,
            ago(now - expires_at)
        ));
    }
    if let Some(krl) = state.krl.as_ref().filter(|k| now >= k.expires_at) {
        out.push(format!(
            "WARNING: the installed KRL (version {}) expired {} ago (unix time {}); \
             certificates revoked since then may still log in here: check that this host \
             reaches the CA and that the CA re-issues its KRL",
            krl.version,
            ago(now - krl.expires_at),
            krl.expires_at
        ));
    }
    out
}

/// A short human duration.
fn ago(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}min", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{} days", s / 86_400),
    }
}

fn refresh(
    opts: &RefreshOptions,
    connect: Connect,
    now: i64,
    installed: &mut Option<State>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), RefreshError> {
    // 1. Local inputs.
    let layout = install::resolve_layout(opts.etc_dir.as_deref())?;
    let _lock = install::lock(&layout, err)?;
    let previous = state::load(&layout.state())
        .map_err(InstallError::from)?
        .ok_or_else(|| RefreshError::NotInstalled(layout.state()))?;
    *installed = Some(previous.clone());
    let host_path = opts
        .host_config
        .clone()
        .or_else(|| previous.host_config.clone())
        .ok_or_else(|| RefreshError::NoHostConfig(layout.state()))?;
    let main_config = opts
        .sshd_config
        .clone()
        .or_else(|| previous.sshd_config.clone())
        .unwrap_or_else(|| layout.main_config());
    let host = hostfile::load(&host_path)?;
    let passwd = install::read_passwd(&host)?;
    let mode = install::resolve_sshd(opts.sshd.as_deref(), opts.etc_dir.is_some())?;

    // 2. The bundle, against the pinned root and what is installed.
    let ca_url = opts.ca_url.as_deref().unwrap_or(&previous.ca_url);
    let ca = connect(ca_url).map_err(RefreshError::FetchBundle)?;
    let signed = ca.bundle().map_err(RefreshError::FetchBundle)?;
    let accepted = trust::accept(
        &signed,
        &previous.trust_root,
        now,
        install::installed(Some(&previous)).as_ref(),
    )
    .map_err(RefreshError::Bundle)?;

    // 3. The KRL, against the active key of the bundle just accepted (which is the installed
    //    one when it is byte-identical). A refusal is reported after the rest is applied.
    let krl = match ca.krl() {
        Err(e) => Err(KrlRefusal::Fetch(e)),
        Ok(signed_krl) => signed_krl
            .verify(
                &accepted.bundle,
                now,
                previous.krl.as_ref().map(|k| k.version),
            )
            .map_err(KrlRefusal::Invalid),
    };
    let krl_state = match &krl {
        Ok(verified) => Some(KrlState {
            version: verified.payload.version,
            payload_sha256: trust::sha256_hex(&verified.payload_bytes),
            expires_at: verified.payload.expires_at,
        }),
        Err(_) => previous.krl.clone(),
    };
    let krl_is_new = krl.is_ok() && previous.krl != krl_state;
    if let (Some(prev), Some(new)) = (&previous.krl, &krl_state) {
        if prev.version == new.version && prev.payload_sha256 != new.payload_sha256 {
            writeln!(
                err,
                "note: the CA re-issued KRL version {} with other content; installing it (a \
                 KRL's version should grow with every re-issue)",
                prev.version
            )?;
        }
    }
    if krl.is_err() && !layout.krl().exists() {
        writeln!(
            err,
            "WARNING: {} is missing and no acceptable KRL came: sshd refuses every public key \
             until one is installed",
            layout.krl().display()
        )?;
    }

    // 4. Desired files: the same plan as install, with the KRL's bytes.
    let mapping = install::mapping(&host, &passwd, err)?;
    let new_state = State {
        format: STATE_FORMAT,
        bundle_version: accepted.bundle.version,
        payload_sha256: accepted.payload_sha256.clone(),
        bundle_expires_at: Some(accepted.bundle.expires_at),
        managed_accounts: mapping.accounts.keys().cloned().collect(),
        krl: krl_state,
        ..previous.clone()
    };
    let (krl_file, krl_version) = match &krl {
        Ok(verified) => (
            KrlFile::Content(verified.krl.clone()),
            Some(verified.payload.version),
        ),
        Err(_) => (KrlFile::Keep, None),
    };
    let changes = crate::files::plan(install::desired_files(
        &layout,
        &accepted,
        krl_file,
        &mapping,
        Some(&previous),
        Vec::new(),
        &new_state,
    ))
    .map_err(InstallError::from)?;

    // 5. Apply, drop-in first and checked.
    if mode == SshdMode::Skip {
        writeln!(
            err,
            "note: sshd not found; skipping the sshd -t / sshd -T checks (allowed because --etc-dir was given)"
        )?;
    }
    let users = install::check_users(&host, &mapping);
    let lines = install::apply_checked(&changes, &layout, &mode, &main_config, &users)?;
    *installed = Some(new_state.clone());
    if lines.is_empty() {
        // With a refused KRL the run did not succeed: "no changes" would read as all well.
        if krl.is_ok() {
            writeln!(out, "no changes")?;
        }
    } else {
        for l in &lines {
            writeln!(out, "{l}")?;
        }
        if !accepted.already_installed {
            writeln!(
                out,
                "installed trust bundle version {} ({} trusted CA keys)",
                accepted.bundle.version,
                install::trusted_count(&accepted)
            )?;
        }
        if let (true, Some(v)) = (krl_is_new, krl_version) {
            writeln!(out, "installed KRL version {v}")?;
        }
    }

    // 6. Reload only if sshd_config changed, then report what is installed to the CA.
    install::reload_if_dropin_changed(&changes, &layout, opts.no_reload, err)?;
    checkin::check_in(ca.as_ref(), &new_state, now, err)?;
    let done = if accepted.already_installed {
        String::new()
    } else {
        format!(
            "; trust bundle version {} was installed",
            accepted.bundle.version
        )
    };
    match krl {
        Ok(_) => Ok(()),
        Err(KrlRefusal::Fetch(source)) => Err(RefreshError::FetchKrl { source, done }),
        Err(KrlRefusal::Invalid(source)) => Err(RefreshError::Krl { source, done }),
    }
}

/// Why no new KRL is installed in this run.
enum KrlRefusal {
    Fetch(ClientError),
    Invalid(KrlError),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> State {
        State {
            format: STATE_FORMAT,
            ca_url: "https://ca.example.com".into(),
            trust_root: "SHA256:abc".into(),
            bundle_version: 4,
            payload_sha256: "ab".repeat(32),
            bundle_expires_at: Some(1000),
            managed_accounts: vec![],
            krl: Some(KrlState {
                version: 9,
                payload_sha256: "cd".repeat(32),
                expires_at: 2000,
            }),
            host_config: None,
            sshd_config: None,
            enrollment: None,
        }
    }

    #[test]
    fn warnings_start_at_expiry() {
        let s = state();
        assert!(stale_warnings(&s, 999).is_empty());
        let w = stale_warnings(&s, 1000);
        assert_eq!(w.len(), 1);
        assert!(w[0].starts_with("WARNING: the installed trust bundle (version 4) expired 0s ago"));
        let w = stale_warnings(&s, 2000 + 3 * 3600);
        assert_eq!(w.len(), 2);
        assert!(
            w[1].starts_with("WARNING: the installed KRL (version 9) expired 3h ago"),
            "{}",
            w[1]
        );
    }

    #[test]
    fn old_state_without_expiry_gives_no_warning() {
        let mut s = state();
        s.bundle_expires_at = None;
        s.krl = None;
        assert!(stale_warnings(&s, i64::MAX).is_empty());
    }
}
