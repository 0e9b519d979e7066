//! Test helpers (feature `testing`): a small tmpfs to fill up, so tests can meet a real full disk.

use std::path::Path;
use std::process::Command;

/// A tmpfs mounted on a fresh temporary directory, unmounted on drop. Needs root.
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it: `1m`, `512k`); `None`, after saying
    /// so on stderr, when this process may not mount (not root).
    pub fn mount(size: &str) -> Option<Tmpfs> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("########## SKIPPED: a full-disk test needs root to mount a small tmpfs ##########");
            return None;
        }
        let dir = tempfile::tempdir().expect("a temporary directory");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("running mount");
        assert!(out.status.success(), "mount -t tmpfs failed: {}", String::from_utf8_lossy(&out.stderr));
        Some(Tmpfs { dir })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the file system with a file named `name` until no space is left.
    pub fn fill(&self, name: &str) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.path().join(name)).expect("creating the filler file");
        let block = vec![0u8; 4096];
        while f.write_all(&block).and_then(|()| f.sync_data()).is_ok() {}
        // A partial last block may still fit.
        while f.write_all(&block[..1]).is_ok() {}
        let _ = f.sync_data();
    }

    /// Deletes the filler file `name`, making room again.
    pub fn free(&self, name: &str) {
        std::fs::remove_file(self.path().join(name)).expect("removing the filler file");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a store of the test may still hold files open while it shuts down.
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}
