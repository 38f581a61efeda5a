//! The systemd service and timer that run `pedm-host-config refresh` every few minutes.
//!
//! Rotation waits for host coverage, and a revocation reaches a host only when it refreshes,
//! so every installed host must refresh on its own: `install` writes these two units next to
//! the other managed files (same plan, same diff, same atomic writes) and enables the timer.
//!
//! The service is a sandboxed oneshot: the file system is read-only except the sshd
//! configuration directory it manages (`ProtectSystem=strict` + `ReadWritePaths`), it cannot
//! gain privileges, and it gets a private /tmp. Everything it runs (sshd -t/-T, ssh-keygen
//! -Y sign, systemctl reload) works under those limits.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The service unit's file name.
pub const SERVICE: &str = "pedm-host-config-refresh.service";
/// The timer unit's file name.
pub const TIMER: &str = "pedm-host-config-refresh.timer";
/// Where units go by default (the administrator's unit directory).
pub const DEFAULT_UNIT_DIR: &str = "/etc/systemd/system";
/// Exists exactly when the system was booted with systemd (sd_booted(3)).
pub const SYSTEMD_RUNTIME_DIR: &str = "/run/systemd/system";

/// Refresh cadence. It must not exceed the CA's `[hosts] refresh_interval` (default 5m) by
/// more than the randomized delay, or rotation guards wait on hosts that are merely slow.
pub const INTERVAL: &str = "5min";
/// Spread of the timer so a fleet does not hit the CA in the same second.
pub const RANDOMIZED_DELAY: &str = "1min";
/// First run after boot: soon, so a host that was down catches up on revocations.
pub const ON_BOOT: &str = "1min";

/// Why the units cannot be written or enabled.
#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    #[error(
        "{what} {path:?} cannot go into a systemd unit (it contains a control character); \
         use a path without one"
    )]
    UnsafeArgument { what: &'static str, path: PathBuf },
    #[error(
        "the refresh timer is written but not enabled: {0}; run `systemctl daemon-reload && \
         systemctl enable --now {TIMER}` by hand"
    )]
    Enable(String),
}

/// What `ExecStart` runs: this binary's `refresh` with the paths install used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshCommand {
    pub exe: PathBuf,
    pub host_config: PathBuf,
    pub etc_dir: PathBuf,
    pub sshd_config: Option<PathBuf>,
    pub sshd: Option<PathBuf>,
}

impl RefreshCommand {
    /// The `ExecStart=` value, each path quoted for systemd.
    pub fn exec_start(&self) -> Result<String, SystemdError> {
        let q = |what: &'static str, p: &Path| quote(what, p);
        let mut out = format!(
            "{} refresh --config {} --etc-dir {}",
            q("the pedm-host-config binary", &self.exe)?,
            q("the host config", &self.host_config)?,
            q("the sshd configuration directory", &self.etc_dir)?
        );
        if let Some(p) = &self.sshd_config {
            let _ = write!(out, " --sshd-config {}", q("the sshd config", p)?);
        }
        if let Some(p) = &self.sshd {
            let _ = write!(out, " --sshd {}", q("the sshd binary", p)?);
        }
        Ok(out)
    }
}

/// Quotes one word for a unit file: `%` (specifiers) and `$` (variables) are doubled; a
/// word with anything but `[A-Za-z0-9/._+:@=,-]` is double-quoted with `\` and `"` escaped.
/// Control characters (a newline would start a new directive) are refused.
pub fn quote(what: &'static str, path: &Path) -> Result<String, SystemdError> {
    let text = path.to_string_lossy();
    if text.chars().any(char::is_control) || text.contains('\u{fffd}') {
        return Err(SystemdError::UnsafeArgument {
            what,
            path: path.to_path_buf(),
        });
    }
    let escaped = text.replace('%', "%%").replace('$', "$$");
    let plain = escaped
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._+:@=,-%$".contains(c));
    if plain && !escaped.is_empty() {
        return Ok(escaped);
    }
    Ok(format!(
        "\"{}\"",
        escaped.replace('\\', "\\\\").replace('"', "\\\"")
    ))
}

