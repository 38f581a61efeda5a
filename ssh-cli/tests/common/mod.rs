//! Test helpers: a fake CA (with a fake IdP authorize endpoint) speaking the v1 wire
//! contract, and a runner for the real `pedm-ssh` binary in a throwaway home directory.

#![allow(dead_code)]

use axum::extract::{Json, Path as UrlPath, Query, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use pedm_api::*;
use sha2::{Digest, Sha256};
use ssh_key::certificate::{Builder, CertType};
use ssh_key::{Algorithm, PrivateKey, PublicKey};
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// How the fake CA behaves.
#[derive(Debug, Clone)]
pub struct Behaviour {
    /// The user name the session gets.
    pub user: String,
    /// A problem `finish` answers with instead of a session.
    pub finish_problem: Option<ProblemType>,
    /// An `error` the fake IdP redirects with instead of a code.
    pub idp_error: Option<String>,
    /// Added to the CA's clock (simulated skew).
    pub clock_offset: i64,
    /// Certificate lifetime.
    pub ttl: i64,
    /// `GET /v1/auth/info` `redirect_port`.
    pub redirect_port: Option<u16>,
    /// `POST /v1/elevations` answers approved at once (by policy) instead of pending.
    pub auto_approve: bool,
    /// Approvals a pending request needs.
    pub approvals_needed: u32,
    /// The elevation name put into `/v1/certs` answers instead of the real one.
    pub elevated_cert_name: Option<String>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            user: "alice".into(),
            finish_problem: None,
            idp_error: None,
            clock_offset: 0,
            ttl: 600,
            redirect_port: None,
            auto_approve: false,
            approvals_needed: 1,
            elevated_cert_name: None,
        }
    }
}

#[derive(Debug, Clone)]
struct Pending {
    redirect_uri: String,
    secret_sha256: String,
    state: String,
    code: String,
}

/// What the fake CA saw and holds.
pub struct CaState {
    /// The fake CA's own URL (also the fake IdP's).
    pub base: String,
    pub behaviour: Behaviour,
    pending: Option<Pending>,
    pub sessions: HashSet<String>,
    pub revoked: Vec<String>,
    pub serial: u64,
    pub ca_key: PrivateKey,
    /// Redirect URIs given at start.
    pub redirect_uris: Vec<String>,
    /// Public key lines given to /v1/certs.
    pub cert_requests: Vec<String>,
    /// Whether a finish carried the right secret.
    pub finish_ok: u32,
    pub finish_refused: u32,
    /// token → user of sessions planted by tests; other sessions are `behaviour.user`'s.
    pub users: HashMap<String, String>,
    /// `reauth` of every `/v1/auth/oidc/start`.
    pub start_reauth: Vec<bool>,
    /// The elevation store.
    pub elevations: Vec<ElevationView>,
    /// Every `POST /v1/elevations` body.
    pub elevation_requests: Vec<ElevationRequest>,
    /// Every decision POST: (id, action, user, comment).
    pub decisions: Vec<(String, String, String, Option<String>)>,
    /// `elevation_id` of every `/v1/certs` request.
    pub cert_elevation_ids: Vec<Option<String>>,
    /// The last elevated certificate line issued.
    pub last_elevated_cert: Option<String>,
    /// The last base certificate line issued.
    pub last_base_cert: Option<String>,
}

