//! A1 end to end: the audit chain of a real CA data directory, checked by the real
//! `pedm-ca audit verify`, after tampering with the database directly (rusqlite), as an
//! attacker with write access to `pedm.db` but not to the CA key would.
//!
//! Each tampering case runs on a fresh copy of one baseline data directory; every refusal is
//! paired with the untouched copy verifying.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Output;

use pedm_e2e::ca::{audit_export, audit_verify, describe, TestCa, OPERATOR};
use pedm_e2e::env;
use pedm_e2e::keys::UserKey;
use rusqlite::{params, Connection};
use serde_json::Value;
use sha2::{Digest, Sha256};

const PASSPHRASE: &str = "audit e2e passphrase";
const REASON: &str = "INC-777 IdP outage";

/// One row of `audit_log`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Row {
    seq: i64,
    time_ms: i64,
    actor: String,
    action: String,
    subject: String,
    details: String,
    prev_hash: String,
    hash: String,
}

fn db(dir: &Path) -> Connection {
    Connection::open(dir.join("pedm.db")).expect("open pedm.db")
}

fn rows(dir: &Path) -> Vec<Row> {
    let c = db(dir);
    let mut st = c
        .prepare("SELECT seq, time_ms, actor, action, subject, details, prev_hash, hash FROM audit_log ORDER BY seq")
        .unwrap();
    let out = st
        .query_map([], |r| {
            Ok(Row {
                seq: r.get(0)?,
                time_ms: r.get(1)?,
                actor: r.get(2)?,
                action: r.get(3)?,
                subject: r.get(4)?,
                details: r.get(5)?,
                prev_hash: r.get(6)?,
                hash: r.get(7)?,
            })
        })
        .unwrap()
        .collect::<rusqlite::Result<Vec<_>>>()
        .unwrap();
    out
}

fn db_checkpoint_seqs(dir: &Path) -> Vec<i64> {
    let c = db(dir);
    let mut st = c
        .prepare("SELECT seq FROM audit_checkpoints ORDER BY seq")
        .unwrap();
    let out = st
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<Vec<i64>>>()
        .unwrap();
    out
}

