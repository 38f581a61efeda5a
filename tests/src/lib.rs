//! Harness for the end-to-end tests: real binaries, a real sshd, a real OpenID provider.
//!
//! - [`bins`]: the built `pedm-ca`, `pedm-ssh`, `pedm-host-config`.
//! - [`env`]: skip-or-fail gates (root, sshd; `CI=true` fails instead of skipping) and
//!   temporary directories that sshd's `StrictModes` accepts.
//! - [`users`]: OS test accounts, created once across parallel test processes.
//! - [`ca`]: `pedm-ca init`, `serve` as a child process, break-glass `issue`, `audit`.
//! - [`sshd`]: a private sshd configured only by `pedm-host-config install`, and `ssh`.
//! - [`keys`]: user keys and `ssh-keygen -L` parsing.
//! - [`logs`]: captured output lines of child processes.
//! - [`idp`]: the test OpenID provider.
//! - [`fake_ca`]: serves any bundle JSON as `GET /v1/ca/bundle`.
//! - [`proxy`]: a tampering HTTP proxy between the CA and the IdP (forged ID tokens).
//! - [`token_issuer`]: an automation issuer (discovery + JWKS) minting EdDSA ID tokens.

pub mod bins;
pub mod ca;
pub mod env;
pub mod fake_ca;
pub mod idp;
pub mod keys;
pub mod logs;
pub mod proxy;
pub mod signin;
pub mod sshd;
pub mod token_issuer;
pub mod users;
