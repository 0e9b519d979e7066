//! IPv4 prefixes (`10.0.0.0/24`): parsing that says what to fix, containment and overlap.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An IPv4 network: a base address with no host bits set, and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    base: u32,
    prefix: u8,
}

/// Why a CIDR was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// No `/prefix` part.
    #[error("invalid CIDR {0:?}: write an IPv4 network and its prefix length, e.g. 10.20.0.0/24")]
    NoPrefix(String),
    /// The address part is not an IPv4 address.
    #[error("invalid CIDR {0:?}: {1:?} is not an IPv4 address (e.g. 10.20.0.0/24)")]
    Address(String, String),
    /// The prefix length is not a number from 0 to 32.
    #[error("invalid CIDR {0:?}: the prefix length must be a number from 0 to 32")]
    Prefix(String),
    /// Bits below the prefix are set.
    #[error("invalid CIDR {given:?}: the address has bits set below the /{prefix}; did you mean {fixed}?")]
    HostBits {
        /// As written.
        given: String,
        /// The prefix length.
        prefix: u8,
        /// The network it probably means.
        fixed: Cidr,
    },
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) }
}

impl Cidr {
    /// The network `base/prefix`; `None` if `prefix > 32` or `base` has host bits set.
    pub fn new(base: Ipv4Addr, prefix: u8) -> Option<Cidr> {
        let base = u32::from(base);
        (prefix <= 32 && base & !mask(prefix) == 0).then_some(Cidr { base, prefix })
    }

    /// The network address.
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base)
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The last address (the broadcast address when the prefix is /30 or shorter).
    pub fn last(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base | !mask(self.prefix))
    }

    /// How many addresses the network spans, network and broadcast included.
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix))
    }

    /// Whether `ip` is inside the network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == self.base
    }

    /// Whether the two networks share any address.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.contains(other.network()) || other.contains(self.network())
    }

    /// The addresses a host may take: all but the network and broadcast addresses (for /31 and
    /// /32, every address).
    pub fn hosts(&self) -> std::ops::RangeInclusive<u32> {
        let last = self.base | !mask(self.prefix);
        if self.prefix >= 31 { self.base..=last } else { self.base + 1..=last - 1 }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network(), self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let (addr, prefix) = s.trim().split_once('/').ok_or_else(|| CidrError::NoPrefix(s.into()))?;
        let ip: Ipv4Addr = addr.parse().map_err(|_| CidrError::Address(s.into(), addr.into()))?;
        let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32).ok_or_else(|| CidrError::Prefix(s.into()))?;
        let fixed = Cidr { base: u32::from(ip) & mask(prefix), prefix };
        if fixed.base != u32::from(ip) {
            return Err(CidrError::HostBits { given: s.into(), prefix, fixed });
        }
        Ok(fixed)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Cidr, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_says_what_to_fix() {
        let c: Cidr = "10.20.0.0/24".parse().unwrap();
        assert_eq!(c.to_string(), "10.20.0.0/24");
        assert_eq!(c.last(), Ipv4Addr::new(10, 20, 0, 255));
        assert_eq!(c.hosts().count(), 254);
        let cases = [
            ("10.20.0.0", "write an IPv4 network and its prefix length"),
            ("10.20.0/24", "\"10.20.0\" is not an IPv4 address"),
            ("10.20.0.0/33", "prefix length must be a number from 0 to 32"),
            ("10.20.0.0/x", "prefix length must be a number from 0 to 32"),
            ("10.20.0.5/24", "did you mean 10.20.0.0/24?"),
        ];
        for (bad, says) in cases {
            let e = bad.parse::<Cidr>().unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn overlap_and_containment() {
        let a: Cidr = "10.0.0.0/16".parse().unwrap();
        let b: Cidr = "10.0.3.0/24".parse().unwrap();
        let c: Cidr = "10.1.0.0/24".parse().unwrap();
        assert!(a.overlaps(&b) && b.overlaps(&a));
        assert!(!a.overlaps(&c) && !c.overlaps(&b));
        assert!(a.contains(Ipv4Addr::new(10, 0, 255, 255)));
        assert!(!a.contains(Ipv4Addr::new(10, 1, 0, 0)));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert_eq!(all.size(), 1 << 32);
        assert!(all.overlaps(&c));
    }
}
