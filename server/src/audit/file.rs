//! The `file` audit device (appends lines to a file, stdout, or nowhere:
//! `discard`), every device's options, and the writer thread that serves all
//! three device types (`file`, and `syslog` and `socket` from `net.rs`).
//!
//! Every device owns one writer thread fed by a bounded queue, and the async
//! side only ever waits on a confirmation with a deadline. A file that blocks
//! (a FIFO without a reader, a hung NFS mount, a full pipe on stdout) therefore
//! stalls that thread alone: requests see the device fail after the write
//! timeout, and while it stays blocked they see it fail at once, without
//! waiting, so one stuck device never hangs the server (hashicorp/vault#5361).
//! The thread opens the file itself, so even opening a FIFO cannot block the
//! caller.
//!
//! A write that cannot block is made on the calling task instead (`Sink::write_direct`):
//! to `discard`, or to a regular file on a local file system (ext4, xfs, btrfs, tmpfs...),
//! where a `write` lands in the page cache. Two hand-offs between threads per line cost
//! more than the write itself (measured: `discard` through the thread cost as much as a
//! file). The thread stays for FIFOs, stdout, sockets, network and FUSE file systems, for
//! every open and reopen, for the retry after a failed write, for lines that arrive while
//! another write holds the file, and for good once a direct write was slow.
//!
//! Like Vault, the device keeps writing to the file it opened until it is
//! reopened (SIGHUP): a file that is renamed or deleted underneath it keeps
//! receiving lines (a deleted one invisibly, hashicorp/vault#31718), which is
//! what lets logrotate move the file before signalling.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::entry::FormatOptions;
use super::net::{self, Conn, SocketTarget, SyslogTarget, SOCKET_OPTIONS, SYSLOG_OPTIONS};
use crate::error::{Error, Result};

/// Lines a device may have queued before further writes fail at once.
const QUEUE_DEPTH: usize = 256;

/// A batch of queued lines stops growing at this many bytes (`Writer::run`).
const BATCH_BYTES: usize = 256 * 1024;

const DEFAULT_MODE: u32 = 0o600;

/// Options every device type takes: how its lines look and what is hashed.
const FORMAT_OPTIONS: &[&str] = &[
    "log_raw",
    "hmac_accessor",
    "format",
    "prefix",
    "elide_list_responses",
];

/// The device-specific options of `file`.
const FILE_OPTIONS: &[&str] = &["file_path", "path", "mode"];

/// The device types this build supports.
pub(crate) const DEVICE_TYPES: &[&str] = &["file", "syslog", "socket"];

/// Where a device writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    Stdout,
    Discard,
    File {
        path: PathBuf,
        /// `None` for `mode=0000`: create with the default and never chmod.
        mode: Option<u32>,
    },
    Syslog(SyslogTarget),
    Socket(SocketTarget),
}

/// A device's validated options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeviceOptions {
    pub target: Target,
    pub format: FormatOptions,
}

impl DeviceOptions {
    /// Checks the options of a device of type `kind` (`file`, `syslog`,
    /// `socket`): unknown keys and bad values are errors that say what to use.
    pub(crate) fn parse(kind: &str, options: &BTreeMap<String, String>) -> Result<DeviceOptions> {
        let own = match kind {
            "file" => FILE_OPTIONS,
            "syslog" => SYSLOG_OPTIONS,
            "socket" => SOCKET_OPTIONS,
            other => {
                return Err(Error::invalid(format!(
                    "audit device type {other:?} is not supported by this build; supported: {}",
                    DEVICE_TYPES.join(", ")
                )))
            }
        };
        if let Some(unknown) = options
            .keys()
            .find(|k| !own.contains(&k.as_str()) && !FORMAT_OPTIONS.contains(&k.as_str()))
        {
            return Err(Error::invalid(format!(
                "unknown option {unknown:?} for the {kind} audit device; supported: {}, {}",
                own.join(", "),
                FORMAT_OPTIONS.join(", ")
            )));
        }
        let target = match kind {
            "syslog" => Target::Syslog(SyslogTarget::parse(options)?),
            "socket" => Target::Socket(SocketTarget::parse(options)?),
            _ => file_target(options)?,
        };
        Ok(DeviceOptions {
            target,
            format: FormatOptions::parse(options)?,
        })
    }
}

