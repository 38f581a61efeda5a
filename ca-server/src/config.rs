//! The CA's TOML configuration, validated once at start-up. Unknown keys are refused and
//! every error names the key and what is wrong with it.

use crate::elevation::{ApprovalRule, AutoApprove, Elevation, Hours};
use crate::names::{escaped, Principal};
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
    pub krl: KrlConfig,
    #[serde(default)]
    pub hosts: HostsConfig,
    #[serde(default)]
    pub audit: AuditConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub roles: Vec<RoleConfig>,
    #[serde(default)]
    pub elevations: Vec<ElevationConfig>,
    /// Issuers whose ID tokens `POST /v1/auth/token` exchanges for sessions (automation).
    #[serde(default)]
    pub trusted_issuers: Vec<TrustedIssuerConfig>,
}

/// One `[[trusted_issuers]]` entry: an OpenID issuer (a CI system, a workload identity
/// provider) whose ID tokens are exchanged for automation sessions. Such an identity's only
/// principal is `<principal_prefix>.<subject>`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedIssuerConfig {
    /// Exact `iss` string.
    pub issuer: String,
    /// The one `aud` value that names this CA; a token naming any other audience is refused.
    pub audience: String,
    /// Where the signing keys are; default: discovery at `issuer/.well-known/openid-configuration`.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    #[serde(default = "default_subject_claim")]
    pub subject_claim: String,
    /// `^[a-z][a-z0-9-]{0,15}$`.
    pub principal_prefix: String,
    pub roles_from: RolesFromConfig,
    pub max_cert_ttl: HumanDuration,
}

/// `roles_from = { claim = "...", map = { "claim-value" = "role-name" } }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolesFromConfig {
    pub claim: String,
    pub map: std::collections::BTreeMap<String, String>,
}

fn default_subject_claim() -> String {
    "sub".into()
}

/// `^[a-z][a-z0-9-]{0,15}$`.
fn is_principal_prefix(p: &str) -> bool {
    let b = p.as_bytes();
    (1..=16).contains(&b.len())
        && b[0].is_ascii_lowercase()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
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
    /// Offer the RFC 8628 device flow (`pedm-ssh login --device`) through the CA. Off by
    /// default: a user code can be phished (an attacker starts a login and talks someone into
    /// entering its code), so enable it only where people need to sign in without a browser.
    #[serde(default)]
    pub device_flow: bool,
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

/// What key activation waits for: hosts must have had the time to fetch a bundle naming the
/// new key, and enough of them must report that they trust it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostsConfig {
    #[serde(default = "default_refresh_interval")]
    pub refresh_interval: HumanDuration,
    #[serde(default = "default_min_hosts")]
    pub min_hosts: u64,
    #[serde(default = "default_coverage")]
    pub coverage: f64,
}

fn default_refresh_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}
fn default_min_hosts() -> u64 {
    1
}
fn default_coverage() -> f64 {
    0.9
}

