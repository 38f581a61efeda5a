//! Who gets which principals for how long. Pure: values in, a decision out, no I/O.
//!
//! Rules that always hold: deny by default; no empty principal list; a username that is
//! unsafe, reserved, or equal to a principal some role or elevation names gets nothing
//! (refused, never rewritten); several matching roles give the union of principals and
//! extensions and the *shortest* TTL.

use crate::names::{escaped, NameError, Principal, Username};
use serde_json::{Map, Value};
use std::collections::BTreeSet;
use std::time::Duration;

/// A role's principal: the signed-in user's own name, or a fixed one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrincipalTemplate {
    /// `{username}`
    Username,
    Literal(Principal),
}

impl PrincipalTemplate {
    /// Parses `{username}` or a literal principal; any other `{…}` is refused.
    pub fn parse(text: &str) -> Result<Self, NameError> {
        if text == "{username}" {
            Ok(PrincipalTemplate::Username)
        } else {
            Principal::new(text).map(PrincipalTemplate::Literal)
        }
    }
}

/// Certificate extensions OpenSSH knows; nothing else may be configured.
pub const KNOWN_EXTENSIONS: [&str; 5] = [
    "permit-X11-forwarding",
    "permit-agent-forwarding",
    "permit-port-forwarding",
    "permit-pty",
    "permit-user-rc",
];

/// One role of the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    pub name: String,
    /// IdP groups any one of which gives the role.
    pub groups: BTreeSet<String>,
    pub principals: Vec<PrincipalTemplate>,
    /// `None`: the configured default TTL.
    pub max_cert_ttl: Option<Duration>,
    pub extensions: BTreeSet<String>,
}

/// Where the username comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsernameSource {
    /// A string claim used as it is (it must already be a safe username).
    Claim(String),
    /// The local part of `email`, which must be verified and in an allowed domain.
    Email { allowed_domains: BTreeSet<String> },
}

/// The base-certificate policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub roles: Vec<Role>,
    /// Principals that elevations grant; no username may equal one.
    pub elevation_principals: BTreeSet<Principal>,
    /// Principals nobody may have as a username (`root`, `break-glass` by default).
    pub reserved_principals: BTreeSet<String>,
    pub username_source: UsernameSource,
    pub groups_claim: String,
    pub default_ttl: Duration,
    /// `[[trusted_issuers]] principal_prefix`es: a person's username never starts with
    /// `<prefix>.`, so it can never equal an automation identity's name.
    pub automation_prefixes: BTreeSet<String>,
}

/// Why an identity gets nothing. Every variant is a refusal; the message says what was
/// wrong, with user-controlled text escaped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the ID token has no {0:?} claim to take the username from")]
    MissingUsernameClaim(String),
    #[error("the {0:?} claim is not a string")]
    UsernameNotString(String),
    #[error(
        "{0}; usernames are refused, never rewritten: fix the account at the identity provider"
    )]
    UnsafeUsername(NameError),
    #[error("username {0:?} is reserved")]
    ReservedUsername(String),
    #[error(
        "username {name:?} equals a principal named by {owner}; such an identity gets nothing"
    )]
    PrivilegedUsername { name: String, owner: String },
    #[error("the email address is not verified at the identity provider")]
    EmailNotVerified,
    #[error("email {0} is not of an allowed domain")]
    EmailDomainNotAllowed(String),
    #[error("the {0:?} claim is not a list of strings")]
    GroupsNotStrings(String),
    #[error("username {name:?} starts with {prefix:?}., which names automation identities of a trusted issuer; such an identity gets nothing")]
    AutomationUsername { name: String, prefix: String },
    #[error("none of the groups {groups} maps to a role")]
    NoRole { groups: String },
}

impl Refusal {
    /// A short stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::MissingUsernameClaim(_)
            | Refusal::UsernameNotString(_)
            | Refusal::UnsafeUsername(_) => "unsafe-username",
            Refusal::ReservedUsername(_) => "reserved-username",
            Refusal::PrivilegedUsername { .. } => "privileged-username",
            Refusal::AutomationUsername { .. } => "automation-username",
            Refusal::EmailNotVerified | Refusal::EmailDomainNotAllowed(_) => "email",
            Refusal::GroupsNotStrings(_) => "groups",
            Refusal::NoRole { .. } => "no-role",
        }
    }
}

/// The identity the policy decides on, extracted from the ID token's claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub username: Username,
    pub groups: BTreeSet<String>,
}

/// What a base certificate may carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseGrant {
    pub roles: Vec<String>,
    /// Never empty, sorted, deduplicated.
    pub principals: Vec<Principal>,
    pub extensions: BTreeSet<String>,
    pub ttl: Duration,
}

