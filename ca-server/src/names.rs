//! Validated names: principals, usernames and key IDs. Each type refuses invalid text at
//! construction, so code holding one never needs to check again; nothing is ever rewritten
//! into something acceptable.

use std::fmt;

/// Why a name was refused. The offending text is shown escaped, so a control character in
/// it cannot forge log lines or terminal output.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error(
        "principal {0} is empty or has a character outside [A-Za-z0-9._-] (or is longer than 64)"
    )]
    Principal(String),
    #[error("username {0} does not match ^[a-z_][a-z0-9._-]{{0,31}}$")]
    Username(String),
}

/// `text` with every non-printable or non-ASCII character escaped, quoted.
pub fn escaped(text: &str) -> String {
    format!("{:?}", text)
}

/// An SSH principal: 1–64 characters of `[A-Za-z0-9._-]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Principal(String);

impl Principal {
    pub fn new(text: &str) -> Result<Self, NameError> {
        let ok = !text.is_empty()
            && text.len() <= 64
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(Principal(text.to_string()))
        } else {
            Err(NameError::Principal(escaped(text)))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A username as it appears in certificates and key IDs: `^[a-z_][a-z0-9._-]{0,31}$`
/// (the shape of a portable POSIX login name), hence always a valid [`Principal`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Username(String);

impl Username {
    pub fn new(text: &str) -> Result<Self, NameError> {
        let b = text.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 32
            && (b[0].is_ascii_lowercase() || b[0] == b'_')
            && b[1..].iter().all(|&c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-')
            });
        if ok {
            Ok(Username(text.to_string()))
        } else {
            Err(NameError::Username(escaped(text)))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn principal(&self) -> Principal {
        Principal(self.0.clone())
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An elevation request's ID: 12 characters of `[a-z0-9]`, made by the CA from the OS
/// random source. It appears in key IDs (`elev=ID`) and URL paths, so nothing else is accepted.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ElevationId(String);

impl ElevationId {
    pub const LEN: usize = 12;

    /// A new random ID (about 62 bits).
    pub fn random() -> Self {
        use rand::Rng;
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let mut rng = rand::rngs::OsRng;
        ElevationId(
            (0..Self::LEN)
                .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
                .collect(),
        )
    }

    /// Parses an ID given by a client; anything but 12 of `[a-z0-9]` is refused.
    pub fn parse(text: &str) -> Option<Self> {
        (text.len() == Self::LEN
            && text
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()))
        .then(|| ElevationId(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ElevationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A certificate key ID. Only these shapes exist; nothing user-supplied goes in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyId {
    /// `USER serial=N`
    User { user: Username, serial: u64 },
    /// `USER serial=N elev=ID`
    Elevated {
        user: Username,
        serial: u64,
        elevation: ElevationId,
    },
    /// `break-glass serial=N`
    BreakGlass { serial: u64 },
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyId::User { user, serial } => write!(f, "{user} serial={serial}"),
            KeyId::Elevated {
                user,
                serial,
                elevation,
            } => write!(f, "{user} serial={serial} elev={elevation}"),
            KeyId::BreakGlass { serial } => write!(f, "break-glass serial={serial}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principals() {
        for ok in ["alice", "db-admin", "A.b_c-9", &"x".repeat(64)] {
            assert!(Principal::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a b",
            "a,b",
            "../x",
            "a/b",
            "a\nb",
            "é",
            "a:b",
            "a@b",
            "*",
            &"x".repeat(65),
        ] {
            assert!(Principal::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn usernames() {
        for ok in ["alice", "_svc", "a1.b-c_d", &format!("a{}", "b".repeat(31))] {
            assert!(Username::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Alice",
            "1alice",
            "-alice",
            ".alice",
            "alice,root",
            "../x",
            "eve\nroot",
            "a b",
            "alice@x",
            &format!("a{}", "b".repeat(32)),
        ] {
            assert!(Username::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn refusal_escapes_control_characters() {
        let err = Username::new("eve\nroot").unwrap_err().to_string();
        assert!(!err.contains('\n'), "{err}");
        assert!(err.contains("eve\\nroot"), "{err}");
    }

    #[test]
    fn key_ids() {
        let user = Username::new("alice").unwrap();
        assert_eq!(
            KeyId::User { user, serial: 7 }.to_string(),
            "alice serial=7"
        );
        assert_eq!(
            KeyId::BreakGlass { serial: 9 }.to_string(),
            "break-glass serial=9"
        );
        let elevation = ElevationId::parse("abc123def456").unwrap();
        assert_eq!(
            KeyId::Elevated {
                user: Username::new("bob").unwrap(),
                serial: 3,
                elevation
            }
            .to_string(),
            "bob serial=3 elev=abc123def456"
        );
    }

    #[test]
    fn elevation_ids() {
        let a = ElevationId::random();
        assert_eq!(ElevationId::parse(a.as_str()), Some(a.clone()));
        assert_ne!(a, ElevationId::random());
        for bad in [
            "",
            "abc",
            "ABC123DEF456",
            "abc123def45!",
            "abc123def4567",
            "abc 23def456",
            "../../x/abcd",
        ] {
            assert_eq!(ElevationId::parse(bad), None, "{bad:?}");
        }
    }
}
