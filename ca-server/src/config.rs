//! The CA's TOML configuration, validated once at start-up. Unknown keys are refused and
//! every error names the key and what is wrong with it.

use crate::names::Principal;
use crate::policy::{Policy, PrincipalTemplate, Role, UsernameSource, KNOWN_EXTENSIONS};
use serde::{Deserialize, Deserializer};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A duration written as `"20s"`, `"15m"`, `"8h"` or `"7d"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        pedm_api::duration::parse(&text)
            .map(HumanDuration)
            .map_err(serde::de::Error::custom)
    }
}

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `IP:PORT`; port 0 picks a free port and prints `listening on ADDR`.
    pub listen: SocketAddr,
    /// The URL clients use to reach this CA (also the base of the OIDC callback flow).
    pub public_url: String,
    pub data_dir: PathBuf,
    /// File holding the key passphrase (mode 0600); else `PEDM_CA_PASSPHRASE`.
    #[serde(default)]
    pub passphrase_file: Option<PathBuf>,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    #[serde(default)]
    pub oidc: Option<OidcConfig>,
    #[serde(default)]
    pub certs: CertsConfig,
    #[serde(default)]
    pub bundle: BundleConfig,
    #[serde(default)]
    pub audit: AuditConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub roles: Vec<RoleConfig>,
    #[serde(default)]
    pub elevations: Vec<ElevationConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// Exact issuer string (no trailing slash unless the IdP uses one).
    pub issuer: String,
    pub client_id: String,
    /// Mode 0600; else the environment variable `PEDM_OIDC_CLIENT_SECRET`.
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    #[serde(default = "default_username_claim")]
    pub username_claim: String,
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Required when `username_claim = "email"`.
    #[serde(default)]
    pub allowed_email_domains: Vec<String>,
    /// How recent the IdP sign-in must be (`max_age`), so `auth_time` is always present.
    #[serde(default = "default_max_age")]
    pub max_age: HumanDuration,
    /// A fixed loopback callback port for IdPs that want one exact redirect URI.
    #[serde(default)]
    pub redirect_port: Option<u16>,
}

impl OidcConfig {
    /// The client secret: `client_secret_file` (which must be 0600), else the environment
    /// variable `PEDM_OIDC_CLIENT_SECRET`.
    pub fn client_secret(&self) -> Result<String, ConfigError> {
        if let Some(path) = &self.client_secret_file {
            crate::signer::check_private_file_mode(path)
                .map_err(|e| invalid("oidc.client_secret_file", e.to_string()))?;
            let text = std::fs::read_to_string(path).map_err(|e| {
                invalid(
                    "oidc.client_secret_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            let secret = text.trim_end_matches(['\n', '\r']).to_string();
            if secret.is_empty() {
                return Err(invalid(
                    "oidc.client_secret_file",
                    format!("{} is empty", path.display()),
                ));
            }
            return Ok(secret);
        }
        match std::env::var("PEDM_OIDC_CLIENT_SECRET") {
            Ok(s) if !s.is_empty() => Ok(s),
            _ => Err(invalid(
                "oidc.client_secret_file",
                "no client secret: set oidc.client_secret_file (mode 0600) or PEDM_OIDC_CLIENT_SECRET",
            )),
        }
    }
}

fn default_username_claim() -> String {
    "preferred_username".into()
}
fn default_groups_claim() -> String {
    "groups".into()
}
fn default_max_age() -> HumanDuration {
    HumanDuration(Duration::from_secs(8 * 3600))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertsConfig {
    #[serde(default = "default_ttl")]
    pub default_ttl: HumanDuration,
    #[serde(default = "default_skew")]
    pub clock_skew: HumanDuration,
    #[serde(default = "default_session_ttl")]
    pub session_ttl: HumanDuration,
    #[serde(default = "default_reserved")]
    pub reserved_principals: Vec<String>,
}

fn default_ttl() -> HumanDuration {
    HumanDuration(Duration::from_secs(600))
}
fn default_skew() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}
fn default_session_ttl() -> HumanDuration {
    HumanDuration(Duration::from_secs(8 * 3600))
}
fn default_reserved() -> Vec<String> {
    vec!["root".into(), "break-glass".into()]
}

impl Default for CertsConfig {
    fn default() -> Self {
        Self {
            default_ttl: default_ttl(),
            clock_skew: default_skew(),
            session_ttl: default_session_ttl(),
            reserved_principals: default_reserved(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleConfig {
    #[serde(default = "default_bundle_lifetime")]
    pub lifetime: HumanDuration,
}

fn default_bundle_lifetime() -> HumanDuration {
    HumanDuration(Duration::from_secs(7 * 86_400))
}

impl Default for BundleConfig {
    fn default() -> Self {
        Self {
            lifetime: default_bundle_lifetime(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// A signed checkpoint of the chain head at least every this many records.
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u64,
}

fn default_checkpoint_every() -> u64 {
    1000
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            checkpoint_every: default_checkpoint_every(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default)]
    pub groups: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleConfig {
    pub name: String,
    pub groups: Vec<String>,
    pub principals: Vec<String>,
    #[serde(default)]
    pub max_cert_ttl: Option<HumanDuration>,
    #[serde(default)]
    pub extensions: Vec<String>,
}

/// Of an elevation this version reads only its name and principals, so that no username
/// can equal a principal an elevation grants.
#[derive(Debug, Clone, Deserialize)]
pub struct ElevationConfig {
    pub name: String,
    pub principals: Vec<String>,
}

impl Config {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates configuration text; `path` is used in messages only.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !self.listen.ip().is_loopback() && self.tls.is_none() {
            return Err(invalid(
                "listen",
                format!(
                    "{} is not a loopback address and [tls] is missing; serve TLS (set [tls] cert_file and key_file) or listen on 127.0.0.1 behind a TLS proxy",
                    self.listen
                ),
            ));
        }
        let url = url::Url::parse(&self.public_url)
            .map_err(|e| invalid("public_url", format!("not a URL: {e}")))?;
        if url.scheme() != "https"
            && !matches!(url.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"))
        {
            return Err(invalid(
                "public_url",
                "must be https:// unless it is a loopback address",
            ));
        }
        if let Some(oidc) = &self.oidc {
            if oidc.issuer.is_empty() {
                return Err(invalid("oidc.issuer", "must not be empty"));
            }
            if oidc.client_id.is_empty() {
                return Err(invalid("oidc.client_id", "must not be empty"));
            }
            if oidc.username_claim == "email" && oidc.allowed_email_domains.is_empty() {
                return Err(invalid(
                    "oidc.allowed_email_domains",
                    "must list at least one domain when username_claim = \"email\"",
                ));
            }
        }
        for (i, p) in self.certs.reserved_principals.iter().enumerate() {
            Principal::new(p)
                .map_err(|e| invalid(format!("certs.reserved_principals[{i}]"), e.to_string()))?;
        }
        if self.audit.checkpoint_every == 0 {
            return Err(invalid("audit.checkpoint_every", "must be at least 1"));
        }
        let mut names = BTreeSet::new();
        for (i, r) in self.roles.iter().enumerate() {
            let key = |f: &str| format!("roles[{i}].{f}");
            if r.name.is_empty() || !names.insert(r.name.clone()) {
                return Err(invalid(
                    key("name"),
                    format!("{:?} is empty or used twice", r.name),
                ));
            }
            if r.groups.is_empty() || r.groups.iter().any(String::is_empty) {
                return Err(invalid(
                    key("groups"),
                    "must list at least one non-empty group",
                ));
            }
            if r.principals.is_empty() {
                return Err(invalid(
                    key("principals"),
                    "must list at least one principal",
                ));
            }
            for (j, p) in r.principals.iter().enumerate() {
                PrincipalTemplate::parse(p).map_err(|e| {
                    invalid(
                        format!("roles[{i}].principals[{j}]"),
                        format!("{e}; or write \"{{username}}\""),
                    )
                })?;
            }
            for (j, e) in r.extensions.iter().enumerate() {
                if !KNOWN_EXTENSIONS.contains(&e.as_str()) {
                    return Err(invalid(
                        format!("roles[{i}].extensions[{j}]"),
                        format!(
                            "unknown extension {e:?}; known: {}",
                            KNOWN_EXTENSIONS.join(", ")
                        ),
                    ));
                }
            }
        }
        let mut names = BTreeSet::new();
        for (i, e) in self.elevations.iter().enumerate() {
            if e.name.is_empty() || !names.insert(e.name.clone()) {
                return Err(invalid(
                    format!("elevations[{i}].name"),
                    format!("{:?} is empty or used twice", e.name),
                ));
            }
            if e.principals.is_empty() {
                return Err(invalid(
                    format!("elevations[{i}].principals"),
                    "must list at least one principal",
                ));
            }
            for (j, p) in e.principals.iter().enumerate() {
                Principal::new(p).map_err(|err| {
                    invalid(format!("elevations[{i}].principals[{j}]"), err.to_string())
                })?;
            }
        }
        Ok(())
    }

    /// The base-certificate policy this configuration describes.
    pub fn policy(&self) -> Policy {
        let roles = self
            .roles
            .iter()
            .map(|r| Role {
                name: r.name.clone(),
                groups: r.groups.iter().cloned().collect(),
                // Validated in `validate`.
                principals: r
                    .principals
                    .iter()
                    .filter_map(|p| PrincipalTemplate::parse(p).ok())
                    .collect(),
                max_cert_ttl: r.max_cert_ttl.map(|d| d.0),
                extensions: r.extensions.iter().cloned().collect(),
            })
            .collect();
        let (username_source, groups_claim) = match &self.oidc {
            Some(o) if o.username_claim == "email" => (
                UsernameSource::Email {
                    allowed_domains: o
                        .allowed_email_domains
                        .iter()
                        .map(|d| d.to_ascii_lowercase())
                        .collect(),
                },
                o.groups_claim.clone(),
            ),
            Some(o) => (
                UsernameSource::Claim(o.username_claim.clone()),
                o.groups_claim.clone(),
            ),
            None => (
                UsernameSource::Claim(default_username_claim()),
                default_groups_claim(),
            ),
        };
        Policy {
            roles,
            elevation_principals: self
                .elevations
                .iter()
                .flat_map(|e| e.principals.iter().filter_map(|p| Principal::new(p).ok()))
                .collect(),
            reserved_principals: self.certs.reserved_principals.iter().cloned().collect(),
            username_source,
            groups_claim,
            default_ttl: self.certs.default_ttl.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
listen = "127.0.0.1:0"
public_url = "http://127.0.0.1:8080"
data_dir = "/tmp/x"
"#;

    fn parse(extra: &str) -> Result<Config, ConfigError> {
        Config::parse(&format!("{BASE}{extra}"), Path::new("ca.toml"))
    }

    fn err(extra: &str) -> String {
        parse(extra).expect_err("must be refused").to_string()
    }

    #[test]
    fn minimal_config_has_safe_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.certs.reserved_principals, ["root", "break-glass"]);
        assert_eq!(c.certs.clock_skew.0, Duration::from_secs(60));
        assert_eq!(c.bundle.lifetime.0, Duration::from_secs(7 * 86_400));
        assert!(c.roles.is_empty());
    }

    #[test]
    fn full_config() {
        let c = parse(
            r#"
[certs]
default_ttl = "20s"
[[roles]]
name = "engineer"
groups = ["eng"]
principals = ["{username}"]
max_cert_ttl = "10m"
extensions = ["permit-pty"]
[[elevations]]
name = "db-admin"
principals = ["db-admin"]
"#,
        )
        .unwrap();
        let p = c.policy();
        assert_eq!(p.roles[0].max_cert_ttl, Some(Duration::from_secs(600)));
        assert_eq!(p.default_ttl, Duration::from_secs(20));
        assert!(p
            .elevation_principals
            .contains(&Principal::new("db-admin").unwrap()));
    }

    #[test]
    fn refusals_name_the_key() {
        assert!(err("bogus = 1").contains("bogus"));
        assert!(err("[certs]\nttl = \"5m\"").contains("ttl"));
        assert!(err("[certs]\ndefault_ttl = \"5 minutes\"").contains("default_ttl"));
        let e = err("[[roles]]\nname = \"r\"\ngroups = [\"g\"]\nprincipals = [\"a,b\"]");
        assert!(e.contains("roles[0].principals[0]"), "{e}");
        let e = err("[[roles]]\nname = \"r\"\ngroups = [\"g\"]\nprincipals = []");
        assert!(e.contains("roles[0].principals"), "{e}");
        let e = err("[[roles]]\nname = \"r\"\ngroups = []\nprincipals = [\"x\"]");
        assert!(e.contains("roles[0].groups"), "{e}");
        let e = err("[[roles]]\nname = \"r\"\ngroups = [\"g\"]\nprincipals = [\"{user}\"]");
        assert!(e.contains("roles[0].principals[0]"), "{e}");
        let e = err("[[roles]]\nname = \"r\"\ngroups = [\"g\"]\nprincipals = [\"x\"]\nextensions = [\"permit-everything\"]");
        assert!(e.contains("roles[0].extensions[0]"), "{e}");
        let e = err("[[elevations]]\nname = \"e\"\nprincipals = [\"../x\"]");
        assert!(e.contains("elevations[0].principals[0]"), "{e}");
        let e = err("[oidc]\nissuer = \"http://i\"\nclient_id = \"c\"\nusername_claim = \"email\"");
        assert!(e.contains("oidc.allowed_email_domains"), "{e}");
        let e = err("[audit]\ncheckpoint_every = 0");
        assert!(e.contains("audit.checkpoint_every"), "{e}");
    }

    #[test]
    fn non_loopback_listen_needs_tls() {
        let text = BASE.replace("127.0.0.1:0", "0.0.0.0:8443");
        let e = Config::parse(&text, Path::new("ca.toml"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("listen") && e.contains("[tls]"), "{e}");
        let with_tls = format!("{text}\n[tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\n");
        assert!(Config::parse(&with_tls, Path::new("ca.toml")).is_ok());
        let text = BASE.replace("http://127.0.0.1:8080", "http://ca.example.com");
        assert!(Config::parse(&text, Path::new("ca.toml"))
            .err()
            .unwrap()
            .to_string()
            .contains("public_url"));
    }
}
