//! The SSH host against a real OpenSSH server (Debian's `sshd`, started for each test on a free
//! loopback port with keys made for it; root, as the test command runs): the conformance
//! suite's file and command cases through SFTP and remote commands, and the host-key rules
//! (known_hosts, pins, trust on first use, a changed key), a refused key and an unreachable
//! host, each with the message an operator needs. Services, run by systemd, are tested on
//! hosts that boot systemd.

use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use super::{SshHost, SshSettings};
use crate::providers::{conformance, Host};

const SSHD: &str = "/usr/sbin/sshd";

/// An sshd of the test's own, killed on drop.
struct Sshd {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

fn keygen(path: &Path) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "keyhold-test", "-f"])
        .arg(path)
        .output()
        .expect("run ssh-keygen (openssh-client)");
    assert!(out.status.success(), "ssh-keygen: {out:?}");
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Sshd {
    fn start() -> Sshd {
        assert!(
            Path::new(SSHD).exists(),
            "{SSHD} not found: install openssh-server (scripts/test installs it)"
        );
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        keygen(&d.join("host_key"));
        keygen(&d.join("client_key"));
        std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys")).unwrap();
        // sshd wants its privilege-separation directory.
        std::fs::create_dir_all("/run/sshd").unwrap();
        let port = free_port();
        let config = format!(
            "ListenAddress 127.0.0.1:{port}\nHostKey {d}/host_key\nAuthorizedKeysFile \
             {d}/authorized_keys\nPermitRootLogin prohibit-password\nPasswordAuthentication \
             no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPidFile none\n\
             Subsystem sftp internal-sftp\n",
            d = d.display()
        );
        std::fs::write(d.join("sshd_config"), config).unwrap();
        let child = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("sshd.log")).unwrap())
            .spawn()
            .expect("start sshd");
        let sshd = Sshd { child, port, dir };
        for _ in 0..200 {
            if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
                return sshd;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!(
            "sshd did not listen on {port} in 200 polls:\n{}",
            std::fs::read_to_string(sshd.dir.path().join("sshd.log")).unwrap_or_default()
        );
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `[127.0.0.1]:PORT KEY` as `ssh-keyscan` writes it, from the host key itself.
    fn known_hosts_line(&self) -> String {
        let public = std::fs::read_to_string(self.path("host_key.pub")).unwrap();
        let mut fields = public.split_whitespace();
        format!(
            "[127.0.0.1]:{} {} {}\n",
            self.port,
            fields.next().unwrap(),
            fields.next().unwrap()
        )
    }

    /// The host key's `SHA256:...` fingerprint, as `ssh-keygen -l` prints it.
    fn fingerprint(&self) -> String {
        let out = Command::new("ssh-keygen")
            .arg("-lf")
            .arg(self.path("host_key.pub"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_string()
    }

    fn settings(&self, known_hosts: PathBuf) -> SshSettings {
        SshSettings {
            hosts: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            user: "root".into(),
            private_key_file: self.path("client_key"),
            port: self.port,
            sudo: false,
            known_hosts,
            host_key_fingerprints: Vec::new(),
            trust_on_first_use: false,
            connect_timeout: Duration::from_secs(5),
        }
    }

    fn host(&self, settings: SshSettings, pin: Option<String>, root: &Path) -> SshHost {
        SshHost::new(
            "keyhold-1",
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            Arc::new(settings),
            pin,
            root.to_path_buf(),
        )
    }

    /// A known_hosts file naming this server's key.
    fn known_hosts(&self) -> PathBuf {
        let path = self.path("known_hosts");
        std::fs::write(&path, self.known_hosts_line()).unwrap();
        path
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_ssh_host_passes_the_files_and_commands_cases() {
    let sshd = Sshd::start();
    let known = sshd.known_hosts();
    conformance::run_files_and_commands(|dir, _| {
        Box::new(sshd.host(sshd.settings(known.clone()), None, &dir.join("root")))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn host_keys_are_checked_before_anything_is_sent() {
    let sshd = Sshd::start();
    let root = tempfile::tempdir().unwrap();
    let probe = |h: SshHost| async move { h.run(&["true"], Duration::from_secs(10)).await };

    // Not in known_hosts: refused, with the key and what to do.
    let empty = sshd.path("empty_known_hosts");
    let err = format!(
        "{:#}",
        probe(sshd.host(sshd.settings(empty.clone()), None, root.path()))
            .await
            .unwrap_err()
    );
    assert!(
        err.contains("is not in")
            && err.contains(&sshd.fingerprint())
            && err.contains("ssh-keyscan"),
        "{err}"
    );
    assert!(!empty.exists(), "a refused host is not recorded");

    // Trusted on first use when asked: recorded, and known from then on.
    let mut tofu = sshd.settings(empty.clone());
    tofu.trust_on_first_use = true;
    assert!(probe(sshd.host(tofu, None, root.path()))
        .await
        .unwrap()
        .success());
    let recorded = std::fs::read_to_string(&empty).unwrap();
    assert!(
        recorded.contains(&format!("[127.0.0.1]:{}", sshd.port)),
        "{recorded}"
    );
    assert!(
        probe(sshd.host(sshd.settings(empty.clone()), None, root.path()))
            .await
            .unwrap()
            .success()
    );

    // A changed key is refused, trust on first use or not.
    let other = sshd.path("other_key");
    keygen(&other);
    let public = std::fs::read_to_string(other.with_extension("pub")).unwrap();
    let mut fields = public.split_whitespace();
    let changed = sshd.path("changed_known_hosts");
    std::fs::write(
        &changed,
        format!(
            "[127.0.0.1]:{} {} {}\n",
            sshd.port,
            fields.next().unwrap(),
            fields.next().unwrap()
        ),
    )
    .unwrap();
    let mut tofu = sshd.settings(changed);
    tofu.trust_on_first_use = true;
    let err = format!(
        "{:#}",
        probe(sshd.host(tofu, None, root.path())).await.unwrap_err()
    );
    assert!(
        err.contains("not the one") && err.contains("ssh-keygen -R"),
        "{err}"
    );

    // A pin decides alone: the right one connects, a wrong one is refused.
    let pinned = sshd.settings(sshd.path("nowhere"));
    assert!(
        probe(sshd.host(pinned.clone(), Some(sshd.fingerprint()), root.path()))
            .await
            .unwrap()
            .success()
    );
    let err = format!(
        "{:#}",
        probe(sshd.host(
            pinned,
            Some("SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into()),
            root.path()
        ))
        .await
        .unwrap_err()
    );
    assert!(err.contains("not the pinned"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_key_and_an_unreachable_host_say_what_to_check() {
    let sshd = Sshd::start();
    let root = tempfile::tempdir().unwrap();
    let mut wrong = sshd.settings(sshd.known_hosts());
    let stranger = sshd.path("stranger_key");
    keygen(&stranger);
    wrong.private_key_file = stranger;
    let err = format!(
        "{:#}",
        sshd.host(wrong, None, root.path())
            .run(&["true"], Duration::from_secs(10))
            .await
            .unwrap_err()
    );
    assert!(
        err.contains("refused to log in root") && err.contains("authorized_keys"),
        "{err}"
    );

    let mut closed = sshd.settings(sshd.known_hosts());
    closed.port = free_port();
    let err = format!(
        "{:#}",
        sshd.host(closed, None, root.path())
            .run(&["true"], Duration::from_secs(10))
            .await
            .unwrap_err()
    );
    assert!(
        err.contains("cannot reach keyhold-1") && err.contains("sshd runs"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_upload_is_never_put_in_place() {
    // The check `place` makes, run against a staged file whose bytes are not what was sent.
    let sshd = Sshd::start();
    let root = tempfile::tempdir().unwrap();
    let host = sshd.host(sshd.settings(sshd.known_hosts()), None, root.path());
    let (staging, file) = host
        .upload(Arc::new(b"what arrived".to_vec()))
        .await
        .unwrap();
    let dest = root.path().join("etc/keyhold.d/keyhold.hcl");
    let sent = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"what was sent"));
    let err = format!(
        "{:#}",
        host.place(
            &staging,
            &file,
            &dest.display().to_string(),
            &sent,
            0o640,
            None
        )
        .await
        .unwrap_err()
    );
    assert!(err.contains("arrived damaged"), "{err}");
    assert!(!dest.exists(), "a damaged file was put in place");
    assert!(
        !Path::new(&staging).exists(),
        "the staging directory was left"
    );
}

/// An environment file for one node on this sshd; the binary is never run here.
fn environment(sshd: &Sshd, dir: &Path) -> PathBuf {
    let file = dir.join("ssh-test.hcl");
    std::fs::write(
        &file,
        format!(
            "provider \"ssh\" {{\n  hosts = [\"127.0.0.1\"]\n  port = {}\n  private_key_file = \
             \"{}\"\n  known_hosts = \"{}\"\n}}\nserver {{\n  binary = \"/bin/true\"\n}}\n\
             policy \"vault-admin\" {{ file = \"{}\" }}\nauth \"userpass\" {{\n  user \"admin\" \
             {{ policies = [\"vault-admin\"] }}\n}}\n",
            sshd.port,
            sshd.path("client_key").display(),
            sshd.known_hosts().display(),
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../environments/policies/vault-admin.hcl")
                .display()
        ),
    )
    .unwrap();
    file
}

#[tokio::test(flavor = "multi_thread")]
async fn hosts_check_logs_in_as_up_would_and_reports_a_host_it_cannot_reach() {
    let sshd = Sshd::start();
    let dir = tempfile::tempdir().unwrap();
    let file = environment(&sshd, dir.path());
    let env = crate::cli::EnvArg {
        env: file.display().to_string(),
    };
    let state = dir.path().join("state");
    let Ok(d) = crate::cli::load(&env, &state) else {
        panic!("the ssh environment loads");
    };
    let checks = crate::workflows::hosts::check(&d).await;
    assert_eq!(checks.len(), 1);
    assert!(checks[0].ok, "{checks:?}");
    assert!(
        checks[0]
            .systemd
            .as_deref()
            .is_some_and(|s| s.starts_with("systemd ")),
        "{checks:?}"
    );
    // A host whose sshd is gone is reported on its line, not raised.
    drop(sshd);
    let checks = crate::workflows::hosts::check(&d).await;
    assert!(
        !checks[0].ok && checks[0].detail.contains("cannot reach keyhold-1"),
        "{checks:?}"
    );
}
