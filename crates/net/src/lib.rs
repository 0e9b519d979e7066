//! Tugboat's container network.
//!
//! Every networked container gets one address from a pool, named after the instance's identity
//! (a job's warm container: job and host slot; a service replica: service and index), so the same
//! instance gets the same IP and MAC on any host.
//!
//! - [`cidr`]: IPv4 prefixes: parsing with errors that say what to fix, containment, overlap.
//! - [`pool`]: a pool (CIDR, VLAN or VXLAN segment, gateway, reserved ranges, selector) and its
//!   validation.
//! - [`protocol`]: the claim and release messages between agents and the server.
//! - [`claim`]: instance identity → claim name → address and MAC, chosen deterministically.
//!
//! - [`plumb`] (feature `plumbing`, for agents): veth pairs, addresses inside a container's network
//!   namespace, VLAN access ports on Open vSwitch, VXLAN bridges and their forwarding entries.
//!
//! Without `plumbing` this crate is pure: no I/O. The server keeps pools and claims in its store.

pub mod cidr;
pub mod claim;
pub mod pool;
pub mod protocol;
#[cfg(feature = "plumbing")]
pub mod plumb;

pub use cidr::{Cidr, CidrError};
pub use claim::{Claim, Identity, IdentityError, Mac, MacError};
pub use pool::{IpRange, PoolError, PoolSpec, Segment};
