//! File helpers with the permission rules of secrets: created with their final mode (never
//! chmod-ed afterwards, so no moment exists where another user could open them), replaced
//! atomically, and refused when someone widened their mode.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Mode of files only the user may read: private key, session.
pub const PRIVATE_FILE_MODE: u32 = 0o600;
/// Mode of public files: `.pub` key, certificate.
pub const PUBLIC_FILE_MODE: u32 = 0o644;
/// Mode of the directories this tool creates (`~/.ssh`, the config directory).
pub const PRIVATE_DIR_MODE: u32 = 0o700;

/// A file operation failed; names the action and the path.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} {}: {source}", path.display())]
pub struct FsError {
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// Builds a mapper from `io::Error` to [`FsError`] for `action` on `path`.
pub fn ctx<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FsError + 'a {
    move |source| FsError {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Permission bits of a file (without the type bits).
pub fn mode_of(meta: &fs::Metadata) -> u32 {
    meta.mode() & 0o7777
}

/// Whether `mode` grants anything to group or others (wider than 0600 / 0700).
pub fn is_wider_than_private(mode: u32) -> bool {
    mode & 0o077 != 0
}

/// Creates `dir` (and missing parents) with mode 0700 if it does not exist. An existing
/// directory is left as it is. The mode is given to `mkdir` itself, so the directory is
/// never reachable with wider permissions (the umask can only narrow it).
pub fn ensure_private_dir(dir: &Path) -> Result<(), FsError> {
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(FsError {
            action: "use directory",
            path: dir.to_path_buf(),
            source: io::Error::new(
                io::ErrorKind::AlreadyExists,
                "exists and is not a directory",
            ),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::DirBuilder::new()
            .recursive(true)
            .mode(PRIVATE_DIR_MODE)
            .create(dir)
            .map_err(ctx("create directory", dir)),
        Err(e) => Err(ctx("inspect", dir)(e)),
    }
}

/// Creates a new file at `path` with `mode`, failing if anything (file or symlink) is
/// already there, and writes `content` to it, fsynced.
pub fn create_new_file(path: &Path, content: &[u8], mode: u32) -> Result<(), FsError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(ctx("create", path))?;
    file.write_all(content).map_err(ctx("write", path))?;
    file.sync_all().map_err(ctx("write", path))?;
    Ok(())
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The temporary name used while writing `path`: hidden, in the same directory (so the
/// rename is atomic), and unique per process and call.
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.tmp.{}.{n}", std::process::id()))
}

/// Replaces `path` with `content` atomically: a temporary file in the same directory is
/// created with `mode` (never chmod-ed afterwards), written, fsynced, renamed over `path`,
/// and the directory is fsynced. A reader sees the old file or the new one, never a torn
/// one; on any failure the temporary file is removed and `path` is untouched.
pub fn write_atomic(path: &Path, content: &[u8], mode: u32) -> Result<(), FsError> {
    let tmp = temp_path(path);
    let result = create_new_file(&tmp, content, mode)
        .and_then(|()| fs::rename(&tmp, path).map_err(ctx("replace", path)));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
        return result;
    }
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        // Makes the rename durable; a failure here does not undo the replacement.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Opens an existing secret file for reading and checks, on the opened file itself (no race
/// between check and use), that it is a regular file whose mode grants nothing to group or
/// others. Returns `Ok(None)` when the file does not exist.
pub fn open_private(path: &Path) -> Result<Option<(File, u32)>, FsError> {
    // Refuse symlinks: a link planted in our directory could point at another user's file.
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            return Err(FsError {
                action: "use",
                path: path.to_path_buf(),
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "is a symbolic link; replace it with a regular file",
                ),
            })
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ctx("inspect", path)(e)),
    }
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ctx("open", path)(e)),
    };
    let meta = file.metadata().map_err(ctx("inspect", path))?;
    if !meta.is_file() {
        return Err(FsError {
            action: "use",
            path: path.to_path_buf(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "is not a regular file"),
        });
    }
    Ok(Some((file, mode_of(&meta))))
}

/// Removes `path`; `Ok(false)` if it was not there.
pub fn remove_if_exists(path: &Path) -> Result<bool, FsError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(ctx("remove", path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        mode_of(&fs::metadata(path).unwrap())
    }

    #[test]
    fn atomic_write_sets_mode_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        write_atomic(&path, b"one", PRIVATE_FILE_MODE).unwrap();
        write_atomic(&path, b"two", PRIVATE_FILE_MODE).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(mode(&path), 0o600);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("f")]);
    }

    #[test]
    fn failed_atomic_write_leaves_target_and_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        // The target is a non-empty directory: rename over it fails.
        let path = dir.path().join("target");
        fs::create_dir(&path).unwrap();
        fs::write(path.join("inner"), b"x").unwrap();
        assert!(write_atomic(&path, b"new", PRIVATE_FILE_MODE).is_err());
        assert!(path.join("inner").exists());
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("target")]);
    }

    #[test]
    fn private_dir_is_created_0700_and_existing_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("a/b");
        ensure_private_dir(&sub).unwrap();
        assert_eq!(mode(&sub), 0o700);
        assert_eq!(mode(&dir.path().join("a")), 0o700);
        ensure_private_dir(&sub).unwrap();
        let file = dir.path().join("file");
        fs::write(&file, b"").unwrap();
        assert!(ensure_private_dir(&file).is_err());
    }

    #[test]
    fn create_new_refuses_existing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        create_new_file(&path, b"1", 0o600).unwrap();
        assert_eq!(mode(&path), 0o600);
        assert!(create_new_file(&path, b"2", 0o600).is_err());
        assert_eq!(fs::read(&path).unwrap(), b"1");
    }

    #[test]
    fn open_private_reports_mode_absent_and_symlink() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        assert!(open_private(&path).unwrap().is_none());
        fs::write(&path, b"x").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let (_, m) = open_private(&path).unwrap().unwrap();
        assert_eq!(m, 0o640);
        assert!(is_wider_than_private(m));
        assert!(!is_wider_than_private(0o600));
        assert!(!is_wider_than_private(0o400));
        let link = dir.path().join("l");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(open_private(&link).is_err());
    }
}
