//! Exit codes and the mapping from every failure to one, with what to do next.
//!
//! Scripts branch on the exit code, never on the text: 0 ok, 1 error, 2 usage, 3 sign-in
//! needed, 4 denied, 5 pending. Every [`Failure`] carries a `next` sentence telling the user
//! what to do, and every piece of text from the CA or the IdP is escaped in it.

use crate::callback::CallbackError;
use crate::certfile::CertError;
use crate::escape::escape;
use crate::fsutil::FsError;
use crate::keys::KeyError;
use crate::paths::NoHome;
use crate::session::SessionError;
use pedm_api::{ClientError, Problem, ProblemType};

/// The process exit status of `pedm-ssh`, stable for scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// It worked.
    Ok = 0,
    /// Anything else went wrong (network, files, a CA failure, a timeout).
    Error = 1,
    /// The command line is wrong (clap reports these itself, with this code).
    Usage = 2,
    /// No session, or the CA says the session is gone: sign in.
    SignInRequired = 3,
    /// The CA or the IdP refused this identity (no role, refused username, forbidden,
    /// IdP `access_denied`), or an elevation was refused or ended without a grant (denied,
    /// cancelled, revoked, timed out, lapsed).
    Denied = 4,
    /// An elevation request waits for someone else's approval.
    Pending = 5,
}

impl Exit {
    /// The numeric code.
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// The exit code for a CA problem type; unknown types are plain errors.
pub fn for_problem(kind: Option<ProblemType>) -> Exit {
    match kind {
        Some(ProblemType::SignInRequired | ProblemType::ReauthRequired) => Exit::SignInRequired,
        Some(
            ProblemType::NoRole
            | ProblemType::UsernameRefused
            | ProblemType::Forbidden
            | ProblemType::ElevationRefused,
        ) => Exit::Denied,
        Some(
            ProblemType::InvalidRequest
            | ProblemType::InvalidPublicKey
            | ProblemType::UnsupportedKey
            | ProblemType::IdTokenRefused
            | ProblemType::InvalidRedirectUri
            | ProblemType::LoginRefused
            | ProblemType::IdpUnavailable
            | ProblemType::NotFound
            | ProblemType::Internal
            | ProblemType::InvalidReason
            | ProblemType::Conflict,
        )
        | None => Exit::Error,
    }
}

/// A command's failure: the exit code, what went wrong, and what to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub exit: Exit,
    /// What went wrong (already escaped). For local errors it already says what to do.
    pub message: String,
    /// What the user should do now (already escaped), when `message` does not say it.
    pub next: Option<String>,
}

impl Failure {
    /// A failure whose `message` is followed by a separate `next` step.
    pub fn new(exit: Exit, message: impl Into<String>, next: impl Into<String>) -> Self {
        Self {
            exit,
            message: message.into(),
            next: Some(next.into()),
        }
    }

    /// A failure whose message already says what to do.
    pub fn plain(exit: Exit, message: impl Into<String>) -> Self {
        Self {
            exit,
            message: message.into(),
            next: None,
        }
    }

    /// `not signed in: run `pedm-ssh login --ca URL`` (exit 3), naming the CA if known.
    pub fn not_signed_in(ca_url: Option<&str>) -> Self {
        Self::plain(
            Exit::SignInRequired,
            format!("not signed in: run `{}`", login_command(ca_url)),
        )
    }
}

impl std::fmt::Display for Failure {
    /// `error: MESSAGE`, and `next: STEP` on a second line when there is a separate step.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "error: {}", self.message)?;
        if let Some(next) = &self.next {
            write!(f, "\nnext: {next}")?;
        }
        Ok(())
    }
}

/// `pedm-ssh login --ca URL`, with the real URL when known.
pub fn login_command(ca_url: Option<&str>) -> String {
    match ca_url {
        Some(url) => format!("pedm-ssh login --ca {}", escape(url)),
        None => "pedm-ssh login --ca URL".to_string(),
    }
}

