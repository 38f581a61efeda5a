//! pedm-ca: an SSH certificate authority for privilege elevation and delegation management.
//!
//! Pure core (`policy`, `cert`, `names`, `audit` hashing) with I/O at the edges (`store`,
//! `signer`, `http`, `oidc`). Every certificate goes through [`authority::Authority`].

pub mod audit;
pub mod authority;
pub mod cert;
pub mod config;
pub mod elevation;
pub mod http;
pub mod krl;
pub mod login;
pub mod metrics;
pub mod names;
pub mod oidc;
pub mod policy;
pub mod report;
pub mod serve;
pub mod signer;
pub mod store;
pub mod token;