fn file_target(options: &BTreeMap<String, String>) -> Result<Target> {
    let file_path = options
        .get("file_path")
        .or_else(|| options.get("path"))
        .filter(|p| !p.trim().is_empty())
        .ok_or_else(|| {
            Error::invalid(
                "file_path is required for the file audit device \
                     (a file path, \"stdout\" or \"discard\")",
            )
        })?;
    let mode = match options.get("mode") {
        None => DEFAULT_MODE,
        Some(text) => parse_mode(text)?,
    };
    Ok(match file_path.as_str() {
        "stdout" => Target::Stdout,
        "discard" => Target::Discard,
        path => Target::File {
            path: PathBuf::from(path),
            mode: (mode != 0).then_some(mode),
        },
    })
}

impl FormatOptions {
    fn parse(options: &BTreeMap<String, String>) -> Result<FormatOptions> {
        match options.get("format").map(String::as_str) {
            None | Some("json") => {}
            Some("jsonx") => {
                return Err(Error::invalid(
                    "format \"jsonx\" is not supported by this build; use format=json",
                ))
            }
            Some(other) => {
                return Err(Error::invalid(format!(
                    "unknown format {other:?}; supported: json"
                )))
            }
        }
        Ok(FormatOptions {
            log_raw: parse_bool(options, "log_raw", false)?,
            hmac_accessor: parse_bool(options, "hmac_accessor", true)?,
            elide_list_responses: parse_bool(options, "elide_list_responses", false)?,
            prefix: options.get("prefix").cloned().unwrap_or_default(),
        })
    }
}

/// Go's `strconv.ParseBool`, which Vault uses for device options.
fn parse_bool(options: &BTreeMap<String, String>, key: &str, default: bool) -> Result<bool> {
    match options.get(key).map(String::as_str) {
        None | Some("") => Ok(default),
        Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
        Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
        Some(other) => Err(Error::invalid(format!(
            "{key}: {other:?} is not a boolean; use true or false"
        ))),
    }
}

fn parse_mode(text: &str) -> Result<u32> {
    let mode = u32::from_str_radix(text.trim(), 8).map_err(|_| {
        Error::invalid(format!(
            "mode: {text:?} is not an octal file mode such as \"0600\""
        ))
    })?;
    if mode > 0o777 {
        return Err(Error::invalid(format!(
            "mode: {text:?} is out of range; use permission bits such as \"0600\""
        )));
    }
    if mode & 0o111 != 0 {
        return Err(Error::invalid(format!(
            "mode: {text:?} has executable bits; an audit log needs none (e.g. \"0600\")"
        )));
    }
    Ok(mode)
}

/// What the writer thread is asked to do.
enum Job {
    Write {
        line: Vec<u8>,
        done: oneshot::Sender<io::Result<()>>,
    },
    Reopen {
        done: oneshot::Sender<io::Result<()>>,
    },
}

/// A direct write slower than this sends the device's writes back to its thread
/// until it is reopened: a file system that stalls a write once may stall the
/// next one for good, and a stalled direct write holds a runtime worker.
const SLOW_DIRECT_WRITE: Duration = Duration::from_millis(100);

/// State shared between the async side and the writer thread.
struct Shared {
    /// When the thread started the job (or open) it is busy with; `None` when
    /// idle. A job older than the write timeout means the device is blocked.
    busy_since: Mutex<Option<Instant>>,
    /// The output, written by the thread and, when it cannot block, by callers.
    writer: Mutex<Writer>,
    /// A direct write was slow (`SLOW_DIRECT_WRITE`): only the thread writes until a reopen.
    slowed: AtomicBool,
}

impl Shared {
    fn set_busy(&self, busy: bool) {
        *self.busy_since.lock().unwrap_or_else(|p| p.into_inner()) = busy.then(Instant::now);
    }

