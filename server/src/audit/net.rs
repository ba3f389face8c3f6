//! The `syslog` and `socket` audit devices: their options, and the connections
//! the writer thread (`file.rs`) opens, writes to and reopens.
//!
//! - `syslog` writes each line as one message to the local syslog socket
//!   (`/dev/log`, else `/var/run/syslog` or `/var/run/log`, as Go's
//!   `log/syslog` tries them), datagram first and stream if the daemon
//!   listens on a stream socket, framed as Go's `log/syslog` frames local
//!   messages (which Vault uses): `<PRI>Mmm dd hh:mm:ss TAG[PID]: LINE`, the
//!   RFC 3164 shape that rsyslog, syslog-ng and journald all accept.
//!   `socket_path` (a Keyhold option, not Vault's) names another socket.
//! - `socket` writes each line to `address` over `socket_type` tcp, udp or
//!   unix, with `write_timeout` (default 2s, Vault's) bounding both connecting
//!   and every write, so a peer that accepts but never reads costs the writer
//!   thread one timeout, not a hang.
//!
//! Both connect lazily, on the first write, and again after any failure, so a
//! daemon or listener that was down (even when the device was enabled or the
//! node unsealed) is used as soon as it is back.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::net::{TcpStream, ToSocketAddrs, UdpSocket};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};

/// Vault's default `write_timeout` for the socket device.
const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Where Go's `log/syslog` looks for the local syslog daemon, in order.
const SYSLOG_SOCKETS: &[&str] = &["/dev/log", "/var/run/syslog", "/var/run/log"];

/// Go's `gsyslog` facility names (case-insensitive) and their codes.
const FACILITIES: &[(&str, u8)] = &[
    ("KERN", 0),
    ("USER", 1),
    ("MAIL", 2),
    ("DAEMON", 3),
    ("AUTH", 4),
    ("SYSLOG", 5),
    ("LPR", 6),
    ("NEWS", 7),
    ("UUCP", 8),
    ("CRON", 9),
    ("AUTHPRIV", 10),
    ("FTP", 11),
    ("LOCAL0", 16),
    ("LOCAL1", 17),
    ("LOCAL2", 18),
    ("LOCAL3", 19),
    ("LOCAL4", 20),
    ("LOCAL5", 21),
    ("LOCAL6", 22),
    ("LOCAL7", 23),
];

/// Severity of every audit message: informational, as Vault logs them.
const SEVERITY_INFO: u8 = 6;

/// The device-specific options of `syslog`.
pub(crate) const SYSLOG_OPTIONS: &[&str] = &["facility", "tag", "socket_path"];
/// The device-specific options of `socket`.
pub(crate) const SOCKET_OPTIONS: &[&str] = &["address", "socket_type", "write_timeout"];

/// A validated `syslog` device target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyslogTarget {
    /// `None`: the first of the usual local sockets that exists.
    pub socket_path: Option<PathBuf>,
    pub tag: String,
    /// Facility code times 8 plus the severity: the `<PRI>` of each message.
    pub priority: u8,
}

