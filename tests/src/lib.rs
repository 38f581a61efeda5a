//! Harness for the end-to-end tests: real binaries, a real sshd, a real OpenID provider.

pub mod idp;
