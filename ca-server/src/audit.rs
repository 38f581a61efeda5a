//! The hash-chained audit log and its signed checkpoints. Pure: hashing, encoding and
//! verification; the store writes records in the same transaction as the change they
//! describe.
//!
//! Each record's hash is SHA-256 over a length-prefixed encoding of *all* its fields and the
//! previous record's hash, so editing any field, deleting or reordering a record breaks the
//! chain. Deleting records from the end leaves a valid shorter chain; that is what signed
//! checkpoints of the head are for: one is kept in the database and one in an append-only
//! file outside it, and verification fails when a checkpointed record is missing. The
//! guarantee reaches up to the newest checkpoint.

use crate::signer::{sshsig_armored, sshsig_verify, CaSigner, SignerError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use ssh_key::PublicKey;
use std::collections::BTreeMap;

/// `prev_hash` of the first record.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// SSHSIG namespace of checkpoint signatures.
pub const CHECKPOINT_NAMESPACE: &str = "audit-checkpoint@pedm-ssh";

/// Something that happened, before it has a place in the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// Who did it: a username, `break-glass:<os user>`, `system`, `anonymous`.
    pub actor: String,
    /// Dotted verb such as `cert.issue`, `login.refuse`.
    pub action: String,
    /// What it was done to: a serial, a user, a key fingerprint.
    pub subject: String,
    /// Further facts; never secrets.
    pub details: serde_json::Value,
}

impl AuditEvent {
    pub fn new(
        actor: impl Into<String>,
        action: &str,
        subject: impl Into<String>,
        details: serde_json::Value,
    ) -> Self {
        Self {
            actor: actor.into(),
            action: action.into(),
            subject: subject.into(),
            details,
        }
    }
}

/// A record as stored and exported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub seq: u64,
    /// Unix milliseconds.
    pub time_ms: i64,
    pub actor: String,
    pub action: String,
    pub subject: String,
    /// JSON text, kept verbatim as hashed.
    pub details: String,
    /// Lowercase hex.
    pub prev_hash: String,
    /// Lowercase hex.
    pub hash: String,
}

/// The hash of a record with these fields.
pub fn record_hash(
    seq: u64,
    time_ms: i64,
    actor: &str,
    action: &str,
    subject: &str,
    details: &str,
    prev_hash: &str,
) -> String {
    let mut h = Sha256::new();
    h.update(b"pedm-audit-record-v1");
    let seq = seq.to_string();
    let time = time_ms.to_string();
    for field in [
        seq.as_str(),
        time.as_str(),
        actor,
        action,
        subject,
        details,
        prev_hash,
    ] {
        h.update((field.len() as u64).to_be_bytes());
        h.update(field.as_bytes());
    }
    hex::encode(h.finalize())
}

impl AuditRecord {
    /// Places `event` after a record with sequence `seq - 1` and hash `prev_hash`.
    pub fn chain(event: &AuditEvent, seq: u64, time_ms: i64, prev_hash: &str) -> Self {
        let details = event.details.to_string();
        let hash = record_hash(
            seq,
            time_ms,
            &event.actor,
            &event.action,
            &event.subject,
            &details,
            prev_hash,
        );
        Self {
            seq,
            time_ms,
            actor: event.actor.clone(),
            action: event.action.clone(),
            subject: event.subject.clone(),
            details,
            prev_hash: prev_hash.to_string(),
            hash,
        }
    }

    /// Recomputes the hash from the fields.
    pub fn computed_hash(&self) -> String {
        record_hash(
            self.seq,
            self.time_ms,
            &self.actor,
            &self.action,
            &self.subject,
            &self.details,
            &self.prev_hash,
        )
    }
}

/// A signed statement: "the record with sequence `seq` has hash `head_hash`".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub seq: u64,
    pub head_hash: String,
    /// Unix milliseconds.
    pub time_ms: i64,
    /// `SHA256:` fingerprint of the CA key that signed.
    pub ca_key: String,
    /// Armored SSHSIG over [`Checkpoint::message`].
    pub signature: String,
}

impl Checkpoint {
    fn message(seq: u64, head_hash: &str, time_ms: i64, ca_key: &str) -> Vec<u8> {
        format!("pedm-audit-checkpoint-v1\nseq={seq}\nhead={head_hash}\ntime_ms={time_ms}\nca_key={ca_key}\n").into_bytes()
    }

