//! Desired-versus-current comparison, unified diffs, and crash-safe file replacement.
//!
//! sshd reads the CA keys, principals and KRL on every connection, and a missing or torn
//! `RevokedKeys` file refuses every key, so no reader may ever see a half-written file:
//! every write goes to a temporary file in the same directory, is fsynced, gets its final
//! mode, and is renamed over the target; then the directory is fsynced so the rename
//! survives a crash.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Mode of every public file this tool writes (sshd only needs to read them; group- or
/// world-writable files would be refused under `StrictModes`).
pub const FILE_MODE: u32 = 0o644;
/// Mode of every directory this tool creates.
pub const DIR_MODE: u32 = 0o755;

/// A file operation failed; names the path.
#[derive(Debug, thiserror::Error)]
#[error("{action} {path}: {source}")]
pub struct FileError {
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

fn ctx<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FileError + 'a {
    move |source| FileError {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// What a file should be after the run: `Some(content)` with `mode`, or `None` for absent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub path: PathBuf,
    pub content: Option<Vec<u8>>,
    pub mode: u32,
}

impl Desired {
    /// A file that should exist with `content` and [`FILE_MODE`].
    pub fn file(path: PathBuf, content: impl Into<Vec<u8>>) -> Self {
        Self {
            path,
            content: Some(content.into()),
            mode: FILE_MODE,
        }
    }

    /// A file that should not exist.
    pub fn absent(path: PathBuf) -> Self {
        Self {
            path,
            content: None,
            mode: FILE_MODE,
        }
    }
}

/// What a file is now: content and permission bits, or absent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Current {
    pub content: Option<Vec<u8>>,
    pub mode: Option<u32>,
}

/// Reads the current content and mode of `path` (absent if it does not exist).
pub fn read_current(path: &Path) -> Result<Current, FileError> {
    match fs::read(path) {
        Ok(content) => {
            let mode = fs::metadata(path)
                .map_err(ctx("cannot stat", path))?
                .permissions()
                .mode()
                & 0o7777;
            Ok(Current {
                content: Some(content),
                mode: Some(mode),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Current {
            content: None,
            mode: None,
        }),
        Err(e) => Err(ctx("cannot read", path)(e)),
    }
}

/// A file whose current state differs from the desired one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub desired: Desired,
    pub current: Current,
}

impl Change {
    /// Whether the change removes the file.
    pub fn is_removal(&self) -> bool {
        self.desired.content.is_none()
    }

    /// A unified diff of the change; new files are shown against empty, removed ones against
    /// empty too. A mode-only change shows as a `# mode` line.
    pub fn unified_diff(&self) -> String {
        let path = self.desired.path.display().to_string();
        let old = self
            .current
            .content
            .as_deref()
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        let new = self
            .desired
            .content
            .as_deref()
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        let (from, to) = match (&self.current.content, &self.desired.content) {
            (None, _) => ("/dev/null".to_string(), path.clone()),
            (_, None) => (path.clone(), "/dev/null".to_string()),
            _ => (path.clone(), path.clone()),
        };
        let mut out = format!("--- {from}\n+++ {to}\n");
        match (self.current.mode, &self.desired.content) {
            (Some(m), Some(_)) if m != self.desired.mode => {
                out.push_str(&format!("# mode {m:04o} -> {:04o}\n", self.desired.mode));
            }
            (None, Some(c)) if c.is_empty() => out.push_str("# new empty file\n"),
            _ => {}
        }
        let diff = similar::TextDiff::from_lines(old.as_ref(), new.as_ref());
        for hunk in diff.unified_diff().context_radius(3).iter_hunks() {
            out.push_str(&hunk.to_string());
        }
        if !out.ends_with('\n') {
            out.push('\n');
        }
        out
    }
}

/// Compares each desired file with the disk and keeps only those that differ, in order.
pub fn plan(desired: Vec<Desired>) -> Result<Vec<Change>, FileError> {
    let mut changes = Vec::new();
    for d in desired {
        let current = read_current(&d.path)?;
        let same = match (&current.content, &d.content) {
            (None, None) => true,
            (Some(have), Some(want)) => have == want && current.mode == Some(d.mode),
            _ => false,
        };
        if !same {
            changes.push(Change {
                desired: d,
                current,
            });
        }
    }
    Ok(changes)
}

/// Creates `dir` and missing parents with [`DIR_MODE`], fsyncing each new directory's parent.
/// Returns the directories it created, outermost first (so a caller can undo them).
pub fn ensure_dir(dir: &Path) -> Result<Vec<PathBuf>, FileError> {
    let mut missing = Vec::new();
    let mut cur = Some(dir);
    while let Some(d) = cur {
        if d.exists() {
            break;
        }
        missing.push(d.to_path_buf());
        cur = d.parent();
    }
    missing.reverse();
    for d in &missing {
        match fs::DirBuilder::new().mode(DIR_MODE).create(d) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(ctx("cannot create directory", d)(e)),
        }
        // The umask may have narrowed the mode.
        fs::set_permissions(d, fs::Permissions::from_mode(DIR_MODE))
            .map_err(ctx("cannot chmod", d))?;
        if let Some(parent) = d.parent() {
            sync_dir(parent)?;
        }
    }
    Ok(missing)
}