impl Policy {
    /// Every principal named by a role literal or an elevation, with its owner's name.
    fn privileged_principals(&self) -> impl Iterator<Item = (&str, String)> {
        let from_roles = self.roles.iter().flat_map(|r| {
            r.principals.iter().filter_map(move |p| match p {
                PrincipalTemplate::Literal(p) => Some((p.as_str(), format!("role {:?}", r.name))),
                PrincipalTemplate::Username => None,
            })
        });
        let from_elevations = self
            .elevation_principals
            .iter()
            .map(|p| (p.as_str(), "an elevation".to_string()));
        from_roles.chain(from_elevations)
    }

    /// `Some(why)` when `name` is a reserved principal or one a role or elevation names.
    pub fn reserved_or_privileged(&self, name: &str) -> Option<String> {
        if self.reserved_principals.contains(name) {
            return Some("reserved".into());
        }
        self.privileged_principals()
            .find(|(p, _)| *p == name)
            .map(|(_, owner)| format!("a principal named by {owner}"))
    }

    /// Extracts and checks the username and groups from ID-token claims.
    pub fn identity(&self, claims: &Map<String, Value>) -> Result<Identity, Refusal> {
        let raw = match &self.username_source {
            UsernameSource::Claim(name) => string_claim(claims, name)?.to_string(),
            UsernameSource::Email { allowed_domains } => {
                let email = string_claim(claims, "email")?;
                if claims.get("email_verified") != Some(&Value::Bool(true)) {
                    return Err(Refusal::EmailNotVerified);
                }
                let (local, domain) = email
                    .rsplit_once('@')
                    .ok_or_else(|| Refusal::EmailDomainNotAllowed(escaped(email)))?;
                if !allowed_domains.contains(&domain.to_ascii_lowercase()) {
                    return Err(Refusal::EmailDomainNotAllowed(escaped(email)));
                }
                local.to_string()
            }
        };
        let username = Username::new(&raw).map_err(Refusal::UnsafeUsername)?;
        if self.reserved_principals.contains(username.as_str()) {
            return Err(Refusal::ReservedUsername(username.to_string()));
        }
        if let Some((_, owner)) = self
            .privileged_principals()
            .find(|(p, _)| *p == username.as_str())
        {
            return Err(Refusal::PrivilegedUsername {
                name: username.to_string(),
                owner,
            });
        }
        if let Some(prefix) = self
            .automation_prefixes
            .iter()
            .find(|p| username.as_str().starts_with(&format!("{p}.")))
        {
            return Err(Refusal::AutomationUsername {
                name: username.to_string(),
                prefix: prefix.clone(),
            });
        }
        let groups = match claims.get(&self.groups_claim) {
            None => BTreeSet::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<BTreeSet<_>>>()
                .ok_or_else(|| Refusal::GroupsNotStrings(self.groups_claim.clone()))?,
            Some(_) => return Err(Refusal::GroupsNotStrings(self.groups_claim.clone())),
        };
        Ok(Identity { username, groups })
    }