impl Default for HostsConfig {
    fn default() -> Self {
        Self {
            refresh_interval: default_refresh_interval(),
            min_hosts: default_min_hosts(),
            coverage: default_coverage(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KrlConfig {
    /// How long a published KRL is valid; it is re-issued when half of that is gone.
    #[serde(default = "default_krl_lifetime")]
    pub lifetime: HumanDuration,
}

fn default_krl_lifetime() -> HumanDuration {
    HumanDuration(Duration::from_secs(3600))
}

impl Default for KrlConfig {
    fn default() -> Self {
        Self {
            lifetime: default_krl_lifetime(),
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Members may use the admin API and revoke any elevation.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Approve, deny and revoke need a browser sign-in this recent, so an approver removed
    /// from a group at the IdP loses the power within this time.
    #[serde(default = "default_one_hour")]
    pub approver_recent_auth: HumanDuration,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            groups: Vec::new(),
            approver_recent_auth: default_one_hour(),
        }
    }
}

fn default_one_hour() -> HumanDuration {
    HumanDuration(Duration::from_secs(3600))
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

/// One `[[elevations]]` entry as written; [`Config::elevations`] gives the validated
/// [`Elevation`]s.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ElevationConfig {
    /// `[a-z0-9_-]{1,32}`, unique: it goes into file names (`PATH-elev-NAME-cert.pub`).
    pub name: String,
    pub principals: Vec<String>,
    /// Names of `[[roles]]`; the requester must hold one.
    pub eligible_roles: Vec<String>,
    pub max_duration: HumanDuration,
    /// The clock starts at first use, which must come this soon after approval.
    #[serde(default = "default_one_hour")]
    pub use_within: HumanDuration,
    #[serde(default = "default_one_hour")]
    pub pending_timeout: HumanDuration,
    /// The requester's browser sign-in must be this recent at request and at first use.
    #[serde(default)]
    pub require_recent_auth: Option<HumanDuration>,
    /// `[[trusted_issuers]]` whose automation identities may request this elevation (their
    /// mapped roles must still be in `eligible_roles`). Default: none may.
    #[serde(default)]
    pub eligible_issuers: Vec<String>,
    #[serde(default)]
    pub approval: Option<ApprovalConfig>,
    #[serde(default)]
    pub auto_approve: Option<AutoApproveConfig>,
}

/// `approval = { groups = [...], count = N }`; the requester never counts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalConfig {
    pub groups: Vec<String>,
    #[serde(default = "default_count")]
    pub count: u32,
}

fn default_count() -> u32 {
    1
}

/// `auto_approve = { groups, reason_matches, hours }`: every condition given must hold.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoApproveConfig {
    #[serde(default)]
    pub groups: Option<Vec<String>>,
    /// A regular expression (Rust `regex` syntax) that must match the whole reason.
    #[serde(default)]
    pub reason_matches: Option<String>,
    #[serde(default)]
    pub hours: Option<HoursConfig>,
}

/// `hours = { days = "Mon-Fri", from = "08:00", to = "18:00", tz = "Europe/Berlin" }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoursConfig {
    pub days: String,
    pub from: String,
    pub to: String,
    /// An IANA time zone name, resolved from the system's zone database at start-up.
    pub tz: String,
}

/// `[a-z0-9_-]{1,32}`.
fn is_elevation_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-'))
}

/// A non-empty list of non-empty names, as a set.
fn group_set(key: String, groups: &[String]) -> Result<BTreeSet<String>, ConfigError> {
    if groups.is_empty() || groups.iter().any(String::is_empty) {
        return Err(invalid(key, "must list at least one non-empty group"));
    }
    Ok(groups.iter().cloned().collect())
}

