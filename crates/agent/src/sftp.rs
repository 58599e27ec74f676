//! SFTP (version 3, what OpenSSH's `scp`, `sftp` and editors' remote plugins speak) for the
//! agent's SSH server, so files move in and out of an instance whose image has no SFTP server.
//! The agent runs it as a helper process (`gpucloud agent-sftp`) that first enters the
//! workload container's mount namespace and becomes the workload's user (`enter`), so every
//! path is the container's and every permission check is the workload's own; then it serves
//! the protocol on its standard input and output (`serve`).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

const INIT: u8 = 1;
const VERSION: u8 = 2;
const OPEN: u8 = 3;
const CLOSE: u8 = 4;
const READ: u8 = 5;
const WRITE: u8 = 6;
const LSTAT: u8 = 7;
const FSTAT: u8 = 8;
const SETSTAT: u8 = 9;
const FSETSTAT: u8 = 10;
const OPENDIR: u8 = 11;
const READDIR: u8 = 12;
const REMOVE: u8 = 13;
const MKDIR: u8 = 14;
const RMDIR: u8 = 15;
const REALPATH: u8 = 16;
const STAT: u8 = 17;
const RENAME: u8 = 18;
const READLINK: u8 = 19;
const STATUS: u8 = 101;
const HANDLE: u8 = 102;
const DATA: u8 = 103;
const NAME: u8 = 104;
const ATTRS: u8 = 105;

const OK: u32 = 0;
const EOF: u32 = 1;
const NO_SUCH_FILE: u32 = 2;
const PERMISSION_DENIED: u32 = 3;
const FAILURE: u32 = 4;
const BAD_MESSAGE: u32 = 5;
const OP_UNSUPPORTED: u32 = 8;

const ATTR_SIZE: u32 = 1;
const ATTR_UIDGID: u32 = 2;
const ATTR_PERMISSIONS: u32 = 4;
const ATTR_ACMODTIME: u32 = 8;
const ATTR_EXTENDED: u32 = 0x8000_0000;

/// A packet is at most this long (OpenSSH's clients send at most 256 KiB of data at once).
const MAX_PACKET: usize = 512 * 1024;
/// A READ returns at most this much.
const MAX_READ: u32 = 256 * 1024;
/// Open handles a session may hold.
const MAX_HANDLES: usize = 256;

/// Enters the mount namespace of process `pid` (a workload container's init) and becomes
/// `uid:gid` with no supplementary groups. Must run before the process starts any thread.
pub fn enter(pid: i32, user: &str) -> Result<(), String> {
    let (uid, gid) = user
        .split_once(':')
        .and_then(|(u, g)| Some((u.parse::<u32>().ok()?, g.parse::<u32>().ok()?)))
        .ok_or_else(|| format!("user '{user}' is UID:GID"))?;
    if uid == 0 {
        return Err("file transfer runs as the workload's user, never as root".into());
    }
    let ns = File::open(format!("/proc/{pid}/ns/mnt")).map_err(|e| format!("process {pid}: {e}"))?;
    crate::sys::enter_namespace(&ns, libc::CLONE_NEWNS).map_err(|e| format!("entering the container's files: {e}"))?;
    crate::sys::become_user(uid, gid).map_err(|e| format!("becoming {uid}:{gid}: {e}"))?;
    std::env::set_current_dir("/").map_err(|e| e.to_string())?;
    Ok(())
}

enum Handle {
    File(File),
    Dir(Vec<(String, std::fs::Metadata)>),
}