/// The service unit.
pub fn service_text(cmd: &RefreshCommand) -> Result<String, SystemdError> {
    let exec = cmd.exec_start()?;
    let rw = quote("the sshd configuration directory", &cmd.etc_dir)?;
    Ok(format!(
        "# Managed by pedm-host-config install: do not edit, changes are overwritten on the next install.\n\
         [Unit]\n\
         Description=Refresh pedm-ssh CA trust, KRL and principals (pedm-host-config refresh)\n\
         Wants=network-online.target\n\
         After=network-online.target\n\
         \n\
         [Service]\n\
         Type=oneshot\n\
         ExecStart={exec}\n\
         # Only the managed sshd configuration directory is writable.\n\
         ProtectSystem=strict\n\
         ReadWritePaths={rw}\n\
         ProtectHome=read-only\n\
         PrivateTmp=yes\n\
         NoNewPrivileges=yes\n\
         ProtectKernelTunables=yes\n\
         ProtectKernelModules=yes\n\
         ProtectControlGroups=yes\n\
         RestrictSUIDSGID=yes\n"
    ))
}

/// The timer unit.
pub fn timer_text() -> String {
    format!(
        "# Managed by pedm-host-config install: do not edit, changes are overwritten on the next install.\n\
         [Unit]\n\
         Description=Refresh pedm-ssh CA trust every {INTERVAL}\n\
         \n\
         [Timer]\n\
         OnBootSec={ON_BOOT}\n\
         OnUnitActiveSec={INTERVAL}\n\
         RandomizedDelaySec={RANDOMIZED_DELAY}\n\
         Unit={SERVICE}\n\
         \n\
         [Install]\n\
         WantedBy=timers.target\n"
    )
}

/// Whether the system runs systemd (sd_booted(3)).
pub fn running_under_systemd() -> bool {
    Path::new(SYSTEMD_RUNTIME_DIR).is_dir()
}

/// `systemctl daemon-reload`, then `systemctl enable --now` of the timer.
pub fn enable() -> Result<(), SystemdError> {
    for args in [&["daemon-reload"][..], &["enable", "--now", TIMER][..]] {
        let shown = format!("systemctl {}", args.join(" "));
        match Command::new("systemctl").args(args).output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                return Err(SystemdError::Enable(format!(
                    "`{shown}` failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                )))
            }
            Err(e) => return Err(SystemdError::Enable(format!("cannot run `{shown}`: {e}"))),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd() -> RefreshCommand {
        RefreshCommand {
            exe: "/usr/local/bin/pedm-host-config".into(),
            host_config: "/etc/ssh/pedm/host.toml".into(),
            etc_dir: "/etc/ssh".into(),
            sshd_config: None,
            sshd: None,
        }
    }

    #[test]
    fn service_runs_refresh_with_installs_paths_and_is_sandboxed() {
        let text = service_text(&cmd()).unwrap();
        assert!(text.contains(
            "\nExecStart=/usr/local/bin/pedm-host-config refresh --config /etc/ssh/pedm/host.toml --etc-dir /etc/ssh\n"
        ), "{text}");
        for line in [
            "Type=oneshot",
            "ProtectSystem=strict",
            "ReadWritePaths=/etc/ssh",
            "NoNewPrivileges=yes",
            "PrivateTmp=yes",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
    }

    #[test]
    fn optional_paths_follow() {
        let mut c = cmd();
        c.sshd_config = Some("/etc/ssh/sshd_config.alt".into());
        c.sshd = Some("/opt/openssh/sbin/sshd".into());
        assert!(c.exec_start().unwrap().ends_with(
            " --etc-dir /etc/ssh --sshd-config /etc/ssh/sshd_config.alt --sshd /opt/openssh/sbin/sshd"
        ));
    }

    #[test]
    fn timer_every_five_minutes_with_jitter_and_at_boot() {
        let t = timer_text();
        for line in [
            "OnBootSec=1min",
            "OnUnitActiveSec=5min",
            "RandomizedDelaySec=1min",
            "Unit=pedm-host-config-refresh.service",
            "WantedBy=timers.target",
        ] {
            assert!(t.lines().any(|l| l == line), "{line} missing:\n{t}");
        }
    }

    #[test]
    fn quoting_escapes_specifiers_blanks_and_refuses_newlines() {
        let q = |s: &str| quote("x", Path::new(s));
        assert_eq!(q("/etc/ssh").unwrap(), "/etc/ssh");
        assert_eq!(q("/srv/my ssh").unwrap(), "\"/srv/my ssh\"");
        assert_eq!(q("/a%b$c").unwrap(), "/a%%b$$c");
        assert_eq!(q("/a\"b\\c d").unwrap(), "\"/a\\\"b\\\\c d\"");
        assert!(matches!(
            q("/a\nExecStartPre=/bin/evil"),
            Err(SystemdError::UnsafeArgument { .. })
        ));
    }
}
