//! `pedm-ssh logout`: revoke the session at the CA, then forget it here, then take the key
//! out of ssh-agent.
//!
//! The local file is deleted only once the CA has revoked the session (or says it is gone
//! already): deleting it first would lose the only copy of a token that stays valid at the
//! CA. `--local-only` is the explicit way out when the CA cannot be reached.

use crate::app::Ctx;
use crate::cli::LogoutArgs;
use crate::escape::escape;
use crate::exit::{self, Exit, Failure};
use crate::{agent, certfile, paths, session, timefmt};
use pedm_api::{Client, ClientError, ProblemType};

/// What the CA said to the logout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revocation {
    /// The CA revoked the session.
    Revoked,
    /// The CA no longer knew it (expired or revoked before).
    AlreadyGone,
}

/// Interprets the CA's answer to `POST /v1/auth/logout`.
///
/// A `sign-in-required` problem means the session is gone already, which is what logout
/// wants. A `Decode` error can only follow a 2xx status (the typed client decodes bodies of
/// successful answers only), so the CA did revoke the session and merely answered with an
/// empty or non-JSON body (a 204, say); that counts as revoked.
pub fn interpret(result: Result<(), ClientError>) -> Result<Revocation, ClientError> {
    match result {
        Ok(()) | Err(ClientError::Decode(_)) => Ok(Revocation::Revoked),
        Err(ClientError::Problem(p)) if p.kind() == Some(ProblemType::SignInRequired) => {
            Ok(Revocation::AlreadyGone)
        }
        Err(e) => Err(e),
    }
}

/// `pedm-ssh logout`. Without a session there is nothing to do, which is success.
pub async fn run(ctx: &Ctx, args: &LogoutArgs) -> Result<(), Failure> {
    let session_path = paths::session_file(&ctx.env)?;
    let Some(saved) = session::load(&session_path)? else {
        println!("not signed in; nothing to do");
        return Ok(());
    };
    let ca_url = args.ca.clone().unwrap_or_else(|| saved.ca_url.clone());
    if args.local_only {
        println!("did not contact the CA: the session stays valid there until it expires");
    } else {
        let client = Client::new(&ca_url).map_err(|e| exit::from_client(&e, &ca_url))?;
        match interpret(client.logout(&saved.session_token).await) {
            Ok(Revocation::Revoked) => println!("revoked the session at {}", escape(&ca_url)),
            Ok(Revocation::AlreadyGone) => println!(
                "the session was already gone at {} (expired or revoked)",
                escape(&ca_url)
            ),
            Err(e) => {
                let f = exit::from_client(&e, &ca_url);
                return Err(Failure::new(
                    if f.exit == Exit::Denied {
                        Exit::Denied
                    } else {
                        Exit::Error
                    },
                    format!(
                        "could not revoke the session, so it was kept: {}",
                        f.message
                    ),
                    "try again when the CA is reachable, or run `pedm-ssh logout --local-only` to only forget it here",
                ));
            }
        }
    }
    session::remove(&session_path)?;
    println!("deleted {}", session_path.display());
    if ctx.agent_socket.is_some() {
        // Elevated certificates first: `ssh-add -d KEY` removes only the key and
        // KEY-cert.pub. One that is no longer in the agent (expired there) is no news.
        for cert in paths::elevation_certificates(&saved.key_path) {
            if agent::remove_certificate(&cert).await.is_ok() {
                println!("removed {} from ssh-agent", cert.display());
            }
        }
        match agent::remove(&saved.key_path).await {
            Ok(()) => println!("removed {} from ssh-agent", saved.key_path.display()),
            Err(e) => eprintln!(
                "note: could not remove {} from ssh-agent ({}); `ssh-add -D` removes all keys",
                saved.key_path.display(),
                escape(&e.to_string())
            ),
        }
    }
    // The certificate is not revoked by logout; say how long it still works.
    if let Ok(Some(c)) = certfile::load(&saved.key_path) {
        let now = timefmt::now_unix();
        if c.valid_before > now {
            println!(
                "note: {} stays valid until {} ({}); it is not renewed any more",
                c.path.display(),
                timefmt::utc(c.valid_before),
                timefmt::relative(c.valid_before, now)
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pedm_api::Problem;

    #[test]
    fn logout_answers() {
        assert_eq!(interpret(Ok(())).unwrap(), Revocation::Revoked);
        assert_eq!(
            interpret(Err(ClientError::Decode("EOF".into()))).unwrap(),
            Revocation::Revoked
        );
        let gone = Problem::new(ProblemType::SignInRequired, "unknown session");
        assert_eq!(
            interpret(Err(ClientError::Problem(gone))).unwrap(),
            Revocation::AlreadyGone
        );
        let internal = Problem::new(ProblemType::Internal, "db");
        assert!(interpret(Err(ClientError::Problem(internal))).is_err());
        assert!(interpret(Err(ClientError::Status { status: 502 })).is_err());
        assert!(interpret(Err(ClientError::Transport {
            url: "x".into(),
            message: "refused".into()
        }))
        .is_err());
    }
}