/// Serves SFTP requests from `input`, answering on `output`, until the client goes away.
pub fn serve(input: &mut impl Read, output: &mut impl Write) -> std::io::Result<()> {
    let mut handles: HashMap<String, Handle> = HashMap::new();
    let mut next = 0u64;
    loop {
        let mut len = [0u8; 4];
        match input.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let len = u32::from_be_bytes(len) as usize;
        if len == 0 || len > MAX_PACKET {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "packet too long"));
        }
        let mut packet = vec![0u8; len];
        input.read_exact(&mut packet)?;
        let reply = answer(&packet, &mut handles, &mut next);
        output.write_all(&(reply.len() as u32).to_be_bytes())?;
        output.write_all(&reply)?;
        output.flush()?;
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*b)
    }
    fn u32(&mut self) -> Option<u32> {
        let (b, rest) = self.0.split_first_chunk::<4>()?;
        self.0 = rest;
        Some(u32::from_be_bytes(*b))
    }
    fn u64(&mut self) -> Option<u64> {
        let (b, rest) = self.0.split_first_chunk::<8>()?;
        self.0 = rest;
        Some(u64::from_be_bytes(*b))
    }
    fn bytes(&mut self) -> Option<&[u8]> {
        let n = self.u32()? as usize;
        if n > self.0.len() {
            return None;
        }
        let (b, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(b)
    }
    fn string(&mut self) -> Option<String> {
        self.bytes().map(|b| String::from_utf8_lossy(b).into_owned())
    }
    fn attrs(&mut self) -> Option<Attrs> {
        let flags = self.u32()?;
        let mut a = Attrs::default();
        if flags & ATTR_SIZE != 0 {
            a.size = Some(self.u64()?);
        }
        if flags & ATTR_UIDGID != 0 {
            self.u32()?;
            self.u32()?;
        }
        if flags & ATTR_PERMISSIONS != 0 {
            a.mode = Some(self.u32()?);
        }
        if flags & ATTR_ACMODTIME != 0 {
            a.times = Some((self.u32()?, self.u32()?));
        }
        if flags & ATTR_EXTENDED != 0 {
            for _ in 0..self.u32()? {
                self.bytes()?;
                self.bytes()?;
            }
        }
        Some(a)
    }
}

#[derive(Default)]
struct Attrs {
    size: Option<u64>,
    mode: Option<u32>,
    times: Option<(u32, u32)>,
}

struct Writer(Vec<u8>);

impl Writer {
    fn new(kind: u8, id: u32) -> Writer {
        let mut w = Writer(vec![kind]);
        w.u32(id);
        w
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
    fn attrs(&mut self, m: &std::fs::Metadata) {
        self.u32(ATTR_SIZE | ATTR_UIDGID | ATTR_PERMISSIONS | ATTR_ACMODTIME);
        self.u64(m.size());
        self.u32(m.uid());
        self.u32(m.gid());
        self.u32(m.mode());
        self.u32(m.atime().clamp(0, u32::MAX as i64) as u32);
        self.u32(m.mtime().clamp(0, u32::MAX as i64) as u32);
    }
}

fn status(id: u32, code: u32, msg: &str) -> Vec<u8> {
    let mut w = Writer::new(STATUS, id);
    w.u32(code);
    w.bytes(msg.as_bytes());
    w.bytes(b"en");
    w.0
}

fn io_status(id: u32, e: &std::io::Error) -> Vec<u8> {
    let code = match e.kind() {
        std::io::ErrorKind::NotFound => NO_SUCH_FILE,
        std::io::ErrorKind::PermissionDenied => PERMISSION_DENIED,
        _ => FAILURE,
    };
    status(id, code, &e.to_string())
}

/// `ls -l`'s line for an entry (what `sftp`'s `ls -l` prints).
fn long_name(name: &str, m: &std::fs::Metadata) -> String {
    let mode = m.mode();
    let kind = match mode & libc::S_IFMT {
        libc::S_IFDIR => 'd',
        libc::S_IFLNK => 'l',
        libc::S_IFCHR => 'c',
        libc::S_IFBLK => 'b',
        libc::S_IFIFO => 'p',
        libc::S_IFSOCK => 's',
        _ => '-',
    };
    let mut perms = String::with_capacity(9);
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        perms.push(if bits & 4 != 0 { 'r' } else { '-' });
        perms.push(if bits & 2 != 0 { 'w' } else { '-' });
        perms.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    format!("{kind}{perms} {:>3} {:<8} {:<8} {:>10} {name}", m.nlink(), m.uid(), m.gid(), m.size())
}

fn apply(path: &Path, file: Option<&File>, a: &Attrs) -> std::io::Result<()> {
    if let Some(size) = a.size {
        match file {
            Some(f) => f.set_len(size)?,
            None => OpenOptions::new().write(true).open(path)?.set_len(size)?,
        }
    }
    if let Some(mode) = a.mode {
        let perms = std::fs::Permissions::from_mode(mode & 0o7777);
        match file {
            Some(f) => f.set_permissions(perms)?,
            None => std::fs::set_permissions(path, perms)?,
        }
    }
    if let Some((atime, mtime)) = a.times {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(atime.into());
        let mt = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime.into());
        let times = std::fs::FileTimes::new().set_accessed(at).set_modified(mt);
        match file {
            Some(f) => f.set_times(times)?,
            None => File::open(path)?.set_times(times)?,
        }
    }
    Ok(())
}

