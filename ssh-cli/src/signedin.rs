//! The saved session and a client for its CA: what every command after `login` starts with.

use crate::app::Ctx;
use crate::exit::{self, Failure};
use crate::paths;
use crate::session::{self, SessionFile};
use pedm_api::{Client, ClientError};

/// A loaded session and a client bound to its CA (or to `--ca`).
#[derive(Debug)]
pub struct SignedIn {
    pub saved: SessionFile,
    pub ca_url: String,
    pub client: Client,
}

impl SignedIn {
    /// Loads the session (exit 3 when there is none) and builds the client.
    pub fn load(ctx: &Ctx, ca: Option<&str>) -> Result<Self, Failure> {
        let session_path = paths::session_file(&ctx.env)?;
        let Some(saved) = session::load(&session_path)? else {
            return Err(Failure::not_signed_in(ca));
        };
        let ca_url = ca
            .map(str::to_string)
            .unwrap_or_else(|| saved.ca_url.clone());
        let client = Client::new(&ca_url).map_err(|e| exit::from_client(&e, &ca_url))?;
        Ok(Self {
            saved,
            ca_url,
            client,
        })
    }

    /// The session token, for the client's calls.
    pub fn token(&self) -> &str {
        &self.saved.session_token
    }

    /// The failure for a client error from this CA.
    pub fn fail(&self, e: &ClientError) -> Failure {
        exit::from_client(e, &self.ca_url)
    }
}
