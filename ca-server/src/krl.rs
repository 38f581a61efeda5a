//! OpenSSH key revocation lists (KRLs) in the binary format of OpenSSH's `PROTOCOL.krl`,
//! the file sshd reads for `RevokedKeys` (parsed by OpenSSH's `krl.c`). Pure: values in,
//! bytes out; no I/O and no clock (the generation time comes in as a value).
//!
//! The encoding is canonical: the bytes depend only on the header and on the *set* of
//! revocations, never on the order or repetition of the input (CA sections are merged per
//! CA key and sorted by key blob; serials, key IDs, keys and hashes are sorted and
//! deduplicated). Hosts compare KRLs, and the detached SSHSIG signature made elsewhere covers
//! exactly these bytes.
//!
//! Never written: signature sections (PROTOCOL.krl §6; OpenSSH ≥ 9.4 refuses KRLs that
//! have one, pedm-ssh signs with SSHSIG instead), extension sections (§5; OpenSSH 9.2 refuses
//! every KRL that has one), SHA-1 fingerprints (§4) and serial bitmaps (§2.3).
//!
//! Everything that would make OpenSSH refuse the *whole* file is refused here at
//! construction, because sshd fails closed on a KRL it cannot parse: it then refuses every
//! public key and certificate, locking everyone out of the host.

use ssh_encoding::Encode;
use ssh_key::public::KeyData;
use ssh_key::Fingerprint;
use std::collections::{BTreeMap, BTreeSet};

/// `KRL_MAGIC` (PROTOCOL.krl §1): the first 8 bytes of every KRL.
pub const MAGIC: &[u8; 8] = b"SSHKRL\n\0";
/// `KRL_FORMAT_VERSION` (PROTOCOL.krl §1), the only one OpenSSH knows.
pub const FORMAT_VERSION: u32 = 1;

/// Section types (PROTOCOL.krl §1).
const SECTION_CERTIFICATES: u8 = 1;
const SECTION_EXPLICIT_KEY: u8 = 2;
const SECTION_FINGERPRINT_SHA1: u8 = 3;
const SECTION_FINGERPRINT_SHA256: u8 = 5;

/// Certificate sub-section types (PROTOCOL.krl §2).
const CERT_SERIAL_LIST: u8 = 0x20;
const CERT_SERIAL_RANGE: u8 = 0x21;
const CERT_KEY_ID: u8 = 0x23;

/// Shortest run of consecutive serials written as a `KRL_SECTION_CERT_SERIAL_RANGE`
/// (PROTOCOL.krl §2.2) instead of entries of the serial list (§2.1). A range sub-section
/// costs 21 bytes (type, length, two uint64), a list entry 8: from 3 serials on the range
/// is smaller.
pub const MIN_RANGE_RUN: u64 = 3;

/// Why a KRL cannot be built, encoded or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KrlError {
    #[error(
        "serial 0 cannot be revoked by serial: OpenSSH never checks serial 0 against a KRL, \
         and refuses a whole KRL that lists it (revoke such certificates by key ID)"
    )]
    SerialZero,
    #[error("an empty key ID cannot be revoked")]
    EmptyKeyId,
    #[error("key ID {0} contains a NUL byte, which makes OpenSSH refuse the whole KRL")]
    NulInKeyId(String),
    #[error("the KRL comment contains a NUL byte, which makes OpenSSH refuse the whole KRL")]
    NulInComment,
    #[error("only SHA-256 fingerprints can be revoked in a KRL, not {0}")]
    NotSha256(String),
    #[error("cannot encode the KRL: {0}")]
    Encoding(String),
    #[error("not a KRL: the data does not start with \"SSHKRL\\n\\0\"")]
    BadMagic,
    #[error("KRL format version {0} is not supported (only 1 exists)")]
    UnsupportedFormat(u32),
    #[error("the KRL is truncated: it ends inside its {0}")]
    Truncated(&'static str),
    #[error("the KRL comment is not UTF-8")]
    CommentNotUtf8,
    #[error("KRL section type {0} is not one that pedm-ssh writes and OpenSSH 9.2 reads")]
    UnsupportedSection(u8),
}

impl From<ssh_encoding::Error> for KrlError {
    fn from(e: ssh_encoding::Error) -> Self {
        KrlError::Encoding(e.to_string())
    }
}

/// Certificates of one CA revoked by serial and by key ID: one `KRL_SECTION_CERTIFICATES`
/// (PROTOCOL.krl §2). Invariants, checked by [`CaSection::new`]: no serial is 0, no key ID is
/// empty or contains NUL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaSection {
    ca_key: Option<KeyData>,
    serials: BTreeSet<u64>,
    key_ids: BTreeSet<String>,
}

