//! The listener's TLS settings hold on the wire: a TLS 1.3-only listener refuses a client that
//! speaks only TLS 1.2 (and a TLS 1.2 listener takes it, so the client itself is sound), a listener
//! that requires client certificates refuses clients without one from its CA, SIGHUP swaps in
//! a replaced certificate for new connections while an open connection keeps working, and SIGHUP
//! reloads the client CA file (Vault does not: vault issue 32116).

use std::time::Duration;

use anyhow::{bail, ensure, Result};
use keyhold_tests::{Cluster, ListenerTls, NodeOptions, Pki, RawTls, RawTlsOptions};

fn tls_node(min_version: Option<&'static str>, require_client_cert: bool) -> NodeOptions {
    NodeOptions {
        storage: keyhold_tests::Storage::Inmem,
        tls: Some(ListenerTls {
            min_version,
            require_client_cert,
        }),
        ..NodeOptions::default()
    }
}

/// Connects and sends one request; any HTTP answer counts as "served".
fn served(node: &keyhold_tests::Node, opts: &RawTlsOptions<'_>) -> Result<u16> {
    let mut conn = RawTls::connect(
        node.socket_addr(),
        &node.ip.to_string(),
        node.ca_pem(),
        opts,
    )?;
    Ok(conn.request("GET", "/v1/sys/health", &[], b"")?.status)
}

#[tokio::test]
async fn tls13_listener_refuses_tls12_only_client() -> Result<()> {
    let mut strict = Cluster::single(tls_node(Some("tls13"), false)).await?;
    let mut lenient = Cluster::single(tls_node(Some("tls12"), false)).await?;
    let tls12_only = RawTlsOptions {
        versions: &[&rustls::version::TLS12],
        client_cert: None,
    };
    let tls13_only = RawTlsOptions {
        versions: &[&rustls::version::TLS13],
        client_cert: None,
    };
    // Control: the TLS 1.2-only client works where 1.2 is allowed, and really negotiates 1.2.
    let node = lenient.node();
    let conn = RawTls::connect(
        node.socket_addr(),
        &node.ip.to_string(),
        node.ca_pem(),
        &tls12_only,
    )?;
    ensure!(
        conn.version() == Some(rustls::ProtocolVersion::TLSv1_2),
        "expected TLS 1.2 against a tls12 listener, negotiated {:?}",
        conn.version()
    );
    served(node, &tls12_only)?;

    let node = strict.node();
    served(node, &tls13_only)?;
    match served(node, &tls12_only) {
        Err(_) => Ok(()),
        Ok(status) => bail!("a tls13 listener served a TLS 1.2-only client (HTTP {status})"),
    }
}

#[tokio::test]
async fn listener_requiring_client_certs_refuses_others() -> Result<()> {
    let mut cluster = Cluster::single(tls_node(None, true)).await?;
    let other_ca = Pki::new(cluster.dir(), "other-ca")?;
    let ours = cluster.pki.issue_client("trusted client")?;
    let theirs = other_ca.issue_client("untrusted client")?;
    let node = cluster.node();

    let status = served(
        node,
        &RawTlsOptions {
            client_cert: Some(&ours),
            ..RawTlsOptions::default()
        },
    )?;
    ensure!(
        status == 501,
        "with a trusted client cert: expected 501 (uninitialised), got {status}"
    );

    for (what, cert) in [
        ("no client certificate", None),
        ("a certificate from another CA", Some(&theirs)),
    ] {
        let opts = RawTlsOptions {
            client_cert: cert,
            ..RawTlsOptions::default()
        };
        if let Ok(status) = served(node, &opts) {
            bail!("a listener requiring client certs served a client with {what} (HTTP {status})");
        }
    }
    Ok(())
}

