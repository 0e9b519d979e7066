//! An address pool: a CIDR on one network segment (a VLAN or a VXLAN), its gateway, the ranges
//! no container may take, and the labels that select which jobs and services draw from it.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::cidr::{Cidr, CidrError};

/// The highest VLAN id (802.1Q reserves 0 and 4095).
pub const VLAN_MAX: u16 = 4094;
/// The highest VXLAN network identifier (24 bits).
pub const VNI_MAX: u32 = (1 << 24) - 1;

/// Where a pool's containers are joined at layer 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", content = "id", rename_all = "lowercase")]
pub enum Segment {
    /// An 802.1Q VLAN: each container's host end is an access port with this tag.
    Vlan(u16),
    /// A VXLAN network: a bridge per pool with a VXLAN device of this VNI.
    Vxlan(u32),
}

impl fmt::Display for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Segment::Vlan(id) => write!(f, "vlan {id}"),
            Segment::Vxlan(vni) => write!(f, "vxlan {vni}"),
        }
    }
}

/// An inclusive range of addresses inside a pool that no container takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpRange {
    /// The first address.
    pub first: Ipv4Addr,
    /// The last address (equal to `first` for one address).
    pub last: Ipv4Addr,
}

impl IpRange {
    /// Whether `ip` is in the range.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        (self.first..=self.last).contains(&ip)
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last { write!(f, "{}", self.first) } else { write!(f, "{}-{}", self.first, self.last) }
    }
}

impl FromStr for IpRange {
    type Err = PoolError;

    /// `10.0.0.2-10.0.0.9` or one address.
    fn from_str(s: &str) -> Result<IpRange, PoolError> {
        let bad = || PoolError::BadRange(s.to_owned());
        let (a, b) = s.split_once('-').unwrap_or((s, s));
        let first: Ipv4Addr = a.trim().parse().map_err(|_| bad())?;
        let last: Ipv4Addr = b.trim().parse().map_err(|_| bad())?;
        if last < first {
            return Err(bad());
        }
        Ok(IpRange { first, last })
    }
}

impl Serialize for IpRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IpRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<IpRange, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// A pool as created by `tug net pool add` or `POST /api/v1/net/pools`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    /// Its name, which jobs and services give as `network = { pool = "NAME" }`.
    pub name: String,
    /// The addresses it hands out.
    pub cidr: Cidr,
    /// The VLAN or VXLAN its containers join.
    pub segment: Segment,
    /// The containers' default route; inside `cidr`, never handed out.
    pub gateway: Ipv4Addr,
    /// Ranges inside `cidr` never handed out (routers, load balancers, hosts).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reserve: Vec<IpRange>,
    /// Labels a job or service must carry to draw from this pool without naming it (all must
    /// match); empty: only jobs that name the pool.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub select: BTreeMap<String, String>,
}

/// Why a pool was refused, or an address could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// The name is empty, too long or has other characters.
    #[error("invalid pool name {0:?}: use 1-64 characters from A-Z a-z 0-9 _ . -")]
    Name(String),
    /// The CIDR does not parse.
    #[error("pool {pool:?}: {source}")]
    Cidr {
        /// The pool.
        pool: String,
        /// Why.
        #[source]
        source: CidrError,
    },
    /// The network leaves no room for containers.
    #[error("pool {pool:?}: {cidr} is too small; use a prefix of /29 or shorter (e.g. /24)")]
    TooSmall {
        /// The pool.
        pool: String,
        /// Its CIDR.
        cidr: Cidr,
    },
    /// A VLAN id outside 1-4094.
    #[error("pool {pool:?}: VLAN {id} is out of range; use 1-4094")]
    VlanRange {
        /// The pool.
        pool: String,
        /// As given.
        id: u32,
    },
    /// A VNI outside 1-16777215.
    #[error("pool {pool:?}: VXLAN VNI {vni} is out of range; use 1-16777215")]
    VniRange {
        /// The pool.
        pool: String,
        /// As given.
        vni: u64,
    },
    /// The gateway is not a host address of the CIDR.
    #[error("pool {pool:?}: gateway {gateway} is {why} {cidr}; give a host address inside it, e.g. {example}")]
    Gateway {
        /// The pool.
        pool: String,
        /// As given.
        gateway: Ipv4Addr,
        /// "outside" or "the network or broadcast address of".
        why: &'static str,
        /// The pool's CIDR.
        cidr: Cidr,
        /// A valid gateway.
        example: Ipv4Addr,
    },
    /// A reserved range that does not parse.
    #[error("invalid address range {0:?}: write FIRST-LAST (e.g. 10.0.0.2-10.0.0.9) or one address")]
    BadRange(String),
    /// A reserved range reaching outside the CIDR.
    #[error("pool {pool:?}: reserved range {range} is not inside {cidr}")]
    RangeOutside {
        /// The pool.
        pool: String,
        /// The range.
        range: IpRange,
        /// The pool's CIDR.
        cidr: Cidr,
    },
    /// The CIDR overlaps another pool's.
    #[error("pool {pool:?}: {cidr} overlaps pool {other:?} ({other_cidr}); pick a CIDR that does not")]
    Overlap {
        /// The pool.
        pool: String,
        /// Its CIDR.
        cidr: Cidr,
        /// The pool it overlaps.
        other: String,
        /// That pool's CIDR.
        other_cidr: Cidr,
    },
    /// The segment is another pool's.
    #[error("pool {pool:?}: {segment} is already pool {other:?}'s segment; give each pool its own")]
    SegmentTaken {
        /// The pool.
        pool: String,
        /// The segment.
        segment: Segment,
        /// The pool that has it.
        other: String,
    },
    /// Every address is claimed or reserved.
    #[error(
        "pool {pool:?} ({cidr}) has no free address: all {usable} addresses it hands out are claimed; \
         release some (delete jobs or services that use it) or add another pool"
    )]
    Exhausted {
        /// The pool.
        pool: String,
        /// Its CIDR.
        cidr: Cidr,
        /// How many addresses it hands out.
        usable: u64,
    },
}

