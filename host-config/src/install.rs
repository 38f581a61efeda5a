//! `pedm-host-config install`: fetch and accept the trust bundle, compute every managed file,
//! show or apply the difference, and prove with sshd that the drop-in is effective before
//! anything else is written.
//!
//! Order of effects, chosen so a refusal at any step leaves the host as it was:
//! 1. all inputs (paths, host.toml, passwd, state, bundle) are read and checked: nothing written;
//! 2. the drop-in is replaced and sshd checks it; on failure the previous drop-in is put back;
//! 3. the data files (CA keys, KRL, principals, removals) are written;
//! 4. state.json is written last, so it never claims more than is installed;
//! 5. sshd is reloaded if the drop-in changed (the data files are read per connection).

use crate::files::{self, Change, Desired, FileError};
use crate::hostfile::{self, HostConfig, HostFileError};
use crate::layout::{Layout, LayoutError};
use crate::principals::{self, Mapping};
use crate::sshd::{self, SshdError};
use crate::state::{self, State, StateError, STATE_FORMAT};
use crate::trust::{self, AcceptError, Accepted, Installed};
use pedm_api::{ClientError, SignedBundle};
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
    pub dry_run: bool,
    pub no_reload: bool,
}

/// Why `install` stopped.
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

/// Every file as it should be after the run, in write order: drop-in, CA keys, KRL (only if
/// absent: a later refresh owns its content), principals files, removals of principals
/// files we wrote earlier for accounts no longer mapped, and state.json last.
pub fn desired_files(
    layout: &Layout,
    accepted: &Accepted,
    mapping: &Mapping,
    previous: Option<&State>,
    state: &State,
) -> Vec<Desired> {
    let mut out = vec![
        Desired::file(layout.dropin(), sshd::dropin_text(layout)),
        Desired::file(layout.ca_keys(), accepted.bundle.trusted_user_ca_keys()),
    ];
    if !layout.krl().exists() {
        out.push(Desired::file(layout.krl(), ""));
    }
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
    out.push(Desired::file(layout.state(), state.to_json()));
    out
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

/// Runs `install`. `fetch` gets the signed bundle from the CA URL (injected so the flow stays
/// synchronous and testable); `now` is unix seconds. Output lines go to `out`, notes and
/// warnings to `err`.
pub fn run(
    opts: &InstallOptions,
    fetch: impl FnOnce(&str) -> Result<SignedBundle, ClientError>,
    now: i64,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), InstallError> {
    // 1. Local inputs, cheapest and most likely to be wrong first.
    let layout = resolve_layout(opts.etc_dir.as_deref())?;
    let main_config = opts
        .sshd_config
        .clone()
        .unwrap_or_else(|| layout.main_config());
    let host = hostfile::load(&opts.host_config)?;
    let passwd = read_passwd(&host)?;
    let previous = state::load(&layout.state())?;
    let mode = if opts.dry_run {
        SshdMode::Skip
    } else {
        resolve_sshd(opts.sshd.as_deref(), opts.etc_dir.is_some())?
    };

    // 2. The bundle.
    let signed = fetch(&opts.ca_url).map_err(InstallError::Fetch)?;
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
    let mapping = principals::map_accounts(&passwd, &host);
    for w in &mapping.warnings {
        writeln!(err, "warning: {}: {w}", host.passwd_file.display())?;
    }
    let (passwd_entries, _) = principals::parse_passwd(&passwd);
    for account in host.accounts.keys() {
        if !passwd_entries.iter().any(|e| &e.name == account) {
            writeln!(
                err,
                "warning: accounts.{account}: no such account in {}; its principals file is written anyway",
                host.passwd_file.display()
            )?;
        }
    }
    let new_state = State {
        format: STATE_FORMAT,
        ca_url: opts.ca_url.clone(),
        trust_root: opts.trust_root.clone(),
        bundle_version: accepted.bundle.version,
        payload_sha256: accepted.payload_sha256.clone(),
        managed_accounts: mapping.accounts.keys().cloned().collect(),
    };
    let changes = files::plan(desired_files(
        &layout,
        &accepted,
        &mapping,
        previous.as_ref(),
        &new_state,
    ))?;
    let trusted = accepted
        .bundle
        .keys
        .iter()
        .filter(|k| k.state.trusted())
        .count();

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
        return Ok(());
    }
    for l in &lines {
        writeln!(out, "{l}")?;
    }
    writeln!(
        out,
        "installed trust bundle version {} ({trusted} trusted CA keys)",
        accepted.bundle.version
    )?;

    // 6. Reload only if sshd_config changed.
    if changes.iter().any(|c| c.desired.path == layout.dropin()) {
        if opts.no_reload {
            writeln!(
                err,
                "note: --no-reload: sshd applies the new drop-in at its next reload (SIGHUP)"
            )?;
        } else {
            match sshd::reload()? {
                sshd::Reload::Systemd(unit) => writeln!(err, "reloaded {unit}")?,
                sshd::Reload::Manual => writeln!(
                    err,
                    "sshd must be reloaded (send it SIGHUP) for {} to apply",
                    layout.dropin().display()
                )?,
            }
        }
    }
    Ok(())
}
