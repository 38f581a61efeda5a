//! The four CA calls the host tool makes, behind a trait so the flows stay synchronous and
//! take their CA as a parameter.
//!
//! Nothing returned here is trusted: bundles are checked against the pinned root
//! ([`crate::trust`]), KRLs against the accepted bundle's active key, and the answers to
//! enroll and check-in only decide what is reported.

use pedm_api::krl::SignedKrl;
use pedm_api::{
    CheckinResponse, Client, ClientError, EnrollRequest, EnrollResponse, SignedBundle,
    SignedCheckin,
};

/// A CA as the host tool sees it.
pub trait Ca {
    /// The CA's base URL, for messages.
    fn url(&self) -> &str;
    /// `GET /v1/ca/bundle`.
    fn bundle(&self) -> Result<SignedBundle, ClientError>;
    /// `GET /v1/krl`.
    fn krl(&self) -> Result<SignedKrl, ClientError>;
    /// `POST /v1/hosts/enroll`.
    fn enroll(&self, req: &EnrollRequest) -> Result<EnrollResponse, ClientError>;
    /// `POST /v1/hosts/checkin`.
    fn checkin(&self, req: &SignedCheckin) -> Result<CheckinResponse, ClientError>;
}

/// Opens a [`Ca`] for a URL (refusing plain HTTP to anything but loopback).
pub type Connect<'a> = &'a dyn Fn(&str) -> Result<Box<dyn Ca>, ClientError>;

/// The real CA over HTTP: the async [`Client`] driven by a single-threaded runtime, since
/// every run makes a handful of sequential calls.
pub struct HttpCa {
    url: String,
    client: Client,
    rt: tokio::runtime::Runtime,
}

impl HttpCa {
    /// Builds the client and its runtime; no request is made yet.
    pub fn connect(url: &str) -> Result<Box<dyn Ca>, ClientError> {
        let client = Client::new(url)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ClientError::Transport {
                url: url.to_string(),
                message: format!("cannot start the HTTP runtime: {e}"),
            })?;
        Ok(Box::new(HttpCa {
            url: url.to_string(),
            client,
            rt,
        }))
    }
}

impl Ca for HttpCa {
    fn url(&self) -> &str {
        &self.url
    }
    fn bundle(&self) -> Result<SignedBundle, ClientError> {
        self.rt.block_on(self.client.bundle())
    }
    fn krl(&self) -> Result<SignedKrl, ClientError> {
        self.rt.block_on(self.client.krl())
    }
    fn enroll(&self, req: &EnrollRequest) -> Result<EnrollResponse, ClientError> {
        self.rt.block_on(self.client.enroll(req))
    }
    fn checkin(&self, req: &SignedCheckin) -> Result<CheckinResponse, ClientError> {
        self.rt.block_on(self.client.checkin(req))
    }
}
