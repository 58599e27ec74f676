//! The agent's only unsafe code: thin wrappers over the few system calls it makes through libc.
//! Each takes plain integers or a descriptor the caller owns and touches no memory of ours, so
//! every caller stays in safe code and the workspace denies `unsafe` everywhere else.
#![allow(unsafe_code)]

use std::fs::File;
use std::os::fd::AsRawFd;

/// The process group `pid` belongs to; -1 when there is no such process.
pub fn process_group(pid: i32) -> i32 {
    // SAFETY: getpgid takes an integer and only reads the process table.
    unsafe { libc::getpgid(pid) }
}

/// Sends `sig` to `pid` (a negative pid: to that process group); false when it could not.
/// Signal 0 checks that the process exists and may be signalled, sending nothing.
pub fn signal(pid: i32, sig: i32) -> bool {
    // SAFETY: kill takes integers only.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// Gives `len` bytes from `offset` of `f` back to the file system, keeping its size.
pub fn punch_hole(f: &File, offset: i64, len: i64) -> bool {
    // SAFETY: a descriptor `f` keeps open for the call, and integers.
    unsafe { libc::fallocate(f.as_raw_fd(), libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, offset, len) == 0 }
}

/// Clock ticks per second, the unit of /proc's CPU times.
pub fn clock_ticks() -> i64 {
    // SAFETY: sysconf reads a constant of the system.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }
}

/// Moves the calling thread into the namespace `ns` refers to (`nstype`: `libc::CLONE_NEWNET`,
/// `libc::CLONE_NEWNS`...). It changes only this thread: callers run it on a thread of its own
/// (or before the process starts any).
pub fn enter_namespace(ns: &File, nstype: i32) -> std::io::Result<()> {
    // SAFETY: a descriptor `ns` keeps open for the call, and an integer.
    if unsafe { libc::setns(ns.as_raw_fd(), nstype) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Becomes `uid:gid` with no supplementary groups, and checks that it took (a process that
/// kept root by a failed call must not go on).
pub fn become_user(uid: u32, gid: u32) -> std::io::Result<()> {
    // SAFETY: setgroups is given a count of zero, so it reads no list; the rest take integers.
    let ok = unsafe {
        libc::setgroups(0, std::ptr::null()) == 0
            && libc::setgid(gid) == 0
            && libc::setuid(uid) == 0
            && libc::getuid() == uid
            && libc::geteuid() == uid
    };
    if ok { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}