impl SyslogTarget {
    pub(crate) fn parse(options: &BTreeMap<String, String>) -> Result<SyslogTarget> {
        let facility = options
            .get("facility")
            .map(|f| f.trim())
            .filter(|f| !f.is_empty())
            .unwrap_or("AUTH");
        let code = FACILITIES
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(facility))
            .map(|(_, code)| *code)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "facility: {facility:?} is not a syslog facility; use one of {}",
                    FACILITIES
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
        let tag = options
            .get("tag")
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| "vault".into());
        if tag
            .chars()
            .any(|c| c.is_whitespace() || c == ':' || c == '[')
        {
            return Err(Error::invalid(format!(
                "tag: {tag:?} may not contain spaces, ':' or '['; use a program name such as \"vault\""
            )));
        }
        let socket_path = match options.get("socket_path").map(|p| p.trim()) {
            None | Some("") => None,
            Some(path) if path.starts_with('/') => Some(PathBuf::from(path)),
            Some(path) => {
                return Err(Error::invalid(format!(
                    "socket_path: {path:?} must be an absolute path to a unix socket, such as \"/dev/log\""
                )))
            }
        };
        Ok(SyslogTarget {
            socket_path,
            tag,
            priority: code * 8 + SEVERITY_INFO,
        })
    }

    pub(crate) fn describe(&self) -> String {
        match &self.socket_path {
            Some(path) => format!("syslog at {}", path.display()),
            None => "the local syslog".into(),
        }
    }

    /// Connects to the syslog socket: datagram first, stream if the daemon
    /// listens on a stream socket (as Go's `log/syslog` does).
    pub(crate) fn connect(&self, timeout: Duration) -> io::Result<Conn> {
        let candidates: Vec<PathBuf> = match &self.socket_path {
            Some(path) => vec![path.clone()],
            None => SYSLOG_SOCKETS.iter().map(PathBuf::from).collect(),
        };
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no syslog socket found");
        for path in candidates {
            let dgram = UnixDatagram::unbound().and_then(|s| s.connect(&path).map(|()| s));
            match dgram {
                Ok(socket) => {
                    socket.set_write_timeout(Some(timeout))?;
                    return Ok(Conn::UnixDatagram(socket));
                }
                Err(e) if e.raw_os_error() == Some(libc::EPROTOTYPE) => {
                    let stream = UnixStream::connect(&path)?;
                    stream.set_write_timeout(Some(timeout))?;
                    return Ok(Conn::UnixStream(stream));
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// One syslog message for one audit line, as Go's `log/syslog` frames a
    /// message for the local daemon: `<PRI>Mmm dd hh:mm:ss TAG[PID]: LINE`.
    pub(crate) fn frame(&self, line: &[u8]) -> Vec<u8> {
        let stamp = chrono::Local::now().format("%b %e %H:%M:%S");
        let mut out = format!(
            "<{}>{stamp} {}[{}]: ",
            self.priority,
            self.tag,
            std::process::id()
        )
        .into_bytes();
        out.extend_from_slice(line);
        if !out.ends_with(b"\n") {
            out.push(b'\n');
        }
        out
    }
}

/// `socket_type` of a socket device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SocketType {
    Tcp,
    Udp,
    Unix,
}

/// A validated `socket` device target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SocketTarget {
    pub address: String,
    pub socket_type: SocketType,
    pub write_timeout: Duration,
}

impl SocketTarget {
    pub(crate) fn parse(options: &BTreeMap<String, String>) -> Result<SocketTarget> {
        let socket_type = match options.get("socket_type").map(|t| t.trim()) {
            None | Some("") | Some("tcp") => SocketType::Tcp,
            Some("udp") => SocketType::Udp,
            Some("unix") => SocketType::Unix,
            Some(other) => {
                return Err(Error::invalid(format!(
                    "socket_type: {other:?} is not supported; use tcp, udp or unix"
                )))
            }
        };
        let address = options
            .get("address")
            .map(|a| a.trim().to_string())
            .filter(|a| !a.is_empty())
            .ok_or_else(|| {
                Error::invalid(
                    "address is required for the socket audit device \
                     (host:port for tcp and udp, a socket path for unix)",
                )
            })?;
        match socket_type {
            SocketType::Unix if !address.starts_with('/') => {
                return Err(Error::invalid(format!(
                    "address: {address:?} must be an absolute socket path for socket_type=unix"
                )))
            }
            SocketType::Tcp | SocketType::Udp if !has_port(&address) => {
                return Err(Error::invalid(format!(
                    "address: {address:?} needs a port, e.g. \"127.0.0.1:9090\""
                )))
            }
            _ => {}
        }
        let write_timeout = match options.get("write_timeout").map(|t| t.trim()) {
            None | Some("") => DEFAULT_WRITE_TIMEOUT,
            Some(text) => keyhold_client::go_duration::parse_duration(text)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "write_timeout: {text:?} is not a positive duration such as \"2s\""
                    ))
                })?,
        };
        Ok(SocketTarget {
            address,
            socket_type,
            write_timeout,
        })
    }

    pub(crate) fn describe(&self) -> String {
        let kind = match self.socket_type {
            SocketType::Tcp => "tcp",
            SocketType::Udp => "udp",
            SocketType::Unix => "unix",
        };
        format!("{kind} socket {}", self.address)
    }

    pub(crate) fn connect(&self) -> io::Result<Conn> {
        let timeout = self.write_timeout;
        match self.socket_type {
            SocketType::Tcp => {
                let mut last = io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{} resolves to no address", self.address),
                );
                for addr in self.address.to_socket_addrs()? {
                    match TcpStream::connect_timeout(&addr, timeout) {
                        Ok(stream) => {
                            stream.set_write_timeout(Some(timeout))?;
                            stream.set_nodelay(true)?;
                            return Ok(Conn::Tcp(stream));
                        }
                        Err(e) => last = e,
                    }
                }
                Err(last)
            }
            SocketType::Udp => {
                let addr = self.address.to_socket_addrs()?.next().ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("{} resolves to no address", self.address),
                    )
                })?;
                let bind = if addr.is_ipv4() {
                    "0.0.0.0:0"
                } else {
                    "[::]:0"
                };
                let socket = UdpSocket::bind(bind)?;
                socket.connect(addr)?;
                socket.set_write_timeout(Some(timeout))?;
                Ok(Conn::Udp(socket))
            }
            SocketType::Unix => {
                let stream = UnixStream::connect(&self.address)?;
                stream.set_write_timeout(Some(timeout))?;
                Ok(Conn::UnixStream(stream))
            }
        }
    }
}

