//! `pedm-ca`: initialise, serve, break-glass issuance and audit tools.

use anyhow::Context;
use clap::{Parser, Subcommand};
use pedm_ca::authority::{self, Authority, DB_FILE};
use pedm_ca::config::Config;
use pedm_ca::serve::passphrase;
use pedm_ca::store::{SqliteStore, Store};
use std::io::Write;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "pedm-ca", version, about = "pedm-ssh certificate authority")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a new CA: trust root, first CA key, database.
    ///
    /// Example: PEDM_CA_PASSPHRASE=… pedm-ca init --data-dir /var/lib/pedm-ca
    Init {
        #[arg(long)]
        data_dir: PathBuf,
        /// File holding the passphrase (mode 0600); else PEDM_CA_PASSPHRASE.
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
        /// Write the keys unencrypted (tests and demos only).
        #[arg(long)]
        insecure_no_passphrase: bool,
        /// Lifetime of the first trust bundle.
        #[arg(long, default_value = "7d")]
        bundle_lifetime: String,
    },
    /// Run the CA.
    ///
    /// Example: pedm-ca serve --config /etc/pedm-ca/ca.toml
    Serve {
        #[arg(long)]
        config: PathBuf,
    },
    /// Break-glass: issue a certificate locally, without the identity provider.
    ///
    /// Example: pedm-ca issue --data-dir /var/lib/pedm-ca --public-key id.pub --principal break-glass --ttl 5m --reason "IdP down, INC-42"
    Issue {
        #[arg(long, required_unless_present = "config")]
        data_dir: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
        /// The user's public key file.
        #[arg(long)]
        public_key: PathBuf,
        /// A principal the certificate carries (repeat for more).
        #[arg(long = "principal", required = true)]
        principals: Vec<String>,
        /// Lifetime, at most 1h.
        #[arg(long, default_value = "5m")]
        ttl: String,
        /// Why; recorded in the audit log, never in the certificate.
        #[arg(long)]
        reason: String,
        /// Write the certificate here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Revoke a certificate by serial, every certificate of a user (and their sign-ins until
    /// `unrevoke`), or every certificate on a public key. Hosts refuse them after their next
    /// refresh of the KRL.
    ///
    /// Example: pedm-ca revoke --data-dir /var/lib/pedm-ca --user mallory --reason "left the company"
    #[command(group(clap::ArgGroup::new("target").required(true).args(["serial", "user", "public_key", "ca_key"])))]
    Revoke {
        #[arg(long, required_unless_present = "config")]
        data_dir: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        serial: Option<u64>,
        #[arg(long)]
        user: Option<String>,
        /// The user's public key file.
        #[arg(long)]
        public_key: Option<PathBuf>,
        /// A CA key by `SHA256:` fingerprint (not the active one): everything it signed.
        #[arg(long)]
        ca_key: Option<String>,
        /// Why; recorded in the audit log.
        #[arg(long)]
        reason: String,
    },
    /// Let a revoked user sign in again (their old certificates stay revoked).
    ///
    /// Example: pedm-ca unrevoke --data-dir /var/lib/pedm-ca --user mallory --reason "back, new laptop"
    Unrevoke {
        #[arg(long, required_unless_present = "config")]
        data_dir: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        user: String,
        #[arg(long)]
        reason: String,
    },
    /// CA key rotation: list, status, stage, activate. Safe while `serve` runs: it signs with
    /// the new key from the moment the activation commits.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Trust bundles with an offline root: draft here, sign where the root lives, import.
    Bundle {
        #[command(subcommand)]
        command: BundleCommand,
    },
    /// Replace a compromised trust root: a new root signs a new bundle; hosts must be
    /// re-installed with the new fingerprint, and `serve` restarted.
    ///
    /// Example: pedm-ca replace-root --config /etc/pedm-ca/ca.toml --reason "INC-9: root key exposed"
    ReplaceRoot {
        #[command(flatten)]
        target: KeysTarget,
        #[arg(long)]
        reason: String,
    },
    /// Host enrollment and coverage.
    Hosts {
        #[command(subcommand)]
        command: HostsCommand,
    },
    /// Audit log tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Usage report: per elevation and per principal, how often it was requested, approved
    /// automatically or by a person, denied, lapsed, and how long grants lasted.
    ///
    /// Example: pedm-ca report --config /etc/pedm-ca/ca.toml --since 30d --json
    Report {
        #[arg(long)]
        config: PathBuf,
        /// How far back (requests created since then).
        #[arg(long, default_value = "30d")]
        since: String,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Policy tools (read the configuration only, never the store).
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Say which rule grants or refuses a base certificate and an elevation, and why.
    ///
    /// Exits 0 when granted or pending approval, 4 when refused. The requester is assumed to
    /// have just signed in through the browser.
    ///
    /// Example: pedm-ca policy explain --config ca.toml --user alice --groups eng,oncall --elevation db-admin --reason INC-1234 --at 2024-03-29T09:00:00+01:00
    Explain {
        #[arg(long)]
        config: PathBuf,
        /// The username, as the username claim would carry it.
        #[arg(long)]
        user: String,
        /// The IdP groups, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "")]
        groups: Vec<String>,
        /// An elevation to explain a request for.
        #[arg(long)]
        elevation: Option<String>,
        /// The request's reason.
        #[arg(long)]
        reason: Option<String>,
        /// The time to decide at (RFC 3339, e.g. 2024-03-29T09:00:00Z); default now.
        #[arg(long)]
        at: Option<String>,
    },
}

/// Exit code when `policy explain` finds the request refused (as `pedm-ssh` uses for denied).
const EXIT_REFUSED: i32 = 4;

#[derive(clap::Args)]
struct KeysTarget {
    /// The CA configuration ([hosts] guards, [bundle] lifetime).
    #[arg(long, required_unless_present = "data_dir")]
    config: Option<PathBuf>,
    /// The data directory, with the default guards (refresh 5m, 1 host, 90%).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Every CA key ever used, with its state.
    ///
    /// Example: pedm-ca keys list --config /etc/pedm-ca/ca.toml
    List(KeysTarget),
    /// The staged key's activation guards and host coverage.
    ///
    /// Example: pedm-ca keys status --config /etc/pedm-ca/ca.toml
    Status(KeysTarget),
    /// Create a new key and publish it as `next` (hosts trust it before it signs anything).
    ///
    /// Example: pedm-ca keys stage --config /etc/pedm-ca/ca.toml
    Stage(KeysTarget),
    /// Delete a staged key that no bundle ever named (a published key is never deleted).
    ///
    /// Example: pedm-ca keys delete SHA256:… --config /etc/pedm-ca/ca.toml
    Delete {
        fingerprint: String,
        #[command(flatten)]
        target: KeysTarget,
    },
    /// Make the staged key active (the active one becomes retired). Refused until the key has
    /// been published for the hosts' refresh interval and enough hosts trust it.
    ///
    /// Example: pedm-ca keys activate SHA256:… --config /etc/pedm-ca/ca.toml
    Activate {
        fingerprint: String,
        #[command(flatten)]
        target: KeysTarget,
        /// Activate despite the guards (audited as forced).
        #[arg(long)]
        force: bool,
    },
}

/// Data directory, passphrase file, checkpoint interval, bundle lifetime and [hosts] guards.
struct KeysSettings {
    data_dir: PathBuf,
    passphrase_file: Option<PathBuf>,
    checkpoint_every: u64,
    bundle_lifetime: i64,
    hosts: pedm_ca::config::HostsConfig,
}

fn keys_settings(t: KeysTarget) -> anyhow::Result<KeysSettings> {
    match (t.config, t.data_dir) {
        (Some(c), _) => {
            let c = Config::load(&c)?;
            Ok(KeysSettings {
                data_dir: c.data_dir,
                passphrase_file: c.passphrase_file,
                checkpoint_every: c.audit.checkpoint_every,
                bundle_lifetime: c.bundle.lifetime.0.as_secs() as i64,
                hosts: c.hosts,
            })
        }
        (None, Some(d)) => Ok(KeysSettings {
            data_dir: d,
            passphrase_file: None,
            checkpoint_every: 1000,
            bundle_lifetime: 7 * 86_400,
            hosts: pedm_ca::config::HostsConfig::default(),
        }),
        (None, None) => anyhow::bail!("give --config or --data-dir"),
    }
}

fn open_for_keys(k: &KeysSettings) -> anyhow::Result<Authority> {
    let pass = passphrase(k.passphrase_file.as_deref())?;
    Ok(Authority::open(
        &k.data_dir,
        pass.as_ref(),
        k.checkpoint_every,
    )?)
}

#[derive(Subcommand)]
enum BundleCommand {
    /// Write the bundle the root should sign next (the current keys and states) as JSON.
    ///
    /// Example: pedm-ca bundle draft --config /etc/pedm-ca/ca.toml --out draft.json
    Draft {
        #[command(flatten)]
        target: KeysTarget,
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a draft with the trust root's key file (run where the root lives).
    ///
    /// Example: PEDM_CA_PASSPHRASE=… pedm-ca bundle sign --root-key /media/root/trust-root.key --in draft.json --out signed.json
    Sign {
        #[arg(long)]
        root_key: PathBuf,
        /// File holding the root key's passphrase (mode 0600); else PEDM_CA_PASSPHRASE.
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
        #[arg(long = "in")]
        input: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Publish a bundle the root signed elsewhere.
    ///
    /// Example: pedm-ca bundle import --config /etc/pedm-ca/ca.toml signed.json
    Import {
        #[command(flatten)]
        target: KeysTarget,
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum HostsCommand {
    /// Make a one-time join token for `pedm-host-config enroll --token T`.
    ///
    /// Example: pedm-ca hosts token --data-dir /var/lib/pedm-ca --ttl 1h
    Token {
        #[arg(long, required_unless_present = "config")]
        data_dir: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
        /// How long the token may be used.
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
    /// Enrolled hosts with the bundle and KRL versions they last reported.
    ///
    /// Example: pedm-ca hosts list --data-dir /var/lib/pedm-ca
    List {
        #[arg(long, required_unless_present = "config")]
        data_dir: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

/// The data directory and passphrase file from `--data-dir` or the configuration.
fn data_dir_of(
    data_dir: Option<PathBuf>,
    config: Option<PathBuf>,
) -> anyhow::Result<(PathBuf, Option<PathBuf>, u64)> {
    match (data_dir, config) {
        (Some(d), _) => Ok((d, None, 1000)),
        (None, Some(c)) => {
            let c = Config::load(&c)?;
            Ok((c.data_dir, c.passphrase_file, c.audit.checkpoint_every))
        }
        (None, None) => anyhow::bail!("give --data-dir or --config"),
    }
}

fn run_bundle(command: BundleCommand) -> anyhow::Result<()> {
    match command {
        BundleCommand::Draft { target, out } => {
            let k = keys_settings(target)?;
            let ca = open_for_keys(&k)?;
            let draft = ca.bundle_draft(k.bundle_lifetime)?;
            std::fs::write(&out, serde_json::to_string_pretty(&draft)?)
                .with_context(|| format!("cannot write {}", out.display()))?;
            println!(
                "draft of bundle version {} written to {}",
                draft.version,
                out.display()
            );
            Ok(())
        }
        BundleCommand::Sign {
            root_key,
            passphrase_file,
            input,
            out,
        } => {
            let text = std::fs::read_to_string(&input)
                .with_context(|| format!("cannot read {}", input.display()))?;
            let draft: pedm_api::TrustBundle = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a bundle draft", input.display()))?;
            let pass = passphrase(passphrase_file.as_deref())?;
            let signed = authority::sign_bundle_draft(&root_key, pass.as_ref(), &draft)?;
            std::fs::write(&out, serde_json::to_string_pretty(&signed)?)
                .with_context(|| format!("cannot write {}", out.display()))?;
            println!(
                "signed bundle version {} written to {}",
                draft.version,
                out.display()
            );
            Ok(())
        }
        BundleCommand::Import { target, file } => {
            let k = keys_settings(target)?;
            let ca = open_for_keys(&k)?;
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let signed: pedm_api::SignedBundle = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a signed bundle", file.display()))?;
            let version = ca.import_bundle(&signed, &format!("admin:{}", operator()))?;
            ca.checkpoint()?;
            println!("published bundle version {version}");
            Ok(())
        }
    }
}

fn run_keys(command: KeysCommand) -> anyhow::Result<()> {
    let actor = format!("admin:{}", operator());
    match command {
        KeysCommand::List(t) => {
            let k = keys_settings(t)?;
            let store = SqliteStore::open(&k.data_dir.join(DB_FILE))?;
            for key in store.ca_keys()? {
                println!(
                    "{} {} published_in_bundle={}",
                    key.fingerprint,
                    key.state.as_str(),
                    key.published_version
                        .map(|v| v.to_string())
                        .unwrap_or_else(|| "-".into())
                );
            }
            Ok(())
        }
        KeysCommand::Status(t) => {
            let k = keys_settings(t)?;
            let ca = open_for_keys(&k)?;
            println!("active: {}", ca.active_key());
            let staged = ca
                .store
                .ca_keys()?
                .into_iter()
                .find(|key| key.state == pedm_api::KeyState::Next);
            match staged {
                None => println!("staged: none (pedm-ca keys stage)"),
                Some(key) => {
                    let check = ca.activation_check(
                        &key.fingerprint,
                        k.hosts.refresh_interval.0.as_secs() as i64,
                        k.hosts.min_hosts,
                        k.hosts.coverage,
                    )?;
                    println!("staged: {}", key.fingerprint);
                    println!(
                        "coverage: {} of {} checked-in hosts trust it",
                        check.covering, check.checked_in
                    );
                    if check.blockers.is_empty() {
                        println!(
                            "activation: ready (pedm-ca keys activate {})",
                            key.fingerprint
                        );
                    } else {
                        for b in &check.blockers {
                            println!("activation: blocked: {b}");
                        }
                    }
                }
            }
            Ok(())
        }
        KeysCommand::Stage(t) => {
            let k = keys_settings(t)?;
            let ca = open_for_keys(&k)?;
            let key = ca.stage_key(&actor, k.bundle_lifetime)?;
            ca.checkpoint()?;
            println!("staged: {}", key.fingerprint);
            println!("{}", key.public_key);
            if !ca.root_online() {
                eprintln!(
                    "note: the trust root is offline; publish the key with `pedm-ca bundle draft`, `bundle sign` where the root lives, and `bundle import`"
                );
            }
            Ok(())
        }
        KeysCommand::Delete {
            fingerprint,
            target,
        } => {
            let k = keys_settings(target)?;
            let ca = open_for_keys(&k)?;
            ca.delete_key(&fingerprint, &actor)?;
            ca.checkpoint()?;
            println!("deleted {fingerprint}");
            Ok(())
        }
        KeysCommand::Activate {
            fingerprint,
            target,
            force,
        } => {
            let k = keys_settings(target)?;
            let ca = open_for_keys(&k)?;
            let check = ca.activation_check(
                &fingerprint,
                k.hosts.refresh_interval.0.as_secs() as i64,
                k.hosts.min_hosts,
                k.hosts.coverage,
            )?;
            if force && !check.blockers.is_empty() {
                eprintln!(
                    "WARNING: activating despite: {} (recorded in the audit log as forced)",
                    check.blockers.join("; ")
                );
            }
            ca.activate_key(&fingerprint, &check, force, &actor, k.bundle_lifetime)?;
            let krl = ca.ensure_krl(KRL_LIFETIME_SECS)?;
            eprintln!(
                "published KRL version {} signed by the new key",
                krl.version
            );
            ca.checkpoint()?;
            println!("active: {fingerprint}");
            Ok(())
        }
    }
}

fn operator() -> String {
    std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "unknown".into())
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain and every signed checkpoint.
    ///
    /// Example: pedm-ca audit verify --data-dir /var/lib/pedm-ca
    Verify {
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Write records (and checkpoints) as JSON lines for a SIEM.
    ///
    /// Example: pedm-ca audit export --data-dir /var/lib/pedm-ca --since 0 > audit.jsonl
    Export {
        #[arg(long)]
        data_dir: PathBuf,
        /// Only records after this sequence number.
        #[arg(long, default_value_t = 0)]
        since: u64,
    },
}

const MAX_BREAK_GLASS_TTL: u64 = 3600;
/// Lifetime of a KRL published by a local command; `serve` re-issues it on its own schedule
/// (`[krl] lifetime`).
const KRL_LIFETIME_SECS: i64 = 3600;

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PEDM_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Err(e) = run(cli) {
        eprintln!("pedm-ca: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Init {
            data_dir,
            passphrase_file,
            insecure_no_passphrase,
            bundle_lifetime,
        } => {
            let pass = passphrase(passphrase_file.as_deref())?;
            if pass.is_none() && !insecure_no_passphrase {
                anyhow::bail!(
                    "no passphrase: set PEDM_CA_PASSPHRASE or --passphrase-file (or --insecure-no-passphrase for a throw-away CA)"
                );
            }
            let lifetime =
                pedm_api::duration::parse(&bundle_lifetime).context("--bundle-lifetime")?;
            let report = authority::init(&data_dir, pass.as_ref(), lifetime.as_secs() as i64)?;
            println!("trust-root: {}", report.trust_root);
            println!("ca-key: {}", report.ca_key);
            println!("{}", report.ca_public_key);
            Ok(())
        }
        Command::Serve { config } => {
            let config = Config::load(&config)?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(pedm_ca::serve::serve(config))
        }
        Command::Issue {
            data_dir,
            config,
            passphrase_file,
            public_key,
            principals,
            ttl,
            reason,
            out,
        } => {
            let (data_dir, pass_file, skew, every) = match (data_dir, config) {
                (Some(d), _) => (d, passphrase_file, 60, 1000),
                (None, Some(c)) => {
                    let c = Config::load(&c)?;
                    (
                        c.data_dir,
                        passphrase_file.or(c.passphrase_file),
                        c.certs.clock_skew.0.as_secs(),
                        c.audit.checkpoint_every,
                    )
                }
                (None, None) => anyhow::bail!("give --data-dir or --config"),
            };
            let ttl = pedm_api::duration::parse(&ttl).context("--ttl")?.as_secs();
            if ttl > MAX_BREAK_GLASS_TTL {
                anyhow::bail!("--ttl may be at most 1h for break-glass certificates");
            }
            let key_text = std::fs::read_to_string(&public_key)
                .with_context(|| format!("cannot read {}", public_key.display()))?;
            let pass = passphrase(pass_file.as_deref())?;
            let ca = Authority::open(&data_dir, pass.as_ref(), every)?;
            let operator = std::env::var("SUDO_USER")
                .or_else(|_| std::env::var("USER"))
                .unwrap_or_else(|_| "unknown".into());
            let issued = ca.break_glass(&operator, &key_text, &principals, ttl, &reason, skew)?;
            ca.checkpoint()?;
            match out {
                Some(path) => {
                    std::fs::write(&path, format!("{}\n", issued.row.certificate))
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    eprintln!(
                        "wrote {} (serial {}, key ID {:?})",
                        path.display(),
                        issued.row.serial,
                        issued.row.key_id
                    );
                }
                None => println!("{}", issued.row.certificate),
            }
            Ok(())
        }
        Command::Revoke {
            data_dir,
            config,
            serial,
            user,
            public_key,
            ca_key,
            reason,
        } => {
            let bundle_lifetime = match &config {
                Some(c) => Config::load(c)?.bundle.lifetime.0.as_secs() as i64,
                None => 7 * 86_400,
            };
            let (data_dir, pass_file, every) = data_dir_of(data_dir, config)?;
            if let Some(fp) = ca_key {
                let pass = passphrase(pass_file.as_deref())?;
                let ca = Authority::open(&data_dir, pass.as_ref(), every)?;
                ca.revoke_ca_key(
                    &fp,
                    &format!("admin:{}", operator()),
                    &reason,
                    bundle_lifetime,
                )?;
                let krl = ca.ensure_krl(KRL_LIFETIME_SECS)?;
                ca.checkpoint()?;
                println!(
                    "revoked CA key {fp}: removed from the trusted set in a new bundle, in KRL version {}",
                    krl.version
                );
                return Ok(());
            }
            let target = match (serial, user, public_key) {
                (Some(n), _, _) => authority::RevokeTarget::Serial(n),
                (_, Some(u), _) => authority::RevokeTarget::User(
                    pedm_ca::names::Username::new(&u)
                        .map_err(|e| anyhow::anyhow!("--user: {e}"))?,
                ),
                (_, _, Some(f)) => {
                    let text = std::fs::read_to_string(&f)
                        .with_context(|| format!("cannot read {}", f.display()))?;
                    authority::RevokeTarget::PublicKey(pedm_ca::cert::parse_user_key(&text)?)
                }
                _ => anyhow::bail!("name --serial, --user or --public-key"),
            };
            let pass = passphrase(pass_file.as_deref())?;
            let ca = Authority::open(&data_dir, pass.as_ref(), every)?;
            let out = ca.revoke(&target, &format!("admin:{}", operator()), &reason)?;
            if out.new {
                let krl = ca.ensure_krl(KRL_LIFETIME_SECS)?;
                eprintln!("published KRL version {}", krl.version);
            }
            ca.checkpoint()?;
            if out.new {
                println!(
                    "revoked; {} session(s) and {} elevation(s) ended; hosts refuse it after their next KRL refresh",
                    out.sessions_ended, out.elevations_ended
                );
            } else {
                println!("already revoked; nothing changed");
            }
            Ok(())
        }
        Command::Unrevoke {
            data_dir,
            config,
            user,
            reason,
        } => {
            let (data_dir, pass_file, every) = data_dir_of(data_dir, config)?;
            let user =
                pedm_ca::names::Username::new(&user).map_err(|e| anyhow::anyhow!("--user: {e}"))?;
            let pass = passphrase(pass_file.as_deref())?;
            let ca = Authority::open(&data_dir, pass.as_ref(), every)?;
            if ca.unrevoke_user(&user, &format!("admin:{}", operator()), &reason)? {
                ca.checkpoint()?;
                println!("{user} may sign in again; their earlier certificates stay revoked");
            } else {
                println!("{user} was not revoked; nothing changed");
            }
            Ok(())
        }
        Command::Keys { command } => run_keys(command),
        Command::Bundle { command } => run_bundle(command),
        Command::ReplaceRoot { target, reason } => {
            let k = keys_settings(target)?;
            let pass = passphrase(k.passphrase_file.as_deref())?;
            let fp = authority::replace_trust_root(
                &k.data_dir,
                pass.as_ref(),
                &format!("admin:{}", operator()),
                &reason,
                k.bundle_lifetime,
            )?;
            println!("trust-root: {fp}");
            eprintln!("re-install every host with --trust-root {fp}, and restart pedm-ca serve");
            Ok(())
        }
        Command::Hosts {
            command:
                HostsCommand::Token {
                    data_dir,
                    config,
                    ttl,
                },
        } => {
            let (data_dir, pass_file, every) = data_dir_of(data_dir, config)?;
            let ttl = pedm_api::duration::parse(&ttl).context("--ttl")?;
            let pass = passphrase(pass_file.as_deref())?;
            let ca = Authority::open(&data_dir, pass.as_ref(), every)?;
            let token = ca.join_token(&format!("admin:{}", operator()), ttl.as_secs() as i64)?;
            ca.checkpoint()?;
            println!("{token}");
            Ok(())
        }
        Command::Hosts {
            command: HostsCommand::List { data_dir, config },
        } => {
            let (data_dir, _, _) = data_dir_of(data_dir, config)?;
            let store = SqliteStore::open(&data_dir.join(DB_FILE))?;
            for (host, checkin) in store.latest_checkins()? {
                match checkin {
                    Some(c) => println!(
                        "{} {} bundle={} krl={} at={}",
                        host.host_name,
                        host.host_key_fp,
                        c.bundle_version,
                        c.krl_version
                            .map(|v| v.to_string())
                            .unwrap_or_else(|| "-".into()),
                        c.at
                    ),
                    None => println!("{} {} (no check-in yet)", host.host_name, host.host_key_fp),
                }
            }
            Ok(())
        }
        Command::Audit {
            command: AuditCommand::Verify { data_dir },
        } => {
            let report = authority::verify_audit(&data_dir)?;
            println!(
                "audit chain OK: {} records, head {}, {} checkpoints, newest at record {}",
                report.records,
                report.head_hash,
                report.checkpoints,
                report
                    .newest_checkpoint
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "(none)".into())
            );
            Ok(())
        }
        Command::Audit {
            command: AuditCommand::Export { data_dir, since },
        } => {
            let store = SqliteStore::open(&data_dir.join(DB_FILE))?;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let mut cursor = since;
            loop {
                let batch = store.audit_records(cursor, 10_000)?;
                let Some(last) = batch.last() else { break };
                cursor = last.seq;
                for r in &batch {
                    let mut v = serde_json::to_value(r)?;
                    v["type"] = "record".into();
                    writeln!(out, "{v}")?;
                }
            }
            let mut cps = store.checkpoints()?;
            cps.extend(authority::read_checkpoint_file(
                &data_dir.join(authority::CHECKPOINT_FILE),
            )?);
            cps.sort_by_key(|c| c.seq);
            cps.dedup();
            for c in cps.iter().filter(|c| c.seq > since) {
                let mut v = serde_json::to_value(c)?;
                v["type"] = "checkpoint".into();
                writeln!(out, "{v}")?;
            }
            out.flush()?;
            Ok(())
        }
        Command::Report {
            config,
            since,
            json,
        } => {
            let config = Config::load(&config)?;
            let since = pedm_api::duration::parse(&since).context("--since")?;
            let now = authority::now_secs();
            let from = now - since.as_secs() as i64;
            let store = SqliteStore::open(&config.data_dir.join(DB_FILE))?;
            let rows = store.elevations_since(from)?;
            let elevations = config.elevations();
            let states: Vec<pedm_api::ElevationState> = rows
                .iter()
                .map(
                    |(r, _)| match elevations.iter().find(|e| e.name == r.elevation) {
                        Some(e) => {
                            pedm_ca::elevation::effective_state(r.state, &r.times(), e, now).0
                        }
                        None => r.state,
                    },
                )
                .collect();
            let entries: Vec<pedm_ca::report::Entry<'_>> = rows
                .iter()
                .zip(states)
                .map(|((row, decisions), state_now)| pedm_ca::report::Entry {
                    row,
                    decisions,
                    state_now,
                })
                .collect();
            let report = pedm_ca::report::build(&entries, from, now);
            let mut out = std::io::stdout().lock();
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
            } else {
                write!(out, "{report}")?;
            }
            out.flush()?;
            Ok(())
        }
        Command::Policy {
            command:
                PolicyCommand::Explain {
                    config,
                    user,
                    groups,
                    elevation,
                    reason,
                    at,
                },
        } => {
            let config = Config::load(&config)?;
            let at = match at {
                Some(text) => text
                    .parse::<jiff::Timestamp>()
                    .with_context(|| {
                        format!("--at {text:?}: not an RFC 3339 time like 2024-03-29T09:00:00Z")
                    })?
                    .as_second(),
                None => jiff::Timestamp::now().as_second(),
            };
            let groups: Vec<String> = groups.into_iter().filter(|g| !g.is_empty()).collect();
            let explanation = pedm_ca::elevation::explain(
                &config.policy(),
                &config.elevations(),
                &user,
                &groups,
                elevation.as_deref(),
                reason.as_deref(),
                at,
            );
            let mut out = std::io::stdout().lock();
            write!(out, "{explanation}")?;
            out.flush()?;
            if explanation.verdict() == pedm_ca::elevation::Verdict::Refused {
                std::process::exit(EXIT_REFUSED);
            }
            Ok(())
        }
    }
}
