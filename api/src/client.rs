//! Typed client of the v1 API, shared by `pedm-ssh` and `pedm-host-config`.

use crate::problem::Problem;
use crate::wire::*;
use crate::SignedBundle;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::Duration;
use url::Url;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Url(String),
    #[error("cannot reach the CA at {url}: {message}")]
    Transport { url: String, message: String },
    /// The CA refused with a problem document.
    #[error("the CA refused: {0}")]
    Problem(Problem),
    #[error("the CA answered HTTP {status} without a problem document")]
    Status { status: u16 },
    #[error("the CA's answer is not what this client expects: {0}")]
    Decode(String),
}

/// Parses a CA URL and refuses plain HTTP to anything but loopback: session tokens and
/// trust material must not cross a network in the clear.
pub fn parse_ca_url(text: &str) -> Result<Url, ClientError> {
    let url = Url::parse(text).map_err(|e| {
        ClientError::Url(format!(
            "{text:?} is not a URL ({e}); write e.g. https://ca.example.com"
        ))
    })?;
    match url.scheme() {
        "https" => {}
        "http" => {
            let loopback = match url.host() {
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                Some(url::Host::Domain(d)) => d == "localhost",
                None => false,
            };
            if !loopback {
                return Err(ClientError::Url(format!(
                    "refusing plain http:// to {text}: only loopback may be reached without TLS; use https://"
                )));
            }
        }
        other => {
            return Err(ClientError::Url(format!(
                "unsupported URL scheme {other:?} in {text}; use https://"
            )))
        }
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ClientError::Url(
            "the CA URL must not carry credentials".into(),
        ));
    }
    Ok(url)
}

/// What can be done to an elevation request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElevationAction {
    Approve,
    Deny,
    Cancel,
    Revoke,
}

impl ElevationAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Approve => "approve",
            Self::Deny => "deny",
            Self::Cancel => "cancel",
            Self::Revoke => "revoke",
        }
    }
}

/// An ID as one URL path segment; IDs are `[a-z0-9]`, anything else is refused here rather
/// than escaped into another path.
fn path_segment(id: &str) -> Result<&str, ClientError> {
    if !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Ok(id)
    } else {
        Err(ClientError::Url(format!(
            "{id:?} is not an elevation ID (letters and digits, as `pedm-ssh elevations` shows)"
        )))
    }
}

/// A client bound to one CA.
#[derive(Debug, Clone)]
pub struct Client {
    base: Url,
    http: reqwest::Client,
}

