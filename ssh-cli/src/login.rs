//! `pedm-ssh login`: the browser sign-in of the design (RFC 8252 loopback redirect, with
//! the CA as the OpenID Connect client), then the first certificate.
//!
//! Order matters: the CA URL is checked before anything is written (a refused URL leaves no
//! key and no file behind), the listener is bound before the login starts at the CA (the
//! redirect URI names its port), and the session is saved before the certificate is asked
//! for (a failed certificate request can be retried with `pedm-ssh cert`).

use crate::app::Ctx;
use crate::browser;
use crate::callback::{Listener, LOGIN_TIMEOUT};
use crate::cli::LoginArgs;
use crate::escape::{escape, escape_list};
use crate::exit::{self, Exit, Failure};
use crate::session::{self, SessionFile};
use crate::{issue, keys, paths, timefmt};
use pedm_api::{Client, OidcFinishRequest, OidcStartRequest};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// The secret that binds the end of a login to its start.
///
/// It is 32 bytes from the operating system's RNG, written as 64 lowercase hex characters;
/// that **text** is the `login_secret` sent to `/v1/auth/oidc/finish`. The CA is told only
/// `login_secret_sha256` at `/v1/auth/oidc/start`, defined as
/// `lowercase_hex(SHA-256(login_secret.as_bytes()))`: the SHA-256 over the 64 ASCII bytes of
/// the hex text, not over the 32 raw bytes. Whoever sees the authorization code in a browser
/// history cannot redeem it without this secret, which never leaves this process but to
/// the CA.
pub struct LoginSecret(String);

impl LoginSecret {
    /// Draws a fresh secret from the OS RNG.
    pub fn generate() -> Result<Self, rand::Error> {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.try_fill_bytes(&mut bytes)?;
        Ok(Self(hex::encode(bytes)))
    }

    /// Wraps 32 given bytes (for tests and known-answer checks).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(hex::encode(bytes))
    }

    /// The 64-character lowercase hex text sent at finish.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `lowercase_hex(SHA-256(self.as_str().as_bytes()))`, sent at start.
    pub fn sha256_hex(&self) -> String {
        hex::encode(Sha256::digest(self.0.as_bytes()))
    }
}

impl std::fmt::Debug for LoginSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LoginSecret(<redacted>)")
    }
}

/// `pedm-ssh login`.
pub async fn run(ctx: &Ctx, args: &LoginArgs) -> Result<(), Failure> {
    if let Some(file) = &args.id_token_file {
        return crate::token_login::run(ctx, args, file).await;
    }
    if args.device {
        return crate::device::run(ctx, args).await;
    }
    let ca_url = args.ca.trim().to_string();
    // 1. The URL first: a refused CA must leave nothing behind.
    let client = Client::new(&ca_url).map_err(|e| exit::from_client(&e, &ca_url))?;
    let session_path = paths::session_file(&ctx.env)?;
    let key_path = match &args.key {
        Some(k) => paths::absolute_key(k)?,
        None => paths::default_key(&ctx.env)?,
    };
    // 2. The key.
    let key = keys::ensure_key(&key_path)?;
    if key.created {
        eprintln!("created a new key {}", key.path.display());
    }
    // 3. How this CA signs people in, and our listener.
    let info = client
        .auth_info()
        .await
        .map_err(|e| exit::from_client(&e, &ca_url))?;
    if !info.browser {
        return Err(Failure::new(
            Exit::Error,
            format!(
                "the CA at {} does not offer browser sign-in",
                escape(&ca_url)
            ),
            "ask the CA operator to configure [oidc], or check the --ca URL",
        ));
    }
    let listener = Listener::bind(info.redirect_port.unwrap_or(0))
        .await
        .map_err(|e| exit::from_callback(&e, &ca_url))?;
    // 4. Start the login with our redirect URI and the hash of the secret.
    let secret = LoginSecret::generate().map_err(|e| {
        Failure::new(
            Exit::Error,
            format!("the operating system's random number generator failed: {e}"),
            "try again",
        )
    })?;
    let start = client
        .oidc_start(&OidcStartRequest {
            redirect_uri: listener.redirect_uri(),
            login_secret_sha256: secret.sha256_hex(),
            reauth: args.reauth,
        })
        .await
        .map_err(|e| exit::from_client(&e, &ca_url))?;
    let url = browser::check_authorization_url(&start.authorization_url)
        .map_err(|e| Failure::plain(Exit::Error, escape(&e.to_string())))?;
    // 5. Show the user the IdP's page.
    if args.no_browser {
        browser::print_url(
            "open this URL in a browser to sign in (pedm-ssh waits up to 5 minutes):",
            &url,
        );
    } else {
        browser::print_url(
            "opening your browser to sign in; if it does not open, visit this URL:",
            &url,
        );
        if let Err(reason) = browser::open(&url).await {
            eprintln!(
                "could not open a browser ({}); open the URL above",
                escape(&reason)
            );
        }
    }
    // 6. Wait for our own redirect.
    let cb = listener
        .wait(&start.state, LOGIN_TIMEOUT)
        .await
        .map_err(|e| exit::from_callback(&e, &ca_url))?;
    let sess = client
        .oidc_finish(&OidcFinishRequest {
            code: cb.code,
            state: cb.state,
            iss: cb.iss,
            login_secret: secret.as_str().to_string(),
        })
        .await
        .map_err(|e| exit::from_client(&e, &ca_url))?;
    complete(ctx, &client, &ca_url, &session_path, &key, sess).await
}