impl CaSection {
    /// Revocations for certificates signed by `ca_key`, or by any CA if `ca_key` is `None`
    /// (the "wildcard" CA of PROTOCOL.krl §2: an empty `ca_key` string; most useful for key
    /// IDs, since serials are only unique per CA).
    ///
    /// Refuses serial 0: OpenSSH's `krl.c` skips the serial check for serial-0 certificates
    /// (it is the default when a CA sets none) and refuses to load a KRL listing serial 0.
    /// Refuses empty key IDs and key IDs containing NUL (OpenSSH reads them as C strings).
    pub fn new<I, S>(
        ca_key: Option<KeyData>,
        serials: impl IntoIterator<Item = u64>,
        key_ids: I,
    ) -> Result<Self, KrlError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let serials: BTreeSet<u64> = serials.into_iter().collect();
        if serials.contains(&0) {
            return Err(KrlError::SerialZero);
        }
        let mut ids = BTreeSet::new();
        for id in key_ids {
            let id: String = id.into();
            if id.is_empty() {
                return Err(KrlError::EmptyKeyId);
            }
            if id.contains('\0') {
                return Err(KrlError::NulInKeyId(crate::names::escaped(&id)));
            }
            ids.insert(id);
        }
        Ok(CaSection {
            ca_key,
            serials,
            key_ids: ids,
        })
    }

    /// The CA whose certificates this section revokes; `None` for every CA.
    pub fn ca_key(&self) -> Option<&KeyData> {
        self.ca_key.as_ref()
    }

    pub fn serials(&self) -> &BTreeSet<u64> {
        &self.serials
    }

    pub fn key_ids(&self) -> &BTreeSet<String> {
        &self.key_ids
    }

    /// A section that revokes nothing; [`Krl::encode`] writes no section for it.
    pub fn is_empty(&self) -> bool {
        self.serials.is_empty() && self.key_ids.is_empty()
    }
}

/// A whole KRL: the header of PROTOCOL.krl §1 and the revocations. Build it with
/// [`Krl::new`] and the `with_*` methods; [`Krl::encode`] gives the file's bytes.
///
/// Invariant: the comment has no NUL byte (OpenSSH reads it as a C string and refuses the
/// whole KRL otherwise); the [`CaSection`]s keep their own invariants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Krl {
    version: u64,
    generated_at: u64,
    comment: String,
    certificates: Vec<CaSection>,
    explicit_keys: Vec<KeyData>,
    sha256_fingerprints: Vec<[u8; 32]>,
}

impl Krl {
    /// An empty KRL, which revokes nothing: `krl_version` (meant to grow with every change;
    /// hosts refuse to go back), `generated_date` in Unix seconds, and a free-form comment.
    pub fn new(
        version: u64,
        generated_at: u64,
        comment: impl Into<String>,
    ) -> Result<Self, KrlError> {
        let comment = comment.into();
        if comment.contains('\0') {
            return Err(KrlError::NulInComment);
        }
        Ok(Krl {
            version,
            generated_at,
            comment,
            certificates: Vec::new(),
            explicit_keys: Vec::new(),
            sha256_fingerprints: Vec::new(),
        })
    }

    /// Adds certificate revocations. Sections for the same CA key (or several wildcard
    /// sections) are merged when encoding.
    pub fn with_certificates(mut self, section: CaSection) -> Self {
        self.certificates.push(section);
        self
    }

    /// Revokes a plain public key (`KRL_SECTION_EXPLICIT_KEY`, PROTOCOL.krl §3). OpenSSH
    /// then refuses the key itself, every certificate for it, and — if it is a CA key —
    /// every certificate that key signed.
    pub fn with_explicit_key(mut self, key: KeyData) -> Self {
        self.explicit_keys.push(key);
        self
    }

    /// Revokes a key by the SHA-256 hash of its public key blob
    /// (`KRL_SECTION_FINGERPRINT_SHA256`, PROTOCOL.krl §4) — the bytes behind an OpenSSH
    /// `SHA256:…` fingerprint. As with [`Krl::with_explicit_key`], certificates for the key
    /// (OpenSSH hashes their plain key) and certificates signed by it are refused too.
    pub fn with_sha256_fingerprint(mut self, hash: [u8; 32]) -> Self {
        self.sha256_fingerprints.push(hash);
        self
    }

