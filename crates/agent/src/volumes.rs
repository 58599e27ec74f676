//! Volumes on this node's disk. Each is an ext4 file system in a sparse image file of the
//! volume's size, loop-mounted while a workload uses it: writes past the size fail with "no
//! space left on device" inside the workload, the host's disk holds only what was written, and
//! nothing beyond a stock Linux host (root, `mkfs.ext4`, loop devices) is needed. Where the agent
//! cannot mount (not root, no loop devices), a volume is a plain directory whose size is not
//! enforced, and the agent says so when it makes one (docs/decisions/0014-volumes.md).

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Volumes {
    dir: PathBuf,
}

/// Marks a volume made as a plain directory (its size not enforced).
const PLAIN: &str = "plain";

impl Volumes {
    pub fn new(state_dir: &Path) -> Volumes {
        Volumes { dir: state_dir.join("volumes") }
    }

    fn home(&self, id: &str) -> Result<PathBuf, String> {
        gpucloud_model::VolumeId::parse(id).map_err(|e| e.to_string())?;
        Ok(self.dir.join(id))
    }

    /// Where the volume's files are, ready to mount into a workload: made at `size_gib` on first
    /// use, mounted if it is not, its top directory owned by `owner` ("UID:GID").
    pub fn prepare(&self, id: &str, size_gib: u32, owner: Option<&str>) -> Result<PathBuf, String> {
        let home = self.home(id)?;
        let data = home.join("data");
        let image = home.join("disk.img");
        std::fs::create_dir_all(&data).map_err(|e| format!("making volume {id}: {e}"))?;
        if !image.exists()
            && !home.join(PLAIN).exists()
            && let Err(why) = make_image(&image, size_gib)
        {
            // Never a half-made image: the next try starts over, or this stays a directory.
            let _ = std::fs::remove_file(&image);
            tracing::warn!(volume = id, %why, "volume sizes are not enforced on this node: made a plain directory");
            std::fs::write(home.join(PLAIN), why.as_bytes()).map_err(|e| format!("making volume {id}: {e}"))?;
        }
        if image.exists() && !is_mounted(&data) {
            run(Command::new("mount").arg("-o").arg("loop,nosuid,nodev").arg(&image).arg(&data))
                .map_err(|e| format!("mounting volume {id}: {e}"))?;
        }
        if let Some((uid, gid)) = owner.and_then(|o| o.split_once(':')) {
            let (uid, gid) = (uid.parse().ok(), gid.parse().ok());
            if let Err(e) = std::os::unix::fs::chown(&data, uid, gid) {
                tracing::debug!(volume = id, error = %e, "cannot give the volume to the workload's user");
            }
        }
        Ok(data)
    }

    /// Whether the volume's size is enforced (it is an image file, not a plain directory).
    pub fn enforced(&self, id: &str) -> bool {
        self.home(id).is_ok_and(|h| h.join("disk.img").exists())
    }

    /// Unmounts the volume if it is mounted; its data stays.
    pub fn release(&self, id: &str) {
        let Ok(home) = self.home(id) else { return };
        let data = home.join("data");
        if is_mounted(&data)
            && let Err(e) = run(Command::new("umount").arg(&data))
        {
            tracing::warn!(volume = id, error = %e, "cannot unmount volume");
        }
    }

    /// Removes the volume's data for good. True once nothing of it is left.
    pub fn purge(&self, id: &str) -> bool {
        let Ok(home) = self.home(id) else { return false };
        self.release(id);
        if is_mounted(&home.join("data")) {
            return false;
        }
        match std::fs::remove_dir_all(&home) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => {
                tracing::warn!(volume = id, error = %e, "cannot remove volume");
                false
            }
        }
    }

    /// Unmounts every volume (the agent is stopping and its workloads with it).
    pub fn release_all(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        for e in entries.flatten() {
            if let Some(id) = e.file_name().to_str() {
                self.release(id);
            }
        }
    }
}

fn make_image(image: &Path, size_gib: u32) -> Result<(), String> {
    let f = std::fs::File::create(image).map_err(|e| e.to_string())?;
    f.set_len(u64::from(size_gib) << 30).map_err(|e| e.to_string())?;
    drop(f);
    // No blocks reserved for root: the workload gets the size it pays for.
    run(Command::new("mkfs.ext4").args(["-q", "-F", "-m", "0", "-E", "lazy_itable_init=1"]).arg(image))?;
    // A probe: a node that cannot mount gets plain directories from the start.
    let probe = image.with_extension("probe");
    std::fs::create_dir_all(&probe).map_err(|e| e.to_string())?;
    let mounted = run(Command::new("mount").arg("-o").arg("loop").arg(image).arg(&probe));
    if mounted.is_ok() {
        let _ = run(Command::new("umount").arg(&probe));
    }
    let _ = std::fs::remove_dir(&probe);
    mounted
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{:?}: {e}", cmd.get_program()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{:?} failed: {}",
            cmd.get_program(),
            String::from_utf8_lossy(&out.stderr).trim().chars().take(300).collect::<String>()
        ))
    }
}

/// Whether `path` is a mount point, from the kernel's table of this process's mounts.
fn is_mounted(path: &Path) -> bool {
    let Ok(path) = path.canonicalize() else { return false };
    let Ok(table) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
    // Field 5 is the mount point, with spaces and the like escaped as octal.
    table.lines().filter_map(|l| l.split(' ').nth(4)).any(|m| unescape(m) == path.as_os_str().to_string_lossy())
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = u8::from_str_radix(&s[i + 1..i + 4], 8).unwrap_or(b'?');
            out.push(v as char);
            i += 4;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_read_back_with_escapes() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
        assert!(is_mounted(Path::new("/")));
        assert!(!is_mounted(Path::new("/no/such/dir")));
    }

    #[test]
    fn a_bad_id_is_refused() {
        let dir = std::env::temp_dir().join(format!("gpucloud-vol-{:x}", rand::random::<u64>()));
        let v = Volumes::new(&dir);
        assert!(v.prepare("../../etc", 1, None).is_err());
        assert!(!v.purge("x/../.."));
        let _ = std::fs::remove_dir_all(dir);
    }
}