    /// Signs a checkpoint of `head` with the CA key.
    pub fn sign(
        head: &AuditRecord,
        time_ms: i64,
        signer: &dyn CaSigner,
    ) -> Result<Self, SignerError> {
        let ca_key = signer.fingerprint();
        let msg = Self::message(head.seq, &head.hash, time_ms, &ca_key);
        let signature = sshsig_armored(signer, CHECKPOINT_NAMESPACE, &msg)?;
        Ok(Self {
            seq: head.seq,
            head_hash: head.hash.clone(),
            time_ms,
            ca_key,
            signature,
        })
    }

    /// Whether `key` signed exactly this checkpoint.
    pub fn signature_valid(&self, key: &PublicKey) -> bool {
        let msg = Self::message(self.seq, &self.head_hash, self.time_ms, &self.ca_key);
        sshsig_verify(key, CHECKPOINT_NAMESPACE, &msg, &self.signature)
    }
}

/// What a successful verification covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    pub records: u64,
    pub head_hash: String,
    pub checkpoints: usize,
    /// Sequence of the newest checkpoint: the guarantee against truncation reaches this far.
    pub newest_checkpoint: Option<u64>,
}

/// Why the audit log does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("record {found} follows record {previous}: records are missing or out of order")]
    Gap { previous: u64, found: u64 },
    #[error("record {seq} does not link to the record before it (prev_hash differs): a record was removed or altered")]
    BrokenLink { seq: u64 },
    #[error("record {seq} was altered: its fields do not hash to its stored hash")]
    Altered { seq: u64 },
    #[error("checkpoint at record {seq} names CA key {key}, which this CA never had")]
    UnknownCheckpointKey { seq: u64, key: String },
    #[error("checkpoint at record {seq} has an invalid signature")]
    BadCheckpointSignature { seq: u64 },
    #[error("checkpoint at record {seq} does not match the log: the record was altered or the log rewritten")]
    CheckpointMismatch { seq: u64 },
    #[error("the log ends at record {last} but a signed checkpoint covers record {checkpoint}: records were deleted from the end")]
    Truncated { last: u64, checkpoint: u64 },
}

