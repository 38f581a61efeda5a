//! `pedm-host-config install`: fetch and accept the trust bundle, compute every managed file,
//! show or apply the difference, and prove with sshd that the drop-in is effective before
//! anything else is written.
//!
//! Order of effects, chosen so a refusal at any step leaves the host as it was:
//! 1. all inputs (paths, host.toml, passwd, state, bundle) are read and checked: nothing written;
//! 2. the drop-in is replaced and sshd checks it; on failure the previous drop-in is put back;
//! 3. the data files (KRL, CA keys, principals, removals, systemd units) are written;
//! 4. state.json is written last, so it never claims more than is installed;
//! 5. sshd is reloaded if the drop-in changed (the data files are read per connection);
//! 6. the refresh timer is enabled if its units changed, and an enrolled host checks in.
//!
//! `refresh` ([`crate::refresh`]) runs the same steps 1–5 with a KRL from the CA; the shared
//! pieces live here: [`resolve_layout`], [`mapping`], [`desired_files`], [`apply_checked`],
//! [`reload_if_dropin_changed`].

use crate::ca::Connect;
use crate::checkin;
use crate::files::{self, Change, Desired, FileError};
use crate::hostfile::{self, HostConfig, HostFileError};
use crate::layout::{Layout, LayoutError};
use crate::principals::{self, Mapping};
use crate::sshd::{self, SshdError};
use crate::state::{self, State, StateError, STATE_FORMAT};
use crate::systemd::{self, RefreshCommand, SystemdError};
use crate::trust::{self, AcceptError, Accepted, Installed};
use pedm_api::ClientError;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The default sshd configuration directory.
pub const DEFAULT_ETC: &str = "/etc/ssh";

/// Everything `install` is told on the command line.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    pub ca_url: String,
    pub trust_root: String,
    pub host_config: PathBuf,
    pub etc_dir: Option<PathBuf>,
    pub sshd_config: Option<PathBuf>,
    pub sshd: Option<PathBuf>,
    /// Where the refresh service and timer go; `None`: [`systemd::DEFAULT_UNIT_DIR`] for the
    /// live `/etc/ssh`, nowhere for any other `--etc-dir` (a staging or test tree must not
    /// schedule itself on the machine that builds it).
    pub systemd_dir: Option<PathBuf>,
    pub dry_run: bool,
    pub no_reload: bool,
}

