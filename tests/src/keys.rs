//! User keys and certificates, through OpenSSH's own `ssh-keygen`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// An Ed25519 key pair made by `ssh-keygen`.
#[derive(Clone, Debug)]
pub struct UserKey {
    /// The private key file.
    pub private: PathBuf,
    /// `<private>.pub`.
    pub public: PathBuf,
}

impl UserKey {
    /// `ssh-keygen -q -t ed25519 -N '' -C COMMENT -f PATH`.
    pub fn generate(path: &Path) -> Result<UserKey> {
        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "pedm-e2e", "-f"])
            .arg(path)
            .stdin(Stdio::null())
            .output()
            .context("running ssh-keygen")?;
        if !out.status.success() {
            bail!(
                "ssh-keygen -f {} failed: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut public = path.as_os_str().to_owned();
        public.push(".pub");
        Ok(UserKey {
            private: path.to_path_buf(),
            public: PathBuf::from(public),
        })
    }

    /// `SHA256:…` of the public key, from `ssh-keygen -l`.
    pub fn fingerprint(&self) -> Result<String> {
        fingerprint(&self.public)
    }
}

/// `SHA256:…` of a public key (or certificate) file, from `ssh-keygen -l -E sha256 -f`.
pub fn fingerprint(file: &Path) -> Result<String> {
    let out = Command::new("ssh-keygen")
        .args(["-l", "-E", "sha256", "-f"])
        .arg(file)
        .stdin(Stdio::null())
        .output()
        .context("running ssh-keygen -l")?;
    if !out.status.success() {
        bail!(
            "ssh-keygen -l -f {} failed: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .find(|w| w.starts_with("SHA256:"))
        .map(str::to_string)
        .with_context(|| format!("no SHA256 fingerprint in {text:?}"))
}

/// A certificate as `ssh-keygen -L` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// The `Type:` line, e.g. `ssh-ed25519-cert-v01@openssh.com user certificate`.
    pub cert_type: String,
    /// `SHA256:…` of the certified public key.
    pub public_key_fingerprint: String,
    /// `SHA256:…` of the signing CA key.
    pub signing_ca: String,
    /// The key ID, without the quotes.
    pub key_id: String,
    pub serial: u64,
    /// Unix seconds; `None` for `always` / `forever` or a form not understood.
    pub valid_after: Option<i64>,
    pub valid_before: Option<i64>,
    pub principals: Vec<String>,
    pub critical_options: Vec<String>,
    pub extensions: Vec<String>,
    /// The whole output, for messages.
    pub text: String,
}

/// Runs `ssh-keygen -L -f FILE` (with `TZ=UTC`, so times are UTC) and parses the output.
/// Fails when ssh-keygen cannot parse the certificate.
pub fn inspect_cert(file: &Path) -> Result<CertInfo> {
    let out = Command::new("ssh-keygen")
        .args(["-L", "-f"])
        .arg(file)
        .env("TZ", "UTC")
        .stdin(Stdio::null())
        .output()
        .context("running ssh-keygen -L")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "ssh-keygen -L -f {} cannot parse the certificate ({}): {}{}",
            file.display(),
            out.status,
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_cert_listing(&text).with_context(|| format!("ssh-keygen -L output:\n{text}"))
}

/// Parses the output of `ssh-keygen -L`.
pub fn parse_cert_listing(text: &str) -> Result<CertInfo> {
    let mut info = CertInfo {
        cert_type: String::new(),
        public_key_fingerprint: String::new(),
        signing_ca: String::new(),
        key_id: String::new(),
        serial: 0,
        valid_after: None,
        valid_before: None,
        principals: Vec::new(),
        critical_options: Vec::new(),
        extensions: Vec::new(),
        text: text.to_string(),
    };
    let mut serial = None;
    // The list section that indented lines belong to.
    let mut section: Option<&str> = None;
    for line in text.lines().skip(1) {
        let indent = line.len() - line.trim_start().len();
        let body = line.trim();
        if body.is_empty() {
            continue;
        }
        if indent > 8 {
            let item = body.to_string();
            match section {
                Some("Principals") => info.principals.push(item),
                Some("Critical Options") => info.critical_options.push(item),
                Some("Extensions") => info.extensions.push(item),
                _ => bail!("unexpected indented line {line:?}"),
            }
            continue;
        }
        let (key, value) = body
            .split_once(':')
            .with_context(|| format!("unexpected line {line:?}"))?;
        let value = value.trim();
        section = None;
        match key {
            "Type" => info.cert_type = value.to_string(),
            "Public key" => {
                info.public_key_fingerprint = value
                    .split_whitespace()
                    .find(|w| w.starts_with("SHA256:"))
                    .unwrap_or_default()
                    .to_string()
            }
            "Signing CA" => {
                info.signing_ca = value
                    .split_whitespace()
                    .find(|w| w.starts_with("SHA256:"))
                    .unwrap_or_default()
                    .to_string()
            }
            "Key ID" => {
                info.key_id = value
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .with_context(|| format!("Key ID not quoted: {value:?}"))?
                    .to_string()
            }
            "Serial" => serial = Some(value.parse::<u64>().context("Serial")?),
            "Valid" => {
                if let Some(range) = value.strip_prefix("from ") {
                    let (a, b) = range
                        .split_once(" to ")
                        .with_context(|| format!("Valid: {value:?}"))?;
                    info.valid_after = parse_utc(a);
                    info.valid_before = parse_utc(b);
                }
            }
            "Principals" | "Critical Options" | "Extensions" => {
                section = Some(key);
                if !value.is_empty() && value != "(none)" {
                    bail!("unexpected value on {key:?}: {value:?}");
                }
            }
            _ => {}
        }
    }
    info.serial = serial.context("no Serial line")?;
    if info.key_id.is_empty() && !text.contains("Key ID: \"\"") {
        bail!("no Key ID line");
    }
    Ok(info)
}

/// `YYYY-MM-DDTHH:MM:SS` (UTC) to Unix seconds.
pub fn parse_utc(s: &str) -> Option<i64> {
    let (date, time) = s.trim().split_once('T')?;
    let d: Vec<i64> = date
        .split('-')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let t: Vec<i64> = time
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    if d.len() != 3 || t.len() != 3 {
        return None;
    }
    Some(days_from_civil(d[0], d[1], d[2]) * 86_400 + t[0] * 3600 + t[1] * 60 + t[2])
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Now, in Unix seconds.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_times() {
        assert_eq!(parse_utc("1970-01-01T00:00:00"), Some(0));
        assert_eq!(parse_utc("2000-03-01T00:00:01"), Some(951_868_801));
        assert_eq!(parse_utc("2024-02-29T23:59:59"), Some(1_709_251_199));
        assert_eq!(parse_utc("forever"), None);
    }

    #[test]
    fn listing() {
        let text = "c.pub:\n        Type: ssh-ed25519-cert-v01@openssh.com user certificate\n        Public key: ED25519-CERT SHA256:abc\n        Signing CA: ED25519 SHA256:def (using ssh-ed25519)\n        Key ID: \"break-glass serial=2\"\n        Serial: 2\n        Valid: from 2026-12-04T01:25:10 to 2026-12-04T01:26:13\n        Principals: \n                break-glass\n                other\n        Critical Options: (none)\n        Extensions: \n                permit-pty\n";
        let c = parse_cert_listing(text).unwrap();
        assert_eq!(c.key_id, "break-glass serial=2");
        assert_eq!(c.serial, 2);
        assert_eq!(c.signing_ca, "SHA256:def");
        assert_eq!(c.public_key_fingerprint, "SHA256:abc");
        assert_eq!(c.principals, ["break-glass", "other"]);
        assert!(c.critical_options.is_empty());
        assert_eq!(c.extensions, ["permit-pty"]);
        assert_eq!(c.valid_before.unwrap() - c.valid_after.unwrap(), 63);
    }
}