/// The checkpoints in `audit-checkpoints.jsonl`, as JSON.
fn file_checkpoints(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("audit-checkpoints.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect()
}

fn seq_of(v: &Value) -> i64 {
    v["seq"].as_i64().unwrap_or_else(|| panic!("no seq in {v}"))
}

/// Copies a data directory (database with its WAL, keys, checkpoint file) to a new temp dir.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

fn fresh_copy(base: &Path) -> (tempfile::TempDir, std::path::PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("ca");
    copy_dir(base, &data);
    (t, data)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_verifies(dir: &Path, what: &str) -> Output {
    let out = audit_verify(dir);
    assert!(
        out.status.success() && stdout(&out).starts_with("audit chain OK"),
        "{what}: audit verify should pass: {}",
        describe(&out)
    );
    out
}

/// `audit verify` fails (exit 1), says the log does not verify, and its message contains
/// every string in `names`.
fn assert_fails(dir: &Path, what: &str, names: &[String]) -> String {
    let out = audit_verify(dir);
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{what}: audit verify should fail: {}",
        describe(&out)
    );
    assert!(
        !stdout(&out).contains("OK"),
        "{what}: verify printed OK: {}",
        describe(&out)
    );
    assert!(
        err.contains("does not verify"),
        "{what}: no reason given: {}",
        describe(&out)
    );
    for n in names {
        assert!(err.contains(n.as_str()), "{what}: {n:?} missing in {err:?}");
    }
    eprintln!("{what}: {}", err.trim_end());
    err
}

/// The record hash, implemented here from the documented encoding: SHA-256 over a domain tag
/// and every field, each prefixed by its length as a 64-bit big-endian integer. Used to forge
/// a chain as an attacker without the CA key could; a sanity check first proves it matches.
fn record_hash(r: &Row) -> String {
    let mut h = Sha256::new();
    h.update(b"pedm-audit-record-v1");
    let seq = r.seq.to_string();
    let time = r.time_ms.to_string();
    for f in [
        seq.as_str(),
        time.as_str(),
        &r.actor,
        &r.action,
        &r.subject,
        &r.details,
        &r.prev_hash,
    ] {
        h.update((f.len() as u64).to_be_bytes());
        h.update(f.as_bytes());
    }
    hex::encode(h.finalize())
}

/// Flips the last hex digit.
fn flip_hex(h: &str) -> String {
    let mut s = h.to_string();
    let last = s.pop().unwrap();
    s.push(if last == '0' { '1' } else { '0' });
    s
}

/// A baseline data directory for one test, only ever copied:
/// init, three break-glass issuances, then `serve` (which re-signs the near-expiry bundle, a
/// record of its own) stopped with SIGTERM.
struct Baseline {
    _dir: tempfile::TempDir,
    data: std::path::PathBuf,
}

fn baseline() -> Baseline {
    {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("ca");
        // A bundle that has less than half its lifetime left when serve starts: serve must
        // re-sign it, which is a state change of serve's own.
        let ca = TestCa::init_with_args(&data, Some(PASSPHRASE), &["--bundle-lifetime", "10s"])
            .unwrap_or_else(|e| panic!("{e:#}"));
        let key = UserKey::generate(&dir.path().join("id")).unwrap();
        for p in ["break-glass", "pedm-bg", "break-glass"] {
            ca.issue_break_glass(&key.public, &[p], "5m", REASON)
                .unwrap_or_else(|e| panic!("{e:#}"));
        }
        let issued_head = rows(&data).last().unwrap().seq;
        let mut server = ca
            .serve("[bundle]\nlifetime = \"20s\"\n[audit]\ncheckpoint_every = 1000\n")
            .unwrap_or_else(|e| panic!("{e:#}"));
        let (status, body) = server.get("/v1/ca/bundle").unwrap();
        assert_eq!(status, 200, "{body}");
        // serve's own write is in the chain but not yet checkpointed...
        let head = rows(&data).last().unwrap().seq;
        assert!(
            head > issued_head,
            "serve wrote no record (expected it to re-sign a bundle with < half its lifetime left)\n{}",
            server.logs()
        );
        let newest_before = file_checkpoints(&data).iter().map(seq_of).max().unwrap();
        assert!(
            newest_before < head,
            "already checkpointed: {newest_before}"
        );
        // ...until SIGTERM: serve checkpoints the head on its way out.
        let status = server.stop().unwrap();
        assert!(
            status.success(),
            "serve exited with {status}\n{}",
            server.logs()
        );
        let newest_after = file_checkpoints(&data).iter().map(seq_of).max().unwrap();
        assert_eq!(
            newest_after,
            head,
            "no shutdown checkpoint of the head\n{}",
            server.logs()
        );
        assert_eq!(db_checkpoint_seqs(&data).last().copied(), Some(head));
        Baseline { _dir: dir, data }
    }
}

#[test]
fn the_chain_verifies_after_issuance_and_a_serve_stop() {
    let base = &baseline();
    let (_t, data) = fresh_copy(&base.data);
    let out = assert_verifies(&data, "untouched copy");
    let all = rows(&data);
    let head = all.last().unwrap();
    let text = stdout(&out);
    assert!(
        text.contains(&format!("{} records", all.len())),
        "verify does not count every record: {text}"
    );
    assert!(
        text.contains(&head.hash),
        "verify does not name the head: {text}"
    );

    // The chain as stored: consecutive sequence numbers from 1, each linking to the one before.
    for (i, r) in all.iter().enumerate() {
        assert_eq!(r.seq, i as i64 + 1, "{r:?}");
        if i > 0 {
            assert_eq!(r.prev_hash, all[i - 1].hash, "{r:?}");
        }
    }
    // Each issuance has its record: break-glass, naming the operator and the reason.
    let bg: Vec<&Row> = all.iter().filter(|r| r.details.contains(REASON)).collect();
    assert_eq!(bg.len(), 3, "{all:#?}");
    for r in &bg {
        assert!(r.actor.contains(OPERATOR), "{r:?}");
        assert!(
            r.actor.contains("break-glass") || r.action.contains("break-glass"),
            "{r:?}"
        );
        let d: Value = serde_json::from_str(&r.details).unwrap();
        assert_eq!(d["reason"], REASON, "{r:?}");
    }
    // The certificates table agrees: three certificates, distinct increasing serials.
    let c = db(&data);
    let serials: Vec<i64> = c
        .prepare("SELECT serial FROM certificates ORDER BY issued_at, serial")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    assert_eq!(serials.len(), 3);
    assert!(serials.windows(2).all(|w| w[0] < w[1]), "{serials:?}");
}

#[test]
fn editing_any_field_of_any_record_fails_verify() {
    let base = &baseline();
    let all = rows(&base.data);
    assert!(all.len() >= 5, "baseline too short: {all:#?}");
    let max = all.last().unwrap().seq;
    type Edit = (&'static str, &'static str);
    // (field, SQL expression for its new value). Every one changes the value.
    let edits: [Edit; 8] = [
        ("time_ms", "time_ms + 1"),
        ("actor", "actor || 'x'"),
        ("action", "action || 'x'"),
        ("subject", "subject || 'x'"),
        // Still valid JSON, another value (set below per record).
        ("details", "?2"),
        ("prev_hash", "?2"),
        ("hash", "?2"),
        ("seq", "?2"),
    ];
    let mut cases = 0;
    for r in &all {
        for (field, expr) in edits {
            let (_t, data) = fresh_copy(&base.data);
            let value: rusqlite::types::Value = match field {
                "details" => {
                    let mut d: Value = serde_json::from_str(&r.details).unwrap();
                    d["tampered"] = Value::Bool(true);
                    d.to_string().into()
                }
                "prev_hash" => flip_hex(&r.prev_hash).into(),
                "hash" => flip_hex(&r.hash).into(),
                "seq" => (max + 10).into(),
                _ => rusqlite::types::Value::Null,
            };
            let sql = format!("UPDATE audit_log SET {field} = {expr} WHERE seq = ?1");
            let c = db(&data);
            let n = if expr == "?2" {
                c.execute(&sql, params![r.seq, value])
            } else {
                c.execute(&sql, params![r.seq])
            }
            .unwrap();
            assert_eq!(n, 1);
            drop(c);
            let edited = rows(&data);
            assert_ne!(edited, all, "the edit of {field} changed nothing");
            // Every edit but one of seq names the record it found altered.
            let names = if field == "seq" {
                vec![]
            } else {
                vec![format!("record {}", r.seq)]
            };
            assert_fails(
                &data,
                &format!("record {} field {field} edited", r.seq),
                &names,
            );
            cases += 1;
        }
    }
    assert_eq!(cases, all.len() * edits.len());
    // Positive control: a fresh copy still verifies.
    let (_t, data) = fresh_copy(&base.data);
    assert_verifies(&data, "fresh copy after the edits");
}

#[test]
fn a_rewritten_and_rehashed_chain_is_caught_by_the_signed_checkpoints() {
    let base = &baseline();
    let all = rows(&base.data);
    for r in &all {
        assert_eq!(
            record_hash(r),
            r.hash,
            "the test's re-implementation of the record hash no longer matches the CA's \
             (update record_hash in tests/tests/a1_audit.rs): {r:?}"
        );
    }
    for from in 0..all.len() {
        for drop_db_checkpoints in [false, true] {
            let (_t, data) = fresh_copy(&base.data);
            // Rewrite record `from` and re-link and re-hash everything after it: the chain is
            // internally consistent again; only the CA's signed checkpoints can tell.
            let mut forged = all.clone();
            forged[from].actor = "mallory".into();
            for i in from..forged.len() {
                if i > 0 {
                    forged[i].prev_hash = forged[i - 1].hash.clone();
                }
                forged[i].hash = record_hash(&forged[i]);
            }
            let c = db(&data);
            for f in &forged[from..] {
                c.execute(
                    "UPDATE audit_log SET actor = ?2, prev_hash = ?3, hash = ?4 WHERE seq = ?1",
                    params![f.seq, f.actor, f.prev_hash, f.hash],
                )
                .unwrap();
            }
            if drop_db_checkpoints {
                c.execute("DELETE FROM audit_checkpoints", []).unwrap();
            }
            drop(c);
            assert_fails(
                &data,
                &format!(
                    "record {} rewritten with recomputed hashes (DB checkpoints deleted: {drop_db_checkpoints})",
                    forged[from].seq
                ),
                &["checkpoint".to_string()],
            );
        }
    }
    let (_t, data) = fresh_copy(&base.data);
    assert_verifies(&data, "fresh copy after the forgeries");
}

#[test]
fn deleting_a_middle_record_fails_verify() {
    let base = &baseline();
    let all = rows(&base.data);
    for r in &all[1..all.len() - 1] {
        let (_t, data) = fresh_copy(&base.data);
        let n = db(&data)
            .execute("DELETE FROM audit_log WHERE seq = ?1", params![r.seq])
            .unwrap();
        assert_eq!(n, 1);
        assert_fails(
            &data,
            &format!("record {} deleted", r.seq),
            &[
                format!("record {}", r.seq - 1),
                format!("record {}", r.seq + 1),
            ],
        );
    }
    let (_t, data) = fresh_copy(&base.data);
    assert_verifies(&data, "fresh copy");
}

#[test]
fn deleting_checkpointed_records_and_their_checkpoints_from_the_end_fails_verify() {
    let base = &baseline();
    let all = rows(&base.data);
    let newest = file_checkpoints(&base.data)
        .iter()
        .map(seq_of)
        .max()
        .unwrap();
    assert_eq!(
        newest,
        all.last().unwrap().seq,
        "the baseline head is checkpointed"
    );
    for k in 1..=2 {
        // Delete the last k records and every DB checkpoint beyond the new end; the file
        // outside the database still holds the newest checkpoint.
        let (_t, data) = fresh_copy(&base.data);
        let keep = all.len() as i64 - k;
        let c = db(&data);
        c.execute("DELETE FROM audit_log WHERE seq > ?1", params![keep])
            .unwrap();
        c.execute(
            "DELETE FROM audit_checkpoints WHERE seq > ?1",
            params![keep],
        )
        .unwrap();
        drop(c);
        let err = assert_fails(
            &data,
            &format!("last {k} records and their DB checkpoints deleted"),
            &[format!("record {keep}")],
        );
        let lower = err.to_lowercase();
        assert!(
            lower.contains("truncat") || lower.contains("deleted from the end"),
            "the failure does not name the truncation: {err}"
        );

        // The exported log still carries the checkpoints from the file, so a SIEM sees them.
        let out = audit_export(&data);
        assert!(out.status.success(), "{}", describe(&out));
        let exported: BTreeSet<i64> = stdout(&out)
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|v| v["type"] == "checkpoint")
            .map(|v| seq_of(&v))
            .collect();
        assert!(exported.contains(&newest), "{exported:?}");

        // The limit, shown: with the file's checkpoints removed as well, the shorter chain
        // verifies. The guarantee reaches up to the newest checkpoint that survives.
        let file = data.join("audit-checkpoints.jsonl");
        let kept: Vec<String> = std::fs::read_to_string(&file)
            .unwrap()
            .lines()
            .filter(|l| serde_json::from_str::<Value>(l).is_ok_and(|v| seq_of(&v) <= keep))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&file, kept.concat()).unwrap();
        assert_verifies(&data, "records, DB and file checkpoints all truncated");
    }
    // Deleting the records but not the checkpoints fails too.
    let (_t, data) = fresh_copy(&base.data);
    db(&data)
        .execute(
            "DELETE FROM audit_log WHERE seq = ?1",
            params![all.last().unwrap().seq],
        )
        .unwrap();
    assert_fails(&data, "last record deleted", &[]);
}