/// Why `install` (or a step it shares with `refresh` and `enroll`) stopped.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("the sshd configuration directory {path} cannot be used: {source}")]
    EtcDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error(transparent)]
    HostFile(#[from] HostFileError),
    #[error("passwd_file: cannot read {path}: {source}; fix passwd_file in the host config")]
    Passwd {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    State(#[from] StateError),
    #[error("cannot get the trust bundle: {0}; check --ca and that the CA is reachable")]
    Fetch(#[source] ClientError),
    #[error(transparent)]
    Accept(#[from] AcceptError),
    #[error(transparent)]
    Files(#[from] FileError),
    #[error(
        "sshd was not found (tried /usr/sbin/sshd and PATH); install openssh-server or pass --sshd PATH: \
         a configuration sshd cannot check is not installed"
    )]
    NoSshd,
    #[error(transparent)]
    Sshd(#[from] SshdError),
    #[error("{source}\n{undo}")]
    Check {
        #[source]
        source: SshdError,
        undo: String,
    },
    #[error("cannot print the result: {0}")]
    Output(#[from] std::io::Error),
    #[error("{source}\n{undo}")]
    Write {
        #[source]
        source: FileError,
        undo: String,
    },
    #[error(transparent)]
    Systemd(#[from] SystemdError),
    #[error("cannot find this program's own path for the timer's ExecStart: {0}; run it by its absolute path")]
    OwnPath(#[source] std::io::Error),
    #[error("cannot resolve {what} {path}: {source}")]
    Canonicalize {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How sshd will be consulted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SshdMode {
    /// Run `sshd -t` / `sshd -T` with this binary.
    Check(PathBuf),
    /// sshd is absent and `--etc-dir` was given (a staging tree): no checks.
    Skip,
}

/// Resolves the configuration directory to an absolute, checked [`Layout`].
pub fn resolve_layout(etc_dir: Option<&Path>) -> Result<Layout, InstallError> {
    let etc = etc_dir.unwrap_or(Path::new(DEFAULT_ETC));
    let abs = std::fs::canonicalize(etc).map_err(|source| InstallError::EtcDir {
        path: etc.to_path_buf(),
        source,
    })?;
    if !abs.is_dir() {
        return Err(InstallError::EtcDir {
            path: etc.to_path_buf(),
            source: std::io::Error::other("not a directory"),
        });
    }
    Ok(Layout::new(&abs)?)
}

/// Decides how sshd is checked: `--sshd`, /usr/sbin/sshd or PATH; when none exists, checks
/// are skipped only for an explicit `--etc-dir` (a staging tree), never for the live system.
pub fn resolve_sshd(
    explicit: Option<&Path>,
    etc_dir_given: bool,
) -> Result<SshdMode, InstallError> {
    match sshd::locate(explicit)? {
        Some(p) => Ok(SshdMode::Check(p)),
        None if etc_dir_given => Ok(SshdMode::Skip),
        None => Err(InstallError::NoSshd),
    }
}

/// Takes the run lock on the configuration directory (see [`files::RunLock`]), saying so on
/// `err` if it has to wait for another run.
pub fn lock(layout: &Layout, err: &mut dyn Write) -> Result<files::RunLock, InstallError> {
    let mut waited = false;
    let lock = files::lock_dir(layout.etc(), || waited = true)?;
    if waited {
        writeln!(
            err,
            "note: waited for another pedm-host-config run on {} to finish",
            layout.etc().display()
        )?;
    }
    Ok(lock)
}

/// An absolute, symlink-free form of a path that goes into state.json or a unit file.
pub fn absolute(what: &'static str, path: &Path) -> Result<PathBuf, InstallError> {
    std::fs::canonicalize(path).map_err(|source| InstallError::Canonicalize {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// Reads the passwd file named by host.toml.
pub fn read_passwd(host: &HostConfig) -> Result<String, InstallError> {
    std::fs::read_to_string(&host.passwd_file).map_err(|source| InstallError::Passwd {
        path: host.passwd_file.clone(),
        source,
    })
}

/// The installed bundle, as rollback protection sees it.
pub fn installed(state: Option<&State>) -> Option<Installed> {
    state.map(|s| Installed {
        version: s.bundle_version,
        payload_sha256: s.payload_sha256.clone(),
    })
}

/// What the run does with the KRL file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KrlFile {
    /// install: leave an existing KRL alone (refresh owns its content); create an empty one
    /// if there is none, because sshd refuses every key while `RevokedKeys` names a missing
    /// file.
    KeepOrCreateEmpty,
    /// refresh: exactly these bytes, from a verified signed KRL.
    Content(Vec<u8>),
    /// refresh without an acceptable KRL: leave the file exactly as it is. Never create an
    /// empty one here: with a KRL installed before, an empty file would lift its revocations.
    Keep,
}

/// Every file as it should be after the run, in write order: drop-in (checked by sshd
/// before anything else is written), KRL, CA keys, principals files, removals of principals
/// files we wrote earlier for accounts no longer mapped, `extra` (systemd units), and
/// state.json last.
///
/// The KRL precedes the CA keys so that between the two writes sshd sees the stricter mix:
/// new revocations already apply while newly staged keys are not yet trusted; keys the root
/// removed leave with the CA keys file, which the KRL's revocations already cover.
pub fn desired_files(
    layout: &Layout,
    accepted: &Accepted,
    krl: KrlFile,
    mapping: &Mapping,
    previous: Option<&State>,
    extra: Vec<Desired>,
    state: &State,
) -> Vec<Desired> {
    let mut out = vec![Desired::file(layout.dropin(), sshd::dropin_text(layout))];
    match krl {
        KrlFile::KeepOrCreateEmpty => {
            if !layout.krl().exists() {
                out.push(Desired::file(layout.krl(), ""));
            }
        }
        KrlFile::Content(bytes) => out.push(Desired::file(layout.krl(), bytes)),
        KrlFile::Keep => {}
    }
    out.push(Desired::file(
        layout.ca_keys(),
        accepted.bundle.trusted_user_ca_keys(),
    ));
    for (account, principals) in &mapping.accounts {
        out.push(Desired::file(
            layout.principals_file(account),
            Mapping::file_content(principals),
        ));
    }
    if let Some(prev) = previous {
        for account in prev
            .managed_accounts
            .iter()
            .filter(|a| !mapping.accounts.contains_key(*a))
        {
            out.push(Desired::absent(layout.principals_file(account)));
        }
    }
    out.extend(extra);
    out.push(Desired::file(layout.state(), state.to_json()));
    out
}

/// Maps accounts to principals and reports, on `err`, what the operator should know: skipped
/// passwd entries, collisions, and explicitly listed accounts that passwd lacks.
pub fn mapping(
    host: &HostConfig,
    passwd: &str,
    err: &mut dyn Write,
) -> Result<Mapping, InstallError> {
    let mapping = principals::map_accounts(passwd, host);
    for w in &mapping.warnings {
        writeln!(err, "warning: {}: {w}", host.passwd_file.display())?;
    }
    let (passwd_entries, _) = principals::parse_passwd(passwd);
    for account in host.accounts.keys() {
        if !passwd_entries.iter().any(|e| &e.name == account) {
            writeln!(
                err,
                "warning: accounts.{account}: no such account in {}; its principals file is written anyway",
                host.passwd_file.display()
            )?;
        }
    }
    Ok(mapping)
}

/// Number of CA keys the bundle puts into `TrustedUserCAKeys`.
pub fn trusted_count(accepted: &Accepted) -> usize {
    accepted
        .bundle
        .keys
        .iter()
        .filter(|k| k.state.trusted())
        .count()
}

/// Reloads sshd if, and only if, the drop-in was among the changes: the data files it names
/// are re-read on every connection, but sshd_config itself only at SIGHUP.
pub fn reload_if_dropin_changed(
    changes: &[Change],
    layout: &Layout,
    no_reload: bool,
    err: &mut dyn Write,
) -> Result<(), InstallError> {
    if !changes.iter().any(|c| c.desired.path == layout.dropin()) {
        return Ok(());
    }
    if no_reload {
        writeln!(
            err,
            "note: --no-reload: sshd applies the new drop-in at its next reload (SIGHUP)"
        )?;
        return Ok(());
    }
    match sshd::reload()? {
        sshd::Reload::Systemd(unit) => writeln!(err, "reloaded {unit}")?,
        sshd::Reload::Manual => writeln!(
            err,
            "sshd must be reloaded (send it SIGHUP) for {} to apply",
            layout.dropin().display()
        )?,
    }
    Ok(())
}

/// Where the units go, or why they are not written (a note for `err`).
fn unit_dir(opts: &InstallOptions, layout: &Layout) -> Result<PathBuf, String> {
    let dir = match &opts.systemd_dir {
        Some(d) => d.clone(),
        None => {
            let live = std::fs::canonicalize(DEFAULT_ETC).is_ok_and(|p| p == layout.etc());
            if !live {
                return Err(format!(
                    "note: no refresh timer written: {} is not {DEFAULT_ETC}; pass --systemd-dir \
                     DIR to write {} and {} for it",
                    layout.etc().display(),
                    systemd::SERVICE,
                    systemd::TIMER
                ));
            }
            PathBuf::from(systemd::DEFAULT_UNIT_DIR)
        }
    };
    if !dir.is_dir() {
        return Err(format!(
            "note: no refresh timer written: {} does not exist (no systemd?); run \
                     `pedm-host-config refresh` every 5 minutes by other means",
            dir.display()
        ));
    }
    Ok(dir)
}

/// The service and timer for this install, or a note saying why there are none.
fn units(
    opts: &InstallOptions,
    layout: &Layout,
    host_config: &Path,
    sshd_config: Option<&Path>,
) -> Result<Result<Vec<Desired>, String>, InstallError> {
    let dir = match unit_dir(opts, layout) {
        Ok(d) => d,
        Err(note) => return Ok(Err(note)),
    };
    let exe = std::env::current_exe().map_err(InstallError::OwnPath)?;
    let sshd = match &opts.sshd {
        Some(p) => Some(absolute("the sshd binary", p)?),
        None => None,
    };
    let cmd = RefreshCommand {
        exe,
        host_config: host_config.to_path_buf(),
        etc_dir: layout.etc().to_path_buf(),
        sshd_config: sshd_config.map(Path::to_path_buf),
        sshd,
    };
    Ok(Ok(vec![
        Desired::file(dir.join(systemd::SERVICE), systemd::service_text(&cmd)?),
        Desired::file(dir.join(systemd::TIMER), systemd::timer_text()),
    ]))
}

/// The accounts `sshd -T` is asked about: every explicitly mapped account (a `Match User`
/// block could treat it differently) plus one implicitly mapped account, else root.
pub fn check_users(host: &HostConfig, mapping: &Mapping) -> Vec<String> {
    let mut users: Vec<String> = host.accounts.keys().cloned().collect();
    if let Some(implicit) = mapping
        .accounts
        .keys()
        .find(|a| !host.accounts.contains_key(*a))
    {
        users.push(implicit.clone());
    }
    if users.is_empty() {
        users.push("root".into());
    }
    users
}

/// Writes the changes: the drop-in first and checked by sshd, then the rest in order.
/// Returns one `wrote PATH` / `removed PATH` line per change. On any failure the previous
/// drop-in is restored, and after a failed check nothing else has been touched.
pub fn apply_checked(
    changes: &[Change],
    layout: &Layout,
    mode: &SshdMode,
    main_config: &Path,
    users: &[String],
) -> Result<Vec<String>, InstallError> {
    let describe = |c: &Change| {
        let verb = if c.is_removal() { "removed" } else { "wrote" };
        format!("{verb} {}", c.desired.path.display())
    };
    let dropin = changes.iter().find(|c| c.desired.path == layout.dropin());
    let mut lines = Vec::new();
    let mut created_dirs = Vec::new();
    if let Some(c) = dropin {
        created_dirs = files::ensure_dir(&layout.dropin_dir())?;
        files::apply(c)?;
        lines.push(describe(c));
    }
    let undo_dropin = |created_dirs: &[PathBuf]| -> String {
        let Some(c) = dropin else {
            return "the drop-in was not changed".into();
        };
        let restored = files::restore(&c.desired.path, &c.current);
        for d in created_dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
        match (restored, &c.current.content) {
            (Ok(()), Some(_)) => format!("the previous {} was restored", c.desired.path.display()),
            (Ok(()), None) => format!("the new {} was removed again", c.desired.path.display()),
            (Err(e), _) => format!(
                "restoring {} FAILED ({e}): fix or remove it by hand",
                c.desired.path.display()
            ),
        }
    };
    if let SshdMode::Check(sshd_path) = mode {
        if let Err(source) = sshd::check(sshd_path, main_config, users, layout) {
            let undo = format!("{}; no other file was changed", undo_dropin(&created_dirs));
            return Err(InstallError::Check { source, undo });
        }
    }
    for c in changes.iter().filter(|c| c.desired.path != layout.dropin()) {
        if let Err(source) = files::apply(c) {
            let written: Vec<&str> = lines.iter().map(String::as_str).collect();
            let undo = format!(
                "{}; already done: {}",
                undo_dropin(&[]),
                if written.is_empty() {
                    "nothing".to_string()
                } else {
                    written.join(", ")
                }
            );
            return Err(InstallError::Write { source, undo });
        }
        lines.push(describe(c));
    }
    Ok(lines)
}

/// Runs `install`. `connect` opens the CA (injected so the flow stays synchronous and
/// testable); `now` is unix seconds. Output lines go to `out`, notes and warnings to `err`.
pub fn run(
    opts: &InstallOptions,
    connect: Connect,
    now: i64,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), InstallError> {
    // 1. Local inputs, cheapest and most likely to be wrong first.
    let layout = resolve_layout(opts.etc_dir.as_deref())?;
    let _lock = if opts.dry_run {
        None
    } else {
        Some(lock(&layout, err)?)
    };
    let main_config = opts
        .sshd_config
        .clone()
        .unwrap_or_else(|| layout.main_config());
    let host = hostfile::load(&opts.host_config)?;
    let host_config = absolute("the host config", &opts.host_config)?;
    let sshd_config = match &opts.sshd_config {
        Some(p) => Some(absolute("the sshd config", p)?),
        None => None,
    };
    let passwd = read_passwd(&host)?;
    let previous = state::load(&layout.state())?;
    let mode = if opts.dry_run {
        SshdMode::Skip
    } else {
        resolve_sshd(opts.sshd.as_deref(), opts.etc_dir.is_some())?
    };

    // 2. The bundle.
    let ca = connect(&opts.ca_url).map_err(InstallError::Fetch)?;
    let signed = ca.bundle().map_err(InstallError::Fetch)?;
    let accepted = trust::accept(
        &signed,
        &opts.trust_root,
        now,
        installed(previous.as_ref()).as_ref(),
    )?;
    if let Some(prev) = &previous {
        if prev.trust_root != opts.trust_root {
            writeln!(
                err,
                "note: the pinned trust root changes from {} to {}",
                prev.trust_root, opts.trust_root
            )?;
        }
    }

    // 3. Desired files.
    let mapping = mapping(&host, &passwd, err)?;
    let new_state = State {
        format: STATE_FORMAT,
        ca_url: opts.ca_url.clone(),
        trust_root: opts.trust_root.clone(),
        bundle_version: accepted.bundle.version,
        payload_sha256: accepted.payload_sha256.clone(),
        bundle_expires_at: Some(accepted.bundle.expires_at),
        managed_accounts: mapping.accounts.keys().cloned().collect(),
        // The KRL floor and the enrollment outlive a re-install: dropping the floor would
        // let an older KRL back in, dropping the enrollment would silence check-ins.
        krl: previous.as_ref().and_then(|p| p.krl.clone()),
        host_config: Some(host_config.clone()),
        sshd_config: sshd_config.clone(),
        enrollment: previous.as_ref().and_then(|p| p.enrollment.clone()),
    };
    let units = match units(opts, &layout, &host_config, sshd_config.as_deref())? {
        Ok(units) => units,
        Err(note) => {
            writeln!(err, "{note}")?;
            Vec::new()
        }
    };
    let unit_paths: Vec<PathBuf> = units.iter().map(|d| d.path.clone()).collect();
    let changes = files::plan(desired_files(
        &layout,
        &accepted,
        KrlFile::KeepOrCreateEmpty,
        &mapping,
        previous.as_ref(),
        units,
        &new_state,
    ))?;

    // 4. Dry run: show, touch nothing.
    if opts.dry_run {
        if changes.is_empty() {
            writeln!(out, "no changes")?;
        } else {
            for c in &changes {
                write!(out, "{}", c.unified_diff())?;
            }
            writeln!(
                err,
                "dry run: nothing was written and sshd was not consulted"
            )?;
        }
        return Ok(());
    }

    // 5. Apply, drop-in first and checked.
    if mode == SshdMode::Skip {
        writeln!(
            err,
            "note: sshd not found; skipping the sshd -t / sshd -T checks (allowed because --etc-dir was given)"
        )?;
    }
    let users = check_users(&host, &mapping);
    let lines = apply_checked(&changes, &layout, &mode, &main_config, &users)?;
    if lines.is_empty() {
        writeln!(out, "no changes")?;
    } else {
        for l in &lines {
            writeln!(out, "{l}")?;
        }
        writeln!(
            out,
            "installed trust bundle version {} ({} trusted CA keys)",
            accepted.bundle.version,
            trusted_count(&accepted)
        )?;
    }

    // 6. Reload only if sshd_config changed; enable the timer if its units changed.
    reload_if_dropin_changed(&changes, &layout, opts.no_reload, err)?;
    let mut enable_error = None;
    if changes.iter().any(|c| unit_paths.contains(&c.desired.path)) {
        let by_hand = format!(
            "systemctl daemon-reload && systemctl enable --now {}",
            systemd::TIMER
        );
        if opts.no_reload {
            writeln!(
                err,
                "note: --no-reload: the refresh timer is written, not enabled; run `{by_hand}`"
            )?;
        } else if !systemd::running_under_systemd() {
            writeln!(
                err,
                "note: not running under systemd: the refresh timer is written, not enabled; \
                     once systemd runs, `{by_hand}`"
            )?;
        } else {
            match systemd::enable() {
                Ok(()) => writeln!(err, "enabled {}", systemd::TIMER)?,
                Err(e) => enable_error = Some(e),
            }
        }
    }

    // 7. Check in (a report: its failure is a warning).
    checkin::check_in(ca.as_ref(), &new_state, now, err)?;
    match enable_error {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}
