//! `unsealer`: the one-node Shamir Keyhold that a transit-sealed environment's nodes unseal
//! through: certificate, config, process, init (one share, kept encrypted in
//! `secrets/unsealer/`), unseal, the transit engine, key and policy, and the seal's periodic
//! token (kept encrypted beside the init output and reused while it lives). It runs before any
//! node needs it: its token goes into the nodes' environment files.

use std::path::Path;

use anyhow::{bail, Result};
use async_trait::async_trait;
use chrono::Utc;
use keyhold_client::go_duration::format_go_duration;
use zeroize::Zeroizing;

use super::tls::{ca_differs, issue_node_certs};
use super::UpRun;
use crate::cluster::{retrying, Role};
use crate::deployment::{
    FORM_TIMEOUT, START_TIMEOUT, STOP_TIMEOUT, UNSEALER_POLICY, UNSEALER_TOKEN_KEY,
    UNSEALER_TOKEN_PERIOD,
};
use crate::engine::{Applied, Change, Note, Step};
use crate::environment::Seal;
use crate::pki;
use crate::providers::{Service, ServiceState};
use crate::render::{self, Layout};
use crate::secret_zero::InitSecrets;
use crate::state::fingerprint;

pub struct Unsealer;

#[async_trait(?Send)]
impl Step<UpRun> for Unsealer {
    fn name(&self) -> &'static str {
        "unsealer"
    }

    fn wanted(&self, run: &UpRun) -> bool {
        run.d.unsealer.is_some()
    }

    async fn check(&self, run: &UpRun) -> Result<Vec<Change>> {
        let d = run.d.clone();
        let Some(unsealer) = &d.unsealer else {
            return Ok(Vec::new());
        };
        let name = unsealer.name.as_str();
        let host = d.host(unsealer);
        let ca = pki::inspect_file(&d.ca_file()).ok();
        let mut changes = Vec::new();
        if ca.is_some() {
            if let Some(reason) = d.cert_reason(host.as_ref(), unsealer, ca.as_ref()).await? {
                changes.push(Change::node(
                    name,
                    format!("issue its certificate ({reason})"),
                ));
            }
        }
        match host.service_state(Service::Server).await? {
            ServiceState::Stopped => changes.push(Change::node(
                name,
                "start, initialise if new, and unseal the transit unsealer",
            )),
            ServiceState::Running { .. } => {
                let health = match ca {
                    Some(_) => d.unsealer_cluster(unsealer)?.health(0).await,
                    None => None,
                };
                if Role::from_health(health.as_ref()) != Role::Active {
                    changes.push(Change::node(name, "unseal the transit unsealer"));
                }
            }
        }
        Ok(changes)
    }

    async fn apply(&self, run: &mut UpRun, _: &[Change], _: &Note<'_>) -> Result<Applied> {
        let d = run.d.clone();
        let Some(unsealer) = &d.unsealer else {
            return Ok(Applied::ok("none"));
        };
        let Seal::Transit(transit) = &d.env.seal else {
            bail!("an unsealer serves a transit seal only");
        };
        let ca = run.ca.as_ref().expect("the certificates step ran first");
        let mut did: Vec<String> = Vec::new();
        let host = d.host(unsealer);
        let tls = Path::new(Layout::TLS_DIR);
        host.ensure_dir(tls, 0o700, None).await?;
        let mut reload = ca_differs(host.as_ref(), Some(ca.cert_pem())).await?;
        host.put_file(
            &tls.join(render::CA_CERT),
            ca.cert_pem().as_bytes(),
            0o644,
            None,
        )
        .await?;
        if let Some(reason) = d
            .cert_reason(host.as_ref(), unsealer, Some(ca.info()))
            .await?
        {
            issue_node_certs(&d, host.as_ref(), unsealer, ca, false).await?;
            did.push(format!("issued its certificate ({reason})"));
            reload = true;
        }
        host.ensure_dir(Path::new(Layout::DATA_DIR), 0o700, None)
            .await?;
        host.ensure_dir(Path::new(Layout::LOG_DIR), 0o750, None)
            .await?;
        if d.install_binary(host.as_ref()).await? {
            did.push(format!("installed {}", Layout::BINARY));
        }
        let env = d.unsealer_env();
        let mut config = String::new();
        for file in run.renderer.render_node(&env, unsealer)? {
            if host
                .put_file(&file.path, file.content.as_bytes(), file.mode, None)
                .await?
            {
                did.push(format!("wrote {}", file.path.display()));
            }
            if file.path == Path::new(Layout::SERVER_CONFIG) {
                config = fingerprint(file.content.as_bytes());
            }
        }
        let entry = run.state.nodes.entry(unsealer.name.clone()).or_default();
        match host.service_state(Service::Server).await? {
            ServiceState::Stopped => {
                host.start(Service::Server).await?;
                did.push("started".into());
            }
            ServiceState::Running { .. } if entry.config_sha256 != config => {
                host.restart(Service::Server, STOP_TIMEOUT).await?;
                did.push("restarted (its config changed)".into());
            }
            ServiceState::Running { .. } if reload => {
                host.reload(Service::Server).await?;
                did.push("reloaded (certificates changed)".into());
            }
            ServiceState::Running { .. } => {}
        }
        let record = d.provider.record(unsealer).await?;
        let entry = run.state.nodes.entry(unsealer.name.clone()).or_default();
        entry.config_sha256 = config;
        entry.address = unsealer.address.to_string();
        entry.api_addr = unsealer.api_addr.clone();
        entry.binary = d.binary.clone();
        if entry.provider.as_ref() != Some(&record) {
            entry.started_at = Some(Utc::now());
        }
        entry.provider = Some(record);
        run.state.save(&d.dir)?;

        let cluster = d.unsealer_cluster(unsealer)?;
        let health = cluster.wait_responding(0, START_TIMEOUT).await?;
        let store = d.unsealer_store()?;
        if !health.initialized {
            if store.has_init() {
                bail!(
                    "the unsealer answers uninitialised but {} holds its init output: its data \
                     is gone, and with it the key that seals the cluster. Restore it, or run \
                     `provision down --env {} --purge` to start again",
                    store.dir().display(),
                    d.env.name
                );
            }
            let out = cluster.init(0, 1, 1, false).await?;
            store.save_init(&InitSecrets {
                unseal_keys_b64: out.keys_base64.clone(),
                root_token: out.root_token.clone(),
                created_at: Utc::now(),
                recovery: false,
            })?;
            did.push("initialised (1 share, encrypted)".into());
        } else if !store.has_init() {
            bail!(
                "the unsealer is initialised but its init output is not in {}; without its \
                 share it cannot be unsealed. If the environment holds nothing of value, run \
                 `provision down --env {} --purge`",
                store.dir().display(),
                d.env.name
            );
        }
        let identities = d.identities(&run.identity)?;
        let init = store.load_init(&identities)?;
        if Role::from_health(cluster.health(0).await.as_ref()) != Role::Active {
            let sealed = cluster.health(0).await.is_some_and(|h| h.sealed);
            cluster.unseal(0, &init.unseal_keys_b64).await?;
            if sealed {
                did.push("unsealed".into());
            }
            cluster.wait_active(FORM_TIMEOUT).await?;
        }
        let created = retrying(|| {
            cluster.configure_transit_unsealer(
                &init.root_token,
                &transit.mount_path,
                &transit.key_name,
                UNSEALER_POLICY,
            )
        })
        .await?;
        did.extend(created.into_iter().map(|c| format!("created {c}")));

        let mut creds = store.load_credentials(&identities)?;
        let live = match creds.get(UNSEALER_TOKEN_KEY) {
            Some(token) => cluster.token_is_live(0, token).await?,
            None => false,
        };
        if !live {
            let token = cluster
                .create_periodic_token(
                    &init.root_token,
                    UNSEALER_POLICY,
                    UNSEALER_TOKEN_PERIOD,
                    &format!("{}-transit-seal", d.env.name),
                )
                .await?;
            creds.insert(UNSEALER_TOKEN_KEY.to_string(), token);
            store.save_credentials(&creds)?;
            did.push(format!(
                "made the seal's token (policy {UNSEALER_POLICY}, period {})",
                format_go_duration(UNSEALER_TOKEN_PERIOD)
            ));
        }
        run.transit_token = Some(Zeroizing::new(
            creds.remove(UNSEALER_TOKEN_KEY).unwrap_or_default(),
        ));
        creds.clear();
        Ok(if did.is_empty() {
            Applied::ok(format!(
                "unsealed at {}, {}{} ready",
                unsealer.api_addr, transit.mount_path, transit.key_name
            ))
        } else {
            Applied::changed(did.join("; "))
        })
    }
}
