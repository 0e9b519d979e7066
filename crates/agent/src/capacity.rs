//! What this host offers for placement when the operator does not say: all cores, all memory,
//! and the free space of the root filesystem as the disk.

use tug_core::placement::Capacity;

/// This host's capacity, read from the system (`/proc/meminfo`, `statvfs("/")`).
pub fn host_capacity() -> Capacity {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()))
        })
        .map_or(0, |kb| kb * 1024);
    let disk = nix::sys::statvfs::statvfs("/").map_or(0, |s| s.blocks_available() * s.fragment_size());
    Capacity { cpus, mem, disk }
}