/// Whether `name` is a valid pool name.
fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

impl PoolSpec {
    /// Checks the pool on its own: name, segment id, gateway and reserved ranges.
    pub fn validate(&self) -> Result<(), PoolError> {
        let pool = || self.name.clone();
        if !valid_name(&self.name) {
            return Err(PoolError::Name(self.name.clone()));
        }
        match self.segment {
            Segment::Vlan(id) if !(1..=VLAN_MAX).contains(&id) => {
                return Err(PoolError::VlanRange { pool: pool(), id: id.into() });
            }
            Segment::Vxlan(vni) if !(1..=VNI_MAX).contains(&vni) => {
                return Err(PoolError::VniRange { pool: pool(), vni: vni.into() });
            }
            _ => {}
        }
        if self.cidr.prefix() > 29 {
            return Err(PoolError::TooSmall { pool: pool(), cidr: self.cidr });
        }
        let hosts = self.cidr.hosts();
        let gw = u32::from(self.gateway);
        if !hosts.contains(&gw) {
            let why = if self.cidr.contains(self.gateway) { "the network or broadcast address of" } else { "outside" };
            let example = Ipv4Addr::from(*hosts.start());
            return Err(PoolError::Gateway { pool: pool(), gateway: self.gateway, why, cidr: self.cidr, example });
        }
        for range in &self.reserve {
            if !self.cidr.contains(range.first) || !self.cidr.contains(range.last) {
                return Err(PoolError::RangeOutside { pool: pool(), range: *range, cidr: self.cidr });
            }
        }
        Ok(())
    }

