//! The sshd host key as this host's identity towards the CA: reading the public key,
//! its `SHA256:` fingerprint, and SSHSIG signatures made by `ssh-keygen -Y sign`.
//!
//! The private key never leaves its file and this process never parses it: `ssh-keygen`
//! reads it and signs. Only Ed25519 host keys are accepted, because that is what the CA
//! verifies check-ins with; a host without one is refused at enrollment, before its
//! one-time token is spent.

use base64::Engine as _;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The only host key type accepted.
pub const ED25519: &str = "ssh-ed25519";

/// Why a host key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HostKeyError {
    #[error(
        "cannot read the host public key {path}: {source}; pass the right file with --host-key"
    )]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not an OpenSSH public key ({message}); pass the .pub file with --host-key")]
    Malformed { path: PathBuf, message: String },
    #[error(
        "{path} holds a key of type {found}; only Ed25519 host keys can sign check-ins: generate one with \
         `ssh-keygen -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key` and add it as a HostKey"
    )]
    NotEd25519 { path: PathBuf, found: String },
    #[error("--host-key {0} does not end in .pub, so the private key next to it is unknown; pass the public key file")]
    NotPub(PathBuf),
    #[error("cannot run ssh-keygen: {0}; install openssh-client")]
    Spawn(#[source] std::io::Error),
    #[error("`ssh-keygen {args}` failed: {message}")]
    Keygen { args: String, message: String },
    #[error(
        "the private key {private} does not belong to {public} (its public key is {found}, not \
         {expected}); point --host-key at the .pub of the key sshd uses"
    )]
    Mismatch {
        private: PathBuf,
        public: PathBuf,
        found: String,
        expected: String,
    },
}

/// A parsed Ed25519 public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPublicKey {
    /// `ssh-ed25519 BASE64`, without comment.
    pub line: String,
    /// `SHA256:` + unpadded base64 of the SHA-256 of the key blob, as `ssh-keygen -l` prints.
    pub fingerprint: String,
}

/// Reads one SSH wire string at `*pos`.
fn wire_string<'a>(blob: &'a [u8], pos: &mut usize) -> Option<&'a [u8]> {
    let len_bytes: [u8; 4] = blob.get(*pos..*pos + 4)?.try_into().ok()?;
    let len = u32::from_be_bytes(len_bytes) as usize;
    let start = *pos + 4;
    let s = blob.get(start..start.checked_add(len)?)?;
    *pos = start + len;
    Some(s)
}

/// Parses an OpenSSH public key line (`TYPE BASE64 [COMMENT]`) and checks it is Ed25519:
/// the blob must be exactly `string "ssh-ed25519"`, `string key[32]`. `path` labels errors.
pub fn parse_public(text: &str, path: &Path) -> Result<HostPublicKey, HostKeyError> {
    let malformed = |message: &str| HostKeyError::Malformed {
        path: path.to_path_buf(),
        message: message.to_string(),
    };
    let mut words = text.split_whitespace();
    let kind = words.next().ok_or_else(|| malformed("the file is empty"))?;
    let b64 = words
        .next()
        .ok_or_else(|| malformed("no base64 key after the type"))?;
    if kind != ED25519 {
        return Err(HostKeyError::NotEd25519 {
            path: path.to_path_buf(),
            found: kind.to_string(),
        });
    }
    let blob = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| malformed("the key is not base64"))?;
    let mut pos = 0;
    let inner = wire_string(&blob, &mut pos).ok_or_else(|| malformed("truncated key blob"))?;
    if inner != ED25519.as_bytes() {
        return Err(malformed("the key blob does not match its type"));
    }
    let key = wire_string(&blob, &mut pos).ok_or_else(|| malformed("truncated key blob"))?;
    if key.len() != 32 || pos != blob.len() {
        return Err(malformed("an Ed25519 key blob holds exactly 32 key bytes"));
    }
    let digest = Sha256::digest(&blob);
    Ok(HostPublicKey {
        line: format!("{ED25519} {b64}"),
        fingerprint: format!(
            "SHA256:{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
        ),
    })
}

/// Reads and parses a public key file.
pub fn read_public(path: &Path) -> Result<HostPublicKey, HostKeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| HostKeyError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_public(&text, path)
}

/// The private key next to a `.pub` file.
pub fn private_of(public: &Path) -> Result<PathBuf, HostKeyError> {
    let name = public
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match name.strip_suffix(".pub") {
        Some(stem) if !stem.is_empty() => Ok(public.with_file_name(stem)),
        _ => Err(HostKeyError::NotPub(public.to_path_buf())),
    }
}