    fn busy_for(&self) -> Option<Duration> {
        self.busy_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|t| t.elapsed())
    }

    fn writer(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens (or reopens) the output on the thread. A reopen (SIGHUP) also lets callers
    /// write directly again after a slow direct write.
    fn open(&self) -> io::Result<()> {
        self.slowed.store(false, Ordering::Release);
        self.writer().open()
    }

    /// Writes on the thread: first try, reopen, second try (`Writer::try_write`).
    fn write(&self, line: &[u8]) -> io::Result<()> {
        let mut writer = self.writer();
        let mut result = writer.try_write(line);
        let retry = match &result {
            Ok(()) => false,
            Err(e) => !writer.is_net() || net::worth_reconnecting(e),
        };
        if retry {
            result = writer.open().and_then(|()| writer.try_write(line));
        }
        result
    }
}

/// Why one device did not log a line. Never carries entry contents.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WriteError {
    #[error("blocked: a write has been pending for {0:?}")]
    Blocked(Duration),
    #[error("queue full ({QUEUE_DEPTH} lines waiting on the writer)")]
    QueueFull,
    #[error("write not confirmed within {0:?}")]
    Timeout(Duration),
    #[error("writer thread stopped")]
    Stopped,
    #[error("{0}")]
    Io(io::Error),
}

/// A started write: resolves when the writer thread has written and flushed
/// the line, failed to, or the deadline passed.
pub(crate) enum PendingWrite {
    /// Written on the calling task.
    Written,
    /// Queued for the writer thread.
    Queued {
        done: oneshot::Receiver<io::Result<()>>,
        timeout: Duration,
        started: tokio::time::Instant,
    },
}

impl PendingWrite {
    /// Waits until `deadline` (the broker's) or the device's own timeout,
    /// whichever comes first.
    pub(crate) async fn wait(self, deadline: tokio::time::Instant) -> Result<(), WriteError> {
        let (done, timeout, started) = match self {
            PendingWrite::Written => return Ok(()),
            PendingWrite::Queued {
                done,
                timeout,
                started,
            } => (done, timeout, started),
        };
        let deadline = deadline.min(started + timeout);
        match tokio::time::timeout_at(deadline, done).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(WriteError::Io(e)),
            Ok(Err(_)) => Err(WriteError::Stopped),
            Err(_) => Err(WriteError::Timeout(timeout)),
        }
    }
}

/// The async handle on one file device's writer thread. Dropping it stops
/// the thread once the thread is done with what it has (a thread blocked
/// forever in `open` or `write` stays blocked, holding nothing but the file).
pub(crate) struct Sink {
    jobs: SyncSender<Job>,
    shared: Arc<Shared>,
    timeout: Duration,
}

impl Sink {
    /// Starts the writer thread, which opens the target. Waits for the open
    /// (up to `timeout`) so that a missing directory or a permission problem
    /// is reported to whoever enables the device; a FIFO's open is not waited
    /// for, since it blocks until a reader appears.
    /// A `socket` device is bounded by its own `write_timeout` when that is
    /// shorter than `timeout` (the broker's).
    pub(crate) async fn open(name: &str, target: Target, timeout: Duration) -> Result<Sink> {
        let timeout = match &target {
            Target::Socket(socket) => timeout.min(socket.write_timeout),
            _ => timeout,
        };
        let (jobs, queue) = mpsc::sync_channel(QUEUE_DEPTH);
        let (opened_tx, opened_rx) = oneshot::channel();
        let description = describe(&target);
        let shared = Arc::new(Shared {
            busy_since: Mutex::new(None),
            writer: Mutex::new(Writer {
                target,
                out: None,
                local: false,
                timeout,
            }),
            slowed: AtomicBool::new(false),
        });
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name(format!("audit-{}", name.trim_end_matches('/')))
            .spawn(move || run(&thread_shared, queue, opened_tx))
            .map_err(|e| Error::internal(format!("start the audit writer thread: {e}")))?;
        let sink = Sink {
            jobs,
            shared,
            timeout,
        };
        match tokio::time::timeout(timeout, opened_rx).await {
            Ok(Ok(Ok(()))) => Ok(sink),
            Ok(Ok(Err(e))) => Err(Error::invalid(format!(
                "cannot open audit file {description}: {e}"
            ))),
            Ok(Err(_)) => Err(Error::internal("the audit writer thread stopped")),
            Err(_) => Err(Error::invalid(format!(
                "opening audit file {description} did not finish within {timeout:?}; \
                 is its file system hung?"
            ))),
        }
    }

