//! Showing the user the identity provider's sign-in page.
//!
//! The URL comes from the CA, so before anything opens it, it must be an `https://` URL (or
//! `http://` to loopback, for a local test IdP): a hostile CA must not make `xdg-open` run a
//! `file:` or other handler. It is printed alone on one stderr line, which scripts and the
//! end-to-end tests read.

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;
use url::Url;

/// The authorization URL is not one we will show or open.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the CA sent an authorization URL this client will not open ({0}); tell the CA operator")]
pub struct BadAuthorizationUrl(pub String);

/// Checks the authorization URL and returns its serialisation, which contains no
/// whitespace or control characters (the URL parser percent-encodes them).
pub fn check_authorization_url(text: &str) -> Result<String, BadAuthorizationUrl> {
    let url = Url::parse(text).map_err(|e| BadAuthorizationUrl(format!("not a URL: {e}")))?;
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    };
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        other => {
            return Err(BadAuthorizationUrl(format!(
                "scheme {other:?}: only https://, or http:// to loopback, is allowed"
            )))
        }
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(BadAuthorizationUrl("it carries credentials".into()));
    }
    Ok(url.to_string())
}

/// Prints the instruction line, then the URL alone on its own line, to stderr, and flushes.
pub fn print_url(instruction: &str, url: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{instruction}");
    let _ = writeln!(err, "{url}");
    let _ = err.flush();
}

/// Starts `xdg-open URL`. `Err` with the reason when there is no graphical session or
/// `xdg-open` fails; the caller has printed the URL already, so the user can still go on.
/// `xdg-open` is not run without `DISPLAY`/`WAYLAND_DISPLAY`: on a console it could start a
/// text browser that takes over the terminal the CLI is printing to.
pub async fn open(url: &str) -> Result<(), String> {
    let graphical = ["DISPLAY", "WAYLAND_DISPLAY"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()));
    if !graphical {
        return Err("no graphical session (DISPLAY and WAYLAND_DISPLAY are unset)".into());
    }
    let mut child = tokio::process::Command::new("xdg-open")
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run xdg-open: {e}"))?;
    match tokio::time::timeout(Duration::from_secs(10), child.wait()).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(format!("xdg-open failed ({status})")),
        Ok(Err(e)) => Err(format!("xdg-open failed: {e}")),
        // Still running: some openers wait for the browser. Assume it opened.
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_or_loopback_http() {
        assert!(check_authorization_url("https://idp.example/auth?x=1").is_ok());
        assert!(check_authorization_url("http://127.0.0.1:3000/auth").is_ok());
        assert!(check_authorization_url("http://localhost:3000/auth").is_ok());
        for bad in [
            "http://idp.example/auth",
            "file:///etc/passwd",
            "javascript:alert(1)",
            "https://u:p@idp.example/",
            "not a url",
        ] {
            assert!(check_authorization_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn serialisation_has_no_whitespace_or_controls() {
        let u = check_authorization_url("https://idp.example/a b?q=\u{1b}x").unwrap();
        assert!(
            !u.chars().any(|c| c.is_whitespace() || c.is_control()),
            "{u}"
        );
    }
}
