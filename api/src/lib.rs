//! Wire types of the pedm-ssh HTTP API (v1) and the typed client that speaks it.
//!
//! Everything that crosses a process boundary between the CA, `pedm-ssh` and
//! `pedm-host-config` is defined here once, so the three cannot drift apart.

pub mod bundle;
pub mod client;
pub mod duration;
pub mod krl;
pub mod problem;
pub mod wire;

pub use bundle::{BundleError, BundleKey, KeyState, SignedBundle, TrustBundle, BUNDLE_NAMESPACE};
pub use client::{Client, ClientError, ElevationAction};
pub use problem::{Problem, ProblemType};
pub use wire::*;
