//! The provider conformance suite: what every [`Host`] must do, the same way, whatever carries
//! it. Each provider's tests call [`run`] with a way to make one of its hosts whose services run
//! a stand-in program ([`fake_service`]), so the suite needs no real server.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Host, Service, ServiceState};

/// A stand-in for `keyhold`: runs until SIGTERM, so a service's command line carries its
/// `SUBCOMMAND -config=...` as a real one does; with `FAIL_AT_ONCE` in its directory it prints
/// an error and exits at once, as a server with a taken port does.
pub fn fake_service(dir: &Path) -> PathBuf {
    let path = dir.join("fake-keyhold");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\nif [ -e '{}/FAIL_AT_ONCE' ]; then echo 'error: port 8200 is taken' >&2; exit 1; fi\n\
             trap 'exit 0' TERM\ntrap ':' HUP\nwhile :; do sleep 0.05; done\n",
            dir.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Runs every case against hosts made by `make(dir, service_binary)`, each in a fresh
/// directory.
pub async fn run(make: impl Fn(&Path, PathBuf) -> Box<dyn Host>) {
    run_in(&std::env::temp_dir(), make).await;
}

/// [`run`], with each case's directory made under `base` (a host that is another machine
/// must see it at the same path: the stand-in program and its `FAIL_AT_ONCE` are there).
pub async fn run_in(base: &Path, make: impl Fn(&Path, PathBuf) -> Box<dyn Host>) {
    run_cases(
        base,
        &[files, commands, services, a_service_that_exits_at_once],
        make,
    )
    .await;
}

/// The files and commands cases alone: what a host must do before it runs any service.
pub async fn run_files_and_commands(make: impl Fn(&Path, PathBuf) -> Box<dyn Host>) {
    run_cases(&std::env::temp_dir(), &[files, commands], make).await;
}

async fn run_cases(base: &Path, cases: &[Case], make: impl Fn(&Path, PathBuf) -> Box<dyn Host>) {
    for case in cases {
        let dir = tempfile::tempdir_in(base).unwrap();
        let binary = fake_service(dir.path());
        let host = make(dir.path(), binary);
        case(host.as_ref(), dir.path()).await;
    }
}

type Case = for<'a> fn(
    &'a dyn Host,
    &'a Path,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + 'a>>;

fn files<'a>(
    h: &'a dyn Host,
    _: &'a Path,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + 'a>> {
    Box::pin(async move {
        let rel = Path::new("opt/keyhold/tls/node.key");
        assert!(h.put_file(rel, b"secret", 0o600, None).await.unwrap());
        assert!(
            !h.put_file(rel, b"secret", 0o600, None).await.unwrap(),
            "same content and mode: unchanged"
        );
        assert!(
            h.put_file(rel, b"secret", 0o640, None).await.unwrap(),
            "mode differs"
        );
        assert!(
            h.put_file(rel, b"other", 0o640, None).await.unwrap(),
            "content differs"
        );
        assert_eq!(
            h.read_file(rel).await.unwrap().as_deref(),
            Some(&b"other"[..])
        );
        assert_eq!(h.read_file(Path::new("nope")).await.unwrap(), None);
        let data = Path::new("opt/keyhold/data");
        assert!(h.ensure_dir(data, 0o700, None).await.unwrap());
        assert!(
            !h.ensure_dir(data, 0o700, None).await.unwrap(),
            "exists: unchanged"
        );
        assert!(h.ensure_dir(data, 0o750, None).await.unwrap(), "mode fixed");
        let out = h
            .run(
                &["stat", "-c", "%a", "opt/keyhold/tls/node.key"],
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "640");

        // Installing a file from this machine: replaced whole, unchanged when the same.
        let src = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(src.path(), b"version one").unwrap();
        let bin = Path::new("usr/local/bin/keyhold");
        assert!(h.install_file(src.path(), bin, 0o755).await.unwrap());
        assert!(
            !h.install_file(src.path(), bin, 0o755).await.unwrap(),
            "same content and mode: unchanged"
        );
        let kept = Path::new("usr/local/bin/keyhold.previous");
        let out = h
            .run(
                &[
                    "ln",
                    "-f",
                    "usr/local/bin/keyhold",
                    "usr/local/bin/keyhold.previous",
                ],
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        assert!(out.success(), "{out:?}");
        let newer = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(newer.path(), b"version two").unwrap();
        assert!(h.install_file(newer.path(), bin, 0o755).await.unwrap());
        assert_eq!(
            h.read_file(bin).await.unwrap().as_deref(),
            Some(&b"version two"[..])
        );
        assert_eq!(
            h.read_file(kept).await.unwrap().as_deref(),
            Some(&b"version one"[..]),
            "a link to the old file keeps the old content"
        );
        let out = h
            .run(
                &["stat", "-c", "%a", "usr/local/bin/keyhold"],
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "755");
        let err = h
            .install_file(Path::new("/nonexistent/keyhold"), bin, 0o755)
            .await
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("/nonexistent/keyhold"),
            "{err:#}"
        );
    })
}

fn commands<'a>(
    h: &'a dyn Host,
    _: &'a Path,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + 'a>> {
    Box::pin(async move {
        let out = h
            .run(&["echo", "hello"], Duration::from_secs(10))
            .await
            .unwrap();
        assert!(out.success());
        assert_eq!(out.stdout, b"hello\n");
        let out = h
            .run(
                &["sh", "-c", "echo oops >&2; exit 3"],
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        assert_eq!(
            (out.status, out.stderr.as_slice()),
            (Some(3), &b"oops\n"[..])
        );
        let err = h
            .run(&["sleep", "5"], Duration::from_millis(200))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("did not finish within"), "{err}");
        assert!(h.run(&[], Duration::from_secs(1)).await.is_err());
    })
}

fn services<'a>(
    h: &'a dyn Host,
    _: &'a Path,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + 'a>> {
    Box::pin(async move {
        for service in [Service::Server, Service::SnapshotAgent] {
            assert_eq!(
                h.service_state(service).await.unwrap(),
                ServiceState::Stopped
            );
            assert!(
                h.reload(service).await.is_err(),
                "reload of a stopped service"
            );
            h.start(service).await.unwrap();
            assert!(matches!(
                h.service_state(service).await.unwrap(),
                ServiceState::Running { .. }
            ));
            assert!(h.start(service).await.is_err(), "a second start is refused");
            h.reload(service).await.unwrap();
            let ServiceState::Running { pid: before } = h.service_state(service).await.unwrap()
            else {
                panic!("{service:?} stopped after a reload");
            };
            h.restart(service, Duration::from_secs(10)).await.unwrap();
            let ServiceState::Running { pid: after } = h.service_state(service).await.unwrap()
            else {
                panic!("{service:?} not running after a restart");
            };
            // A unit with no process of its own (a systemd timer) has pid 0 throughout.
            if before != 0 {
                assert_ne!(before, after, "a restart left the same process running");
            }
            assert!(h.stop(service, Duration::from_secs(10)).await.unwrap());
            assert_eq!(
                h.service_state(service).await.unwrap(),
                ServiceState::Stopped
            );
            assert!(
                !h.stop(service, Duration::from_secs(1)).await.unwrap(),
                "already stopped"
            );
        }
    })
}

fn a_service_that_exits_at_once<'a>(
    h: &'a dyn Host,
    dir: &'a Path,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + 'a>> {
    Box::pin(async move {
        std::fs::write(dir.join("FAIL_AT_ONCE"), b"").unwrap();
        let err = h.start(Service::Server).await.unwrap_err().to_string();
        assert!(err.contains("exited right after it started"), "{err}");
        assert!(err.contains("port 8200 is taken"), "{err}");
        assert_eq!(
            h.service_state(Service::Server).await.unwrap(),
            ServiceState::Stopped
        );
    })
}