    /// Writes a line on the calling task when that cannot block, or else queues it. Fails
    /// at once if the device is blocked or its queue is full, so a stuck device costs a
    /// request nothing but its failure.
    pub(crate) fn write(&self, line: Vec<u8>) -> Result<PendingWrite, WriteError> {
        if self.write_direct(&line) {
            return Ok(PendingWrite::Written);
        }
        self.submit(|done| Job::Write { line, done })
    }

    /// Writes `line` here and now if the output cannot block and nobody else holds it;
    /// false leaves the line to the thread (which also retries after a failed try here:
    /// the failed try cut off what it wrote, and reopening is the thread's job).
    fn write_direct(&self, line: &[u8]) -> bool {
        if self.shared.slowed.load(Ordering::Acquire) {
            return false;
        }
        let Ok(mut writer) = self.shared.writer.try_lock() else {
            return false;
        };
        if !writer.cannot_block() {
            return false;
        }
        let started = Instant::now();
        let written = writer.try_write(line).is_ok();
        drop(writer);
        let took = started.elapsed();
        if took > SLOW_DIRECT_WRITE {
            self.shared.slowed.store(true, Ordering::Release);
        }
        if written && took > SLOW_DIRECT_WRITE {
            tracing::warn!(
                "an audit write took {took:?}; this device's writes go through its own thread \
                 until it is reopened (SIGHUP)"
            );
        }
        written
    }

    /// Asks the thread to close and reopen the file (after logrotate moved
    /// it); the returned write resolves when the reopen is done.
    pub(crate) fn reopen(&self) -> Result<PendingWrite, WriteError> {
        self.submit(|done| Job::Reopen { done })
    }

    fn submit(
        &self,
        job: impl FnOnce(oneshot::Sender<io::Result<()>>) -> Job,
    ) -> Result<PendingWrite, WriteError> {
        if let Some(busy) = self.shared.busy_for().filter(|b| *b >= self.timeout) {
            return Err(WriteError::Blocked(busy));
        }
        let (done, rx) = oneshot::channel();
        self.jobs.try_send(job(done)).map_err(|e| match e {
            TrySendError::Full(_) => WriteError::QueueFull,
            TrySendError::Disconnected(_) => WriteError::Stopped,
        })?;
        Ok(PendingWrite::Queued {
            done: rx,
            timeout: self.timeout,
            started: tokio::time::Instant::now(),
        })
    }

    /// True while a write or open has been pending longer than the timeout.
    pub(crate) fn is_blocked(&self) -> bool {
        self.shared.busy_for().is_some_and(|b| b >= self.timeout)
    }
}

fn describe(target: &Target) -> String {
    match target {
        Target::Stdout => "stdout".into(),
        Target::Discard => "discard".into(),
        Target::File { path, .. } => format!("{:?}", path.display().to_string()),
        Target::Syslog(syslog) => syslog.describe(),
        Target::Socket(socket) => socket.describe(),
    }
}

enum Output {
    Stdout,
    Discard,
    File(File),
    /// A syslog daemon's socket or a socket device's peer.
    Net(Conn),
}

