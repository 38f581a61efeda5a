//! Check-in: after every successful install or refresh, an enrolled host tells the CA which
//! bundle and KRL versions it has installed, signed (SSHSIG, namespace
//! [`CHECKIN_NAMESPACE`]) with its sshd host key, so rotation can wait for coverage.
//!
//! A check-in is a report, not part of the host's trust: if it fails the installed files are
//! still right, so failures are warnings and never change the exit status. What is reported
//! comes from the state just written, so it never claims more than is installed.

use crate::ca::Ca;
use crate::hostkey;
use crate::state::State;
use base64::Engine as _;
use pedm_api::{CheckinPayload, SignedCheckin, CHECKIN_NAMESPACE};
use std::io::{self, Write};

/// Checks in if `state` has an enrollment; prints a note on success and a `warning:` line on
/// any failure. Returns whether the CA accepted and counted the check-in (`None`: not
/// enrolled, nothing sent).
pub fn check_in(
    ca: &dyn Ca,
    state: &State,
    now: i64,
    err: &mut dyn Write,
) -> io::Result<Option<bool>> {
    let Some(enrollment) = &state.enrollment else {
        return Ok(None);
    };
    let krl_version = state.krl.as_ref().map(|k| k.version);
    let payload = CheckinPayload {
        host_name: enrollment.host_name.clone(),
        host_key_fingerprint: enrollment.host_key_fingerprint.clone(),
        bundle_version: state.bundle_version,
        krl_version,
        time: now,
    };
    let bytes = match serde_json::to_vec(&payload) {
        Ok(b) => b,
        Err(e) => {
            writeln!(err, "warning: check-in not sent: cannot encode it: {e}")?;
            return Ok(Some(false));
        }
    };
    let key = &enrollment.host_key;
    // The key must still be the enrolled one: a regenerated host key would sign check-ins
    // the CA does not count, which should be said here rather than discovered in coverage.
    let mut pub_path = key.as_os_str().to_owned();
    pub_path.push(".pub");
    let pub_path = std::path::PathBuf::from(pub_path);
    let signature = hostkey::check_private(key, &pub_path, &enrollment.host_key_fingerprint)
        .and_then(|()| hostkey::sign(key, CHECKIN_NAMESPACE, &bytes));
    let signature = match signature {
        Ok(s) => s,
        Err(e) => {
            writeln!(
                err,
                "warning: check-in not sent: {e}; if the host key was replaced, enroll again \
                 with a new join token (`pedm-host-config enroll --token T`)"
            )?;
            return Ok(Some(false));
        }
    };
    let req = SignedCheckin {
        payload: base64::engine::general_purpose::STANDARD.encode(&bytes),
        signature,
    };
    let versions = match krl_version {
        Some(k) => format!("bundle version {}, KRL version {k}", state.bundle_version),
        None => format!("bundle version {}, no signed KRL yet", state.bundle_version),
    };
    match ca.checkin(&req) {
        Ok(resp) if resp.counted => {
            writeln!(
                err,
                "checked in with {} as {} ({versions})",
                ca.url(),
                enrollment.host_name
            )?;
            Ok(Some(true))
        }
        Ok(_) => {
            writeln!(
                err,
                "warning: the CA at {} accepted the check-in of {} but does not count it: host \
                 key {} is not enrolled there; enroll again with a new join token",
                ca.url(),
                enrollment.host_name,
                enrollment.host_key_fingerprint
            )?;
            Ok(Some(false))
        }
        Err(e) => {
            writeln!(
                err,
                "warning: check-in failed: {e}; the installed files are fine, the CA counts \
                 this host once a check-in gets through"
            )?;
            Ok(Some(false))
        }
    }
}
