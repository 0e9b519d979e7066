//! Claims: an address named after the instance that holds it.
//!
//! ```text
//! identity (job "thumbs", slot 0) ─► claim name "job/thumbs/0"
//!        ─► preferred offset = FNV-1a(name) mod usable ─► first free address from there
//!        ─► MAC 02:74:<the four bytes of the IP>
//! ```
//!
//! The preferred address depends only on the name, so a pool rebuilt from scratch hands the same
//! instances the same addresses as long as they do not collide. Once claimed, the address is kept
//! in the store with the claim and reused wherever the instance runs. The MAC is derived from
//! the IP (locally administered, unicast), so it is unique wherever the IP is.

use std::collections::HashSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::pool::{PoolError, PoolSpec};

/// Who holds an address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    /// A job's warm container on a host slot (slot 0 unless a job keeps several).
    JobSlot {
        /// The job.
        job: String,
        /// The slot.
        slot: u32,
    },
    /// A service replica.
    Replica {
        /// The service.
        service: String,
        /// The replica's index.
        index: u32,
    },
}

impl Identity {
    /// The claim's name: `job/NAME/SLOT` or `service/NAME/INDEX`.
    pub fn claim_name(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::JobSlot { job, slot } => write!(f, "job/{job}/{slot}"),
            Identity::Replica { service, index } => write!(f, "service/{service}/{index}"),
        }
    }
}

/// Why an instance name does not parse as an [`Identity`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// Not three `/`-separated parts with a non-empty name in the middle.
    #[error("invalid instance name {0:?}: write job/NAME/SLOT or service/NAME/INDEX")]
    Shape(String),
    /// The first part is neither `job` nor `service`.
    #[error("invalid instance name {name:?}: {kind:?} is neither job nor service; write job/NAME/SLOT or service/NAME/INDEX")]
    Kind {
        /// The name as given.
        name: String,
        /// Its first part.
        kind: String,
    },
    /// The slot or index is not a whole number.
    #[error("invalid instance name {name:?}: {number:?} is not a slot or index (0 or more); write job/NAME/SLOT or service/NAME/INDEX")]
    Number {
        /// The name as given.
        name: String,
        /// Its last part.
        number: String,
        /// Why it is not a number.
        #[source]
        source: std::num::ParseIntError,
    },
}

impl FromStr for Identity {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Identity, IdentityError> {
        let mut parts = s.split('/');
        let (kind, name, n) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(k), Some(name), Some(n), None) if !name.is_empty() => (k, name.to_owned(), n),
            _ => return Err(IdentityError::Shape(s.to_owned())),
        };
        let n: u32 = n
            .parse()
            .map_err(|source| IdentityError::Number { name: s.to_owned(), number: n.to_owned(), source })?;
        match kind {
            "job" => Ok(Identity::JobSlot { job: name, slot: n }),
            "service" => Ok(Identity::Replica { service: name, index: n }),
            _ => Err(IdentityError::Kind { name: s.to_owned(), kind: kind.to_owned() }),
        }
    }
}

/// A MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// The MAC of a container with address `ip`: locally administered (`02:74:` then the IP's
    /// four bytes), so two containers with different IPs never share a MAC.
    pub fn for_ip(ip: Ipv4Addr) -> Mac {
        let o = ip.octets();
        Mac([0x02, 0x74, o[0], o[1], o[2], o[3]])
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3], b[4], b[5])
    }
}

/// Why a text does not parse as a [`Mac`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MacError {
    /// Not six `:`-separated parts.
    #[error("invalid MAC address {mac:?}: it has {parts} parts; write six hex bytes, e.g. 02:74:0a:00:00:05")]
    Parts {
        /// The address as given.
        mac: String,
        /// How many parts it has.
        parts: usize,
    },
    /// A part is not a hex byte.
    #[error("invalid MAC address {mac:?}: {byte:?} is not a hex byte (00-ff); write six hex bytes, e.g. 02:74:0a:00:00:05")]
    Byte {
        /// The address as given.
        mac: String,
        /// The part that is not a byte.
        byte: String,
        /// Why.
        #[source]
        source: std::num::ParseIntError,
    },
}

impl FromStr for Mac {
    type Err = MacError;

    fn from_str(s: &str) -> Result<Mac, MacError> {
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return Err(MacError::Parts { mac: s.to_owned(), parts: parts.len() });
        }
        let mut out = [0u8; 6];
        for (b, part) in out.iter_mut().zip(parts) {
            *b = u8::from_str_radix(part, 16)
                .map_err(|source| MacError::Byte { mac: s.to_owned(), byte: part.to_owned(), source })?;
        }
        Ok(Mac(out))
    }
}

impl Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Mac, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// An address claimed by an instance, as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The pool.
    pub pool: String,
    /// The instance's claim name ([`Identity::claim_name`]).
    pub name: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its MAC.
    pub mac: Mac,
    /// The agent whose host has it plumbed now; `None` while the instance runs nowhere.
    pub agent: Option<String>,
}

