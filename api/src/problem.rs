//! RFC 9457 problem documents. Every refusal the CA gives has a stable `type` URI from
//! [`ProblemType`]; clients branch on the type, never on the human-readable text.

use serde::{Deserialize, Serialize};

/// The media type of a problem document.
pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// Every kind of refusal or failure the API reports. The URI (`urn:pedm-ssh:problem:SLUG`)
/// is part of the API contract and listed in `docs/api.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemType {
    /// The body is not the JSON the endpoint expects.
    InvalidRequest,
    /// The public key cannot be parsed as an OpenSSH public key.
    InvalidPublicKey,
    /// The key type or size is not accepted (DSA, RSA below 3072 bits, …).
    UnsupportedKey,
    /// No session, an unknown, expired or revoked one: sign in again.
    SignInRequired,
    /// The identity maps to no role.
    NoRole,
    /// The username claim is unsafe or collides with a privileged or reserved principal.
    UsernameRefused,
    /// The identity provider's answer or ID token was refused.
    IdTokenRefused,
    /// The redirect URI is not `http://127.0.0.1:{port}/callback`.
    InvalidRedirectUri,
    /// The pending login is unknown, used, expired, or its state or secret does not match.
    LoginRefused,
    /// The identity provider could not be reached or answered with an error.
    IdpUnavailable,
    /// The caller may not do this.
    Forbidden,
    /// No such resource.
    NotFound,
    /// The CA failed; nothing was issued.
    Internal,
    /// A reason or comment is empty, too long, or has control characters.
    InvalidReason,
    /// The elevation policy refuses this request (not eligible, too long, unknown elevation).
    ElevationRefused,
    /// The request is not in a state that allows this (decided, lapsed, timed out, expired).
    Conflict,
    /// The action needs a more recent sign-in: `pedm-ssh login --reauth`.
    ReauthRequired,
}

impl ProblemType {
    /// All types, for documentation and tests.
    pub const ALL: [ProblemType; 17] = [
        Self::InvalidRequest,
        Self::InvalidPublicKey,
        Self::UnsupportedKey,
        Self::SignInRequired,
        Self::NoRole,
        Self::UsernameRefused,
        Self::IdTokenRefused,
        Self::InvalidRedirectUri,
        Self::LoginRefused,
        Self::IdpUnavailable,
        Self::Forbidden,
        Self::NotFound,
        Self::Internal,
        Self::InvalidReason,
        Self::ElevationRefused,
        Self::Conflict,
        Self::ReauthRequired,
    ];

    /// The stable last segment of the type URI.
    pub fn slug(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid-request",
            Self::InvalidPublicKey => "invalid-public-key",
            Self::UnsupportedKey => "unsupported-key",
            Self::SignInRequired => "sign-in-required",
            Self::NoRole => "no-role",
            Self::UsernameRefused => "username-refused",
            Self::IdTokenRefused => "id-token-refused",
            Self::InvalidRedirectUri => "invalid-redirect-uri",
            Self::LoginRefused => "login-refused",
            Self::IdpUnavailable => "idp-unavailable",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not-found",
            Self::Internal => "internal",
            Self::InvalidReason => "invalid-reason",
            Self::ElevationRefused => "elevation-refused",
            Self::Conflict => "conflict",
            Self::ReauthRequired => "reauth-required",
        }
    }

    /// The HTTP status that goes with the type.
    pub fn status(self) -> u16 {
        match self {
            Self::InvalidRequest
            | Self::InvalidPublicKey
            | Self::UnsupportedKey
            | Self::InvalidRedirectUri
            | Self::LoginRefused
            | Self::InvalidReason => 400,
            Self::SignInRequired | Self::IdTokenRefused | Self::ReauthRequired => 401,
            Self::NoRole | Self::UsernameRefused | Self::Forbidden | Self::ElevationRefused => 403,
            Self::Conflict => 409,
            Self::NotFound => 404,
            Self::IdpUnavailable => 502,
            Self::Internal => 500,
        }
    }

    /// A short, fixed summary (RFC 9457 `title`).
    pub fn title(self) -> &'static str {
        match self {
            Self::InvalidRequest => "The request is malformed",
            Self::InvalidPublicKey => "The public key cannot be parsed",
            Self::UnsupportedKey => "The public key type is not accepted",
            Self::SignInRequired => "Sign-in required",
            Self::NoRole => "No role for this identity",
            Self::UsernameRefused => "The username is refused",
            Self::IdTokenRefused => "The ID token was refused",
            Self::InvalidRedirectUri => "The redirect URI is refused",
            Self::LoginRefused => "The login cannot be completed",
            Self::IdpUnavailable => "The identity provider is unavailable",
            Self::Forbidden => "Forbidden",
            Self::NotFound => "Not found",
            Self::Internal => "Internal error",
            Self::InvalidReason => "The reason or comment is refused",
            Self::ElevationRefused => "The elevation is refused",
            Self::Conflict => "The request is not in a state that allows this",
            Self::ReauthRequired => "A recent sign-in is required",
        }
    }

    /// The full type URI.
    pub fn uri(self) -> String {
        format!("urn:pedm-ssh:problem:{}", self.slug())
    }

    /// The type named by a URI, if it is one of ours.
    pub fn from_uri(uri: &str) -> Option<Self> {
        let slug = uri.strip_prefix("urn:pedm-ssh:problem:")?;
        Self::ALL.into_iter().find(|t| t.slug() == slug)
    }
}

/// An RFC 9457 problem document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: String,
    pub status: u16,
    /// What was wrong and what to do; never contains a secret.
    pub detail: String,
}

impl Problem {
    pub fn new(kind: ProblemType, detail: impl Into<String>) -> Self {
        Self {
            type_uri: kind.uri(),
            title: kind.title().to_string(),
            status: kind.status(),
            detail: detail.into(),
        }
    }

    /// The known type of this problem, if any.
    pub fn kind(&self) -> Option<ProblemType> {
        ProblemType::from_uri(&self.type_uri)
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The detail comes from the server: control characters are escaped so it cannot
        // forge lines in a host's log or a terminal.
        let detail: String = self.detail.chars().flat_map(char::escape_default).collect();
        let detail = if self.detail.chars().any(char::is_control) {
            detail
        } else {
            self.detail.clone()
        };
        write!(f, "{} ({}): {}", self.title, self.status, detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_escapes_control_characters_from_the_server() {
        let p = Problem::new(ProblemType::Forbidden, "no\nFAKE: line \u{1b}[2J");
        let text = p.to_string();
        assert!(!text.contains('\n') && !text.contains('\u{1b}'), "{text}");
        assert!(text.contains("no\\nFAKE"), "{text}");
        let plain = Problem::new(ProblemType::Forbidden, "user “bob” is revoked");
        assert!(plain.to_string().ends_with("user “bob” is revoked"));
    }

    #[test]
    fn uris_are_unique_and_round_trip() {
        let mut seen = std::collections::BTreeSet::new();
        for t in ProblemType::ALL {
            assert!(seen.insert(t.slug()), "duplicate slug {}", t.slug());
            assert_eq!(ProblemType::from_uri(&t.uri()), Some(t));
            assert!((400..600).contains(&t.status()));
        }
        assert_eq!(ProblemType::from_uri("urn:pedm-ssh:problem:nope"), None);
        assert_eq!(ProblemType::from_uri("about:blank"), None);
    }
}
