//! keyhold's integration tests: one binary, one module per concern. Every test starts its own
//! `keyhold server` processes on loopback (see the `keyhold_tests` harness) and talks to them over
//! real TLS; nothing is mocked. Waits are bounded in count; no test asserts on elapsed time.

mod acl;
mod api_conventions;
mod audit;
mod bad_input;
mod chaos;
mod ci_job;
mod cli;
mod client_admin;
mod clock_jumps;
mod cluster;
mod damaged_stores;
mod durability;
mod fast_cluster;
mod image;
mod kv;
mod lifecycle;
mod monitoring;
mod moto;
mod partitions;
mod provision;
mod provision_kms;
mod provision_snapshots;
mod provision_systemd;
mod provision_transit;
mod provision_upgrade;
mod seal;
mod security;
mod slow_disks;
mod smoke;
mod snapshot;
mod snapshot_agent;
mod ssh_hosts;
mod standby_reads;
mod tidy;
mod tls;
mod transit;