/// The writer thread's loop. Ends when the sink is dropped and the queue is drained.
fn run(shared: &Shared, queue: mpsc::Receiver<Job>, opened: oneshot::Sender<io::Result<()>>) {
    shared.set_busy(true);
    let (fifo, net, batches) = {
        let writer = shared.writer();
        (writer.is_fifo(), writer.is_net(), writer.batches())
    };
    if fifo {
        // Opening blocks until a reader appears: report success now and
        // let writes wait (and time out) instead of the caller.
        let _ = opened.send(Ok(()));
        if let Err(e) = shared.open() {
            tracing::warn!(file = %describe(&shared.writer().target), "open audit FIFO: {e}");
        }
    } else if net {
        // Connected on the first write: a daemon or listener that is down
        // now fails writes (and heals), it does not refuse the device.
        let _ = opened.send(Ok(()));
    } else {
        let _ = opened.send(shared.open());
    }
    shared.set_busy(false);
    let mut waiting: Option<Job> = None;
    loop {
        let job = match waiting.take() {
            Some(job) => job,
            None => match queue.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
        };
        shared.set_busy(true);
        match job {
            Job::Write { line, done } if batches => {
                // The lines queued behind this one go out with it, in one write: under
                // load the thread takes what piled up while it wrote, instead of a wake-up
                // and a write per line. Each line's request gets the batch's outcome.
                let (mut lines, mut dones) = (line, vec![done]);
                while lines.len() < BATCH_BYTES {
                    match queue.try_recv() {
                        Ok(Job::Write { line, done }) => {
                            lines.extend_from_slice(&line);
                            dones.push(done);
                        }
                        Ok(other) => {
                            waiting = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let result = shared.write(&lines);
                for done in dones {
                    let _ = done.send(match &result {
                        Ok(()) => Ok(()),
                        Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
                    });
                }
            }
            Job::Write { line, done } => {
                let _ = done.send(shared.write(&line));
            }
            Job::Reopen { done } => {
                let _ = done.send(shared.open());
            }
        }
        shared.set_busy(false);
    }
}

/// The output and what it takes to (re)open it.
struct Writer {
    target: Target,
    out: Option<Output>,
    /// Whether writes to `out` cannot block, found when it was opened (`out_cannot_block`).
    local: bool,
    /// Bounds each send to the syslog socket.
    timeout: Duration,
}

impl Writer {
    /// Whether queued lines may go out in one write: to a file or stdout, yes (a batch is
    /// whole lines, appended whole or cut off again); to syslog or a socket, one message
    /// per line, as their readers expect.
    fn batches(&self) -> bool {
        !self.is_net()
    }

    fn is_fifo(&self) -> bool {
        match &self.target {
            Target::File { path, .. } => std::fs::metadata(path)
                .map(|m| m.file_type().is_fifo())
                .unwrap_or(false),
            Target::Stdout | Target::Discard | Target::Syslog(_) | Target::Socket(_) => false,
        }
    }

    fn is_net(&self) -> bool {
        matches!(self.target, Target::Syslog(_) | Target::Socket(_))
    }

    /// Whether the output is open and a write to it returns without waiting on anything
    /// but this machine's memory.
    fn cannot_block(&self) -> bool {
        self.out.is_some() && self.local
    }

    fn open(&mut self) -> io::Result<()> {
        self.out = None;
        self.local = false;
        let out = match &self.target {
            Target::Stdout => Output::Stdout,
            Target::Discard => Output::Discard,
            Target::File { path, mode } => {
                let file = OpenOptions::new()
                    .append(true)
                    .create(true)
                    .mode(mode.unwrap_or(DEFAULT_MODE))
                    .open(path)?;
                // The mode applies to an existing file too, and is not
                // narrowed by the umask (Vault chmods after opening).
                if let Some(mode) = mode {
                    file.set_permissions(std::fs::Permissions::from_mode(*mode))?;
                }
                Output::File(file)
            }
            Target::Syslog(syslog) => Output::Net(syslog.connect(self.timeout)?),
            Target::Socket(socket) => Output::Net(socket.connect()?),
        };
        self.local = out_cannot_block(&out);
        self.out = Some(out);
        Ok(())
    }

    /// Writes and flushes one line, opening the output first if it is closed. After a
    /// failure the caller (`Shared::write`) reopens the file and tries once more, as
    /// Vault does, so a file that can be recreated recovers without a SIGHUP. A
    /// connection is remade the same way, except after a timeout, which a second try
    /// would only repeat (doubling the wait on a peer that does not read).
    fn try_write(&mut self, line: &[u8]) -> io::Result<()> {
        if self.out.is_none() {
            self.open()?;
        }
        match self.out.as_mut() {
            Some(Output::Discard) => Ok(()),
            Some(Output::Stdout) => {
                let mut stdout = io::stdout().lock();
                stdout.write_all(line)?;
                stdout.flush()
            }
            Some(Output::File(file)) => {
                let result = append_whole_line(file, line);
                if result.is_err() {
                    self.out = None;
                }
                result
            }
            Some(Output::Net(conn)) => {
                let result = match &self.target {
                    Target::Syslog(syslog) => conn.send(&syslog.frame(line)),
                    _ => conn.send(line),
                };
                if result.is_err() {
                    self.out = None;
                }
                result
            }
            None => Err(io::Error::other("audit file is not open")),
        }
    }
}

/// Whether a write to `out` returns without waiting on anything but this machine's memory:
/// `discard`, or a regular file on a local disk file system.
fn out_cannot_block(out: &Output) -> bool {
    match out {
        Output::Discard => true,
        Output::File(file) => {
            file.metadata().is_ok_and(|m| m.file_type().is_file())
                && rustix::fs::fstatfs(file).is_ok_and(|fs| is_local_disk(fs.f_type))
        }
        Output::Stdout | Output::Net(_) => false,
    }
}

/// File systems whose writes land in this machine's page cache (`statfs`'s `f_type`): ext2/3/4,
/// xfs, btrfs, tmpfs, f2fs, bcachefs, overlayfs, zfs. Network (NFS, SMB, AFS...), FUSE and
/// anything else keep their writes on the device's thread.
fn is_local_disk(magic: i64) -> bool {
    const ZFS_SUPER_MAGIC: i64 = 0x2fc1_2fc1;
    [
        libc::EXT4_SUPER_MAGIC,
        libc::XFS_SUPER_MAGIC,
        libc::BTRFS_SUPER_MAGIC,
        libc::TMPFS_MAGIC,
        libc::F2FS_SUPER_MAGIC,
        libc::BCACHEFS_SUPER_MAGIC,
        libc::OVERLAYFS_SUPER_MAGIC,
    ]
    .into_iter()
    .chain([ZFS_SUPER_MAGIC])
    .any(|local| local == magic)
}

/// Appends `line` to `file` whole or not at all. A full file system takes part of a line and
/// then refuses the rest (ENOSPC); that part is cut off again, since the next line would
/// otherwise continue it and the log would hold a line that is neither entry. Shrinking a file
/// needs no space, so the cut succeeds on a full disk.
fn append_whole_line(file: &mut File, line: &[u8]) -> io::Result<()> {
    let before = file.metadata()?.len();
    let result = file.write_all(line).and_then(|()| file.flush());
    if let Err(e) = &result {
        if let Err(cut) = file.set_len(before) {
            tracing::warn!("audit file: cutting off a partly written line after {e}: {cut}");
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::test_options as options;

    type Options = &'static [(&'static str, &'static str)];

    /// Lines queued while the writer is busy go out together (`run`): however they are
    /// batched, every line lands whole, once, and every write is confirmed. The test holds the
    /// output while it queues each round, so that every line goes to the thread.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queued_lines_land_whole_and_each_is_confirmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let target = Target::File {
            path: path.clone(),
            mode: None,
        };
        let sink = Sink::open("test", target, Duration::from_secs(10))
            .await
            .unwrap();
        let mut expected = Vec::new();
        for round in 0..20 {
            let held = sink.shared.writer();
            let pending: Vec<_> = (0..200)
                .map(|i| {
                    let line = format!(
                        "{{\"round\":{round},\"line\":{i},\"pad\":\"{}\"}}\n",
                        "x".repeat(i * 7)
                    );
                    expected.push(line.trim_end().to_string());
                    let pending = sink.write(line.into_bytes()).unwrap();
                    assert!(matches!(pending, PendingWrite::Queued { .. }));
                    pending
                })
                .collect();
            drop(held);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            for write in pending {
                write.wait(deadline).await.unwrap();
            }
        }
        let written = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = written.lines().collect();
        assert_eq!(lines, expected);
    }

    /// A regular file on a local file system, and `discard`, are written on the calling task;
    /// a FIFO (whose write blocks without a reader) and stdout (a pipe, perhaps full) only ever
    /// by the device's thread. A direct write that was slow sends the device's writes to the
    /// thread until it is reopened.
    #[tokio::test]
    async fn a_write_that_cannot_block_is_made_on_the_calling_task() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let fifo = dir.path().join("audit.fifo");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("run mkfifo");
        assert!(status.success());
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::read_to_string(fifo).unwrap())
        };
        let timeout = Duration::from_secs(10);
        let file = Target::File {
            path: path.clone(),
            mode: None,
        };
        let deadline = || tokio::time::Instant::now() + Duration::from_secs(10);
        for (target, direct) in [
            (file.clone(), true),
            (Target::Discard, true),
            (Target::Stdout, false),
            (
                Target::File {
                    path: fifo,
                    mode: None,
                },
                false,
            ),
        ] {
            let what = describe(&target);
            let sink = Sink::open("test", target, timeout).await.unwrap();
            for i in 0..3 {
                let pending = sink
                    .write(format!("{{\"line\":{i}}}\n").into_bytes())
                    .unwrap();
                let written = matches!(pending, PendingWrite::Written);
                assert_eq!(written, direct, "{what}, line {i}");
                pending.wait(deadline()).await.unwrap();
            }
        }
        assert_eq!(reader.join().unwrap().lines().count(), 3);
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 3);

        let sink = Sink::open("test", file, timeout).await.unwrap();
        sink.shared.slowed.store(true, Ordering::Release);
        let pending = sink.write(b"{}\n".to_vec()).unwrap();
        assert!(matches!(pending, PendingWrite::Queued { .. }));
        pending.wait(deadline()).await.unwrap();
        sink.reopen().unwrap().wait(deadline()).await.unwrap();
        assert!(matches!(
            sink.write(b"{}\n".to_vec()).unwrap(),
            PendingWrite::Written
        ));
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 5);
    }

    #[test]
    fn parses_valid_options() {
        let cases: &[(Options, Target, FormatOptions)] = &[
            (
                &[("file_path", "/var/log/a.log")],
                Target::File {
                    path: "/var/log/a.log".into(),
                    mode: Some(0o600),
                },
                FormatOptions::default(),
            ),
            (
                &[("path", "/legacy.log"), ("mode", "0000")],
                Target::File {
                    path: "/legacy.log".into(),
                    mode: None,
                },
                FormatOptions::default(),
            ),
            (
                &[
                    ("file_path", "stdout"),
                    ("log_raw", "true"),
                    ("prefix", "@cee:"),
                ],
                Target::Stdout,
                FormatOptions {
                    log_raw: true,
                    prefix: "@cee:".into(),
                    ..Default::default()
                },
            ),
            (
                &[
                    ("file_path", "discard"),
                    ("hmac_accessor", "false"),
                    ("elide_list_responses", "1"),
                    ("format", "json"),
                    ("mode", "640"),
                ],
                Target::Discard,
                FormatOptions {
                    hmac_accessor: false,
                    elide_list_responses: true,
                    ..Default::default()
                },
            ),
        ];
        for (input, target, format) in cases {
            let parsed = DeviceOptions::parse("file", &options(input)).unwrap();
            assert_eq!(&parsed.target, target, "{input:?}");
            assert_eq!(&parsed.format, format, "{input:?}");
        }
    }

    #[test]
    fn rejects_invalid_options_with_a_reason() {
        let cases: &[(Options, &str)] = &[
            (&[], "file_path is required"),
            (&[("file_path", "")], "file_path is required"),
            (&[("file_path", "/a"), ("format", "jsonx")], "jsonx"),
            (&[("file_path", "/a"), ("format", "xml")], "unknown format"),
            (&[("file_path", "/a"), ("mode", "rw")], "octal"),
            (&[("file_path", "/a"), ("mode", "0755")], "executable"),
            (&[("file_path", "/a"), ("mode", "07000")], "out of range"),
            (&[("file_path", "/a"), ("log_raw", "yes")], "log_raw"),
            (&[("file_path", "/a"), ("filepath", "/b")], "\"filepath\""),
        ];
        for (input, expected) in cases {
            let err = DeviceOptions::parse("file", &options(input)).unwrap_err();
            assert!(
                matches!(err, Error::InvalidRequest(ref m) if m.contains(expected)),
                "{input:?}: {err}"
            );
        }
    }
}