    /// [`Krl::with_sha256_fingerprint`] from a parsed fingerprint (for example
    /// `"SHA256:…".parse()`); refuses any other hash, which a KRL cannot hold.
    pub fn with_fingerprint(self, fingerprint: &Fingerprint) -> Result<Self, KrlError> {
        match fingerprint.sha256() {
            Some(hash) => Ok(self.with_sha256_fingerprint(hash)),
            None => Err(KrlError::NotSha256(fingerprint.algorithm().to_string())),
        }
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn generated_at(&self) -> u64 {
        self.generated_at
    }

    pub fn comment(&self) -> &str {
        &self.comment
    }

    pub fn certificates(&self) -> &[CaSection] {
        &self.certificates
    }

    pub fn explicit_keys(&self) -> &[KeyData] {
        &self.explicit_keys
    }

    pub fn sha256_fingerprints(&self) -> &[[u8; 32]] {
        &self.sha256_fingerprints
    }

    /// The KRL file's bytes (PROTOCOL.krl): the header (§1) with flags 0 and an empty
    /// reserved string, then one `KRL_SECTION_CERTIFICATES` per CA with revocations, in
    /// ascending order of CA key blob (the wildcard CA, an empty blob, first), then at most one
    /// `KRL_SECTION_EXPLICIT_KEY` and one `KRL_SECTION_FINGERPRINT_SHA256`, each with its
    /// entries in ascending byte order (§4 requires numeric order for hashes).
    ///
    /// In a certificate section (§2): the CA key blob, an empty reserved string, then at most
    /// one `KRL_SECTION_CERT_SERIAL_LIST` with the serials outside runs of
    /// [`MIN_RANGE_RUN`] or more, one `KRL_SECTION_CERT_SERIAL_RANGE` per such run in
    /// ascending order, and at most one `KRL_SECTION_CERT_KEY_ID` with the key IDs in byte
    /// order. The only error is a part longer than 4 GiB.
    pub fn encode(&self) -> Result<Vec<u8>, KrlError> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        FORMAT_VERSION.encode(&mut out)?;
        self.version.encode(&mut out)?;
        self.generated_at.encode(&mut out)?;
        0u64.encode(&mut out)?; // flags: none are defined
        [0u8; 0].encode(&mut out)?; // reserved
        self.comment.encode(&mut out)?;

        // Merge per CA key blob; the wildcard CA is the empty blob, which no key has.
        let mut cas: BTreeMap<Vec<u8>, (BTreeSet<u64>, BTreeSet<&str>)> = BTreeMap::new();
        for section in &self.certificates {
            let blob = match &section.ca_key {
                Some(key) => key_blob(key)?,
                None => Vec::new(),
            };
            let entry = cas.entry(blob).or_default();
            entry.0.extend(section.serials.iter().copied());
            entry.1.extend(section.key_ids.iter().map(String::as_str));
        }
        for (blob, (serials, key_ids)) in &cas {
            if serials.is_empty() && key_ids.is_empty() {
                continue;
            }
            let mut body = Vec::new();
            blob.encode(&mut body)?;
            [0u8; 0].encode(&mut body)?; // reserved
            encode_serials(serials, &mut body)?;
            if !key_ids.is_empty() {
                let mut ids = Vec::new();
                for id in key_ids {
                    id.encode(&mut ids)?;
                }
                put_section(&mut body, CERT_KEY_ID, &ids)?;
            }
            put_section(&mut out, SECTION_CERTIFICATES, &body)?;
        }

        let keys = self
            .explicit_keys
            .iter()
            .map(key_blob)
            .collect::<Result<BTreeSet<Vec<u8>>, KrlError>>()?;
        if !keys.is_empty() {
            let mut body = Vec::new();
            for blob in &keys {
                blob.encode(&mut body)?;
            }
            put_section(&mut out, SECTION_EXPLICIT_KEY, &body)?;
        }

        let hashes: BTreeSet<&[u8; 32]> = self.sha256_fingerprints.iter().collect();
        if !hashes.is_empty() {
            let mut body = Vec::new();
            for hash in hashes {
                hash.encode(&mut body)?;
            }
            put_section(&mut out, SECTION_FINGERPRINT_SHA256, &body)?;
        }
        Ok(out)
    }
}

/// The standard SSH wire serialisation of a public key, as PROTOCOL.krl uses it for CA keys
/// and explicit keys.
fn key_blob(key: &KeyData) -> Result<Vec<u8>, KrlError> {
    let mut blob = Vec::new();
    key.encode(&mut blob)?;
    Ok(blob)
}

/// `byte type, string body`: the framing of sections (PROTOCOL.krl §1) and of certificate
/// sub-sections (§2).
fn put_section(out: &mut Vec<u8>, section_type: u8, body: &[u8]) -> Result<(), KrlError> {
    section_type.encode(out)?;
    body.encode(out)?;
    Ok(())
}

/// Consecutive serials as `(first, last)` runs, ascending.
fn serial_runs(serials: &BTreeSet<u64>) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for &serial in serials {
        match runs.last_mut() {
            Some((_, last)) if last.checked_add(1) == Some(serial) => *last = serial,
            _ => runs.push((serial, serial)),
        }
    }
    runs
}

