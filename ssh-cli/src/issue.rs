//! Getting a certificate with a session (`pedm-ssh cert`, and the last step of `login`):
//! request it, check it is for our key, write `PATH-cert.pub`, warn of clock skew, and load
//! it into ssh-agent for its remaining life.

use crate::app::Ctx;
use crate::certfile::{self, CertInfo};
use crate::cli::CertArgs;
use crate::escape::{escape, escape_list};
use crate::exit::{self, Failure};
use crate::keys::{self, UserKey};
use crate::{agent, paths, session, timefmt};
use pedm_api::{CertRequest, Client};
use ssh_key::PublicKey;

/// What happened with the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentResult {
    /// `SSH_AUTH_SOCK` is not set.
    NoAgent,
    /// Added for this many seconds.
    Added(u64),
    /// Not added (the reason was warned about on stderr).
    Failed,
}

/// A certificate that was issued and written.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert: CertInfo,
    /// `ca_time - local clock`, seconds.
    pub skew: i64,
    /// The CA's clock when it signed.
    pub ca_time: i64,
    pub agent: AgentResult,
}

/// The public key line sent to the CA: without the comment, which may name the user's
/// machine and is no business of the CA.
pub(crate) fn public_key_line(public: &PublicKey) -> Result<String, Failure> {
    PublicKey::new(public.key_data().clone(), "")
        .to_openssh()
        .map_err(|e| {
            Failure::plain(
                exit::Exit::Error,
                format!("cannot encode the public key: {e}; pass --key PATH of another key"),
            )
        })
}

/// Requests a certificate for `key` with `token`, writes it, warns of skew, and adds it to
/// the agent when there is one. Nothing is written unless the certificate is a user
/// certificate for `key`.
pub async fn issue(
    ctx: &Ctx,
    client: &Client,
    ca_url: &str,
    token: &str,
    key: &UserKey,
) -> Result<Issued, Failure> {
    let req = CertRequest {
        public_key: public_key_line(&key.public)?,
        elevation_id: None,
    };
    let resp = client
        .certs(token, &req)
        .await
        .map_err(|e| exit::from_client(&e, ca_url))?;
    let cert = certfile::check_issued(&resp.base.certificate, &key.public, &key.path)?;
    let info = certfile::save(&key.path, &cert)?;
    let skew = resp.ca_time.saturating_sub(timefmt::now_unix());
    crate::ensure::save_skew(&ctx.env, skew);
    if let Some(w) = timefmt::skew_warning(skew) {
        eprintln!("warning: {w}");
    }
    let agent = match &ctx.agent_socket {
        None => AgentResult::NoAgent,
        Some(_) => add_to_agent(key, &info, resp.ca_time).await,
    };
    Ok(Issued {
        cert: info,
        skew,
        ca_time: resp.ca_time,
        agent,
    })
}

pub(crate) async fn add_to_agent(key: &UserKey, cert: &CertInfo, ca_time: i64) -> AgentResult {
    let Some(secs) = agent::lifetime(cert.valid_before, ca_time) else {
        eprintln!("warning: the certificate has no time left; not adding it to ssh-agent");
        return AgentResult::Failed;
    };
    match agent::add(&key.path, secs).await {
        Ok(()) => AgentResult::Added(secs),
        Err(e) => {
            eprintln!(
                "warning: could not add the key to ssh-agent ({}); use `ssh -i {}` instead",
                escape(&e.to_string()),
                key.path.display()
            );
            AgentResult::Failed
        }
    }
}

/// The lines about a fresh certificate, shared by `login` and `cert`.
pub fn print_certificate(issued: &Issued) {
    let c = &issued.cert;
    println!("principals: {}", escape_list(&c.principals));
    println!("certificate: {}", c.path.display());
    println!(
        "valid until: {} ({})",
        timefmt::utc(c.valid_before),
        timefmt::relative(c.valid_before, issued.ca_time)
    );
    println!("serial: {}", c.serial);
    match issued.agent {
        AgentResult::Added(secs) => {
            println!("ssh-agent: added for {}", timefmt::duration(secs as i64))
        }
        AgentResult::NoAgent => println!("ssh-agent: not used (SSH_AUTH_SOCK is not set)"),
        AgentResult::Failed => println!("ssh-agent: not added (see the warning above)"),
    }
}

/// `pedm-ssh cert`: renews the certificate with the saved session.
pub async fn run(ctx: &Ctx, args: &CertArgs) -> Result<(), Failure> {
    let session_path = paths::session_file(&ctx.env)?;
    let Some(saved) = session::load(&session_path)? else {
        return Err(Failure::not_signed_in(args.ca.as_deref()));
    };
    let ca_url = args.ca.clone().unwrap_or_else(|| saved.ca_url.clone());
    let client = Client::new(&ca_url).map_err(|e| exit::from_client(&e, &ca_url))?;
    let key_path = match &args.key {
        Some(k) => paths::absolute_key(k)?,
        None => saved.key_path.clone(),
    };
    let key = keys::ensure_key(&key_path)?;
    if key.created {
        eprintln!("created a new key {}", key.path.display());
    }
    let issued = issue(ctx, &client, &ca_url, &saved.session_token, &key).await?;
    println!("certificate renewed for {}", escape(&saved.user));
    print_certificate(&issued);
    Ok(())
}
