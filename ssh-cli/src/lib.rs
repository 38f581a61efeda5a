//! `pedm-ssh`, the engineer's client of the pedm-ssh CA: browser sign-in, short-lived
//! OpenSSH certificates, ssh-agent loading, status and logout, and just-in-time elevations
//! (request, wait, fetch; list, approve, deny, cancel, revoke).
//!
//! One module per concern; the binary (`main.rs`) only parses the command line, runs
//! [`app::run`] and turns a [`exit::Failure`] into its message and exit code.

pub mod agent;
pub mod app;
pub mod browser;
pub mod callback;
pub mod certfile;
pub mod cli;
pub mod decide;
pub mod device;
pub mod elevate;
pub mod elevview;
pub mod ensure;
pub mod escape;
pub mod exit;
pub mod fsutil;
pub mod issue;
pub mod keys;
pub mod login;
pub mod logout;
pub mod paths;
pub mod reason;
pub mod requests;
pub mod session;
pub mod signedin;
pub mod spinner;
pub mod sshconfig;
pub mod status;
pub mod timefmt;
pub mod token_login;