#[tokio::test]
async fn sighup_reloads_replaced_certificate_and_keeps_open_connections() -> Result<()> {
    let mut cluster = Cluster::single(tls_node(None, false)).await?;
    let node = &cluster.nodes[0];
    let names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        node.ip.to_string(),
    ];
    let replacement = cluster.pki.issue_server("keyhold n1 rotated", &names)?;
    let old_der = node.server_cert.as_ref().expect("TLS node").cert_der()?;
    let new_der = replacement.cert_der()?;
    let (addr, ip, ca) = (
        node.socket_addr(),
        node.ip.to_string(),
        node.ca_pem().to_string(),
    );
    let connect = move || RawTls::connect(addr, &ip, &ca, &RawTlsOptions::default());

    let mut open = tokio::task::spawn_blocking({
        let connect = connect.clone();
        move || -> Result<RawTls> {
            let mut conn = connect()?;
            conn.request("GET", "/v1/sys/health", &[], b"")?;
            Ok(conn)
        }
    })
    .await??;
    ensure!(
        open.peer_cert_der()? == old_der,
        "the node did not start with its configured certificate"
    );

    let files = node.tls_files.clone().expect("TLS node");
    let dir = files.cert.parent().unwrap().to_path_buf();
    replacement.write(&dir, "server")?;
    node.sighup()?;

    // New connections see the new certificate once the reload is done (bounded wait).
    let mut seen_new = false;
    for _ in 0..100 {
        let der = tokio::task::spawn_blocking({
            let connect = connect.clone();
            move || connect().and_then(|c| c.peer_cert_der())
        })
        .await??;
        if der == new_der {
            seen_new = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut node_ref = cluster.nodes.remove(0);
    ensure!(
        node_ref.is_running(),
        "SIGHUP stopped the server; log:\n{}",
        node_ref.log_tail(30)
    );
    ensure!(
        seen_new,
        "new connections still get the old certificate after SIGHUP (100 tries)"
    );

    // The connection opened before the reload still works, still with the old certificate.
    let status = tokio::task::spawn_blocking(move || -> Result<u16> {
        let status = open.request("GET", "/v1/sys/health", &[], b"")?.status;
        ensure!(open.peer_cert_der()? == old_der);
        Ok(status)
    })
    .await??;
    ensure!(
        status == 501,
        "request on the pre-reload connection: expected 501 (uninitialised), got {status}"
    );
    Ok(())
}

/// Polls `served` with `cert` (bounded: 100 x 50 ms) until it is served (`want`) or refused.
async fn wait_served(
    node: &keyhold_tests::Node,
    cert: &keyhold_tests::IssuedCert,
    want: bool,
) -> bool {
    for _ in 0..100 {
        let opts = RawTlsOptions {
            client_cert: Some(cert),
            ..RawTlsOptions::default()
        };
        if served(node, &opts).is_ok() == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// The listener's `tls_client_ca_file` is read again on SIGHUP, without a restart: a client
/// certificate from a CA added to the file is accepted, then, with the first CA removed from
/// the file, a certificate from it is refused while the new one is still served.
#[tokio::test]
async fn sighup_reloads_the_client_ca_file() -> Result<()> {
    let mut cluster = Cluster::single(tls_node(None, true)).await?;
    let new_ca = Pki::new(cluster.dir(), "new-client-ca")?;
    let old_client = cluster.pki.issue_client("client of the first CA")?;
    let new_client = new_ca.issue_client("client of the new CA")?;
    let client_ca_file = cluster.pki.ca_path.clone();
    let first_ca = cluster.pki.ca_pem.clone();
    let node = cluster.node();
    let pid = node.pid();

    ensure!(
        wait_served(node, &old_client, true).await,
        "a client of the configured CA is not served"
    );
    ensure!(
        wait_served(node, &new_client, false).await,
        "a client of a CA not in tls_client_ca_file was served"
    );

    std::fs::write(&client_ca_file, format!("{first_ca}{}", new_ca.ca_pem))?;
    node.sighup()?;
    ensure!(
        wait_served(node, &new_client, true).await,
        "after SIGHUP with the new CA added, its client is still refused; log:\n{}",
        node.log_tail(20)
    );
    ensure!(
        wait_served(node, &old_client, true).await,
        "a client of the first CA is refused while both are in the file"
    );

    std::fs::write(&client_ca_file, &new_ca.ca_pem)?;
    node.sighup()?;
    ensure!(
        wait_served(node, &old_client, false).await,
        "after SIGHUP with the first CA removed, its client is still served; log:\n{}",
        node.log_tail(20)
    );
    ensure!(
        wait_served(node, &new_client, true).await,
        "the new CA's client is refused after the first CA was removed"
    );
    ensure!(
        node.is_running() && node.pid() == pid,
        "the reloads restarted or stopped the server"
    );
    Ok(())
}