/// What to do about each problem type.
fn problem_next(kind: Option<ProblemType>, ca_url: &str) -> String {
    let login = login_command(Some(ca_url));
    match kind {
        Some(ProblemType::SignInRequired) => {
            format!("your session has ended or was revoked: run `{login}`")
        }
        Some(ProblemType::NoRole) => {
            "ask your administrator to map one of your groups to a pedm-ssh role".into()
        }
        Some(ProblemType::UsernameRefused) => {
            "your username is refused by the CA's policy; ask your administrator (the name must be a safe, unprivileged login name)".into()
        }
        Some(ProblemType::Forbidden) => "ask your administrator for access".into(),
        Some(ProblemType::ReauthRequired) => {
            format!("this needs a recent sign-in: run `{login} --reauth`")
        }
        Some(ProblemType::ElevationRefused) => {
            "the elevation policy refuses this; `pedm-ca policy explain` shows the rules (ask your administrator)".into()
        }
        Some(ProblemType::InvalidReason) => {
            "use a reason of 1-200 printable characters, without control characters".into()
        }
        Some(ProblemType::Conflict) => {
            "the request has moved on: check its state with `pedm-ssh elevations` or `pedm-ssh requests`".into()
        }
        Some(ProblemType::LoginRefused) => {
            format!("the sign-in expired or was already used: run `{login}` again")
        }
        Some(ProblemType::IdTokenRefused) => format!(
            "run `{login}` again; if it keeps failing, tell the CA operator (the identity provider's answer was refused)"
        ),
        Some(ProblemType::InvalidRedirectUri) => {
            "this pedm-ssh and the CA disagree on the callback address; update pedm-ssh or tell the CA operator".into()
        }
        Some(ProblemType::IdpUnavailable) => {
            format!("the identity provider is unavailable: try `{login}` again later")
        }
        Some(ProblemType::InvalidPublicKey | ProblemType::UnsupportedKey) => {
            "use an Ed25519 key: pass --key PATH of a path that does not exist yet and pedm-ssh creates one".into()
        }
        Some(ProblemType::InvalidRequest) => {
            "this pedm-ssh may be too old or too new for the CA; update it, or tell the CA operator".into()
        }
        Some(ProblemType::NotFound) => format!(
            "check that {} is the pedm-ssh CA (--ca URL)",
            escape(ca_url)
        ),
        Some(ProblemType::Internal) => {
            "nothing was issued; try again, and tell the CA operator if it keeps failing".into()
        }
        None => "try again; if it keeps failing, tell the CA operator".into(),
    }
}

/// The failure for a CA problem document. The detail is the CA's text and is escaped.
pub fn from_problem(p: &Problem, ca_url: &str) -> Failure {
    let kind = p.kind();
    Failure::new(
        for_problem(kind),
        format!(
            "the CA refused: {} ({}): {}",
            escape(&p.title),
            p.status,
            escape(&p.detail)
        ),
        problem_next(kind, ca_url),
    )
}

/// The failure for any client error talking to the CA at `ca_url`.
pub fn from_client(err: &ClientError, ca_url: &str) -> Failure {
    match err {
        ClientError::Problem(p) => from_problem(p, ca_url),
        ClientError::Url(msg) => Failure::new(
            Exit::Error,
            escape(msg),
            "pass the CA's https:// URL with --ca (or PEDM_CA); plain http:// is accepted for 127.0.0.1 only",
        ),
        ClientError::Transport { .. } => Failure::new(
            Exit::Error,
            escape(&err.to_string()),
            "check the CA URL (--ca or PEDM_CA) and your network, then try again",
        ),
        ClientError::Status { .. } | ClientError::Decode(_) => Failure::new(
            Exit::Error,
            escape(&err.to_string()),
            format!(
                "check that {} is a pedm-ssh CA of a matching version",
                escape(ca_url)
            ),
        ),
    }
}

impl From<NoHome> for Failure {
    fn from(e: NoHome) -> Self {
        Failure::plain(Exit::Error, e.to_string())
    }
}

impl From<FsError> for Failure {
    fn from(e: FsError) -> Self {
        Failure::new(
            Exit::Error,
            escape(&e.to_string()),
            "check the path and its permissions",
        )
    }
}

/// Local errors already name the file and the fix (`chmod 600 PATH`, delete it, …).
impl From<SessionError> for Failure {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::Fs(fs) => Failure::new(
                Exit::Error,
                escape(&fs.to_string()),
                "check the permissions of your config directory ($XDG_CONFIG_HOME/pedm-ssh)",
            ),
            e => Failure::plain(Exit::Error, escape(&e.to_string())),
        }
    }
}