pub struct FakeCa {
    pub url: String,
    pub state: Arc<Mutex<CaState>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeCa {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type St = Arc<Mutex<CaState>>;

fn problem(kind: ProblemType, detail: &str) -> Response {
    let p = Problem::new(kind, detail);
    let status = StatusCode::from_u16(p.status).unwrap();
    (
        status,
        [(
            header::CONTENT_TYPE,
            pedm_api::problem::PROBLEM_CONTENT_TYPE,
        )],
        serde_json::to_string(&p).unwrap(),
    )
        .into_response()
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::to_string)
}

fn random_hex() -> String {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

async fn info(State(st): State<St>) -> Response {
    let s = st.lock().unwrap();
    Json(AuthInfo {
        browser: true,
        redirect_port: s.behaviour.redirect_port,
    })
    .into_response()
}

async fn oidc_start(State(st): State<St>, Json(req): Json<OidcStartRequest>) -> Response {
    let mut s = st.lock().unwrap();
    s.redirect_uris.push(req.redirect_uri.clone());
    s.start_reauth.push(req.reauth);
    let ok = req
        .redirect_uri
        .strip_prefix("http://127.0.0.1:")
        .and_then(|r| r.strip_suffix("/callback"))
        .is_some_and(|p| p.parse::<u16>().is_ok());
    if !ok {
        return problem(ProblemType::InvalidRedirectUri, "bad redirect uri");
    }
    let state = random_hex();
    s.pending = Some(Pending {
        redirect_uri: req.redirect_uri,
        secret_sha256: req.login_secret_sha256,
        state: state.clone(),
        code: random_hex(),
    });
    let base = s.base.clone();
    Json(OidcStartResponse {
        authorization_url: format!("{base}/idp/authorize?client_id=pedm&state={state}"),
        state,
        expires_at: now() + 300,
    })
    .into_response()
}

async fn authorize(State(st): State<St>, RawQuery(q): RawQuery) -> Response {
    let s = st.lock().unwrap();
    let Some(p) = s.pending.clone() else {
        return (StatusCode::BAD_REQUEST, "no pending login").into_response();
    };
    let q: HashMap<String, String> = url::form_urlencoded::parse(q.unwrap_or_default().as_bytes())
        .into_owned()
        .collect();
    if q.get("state") != Some(&p.state) {
        return (StatusCode::BAD_REQUEST, "state").into_response();
    }
    let target = match &s.behaviour.idp_error {
        Some(err) => format!(
            "{}?error={err}&error_description=nope%1b%5B31m&state={}",
            p.redirect_uri, p.state
        ),
        None => format!(
            "{}?code={}&state={}&iss=http%3A%2F%2Fidp.test",
            p.redirect_uri, p.code, p.state
        ),
    };
    Redirect::to(&target).into_response()
}

async fn oidc_finish(State(st): State<St>, Json(req): Json<OidcFinishRequest>) -> Response {
    let mut s = st.lock().unwrap();
    let Some(p) = s.pending.take() else {
        return problem(ProblemType::LoginRefused, "no pending login");
    };
    let hash = hex::encode(Sha256::digest(req.login_secret.as_bytes()));
    if req.code != p.code
        || req.state != p.state
        || hash != p.secret_sha256
        || req.iss.as_deref() != Some("http://idp.test")
    {
        s.finish_refused += 1;
        return problem(
            ProblemType::LoginRefused,
            "secret, code, state or iss mismatch",
        );
    }
    s.finish_ok += 1;
    if let Some(kind) = s.behaviour.finish_problem {
        return problem(kind, &format!("refused \u{1b}[31m{}\nok", s.behaviour.user));
    }
    let token = random_hex();
    s.sessions.insert(token.clone());
    let user = s.behaviour.user.clone();
    Json(SessionResponse {
        session_token: token,
        user: user.clone(),
        roles: vec!["engineer".into()],
        principals: vec![user],
        expires_at: now() + s.behaviour.clock_offset + 8 * 3600,
    })
    .into_response()
}

fn session_of(s: &CaState, headers: &HeaderMap) -> Option<String> {
    bearer(headers).filter(|t| s.sessions.contains(t))
}

fn user_of(s: &CaState, headers: &HeaderMap) -> Option<String> {
    let token = session_of(s, headers)?;
    Some(
        s.users
            .get(&token)
            .cloned()
            .unwrap_or_else(|| s.behaviour.user.clone()),
    )
}

/// Signs a user certificate with key ID `USER serial=N` or `USER serial=N elev=ID`.
fn sign_cert(
    s: &mut CaState,
    public: &PublicKey,
    user: &str,
    elev: Option<&str>,
    principals: &[String],
    valid_after: u64,
    valid_before: u64,
) -> IssuedCert {
    s.serial += 1;
    let serial = s.serial;
    let key_id = match elev {
        Some(id) => format!("{user} serial={serial} elev={id}"),
        None => format!("{user} serial={serial}"),
    };
    let mut b = Builder::new_with_random_nonce(
        &mut rand::rngs::OsRng,
        public.key_data().clone(),
        valid_after,
        valid_before,
    )
    .unwrap();
    b.serial(serial).unwrap();
    b.key_id(key_id.clone()).unwrap();
    b.cert_type(CertType::User).unwrap();
    for p in principals {
        b.valid_principal(p.clone()).unwrap();
    }
    b.extension("permit-pty", "").unwrap();
    let cert = b.sign(&s.ca_key).unwrap();
    IssuedCert {
        certificate: cert.to_openssh().unwrap(),
        serial,
        key_id,
        principals: principals.to_vec(),
        valid_after: valid_after as i64,
        valid_before: valid_before as i64,
    }
}

async fn certs(State(st): State<St>, headers: HeaderMap, Json(req): Json<CertRequest>) -> Response {
    let mut s = st.lock().unwrap();
    let Some(user) = user_of(&s, &headers) else {
        return problem(ProblemType::SignInRequired, "no session");
    };
    s.cert_requests.push(req.public_key.clone());
    s.cert_elevation_ids.push(req.elevation_id.clone());
    let Ok(public) = PublicKey::from_openssh(&req.public_key) else {
        return problem(ProblemType::InvalidPublicKey, "bad key");
    };
    let ca_time = now() + s.behaviour.clock_offset;
    let valid_after = (ca_time - 60) as u64;
    let valid_before = (ca_time + s.behaviour.ttl) as u64;
    // The elevation first, so a refusal issues nothing.
    let mut elevated = None;
    if let Some(id) = &req.elevation_id {
        let Some(i) = s.elevations.iter().position(|e| &e.id == id) else {
            return problem(ProblemType::NotFound, "no such elevation");
        };
        if s.elevations[i].requester != user {
            return problem(ProblemType::ElevationRefused, "not your elevation");
        }
        let e = &mut s.elevations[i];
        match e.state {
            ElevationState::Approved => {
                e.state = ElevationState::Active;
                e.started_at = Some(ca_time);
                e.ends_at = Some(ca_time + e.duration_secs as i64);
                e.deadline = e.ends_at;
            }
            ElevationState::Active => {}
            other => {
                return problem(
                    ProblemType::Conflict,
                    &format!("elevation is {}", other.as_str()),
                )
            }
        }
        let ends = e.ends_at.unwrap();
        let (principals, name) = (e.principals.clone(), e.elevation.clone());
        let until = valid_before.min(ends as u64);
        let cert = sign_cert(
            &mut s,
            &public,
            &user,
            Some(id),
            &principals,
            valid_after,
            until,
        );
        let name = s.behaviour.elevated_cert_name.clone().unwrap_or(name);
        s.last_elevated_cert = Some(cert.certificate.clone());
        elevated = Some(ElevatedCert {
            elevation_id: id.clone(),
            elevation: name,
            cert,
        });
    }
    let base = sign_cert(
        &mut s,
        &public,
        &user,
        None,
        std::slice::from_ref(&user),
        valid_after,
        valid_before,
    );
    s.last_base_cert = Some(base.certificate.clone());
    Json(CertResponse {
        elevation: elevated,
        base,
        ca_time,
    })
    .into_response()
}

fn random_id() -> String {
    let mut id = random_hex();
    id.truncate(12);
    id
}

/// The view `viewer` gets: an approver's includes the requester's recent elevations.
fn view_for(s: &CaState, e: &ElevationView, viewer: &str) -> ElevationView {
    let mut v = e.clone();
    if viewer != e.requester {
        v.recent = s
            .elevations
            .iter()
            .filter(|o| o.requester == e.requester && o.id != e.id)
            .map(|o| ElevationSummary {
                id: o.id.clone(),
                elevation: o.elevation.clone(),
                state: o.state,
                created_at: o.created_at,
                reason: o.reason.clone(),
            })
            .collect();
    }
    v
}

async fn request_elevation(
    State(st): State<St>,
    headers: HeaderMap,
    Json(req): Json<ElevationRequest>,
) -> Response {
    let mut s = st.lock().unwrap();
    let Some(user) = user_of(&s, &headers) else {
        return problem(ProblemType::SignInRequired, "no session");
    };
    s.elevation_requests.push(req.clone());
    if req.reason.is_empty()
        || req.reason.chars().count() > 200
        || req.reason.chars().any(char::is_control)
    {
        return problem(ProblemType::InvalidReason, "bad reason");
    }
    if req.elevation != "db-admin" {
        return problem(ProblemType::ElevationRefused, "no such elevation");
    }
    let duration = req.duration_secs.unwrap_or(1800);
    if duration > 1800 {
        return problem(ProblemType::ElevationRefused, "at most 30m");
    }
    let created = now() + s.behaviour.clock_offset;
    let auto = s.behaviour.auto_approve;
    let v = ElevationView {
        id: random_id(),
        requester: user,
        elevation: req.elevation,
        principals: vec!["db-admin".into()],
        reason: req.reason,
        duration_secs: duration,
        state: if auto {
            ElevationState::Approved
        } else {
            ElevationState::Pending
        },
        created_at: created,
        approved_at: auto.then_some(created),
        approved_by: if auto { vec!["policy".into()] } else { vec![] },
        approvals_needed: if auto {
            0
        } else {
            s.behaviour.approvals_needed
        },
        started_at: None,
        ends_at: None,
        deadline: Some(created + 3600),
        decisions: if auto {
            vec![ApprovalView {
                approver: "policy".into(),
                decision: "auto".into(),
                comment: None,
                at: created,
            }]
        } else {
            vec![]
        },
        recent: vec![],
    };
    s.elevations.push(v.clone());
    Json(v).into_response()
}

#[derive(serde::Deserialize)]
struct ListQuery {
    approvable: Option<bool>,
}

async fn list_elevations(
    State(st): State<St>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Response {
    let s = st.lock().unwrap();
    let Some(user) = user_of(&s, &headers) else {
        return problem(ProblemType::SignInRequired, "no session");
    };
    let approvable = q.approvable.unwrap_or(false);
    let elevations = s
        .elevations
        .iter()
        .filter(|e| {
            if approvable {
                e.state == ElevationState::Pending && e.requester != user
            } else {
                e.requester == user
            }
        })
        .map(|e| view_for(&s, e, &user))
        .collect();
    Json(ElevationList {
        elevations,
        ca_time: now() + s.behaviour.clock_offset,
    })
    .into_response()
}

async fn get_elevation(
    State(st): State<St>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Response {
    let s = st.lock().unwrap();
    let Some(user) = user_of(&s, &headers) else {
        return problem(ProblemType::SignInRequired, "no session");
    };
    match s.elevations.iter().find(|e| e.id == id) {
        Some(e) => Json(view_for(&s, e, &user)).into_response(),
        None => problem(ProblemType::NotFound, "no such elevation"),
    }
}

async fn decide(
    State(st): State<St>,
    headers: HeaderMap,
    UrlPath((id, action)): UrlPath<(String, String)>,
    Json(req): Json<DecisionRequest>,
) -> Response {
    let mut s = st.lock().unwrap();
    let Some(user) = user_of(&s, &headers) else {
        return problem(ProblemType::SignInRequired, "no session");
    };
    s.decisions.push((
        id.clone(),
        action.clone(),
        user.clone(),
        req.comment.clone(),
    ));
    let Some(i) = s.elevations.iter().position(|e| e.id == id) else {
        return problem(ProblemType::NotFound, "no such elevation");
    };
    let at = now() + s.behaviour.clock_offset;
    let e = &mut s.elevations[i];
    match action.as_str() {
        "approve" | "deny" => {
            if e.requester == user {
                return problem(ProblemType::Forbidden, "no self-approval");
            }
            if e.state != ElevationState::Pending {
                return problem(ProblemType::Conflict, "not pending");
            }
            e.decisions.push(ApprovalView {
                approver: user.clone(),
                decision: action.clone(),
                comment: req.comment.clone(),
                at,
            });
            if action == "deny" {
                e.state = ElevationState::Denied;
                e.deadline = None;
            } else {
                e.approved_by.push(user.clone());
                e.approvals_needed = e.approvals_needed.saturating_sub(1);
                if e.approvals_needed == 0 {
                    e.state = ElevationState::Approved;
                    e.approved_at = Some(at);
                    e.deadline = Some(at + 3600);
                }
            }
        }
        "cancel" => {
            if e.requester != user {
                return problem(ProblemType::Forbidden, "not yours");
            }
            e.state = ElevationState::Cancelled;
            e.deadline = None;
        }
        "revoke" => {
            e.state = ElevationState::Revoked;
            e.deadline = None;
        }
        _ => return problem(ProblemType::NotFound, "no such action"),
    }
    let v = e.clone();
    Json(view_for(&s, &v, &user)).into_response()
}

async fn session(State(st): State<St>, headers: HeaderMap) -> Response {
    let s = st.lock().unwrap();
    if session_of(&s, &headers).is_none() {
        return problem(ProblemType::SignInRequired, "no session");
    }
    let ca_time = now() + s.behaviour.clock_offset;
    Json(SessionInfo {
        user: s.behaviour.user.clone(),
        issuer: "http://idp.test".into(),
        subject: "sub-1".into(),
        groups: vec!["eng".into()],
        roles: vec!["engineer".into()],
        principals: vec![s.behaviour.user.clone()],
        auth_time: Some(ca_time - 10),
        method: "browser".into(),
        expires_at: ca_time + 3600,
        ca_time,
    })
    .into_response()
}

async fn logout(State(st): State<St>, headers: HeaderMap) -> Response {
    let mut s = st.lock().unwrap();
    match session_of(&s, &headers) {
        Some(t) => {
            s.sessions.remove(&t);
            s.revoked.push(t);
            // An empty 204, as a CA might answer.
            StatusCode::NO_CONTENT.into_response()
        }
        None => problem(ProblemType::SignInRequired, "no session"),
    }
}

impl FakeCa {
    pub async fn start(behaviour: Behaviour) -> FakeCa {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
        let state = Arc::new(Mutex::new(CaState {
            base: url.clone(),
            behaviour,
            pending: None,
            sessions: HashSet::new(),
            revoked: Vec::new(),
            serial: 100,
            ca_key: PrivateKey::random(&mut rand::rngs::OsRng, Algorithm::Ed25519).unwrap(),
            redirect_uris: Vec::new(),
            cert_requests: Vec::new(),
            finish_ok: 0,
            finish_refused: 0,
            users: HashMap::new(),
            start_reauth: Vec::new(),
            elevations: Vec::new(),
            elevation_requests: Vec::new(),
            decisions: Vec::new(),
            cert_elevation_ids: Vec::new(),
            last_elevated_cert: None,
            last_base_cert: None,
        }));
        let app = Router::new()
            .route("/v1/auth/info", get(info))
            .route("/v1/auth/oidc/start", post(oidc_start))
            .route("/idp/authorize", get(authorize))
            .route("/v1/auth/oidc/finish", post(oidc_finish))
            .route("/v1/certs", post(certs))
            .route("/v1/session", get(session))
            .route("/v1/auth/logout", post(logout))
            .route(
                "/v1/elevations",
                post(request_elevation).get(list_elevations),
            )
            .route("/v1/elevations/{id}", get(get_elevation))
            .route("/v1/elevations/{id}/{action}", post(decide))
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeCa { url, state, task }
    }

    /// A session for `user`, as if they had signed in.
    pub fn add_session(&self, user: &str) -> String {
        let token = random_hex();
        let mut s = self.state.lock().unwrap();
        s.sessions.insert(token.clone());
        s.users.insert(token.clone(), user.to_string());
        token
    }

    /// Puts an elevation into the store as it is.
    pub fn insert_elevation(&self, view: ElevationView) {
        self.state.lock().unwrap().elevations.push(view);
    }

    /// The elevation with `id`.
    pub fn elevation(&self, id: &str) -> ElevationView {
        let s = self.state.lock().unwrap();
        s.elevations.iter().find(|e| e.id == id).unwrap().clone()
    }

    pub fn ca_public_key(&self) -> String {
        self.state
            .lock()
            .unwrap()
            .ca_key
            .public_key()
            .to_openssh()
            .unwrap()
    }
}

/// A throwaway HOME and XDG_CONFIG_HOME.
pub struct Home {
    pub dir: tempfile::TempDir,
}

impl Home {
    pub fn new() -> Home {
        Home {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    pub fn xdg(&self) -> PathBuf {
        self.dir.path().join("xdg")
    }

    pub fn session_file(&self) -> PathBuf {
        self.xdg().join("pedm-ssh/session.json")
    }

    pub fn key(&self) -> PathBuf {
        self.home().join(".ssh/pedm_ed25519")
    }

    /// Signs `user` in at `ca` without a browser: a session from the fake CA, saved where
    /// `pedm-ssh login` saves it, for the key [`Home::key`].
    pub fn plant_session(&self, ca: &FakeCa, user: &str) {
        let token = ca.add_session(user);
        let saved = pedm_ssh::session::SessionFile {
            version: pedm_ssh::session::FORMAT_VERSION,
            ca_url: ca.url.clone(),
            session_token: token,
            user: user.to_string(),
            principals: vec![user.to_string()],
            expires_at: now() + 3600,
            key_path: self.key(),
        };
        pedm_ssh::session::save(&self.session_file(), &saved).unwrap();
    }

    /// `pedm-ssh ARGS` with this home, no agent, no PEDM_CA, no display.
    pub fn command(&self, args: &[&str]) -> Command {
        std::fs::create_dir_all(self.home()).unwrap();
        let mut c = Command::new(env!("CARGO_BIN_EXE_pedm-ssh"));
        c.args(args)
            .env("HOME", self.home())
            .env("XDG_CONFIG_HOME", self.xdg())
            .env_remove("SSH_AUTH_SOCK")
            .env_remove("PEDM_CA")
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY")
            .stdin(Stdio::null());
        c
    }
}

/// The output of a finished run.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs to completion (at most 60 s).
pub fn run(mut cmd: Command) -> Run {
    let child = Proc(Some(
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    finish(child, None)
}

/// A child process that is killed and reaped when dropped, so a failing test leaves no
/// stray `pedm-ssh` (or zombie) behind.
pub struct Proc(pub Option<Child>);

impl Proc {
    pub fn get(&mut self) -> &mut Child {
        self.0.as_mut().unwrap()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Waits for `child` (at most 60 s, then kills it) and collects its output. `stderr_head`
/// holds stderr lines already read by the caller.
pub fn finish(
    mut proc: Proc,
    stderr_head: Option<(Vec<String>, std::sync::mpsc::Receiver<String>)>,
) -> Run {
    let deadline = Instant::now() + Duration::from_secs(60);
    let child = proc.get();
    let stdout = child.stdout.take().unwrap();
    let out_thread = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap());
    let (mut head, rx) = match stderr_head {
        Some(h) => h,
        None => {
            let (tx, rx) = std::sync::mpsc::channel();
            let stderr = child.stderr.take().unwrap();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    if tx.send(line.unwrap()).is_err() {
                        break;
                    }
                }
            });
            (Vec::new(), rx)
        }
    };
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            // `proc` kills and reaps it on the way out.
            panic!("pedm-ssh did not finish in time; stderr so far: {head:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = out_thread.join().unwrap();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(5)) {
        head.push(line);
    }
    Run {
        code: status.code(),
        stdout,
        stderr: head.join("\n"),
    }
}

/// Starts `cmd` and reads stderr until a line that is a URL (alone on its line) appears.
pub fn spawn_until_url(
    cmd: Command,
) -> (Proc, String, Vec<String>, std::sync::mpsc::Receiver<String>) {
    let (child, line, lines, rx) = spawn_until_line(cmd, |l| {
        l.starts_with("http://") || l.starts_with("https://")
    });
    assert!(
        !line.contains(' '),
        "the URL line must hold the URL alone: {line:?}"
    );
    (child, line, lines, rx)
}

/// Starts `cmd` and reads stderr until a line for which `wanted` holds (at most 30 s).
pub fn spawn_until_line(
    mut cmd: Command,
    wanted: impl Fn(&str) -> bool,
) -> (Proc, String, Vec<String>, std::sync::mpsc::Receiver<String>) {
    let mut child = Proc(Some(
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    let stderr = child.get().stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no such line on stderr; got {lines:?}"));
        lines.push(line.clone());
        if wanted(&line) {
            return (child, line, lines, rx);
        }
    }
}

pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// A reqwest client that follows redirects (as a browser would).
pub fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// An ssh-agent for one test, stopped on drop.
pub struct Agent {
    child: std::process::Child,
    pub sock: PathBuf,
    _dir: tempfile::TempDir,
}

impl Agent {
    pub fn start() -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("agent.sock");
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&sock)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sock.exists() {
            assert!(Instant::now() < deadline, "ssh-agent did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Agent {
            child,
            sock,
            _dir: dir,
        }
    }

    fn ssh_add(&self, flag: &str) -> String {
        let out = Command::new("ssh-add")
            .arg(flag)
            .env("SSH_AUTH_SOCK", &self.sock)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ssh-add -l`: fingerprints.
    pub fn list(&self) -> String {
        self.ssh_add("-l")
    }

    /// `ssh-add -L`: the public keys and certificates themselves.
    pub fn list_public(&self) -> String {
        self.ssh_add("-L")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
