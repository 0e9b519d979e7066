//! API tokens: `tug_<id>_<secret>`. The id is public (it names the token in listings and the
//! audit log); the store keeps only the SHA-256 of the whole token, and a presented token is
//! compared with it in constant time. The secret is 256 random bits, so a fast hash is enough: no
//! one guesses it, and a leaked database does not hand it out.

use jiff::Timestamp;
use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};
use subtle::ConstantTimeEq;
use tug_core::access::{Role, Scope};
use tug_store::TokenRecord;

/// Random bytes in a token's id.
const ID_BYTES: usize = 6;
/// Random bytes in a token's secret.
const SECRET_BYTES: usize = 32;

/// A token just made: its record for the store and the token itself, shown once.
#[derive(Debug, Clone)]
pub struct Minted {
    /// What the store keeps.
    pub record: TokenRecord,
    /// The whole token (`tug_<id>_<secret>`), for the client; never stored.
    pub token: String,
}

/// Makes a new token.
pub fn mint(name: &str, role: Role, scope: Option<Scope>, now: Timestamp, expires_at: Option<Timestamp>) -> Minted {
    let id = hex(&random::<ID_BYTES>());
    let token = format!("tug_{id}_{}", hex(&random::<SECRET_BYTES>()));
    let record = TokenRecord {
        id,
        name: name.to_owned(),
        role,
        scope,
        hash: hash(&token),
        created_at: now,
        expires_at,
        revoked_at: None,
    };
    Minted { record, token }
}

/// The id a token claims, if it has the shape of one.
pub fn id_of(token: &str) -> Option<&str> {
    let rest = token.strip_prefix("tug_")?;
    let (id, secret) = rest.split_once('_')?;
    (id.len() == 2 * ID_BYTES && secret.len() == 2 * SECRET_BYTES).then_some(id)
}

/// True when `token` is the one `record` was made for. Constant time in the token's content.
pub fn matches(record: &TokenRecord, token: &str) -> bool {
    bool::from(hash(token).as_bytes().ct_eq(record.hash.as_bytes()))
}

/// Hex SHA-256.
fn hash(token: &str) -> String {
    hex(digest::digest(&digest::SHA256, token.as_bytes()).as_ref())
}

/// Compares two secrets (basic-auth passwords) in constant time in their content.
pub fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (digest::digest(&digest::SHA256, a.as_bytes()), digest::digest(&digest::SHA256, b.as_bytes()));
    bool::from(a.as_ref().ct_eq(b.as_ref()))
}

/// 256 random bits in hex: a secret shared by a server group's members.
pub fn new_secret() -> String {
    hex(&random::<32>())
}

fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    SystemRandom::new().fill(&mut bytes).expect("the system's random number generator failed");
    bytes
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minted_token_matches_only_itself() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let m = mint("ci", Role::Read, None, now, None);
        assert_eq!(id_of(&m.token), Some(m.record.id.as_str()));
        assert!(matches(&m.record, &m.token));
        assert!(!m.record.hash.contains(&m.token[17..]), "the secret is not stored");
        let other = mint("ci", Role::Read, None, now, None);
        assert_ne!(m.record.id, other.record.id);
        assert!(!matches(&m.record, &other.token));
        let forged = format!("tug_{}_{}", m.record.id, "0".repeat(64));
        assert!(!matches(&m.record, &forged));
        assert_eq!(id_of("tug_abc_def"), None);
        assert_eq!(id_of("Bearer x"), None);
        assert!(same_secret("pw", "pw") && !same_secret("pw", "pW"));
    }
}