/// Verifies the whole chain (records must be in sequence order) and every checkpoint
/// against the CA keys by fingerprint.
pub fn verify_chain(
    records: &[AuditRecord],
    checkpoints: &[Checkpoint],
    ca_keys: &BTreeMap<String, PublicKey>,
) -> Result<ChainReport, ChainError> {
    let mut prev_hash = GENESIS_HASH.to_string();
    let mut prev_seq = 0u64;
    let mut by_seq = BTreeMap::new();
    for r in records {
        if r.seq != prev_seq + 1 {
            return Err(ChainError::Gap {
                previous: prev_seq,
                found: r.seq,
            });
        }
        if r.prev_hash != prev_hash {
            return Err(ChainError::BrokenLink { seq: r.seq });
        }
        if r.computed_hash() != r.hash {
            return Err(ChainError::Altered { seq: r.seq });
        }
        prev_hash = r.hash.clone();
        prev_seq = r.seq;
        by_seq.insert(r.seq, r.hash.as_str());
    }
    let mut newest = None;
    for c in checkpoints {
        let key = ca_keys
            .get(&c.ca_key)
            .ok_or_else(|| ChainError::UnknownCheckpointKey {
                seq: c.seq,
                key: c.ca_key.clone(),
            })?;
        if !c.signature_valid(key) {
            return Err(ChainError::BadCheckpointSignature { seq: c.seq });
        }
        match by_seq.get(&c.seq) {
            None => {
                return Err(ChainError::Truncated {
                    last: prev_seq,
                    checkpoint: c.seq,
                })
            }
            Some(h) if *h != c.head_hash => {
                return Err(ChainError::CheckpointMismatch { seq: c.seq })
            }
            Some(_) => {}
        }
        newest = newest.max(Some(c.seq));
    }
    Ok(ChainReport {
        records: prev_seq,
        head_hash: prev_hash,
        checkpoints: checkpoints.len(),
        newest_checkpoint: newest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signer::create_key_file;
    use serde_json::json;
    use ssh_key::HashAlg;

    fn chain(n: u64) -> Vec<AuditRecord> {
        let mut out: Vec<AuditRecord> = Vec::new();
        for seq in 1..=n {
            let prev = out
                .last()
                .map(|r| r.hash.clone())
                .unwrap_or_else(|| GENESIS_HASH.into());
            let ev = AuditEvent::new(
                "alice",
                "cert.issue",
                format!("serial={seq}"),
                json!({"n": seq}),
            );
            out.push(AuditRecord::chain(&ev, seq, 1000 + seq as i64, &prev));
        }
        out
    }

    fn keys(signer: &dyn CaSigner) -> BTreeMap<String, PublicKey> {
        [(
            signer.public_key().fingerprint(HashAlg::Sha256).to_string(),
            signer.public_key().clone(),
        )]
        .into()
    }

    #[test]
    fn intact_chain_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let ca = create_key_file(&dir.path().join("ca"), None, "ca").unwrap();
        let recs = chain(5);
        let cps = vec![
            Checkpoint::sign(&recs[2], 1, &ca).unwrap(),
            Checkpoint::sign(&recs[4], 2, &ca).unwrap(),
        ];
        let report = verify_chain(&recs, &cps, &keys(&ca)).unwrap();
        assert_eq!(report.records, 5);
        assert_eq!(report.newest_checkpoint, Some(5));
        assert_eq!(report.head_hash, recs[4].hash);
    }

    #[test]
    fn every_field_edit_is_detected() {
        let base = chain(4);
        #[allow(clippy::type_complexity)]
        let edits: Vec<Box<dyn Fn(&mut AuditRecord)>> = vec![
            Box::new(|r| r.time_ms += 1),
            Box::new(|r| r.actor.push('x')),
            Box::new(|r| r.action.push('x')),
            Box::new(|r| r.subject.push('x')),
            Box::new(|r| r.details = "{\"n\":99}".into()),
            Box::new(|r| r.hash = GENESIS_HASH.into()),
            Box::new(|r| r.prev_hash = GENESIS_HASH.into()),
            Box::new(|r| r.seq = 9),
        ];
        for (i, edit) in edits.iter().enumerate() {
            let mut recs = base.clone();
            edit(&mut recs[1]);
            assert!(
                verify_chain(&recs, &[], &BTreeMap::new()).is_err(),
                "edit {i} not detected"
            );
        }
    }

    #[test]
    fn recomputed_hash_is_caught_by_the_next_link() {
        let mut recs = chain(3);
        recs[1].actor = "mallory".into();
        recs[1].hash = recs[1].computed_hash();
        assert_eq!(
            verify_chain(&recs, &[], &BTreeMap::new()),
            Err(ChainError::BrokenLink { seq: 3 })
        );
    }

    #[test]
    fn deleted_middle_record_is_detected() {
        let mut recs = chain(4);
        recs.remove(1);
        assert_eq!(
            verify_chain(&recs, &[], &BTreeMap::new()),
            Err(ChainError::Gap {
                previous: 1,
                found: 3
            })
        );
    }

    #[test]
    fn truncation_past_a_checkpoint_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let ca = create_key_file(&dir.path().join("ca"), None, "ca").unwrap();
        let mut recs = chain(5);
        let cp = Checkpoint::sign(&recs[3], 1, &ca).unwrap();
        recs.truncate(3);
        assert_eq!(
            verify_chain(&recs, &[cp], &keys(&ca)),
            Err(ChainError::Truncated {
                last: 3,
                checkpoint: 4
            })
        );
    }

    #[test]
    fn forged_checkpoints_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = create_key_file(&dir.path().join("ca"), None, "ca").unwrap();
        let other = create_key_file(&dir.path().join("o"), None, "o").unwrap();
        let recs = chain(3);
        let by_other = Checkpoint::sign(&recs[2], 1, &other).unwrap();
        assert!(matches!(
            verify_chain(&recs, std::slice::from_ref(&by_other), &keys(&ca)),
            Err(ChainError::UnknownCheckpointKey { .. })
        ));
        let mut relabelled = by_other;
        relabelled.ca_key = ca.fingerprint();
        assert_eq!(
            verify_chain(&recs, &[relabelled], &keys(&ca)),
            Err(ChainError::BadCheckpointSignature { seq: 3 })
        );
        let mut cp = Checkpoint::sign(&recs[2], 1, &ca).unwrap();
        cp.head_hash = recs[1].hash.clone();
        assert_eq!(
            verify_chain(&recs, &[cp], &keys(&ca)),
            Err(ChainError::BadCheckpointSignature { seq: 3 })
        );
        let cp = Checkpoint::sign(&recs[2], 1, &ca).unwrap();
        let mut rewritten = recs.clone();
        rewritten[2].details = "{}".into();
        rewritten[2].hash = rewritten[2].computed_hash();
        assert_eq!(
            verify_chain(&rewritten, &[cp], &keys(&ca)),
            Err(ChainError::CheckpointMismatch { seq: 3 })
        );
    }
}