    /// Checks the pool against the pools that exist: no shared address, no shared segment.
    pub fn check_against<'a>(&self, others: impl IntoIterator<Item = &'a PoolSpec>) -> Result<(), PoolError> {
        for o in others.into_iter().filter(|o| o.name != self.name) {
            if self.cidr.overlaps(&o.cidr) {
                return Err(PoolError::Overlap {
                    pool: self.name.clone(),
                    cidr: self.cidr,
                    other: o.name.clone(),
                    other_cidr: o.cidr,
                });
            }
            if self.segment == o.segment {
                return Err(PoolError::SegmentTaken { pool: self.name.clone(), segment: self.segment, other: o.name.clone() });
            }
        }
        Ok(())
    }

    /// Whether the pool may hand out `ip`: a host address, not the gateway, not reserved.
    pub fn hands_out(&self, ip: Ipv4Addr) -> bool {
        self.cidr.hosts().contains(&u32::from(ip)) && ip != self.gateway && !self.reserve.iter().any(|r| r.contains(ip))
    }

    /// How many addresses the pool hands out.
    pub fn usable(&self) -> u64 {
        let hosts = self.cidr.hosts();
        let mut n = u64::from(hosts.end() - hosts.start()) + 1;
        n -= 1; // the gateway
        // Reserved addresses, counted once even where ranges overlap each other or the gateway.
        let mut ranges: Vec<(u32, u32)> = self
            .reserve
            .iter()
            .map(|r| (u32::from(r.first).max(*hosts.start()), u32::from(r.last).min(*hosts.end())))
            .filter(|(a, b)| a <= b)
            .collect();
        ranges.sort();
        let mut covered = 0u64;
        let mut end: Option<u32> = None;
        for (a, b) in ranges {
            let a = match end {
                Some(e) if a <= e => e.checked_add(1).unwrap_or(u32::MAX),
                _ => a,
            };
            if a <= b {
                covered += u64::from(b - a) + 1;
                if (a..=b).contains(&u32::from(self.gateway)) {
                    covered -= 1;
                }
            }
            end = Some(end.map_or(b, |e| e.max(b)));
        }
        n.saturating_sub(covered)
    }

    /// Whether a job or service with these labels draws from this pool without naming it.
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        !self.select.is_empty() && self.select.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn pool(name: &str, cidr: &str, segment: Segment, gateway: &str) -> PoolSpec {
        PoolSpec {
            name: name.into(),
            cidr: cidr.parse().unwrap(),
            segment,
            gateway: gateway.parse().unwrap(),
            reserve: vec![],
            select: BTreeMap::new(),
        }
    }

    #[test]
    fn bad_pools_say_what_to_fix() {
        let ok = pool("blue", "10.7.0.0/24", Segment::Vlan(77), "10.7.0.1");
        ok.validate().unwrap();
        let cases = [
            (PoolSpec { name: "no space".into(), ..ok.clone() }, "invalid pool name \"no space\""),
            (PoolSpec { segment: Segment::Vlan(0), ..ok.clone() }, "VLAN 0 is out of range; use 1-4094"),
            (PoolSpec { segment: Segment::Vlan(4095), ..ok.clone() }, "VLAN 4095 is out of range; use 1-4094"),
            (PoolSpec { segment: Segment::Vxlan(1 << 24), ..ok.clone() }, "VNI 16777216 is out of range; use 1-16777215"),
            (
                PoolSpec { gateway: "10.8.0.1".parse().unwrap(), ..ok.clone() },
                "gateway 10.8.0.1 is outside 10.7.0.0/24; give a host address inside it, e.g. 10.7.0.1",
            ),
            (PoolSpec { gateway: "10.7.0.255".parse().unwrap(), ..ok.clone() }, "is the network or broadcast address of"),
            (PoolSpec { cidr: "10.7.0.0/30".parse().unwrap(), ..ok.clone() }, "10.7.0.0/30 is too small"),
            (
                PoolSpec { reserve: vec!["10.7.0.250-10.7.1.3".parse().unwrap()], ..ok.clone() },
                "reserved range 10.7.0.250-10.7.1.3 is not inside 10.7.0.0/24",
            ),
        ];
        for (p, says) in cases {
            let e = p.validate().unwrap_err().to_string();
            assert!(e.contains(says), "{e:?} should say {says:?}");
        }
        let e = "10.0.0.9-10.0.0.2".parse::<IpRange>().unwrap_err().to_string();
        assert!(e.contains("write FIRST-LAST"), "{e}");
    }

    #[test]
    fn pools_do_not_share_addresses_or_segments() {
        let a = pool("a", "10.0.0.0/16", Segment::Vlan(10), "10.0.0.1");
        let b = pool("b", "10.0.8.0/24", Segment::Vlan(11), "10.0.8.1");
        let c = pool("c", "10.1.0.0/24", Segment::Vlan(10), "10.1.0.1");
        let d = pool("d", "10.2.0.0/24", Segment::Vxlan(10), "10.2.0.1");
        let e = b.check_against([&a]).unwrap_err().to_string();
        assert!(e.contains("10.0.8.0/24 overlaps pool \"a\" (10.0.0.0/16); pick a CIDR that does not"), "{e}");
        let e = c.check_against([&a]).unwrap_err().to_string();
        assert!(e.contains("vlan 10 is already pool \"a\"'s segment"), "{e}");
        d.check_against([&a, &c]).unwrap();
        // A pool does not clash with itself (an update).
        a.check_against([&a]).unwrap();
    }

    #[test]
    fn usable_counts_what_is_handed_out() {
        let mut p = pool("p", "10.0.0.0/29", Segment::Vlan(5), "10.0.0.1");
        assert_eq!(p.usable(), 5); // .2-.6
        p.reserve = vec!["10.0.0.0-10.0.0.3".parse().unwrap(), "10.0.0.3".parse().unwrap()];
        assert_eq!(p.usable(), 3); // .4-.6
        let handed: Vec<_> = p.cidr.hosts().map(Ipv4Addr::from).filter(|ip| p.hands_out(*ip)).collect();
        assert_eq!(handed.len() as u64, p.usable());
    }

    #[test]
    fn selectors_match_all_labels() {
        let mut p = pool("p", "10.0.0.0/24", Segment::Vlan(5), "10.0.0.1");
        let labels: BTreeMap<_, _> = [("team".to_string(), "web".to_string())].into();
        assert!(!p.selects(&labels), "an empty selector selects nothing");
        p.select = labels.clone();
        assert!(p.selects(&labels));
        p.select.insert("tier".into(), "front".into());
        assert!(!p.selects(&labels));
    }

    #[test]
    fn json_shape() {
        let mut p = pool("p", "10.0.0.0/24", Segment::Vxlan(5001), "10.0.0.1");
        p.reserve.push("10.0.0.2-10.0.0.9".parse().unwrap());
        let j = serde_json::to_value(&p).unwrap();
        assert_eq!(j["segment"], serde_json::json!({"kind": "vxlan", "id": 5001}));
        assert_eq!(j["reserve"][0], "10.0.0.2-10.0.0.9");
        assert_eq!(serde_json::from_value::<PoolSpec>(j).unwrap(), p);
    }
}