/// 64-bit FNV-1a: a hash that is the same in every build and on every host.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// The address `name` gets in `pool`, given the addresses `taken` by other claims: its preferred
/// address if free, else the next free one after it (wrapping around).
pub fn choose(pool: &PoolSpec, name: &str, taken: &HashSet<Ipv4Addr>) -> Result<Ipv4Addr, PoolError> {
    let hosts = pool.cidr.hosts();
    let (first, count) = (*hosts.start(), u64::from(hosts.end() - hosts.start()) + 1);
    let start = fnv1a(name) % count;
    (0..count)
        .map(|i| Ipv4Addr::from(first + ((start + i) % count) as u32))
        .find(|ip| pool.hands_out(*ip) && !taken.contains(ip))
        .ok_or_else(|| PoolError::Exhausted { pool: pool.name.clone(), cidr: pool.cidr, usable: pool.usable() })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::pool::Segment;

    fn pool(cidr: &str, gateway: &str) -> PoolSpec {
        PoolSpec {
            name: "p".into(),
            cidr: cidr.parse().unwrap(),
            segment: Segment::Vlan(7),
            gateway: gateway.parse().unwrap(),
            reserve: vec!["10.0.0.2-10.0.0.4".parse().unwrap()],
            select: BTreeMap::new(),
        }
    }

    #[test]
    fn names_round_trip() {
        for id in [Identity::JobSlot { job: "thumbs".into(), slot: 0 }, Identity::Replica { service: "web".into(), index: 12 }] {
            assert_eq!(id.claim_name().parse::<Identity>().unwrap(), id);
        }
        assert_eq!(Identity::JobSlot { job: "a".into(), slot: 3 }.claim_name(), "job/a/3");
        let mac = Mac::for_ip("10.0.0.5".parse().unwrap());
        assert_eq!(mac.to_string(), "02:74:0a:00:00:05");
        assert_eq!(mac.to_string().parse::<Mac>().unwrap(), mac);
    }

    #[test]
    fn bad_names_and_macs_say_what_to_write() {
        let cases = [
            ("thing/a/1", "invalid instance name \"thing/a/1\": \"thing\" is neither job nor service; write job/NAME/SLOT or service/NAME/INDEX"),
            ("job//1", "invalid instance name \"job//1\": write job/NAME/SLOT or service/NAME/INDEX"),
            ("job/a/1/2", "invalid instance name \"job/a/1/2\": write job/NAME/SLOT"),
            ("service/web/-1", "invalid instance name \"service/web/-1\": \"-1\" is not a slot or index (0 or more)"),
        ];
        for (text, want) in cases {
            let e = text.parse::<Identity>().unwrap_err();
            assert!(e.to_string().starts_with(want), "{text}: {e}");
        }
        assert!(matches!("job/a/x".parse::<Identity>(), Err(IdentityError::Number { ref number, .. }) if number == "x"));
        assert!(std::error::Error::source(&"job/a/x".parse::<Identity>().unwrap_err()).is_some());
        let e = "02:74:0a".parse::<Mac>().unwrap_err();
        assert_eq!(e.to_string(), "invalid MAC address \"02:74:0a\": it has 3 parts; write six hex bytes, e.g. 02:74:0a:00:00:05");
        let e = "02:74:0a:00:00:zz".parse::<Mac>().unwrap_err();
        assert_eq!(e.to_string(), "invalid MAC address \"02:74:0a:00:00:zz\": \"zz\" is not a hex byte (00-ff); write six hex bytes, e.g. 02:74:0a:00:00:05");
        assert!(matches!(e, MacError::Byte { ref byte, .. } if byte == "zz"));
    }

    #[test]
    fn exhausting_a_pool_says_what_to_do() {
        let p = pool("10.0.0.0/29", "10.0.0.1");
        let mut taken = HashSet::new();
        for i in 0..p.usable() {
            let ip = choose(&p, &format!("job/j{i}/0"), &taken).unwrap();
            assert!(p.hands_out(ip));
            assert!(taken.insert(ip));
        }
        let e = choose(&p, "job/one-too-many/0", &taken).unwrap_err().to_string();
        assert_eq!(
            e,
            "pool \"p\" (10.0.0.0/29) has no free address: all 2 addresses it hands out are claimed; release some \
             (delete jobs or services that use it) or add another pool"
        );
    }

    proptest! {
        /// The same name gets the same address given the same claims, never the gateway, a
        /// reserved address, or a taken one.
        #[test]
        fn choice_is_deterministic_and_free(name in "[a-z]{1,12}/[0-9]{1,3}", taken in proptest::collection::vec(5u32..250, 0..100)) {
            let p = pool("10.0.0.0/24", "10.0.0.1");
            let taken: HashSet<Ipv4Addr> = taken.into_iter().map(|n| Ipv4Addr::new(10, 0, 0, n as u8)).collect();
            let a = choose(&p, &name, &taken).unwrap();
            prop_assert_eq!(a, choose(&p, &name, &taken).unwrap());
            prop_assert!(p.hands_out(a) && !taken.contains(&a));
        }
    }
}