/// Absolute and without `.` or `..`: what REALPATH answers (the file need not exist, as
/// clients ask for the path of what they are about to create).
fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for p in path.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

fn answer(packet: &[u8], handles: &mut HashMap<String, Handle>, next: &mut u64) -> Vec<u8> {
    let mut r = Reader(packet);
    let Some(kind) = r.u8() else { return status(0, BAD_MESSAGE, "empty packet") };
    if kind == INIT {
        let mut w = Writer(vec![VERSION]);
        w.u32(3);
        return w.0;
    }
    let Some(id) = r.u32() else { return status(0, BAD_MESSAGE, "no request id") };
    let bad = || status(id, BAD_MESSAGE, "malformed request");
    let mut new_handle = |h: Handle, handles: &mut HashMap<String, Handle>| {
        if handles.len() >= MAX_HANDLES {
            return status(id, FAILURE, "too many open files in this session");
        }
        *next += 1;
        let name = next.to_string();
        handles.insert(name.clone(), h);
        let mut w = Writer::new(HANDLE, id);
        w.bytes(name.as_bytes());
        w.0
    };
    match kind {
        OPEN => {
            let (Some(path), Some(flags), Some(attrs)) = (r.string(), r.u32(), r.attrs()) else { return bad() };
            let mut o = OpenOptions::new();
            o.read(flags & 1 != 0)
                .write(flags & 2 != 0)
                .append(flags & 4 != 0)
                .create(flags & 8 != 0 && flags & 0x20 == 0)
                .truncate(flags & 0x10 != 0)
                .create_new(flags & 0x20 != 0)
                .mode(attrs.mode.map_or(0o666, |m| m & 0o777));
            match o.open(&path) {
                Ok(f) => new_handle(Handle::File(f), handles),
                Err(e) => io_status(id, &e),
            }
        }
        CLOSE => {
            let Some(h) = r.string() else { return bad() };
            match handles.remove(&h) {
                Some(_) => status(id, OK, ""),
                None => status(id, FAILURE, "no such handle"),
            }
        }
        READ => {
            let (Some(h), Some(offset), Some(len)) = (r.string(), r.u64(), r.u32()) else { return bad() };
            let Some(Handle::File(f)) = handles.get_mut(&h) else { return status(id, FAILURE, "no such file handle") };
            let mut buf = vec![0u8; len.min(MAX_READ) as usize];
            let read = f.seek(SeekFrom::Start(offset)).and_then(|_| f.read(&mut buf));
            match read {
                Ok(0) => status(id, EOF, "end of file"),
                Ok(n) => {
                    let mut w = Writer::new(DATA, id);
                    w.bytes(&buf[..n]);
                    w.0
                }
                Err(e) => io_status(id, &e),
            }
        }
        WRITE => {
            let (Some(h), Some(offset), Some(data)) = (r.string(), r.u64(), r.bytes()) else { return bad() };
            let Some(Handle::File(f)) = handles.get_mut(&h) else { return status(id, FAILURE, "no such file handle") };
            match f.seek(SeekFrom::Start(offset)).and_then(|_| f.write_all(data)) {
                Ok(()) => status(id, OK, ""),
                Err(e) => io_status(id, &e),
            }
        }
        STAT | LSTAT => {
            let Some(path) = r.string() else { return bad() };
            let m = if kind == STAT { std::fs::metadata(&path) } else { std::fs::symlink_metadata(&path) };
            match m {
                Ok(m) => {
                    let mut w = Writer::new(ATTRS, id);
                    w.attrs(&m);
                    w.0
                }
                Err(e) => io_status(id, &e),
            }
        }
        FSTAT => {
            let Some(h) = r.string() else { return bad() };
            let Some(Handle::File(f)) = handles.get(&h) else { return status(id, FAILURE, "no such file handle") };
            match f.metadata() {
                Ok(m) => {
                    let mut w = Writer::new(ATTRS, id);
                    w.attrs(&m);
                    w.0
                }
                Err(e) => io_status(id, &e),
            }
        }
        SETSTAT => {
            let (Some(path), Some(a)) = (r.string(), r.attrs()) else { return bad() };
            match apply(Path::new(&path), None, &a) {
                Ok(()) => status(id, OK, ""),
                Err(e) => io_status(id, &e),
            }
        }
        FSETSTAT => {
            let (Some(h), Some(a)) = (r.string(), r.attrs()) else { return bad() };
            let Some(Handle::File(f)) = handles.get(&h) else { return status(id, FAILURE, "no such file handle") };
            match apply(Path::new(""), Some(f), &a) {
                Ok(()) => status(id, OK, ""),
                Err(e) => io_status(id, &e),
            }
        }
        OPENDIR => {
            let Some(path) = r.string() else { return bad() };
            let list = std::fs::read_dir(&path).and_then(|d| {
                let mut out = Vec::new();
                for name in [".", ".."] {
                    out.push((name.to_string(), std::fs::metadata(Path::new(&path).join(name))?));
                }
                for e in d.flatten() {
                    if let Ok(m) = e.path().symlink_metadata() {
                        out.push((e.file_name().to_string_lossy().into_owned(), m));
                    }
                }
                out.reverse();
                Ok(out)
            });
            match list {
                Ok(l) => new_handle(Handle::Dir(l), handles),
                Err(e) => io_status(id, &e),
            }
        }
        READDIR => {
            let Some(h) = r.string() else { return bad() };
            let Some(Handle::Dir(entries)) = handles.get_mut(&h) else {
                return status(id, FAILURE, "no such directory handle");
            };
            if entries.is_empty() {
                return status(id, EOF, "end of directory");
            }
            let batch: Vec<_> = (0..100).map_while(|_| entries.pop()).collect();
            let mut w = Writer::new(NAME, id);
            w.u32(batch.len() as u32);
            for (name, m) in &batch {
                w.bytes(name.as_bytes());
                w.bytes(long_name(name, m).as_bytes());
                w.attrs(m);
            }
            w.0
        }
        REMOVE | RMDIR => {
            let Some(path) = r.string() else { return bad() };
            let done = if kind == REMOVE { std::fs::remove_file(&path) } else { std::fs::remove_dir(&path) };
            match done {
                Ok(()) => status(id, OK, ""),
                Err(e) => io_status(id, &e),
            }
        }
        MKDIR => {
            let (Some(path), Some(a)) = (r.string(), r.attrs()) else { return bad() };
            let mut b = std::fs::DirBuilder::new();
            std::os::unix::fs::DirBuilderExt::mode(&mut b, a.mode.map_or(0o777, |m| m & 0o7777));
            match b.create(&path) {
                Ok(()) => status(id, OK, ""),
                Err(e) => io_status(id, &e),
            }
        }
        REALPATH => {
            let Some(path) = r.string() else { return bad() };
            let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
            let full = if path.starts_with('/') { path } else { format!("{}/{path}", cwd.display()) };
            let resolved = std::fs::canonicalize(&full)
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_else(|_| normalize(&full));
            let mut w = Writer::new(NAME, id);
            w.u32(1);
            w.bytes(resolved.as_bytes());
            w.bytes(resolved.as_bytes());
            w.u32(0);
            w.0
        }
        RENAME => {
            let (Some(from), Some(to)) = (r.string(), r.string()) else { return bad() };
            // Version 3 leaves an existing target alone.
            if std::fs::symlink_metadata(&to).is_ok() {
                return status(id, FAILURE, "the target exists");
            }
            match std::fs::rename(&from, &to) {
                Ok(()) => status(id, OK, ""),
                Err(e) => io_status(id, &e),
            }
        }
        READLINK => {
            let Some(path) = r.string() else { return bad() };
            match std::fs::read_link(&path) {
                Ok(target) => {
                    let t = target.to_string_lossy();
                    let mut w = Writer::new(NAME, id);
                    w.u32(1);
                    w.bytes(t.as_bytes());
                    w.bytes(t.as_bytes());
                    w.u32(0);
                    w.0
                }
                Err(e) => io_status(id, &e),
            }
        }
        _ => status(id, OP_UNSUPPORTED, "not supported"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(kind: u8, id: u32, body: &[&[u8]]) -> Vec<u8> {
        let mut p = vec![kind];
        p.extend_from_slice(&id.to_be_bytes());
        for b in body {
            p.extend_from_slice(b);
        }
        let mut framed = (p.len() as u32).to_be_bytes().to_vec();
        framed.extend(p);
        framed
    }

    fn s(text: &str) -> Vec<u8> {
        let mut v = (text.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(text.as_bytes());
        v
    }

    fn replies(input: Vec<u8>) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        serve(&mut input.as_slice(), &mut out).unwrap();
        let mut r = out.as_slice();
        let mut all = Vec::new();
        while !r.is_empty() {
            let n = u32::from_be_bytes(r[..4].try_into().unwrap()) as usize;
            all.push(r[4..4 + n].to_vec());
            r = &r[4 + n..];
        }
        all
    }

    #[test]
    fn a_file_is_written_read_back_listed_and_removed() {
        let dir = std::env::temp_dir().join(format!("gpucloud-sftp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("note").display().to_string();
        let mut input = vec![0, 0, 0, 5, INIT, 0, 0, 0, 3];
        // OPEN (write, create, truncate), handle "1".
        input.extend(packet(OPEN, 1, &[&s(&file), &(2u32 | 8 | 0x10).to_be_bytes(), &0u32.to_be_bytes()]));
        input.extend(packet(WRITE, 2, &[&s("1"), &0u64.to_be_bytes(), &s("hello sftp")]));
        input.extend(packet(CLOSE, 3, &[&s("1")]));
        input.extend(packet(OPEN, 4, &[&s(&file), &1u32.to_be_bytes(), &0u32.to_be_bytes()]));
        input.extend(packet(READ, 5, &[&s("2"), &6u64.to_be_bytes(), &100u32.to_be_bytes()]));
        input.extend(packet(READ, 6, &[&s("2"), &10u64.to_be_bytes(), &100u32.to_be_bytes()]));
        input.extend(packet(STAT, 7, &[&s(&file)]));
        input.extend(packet(OPENDIR, 8, &[&s(&dir.display().to_string())]));
        input.extend(packet(READDIR, 9, &[&s("3")]));
        input.extend(packet(REMOVE, 10, &[&s(&file)]));
        input.extend(packet(STAT, 11, &[&s(&file)]));
        input.extend(packet(REALPATH, 12, &[&s("/a/./b/../c")]));
        input.extend(packet(200, 13, &[&s("posix-rename@openssh.com")]));
        let r = replies(input);
        assert_eq!(r[0], [VERSION, 0, 0, 0, 3]);
        assert_eq!(r[1][0], HANDLE);
        assert_eq!(r[2], status(2, OK, ""));
        assert_eq!(r[3], status(3, OK, ""));
        let mut data = Writer::new(DATA, 5);
        data.bytes(b"sftp");
        assert_eq!(r[5], data.0);
        assert_eq!(r[6], status(6, EOF, "end of file"));
        assert_eq!((r[7][0], u64::from_be_bytes(r[7][9..17].try_into().unwrap())), (ATTRS, 10));
        assert_eq!(r[9][0], NAME);
        assert!(String::from_utf8_lossy(&r[9]).contains("note"));
        assert_eq!(r[10], status(10, OK, ""));
        assert_eq!(&r[11][..9], &status(11, NO_SUCH_FILE, "")[..9]);
        assert!(String::from_utf8_lossy(&r[12]).contains("/a/c"));
        assert_eq!(&r[13][..9], &status(13, OP_UNSUPPORTED, "")[..9]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn malformed_requests_get_an_error_not_a_crash() {
        let mut input = packet(OPEN, 1, &[&[0, 0, 0, 99]]);
        input.extend(packet(READ, 2, &[&s("nope"), &0u64.to_be_bytes(), &1u32.to_be_bytes()]));
        let r = replies(input);
        assert_eq!(r[0], status(1, BAD_MESSAGE, "malformed request"));
        assert_eq!(r[1], status(2, FAILURE, "no such file handle"));
        let mut huge = ((MAX_PACKET + 1) as u32).to_be_bytes().to_vec();
        huge.push(INIT);
        assert!(serve(&mut huge.as_slice(), &mut Vec::new()).is_err());
    }
}
