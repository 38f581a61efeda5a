//! The embedded SQLite store (WAL, `synchronous=FULL`). Safe to share between `serve` and
//! local commands on the same file: every write runs in `BEGIN IMMEDIATE`, so serial and
//! chain-head reads and the writes that depend on them are serialised across processes.

use super::*;
use crate::audit::GENESIS_HASH;
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE trust_root (
    fingerprint TEXT PRIMARY KEY,
    public_key  TEXT NOT NULL,
    key_file    TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE TABLE ca_keys (
    fingerprint TEXT PRIMARY KEY,
    public_key  TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('next','active','retired','gone','revoked')),
    key_file    TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE UNIQUE INDEX one_active_ca_key ON ca_keys(state) WHERE state = 'active';
CREATE TABLE bundles (
    version    INTEGER PRIMARY KEY CHECK (version > 0),
    payload    BLOB NOT NULL,
    signature  TEXT NOT NULL,
    issued_at  INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE TABLE certificates (
    serial        INTEGER PRIMARY KEY CHECK (serial > 0),
    kind          TEXT NOT NULL,
    key_id        TEXT NOT NULL,
    user          TEXT NOT NULL,
    principals    TEXT NOT NULL,
    public_key_fp TEXT NOT NULL,
    ca_key        TEXT NOT NULL REFERENCES ca_keys(fingerprint),
    session_id    TEXT,
    valid_after   INTEGER NOT NULL,
    valid_before  INTEGER NOT NULL,
    issued_at     INTEGER NOT NULL,
    certificate   TEXT NOT NULL
);
CREATE INDEX certificates_user ON certificates(user);
CREATE TABLE sessions (
    id         TEXT PRIMARY KEY,
    user       TEXT NOT NULL,
    issuer     TEXT NOT NULL,
    subject    TEXT NOT NULL,
    groups     TEXT NOT NULL,
    roles      TEXT NOT NULL,
    principals TEXT NOT NULL,
    auth_time  INTEGER,
    method     TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE TABLE pending_logins (
    state         TEXT PRIMARY KEY,
    secret_sha256 TEXT NOT NULL,
    redirect_uri  TEXT NOT NULL,
    nonce         TEXT NOT NULL,
    pkce_verifier TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL
);
CREATE TABLE audit_log (
    seq       INTEGER PRIMARY KEY CHECK (seq > 0),
    time_ms   INTEGER NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    subject   TEXT NOT NULL,
    details   TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
);
CREATE TABLE audit_checkpoints (
    seq       INTEGER PRIMARY KEY,
    head_hash TEXT NOT NULL,
    time_ms   INTEGER NOT NULL,
    ca_key    TEXT NOT NULL,
    signature TEXT NOT NULL
);
"#,
    r#"
CREATE TABLE elevations (
    id            TEXT PRIMARY KEY,
    requester     TEXT NOT NULL,
    session_id    TEXT NOT NULL,
    elevation     TEXT NOT NULL,
    principals    TEXT NOT NULL,
    reason        TEXT NOT NULL,
    duration_secs INTEGER NOT NULL CHECK (duration_secs > 0),
    state         TEXT NOT NULL CHECK (state IN ('pending','approved','active','expired','denied','cancelled','revoked','lapsed','timed_out')),
    created_at    INTEGER NOT NULL,
    approved_at   INTEGER,
    started_at    INTEGER,
    ended_at      INTEGER
);
CREATE INDEX elevations_requester ON elevations(requester, created_at);
CREATE INDEX elevations_open ON elevations(state) WHERE state IN ('pending','approved','active');
CREATE TABLE elevation_decisions (
    elevation_id TEXT NOT NULL REFERENCES elevations(id),
    actor        TEXT NOT NULL,
    decision     TEXT NOT NULL,
    comment      TEXT,
    at           INTEGER NOT NULL
);
CREATE INDEX elevation_decisions_id ON elevation_decisions(elevation_id);
ALTER TABLE certificates ADD COLUMN elevation_id TEXT REFERENCES elevations(id);
ALTER TABLE pending_logins ADD COLUMN reauth INTEGER NOT NULL DEFAULT 0;
"#,
    r#"
CREATE TABLE revocations (
    id         INTEGER PRIMARY KEY,
    kind       TEXT NOT NULL CHECK (kind IN ('serial','user','public_key','ca_key')),
    value      TEXT NOT NULL,
    reason     TEXT NOT NULL,
    actor      TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    lifted_at  INTEGER
);
CREATE UNIQUE INDEX revocations_active ON revocations(kind, value) WHERE lifted_at IS NULL;
CREATE TABLE krls (
    version    INTEGER PRIMARY KEY CHECK (version > 0),
    payload    BLOB NOT NULL,
    signature  TEXT NOT NULL,
    content_sha256 TEXT NOT NULL,
    issued_at  INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE TABLE join_tokens (
    token_sha256 TEXT PRIMARY KEY,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    used_at      INTEGER,
    used_by      TEXT
);
CREATE TABLE hosts (
    host_key_fp TEXT PRIMARY KEY,
    host_name   TEXT NOT NULL,
    host_key    TEXT NOT NULL,
    enrolled_at INTEGER NOT NULL
);
CREATE TABLE host_checkins (
    host_key_fp    TEXT NOT NULL REFERENCES hosts(host_key_fp),
    bundle_version INTEGER NOT NULL,
    krl_version    INTEGER,
    at             INTEGER NOT NULL
);
CREATE INDEX host_checkins_host ON host_checkins(host_key_fp, at);
"#,
    r#"
ALTER TABLE ca_keys ADD COLUMN published_version INTEGER;
ALTER TABLE ca_keys ADD COLUMN published_at INTEGER;
UPDATE ca_keys SET published_version = (SELECT MIN(version) FROM bundles), published_at = (SELECT MIN(issued_at) FROM bundles)
  WHERE EXISTS (SELECT 1 FROM bundles);
"#,
];

/// The SQLite store. One connection per process, used under a mutex: one writer, which
/// later group commit batches.
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn to_json(v: &[String]) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "[]".into())
}

fn from_json(s: &str) -> Vec<String> {
    serde_json::from_str(s).unwrap_or_default()
}

fn state_of(s: String) -> rusqlite::Result<KeyState> {
    s.parse().map_err(|e: String| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into())
    })
}