/// fsyncs a directory so renames and unlinks in it are durable.
pub fn sync_dir(dir: &Path) -> Result<(), FileError> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(ctx("cannot fsync directory", dir))
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Replaces `path` atomically with `content` and `mode`. The parent directory must exist.
/// The temporary name starts with a dot and does not end in `.conf`, so neither sshd's
/// `Include *.conf` nor a `principals/%u` lookup can ever pick it up.
pub fn atomic_write(path: &Path, content: &[u8], mode: u32) -> Result<(), FileError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.pedm-tmp.{}.{}",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(ctx("cannot create temporary file", &tmp))?;
        f.write_all(content).map_err(ctx("cannot write", &tmp))?;
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(ctx("cannot chmod", &tmp))?;
        f.sync_all().map_err(ctx("cannot fsync", &tmp))?;
        drop(f);
        fs::rename(&tmp, path).map_err(ctx("cannot rename into place", path))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// An exclusive lock held for one run that writes; released when dropped.
///
/// install, refresh (the timer) and enroll each read state.json, compute, and write it back:
/// two runs interleaving would lose one's update (an enrollment, a KRL version). They all
/// lock the sshd configuration directory itself (flock on a directory handle), which exists
/// before the first install, so taking the lock creates nothing.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

/// Takes [`RunLock`] on `dir`, waiting for another run to finish; `waiting` is called once
/// if the lock is busy, so the caller can say why it pauses.
pub fn lock_dir(dir: &Path, waiting: impl FnOnce()) -> Result<RunLock, FileError> {
    let file = File::open(dir).map_err(ctx("cannot open for locking", dir))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            waiting();
            file.lock().map_err(ctx("cannot lock", dir))?;
        }
        Err(fs::TryLockError::Error(e)) => return Err(ctx("cannot lock", dir)(e)),
    }
    Ok(RunLock { _file: file })
}

/// Removes `path` durably; an already absent file is fine.
pub fn remove(path: &Path) -> Result<(), FileError> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ctx("cannot remove", path)(e)),
    }
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Applies one change: writes (creating the parent directory if needed) or removes.
pub fn apply(change: &Change) -> Result<(), FileError> {
    match &change.desired.content {
        Some(content) => {
            if let Some(parent) = change.desired.path.parent() {
                ensure_dir(parent)?;
            }
            atomic_write(&change.desired.path, content, change.desired.mode)
        }
        None => remove(&change.desired.path),
    }
}

/// Puts a file back as it was before a change (content and mode), or removes it if it was
/// absent. Used to undo the drop-in when sshd's checks fail.
pub fn restore(path: &Path, previous: &Current) -> Result<(), FileError> {
    match &previous.content {
        Some(content) => atomic_write(path, content, previous.mode.unwrap_or(FILE_MODE)),
        None => remove(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_sets_content_and_mode_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.conf");
        atomic_write(&p, b"one\n", 0o644).unwrap();
        atomic_write(&p, b"two\n", 0o644).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two\n");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o644
        );
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("f.conf")]);
    }

    #[test]
    fn plan_keeps_only_differences() {
        let dir = tempfile::tempdir().unwrap();
        let same = dir.path().join("same");
        let other = dir.path().join("other");
        let wrong_mode = dir.path().join("mode");
        let gone = dir.path().join("gone");
        atomic_write(&same, b"x\n", 0o644).unwrap();
        atomic_write(&other, b"x\n", 0o644).unwrap();
        atomic_write(&wrong_mode, b"x\n", 0o666).unwrap();
        let changes = plan(vec![
            Desired::file(same.clone(), "x\n"),
            Desired::file(other.clone(), "y\n"),
            Desired::file(wrong_mode.clone(), "x\n"),
            Desired::absent(gone.clone()),
            Desired::file(dir.path().join("new"), ""),
            Desired::absent(same.clone()),
        ])
        .unwrap();
        let paths: Vec<_> = changes.iter().map(|c| c.desired.path.clone()).collect();
        assert_eq!(paths, vec![other, wrong_mode, dir.path().join("new"), same]);
        assert!(changes[1].unified_diff().contains("# mode 0666 -> 0644"));
        assert!(changes[2].unified_diff().contains("--- /dev/null"));
        assert!(changes[3].is_removal());
    }

    #[test]
    fn diff_shows_lines() {
        let c = Change {
            desired: Desired::file("/x/p".into(), "a\nc\n"),
            current: Current {
                content: Some(b"a\nb\n".to_vec()),
                mode: Some(0o644),
            },
        };
        let d = c.unified_diff();
        assert!(d.starts_with("--- /x/p\n+++ /x/p\n"), "{d}");
        assert!(d.contains("-b\n") && d.contains("+c\n"), "{d}");
    }

    #[test]
    fn ensure_dir_creates_with_mode_and_reports_what_it_made() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b");
        let made = ensure_dir(&deep).unwrap();
        assert_eq!(made, vec![dir.path().join("a"), deep.clone()]);
        assert_eq!(
            fs::metadata(&deep).unwrap().permissions().mode() & 0o777,
            0o755
        );
        assert!(ensure_dir(&deep).unwrap().is_empty());
    }

    #[test]
    fn the_run_lock_excludes_a_second_holder_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock_dir(dir.path(), || panic!("the first lock must not wait")).unwrap();
        let probe = File::open(dir.path()).unwrap();
        assert!(matches!(
            probe.try_lock(),
            Err(fs::TryLockError::WouldBlock)
        ));
        drop(held);
        probe.try_lock().unwrap();
    }

    #[test]
    fn restore_puts_back_or_removes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.conf");
        atomic_write(&p, b"new", 0o644).unwrap();
        restore(
            &p,
            &Current {
                content: Some(b"old".to_vec()),
                mode: Some(0o600),
            },
        )
        .unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"old");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        restore(
            &p,
            &Current {
                content: None,
                mode: None,
            },
        )
        .unwrap();
        assert!(!p.exists());
    }
}