    /// Decides what a base certificate for `identity` carries.
    pub fn base_grant(&self, identity: &Identity) -> Result<BaseGrant, Refusal> {
        let matching: Vec<&Role> = self
            .roles
            .iter()
            .filter(|r| r.groups.iter().any(|g| identity.groups.contains(g)))
            .collect();
        if matching.is_empty() {
            let groups = if identity.groups.is_empty() {
                "(none)".to_string()
            } else {
                identity
                    .groups
                    .iter()
                    .map(|g| escaped(g))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(Refusal::NoRole { groups });
        }
        let mut principals = BTreeSet::new();
        let mut extensions = BTreeSet::new();
        let mut ttl = Duration::MAX;
        for role in &matching {
            for p in &role.principals {
                principals.insert(match p {
                    PrincipalTemplate::Username => identity.username.principal(),
                    PrincipalTemplate::Literal(p) => p.clone(),
                });
            }
            extensions.extend(role.extensions.iter().cloned());
            ttl = ttl.min(role.max_cert_ttl.unwrap_or(self.default_ttl));
        }
        // Config validation refuses roles without principals, so this cannot be empty.
        if principals.is_empty() {
            return Err(Refusal::NoRole {
                groups: "(roles without principals)".into(),
            });
        }
        Ok(BaseGrant {
            roles: matching.iter().map(|r| r.name.clone()).collect(),
            principals: principals.into_iter().collect(),
            extensions,
            ttl,
        })
    }
}

fn string_claim<'a>(claims: &'a Map<String, Value>, name: &str) -> Result<&'a str, Refusal> {
    match claims.get(name) {
        None | Some(Value::Null) => Err(Refusal::MissingUsernameClaim(name.to_string())),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(Refusal::UsernameNotString(name.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(s: &str) -> Principal {
        Principal::new(s).unwrap()
    }

    fn role(
        name: &str,
        groups: &[&str],
        principals: &[&str],
        ttl: Option<u64>,
        ext: &[&str],
    ) -> Role {
        Role {
            name: name.into(),
            groups: groups.iter().map(|s| s.to_string()).collect(),
            principals: principals
                .iter()
                .map(|s| PrincipalTemplate::parse(s).unwrap())
                .collect(),
            max_cert_ttl: ttl.map(Duration::from_secs),
            extensions: ext.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn policy() -> Policy {
        Policy {
            roles: vec![
                role(
                    "engineer",
                    &["eng"],
                    &["{username}"],
                    Some(600),
                    &["permit-pty", "permit-port-forwarding"],
                ),
                role(
                    "oncall",
                    &["oncall"],
                    &["{username}", "deploy"],
                    Some(300),
                    &["permit-agent-forwarding"],
                ),
                role("auditor", &["security"], &["{username}"], None, &[]),
            ],
            elevation_principals: [p("db-admin")].into(),
            reserved_principals: ["root".to_string(), "break-glass".to_string()].into(),
            username_source: UsernameSource::Claim("preferred_username".into()),
            groups_claim: "groups".into(),
            default_ttl: Duration::from_secs(900),
            automation_prefixes: ["ci".to_string()].into(),
        }
    }

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn decide(policy: &Policy, v: Value) -> Result<BaseGrant, Refusal> {
        policy.base_grant(&policy.identity(&claims(v))?)
    }

    #[test]
    fn people_never_get_an_automation_name() {
        let r = decide(
            &policy(),
            json!({"preferred_username": "ci.alice", "groups": ["eng"]}),
        )
        .unwrap_err();
        assert_eq!(r.label(), "automation-username");
        // Only the prefix followed by a dot.
        let g = decide(
            &policy(),
            json!({"preferred_username": "cia", "groups": ["eng"]}),
        )
        .unwrap();
        assert_eq!(g.principals, vec![p("cia")]);
    }

    #[test]
    fn one_role() {
        let g = decide(
            &policy(),
            json!({"preferred_username": "bob", "groups": ["eng"]}),
        )
        .unwrap();
        assert_eq!(g.principals, vec![p("bob")]);
        assert_eq!(g.roles, vec!["engineer"]);
        assert_eq!(g.ttl, Duration::from_secs(600));
        assert_eq!(
            g.extensions.iter().collect::<Vec<_>>(),
            ["permit-port-forwarding", "permit-pty"]
        );
    }

    #[test]
    fn several_roles_union_and_shortest_ttl() {
        let g = decide(
            &policy(),
            json!({"preferred_username": "alice", "groups": ["eng", "oncall", "x"]}),
        )
        .unwrap();
        assert_eq!(g.principals, vec![p("alice"), p("deploy")]);
        assert_eq!(g.roles, vec!["engineer", "oncall"]);
        assert_eq!(g.ttl, Duration::from_secs(300));
        assert_eq!(g.extensions.len(), 3);
    }

    #[test]
    fn role_without_ttl_uses_default_and_still_takes_minimum() {
        let g = decide(
            &policy(),
            json!({"preferred_username": "carol", "groups": ["security"]}),
        )
        .unwrap();
        assert_eq!(g.ttl, Duration::from_secs(900));
        let g = decide(
            &policy(),
            json!({"preferred_username": "erin", "groups": ["security", "eng"]}),
        )
        .unwrap();
        assert_eq!(g.ttl, Duration::from_secs(600));
    }

    #[test]
    fn no_role_is_denied() {
        assert!(matches!(
            decide(
                &policy(),
                json!({"preferred_username": "dave", "groups": ["contractors"]})
            ),
            Err(Refusal::NoRole { .. })
        ));
        assert!(matches!(
            decide(&policy(), json!({"preferred_username": "dave"})),
            Err(Refusal::NoRole { .. })
        ));
        assert!(matches!(
            decide(
                &policy(),
                json!({"preferred_username": "dave", "groups": []})
            ),
            Err(Refusal::NoRole { .. })
        ));
    }

    #[test]
    fn unsafe_usernames_are_refused_not_rewritten() {
        for bad in [
            "alice,root",
            "../x",
            "eve\nroot",
            "Alice",
            "a b",
            "",
            "alice@example.com",
            "x;rm",
        ] {
            let r = decide(
                &policy(),
                json!({"preferred_username": bad, "groups": ["eng"]}),
            );
            assert!(
                matches!(r, Err(Refusal::UnsafeUsername(_))),
                "{bad:?}: {r:?}"
            );
        }
    }

    #[test]
    fn reserved_and_privileged_usernames_get_nothing() {
        for name in ["root", "break-glass"] {
            let r = decide(
                &policy(),
                json!({"preferred_username": name, "groups": ["eng"]}),
            );
            assert_eq!(r, Err(Refusal::ReservedUsername(name.into())));
        }
        let r = decide(
            &policy(),
            json!({"preferred_username": "db-admin", "groups": ["eng"]}),
        );
        assert!(
            matches!(r, Err(Refusal::PrivilegedUsername { ref owner, .. }) if owner == "an elevation")
        );
        let r = decide(
            &policy(),
            json!({"preferred_username": "deploy", "groups": ["eng"]}),
        );
        assert!(
            matches!(r, Err(Refusal::PrivilegedUsername { ref owner, .. }) if owner.contains("oncall"))
        );
    }

    #[test]
    fn claim_shape_refusals() {
        assert_eq!(
            decide(&policy(), json!({"groups": ["eng"]})),
            Err(Refusal::MissingUsernameClaim("preferred_username".into()))
        );
        assert_eq!(
            decide(
                &policy(),
                json!({"preferred_username": 5, "groups": ["eng"]})
            ),
            Err(Refusal::UsernameNotString("preferred_username".into()))
        );
        assert_eq!(
            decide(
                &policy(),
                json!({"preferred_username": "bob", "groups": "eng"})
            ),
            Err(Refusal::GroupsNotStrings("groups".into()))
        );
        assert_eq!(
            decide(
                &policy(),
                json!({"preferred_username": "bob", "groups": ["eng", 1]})
            ),
            Err(Refusal::GroupsNotStrings("groups".into()))
        );
    }

    #[test]
    fn email_source() {
        let mut pol = policy();
        pol.username_source = UsernameSource::Email {
            allowed_domains: ["example.com".to_string()].into(),
        };
        let ok = decide(
            &pol,
            json!({"email": "bob@example.com", "email_verified": true, "groups": ["eng"]}),
        )
        .unwrap();
        assert_eq!(ok.principals, vec![p("bob")]);
        assert_eq!(
            decide(
                &pol,
                json!({"email": "bob@example.com", "email_verified": false, "groups": ["eng"]})
            ),
            Err(Refusal::EmailNotVerified)
        );
        assert_eq!(
            decide(
                &pol,
                json!({"email": "bob@example.com", "email_verified": "true", "groups": ["eng"]})
            ),
            Err(Refusal::EmailNotVerified)
        );
        assert_eq!(
            decide(&pol, json!({"email": "bob@example.com", "groups": ["eng"]})),
            Err(Refusal::EmailNotVerified)
        );
        assert!(matches!(
            decide(
                &pol,
                json!({"email": "bob@evil.example", "email_verified": true, "groups": ["eng"]})
            ),
            Err(Refusal::EmailDomainNotAllowed(_))
        ));
        assert!(matches!(
            decide(
                &pol,
                json!({"email": "bob@example.com.evil.example", "email_verified": true, "groups": ["eng"]})
            ),
            Err(Refusal::EmailDomainNotAllowed(_))
        ));
        assert!(matches!(
            decide(
                &pol,
                json!({"email": "no-at-sign", "email_verified": true, "groups": ["eng"]})
            ),
            Err(Refusal::EmailDomainNotAllowed(_))
        ));
        assert!(matches!(
            decide(
                &pol,
                json!({"email": "Root@example.com", "email_verified": true, "groups": ["eng"]})
            ),
            Err(Refusal::UnsafeUsername(_))
        ));
        assert_eq!(
            decide(
                &pol,
                json!({"email": "root@example.com", "email_verified": true, "groups": ["eng"]})
            ),
            Err(Refusal::ReservedUsername("root".into()))
        );
        assert_eq!(
            decide(&pol, json!({"email_verified": true, "groups": ["eng"]})),
            Err(Refusal::MissingUsernameClaim("email".into()))
        );
    }

    #[test]
    fn templates() {
        assert_eq!(
            PrincipalTemplate::parse("{username}"),
            Ok(PrincipalTemplate::Username)
        );
        assert!(PrincipalTemplate::parse("{user}").is_err());
        assert!(PrincipalTemplate::parse("{username}x").is_err());
        assert_eq!(
            PrincipalTemplate::parse("deploy"),
            Ok(PrincipalTemplate::Literal(p("deploy")))
        );
    }
}