#[test]
fn export_writes_every_record_and_checkpoint_as_json_lines() {
    let base = &baseline();
    let (_t, data) = fresh_copy(&base.data);
    let out = audit_export(&data);
    assert!(out.status.success(), "{}", describe(&out));
    let text = stdout(&out);
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect();
    let records: Vec<&Value> = lines.iter().filter(|v| v["type"] == "record").collect();
    let checkpoints: Vec<&Value> = lines.iter().filter(|v| v["type"] == "checkpoint").collect();
    assert_eq!(
        records.len() + checkpoints.len(),
        lines.len(),
        "lines of another type:\n{text}"
    );

    // Every record, field by field, as in the database.
    let all = rows(&data);
    assert_eq!(records.len(), all.len(), "{text}");
    for (v, r) in records.iter().zip(&all) {
        assert_eq!(v["seq"].as_i64(), Some(r.seq), "{v}");
        assert_eq!(v["time_ms"].as_i64(), Some(r.time_ms), "{v}");
        for (k, want) in [
            ("actor", &r.actor),
            ("action", &r.action),
            ("subject", &r.subject),
            ("details", &r.details),
            ("prev_hash", &r.prev_hash),
            ("hash", &r.hash),
        ] {
            assert_eq!(v[k].as_str(), Some(want.as_str()), "{k} of {v}");
        }
    }

    // Every checkpoint of the database and of the file, once each.
    let c = db(&data);
    let db_cps: BTreeSet<(i64, String, String)> = c
        .prepare("SELECT seq, head_hash, signature FROM audit_checkpoints")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    let key = |v: &Value| {
        (
            seq_of(v),
            v["head_hash"].as_str().unwrap_or_default().to_string(),
            v["signature"].as_str().unwrap_or_default().to_string(),
        )
    };
    let file_cps: BTreeSet<_> = file_checkpoints(&data).iter().map(key).collect();
    let union: BTreeSet<_> = db_cps.union(&file_cps).cloned().collect();
    let exported: Vec<_> = checkpoints.iter().map(|v| key(v)).collect();
    let exported_set: BTreeSet<_> = exported.iter().cloned().collect();
    assert_eq!(exported.len(), exported_set.len(), "duplicates:\n{text}");
    assert_eq!(exported_set, union, "{text}");
    assert!(!union.is_empty());
    // Each checkpoint names a record of the chain by its hash.
    for (seq, head, _) in &union {
        let r = all
            .iter()
            .find(|r| r.seq == *seq)
            .expect("checkpointed record");
        assert_eq!(&r.hash, head);
    }
}

