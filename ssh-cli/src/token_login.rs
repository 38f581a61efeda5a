//! `pedm-ssh login --id-token-file F`: for automation (CI jobs). Reads an ID token of an
//! issuer the CA trusts (`[[trusted_issuers]]`), exchanges it at `POST /v1/auth/token`, then
//! finishes like every other sign-in. The token is a secret: a file readable by anyone but its
//! owner (mode wider than 0600) is refused, and the token never appears in messages.

use crate::app::Ctx;
use crate::cli::LoginArgs;
use crate::escape::escape;
use crate::exit::{self, Exit, Failure};
use crate::{fsutil, keys, paths};
use pedm_api::{Client, TokenExchangeRequest};
use std::path::Path;

/// The longest token accepted from the file.
const MAX_TOKEN_BYTES: u64 = 64 * 1024;

/// Reads the token: a regular file of mode 0600 or narrower, trimmed of surrounding space.
pub fn read_token(path: &Path) -> Result<String, Failure> {
    let fail = |what: String| {
        Failure::new(
            Exit::Usage,
            what,
            "write the ID token to a file of mode 0600 (for example with `umask 077`)",
        )
    };
    let shown = || escape(&path.display().to_string());
    // Opened once, symlinks refused, the mode checked on the file that is read.
    let (file, mode) = fsutil::open_private(path)
        .map_err(|e| fail(format!("cannot read {}: {e}", shown())))?
        .ok_or_else(|| fail(format!("{} does not exist", shown())))?;
    if fsutil::is_wider_than_private(mode) {
        return Err(fail(format!(
            "{} has mode {mode:04o}; an ID token is a secret and its file must not be readable by others",
            shown()
        )));
    }
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut std::io::Read::take(file, MAX_TOKEN_BYTES + 1),
        &mut text,
    )
    .map_err(|e| fail(format!("cannot read {}: {e}", shown())))?;
    if text.len() as u64 > MAX_TOKEN_BYTES {
        return Err(fail(format!(
            "{} is larger than {MAX_TOKEN_BYTES} bytes: not an ID token",
            shown()
        )));
    }
    let token = text.trim().to_string();
    if token.is_empty() || token.split('.').count() != 3 {
        return Err(fail(format!(
            "{} does not hold a compact JWT (three dot-separated parts)",
            escape(&path.display().to_string())
        )));
    }
    Ok(token)
}

/// `pedm-ssh login --id-token-file F`.
pub async fn run(ctx: &Ctx, args: &LoginArgs, token_file: &Path) -> Result<(), Failure> {
    let ca_url = args.ca.trim().to_string();
    let client = Client::new(&ca_url).map_err(|e| exit::from_client(&e, &ca_url))?;
    let id_token = read_token(token_file)?;
    let session_path = paths::session_file(&ctx.env)?;
    let key_path = match &args.key {
        Some(k) => paths::absolute_key(k)?,
        None => paths::default_key(&ctx.env)?,
    };
    let sess = client
        .token_exchange(&TokenExchangeRequest { id_token })
        .await
        .map_err(|e| exit::from_client(&e, &ca_url))?;
    let key = keys::ensure_key(&key_path)?;
    if key.created {
        eprintln!("created a new key {}", key.path.display());
    }
    crate::login::complete(ctx, &client, &ca_url, &session_path, &key, sess).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn token_file_must_be_private_and_a_jwt() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("token");
        std::fs::write(&f, "a.b.c\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_token(&f).unwrap(), "a.b.c");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(read_token(&f).is_err());
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(read_token(&f).is_err());
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert!(read_token(&f).is_ok());
        std::fs::write(&f, "not-a-jwt").unwrap();
        assert!(read_token(&f).is_err());
        assert!(read_token(&dir.path().join("missing")).is_err());
    }
}