impl From<KeyError> for Failure {
    fn from(e: KeyError) -> Self {
        match e {
            e @ (KeyError::Fs(_) | KeyError::Generate(_)) => Failure::new(
                Exit::Error,
                escape(&e.to_string()),
                "check the permissions of the key's directory, or pass --key PATH",
            ),
            e => Failure::plain(Exit::Error, escape(&e.to_string())),
        }
    }
}

impl From<CertError> for Failure {
    fn from(e: CertError) -> Self {
        match e {
            CertError::Fs(fs) => Failure::new(
                Exit::Error,
                escape(&fs.to_string()),
                "check the permissions of the key's directory, or pass --key PATH",
            ),
            e => Failure::plain(Exit::Error, escape(&e.to_string())),
        }
    }
}

/// The failure for a sign-in that did not come back through the listener. IdP text
/// (`error`, `error_description`) is escaped.
pub fn from_callback(e: &CallbackError, ca_url: &str) -> Failure {
    let login = login_command(Some(ca_url));
    let desc = |d: &Option<String>| match d {
        Some(d) => format!(": {}", escape(d)),
        None => String::new(),
    };
    match e {
        CallbackError::Denied { description } => Failure::new(
            Exit::Denied,
            format!(
                "the identity provider refused the sign-in (access_denied){}",
                desc(description)
            ),
            "sign in with an account that may use pedm-ssh, or ask your administrator for access",
        ),
        CallbackError::Idp { error, description } => Failure::new(
            Exit::Error,
            format!(
                "the identity provider answered with error {}{}",
                escape(error),
                desc(description)
            ),
            format!("run `{login}` again; if it keeps failing, tell the CA operator"),
        ),
        CallbackError::TimedOut(_) => Failure::new(
            Exit::Error,
            "sign-in timed out: no answer from the browser within 5 minutes",
            format!("run `{login}` again and finish signing in in the browser"),
        ),
        CallbackError::Bind { .. } => Failure::new(
            Exit::Error,
            escape(&e.to_string()),
            "another program uses the callback port; close it (or ask the CA operator which port the identity provider expects) and try again",
        ),
        CallbackError::Serve(_) => Failure::new(
            Exit::Error,
            escape(&e.to_string()),
            format!("run `{login}` again"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::time::Duration;

    /// Whether the printed failure tells the user what to do.
    fn says_what_to_do(f: &Failure) -> bool {
        let text = f.to_string();
        [
            "run `", "ask ", "check ", "tell ", "pass ", "delete ", "sign in", "update ", "use ",
            "try ",
        ]
        .iter()
        .any(|w| text.contains(w))
    }

    #[test]
    fn codes_are_the_documented_numbers() {
        assert_eq!(Exit::Ok.code(), 0);
        assert_eq!(Exit::Error.code(), 1);
        assert_eq!(Exit::Usage.code(), 2);
        assert_eq!(Exit::SignInRequired.code(), 3);
        assert_eq!(Exit::Denied.code(), 4);
        assert_eq!(Exit::Pending.code(), 5);
    }

    #[test]
    fn every_problem_type_has_its_code() {
        for kind in ProblemType::ALL {
            let expected = match kind {
                ProblemType::SignInRequired | ProblemType::ReauthRequired => 3,
                ProblemType::NoRole
                | ProblemType::UsernameRefused
                | ProblemType::Forbidden
                | ProblemType::ElevationRefused => 4,
                _ => 1,
            };
            let p = Problem::new(kind, "detail");
            let f = from_client(&ClientError::Problem(p), "https://ca.example");
            assert_eq!(f.exit.code(), expected, "{kind:?}");
            assert!(says_what_to_do(&f), "{kind:?}: {f}");
        }
        assert_eq!(for_problem(None), Exit::Error);
        let unknown = Problem {
            type_uri: "about:blank".into(),
            title: "x".into(),
            status: 403,
            detail: "y".into(),
        };
        assert_eq!(from_problem(&unknown, "https://ca").exit, Exit::Error);
    }

    #[test]
    fn sign_in_required_names_the_login_command() {
        let p = Problem::new(ProblemType::SignInRequired, "expired");
        let f = from_problem(&p, "https://ca.example");
        assert!(
            f.to_string()
                .contains("run `pedm-ssh login --ca https://ca.example`"),
            "{f}"
        );
        assert_eq!(Failure::not_signed_in(None).exit, Exit::SignInRequired);
        assert_eq!(
            Failure::not_signed_in(None).to_string(),
            "error: not signed in: run `pedm-ssh login --ca URL`"
        );
    }

    #[test]
    fn problem_detail_is_escaped() {
        let p = Problem::new(
            ProblemType::UsernameRefused,
            "user \u{1b}[2Kalice\nsigned in as root",
        );
        let f = from_problem(&p, "https://ca");
        assert!(!f.message.contains('\n'));
        assert!(!f.message.contains('\u{1b}'));
        assert!(f.message.contains("\\u{1b}[2Kalice\\nsigned in as root"));
    }

    #[test]
    fn transport_and_decode_errors_are_errors() {
        let t = ClientError::Transport {
            url: "https://ca".into(),
            message: "refused".into(),
        };
        assert_eq!(from_client(&t, "https://ca").exit, Exit::Error);
        assert_eq!(
            from_client(&ClientError::Status { status: 502 }, "https://ca").exit,
            Exit::Error
        );
        assert_eq!(
            from_client(&ClientError::Decode("x".into()), "https://ca").exit,
            Exit::Error
        );
        assert_eq!(
            from_client(&ClientError::Url("refusing".into()), "http://10.0.0.1").exit,
            Exit::Error
        );
    }

    #[test]
    fn local_failures() {
        let p = PathBuf::from("/tmp/x");
        let fs = || FsError {
            action: "read",
            path: p.clone(),
            source: std::io::Error::other("boom"),
        };
        let cases: Vec<(Failure, Exit)> = vec![
            (NoHome.into(), Exit::Error),
            (
                SessionError::TooOpen {
                    path: p.clone(),
                    mode: 0o644,
                }
                .into(),
                Exit::Error,
            ),
            (
                SessionError::Corrupt {
                    path: p.clone(),
                    reason: "x".into(),
                }
                .into(),
                Exit::Error,
            ),
            (SessionError::Fs(fs()).into(), Exit::Error),
            (
                KeyError::TooOpen {
                    path: p.clone(),
                    mode: 0o644,
                }
                .into(),
                Exit::Error,
            ),
            (
                KeyError::Unreadable {
                    path: p.clone(),
                    reason: "x".into(),
                }
                .into(),
                Exit::Error,
            ),
            (KeyError::Fs(fs()).into(), Exit::Error),
            (CertError::NotUser.into(), Exit::Error),
            (CertError::Fs(fs()).into(), Exit::Error),
            (
                from_callback(&CallbackError::Denied { description: None }, "https://ca"),
                Exit::Denied,
            ),
            (
                from_callback(
                    &CallbackError::Idp {
                        error: "server_error".into(),
                        description: None,
                    },
                    "https://ca",
                ),
                Exit::Error,
            ),
            (
                from_callback(
                    &CallbackError::TimedOut(Duration::from_secs(300)),
                    "https://ca",
                ),
                Exit::Error,
            ),
            (
                Failure::not_signed_in(Some("https://ca")),
                Exit::SignInRequired,
            ),
        ];
        for (f, want) in cases {
            assert_eq!(f.exit, want, "{f}");
            assert!(says_what_to_do(&f), "{f}");
        }
        let key: Failure = KeyError::TooOpen {
            path: p.clone(),
            mode: 0o644,
        }
        .into();
        assert!(key.to_string().contains("chmod 600 /tmp/x"));
        let timeout = from_callback(
            &CallbackError::TimedOut(Duration::from_secs(1)),
            "https://ca",
        );
        assert!(timeout.message.contains("sign-in timed out"));
    }

    #[test]
    fn idp_error_text_is_escaped() {
        let f = from_callback(
            &CallbackError::Idp {
                error: "bad\r\nerror".into(),
                description: Some("\u{1b}]0;owned\u{7}".into()),
            },
            "https://ca",
        );
        assert!(f.message.chars().all(|c| !c.is_control()), "{}", f.message);
        assert!(f.message.contains("bad\\r\\nerror"));
        let d = from_callback(
            &CallbackError::Denied {
                description: Some("no\nway".into()),
            },
            "https://ca",
        );
        assert!(d.message.contains("no\\nway"));
    }
}