#[test]
fn concurrent_break_glass_issuance_beside_serve_keeps_one_chain() {
    if !env::require_ssh_keygen() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ca");
    let ca = TestCa::init(&data, None).unwrap_or_else(|e| panic!("{e:#}"));
    let key = UserKey::generate(&dir.path().join("id")).unwrap();
    let mut server = ca
        .serve("[audit]\ncheckpoint_every = 2\n")
        .unwrap_or_else(|e| panic!("{e:#}"));
    let before = rows(&data).len();
    const PROCS: usize = 4;
    const EACH: usize = 3;
    let certs: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..PROCS)
            .map(|i| {
                let ca = &ca;
                let key = &key;
                scope.spawn(move || {
                    (0..EACH)
                        .map(|j| {
                            ca.issue_break_glass(
                                &key.public,
                                &["break-glass"],
                                "5m",
                                &format!("parallel {i}.{j}"),
                            )
                            .unwrap_or_else(|e| panic!("{e:#}"))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert!(server.is_running(), "{}", server.logs());
    let status = server.stop().unwrap();
    assert!(status.success(), "{status}\n{}", server.logs());

    assert_eq!(certs.len(), PROCS * EACH);
    let distinct: BTreeSet<&String> = certs.iter().collect();
    assert_eq!(distinct.len(), certs.len(), "identical certificates issued");
    let c = db(&data);
    let serials: Vec<i64> = c
        .prepare("SELECT serial FROM certificates")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    let unique: BTreeSet<i64> = serials.iter().copied().collect();
    assert_eq!(serials.len(), PROCS * EACH);
    assert_eq!(unique.len(), serials.len(), "duplicate serials {serials:?}");
    assert!(!unique.contains(&0));
    let all = rows(&data);
    let issued = all
        .iter()
        .filter(|r| r.details.contains("parallel "))
        .count();
    assert_eq!(issued, PROCS * EACH, "one audit record per certificate");
    assert!(all.len() >= before + PROCS * EACH);
    assert_verifies(&data, "after concurrent issuance");
}