impl SqliteStore {
    /// Creates a new database file; refuses an existing one.
    pub fn create(path: &Path) -> Result<Self> {
        if path.exists() {
            return Err(StoreError::Conflict(format!(
                "{} already exists; refusing to overwrite it",
                path.display()
            )));
        }
        Self::open_inner(path, true)
    }

    /// Opens an existing database and applies pending migrations.
    pub fn open(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(StoreError::Other(format!(
                "{} does not exist; run `pedm-ca init --data-dir DIR` first",
                path.display()
            )));
        }
        Self::open_inner(path, false)
    }

    fn open_inner(path: &Path, create: bool) -> Result<Self> {
        let conn = Connection::open(path)?;
        if create {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| StoreError::Other(e.to_string()))?;
        }
        conn.busy_timeout(Duration::from_secs(30))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let store = Self {
            conn: Mutex::new(conn),
        };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&self) -> Result<()> {
        self.write(|tx| {
            let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
            for (i, m) in MIGRATIONS.iter().enumerate().skip(version as usize) {
                tx.execute_batch(m)?;
                tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            }
            Ok(())
        })
    }

    fn conn(&self) -> Result<std::sync::MutexGuard<'_, Connection>> {
        self.conn
            .lock()
            .map_err(|_| StoreError::Other("store lock poisoned".into()))
    }

    /// Runs `f` in a `BEGIN IMMEDIATE` transaction and commits.
    fn write<T>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let conn = self.conn()?;
        f(&conn)
    }
}

/// Allocates the next serial inside `tx`, has `sign` make the certificate, and stores it with
/// its audit record.
fn insert_cert(
    tx: &Transaction<'_>,
    intent: &IssueIntent,
    sign: &mut CertSign<'_>,
) -> Result<IssuedRow> {
    {
        // The signer must still be the active key inside this transaction: a rotation that
        // committed since the signer was loaded makes this certificate unsignable.
        let active: Option<String> = tx
            .query_row(
                "SELECT fingerprint FROM ca_keys WHERE state = 'active'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        if active.as_deref() != Some(intent.ca_key.as_str()) {
            return Err(StoreError::KeyChanged {
                signer: intent.ca_key.clone(),
                active,
            });
        }
        let serial: u64 = tx.query_row(
            "SELECT COALESCE(MAX(serial), 0) + 1 FROM certificates",
            [],
            |r| r.get(0),
        )?;
        let signed = sign(serial)?;
        let now = now_ms() / 1000;
        tx.execute(
                "INSERT INTO certificates (serial, kind, key_id, user, principals, public_key_fp, ca_key, session_id, valid_after, valid_before, issued_at, certificate, elevation_id)
                 VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13)",
                params![
                    serial,
                    intent.kind.as_str(),
                    signed.key_id,
                    intent.user,
                    to_json(&intent.principals),
                    intent.public_key_fingerprint,
                    intent.ca_key,
                    intent.session,
                    signed.valid_after,
                    signed.valid_before,
                    now,
                    signed.certificate,
                    intent.elevation_id
                ],
            )?;
        let mut details = serde_json::json!({
            "kind": intent.kind.as_str(),
            "key_id": signed.key_id,
            "user": intent.user,
            "principals": intent.principals,
            "public_key": intent.public_key_fingerprint,
            "ca_key": intent.ca_key,
            "valid_after": signed.valid_after,
            "valid_before": signed.valid_before,
        });
        if let (Some(obj), Some(extra)) = (details.as_object_mut(), intent.details.as_object()) {
            for (k, v) in extra {
                obj.insert(k.clone(), v.clone());
            }
        }
        let action = match intent.kind {
            CertKind::Base => "cert.issue",
            CertKind::Elevated => "cert.elevated",
            CertKind::BreakGlass => "cert.break-glass",
        };
        let rec = append(
            tx,
            &AuditEvent::new(
                intent.actor.clone(),
                action,
                format!("serial={serial}"),
                details,
            ),
        )?;
        Ok(IssuedRow {
            serial,
            key_id: signed.key_id,
            certificate: signed.certificate,
            valid_after: signed.valid_after,
            valid_before: signed.valid_before,
            audit_seq: rec.seq,
        })
    }
}