fn has_port(address: &str) -> bool {
    address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

/// An open connection to a syslog daemon or a socket device's peer.
pub(crate) enum Conn {
    Tcp(TcpStream),
    Udp(UdpSocket),
    UnixStream(UnixStream),
    UnixDatagram(UnixDatagram),
}

impl Conn {
    /// Sends one message: whole, or an error after which the connection must
    /// be dropped (a stream may hold part of it).
    pub(crate) fn send(&mut self, message: &[u8]) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.write_all(message).and_then(|()| s.flush()),
            Conn::UnixStream(s) => s.write_all(message).and_then(|()| s.flush()),
            Conn::Udp(s) => whole_datagram(s.send(message)?, message),
            Conn::UnixDatagram(s) => whole_datagram(s.send(message)?, message),
        }
    }
}

fn whole_datagram(sent: usize, message: &[u8]) -> io::Result<()> {
    if sent == message.len() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "sent {sent} of {} bytes in one datagram",
            message.len()
        )))
    }
}

/// True for an error after which a fresh connection may succeed at once (the
/// peer restarted); false for a timeout, which a retry would only repeat.
pub(crate) fn worth_reconnecting(e: &io::Error) -> bool {
    !matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::test_options as options;

    #[test]
    fn syslog_options_default_as_vault_and_reject_bad_values() {
        let parsed = SyslogTarget::parse(&options(&[])).unwrap();
        assert_eq!(parsed.tag, "vault");
        assert_eq!(parsed.priority, 4 * 8 + 6);
        assert_eq!(parsed.socket_path, None);
        let parsed = SyslogTarget::parse(&options(&[
            ("facility", "local3"),
            ("tag", "keyhold"),
            ("socket_path", "/run/test.sock"),
        ]))
        .unwrap();
        assert_eq!(parsed.priority, 19 * 8 + 6);
        assert_eq!(parsed.tag, "keyhold");
        assert_eq!(parsed.socket_path, Some(PathBuf::from("/run/test.sock")));
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("facility", "LOCAL9")], "not a syslog facility"),
            (&[("tag", "two words")], "may not contain"),
            (&[("socket_path", "dev/log")], "absolute path"),
        ];
        for (input, expected) in cases {
            let err = SyslogTarget::parse(&options(input)).unwrap_err();
            assert!(err.to_string().contains(expected), "{input:?}: {err}");
        }
    }

    #[test]
    fn syslog_frames_as_go_log_syslog() {
        let target = SyslogTarget::parse(&options(&[("tag", "kh")])).unwrap();
        let framed = String::from_utf8(target.frame(b"{\"type\":\"request\"}\n")).unwrap();
        let (head, line) = framed.split_once(": ").unwrap();
        assert!(head.starts_with("<38>"), "{head}");
        assert!(
            head.ends_with(&format!(" kh[{}]", std::process::id())),
            "{head}"
        );
        assert_eq!(line, "{\"type\":\"request\"}\n");
        // Mmm dd hh:mm:ss between the priority and the tag.
        assert_eq!(
            head["<38>".len()..]
                .split(' ')
                .filter(|s| !s.is_empty())
                .count(),
            4
        );
    }

    #[test]
    fn socket_options_default_as_vault_and_reject_bad_values() {
        let parsed = SocketTarget::parse(&options(&[("address", "127.0.0.1:9090")])).unwrap();
        assert_eq!(parsed.socket_type, SocketType::Tcp);
        assert_eq!(parsed.write_timeout, Duration::from_secs(2));
        let parsed = SocketTarget::parse(&options(&[
            ("address", "/run/audit.sock"),
            ("socket_type", "unix"),
            ("write_timeout", "250ms"),
        ]))
        .unwrap();
        assert_eq!(parsed.socket_type, SocketType::Unix);
        assert_eq!(parsed.write_timeout, Duration::from_millis(250));
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[], "address is required"),
            (&[("address", "127.0.0.1")], "needs a port"),
            (
                &[("address", "rel.sock"), ("socket_type", "unix")],
                "absolute socket path",
            ),
            (
                &[("address", "127.0.0.1:1"), ("socket_type", "sctp")],
                "tcp, udp or unix",
            ),
            (
                &[("address", "127.0.0.1:1"), ("write_timeout", "soon")],
                "write_timeout",
            ),
            (
                &[("address", "127.0.0.1:1"), ("write_timeout", "0s")],
                "positive duration",
            ),
        ];
        for (input, expected) in cases {
            let err = SocketTarget::parse(&options(input)).unwrap_err();
            assert!(err.to_string().contains(expected), "{input:?}: {err}");
        }
    }
}