/// The end of every sign-in (browser and `--device`): save the session (revoking the one it
/// replaces), get the certificate and load the agent, print the summary.
pub(crate) async fn complete(
    ctx: &Ctx,
    client: &Client,
    ca_url: &str,
    session_path: &std::path::Path,
    key: &keys::UserKey,
    sess: pedm_api::SessionResponse,
) -> Result<(), Failure> {
    // 7. Save the session.
    let saved = SessionFile {
        version: session::FORMAT_VERSION,
        ca_url: ca_url.to_string(),
        session_token: sess.session_token,
        user: sess.user,
        principals: sess.principals,
        expires_at: sess.expires_at,
        key_path: key.path.clone(),
    };
    // A session this replaces is revoked (best effort): it must not stay valid unseen.
    let replaced = session::load(session_path).ok().flatten();
    session::save(session_path, &saved)?;
    if let Some(old) = replaced.filter(|o| o.session_token != saved.session_token) {
        if let Ok(old_client) = Client::new(&old.ca_url) {
            let answer = old_client.logout(&old.session_token).await;
            if let Ok(crate::logout::Revocation::Revoked) = crate::logout::interpret(answer) {
                eprintln!("revoked the previous session");
            }
        }
    }
    // 8, 9. The certificate, and the agent.
    let issued = issue::issue(ctx, client, ca_url, &saved.session_token, key).await?;
    // 10. Summary.
    println!("signed in as {}", escape(&saved.user));
    if !sess.roles.is_empty() {
        println!("roles: {}", escape_list(&sess.roles));
    }
    println!(
        "session until: {} ({})",
        timefmt::utc(saved.expires_at),
        timefmt::relative(saved.expires_at, issued.ca_time)
    );
    issue::print_certificate(&issued);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_is_64_lowercase_hex_and_fresh() {
        let a = LoginSecret::generate().unwrap();
        let b = LoginSecret::generate().unwrap();
        assert_eq!(a.as_str().len(), 64);
        assert!(a
            .as_str()
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
        assert_ne!(a.as_str(), b.as_str());
        assert!(!format!("{a:?}").contains(a.as_str()));
    }

    #[test]
    fn hash_is_sha256_of_the_hex_text() {
        // Known answers computed independently (Python hashlib):
        // sha256(b"0" * 64) — the hex text of 32 zero bytes — and NOT sha256(bytes(32)).
        let s = LoginSecret::from_bytes([0u8; 32]);
        assert_eq!(s.as_str(), "0".repeat(64));
        assert_eq!(
            s.sha256_hex(),
            "60e05bd1b195af2f94112fa7197a5c88289058840ce7c6df9693756bc6250f55"
        );
        assert_ne!(
            s.sha256_hex(),
            "66687aadf862bd776c8fc18b8e9f8e20089714856ee233b3902a591d0d5f2925"
        );
    }
}