const ELEVATION_COLUMNS: &str = "id, requester, session_id, elevation, principals, reason, duration_secs, state, created_at, approved_at, started_at, ended_at";

fn elevation_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ElevationRow> {
    let state: String = r.get(7)?;
    Ok(ElevationRow {
        id: r.get(0)?,
        requester: r.get(1)?,
        session_id: r.get(2)?,
        elevation: r.get(3)?,
        principals: from_json(&r.get::<_, String>(4)?),
        reason: r.get(5)?,
        duration_secs: r.get(6)?,
        state: state.parse().map_err(|e: String| {
            rusqlite::Error::FromSqlConversionFailure(7, rusqlite::types::Type::Text, e.into())
        })?,
        created_at: r.get(8)?,
        approved_at: r.get(9)?,
        started_at: r.get(10)?,
        ended_at: r.get(11)?,
    })
}

fn read_decisions(c: &Connection, id: &str) -> Result<Vec<DecisionRow>> {
    let mut st = c.prepare("SELECT elevation_id, actor, decision, comment, at FROM elevation_decisions WHERE elevation_id = ?1 ORDER BY rowid")?;
    let rows = st
        .query_map([id], |r| {
            Ok(DecisionRow {
                elevation_id: r.get(0)?,
                actor: r.get(1)?,
                decision: r.get(2)?,
                comment: r.get(3)?,
                at: r.get(4)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

fn read_elevation(c: &Connection, id: &str) -> Result<Option<(ElevationRow, Vec<DecisionRow>)>> {
    let row = c
        .query_row(
            &format!("SELECT {ELEVATION_COLUMNS} FROM elevations WHERE id = ?1"),
            [id],
            elevation_row,
        )
        .optional()?;
    match row {
        Some(r) => {
            let d = read_decisions(c, id)?;
            Ok(Some((r, d)))
        }
        None => Ok(None),
    }
}

fn insert_decision(tx: &Transaction<'_>, d: &DecisionRow) -> Result<()> {
    tx.execute(
        "INSERT INTO elevation_decisions (elevation_id, actor, decision, comment, at) VALUES (?1,?2,?3,?4,?5)",
        params![d.elevation_id, d.actor, d.decision, d.comment, d.at],
    )?;
    Ok(())
}

fn apply_change(tx: &Transaction<'_>, id: &str, change: &ElevationChange) -> Result<()> {
    tx.execute(
        "UPDATE elevations SET state = ?2, approved_at = ?3, started_at = ?4, ended_at = ?5 WHERE id = ?1",
        params![id, change.state.as_str(), change.approved_at, change.started_at, change.ended_at],
    )?;
    if let Some(d) = &change.decision {
        insert_decision(tx, d)?;
    }
    append(tx, &change.event)?;
    Ok(())
}

/// Appends `event` to the chain inside `tx`, reading the head in the same transaction.
fn append(tx: &Transaction<'_>, event: &AuditEvent) -> Result<AuditRecord> {
    let head: Option<(u64, String)> = tx
        .query_row(
            "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let (seq, prev) = match head {
        Some((seq, hash)) => (seq + 1, hash),
        None => (1, GENESIS_HASH.to_string()),
    };
    let rec = AuditRecord::chain(event, seq, now_ms(), &prev);
    tx.execute(
        "INSERT INTO audit_log (seq, time_ms, actor, action, subject, details, prev_hash, hash) VALUES (?1,?2,?3,?4,?5,?6,?7,?8)",
        params![rec.seq, rec.time_ms, rec.actor, rec.action, rec.subject, rec.details, rec.prev_hash, rec.hash],
    )?;
    Ok(rec)
}

fn audit_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditRecord> {
    Ok(AuditRecord {
        seq: r.get(0)?,
        time_ms: r.get(1)?,
        actor: r.get(2)?,
        action: r.get(3)?,
        subject: r.get(4)?,
        details: r.get(5)?,
        prev_hash: r.get(6)?,
        hash: r.get(7)?,
    })
}

fn session_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SessionRow> {
    Ok(SessionRow {
        id: r.get(0)?,
        user: r.get(1)?,
        issuer: r.get(2)?,
        subject: r.get(3)?,
        groups: from_json(&r.get::<_, String>(4)?),
        roles: from_json(&r.get::<_, String>(5)?),
        principals: from_json(&r.get::<_, String>(6)?),
        auth_time: r.get(7)?,
        method: r.get(8)?,
        created_at: r.get(9)?,
        expires_at: r.get(10)?,
        revoked_at: r.get(11)?,
    })
}

impl Store for SqliteStore {
    fn init_ca(
        &self,
        root: &TrustRootRow,
        key: &CaKeyRow,
        event: &AuditEvent,
    ) -> Result<AuditRecord> {
        self.write(|tx| {
            let existing: i64 = tx.query_row("SELECT COUNT(*) FROM ca_keys", [], |r| r.get(0))?;
            if existing > 0 {
                return Err(StoreError::Conflict("this CA is already initialised".into()));
            }
            tx.execute(
                "INSERT INTO trust_root (fingerprint, public_key, key_file, created_at) VALUES (?1,?2,?3,?4)",
                params![root.fingerprint, root.public_key, root.key_file, now_ms() / 1000],
            )?;
            tx.execute(
                "INSERT INTO ca_keys (fingerprint, public_key, state, key_file, created_at) VALUES (?1,?2,?3,?4,?5)",
                params![key.fingerprint, key.public_key, key.state.as_str(), key.key_file, key.created_at],
            )?;
            append(tx, event)
        })
    }

    fn trust_root(&self) -> Result<TrustRootRow> {
        self.read(|c| {
            c.query_row(
                "SELECT fingerprint, public_key, key_file FROM trust_root ORDER BY rowid DESC LIMIT 1",
                [],
                |r| {
                    Ok(TrustRootRow {
                        fingerprint: r.get(0)?,
                        public_key: r.get(1)?,
                        key_file: r.get(2)?,
                    })
                },
            )
            .optional()?
            .ok_or_else(|| {
                StoreError::Other("no trust root: the data directory was not initialised".into())
            })
        })
    }

    fn ca_keys(&self) -> Result<Vec<CaKeyRow>> {
        self.read(|c| {
            let mut st =
                c.prepare("SELECT fingerprint, public_key, state, key_file, created_at, published_version, published_at FROM ca_keys ORDER BY created_at, fingerprint")?;
            let rows = st
                .query_map([], |r| {
                    Ok(CaKeyRow {
                        fingerprint: r.get(0)?,
                        public_key: r.get(1)?,
                        state: state_of(r.get(2)?)?,
                        key_file: r.get(3)?,
                        created_at: r.get(4)?,
                        published_version: r.get(5)?,
                        published_at: r.get(6)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }

    fn latest_bundle(&self) -> Result<Option<BundleRow>> {
        self.read(|c| {
            Ok(c.query_row(
                "SELECT version, payload, signature, issued_at, expires_at FROM bundles ORDER BY version DESC LIMIT 1",
                [],
                |r| {
                    Ok(BundleRow {
                        version: r.get(0)?,
                        payload: r.get(1)?,
                        signature: r.get(2)?,
                        issued_at: r.get(3)?,
                        expires_at: r.get(4)?,
                    })
                },
            )
            .optional()?)
        })
    }

    fn publish_bundle(&self, actor: &str, make: &mut BundleMaker<'_>) -> Result<BundleRow> {
        let keys: Vec<CaKeyRow> = self
            .ca_keys()?
            .into_iter()
            .filter(|k| k.state != KeyState::Gone)
            .collect();
        self.write(|tx| {
            let version: u64 = tx.query_row("SELECT COALESCE(MAX(version), 0) + 1 FROM bundles", [], |r| r.get(0))?;
            let row = make(version, &keys).map_err(StoreError::Other)?;
            tx.execute(
                "INSERT INTO bundles (version, payload, signature, issued_at, expires_at) VALUES (?1,?2,?3,?4,?5)",
                params![row.version, row.payload, row.signature, row.issued_at, row.expires_at],
            )?;
            for k in &keys {
                tx.execute(
                    "UPDATE ca_keys SET published_version = ?2, published_at = ?3 WHERE fingerprint = ?1 AND published_version IS NULL",
                    params![k.fingerprint, row.version, row.issued_at],
                )?;
            }
            let fps: Vec<String> = keys.iter().map(|k| format!("{} {}", k.fingerprint, k.state.as_str())).collect();
            append(
                tx,
                &AuditEvent::new(
                    actor,
                    "bundle.publish",
                    format!("version={}", row.version),
                    serde_json::json!({"expires_at": row.expires_at, "keys": fps}),
                ),
            )?;
            Ok(row)
        })
    }

    fn issue_certificate(
        &self,
        intent: &IssueIntent,
        sign: &mut CertSign<'_>,
    ) -> Result<IssuedRow> {
        self.write(|tx| insert_cert(tx, intent, sign))
    }

    fn issue_with_elevation(
        &self,
        base: &IssueIntent,
        sign_base: &mut CertSign<'_>,
        elevation_id: &str,
        plan: &mut ElevationPlanner<'_>,
        sign_elevated: &mut ElevatedSign<'_>,
    ) -> Result<(IssuedRow, IssuedRow)> {
        self.write(|tx| {
            let (row, decisions) = read_elevation(tx, elevation_id)?.ok_or_else(|| {
                StoreError::NotFound(
                    "no such elevation request of yours; nothing was issued".into(),
                )
            })?;
            let plan = plan(&row, &decisions).map_err(StoreError::Rejected)?;
            if let Some(change) = &plan.activation {
                apply_change(tx, &row.id, change)?;
            }
            let base_row = insert_cert(tx, base, sign_base)?;
            let elevated =
                insert_cert(tx, &plan.intent, &mut |serial| sign_elevated(serial, &plan))?;
            Ok((base_row, elevated))
        })
    }

    fn create_elevation(
        &self,
        row: &ElevationRow,
        decision: Option<&DecisionRow>,
        events: &[AuditEvent],
    ) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO elevations (id, requester, session_id, elevation, principals, reason, duration_secs, state, created_at, approved_at, started_at, ended_at)
                 VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12)",
                params![
                    row.id, row.requester, row.session_id, row.elevation, to_json(&row.principals), row.reason,
                    row.duration_secs, row.state.as_str(), row.created_at, row.approved_at, row.started_at, row.ended_at
                ],
            )?;
            if let Some(d) = decision {
                insert_decision(tx, d)?;
            }
            for event in events {
                append(tx, event)?;
            }
            Ok(())
        })
    }

    fn elevation(&self, id: &str) -> Result<Option<(ElevationRow, Vec<DecisionRow>)>> {
        self.read(|c| read_elevation(c, id))
    }

    fn elevations_of(&self, user: &str, since: i64) -> Result<Vec<ElevationRow>> {
        self.read(|c| {
            let mut st = c.prepare(&format!("SELECT {ELEVATION_COLUMNS} FROM elevations WHERE requester = ?1 AND created_at >= ?2 ORDER BY created_at DESC, id"))?;
            let rows = st.query_map(params![user, since], elevation_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }

    fn open_elevations(&self) -> Result<Vec<ElevationRow>> {
        self.read(|c| {
            let mut st = c.prepare(&format!("SELECT {ELEVATION_COLUMNS} FROM elevations WHERE state IN ('pending','approved','active') ORDER BY created_at, id"))?;
            let rows = st.query_map([], elevation_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }

    fn change_elevation(
        &self,
        id: &str,
        decide: &mut ElevationDecider<'_>,
    ) -> Result<Option<ElevationRow>> {
        self.write(|tx| {
            let Some((row, decisions)) = read_elevation(tx, id)? else {
                return Ok(None);
            };
            let change = decide(&row, &decisions).map_err(StoreError::Rejected)?;
            apply_change(tx, id, &change)?;
            Ok(read_elevation(tx, id)?.map(|(r, _)| r))
        })
    }

    fn replace_trust_root(&self, root: &TrustRootRow, event: &AuditEvent) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO trust_root (fingerprint, public_key, key_file, created_at) VALUES (?1,?2,?3,?4)",
                params![root.fingerprint, root.public_key, root.key_file, now_ms() / 1000],
            )?;
            append(tx, event)?;
            Ok(())
        })
    }

    fn delete_unpublished_key(&self, fingerprint: &str, event: &AuditEvent) -> Result<()> {
        self.write(|tx| {
            let row: Option<(String, Option<u64>)> = tx
                .query_row(
                    "SELECT state, published_version FROM ca_keys WHERE fingerprint = ?1",
                    [fingerprint],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            match row {
                None => return Err(StoreError::Conflict(format!("no CA key {fingerprint}"))),
                Some((_, Some(v))) => {
                    return Err(StoreError::Conflict(format!(
                        "{fingerprint} was published in bundle version {v}: a published key is never deleted (hosts may trust it, and old checkpoints need it); revoke it instead"
                    )))
                }
                Some((state, None)) if state != "next" => {
                    return Err(StoreError::Conflict(format!(
                        "{fingerprint} is {state}; only an unpublished staged key can be deleted"
                    )))
                }
                Some(_) => {}
            }
            tx.execute("DELETE FROM ca_keys WHERE fingerprint = ?1", [fingerprint])?;
            append(tx, event)?;
            Ok(())
        })
    }

    fn add_ca_key(&self, key: &CaKeyRow, event: &AuditEvent) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO ca_keys (fingerprint, public_key, state, key_file, created_at) VALUES (?1,?2,?3,?4,?5)",
                params![key.fingerprint, key.public_key, key.state.as_str(), key.key_file, key.created_at],
            )?;
            append(tx, event)?;
            Ok(())
        })
    }

    fn activate_key(&self, fingerprint: &str, event: &AuditEvent) -> Result<()> {
        self.write(|tx| {
            let state: Option<String> = tx
                .query_row(
                    "SELECT state FROM ca_keys WHERE fingerprint = ?1",
                    [fingerprint],
                    |r| r.get(0),
                )
                .optional()?;
            match state.as_deref() {
                Some("next") => {}
                Some(other) => {
                    return Err(StoreError::Conflict(format!(
                        "{fingerprint} is {other}; only a staged (next) key can be activated"
                    )))
                }
                None => return Err(StoreError::Conflict(format!("no CA key {fingerprint}"))),
            }
            tx.execute(
                "UPDATE ca_keys SET state = 'retired' WHERE state = 'active'",
                [],
            )?;
            tx.execute(
                "UPDATE ca_keys SET state = 'active' WHERE fingerprint = ?1",
                [fingerprint],
            )?;
            append(tx, event)?;
            Ok(())
        })
    }

    fn set_key_state(
        &self,
        fingerprint: &str,
        from: &[KeyState],
        to: KeyState,
        event: &AuditEvent,
    ) -> Result<bool> {
        self.write(|tx| {
            let state: Option<String> = tx
                .query_row(
                    "SELECT state FROM ca_keys WHERE fingerprint = ?1",
                    [fingerprint],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(state) = state else { return Ok(false) };
            if !from.iter().any(|f| f.as_str() == state) {
                return Ok(false);
            }
            tx.execute(
                "UPDATE ca_keys SET state = ?2 WHERE fingerprint = ?1",
                params![fingerprint, to.as_str()],
            )?;
            append(tx, event)?;
            Ok(true)
        })
    }

    fn last_valid_before(&self, ca_key: &str) -> Result<Option<i64>> {
        self.read(|c| {
            Ok(c.query_row(
                "SELECT MAX(valid_before) FROM certificates WHERE ca_key = ?1",
                [ca_key],
                |r| r.get(0),
            )?)
        })
    }

    fn revoke(&self, r: &RevocationRow, now: i64, event: &AuditEvent) -> Result<RevokeOutcome> {
        self.write(|tx| {
            let exists: i64 = tx.query_row(
                "SELECT COUNT(*) FROM revocations WHERE kind = ?1 AND value = ?2 AND lifted_at IS NULL",
                params![r.kind.as_str(), r.value],
                |row| row.get(0),
            )?;
            if exists > 0 {
                return Ok(RevokeOutcome { new: false, sessions_ended: 0, elevations_ended: 0 });
            }
            tx.execute(
                "INSERT INTO revocations (kind, value, reason, actor, created_at) VALUES (?1,?2,?3,?4,?5)",
                params![r.kind.as_str(), r.value, r.reason, r.actor, r.created_at],
            )?;
            let mut out = RevokeOutcome { new: true, sessions_ended: 0, elevations_ended: 0 };
            if r.kind == RevocationKind::User {
                out.sessions_ended = tx.execute(
                    "UPDATE sessions SET revoked_at = ?2 WHERE user = ?1 AND revoked_at IS NULL",
                    params![r.value, now],
                )? as u64;
                out.elevations_ended = tx.execute(
                    "UPDATE elevations SET state = 'revoked', ended_at = ?2 WHERE requester = ?1 AND state IN ('pending','approved','active')",
                    params![r.value, now],
                )? as u64;
            }
            let mut event = event.clone();
            if let Some(obj) = event.details.as_object_mut() {
                obj.insert("sessions_ended".into(), out.sessions_ended.into());
                obj.insert("elevations_ended".into(), out.elevations_ended.into());
            }
            append(tx, &event)?;
            Ok(out)
        })
    }

    fn lift_revocation(
        &self,
        kind: RevocationKind,
        value: &str,
        now: i64,
        event: &AuditEvent,
    ) -> Result<bool> {
        self.write(|tx| {
            if kind == RevocationKind::User {
                // The user may sign in again, but what they held when revoked stays revoked:
                // their unexpired certificates become serial revocations first.
                tx.execute(
                    "INSERT INTO revocations (kind, value, reason, actor, created_at)
                     SELECT 'serial', CAST(c.serial AS TEXT), 'issued before the revocation of user ' || ?1, 'system', ?2
                     FROM certificates c
                     WHERE c.user = ?1 AND c.valid_before > ?2
                       AND c.issued_at <= (SELECT MAX(created_at) FROM revocations WHERE kind = 'user' AND value = ?1 AND lifted_at IS NULL)
                       AND NOT EXISTS (SELECT 1 FROM revocations r WHERE r.kind = 'serial' AND r.value = CAST(c.serial AS TEXT) AND r.lifted_at IS NULL)",
                    params![value, now],
                )?;
            }
            let n = tx.execute(
                "UPDATE revocations SET lifted_at = ?3 WHERE kind = ?1 AND value = ?2 AND lifted_at IS NULL",
                params![kind.as_str(), value, now],
            )?;
            if n > 0 {
                append(tx, event)?;
            }
            Ok(n > 0)
        })
    }

    fn revocations(&self) -> Result<Vec<RevocationRow>> {
        self.read(|c| {
            let mut st = c.prepare("SELECT kind, value, reason, actor, created_at FROM revocations WHERE lifted_at IS NULL ORDER BY id")?;
            let rows = st
                .query_map([], |r| {
                    let kind: String = r.get(0)?;
                    Ok(RevocationRow {
                        kind: kind.parse().map_err(|e: String| {
                            rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into())
                        })?,
                        value: r.get(1)?,
                        reason: r.get(2)?,
                        actor: r.get(3)?,
                        created_at: r.get(4)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }

    fn is_revoked(&self, kind: RevocationKind, value: &str) -> Result<bool> {
        self.read(|c| {
            let n: i64 = c.query_row(
                "SELECT COUNT(*) FROM revocations WHERE kind = ?1 AND value = ?2 AND lifted_at IS NULL",
                params![kind.as_str(), value],
                |r| r.get(0),
            )?;
            Ok(n > 0)
        })
    }

    fn revoked_serials(&self, now: i64) -> Result<Vec<(String, u64)>> {
        self.read(|c| {
            let mut st = c.prepare(
                "SELECT DISTINCT ca_key, serial FROM certificates c WHERE valid_before > ?1 AND EXISTS (
                    SELECT 1 FROM revocations r WHERE r.lifted_at IS NULL AND (
                        (r.kind = 'serial' AND r.value = CAST(c.serial AS TEXT)) OR
                        (r.kind = 'user' AND r.value = c.user AND c.issued_at <= r.created_at) OR
                        (r.kind = 'public_key' AND r.value = c.public_key_fp)))
                 ORDER BY ca_key, serial",
            )?;
            let rows = st.query_map([now], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }

    fn certificate_exists(&self, serial: u64) -> Result<bool> {
        self.read(|c| {
            let n: i64 = c.query_row(
                "SELECT COUNT(*) FROM certificates WHERE serial = ?1",
                [serial],
                |r| r.get(0),
            )?;
            Ok(n > 0)
        })
    }

    fn latest_krl(&self) -> Result<Option<KrlRow>> {
        self.read(|c| {
            Ok(c.query_row(
                "SELECT version, payload, signature, content_sha256, issued_at, expires_at FROM krls ORDER BY version DESC LIMIT 1",
                [],
                |r| {
                    Ok(KrlRow {
                        version: r.get(0)?,
                        payload: r.get(1)?,
                        signature: r.get(2)?,
                        content_sha256: r.get(3)?,
                        issued_at: r.get(4)?,
                        expires_at: r.get(5)?,
                    })
                },
            )
            .optional()?)
        })
    }

    fn publish_krl(&self, make: &mut KrlMaker<'_>) -> Result<KrlRow> {
        self.write(|tx| {
            let version: u64 = tx.query_row("SELECT COALESCE(MAX(version), 0) + 1 FROM krls", [], |r| r.get(0))?;
            let row = make(version).map_err(StoreError::Other)?;
            tx.execute(
                "INSERT INTO krls (version, payload, signature, content_sha256, issued_at, expires_at) VALUES (?1,?2,?3,?4,?5,?6)",
                params![row.version, row.payload, row.signature, row.content_sha256, row.issued_at, row.expires_at],
            )?;
            append(
                tx,
                &AuditEvent::new(
                    "system",
                    "krl.publish",
                    format!("version={}", row.version),
                    serde_json::json!({"expires_at": row.expires_at, "content_sha256": row.content_sha256}),
                ),
            )?;
            Ok(row)
        })
    }

    fn create_join_token(
        &self,
        token_sha256: &str,
        now: i64,
        expires_at: i64,
        event: &AuditEvent,
    ) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO join_tokens (token_sha256, created_at, expires_at) VALUES (?1,?2,?3)",
                params![token_sha256, now, expires_at],
            )?;
            append(tx, event)?;
            Ok(())
        })
    }

    fn enroll_host(
        &self,
        token_sha256: &str,
        host: &HostRow,
        now: i64,
        event: &AuditEvent,
    ) -> Result<EnrollOutcome> {
        self.write(|tx| {
            let token: Option<(i64, Option<i64>)> = tx
                .query_row(
                    "SELECT expires_at, used_at FROM join_tokens WHERE token_sha256 = ?1",
                    [token_sha256],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            match token {
                None => return Ok(EnrollOutcome::UnknownToken),
                Some((_, Some(_))) => return Ok(EnrollOutcome::TokenUsed),
                Some((exp, None)) if now >= exp => return Ok(EnrollOutcome::TokenExpired),
                Some(_) => {}
            }
            tx.execute(
                "UPDATE join_tokens SET used_at = ?2, used_by = ?3 WHERE token_sha256 = ?1",
                params![token_sha256, now, host.host_key_fp],
            )?;
            tx.execute(
                "INSERT INTO hosts (host_key_fp, host_name, host_key, enrolled_at) VALUES (?1,?2,?3,?4)
                 ON CONFLICT(host_key_fp) DO UPDATE SET host_name = excluded.host_name",
                params![host.host_key_fp, host.host_name, host.host_key, host.enrolled_at],
            )?;
            append(tx, event)?;
            Ok(EnrollOutcome::Enrolled)
        })
    }

    fn host(&self, host_key_fp: &str) -> Result<Option<HostRow>> {
        self.read(|c| {
            Ok(c.query_row(
                "SELECT host_key_fp, host_name, host_key, enrolled_at FROM hosts WHERE host_key_fp = ?1",
                [host_key_fp],
                |r| {
                    Ok(HostRow {
                        host_key_fp: r.get(0)?,
                        host_name: r.get(1)?,
                        host_key: r.get(2)?,
                        enrolled_at: r.get(3)?,
                    })
                },
            )
            .optional()?)
        })
    }

    fn record_checkin(&self, c: &CheckinRow, event: &AuditEvent) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO host_checkins (host_key_fp, bundle_version, krl_version, at) VALUES (?1,?2,?3,?4)",
                params![c.host_key_fp, c.bundle_version, c.krl_version, c.at],
            )?;
            append(tx, event)?;
            Ok(())
        })
    }

    fn latest_checkins(&self) -> Result<Vec<(HostRow, Option<CheckinRow>)>> {
        self.read(|c| {
            let mut st = c.prepare(
                "SELECT h.host_key_fp, h.host_name, h.host_key, h.enrolled_at, k.bundle_version, k.krl_version, k.at
                 FROM hosts h LEFT JOIN host_checkins k ON k.rowid = (
                    SELECT rowid FROM host_checkins WHERE host_key_fp = h.host_key_fp ORDER BY at DESC, rowid DESC LIMIT 1)
                 ORDER BY h.host_name",
            )?;
            let rows = st
                .query_map([], |r| {
                    let host = HostRow {
                        host_key_fp: r.get(0)?,
                        host_name: r.get(1)?,
                        host_key: r.get(2)?,
                        enrolled_at: r.get(3)?,
                    };
                    let at: Option<i64> = r.get(6)?;
                    let checkin = match at {
                        Some(at) => Some(CheckinRow {
                            host_key_fp: host.host_key_fp.clone(),
                            bundle_version: r.get(4)?,
                            krl_version: r.get(5)?,
                            at,
                        }),
                        None => None,
                    };
                    Ok((host, checkin))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }

    fn elevations_since(&self, since: i64) -> Result<Vec<(ElevationRow, Vec<DecisionRow>)>> {
        self.read(|c| {
            let mut st = c.prepare(&format!("SELECT {ELEVATION_COLUMNS} FROM elevations WHERE created_at >= ?1 ORDER BY created_at, id"))?;
            let rows = st.query_map([since], elevation_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
            rows.into_iter()
                .map(|r| {
                    let d = read_decisions(c, &r.id)?;
                    Ok((r, d))
                })
                .collect()
        })
    }

    fn record(&self, event: &AuditEvent) -> Result<AuditRecord> {
        self.write(|tx| append(tx, event))
    }

    fn audit_head(&self) -> Result<Option<AuditRecord>> {
        self.read(|c| {
            Ok(c.query_row(
                "SELECT seq, time_ms, actor, action, subject, details, prev_hash, hash FROM audit_log ORDER BY seq DESC LIMIT 1",
                [],
                audit_row,
            )
            .optional()?)
        })
    }

    fn audit_records(&self, since_seq: u64, limit: u64) -> Result<Vec<AuditRecord>> {
        self.read(|c| {
            let mut st = c.prepare(
                "SELECT seq, time_ms, actor, action, subject, details, prev_hash, hash FROM audit_log WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )?;
            let rows = st.query_map(params![since_seq, limit.min(i64::MAX as u64)], audit_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }

    fn add_checkpoint(&self, cp: &Checkpoint) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "INSERT OR IGNORE INTO audit_checkpoints (seq, head_hash, time_ms, ca_key, signature) VALUES (?1,?2,?3,?4,?5)",
                params![cp.seq, cp.head_hash, cp.time_ms, cp.ca_key, cp.signature],
            )?;
            Ok(())
        })
    }

    fn checkpoints(&self) -> Result<Vec<Checkpoint>> {
        self.read(|c| {
            let mut st = c.prepare("SELECT seq, head_hash, time_ms, ca_key, signature FROM audit_checkpoints ORDER BY seq")?;
            let rows = st
                .query_map([], |r| {
                    Ok(Checkpoint {
                        seq: r.get(0)?,
                        head_hash: r.get(1)?,
                        time_ms: r.get(2)?,
                        ca_key: r.get(3)?,
                        signature: r.get(4)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }

    fn create_session(&self, s: &SessionRow, event: &AuditEvent) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO sessions (id, user, issuer, subject, groups, roles, principals, auth_time, method, created_at, expires_at, revoked_at)
                 VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,NULL)",
                params![
                    s.id,
                    s.user,
                    s.issuer,
                    s.subject,
                    to_json(&s.groups),
                    to_json(&s.roles),
                    to_json(&s.principals),
                    s.auth_time,
                    s.method,
                    s.created_at,
                    s.expires_at
                ],
            )?;
            append(tx, event)?;
            Ok(())
        })
    }

    fn session(&self, id: &str) -> Result<Option<SessionRow>> {
        self.read(|c| {
            Ok(c.query_row(
                "SELECT id, user, issuer, subject, groups, roles, principals, auth_time, method, created_at, expires_at, revoked_at FROM sessions WHERE id = ?1",
                [id],
                session_row,
            )
            .optional()?)
        })
    }

    fn revoke_session(&self, id: &str, now: i64, event: &AuditEvent) -> Result<bool> {
        self.write(|tx| {
            let n = tx.execute(
                "UPDATE sessions SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                params![id, now],
            )?;
            if n == 1 {
                append(tx, event)?;
            }
            Ok(n == 1)
        })
    }

    fn create_pending_login(&self, l: &PendingLogin, event: &AuditEvent) -> Result<()> {
        self.write(|tx| {
            tx.execute("DELETE FROM pending_logins WHERE expires_at < ?1", [l.created_at])?;
            tx.execute(
                "INSERT INTO pending_logins (state, secret_sha256, redirect_uri, nonce, pkce_verifier, created_at, expires_at, reauth) VALUES (?1,?2,?3,?4,?5,?6,?7,?8)",
                params![l.state, l.secret_sha256, l.redirect_uri, l.nonce, l.pkce_verifier, l.created_at, l.expires_at, l.reauth],
            )?;
            append(tx, event)?;
            Ok(())
        })
    }

    fn take_pending_login(&self, state: &str, event: &AuditEvent) -> Result<Option<PendingLogin>> {
        self.write(|tx| {
            let row = tx
                .query_row(
                    "SELECT state, secret_sha256, redirect_uri, nonce, pkce_verifier, created_at, expires_at, reauth FROM pending_logins WHERE state = ?1",
                    [state],
                    |r| {
                        Ok(PendingLogin {
                            state: r.get(0)?,
                            secret_sha256: r.get(1)?,
                            redirect_uri: r.get(2)?,
                            nonce: r.get(3)?,
                            pkce_verifier: r.get(4)?,
                            created_at: r.get(5)?,
                            expires_at: r.get(6)?,
                            reauth: r.get(7)?,
                        })
                    },
                )
                .optional()?;
            if row.is_some() {
                tx.execute("DELETE FROM pending_logins WHERE state = ?1", [state])?;
                append(tx, event)?;
            }
            Ok(row)
        })
    }
}