/// Checks and builds elevation `i`. Validation and construction are this one function, so
/// [`Config::elevations`] cannot build anything [`Config::validate`] did not check.
fn build_elevation(
    i: usize,
    e: &ElevationConfig,
    roles: &BTreeSet<&str>,
    issuers: &BTreeSet<&str>,
) -> Result<Elevation, ConfigError> {
    let key = |f: &str| format!("elevations[{i}].{f}");
    if !is_elevation_name(&e.name) {
        return Err(invalid(
            key("name"),
            format!(
                "{} must be 1 to 32 characters of [a-z0-9_-] (it becomes part of file names)",
                escaped(&e.name)
            ),
        ));
    }
    if e.principals.is_empty() {
        return Err(invalid(
            key("principals"),
            "must list at least one principal",
        ));
    }
    let principals = e
        .principals
        .iter()
        .enumerate()
        .map(|(j, p)| {
            Principal::new(p)
                .map_err(|err| invalid(format!("elevations[{i}].principals[{j}]"), err.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if e.eligible_roles.is_empty() {
        return Err(invalid(
            key("eligible_roles"),
            "must list at least one role of [[roles]]",
        ));
    }
    for (j, r) in e.eligible_roles.iter().enumerate() {
        if !roles.contains(r.as_str()) {
            return Err(invalid(
                format!("elevations[{i}].eligible_roles[{j}]"),
                format!(
                    "{} is not a role; configured roles: {}",
                    escaped(r),
                    if roles.is_empty() {
                        "(none)".to_string()
                    } else {
                        roles.iter().copied().collect::<Vec<_>>().join(", ")
                    }
                ),
            ));
        }
    }
    for (j, iss) in e.eligible_issuers.iter().enumerate() {
        if !issuers.contains(iss.as_str()) {
            return Err(invalid(
                format!("elevations[{i}].eligible_issuers[{j}]"),
                format!(
                    "{} is not the issuer of any [[trusted_issuers]] entry",
                    escaped(iss)
                ),
            ));
        }
    }
    // HumanDuration refuses zero already; this guards the invariant if that ever changes.
    if e.max_duration.0.is_zero() {
        return Err(invalid(key("max_duration"), "must be positive"));
    }
    let approval = match &e.approval {
        None => None,
        Some(a) => {
            let groups = group_set(key("approval.groups"), &a.groups)?;
            if a.count < 1 {
                return Err(invalid(
                    key("approval.count"),
                    "must be at least 1 (the requester never counts)",
                ));
            }
            Some(ApprovalRule {
                groups,
                count: a.count,
            })
        }
    };
    let auto_approve = match &e.auto_approve {
        None => None,
        Some(a) => {
            if a.groups.is_none() && a.reason_matches.is_none() && a.hours.is_none() {
                return Err(invalid(
                    key("auto_approve"),
                    "has no condition; give groups, reason_matches or hours (all given must hold), or remove it",
                ));
            }
            let groups = a
                .groups
                .as_deref()
                .map(|g| group_set(key("auto_approve.groups"), g))
                .transpose()?;
            let reason_matches = a
                .reason_matches
                .as_deref()
                .map(|r| {
                    AutoApprove::whole_match(r).map_err(|err| {
                        invalid(
                            key("auto_approve.reason_matches"),
                            format!("{} is not a valid regular expression: {err}", escaped(r)),
                        )
                    })
                })
                .transpose()?;
            let hours = a
                .hours
                .as_ref()
                .map(|h| {
                    let tz = jiff::tz::TimeZone::get(&h.tz).map_err(|err| {
                        invalid(
                            key("auto_approve.hours.tz"),
                            format!(
                                "{} is not a time zone of the system's zone database (an IANA name like \"Europe/Berlin\"; is tzdata installed?): {err}",
                                escaped(&h.tz)
                            ),
                        )
                    })?;
                    Hours::new(&h.days, &h.from, &h.to, &h.tz, tz).map_err(|err| {
                        invalid(key(&format!("auto_approve.hours.{}", err.field)), err.message)
                    })
                })
                .transpose()?;
            Some(AutoApprove {
                groups,
                reason_matches,
                hours,
            })
        }
    };
    if approval.is_none() && auto_approve.is_none() {
        return Err(invalid(
            key("approval"),
            "neither approval nor auto_approve is set, so nobody could ever grant this elevation; add approval = { groups = [...], count = 1 } or auto_approve",
        ));
    }
    Ok(Elevation {
        name: e.name.clone(),
        principals,
        eligible_roles: e.eligible_roles.iter().cloned().collect(),
        eligible_issuers: e.eligible_issuers.iter().cloned().collect(),
        max_duration: e.max_duration.0,
        use_within: e.use_within.0,
        pending_timeout: e.pending_timeout.0,
        require_recent_auth: e.require_recent_auth.map(|d| d.0),
        approval,
        auto_approve,
    })
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
        if !(0.0..=1.0).contains(&self.hosts.coverage) {
            return Err(invalid(
                "hosts.coverage",
                "must be between 0 and 1 (a share of the checked-in hosts)",
            ));
        }
        if self.krl.lifetime.0.as_secs() < 2 {
            return Err(invalid("krl.lifetime", "must be at least 2s"));
        }
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
        let roles: BTreeSet<&str> = self.roles.iter().map(|r| r.name.as_str()).collect();
        self.validate_trusted_issuers(&roles)?;
        let issuers = self.trusted_issuer_names();
        let mut names = BTreeSet::new();
        for (i, e) in self.elevations.iter().enumerate() {
            build_elevation(i, e, &roles, &issuers)?;
            if !names.insert(e.name.as_str()) {
                return Err(invalid(
                    format!("elevations[{i}].name"),
                    format!("{} is used twice", escaped(&e.name)),
                ));
            }
        }
        Ok(())
    }

    fn trusted_issuer_names(&self) -> BTreeSet<&str> {
        self.trusted_issuers
            .iter()
            .map(|t| t.issuer.as_str())
            .collect()
    }

    fn validate_trusted_issuers(&self, roles: &BTreeSet<&str>) -> Result<(), ConfigError> {
        let mut seen_issuers = BTreeSet::new();
        let mut seen_prefixes = BTreeSet::new();
        for (i, t) in self.trusted_issuers.iter().enumerate() {
            let key = |f: &str| format!("trusted_issuers[{i}].{f}");
            if t.issuer.is_empty() {
                return Err(invalid(key("issuer"), "must not be empty"));
            }
            url::Url::parse(&t.issuer)
                .map_err(|e| invalid(key("issuer"), format!("not a URL: {e}")))?;
            if !seen_issuers.insert(t.issuer.as_str()) {
                return Err(invalid(
                    key("issuer"),
                    format!("{} is listed twice", escaped(&t.issuer)),
                ));
            }
            if self.oidc.as_ref().is_some_and(|o| o.issuer == t.issuer) {
                return Err(invalid(
                    key("issuer"),
                    "equals [oidc] issuer; people sign in through [oidc], automation through a different issuer",
                ));
            }
            if t.audience.is_empty() {
                return Err(invalid(
                    key("audience"),
                    "must not be empty: it is the value that names this CA",
                ));
            }
            if let Some(u) = &t.jwks_uri {
                match url::Url::parse(u) {
                    Ok(u) if matches!(u.scheme(), "https" | "http") => {}
                    _ => return Err(invalid(key("jwks_uri"), "must be an http(s) URL")),
                }
            }
            if t.subject_claim.is_empty() {
                return Err(invalid(key("subject_claim"), "must not be empty"));
            }
            if !is_principal_prefix(&t.principal_prefix) {
                return Err(invalid(
                    key("principal_prefix"),
                    format!(
                        "{} does not match ^[a-z][a-z0-9-]{{0,15}}$",
                        escaped(&t.principal_prefix)
                    ),
                ));
            }
            if !seen_prefixes.insert(t.principal_prefix.as_str()) {
                return Err(invalid(
                    key("principal_prefix"),
                    format!(
                        "{} is used by another trusted issuer",
                        escaped(&t.principal_prefix)
                    ),
                ));
            }
            if t.roles_from.claim.is_empty() {
                return Err(invalid(key("roles_from.claim"), "must not be empty"));
            }
            if t.roles_from.map.is_empty() {
                return Err(invalid(
                    key("roles_from.map"),
                    "must map at least one claim value to a role",
                ));
            }
            for (value, role) in &t.roles_from.map {
                if !roles.contains(role.as_str()) {
                    return Err(invalid(
                        format!("trusted_issuers[{i}].roles_from.map.{value}"),
                        format!("{} is not a role of [[roles]]", escaped(role)),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The validated elevations. Infallible: [`Config::parse`] built each one already
    /// (and refused the configuration if any failed).
    pub fn elevations(&self) -> Vec<Elevation> {
        let roles: BTreeSet<&str> = self.roles.iter().map(|r| r.name.as_str()).collect();
        let issuers = self.trusted_issuer_names();
        self.elevations
            .iter()
            .enumerate()
            .filter_map(|(i, e)| build_elevation(i, e, &roles, &issuers).ok())
            .collect()
    }

    /// The admin groups, as a set.
    pub fn admin_groups(&self) -> BTreeSet<String> {
        self.admin.groups.iter().cloned().collect()
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
            automation_prefixes: self
                .trusted_issuers
                .iter()
                .map(|t| t.principal_prefix.clone())
                .collect(),
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
        assert!(c.elevations().is_empty());
        assert_eq!(c.admin.approver_recent_auth.0, Duration::from_secs(3600));
        assert!(c.admin_groups().is_empty());
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
eligible_roles = ["engineer"]
max_duration = "30m"
require_recent_auth = "15m"
use_within = "2h"
approval = { groups = ["security"], count = 2 }
auto_approve = { groups = ["oncall"], reason_matches = "INC-[0-9]+", hours = { days = "Mon-Fri", from = "08:00", to = "18:00", tz = "Europe/Berlin" } }
[[elevations]]
name = "read_only-2"
principals = ["reader", "Reader.2"]
eligible_roles = ["engineer"]
max_duration = "1h"
approval = { groups = ["security", "leads"] }
"#,
        )
        .unwrap();
        let es = c.elevations();
        assert_eq!(es.len(), 2);
        let e = &es[0];
        assert_eq!(e.name, "db-admin");
        assert_eq!(e.principals, [Principal::new("db-admin").unwrap()]);
        assert_eq!(e.eligible_roles, ["engineer".to_string()].into());
        assert_eq!(e.max_duration, Duration::from_secs(1800));
        assert_eq!(e.require_recent_auth, Some(Duration::from_secs(900)));
        assert_eq!(e.use_within, Duration::from_secs(7200));
        assert_eq!(e.pending_timeout, Duration::from_secs(3600));
        assert_eq!(
            e.approval,
            Some(ApprovalRule {
                groups: ["security".to_string()].into(),
                count: 2
            })
        );
        let a = e.auto_approve.as_ref().unwrap();
        assert_eq!(a.groups, Some(["oncall".to_string()].into()));
        let re = a.reason_matches.as_ref().unwrap();
        assert!(re.is_match("INC-1234") && !re.is_match("INC-1234 x") && !re.is_match("xINC-1"));
        let h = a.hours.as_ref().unwrap();
        assert_eq!(h.to_string(), "Mon-Fri 08:00-18:00 Europe/Berlin");
        // Defaults of the second one.
        let e = &es[1];
        assert_eq!(e.use_within, Duration::from_secs(3600));
        assert_eq!(e.pending_timeout, Duration::from_secs(3600));
        assert_eq!(e.require_recent_auth, None);
        assert_eq!(e.approval.as_ref().unwrap().count, 1);
        assert!(e.auto_approve.is_none());
        assert_eq!(c.admin.approver_recent_auth.0, Duration::from_secs(3600));
        let p = c.policy();
        assert!(p
            .elevation_principals
            .contains(&Principal::new("Reader.2").unwrap()));
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

    const ROLES: &str = r#"
[[roles]]
name = "engineer"
groups = ["eng"]
principals = ["{username}"]
[[roles]]
name = "oncall"
groups = ["oncall"]
principals = ["{username}"]
"#;

    /// A config with one elevation whose body is `db-admin`'s, with `line` replacing the
    /// line of the same key (or added, when no line has that key; "-key" removes it).
    fn elevation(changes: &[&str]) -> String {
        let mut lines = vec![
            "name = \"db-admin\"".to_string(),
            "principals = [\"db-admin\"]".into(),
            "eligible_roles = [\"engineer\"]".into(),
            "max_duration = \"30m\"".into(),
            "approval = { groups = [\"security\"], count = 1 }".into(),
        ];
        for c in changes {
            let (key, remove) = match c.strip_prefix('-') {
                Some(k) => (k.to_string(), true),
                None => (c.split(" =").next().unwrap_or("").to_string(), false),
            };
            let pos = lines
                .iter()
                .position(|l| l.starts_with(&format!("{key} =")));
            match (pos, remove) {
                (Some(i), true) => {
                    lines.remove(i);
                }
                (Some(i), false) => lines[i] = c.to_string(),
                (None, _) => lines.push(c.to_string()),
            }
        }
        format!("{ROLES}[[elevations]]\n{}\n", lines.join("\n"))
    }

    fn elevation_err(changes: &[&str]) -> String {
        err(&elevation(changes))
    }

    #[test]
    fn admin_section() {
        let c = parse("[admin]\ngroups = [\"sec-admin\"]\napprover_recent_auth = \"30s\"").unwrap();
        assert_eq!(c.admin.approver_recent_auth.0, Duration::from_secs(30));
        assert_eq!(c.admin_groups(), ["sec-admin".to_string()].into());
        assert!(err("[admin]\napprover_recent_auth = \"0s\"").contains("approver_recent_auth"));
        assert!(err("[admin]\nrecent = \"1h\"").contains("recent"));
    }

    #[test]
    fn elevation_base_is_valid() {
        let c = parse(&elevation(&[])).unwrap();
        assert_eq!(c.elevations().len(), 1);
        // Auto-approval only (no approval rule) is fine.
        let c = parse(&elevation(&[
            "-approval",
            "auto_approve = { reason_matches = \"INC-[0-9]+\" }",
        ]))
        .unwrap();
        assert!(c.elevations()[0].approval.is_none());
        for ok in [
            "auto_approve = { groups = [\"oncall\"] }",
            "auto_approve = { hours = { days = \"Sat,Sun\", from = \"00:00\", to = \"24:00\", tz = \"UTC\" } }",
            "auto_approve = { hours = { days = \"Mon,Wed-Fri\", from = \"09:30\", to = \"17:15\", tz = \"America/New_York\" } }",
        ] {
            assert!(parse(&elevation(&[ok])).is_ok(), "{ok}");
        }
    }

    fn refused(changes: &[&str], key: &str) {
        let e = elevation_err(changes);
        assert!(e.contains(key), "{changes:?}: expected {key} in {e}");
    }

    #[test]
    fn elevation_names() {
        for ok in ["a", "db-admin", "x_1", &"a".repeat(32)] {
            assert!(
                parse(&elevation(&[&format!("name = \"{ok}\"")])).is_ok(),
                "{ok}"
            );
        }
        for bad in [
            "",
            "DB",
            "db admin",
            "db/admin",
            "../x",
            "db.admin",
            "é",
            &"a".repeat(33),
        ] {
            refused(&[&format!("name = \"{bad}\"")], "elevations[0].name");
        }
        let twice = format!(
            "{}[[elevations]]\nname = \"db-admin\"\nprincipals = [\"x\"]\neligible_roles = [\"engineer\"]\nmax_duration = \"1m\"\napproval = {{ groups = [\"s\"] }}\n",
            elevation(&[])
        );
        let e = err(&twice);
        assert!(
            e.contains("elevations[1].name") && e.contains("used twice"),
            "{e}"
        );
    }

    #[test]
    fn elevation_principals_and_roles() {
        refused(&["principals = []"], "elevations[0].principals");
        refused(
            &["principals = [\"ok\", \"a,b\"]"],
            "elevations[0].principals[1]",
        );
        refused(&["principals = [\"../x\"]"], "elevations[0].principals[0]");
        refused(&["principals = [\"a b\"]"], "elevations[0].principals[0]");
        refused(&["eligible_roles = []"], "elevations[0].eligible_roles");
        let e = elevation_err(&["eligible_roles = [\"engineer\", \"admin\"]"]);
        assert!(e.contains("elevations[0].eligible_roles[1]"), "{e}");
        assert!(
            e.contains("\"admin\" is not a role") && e.contains("engineer, oncall"),
            "{e}"
        );
        refused(&["-eligible_roles"], "eligible_roles");
    }

    #[test]
    fn elevation_durations() {
        refused(&["-max_duration"], "max_duration");
        refused(&["max_duration = \"0s\""], "max_duration");
        refused(&["max_duration = \"30 minutes\""], "max_duration");
        refused(&["use_within = \"0m\""], "use_within");
        refused(&["pending_timeout = \"soon\""], "pending_timeout");
        refused(&["require_recent_auth = \"0s\""], "require_recent_auth");
    }

    #[test]
    fn elevation_approval_rule() {
        refused(
            &["approval = { groups = [\"security\"], count = 0 }"],
            "elevations[0].approval.count",
        );
        refused(
            &["approval = { groups = [\"security\"], count = -1 }"],
            "count",
        );
        refused(
            &["approval = { groups = [], count = 1 }"],
            "elevations[0].approval.groups",
        );
        refused(
            &["approval = { groups = [\"\"], count = 1 }"],
            "elevations[0].approval.groups",
        );
        refused(&["approval = { groups = [\"s\"], cnt = 1 }"], "cnt");
        // Nobody could ever grant it.
        let e = elevation_err(&["-approval"]);
        assert!(
            e.contains("elevations[0].approval") && e.contains("nobody could ever grant"),
            "{e}"
        );
    }

    #[test]
    fn elevation_auto_approve() {
        let e = elevation_err(&["auto_approve = {}"]);
        assert!(
            e.contains("elevations[0].auto_approve") && e.contains("no condition"),
            "{e}"
        );
        refused(
            &["auto_approve = { groups = [] }"],
            "elevations[0].auto_approve.groups",
        );
        refused(&["auto_approve = { group = [\"x\"] }"], "group");
        let e = elevation_err(&["auto_approve = { reason_matches = \"INC-(\" }"]);
        assert!(
            e.contains("elevations[0].auto_approve.reason_matches")
                && e.contains("not a valid regular expression"),
            "{e}"
        );
        // Valid only once wrapped in ^(?:…)$: refused, the anchors must hold.
        refused(
            &["auto_approve = { reason_matches = \"a)|(b\" }"],
            "elevations[0].auto_approve.reason_matches",
        );
    }

    #[test]
    fn elevation_hours() {
        let hours = |days: &str, from: &str, to: &str, tz: &str| {
            format!("auto_approve = {{ hours = {{ days = \"{days}\", from = \"{from}\", to = \"{to}\", tz = \"{tz}\" }} }}")
        };
        let key = "elevations[0].auto_approve.hours.";
        for bad in ["Mon-Fry", "", "Fri-Mon", "mon", "Mon;Tue"] {
            refused(
                &[&hours(bad, "08:00", "18:00", "UTC")],
                &format!("{key}days"),
            );
        }
        for bad in ["8:00", "24:00", "08:60", "08h00"] {
            refused(&[&hours("Mon", bad, "18:00", "UTC")], &format!("{key}from"));
        }
        for bad in ["25:00", "18:0"] {
            refused(&[&hours("Mon", "08:00", bad, "UTC")], &format!("{key}to"));
        }
        let e = elevation_err(&[&hours("Mon", "18:00", "08:00", "UTC")]);
        assert!(
            e.contains(&format!("{key}to")) && e.contains("not after"),
            "{e}"
        );
        for bad in ["Mars/Olympus", "CEST+2", "", "../../etc/passwd"] {
            refused(&[&hours("Mon", "08:00", "18:00", bad)], &format!("{key}tz"));
        }
        refused(
            &["auto_approve = { hours = { days = \"Mon\", from = \"08:00\", to = \"18:00\" } }"],
            "tz",
        );
        refused(&["auto_approve = { hours = { days = \"Mon\", from = \"08:00\", to = \"18:00\", tz = \"UTC\", dst = true } }"], "dst");
    }

    const TRUSTED: &str = r#"
[[trusted_issuers]]
issuer = "https://ci.example.com"
audience = "pedm-ca"
principal_prefix = "ci"
roles_from = { claim = "repo", map = { "org/app" = "engineer" } }
max_cert_ttl = "5m"
"#;

    fn trusted(changes: &[(&str, &str)]) -> String {
        let mut t = TRUSTED.to_string();
        for (from, to) in changes {
            assert!(t.contains(from), "{from}");
            t = t.replace(from, to);
        }
        format!("{ROLES}{t}")
    }

    #[test]
    fn trusted_issuers_parse_with_defaults() {
        let c = parse(&trusted(&[])).unwrap();
        let t = &c.trusted_issuers[0];
        assert_eq!(t.subject_claim, "sub");
        assert!(t.jwks_uri.is_none());
        assert_eq!(t.max_cert_ttl.0, Duration::from_secs(300));
        assert_eq!(t.roles_from.map["org/app"], "engineer");
        assert!(parse("").unwrap().trusted_issuers.is_empty());
    }

    #[test]
    fn trusted_issuer_refusals_name_the_key() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("audience = \"pedm-ca\"", "audience = \"\"")],
                "trusted_issuers[0].audience",
            ),
            (&[("audience = \"pedm-ca\"\n", "")], "audience"),
            (&[("max_cert_ttl = \"5m\"\n", "")], "max_cert_ttl"),
            (&[("principal_prefix = \"ci\"\n", "")], "principal_prefix"),
            (
                &[("\"ci\"", "\"CI\"")],
                "trusted_issuers[0].principal_prefix",
            ),
            (
                &[("\"ci\"", "\"1ci\"")],
                "trusted_issuers[0].principal_prefix",
            ),
            (
                &[("\"ci\"", "\"ci.x\"")],
                "trusted_issuers[0].principal_prefix",
            ),
            (
                &[("\"ci\"", "\"abcdefghijklmnopq\"")],
                "trusted_issuers[0].principal_prefix",
            ),
            (
                &[("= \"engineer\"", "= \"admin\"")],
                "trusted_issuers[0].roles_from.map.org/app",
            ),
            (
                &[("map = { \"org/app\" = \"engineer\" }", "map = {}")],
                "trusted_issuers[0].roles_from.map",
            ),
            (
                &[("\"https://ci.example.com\"", "\"not a url\"")],
                "trusted_issuers[0].issuer",
            ),
            (&[("max_cert_ttl", "max_ttl")], "max_ttl"),
        ];
        for (changes, key) in cases {
            let e = err(&trusted(changes));
            assert!(e.contains(key), "{changes:?}: expected {key} in {e}");
        }
        // The longest prefix is fine.
        assert!(parse(&trusted(&[("\"ci\"", "\"abcdefghijklmnop\"")])).is_ok());
        // Twice the same issuer.
        let twice = format!("{}{}", trusted(&[]), TRUSTED.replace("\"ci\"", "\"ci2\""));
        let e = err(&twice);
        assert!(
            e.contains("trusted_issuers[1].issuer") && e.contains("twice"),
            "{e}"
        );
        // Twice the same prefix.
        let twice = format!(
            "{}{}",
            trusted(&[]),
            TRUSTED.replace("ci.example.com", "other.example.com")
        );
        assert!(err(&twice).contains("trusted_issuers[1].principal_prefix"));
        // The people's issuer.
        let e = err(&format!(
            "[oidc]\nissuer = \"https://ci.example.com\"\nclient_id = \"c\"\n{}",
            trusted(&[])
        ));
        assert!(
            e.contains("trusted_issuers[0].issuer") && e.contains("[oidc]"),
            "{e}"
        );
    }

    #[test]
    fn elevation_eligible_issuers() {
        let ok = format!(
            "{}{}",
            elevation(&["eligible_issuers = [\"https://ci.example.com\"]"]),
            TRUSTED
        );
        let c = parse(&ok).unwrap();
        assert_eq!(
            c.elevations()[0].eligible_issuers,
            ["https://ci.example.com".to_string()].into()
        );
        assert!(parse(&elevation(&[])).unwrap().elevations()[0]
            .eligible_issuers
            .is_empty());
        let bad = format!(
            "{}{}",
            elevation(&["eligible_issuers = [\"https://other.example.com\"]"]),
            TRUSTED
        );
        let e = err(&bad);
        assert!(e.contains("elevations[0].eligible_issuers[0]"), "{e}");
    }

    #[test]
    fn elevation_unknown_key() {
        refused(&["approvers = [\"x\"]"], "approvers");
    }
}
