//! Tugboat's container network.
//!
//! Every networked container gets one address from a pool, named after the instance's identity
//! (a job's warm container: job and host slot; a service replica: service and index), so the same
//! instance gets the same IP and MAC on any host.
//!
//! - [`cidr`]: IPv4 prefixes: parsing with errors that say what to fix, containment, overlap.
//! - [`pool`]: a pool (CIDR, VLAN or VXLAN segment, gateway, reserved ranges, selector) and its
//!   validation.
//! - [`claim`]: instance identity → claim name → address and MAC, chosen deterministically.
//!
//! This crate is pure: no I/O. The server keeps pools and claims in its store.

pub mod cidr;
pub mod claim;
pub mod pool;

pub use cidr::{Cidr, CidrError};
pub use claim::{Claim, Identity, Mac};
pub use pool::{IpRange, PoolError, PoolSpec, Segment};
