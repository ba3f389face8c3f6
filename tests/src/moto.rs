//! A moto server (AWS KMS and S3 stand-in) for one test: `python3 -m moto.server` on a loopback
//! address of the test's own and a free port, waited for (bounded) until it answers, and killed
//! when dropped. Temporary: a shared helper arrives with the snapshot agent's branch.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// Credentials moto accepts; the same for every test.
pub const AWS_ENV: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
    ("AWS_REGION", "us-east-1"),
];

pub struct Moto {
    /// `http://ADDRESS:PORT`.
    pub endpoint: String,
    child: Child,
}

impl Moto {
    /// Starts moto on `address` (a loopback address no other test uses).
    pub fn start(address: Ipv4Addr) -> Result<Moto> {
        let port = TcpListener::bind((address, 0))
            .and_then(|l| l.local_addr())
            .with_context(|| format!("find a free port on {address}"))?
            .port();
        let child = Command::new("python3")
            .args(["-m", "moto.server", "-H"])
            .arg(address.to_string())
            .arg("-p")
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("start moto (pip install 'moto[server]')")?;
        let mut moto = Moto {
            endpoint: format!("http://{address}:{port}"),
            child,
        };
        let at = SocketAddr::from((address, port));
        for _ in 0..150 {
            if TcpStream::connect_timeout(&at, Duration::from_millis(200)).is_ok() {
                return Ok(moto);
            }
            if let Ok(Some(status)) = moto.child.try_wait() {
                bail!("moto exited at start ({status}); is moto[server] installed?");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("moto did not answer on {at} within 15s")
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
