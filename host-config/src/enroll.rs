//! `pedm-host-config enroll --token T`: registers this host's sshd host key with the CA once,
//! using a one-time join token from `pedm-ca hosts token`, so that the check-ins it signs
//! with that key count toward rotation coverage.
//!
//! Everything that can be checked locally is checked before the token is spent: the state
//! exists (install ran), the host key is Ed25519, its private key is there and matches, the
//! host name is valid. The enrollment is saved in state.json only after the CA confirmed the
//! same fingerprint; then the host checks in once so coverage sees it at once.

use crate::ca::Connect;
use crate::checkin;
use crate::files::{self, FILE_MODE};
use crate::hostkey::{self, HostKeyError};
use crate::install::{self, InstallError};
use crate::state::{self, Enrollment, State, STATE_FORMAT};
use pedm_api::{ClientError, EnrollRequest};
use std::io::Write;
use std::path::PathBuf;

/// Default host key, relative to the sshd configuration directory.
pub const DEFAULT_HOST_KEY: &str = "ssh_host_ed25519_key.pub";

/// Everything `enroll` is told on the command line. `Debug` leaves the token out.
#[derive(Clone)]
pub struct EnrollOptions {
    pub token: String,
    /// CA URL for the enrollment; default: the one install saved (check-ins always go there).
    pub ca_url: Option<String>,
    pub etc_dir: Option<PathBuf>,
    /// The host *public* key; the private key is the same path without `.pub`.
    pub host_key: Option<PathBuf>,
    /// Default: the kernel's host name, lower-cased.
    pub host_name: Option<String>,
}

impl std::fmt::Debug for EnrollOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollOptions")
            .field("token", &"<redacted>")
            .field("ca_url", &self.ca_url)
            .field("etc_dir", &self.etc_dir)
            .field("host_key", &self.host_key)
            .field("host_name", &self.host_name)
            .finish()
    }
}

/// Why `enroll` stopped. Every variant means: state.json is unchanged.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error(transparent)]
    Local(#[from] InstallError),
    #[error(
        "not installed: {0} does not exist; run `pedm-host-config install` first, then enroll"
    )]
    NotInstalled(PathBuf),
    #[error(transparent)]
    HostKey(#[from] HostKeyError),
    #[error(
        "{0:?} is not a host name the CA accepts (lower-case letters, digits, '.' and '-', at \
         most 253); pass --host-name NAME"
    )]
    HostName(String),
    #[error("cannot read this machine's host name; pass --host-name NAME")]
    NoHostName,
    #[error("the join token is empty; pass the one `pedm-ca hosts token` printed")]
    EmptyToken,
    #[error("enrollment failed: {0}; if the token was used or has expired, ask for a new one (`pedm-ca hosts token`)")]
    Enroll(#[source] ClientError),
    #[error(
        "the CA enrolled host key {enrolled}, but this host sent {sent}; nothing was saved: \
         report this to the CA operator"
    )]
    WrongKey { sent: String, enrolled: String },
    #[error("the CA answered with the host name {0:?}, which is not valid; nothing was saved")]
    BadAnswer(String),
    #[error("cannot print the result: {0}")]
    Output(#[from] std::io::Error),
}

/// Runs `enroll`.
pub fn run(
    opts: &EnrollOptions,
    connect: Connect,
    now: i64,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), EnrollError> {
    let layout = install::resolve_layout(opts.etc_dir.as_deref())?;
    let _lock = install::lock(&layout, err)?;
    let previous: State = state::load(&layout.state())
        .map_err(InstallError::from)?
        .ok_or_else(|| EnrollError::NotInstalled(layout.state()))?;

    // Local checks, before the one-time token is spent.
    let token = opts.token.trim();
    if token.is_empty() {
        return Err(EnrollError::EmptyToken);
    }
    let public_path = match &opts.host_key {
        Some(p) => p.clone(),
        None => layout.etc().join(DEFAULT_HOST_KEY),
    };
    let public = hostkey::read_public(&public_path)?;
    let public_path = install::absolute("the host key", &public_path)?;
    let private = hostkey::private_of(&public_path)?;
    hostkey::check_private(&private, &public_path, &public.fingerprint)?;
    let host_name = match &opts.host_name {
        Some(n) => n.clone(),
        None => hostkey::system_host_name().ok_or(EnrollError::NoHostName)?,
    };
    if !hostkey::is_valid_host_name(&host_name) {
        return Err(EnrollError::HostName(host_name));
    }

    // The CA.
    let ca_url = opts.ca_url.as_deref().unwrap_or(&previous.ca_url);
    let ca = connect(ca_url).map_err(EnrollError::Enroll)?;
    let resp = ca
        .enroll(&EnrollRequest {
            token: token.to_string(),
            host_name: host_name.clone(),
            host_key: public.line.clone(),
        })
        .map_err(EnrollError::Enroll)?;
    if resp.host_key_fingerprint != public.fingerprint {
        return Err(EnrollError::WrongKey {
            sent: public.fingerprint,
            enrolled: resp.host_key_fingerprint,
        });
    }
    if !hostkey::is_valid_host_name(&resp.host_name) {
        return Err(EnrollError::BadAnswer(resp.host_name));
    }

    // Saved last, so state.json never names an enrollment the CA has not confirmed.
    if let Some(old) = &previous.enrollment {
        writeln!(
            err,
            "note: replacing the enrollment of {} ({})",
            old.host_name, old.host_key_fingerprint
        )?;
    }
    let new_state = State {
        format: STATE_FORMAT,
        enrollment: Some(Enrollment {
            host_name: resp.host_name.clone(),
            host_key_fingerprint: public.fingerprint.clone(),
            host_key: private,
            enrolled_at: now,
        }),
        ..previous.clone()
    };
    files::atomic_write(&layout.state(), new_state.to_json().as_bytes(), FILE_MODE)
        .map_err(InstallError::from)?;
    writeln!(
        out,
        "enrolled {} with host key {} at {ca_url}",
        resp.host_name, public.fingerprint
    )?;
    if ca_url != previous.ca_url {
        writeln!(
            err,
            "note: check-ins go to the saved CA URL {}, not {ca_url}; run install with --ca to change it",
            previous.ca_url
        )?;
        return Ok(());
    }
    checkin::check_in(ca.as_ref(), &new_state, now, err)?;
    Ok(())
}