impl Client {
    /// Builds a client for `ca_url`, refusing non-loopback plain HTTP.
    pub fn new(ca_url: &str) -> Result<Self, ClientError> {
        let base = parse_ca_url(ca_url)?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ClientError::Transport {
                url: ca_url.to_string(),
                message: e.to_string(),
            })?;
        Ok(Self { base, http })
    }

    pub fn base_url(&self) -> &Url {
        &self.base
    }

    fn url(&self, path: &str) -> Result<Url, ClientError> {
        self.base
            .join(path)
            .map_err(|e| ClientError::Url(e.to_string()))
    }

    /// Sends and decodes a JSON answer; an empty success body decodes as JSON `null`, so
    /// callers that expect nothing (`()`, `Option<_>`) accept `204 No Content`.
    async fn send<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        url: &Url,
    ) -> Result<T, ClientError> {
        let resp = req.send().await.map_err(|e| ClientError::Transport {
            url: url.to_string(),
            message: e.to_string(),
        })?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| ClientError::Transport {
            url: url.to_string(),
            message: e.to_string(),
        })?;
        if status.is_success() {
            let bytes: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
            serde_json::from_slice(bytes).map_err(|e| ClientError::Decode(e.to_string()))
        } else {
            match serde_json::from_slice::<Problem>(&bytes) {
                Ok(p) => Err(ClientError::Problem(p)),
                Err(_) => Err(ClientError::Status {
                    status: status.as_u16(),
                }),
            }
        }
    }

    async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        session: Option<&str>,
    ) -> Result<T, ClientError> {
        let url = self.url(path)?;
        let mut req = self.http.get(url.clone());
        if let Some(token) = session {
            req = req.bearer_auth(token);
        }
        self.send(req, &url).await
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        session: Option<&str>,
    ) -> Result<T, ClientError> {
        let url = self.url(path)?;
        let mut req = self.http.post(url.clone()).json(body);
        if let Some(token) = session {
            req = req.bearer_auth(token);
        }
        self.send(req, &url).await
    }

    /// `GET /v1/ca/bundle`: the root-signed trust bundle (verify before use).
    pub async fn bundle(&self) -> Result<SignedBundle, ClientError> {
        self.get("v1/ca/bundle", None).await
    }

    /// `GET /v1/krl`: the signed revocation list (verify against the accepted bundle).
    pub async fn krl(&self) -> Result<crate::krl::SignedKrl, ClientError> {
        self.get("v1/krl", None).await
    }

    /// `POST /v1/hosts/enroll` with a one-time join token.
    pub async fn enroll(&self, req: &EnrollRequest) -> Result<EnrollResponse, ClientError> {
        self.post("v1/hosts/enroll", req, None).await
    }

    /// `POST /v1/hosts/checkin`, signed with the enrolled host key.
    pub async fn checkin(&self, req: &SignedCheckin) -> Result<CheckinResponse, ClientError> {
        self.post("v1/hosts/checkin", req, None).await
    }

    /// `GET /healthz`.
    pub async fn health(&self) -> Result<Health, ClientError> {
        self.get("healthz", None).await
    }

    /// `GET /v1/auth/info`.
    pub async fn auth_info(&self) -> Result<AuthInfo, ClientError> {
        self.get("v1/auth/info", None).await
    }

    /// `POST /v1/auth/oidc/start`.
    pub async fn oidc_start(
        &self,
        req: &OidcStartRequest,
    ) -> Result<OidcStartResponse, ClientError> {
        self.post("v1/auth/oidc/start", req, None).await
    }

    /// `POST /v1/auth/oidc/finish`.
    pub async fn oidc_finish(
        &self,
        req: &OidcFinishRequest,
    ) -> Result<SessionResponse, ClientError> {
        self.post("v1/auth/oidc/finish", req, None).await
    }

    /// `POST /v1/auth/token`: exchanges an automation ID token for a session.
    pub async fn token_exchange(
        &self,
        req: &TokenExchangeRequest,
    ) -> Result<SessionResponse, ClientError> {
        self.post("v1/auth/token", req, None).await
    }

    /// `POST /v1/auth/device/start`.
    pub async fn device_start(&self) -> Result<DeviceStartResponse, ClientError> {
        self.post("v1/auth/device/start", &serde_json::json!({}), None)
            .await
    }

    /// `POST /v1/auth/device/poll`: one poll; the caller waits `interval` between calls.
    pub async fn device_poll(
        &self,
        req: &DevicePollRequest,
    ) -> Result<DevicePollResponse, ClientError> {
        self.post("v1/auth/device/poll", req, None).await
    }

    /// `POST /v1/certs` with the session token.
    pub async fn certs(
        &self,
        session: &str,
        req: &CertRequest,
    ) -> Result<CertResponse, ClientError> {
        self.post("v1/certs", req, Some(session)).await
    }

    /// `POST /v1/elevations`: ask for an elevation (it may come back approved at once).
    pub async fn request_elevation(
        &self,
        session: &str,
        req: &ElevationRequest,
    ) -> Result<ElevationView, ClientError> {
        self.post("v1/elevations", req, Some(session)).await
    }

    /// `GET /v1/elevations`: mine; with `approvable`, the pending ones I may decide.
    pub async fn elevations(
        &self,
        session: &str,
        approvable: bool,
    ) -> Result<ElevationList, ClientError> {
        let path = if approvable {
            "v1/elevations?approvable=true"
        } else {
            "v1/elevations"
        };
        self.get(path, Some(session)).await
    }

    /// `GET /v1/elevations/{id}`: one request I may see (mine, or one I may decide).
    pub async fn elevation(&self, session: &str, id: &str) -> Result<ElevationView, ClientError> {
        self.get(
            &format!("v1/elevations/{}", path_segment(id)?),
            Some(session),
        )
        .await
    }

    /// `POST /v1/elevations/{id}/{action}` with `action` one of approve, deny, cancel, revoke.
    pub async fn decide_elevation(
        &self,
        session: &str,
        id: &str,
        action: ElevationAction,
        req: &DecisionRequest,
    ) -> Result<ElevationView, ClientError> {
        let path = format!("v1/elevations/{}/{}", path_segment(id)?, action.as_str());
        self.post(&path, req, Some(session)).await
    }

    /// `GET /v1/session`.
    pub async fn session(&self, session: &str) -> Result<SessionInfo, ClientError> {
        self.get("v1/session", Some(session)).await
    }

    /// `POST /v1/auth/logout`: revokes the session at the CA.
    pub async fn logout(&self, session: &str) -> Result<(), ClientError> {
        let _: serde_json::Value = self
            .post("v1/auth/logout", &serde_json::json!({}), Some(session))
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_to_loopback() {
        for ok in [
            "https://ca.example.com",
            "http://127.0.0.1:8080",
            "http://[::1]:1",
            "http://localhost:9",
        ] {
            assert!(parse_ca_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://ca.example.com",
            "http://10.0.0.1",
            "http://127.0.0.1.evil.example",
            "ftp://127.0.0.1",
            "https://user:pw@ca.example.com",
            "not a url",
        ] {
            assert!(parse_ca_url(bad).is_err(), "{bad}");
        }
    }
}