fn keygen(args: &[&str], key: &Path, stdin: Option<&[u8]>) -> Result<String, HostKeyError> {
    let shown = format!("{} {}", args.join(" "), key.display());
    let mut child = Command::new("ssh-keygen")
        .args(args)
        .arg(key)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Sign with the file's key, never with whatever an agent offers.
        .env_remove("SSH_AUTH_SOCK")
        .spawn()
        .map_err(HostKeyError::Spawn)?;
    if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A write error shows up as ssh-keygen's failure below.
        let _ = pipe.write_all(data);
    }
    let out = child.wait_with_output().map_err(HostKeyError::Spawn)?;
    if !out.status.success() {
        return Err(HostKeyError::Keygen {
            args: shown,
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Checks that the private key file `private` belongs to `expected` (by fingerprint), with
/// `ssh-keygen -y`, so a key mix-up is found before a token is spent or a check-in is sent.
pub fn check_private(
    private: &Path,
    public_path: &Path,
    expected: &str,
) -> Result<(), HostKeyError> {
    let line = keygen(&["-y", "-f"], private, None)?;
    let found = parse_public(&line, private)?.fingerprint;
    if found != expected {
        return Err(HostKeyError::Mismatch {
            private: private.to_path_buf(),
            public: public_path.to_path_buf(),
            found,
            expected: expected.to_string(),
        });
    }
    Ok(())
}

/// `ssh-keygen -Y sign -n NAMESPACE -f KEY` over `data` (on stdin); returns the armored
/// SSHSIG.
pub fn sign(private: &Path, namespace: &str, data: &[u8]) -> Result<String, HostKeyError> {
    let sig = keygen(&["-Y", "sign", "-n", namespace, "-f"], private, Some(data))?;
    if !sig.starts_with("-----BEGIN SSH SIGNATURE-----") {
        return Err(HostKeyError::Keygen {
            args: format!("-Y sign -n {namespace} -f {}", private.display()),
            message: "it printed no SSH signature".into(),
        });
    }
    Ok(sig)
}

/// `[a-z0-9.-]{1,253}`, not starting or ending with `.` or `-`: the host names the CA
/// accepts in coverage reports.
pub fn is_valid_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && !name.starts_with(['.', '-'])
        && !name.ends_with(['.', '-'])
}

/// The kernel's host name, lower-cased (DNS names are case-insensitive, the CA's form is
/// lower case), or `None` if it cannot be read.
pub fn system_host_name() -> Option<String> {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    // `ssh-keygen -lf` of this key prints SHA256:HJpiCliD3CHa4d2328sftHSyefbAmGnWvXaazSR2e44.
    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOXYZdD6NFs5xuonyYWRg8nmENg3N/xT5t4oKaoVX76o root@vm\n";

    #[test]
    fn fingerprint_matches_ssh_keygen() {
        let k = parse_public(KEY, Path::new("k.pub")).unwrap();
        assert_eq!(
            k.fingerprint,
            "SHA256:HJpiCliD3CHa4d2328sftHSyefbAmGnWvXaazSR2e44"
        );
        assert_eq!(
            k.line,
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOXYZdD6NFs5xuonyYWRg8nmENg3N/xT5t4oKaoVX76o"
        );
    }

    #[test]
    fn other_types_and_broken_blobs_are_refused() {
        let p = Path::new("k.pub");
        assert!(matches!(
            parse_public("ecdsa-sha2-nistp256 AAAAE2VjZHNh x\n", p),
            Err(HostKeyError::NotEd25519 { .. })
        ));
        assert!(matches!(
            parse_public("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOXY\n", p),
            Err(HostKeyError::Malformed { .. })
        ));
        assert!(matches!(
            parse_public("", p),
            Err(HostKeyError::Malformed { .. })
        ));
        // An RSA blob under an ed25519 label.
        assert!(matches!(
            parse_public("ssh-ed25519 AAAAB3NzaC1yc2EAAAADAQABAAABAQ==\n", p),
            Err(HostKeyError::Malformed { .. })
        ));
    }

    #[test]
    fn private_key_is_the_pub_files_stem() {
        assert_eq!(
            private_of(Path::new("/etc/ssh/ssh_host_ed25519_key.pub")).unwrap(),
            Path::new("/etc/ssh/ssh_host_ed25519_key")
        );
        assert!(private_of(Path::new("/etc/ssh/ssh_host_ed25519_key")).is_err());
        assert!(private_of(Path::new("/etc/ssh/.pub")).is_err());
    }

    #[test]
    fn host_names() {
        for ok in ["web-1", "web-1.example.com", "a", "10.0.0.1"] {
            assert!(is_valid_host_name(ok), "{ok}");
        }
        for bad in ["", "Web", "web_1", "-web", "web.", "a b", &"a".repeat(254)] {
            assert!(!is_valid_host_name(bad), "{bad}");
        }
    }
}