/// The serial sub-sections of a certificate section: one list of the short runs' serials,
/// then one range per long run.
fn encode_serials(serials: &BTreeSet<u64>, body: &mut Vec<u8>) -> Result<(), KrlError> {
    let runs = serial_runs(serials);
    let is_range = |&(first, last): &(u64, u64)| last - first >= MIN_RANGE_RUN - 1;
    let mut list = Vec::new();
    for &(first, last) in runs.iter().filter(|r| !is_range(r)) {
        for serial in first..=last {
            serial.encode(&mut list)?;
        }
    }
    if !list.is_empty() {
        put_section(body, CERT_SERIAL_LIST, &list)?;
    }
    for &(first, last) in runs.iter().filter(|r| is_range(r)) {
        let mut range = Vec::new();
        first.encode(&mut range)?;
        last.encode(&mut range)?;
        put_section(body, CERT_SERIAL_RANGE, &range)?;
    }
    Ok(())
}

/// A section's type as [`decode_summary`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SectionKind {
    Certificates,
    ExplicitKey,
    FingerprintSha1,
    FingerprintSha256,
}

/// What [`decode_summary`] reads from a KRL: its header and the type of each section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub version: u64,
    pub generated_at: u64,
    pub comment: String,
    pub sections: Vec<SectionKind>,
}

/// Reads a KRL's header (PROTOCOL.krl §1) and the framing of its sections, so a host can
/// check the version before installing a KRL. Refuses a wrong magic, another format version,
/// data that ends inside a field or section, a comment that is not UTF-8 or contains NUL,
/// and every section type but certificates, explicit keys and SHA-1/SHA-256 fingerprints:
/// signature sections (OpenSSH ≥ 9.4 refuses them), extension sections (OpenSSH 9.2 refuses
/// them) and unknown types (every OpenSSH refuses them).
///
/// It does not look inside sections: `ssh-keygen -Q -f KRL` is the full check. Nor can it
/// notice a KRL cut exactly at a section boundary, which is itself a valid KRL (the format
/// has no overall length): the detached signature is what protects against that.
pub fn decode_summary(bytes: &[u8]) -> Result<Summary, KrlError> {
    if bytes.len() < MAGIC.len() || bytes[..MAGIC.len()] != MAGIC[..] {
        return Err(KrlError::BadMagic);
    }
    let mut r = Cursor::new(&bytes[MAGIC.len()..]);
    let format = r.u32("format version")?;
    if format != FORMAT_VERSION {
        return Err(KrlError::UnsupportedFormat(format));
    }
    let version = r.u64("KRL version")?;
    let generated_at = r.u64("generation date")?;
    let _flags = r.u64("flags")?; // none are defined; OpenSSH ignores them
    r.string("reserved field")?;
    let comment = r.string("comment")?;
    if comment.contains(&0) {
        return Err(KrlError::NulInComment);
    }
    let comment = String::from_utf8(comment.to_vec()).map_err(|_| KrlError::CommentNotUtf8)?;
    let mut sections = Vec::new();
    while !r.is_empty() {
        let kind = match r.u8("section type")? {
            SECTION_CERTIFICATES => SectionKind::Certificates,
            SECTION_EXPLICIT_KEY => SectionKind::ExplicitKey,
            SECTION_FINGERPRINT_SHA1 => SectionKind::FingerprintSha1,
            SECTION_FINGERPRINT_SHA256 => SectionKind::FingerprintSha256,
            other => return Err(KrlError::UnsupportedSection(other)),
        };
        r.string("section")?;
        sections.push(kind);
    }
    Ok(Summary {
        version,
        generated_at,
        comment,
        sections,
    })
}

