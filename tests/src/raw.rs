//! A hand-driven TLS connection (rustls over a std `TcpStream`) for what an HTTP library hides:
//! which certificate the server presented, keeping one connection open across a reload, choosing
//! the protocol versions offered, and sending requests that are deliberately broken.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{
    ClientConfig, ClientConnection, RootCertStore, StreamOwned, SupportedProtocolVersion,
};

use crate::pki::IssuedCert;

/// What to offer when connecting.
pub struct RawTlsOptions<'a> {
    /// Protocol versions the client will accept, e.g. `&[&rustls::version::TLS12]`.
    pub versions: &'a [&'static SupportedProtocolVersion],
    /// A client certificate to present.
    pub client_cert: Option<&'a IssuedCert>,
}

impl Default for RawTlsOptions<'_> {
    fn default() -> Self {
        RawTlsOptions {
            versions: rustls::ALL_VERSIONS,
            client_cert: None,
        }
    }
}

/// An open TLS connection speaking HTTP/1.1 by hand.
pub struct RawTls {
    stream: StreamOwned<ClientConnection, TcpStream>,
}

/// A parsed HTTP/1.1 response.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// A rustls client config that trusts `ca_pem` only, built on the aws-lc-rs provider explicitly so
/// the choice of default provider elsewhere in the process cannot change what these tests offer.
pub fn client_config(ca_pem: &str, opts: &RawTlsOptions<'_>) -> Result<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.context("parse CA certificate")?)?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(opts.versions)
        .context("choose TLS versions")?
        .with_root_certificates(roots);
    let config = match opts.client_cert {
        Some(cert) => {
            let chain = vec![CertificateDer::from_pem_slice(cert.cert_pem.as_bytes())
                .context("parse client certificate")?];
            let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes())
                .context("parse client key")?;
            builder.with_client_auth_cert(chain, key)?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(config)
}

impl RawTls {
    /// Connects and completes the handshake (or returns the handshake error).
    /// `server_name` is checked against the certificate's SANs.
    pub fn connect(
        addr: SocketAddr,
        server_name: &str,
        ca_pem: &str,
        opts: &RawTlsOptions<'_>,
    ) -> Result<RawTls> {
        let config = Arc::new(client_config(ca_pem, opts)?);
        let name = ServerName::try_from(server_name.to_string()).context("server name")?;
        let conn = ClientConnection::new(config, name)?;
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .with_context(|| format!("connect {addr}"))?;
        tcp.set_read_timeout(Some(Duration::from_secs(15)))?;
        tcp.set_write_timeout(Some(Duration::from_secs(15)))?;
        let mut stream = StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            stream
                .conn
                .complete_io(&mut stream.sock)
                .context("TLS handshake")?;
        }
        Ok(RawTls { stream })
    }

    /// The DER of the leaf certificate the server presented.
    pub fn peer_cert_der(&self) -> Result<Vec<u8>> {
        let certs = self
            .stream
            .conn
            .peer_certificates()
            .context("server presented no certificate")?;
        Ok(certs.first().context("empty certificate chain")?.to_vec())
    }

    /// The negotiated protocol version.
    pub fn version(&self) -> Option<rustls::ProtocolVersion> {
        self.stream.conn.protocol_version()
    }

    /// Writes raw bytes to the connection.
    pub fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()?;
        Ok(())
    }

    /// Sends a notify-close and closes the TCP connection.
    pub fn close(mut self) {
        self.stream.conn.send_close_notify();
        let _ = self.stream.conn.complete_io(&mut self.stream.sock);
        let _ = self.stream.sock.shutdown(std::net::Shutdown::Both);
    }

    /// Sends one keep-alive HTTP/1.1 request and reads its response.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<RawResponse> {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        self.send(head.as_bytes())?;
        if !body.is_empty() {
            self.send(body)?;
        }
        self.read_response()
    }

    /// Reads one HTTP/1.1 response (Content-Length or chunked body).
    pub fn read_response(&mut self) -> Result<RawResponse> {
        let mut buf = Vec::new();
        let header_end = loop {
            if let Some(pos) = find(&buf, b"\r\n\r\n") {
                break pos + 4;
            }
            if buf.len() > 64 * 1024 {
                bail!("response header larger than 64 KiB");
            }
            self.fill(&mut buf)?;
        };
        let head = String::from_utf8_lossy(&buf[..header_end]).to_string();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line {status_line:?}"))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let mut rest = buf[header_end..].to_vec();
        let body = if let Some(len) = header("content-length") {
            let len: usize = len.parse().context("content-length")?;
            while rest.len() < len {
                self.fill(&mut rest)?;
            }
            rest.truncate(len);
            rest
        } else if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            self.read_chunked(rest)?
        } else {
            Vec::new()
        };
        Ok(RawResponse {
            status,
            headers,
            body,
        })
    }

    fn read_chunked(&mut self, mut rest: Vec<u8>) -> Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(pos) = find(&rest, b"\r\n") {
                    break pos;
                }
                self.fill(&mut rest)?;
            };
            let size_text = String::from_utf8_lossy(&rest[..line_end]).to_string();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .with_context(|| format!("bad chunk size {size_text:?}"))?;
            rest.drain(..line_end + 2);
            while rest.len() < size + 2 {
                self.fill(&mut rest)?;
            }
            if size == 0 {
                return Ok(body);
            }
            body.extend_from_slice(&rest[..size]);
            rest.drain(..size + 2);
        }
    }

    fn fill(&mut self, buf: &mut Vec<u8>) -> Result<()> {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk).context("read from server")?;
        if n == 0 {
            bail!("server closed the connection");
        }
        buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
