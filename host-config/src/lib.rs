//! pedm-host-config: installs and refreshes pedm-ssh CA trust on a host running stock
//! OpenSSH.
//!
//! The host trusts the CA only through files sshd reads: a drop-in naming
//! `TrustedUserCAKeys`, `AuthorizedPrincipalsFile` and `RevokedKeys`, and the files those
//! name. Trust is anchored in a pinned trust root that signs bundles of CA keys; nothing is
//! written unless the bundle verifies, is not a rollback, and sshd confirms it would use the
//! drop-in. `refresh` (run by a systemd timer that `install` sets up) keeps the bundle, the
//! signed KRL and the principals current; `enroll` registers the sshd host key once, and
//! every successful run of an enrolled host then checks in, signed with that key.

pub mod ca;
pub mod checkin;
pub mod enroll;
pub mod files;
pub mod hostfile;
pub mod hostkey;
pub mod install;
pub mod layout;
pub mod principals;
pub mod refresh;
pub mod sshd;
pub mod state;
pub mod systemd;
pub mod trust;