/// A bounds-checked reader of SSH wire data. (`ssh-encoding`'s decoder caps strings at
/// 1 MiB, less than a large serial list section may need.)
struct Cursor<'a> {
    data: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn new(data: &'a [u8]) -> Self {
        Cursor { data }
    }

    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], KrlError> {
        if self.data.len() < n {
            return Err(KrlError::Truncated(what));
        }
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, KrlError> {
        Ok(self.take(1, what)?[0])
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, KrlError> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4, what)?);
        Ok(u32::from_be_bytes(b))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, KrlError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8, what)?);
        Ok(u64::from_be_bytes(b))
    }

    /// `string`: uint32 length, then that many bytes.
    fn string(&mut self, what: &'static str) -> Result<&'a [u8], KrlError> {
        let len = self.u32(what)?;
        let len = usize::try_from(len).map_err(|_| KrlError::Truncated(what))?;
        self.take(len, what)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};
    use ssh_key::rand_core::OsRng;
    use ssh_key::{Algorithm, HashAlg, PrivateKey};

    fn ed25519() -> KeyData {
        PrivateKey::random(&mut OsRng, Algorithm::Ed25519)
            .unwrap()
            .public_key()
            .key_data()
            .clone()
    }

    /// Fixed ECDSA P-256 keys (this build of ssh-key cannot generate them): blobs of another
    /// algorithm and length than Ed25519's, so sorting across key types is exercised.
    const P256: [&str; 2] = [
        "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBAiXxb04w42Gu3c5avt+RPFc1ow0UWHH8DvCKd2h3IjrwKitZctA00BXRxFf7GejSVmHCTYjaGmMSwAfpQC3oe0=",
        "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBPvBFRU8XO6YGmvtKNw1v7oPu6oYZ7Nn61Ove44sgjIwqf1j4tWaSBkYevVr0ex+JantkuH1DxZfXzJgji4pR+g=",
    ];

    fn p256(i: usize) -> KeyData {
        ssh_key::PublicKey::from_openssh(P256[i])
            .unwrap()
            .key_data()
            .clone()
    }

    /// `(type, body)` of each section after a header.
    fn sections(mut c: Cursor<'_>) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        while !c.is_empty() {
            let t = c.u8("type").unwrap();
            out.push((t, c.string("body").unwrap().to_vec()));
        }
        out
    }

    /// Skips the header of an encoded KRL.
    fn after_header(bytes: &[u8]) -> Cursor<'_> {
        let mut c = Cursor::new(&bytes[8..]);
        c.u32("").unwrap();
        c.u64("").unwrap();
        c.u64("").unwrap();
        c.u64("").unwrap();
        c.string("").unwrap();
        c.string("").unwrap();
        c
    }

    /// The CA blob and the `(type, body)` sub-sections of a certificate section's body.
    fn cert_section(body: &[u8]) -> (Vec<u8>, Vec<(u8, Vec<u8>)>) {
        let mut c = Cursor::new(body);
        let ca = c.string("ca").unwrap().to_vec();
        assert_eq!(c.string("reserved").unwrap(), b"");
        (ca, sections(c))
    }

    fn u64s(serials: &[u64]) -> Vec<u8> {
        serials.iter().flat_map(|s| s.to_be_bytes()).collect()
    }

    fn strings(items: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for i in items {
            out.extend_from_slice(&(i.len() as u32).to_be_bytes());
            out.extend_from_slice(i);
        }
        out
    }

    #[test]
    fn header_fields_sit_at_the_offsets_of_protocol_krl() {
        let bytes = Krl::new(0x0102_0304_0506_0708, 0x1112_1314_1516_1718, "hi")
            .unwrap()
            .encode()
            .unwrap();
        assert_eq!(&bytes[0..8], b"SSHKRL\n\0");
        assert_eq!(&bytes[0..8], &0x5353_484b_524c_0a00u64.to_be_bytes()); // KRL_MAGIC
        assert_eq!(&bytes[8..12], &[0, 0, 0, 1]); // format version
        assert_eq!(&bytes[12..20], &[1, 2, 3, 4, 5, 6, 7, 8]); // krl_version
        assert_eq!(
            &bytes[20..28],
            &[0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18]
        ); // date
        assert_eq!(&bytes[28..36], &[0; 8]); // flags
        assert_eq!(&bytes[36..40], &[0; 4]); // reserved: empty string
        assert_eq!(&bytes[40..44], &[0, 0, 0, 2]); // comment length
        assert_eq!(&bytes[44..46], b"hi");
        assert_eq!(bytes.len(), 46, "an empty KRL is the header alone");
    }

    #[test]
    fn empty_comment_and_empty_sections_give_the_bare_header() {
        let empty = Krl::new(1, 2, "").unwrap().encode().unwrap();
        assert_eq!(empty.len(), 44);
        assert_eq!(&empty[40..44], &[0; 4]);
        let with_empty_sections = Krl::new(1, 2, "")
            .unwrap()
            .with_certificates(CaSection::new(Some(ed25519()), [], Vec::<String>::new()).unwrap())
            .with_certificates(CaSection::new(None, [], Vec::<String>::new()).unwrap())
            .encode()
            .unwrap();
        assert_eq!(with_empty_sections, empty);
    }

    #[test]
    fn certificate_section_holds_ca_blob_reserved_and_sub_sections() {
        let ca = ed25519();
        let bytes = Krl::new(1, 2, "")
            .unwrap()
            .with_certificates(CaSection::new(Some(ca.clone()), [7], ["alice", "bob"]).unwrap())
            .encode()
            .unwrap();
        let secs = sections(after_header(&bytes));
        assert_eq!(secs.len(), 1);
        assert_eq!(secs[0].0, 1);
        // The section body starts with the CA's wire blob as a string.
        let blob = key_blob(&ca).unwrap();
        assert_eq!(&blob[..15], b"\0\0\0\x0bssh-ed25519");
        let (ca_blob, subs) = cert_section(&secs[0].1);
        assert_eq!(ca_blob, blob);
        assert_eq!(
            subs,
            vec![(0x20, u64s(&[7])), (0x23, strings(&[b"alice", b"bob"])),]
        );
    }

    #[test]
    fn runs_of_three_or_more_serials_become_ranges() {
        let ca = ed25519();
        let serials = [1, 2, 3, 4, 5, 9, 20, 21, 22];
        let bytes = Krl::new(1, 2, "")
            .unwrap()
            .with_certificates(CaSection::new(Some(ca), serials, Vec::<String>::new()).unwrap())
            .encode()
            .unwrap();
        let secs = sections(after_header(&bytes));
        let (_, subs) = cert_section(&secs[0].1);
        assert_eq!(
            subs,
            vec![
                (0x20, u64s(&[9])),
                (0x21, u64s(&[1, 5])),
                (0x21, u64s(&[20, 22])),
            ]
        );
    }

    #[test]
    fn pairs_stay_in_the_list_and_runs_reach_u64_max() {
        let ca = ed25519();
        let serials = [7, 8, 30, u64::MAX - 2, u64::MAX - 1, u64::MAX];
        let bytes = Krl::new(1, 2, "")
            .unwrap()
            .with_certificates(CaSection::new(Some(ca), serials, Vec::<String>::new()).unwrap())
            .encode()
            .unwrap();
        let (_, subs) = cert_section(&sections(after_header(&bytes))[0].1);
        assert_eq!(
            subs,
            vec![
                (0x20, u64s(&[7, 8, 30])),
                (0x21, u64s(&[u64::MAX - 2, u64::MAX])),
            ]
        );
    }

    #[test]
    fn serial_runs_split_at_gaps() {
        let set: BTreeSet<u64> = [1, 2, 4, 5, 6, 8].into_iter().collect();
        assert_eq!(serial_runs(&set), vec![(1, 2), (4, 6), (8, 8)]);
        assert_eq!(serial_runs(&BTreeSet::new()), vec![]);
    }

    #[test]
    fn same_revocations_in_any_order_give_the_same_bytes() {
        let (ca1, ca2) = (ed25519(), p256(0));
        let (k1, k2, k3) = (ed25519(), p256(1), ed25519());
        let fp = |k: &KeyData| k.fingerprint(HashAlg::Sha256).sha256().unwrap();
        let a = Krl::new(9, 1_700_000_000, "c")
            .unwrap()
            .with_certificates(CaSection::new(Some(ca1.clone()), [5, 1, 3], ["x", "a"]).unwrap())
            .with_certificates(CaSection::new(None, [], ["w"]).unwrap())
            .with_certificates(CaSection::new(Some(ca2.clone()), [2], ["b"]).unwrap())
            .with_explicit_key(k1.clone())
            .with_explicit_key(k2.clone())
            .with_sha256_fingerprint(fp(&k3))
            .with_sha256_fingerprint(fp(&k1));
        // Permuted, repeated and split across several sections for the same CA.
        let b = Krl::new(9, 1_700_000_000, "c")
            .unwrap()
            .with_sha256_fingerprint(fp(&k1))
            .with_explicit_key(k2.clone())
            .with_certificates(CaSection::new(Some(ca2), [2, 2], ["b"]).unwrap())
            .with_certificates(CaSection::new(Some(ca1.clone()), [3], ["a"]).unwrap())
            .with_explicit_key(k1.clone())
            .with_certificates(CaSection::new(None, [], ["w"]).unwrap())
            .with_sha256_fingerprint(fp(&k3))
            .with_certificates(CaSection::new(Some(ca1), [1, 5], ["x", "a"]).unwrap())
            .with_explicit_key(k1)
            .with_sha256_fingerprint(fp(&k3));
        let (ea, eb) = (a.encode().unwrap(), b.encode().unwrap());
        assert_eq!(ea, eb);
        assert_eq!(
            ea,
            a.encode().unwrap(),
            "encoding twice gives the same bytes"
        );
        let kinds = decode_summary(&ea).unwrap().sections;
        use SectionKind::*;
        assert_eq!(
            kinds,
            vec![
                Certificates,
                Certificates,
                Certificates,
                ExplicitKey,
                FingerprintSha256
            ]
        );
    }

    #[test]
    fn sections_and_entries_are_sorted_by_blob() {
        let cas: Vec<KeyData> = (0..4)
            .map(|i| if i % 2 == 0 { ed25519() } else { p256(i / 2) })
            .collect();
        let mut krl = Krl::new(1, 2, "").unwrap();
        for ca in &cas {
            krl = krl.with_certificates(CaSection::new(Some(ca.clone()), [1], ["i"]).unwrap());
            krl = krl.with_explicit_key(ca.clone());
        }
        let krl = krl.with_certificates(CaSection::new(None, [], ["any"]).unwrap());
        let hashes: Vec<[u8; 32]> = (0u8..5).map(|i| Sha256::digest([i]).into()).collect();
        let krl = hashes
            .iter()
            .fold(krl, |k, h| k.with_sha256_fingerprint(*h));
        let bytes = krl.encode().unwrap();
        let secs = sections(after_header(&bytes));
        assert_eq!(secs.len(), 4 + 1 + 2);
        let ca_blobs: Vec<Vec<u8>> = secs[..5].iter().map(|s| cert_section(&s.1).0).collect();
        let mut expected: Vec<Vec<u8>> = cas.iter().map(|k| key_blob(k).unwrap()).collect();
        expected.push(Vec::new()); // wildcard
        expected.sort();
        assert_eq!(ca_blobs, expected);
        assert!(ca_blobs[0].is_empty(), "the wildcard CA comes first");

        assert_eq!(secs[5].0, 2);
        let explicit: Vec<&[u8]> = expected[1..].iter().map(Vec::as_slice).collect();
        assert_eq!(secs[5].1, strings(&explicit));

        assert_eq!(secs[6].0, 5);
        let mut sorted = hashes.clone();
        sorted.sort();
        let sorted: Vec<&[u8]> = sorted.iter().map(|h| h.as_slice()).collect();
        assert_eq!(secs[6].1, strings(&sorted));
    }

    #[test]
    fn wildcard_ca_is_an_empty_key_string() {
        let bytes = Krl::new(1, 2, "")
            .unwrap()
            .with_certificates(CaSection::new(None, [], ["alice"]).unwrap())
            .encode()
            .unwrap();
        let secs = sections(after_header(&bytes));
        assert_eq!(secs[0].0, 1);
        assert_eq!(&secs[0].1[..8], &[0; 8], "empty ca_key, empty reserved");
        let (_, subs) = cert_section(&secs[0].1);
        assert_eq!(subs, vec![(0x23, strings(&[b"alice"]))]);
    }

    #[test]
    fn sha256_fingerprint_is_the_hash_of_the_key_blob() {
        let k = p256(0);
        let fp = k.fingerprint(HashAlg::Sha256);
        let hash: [u8; 32] = Sha256::digest(key_blob(&k).unwrap()).into();
        assert_eq!(fp.sha256(), Some(hash));
        let a = Krl::new(1, 2, "")
            .unwrap()
            .with_fingerprint(&fp)
            .unwrap()
            .encode()
            .unwrap();
        let b = Krl::new(1, 2, "")
            .unwrap()
            .with_sha256_fingerprint(hash)
            .encode()
            .unwrap();
        assert_eq!(a, b);
        assert_eq!(sections(after_header(&a)), vec![(5, strings(&[&hash]))]);
        let sha512 = k.fingerprint(HashAlg::Sha512);
        assert_eq!(
            Krl::new(1, 2, "").unwrap().with_fingerprint(&sha512),
            Err(KrlError::NotSha256("sha512".into()))
        );
    }

    #[test]
    fn refuses_what_would_make_openssh_reject_the_whole_krl() {
        let none = Vec::<String>::new;
        assert_eq!(
            CaSection::new(Some(ed25519()), [3, 0, 4], none()),
            Err(KrlError::SerialZero)
        );
        assert_eq!(CaSection::new(None, [0], none()), Err(KrlError::SerialZero));
        assert_eq!(
            CaSection::new(None, [], ["ok", ""]),
            Err(KrlError::EmptyKeyId)
        );
        assert_eq!(
            CaSection::new(None, [], ["a\0b"]),
            Err(KrlError::NulInKeyId("\"a\\0b\"".into()))
        );
        assert_eq!(Krl::new(1, 2, "x\0"), Err(KrlError::NulInComment));
        assert!(CaSection::new(None, [1, u64::MAX], ["id with spaces"]).is_ok());
    }

    #[test]
    fn summary_reads_back_what_encode_wrote() {
        let krl = Krl::new(77, 1_700_000_123, "pedm-ssh KRL ✓")
            .unwrap()
            .with_certificates(CaSection::new(Some(ed25519()), [1, 2, 3], ["a"]).unwrap())
            .with_certificates(CaSection::new(None, [], ["b"]).unwrap())
            .with_explicit_key(ed25519())
            .with_sha256_fingerprint([7; 32]);
        let s = decode_summary(&krl.encode().unwrap()).unwrap();
        assert_eq!(s.version, 77);
        assert_eq!(s.generated_at, 1_700_000_123);
        assert_eq!(s.comment, "pedm-ssh KRL ✓");
        use SectionKind::*;
        assert_eq!(
            s.sections,
            vec![Certificates, Certificates, ExplicitKey, FingerprintSha256]
        );
        let empty = decode_summary(&Krl::new(0, 0, "").unwrap().encode().unwrap()).unwrap();
        assert_eq!(
            empty,
            Summary {
                version: 0,
                generated_at: 0,
                comment: String::new(),
                sections: vec![]
            }
        );
    }

    #[test]
    fn summary_refuses_every_truncation_except_at_section_boundaries() {
        let krl = Krl::new(5, 6, "comment")
            .unwrap()
            .with_certificates(CaSection::new(Some(ed25519()), [4, 9], ["a"]).unwrap())
            .with_explicit_key(p256(1))
            .with_sha256_fingerprint([1; 32]);
        let bytes = krl.encode().unwrap();
        let header_len = 8 + 4 + 8 + 8 + 8 + 4 + 4 + "comment".len();
        let mut boundaries = vec![header_len];
        let mut c = after_header(&bytes);
        while !c.is_empty() {
            c.u8("").unwrap();
            c.string("").unwrap();
            boundaries.push(bytes.len() - c.data.len());
        }
        assert_eq!(boundaries.len(), 4);
        assert_eq!(*boundaries.last().unwrap(), bytes.len());
        for len in 0..bytes.len() {
            match decode_summary(&bytes[..len]) {
                Ok(s) => {
                    let i = boundaries.iter().position(|&b| b == len);
                    assert_eq!(i, Some(s.sections.len()), "prefix of {len} bytes accepted");
                }
                Err(e) if len < 8 => assert_eq!(e, KrlError::BadMagic),
                Err(e) => assert!(matches!(e, KrlError::Truncated(_)), "{len}: {e}"),
            }
        }
    }

    #[test]
    fn summary_refuses_garbage_and_foreign_sections() {
        assert_eq!(decode_summary(b""), Err(KrlError::BadMagic));
        assert_eq!(decode_summary(b"SSHKRL\n"), Err(KrlError::BadMagic));
        assert_eq!(
            decode_summary(b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI"),
            Err(KrlError::BadMagic)
        );
        let good = Krl::new(1, 2, "c").unwrap().encode().unwrap();
        let mut wrong_magic = good.clone();
        wrong_magic[7] = b'\n';
        assert_eq!(decode_summary(&wrong_magic), Err(KrlError::BadMagic));
        let mut v2 = good.clone();
        v2[11] = 2;
        assert_eq!(decode_summary(&v2), Err(KrlError::UnsupportedFormat(2)));
        let mut huge_comment = good.clone();
        huge_comment[40..44].copy_from_slice(&[0xff; 4]);
        assert_eq!(
            decode_summary(&huge_comment),
            Err(KrlError::Truncated("comment"))
        );
        let mut latin1 = good[..40].to_vec();
        latin1.extend_from_slice(&[0, 0, 0, 1, 0xe9]);
        assert_eq!(decode_summary(&latin1), Err(KrlError::CommentNotUtf8));
        let mut nul = good[..40].to_vec();
        nul.extend_from_slice(&[0, 0, 0, 1, 0]);
        assert_eq!(decode_summary(&nul), Err(KrlError::NulInComment));
        for t in [0u8, 4, 6, 0x20, 255] {
            let mut s = good.clone();
            s.extend_from_slice(&[t, 0, 0, 0, 0]);
            assert_eq!(
                decode_summary(&s),
                Err(KrlError::UnsupportedSection(t)),
                "{t}"
            );
        }
        let mut sha1 = good.clone();
        sha1.extend_from_slice(&[3, 0, 0, 0, 0]);
        assert_eq!(
            decode_summary(&sha1).unwrap().sections,
            vec![SectionKind::FingerprintSha1]
        );
        let mut section_too_long = good.clone();
        section_too_long.extend_from_slice(&[1, 0, 0, 0, 9, 1, 2]);
        assert_eq!(
            decode_summary(&section_too_long),
            Err(KrlError::Truncated("section"))
        );
        // Deterministic pseudo-random garbage after a valid magic never panics.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for n in 0..2000usize {
            let mut g = MAGIC.to_vec();
            for _ in 0..(n % 97) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                g.push(x as u8);
            }
            let _ = decode_summary(&g);
        }
    }
}
