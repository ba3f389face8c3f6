//! Locks the process's memory (`mlockall`) so keys and secrets are never written to swap, and
//! sets the file-creation mask so every file the server creates is private to its user.
//!
//! The one module allowed `unsafe`: `mlockall` and `umask` are libc calls with no Rust
//! wrapper in our dependencies.

/// Why memory could not be locked, with what the operator can do about it.
#[derive(Debug, thiserror::Error)]
pub enum MemlockError {
    #[error(
        "failed to lock memory with mlockall: {0}. Keyhold locks its memory so that keys \
         are never swapped to disk. Grant the CAP_IPC_LOCK capability (systemd: \
         AmbientCapabilities=CAP_IPC_LOCK and LimitMEMLOCK=infinity; or \
         `setcap cap_ipc_lock=+ep` on the binary), or, if swap is disabled on this host, \
         set `disable_mlock = true` in the server configuration"
    )]
    Failed(std::io::Error),
    #[error(
        "memory locking is not supported on this platform; set `disable_mlock = true` in the \
         server configuration, and run only where swap is disabled or encrypted"
    )]
    Unsupported,
}

/// Locks all current and future pages of the process into RAM.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn lock_memory() -> Result<(), MemlockError> {
    // SAFETY: mlockall takes only integer flags and reads or writes no memory
    // owned by Rust; its failure is reported through the return value and errno.
    let rc = unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) };
    if rc == 0 {
        Ok(())
    } else {
        Err(MemlockError::Failed(std::io::Error::last_os_error()))
    }
}

/// Locks all current and future pages of the process into RAM.
#[cfg(not(target_os = "linux"))]
pub fn lock_memory() -> Result<(), MemlockError> {
    Err(MemlockError::Unsupported)
}

/// Makes every file and directory the process creates from now on owner-only (0600 / 0700),
/// as OpenBao's: storage files (sled writes its own with the default 0644), snapshots, audit
/// logs. Returns the previous mask.
#[allow(unsafe_code)]
pub fn restrict_new_file_modes() -> libc::mode_t {
    // SAFETY: umask takes an integer, cannot fail, touches no Rust-owned memory.
    unsafe { libc::umask(0o077) }
}

#[cfg(test)]
mod tests {
    use super::*;

    // lock_memory() itself is not called here: it would lock the whole test
    // process (or fail on RLIMIT_MEMLOCK, depending on the machine).
    #[test]
    fn error_tells_the_operator_what_to_do() {
        let err = MemlockError::Failed(std::io::Error::from_raw_os_error(libc::EPERM));
        let msg = err.to_string();
        for needle in [
            "CAP_IPC_LOCK",
            "LimitMEMLOCK=infinity",
            "disable_mlock = true",
        ] {
            assert!(msg.contains(needle), "{msg}");
        }
        assert!(MemlockError::Unsupported
            .to_string()
            .contains("disable_mlock"));
    }
}
