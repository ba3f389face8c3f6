//! `provision` driven from outside, as an operator runs it: a test environment file written into
//! a temp dir, the command run with `--state-dir` in that dir, its exit code and output kept for
//! assertions, and the local nodes it starts found through their pid files and `/proc`.
//!
//! Each [`Provisioned`] gets a loopback range of its own (`127.A.B.1`..), so tests run in
//! parallel, as nextest runs them, without meeting each other or the shipped environments
//! (127.0.1.x to 127.0.3.x). Dropping it SIGKILLs every process that still runs from its temp dir
//! (servers and `provision` commands alike), so a failing test leaves nothing behind.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use crate::api::Api;
use crate::node::{client_builder, keyhold_bin, provision_bin};
use crate::test_dir;

/// The repository's `environments/` directory, whose policy files the test environments name.
pub fn environments_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the repository root")
        .join("environments")
}

/// What the test environment file says beyond the fixed parts (fast timers, the shipped
/// policies, KV at `kv/`, an `admin` userpass login, a file audit device).
#[derive(Clone, Debug)]
pub struct EnvSpec {
    pub nodes: u8,
    pub revoke_root_token: bool,
    /// A `seal "awskms" { ... }` or `seal "transit" { ... }` block: init then makes recovery
    /// keys (`recovery_shares`) and the nodes unseal themselves.
    pub auto_seal: Option<String>,
}

impl EnvSpec {
    pub fn nodes(nodes: u8) -> EnvSpec {
        EnvSpec {
            nodes,
            revoke_root_token: true,
            auto_seal: None,
        }
    }
}

/// The environment file for `spec` on the loopback range starting at `base`, with nodes running
/// `keyhold`. Policy files are named by absolute path, so the file works from any directory.
pub fn environment_hcl(spec: &EnvSpec, base: Ipv4Addr, keyhold: &Path) -> String {
    let policies = environments_dir().join("policies");
    let mut hcl = String::new();
    let _ = writeln!(
        hcl,
        "# Written by the keyhold test harness (tests/src/provision.rs).\n"
    );
    let _ = writeln!(
        hcl,
        "provider \"local\" {{\n  address_base = \"{base}\"\n}}\n"
    );
    let _ = writeln!(hcl, "nodes = {}\n", spec.nodes);
    let _ = writeln!(hcl, "server {{\n  binary = \"{}\"\n}}\n", keyhold.display());
    let _ = writeln!(hcl, "listener {{\n  tls_min_version = \"tls13\"\n}}\n");
    let _ = writeln!(hcl, "raft {{\n  performance_multiplier = 1\n}}\n");
    let _ = writeln!(
        hcl,
        "autopilot {{\n  cleanup_dead_servers      = false\n  server_stabilization_time = \"2s\"\n  last_contact_threshold    = \"5s\"\n}}\n"
    );
    let _ = writeln!(hcl, "log {{\n  level = \"info\"\n}}\n");
    let shares = match &spec.auto_seal {
        Some(seal) => {
            let _ = writeln!(hcl, "{seal}\n");
            "recovery"
        }
        None => "secret",
    };
    let _ = writeln!(
        hcl,
        "init {{\n  {shares}_shares     = 3\n  {shares}_threshold  = 2\n  revoke_root_token = {}\n}}\n",
        spec.revoke_root_token
    );
    let _ = writeln!(hcl, "audit \"file\" {{\n  file_path = \"audit.log\"\n}}\n");
    for policy in ["vault-admin", "kv-apps", "kv-reader"] {
        let file = policies.join(format!("{policy}.hcl"));
        let _ = writeln!(
            hcl,
            "policy \"{policy}\" {{\n  file = \"{}\"\n}}\n",
            file.display()
        );
    }
    let _ = writeln!(hcl, "secrets \"kv\" {{\n  path = \"kv\"\n}}\n");
    let _ = writeln!(
        hcl,
        "auth \"userpass\" {{\n  user \"admin\" {{\n    policies = [\"vault-admin\", \"kv-apps\"]\n  }}\n}}"
    );
    hcl
}

/// Picks `127.A.B.1` for a test: `B` is the test's own `slot` (so two tests never share a range),
/// `A` comes from the pid (so two runs of the same test rarely do) and is moved on while any of
/// the range's API or cluster ports is taken. `A` is at least 10: 127.0.x.y is for the harness's
/// own clusters and the shipped environments.
pub fn loopback_base(slot: u8, nodes: u8) -> Result<Ipv4Addr> {
    let start = std::process::id() % 240;
    for attempt in 0..32 {
        let a = 10 + ((start + attempt) % 240) as u8;
        let free = (1..=nodes).all(|n| {
            [8200, 8201]
                .iter()
                .all(|port| TcpListener::bind((Ipv4Addr::new(127, a, slot, n), *port)).is_ok())
        });
        if free {
            return Ok(Ipv4Addr::new(127, a, slot, 1));
        }
    }
    bail!("no free loopback range 127.A.{slot}.1-{nodes} in 32 tries")
}

/// How long one `provision` command may take before the harness kills it: beyond its own
/// timeouts (a cluster that does not form gives up after 180 s).
const COMMAND_POLLS: u32 = 6000;
const COMMAND_POLL: Duration = Duration::from_millis(50);

/// One finished `provision` (or `keyhold`) command.
#[derive(Debug, Clone)]
pub struct Ran {
    pub what: String,
    /// None when a signal ended it.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Ran {
    /// Fails unless the command exited with `code`, showing what it printed.
    pub fn expect(self, code: i32) -> Result<Ran> {
        ensure!(
            self.code == Some(code),
            "{}: exit {:?}, wanted {code}\n--- stdout\n{}\n--- stderr\n{}",
            self.what,
            self.code,
            self.stdout,
            self.stderr
        );
        Ok(self)
    }

    /// stdout parsed as JSON.
    pub fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.stdout).with_context(|| {
            format!(
                "{}: stdout is not JSON\n--- stdout\n{}\n--- stderr\n{}",
                self.what, self.stdout, self.stderr
            )
        })
    }
}

/// A `provision` command running in the background; SIGKILLed if dropped while it runs.
pub struct Running {
    pub what: String,
    /// How many [`COMMAND_POLL`]s [`Running::wait`] waits before it kills the command.
    polls: u32,
    child: Option<Child>,
    stdout: PathBuf,
    stderr: PathBuf,
    started: Instant,
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Whether it has exited (reaping it if so).
    pub fn has_exited(&mut self) -> Result<bool> {
        match &mut self.child {
            Some(child) => Ok(child.try_wait()?.is_some()),
            None => Ok(true),
        }
    }

    /// Sends `signal` to the command alone.
    pub fn signal(&self, signal: libc::c_int) -> Result<()> {
        send_signal(self.pid(), signal)
    }

    /// Sends `signal` to the command's process group, as a terminal does on Ctrl-C.
    pub fn signal_group(&self, signal: libc::c_int) -> Result<()> {
        let pid = libc::pid_t::try_from(self.pid()).context("pid out of range")?;
        // SAFETY: kill(2) with a negative pid signals a process group; it touches no memory of
        // ours. The group is the one our child leads (spawned with process_group(0)) and the
        // child is not reaped yet, so the id cannot have been recycled.
        let rc = unsafe { libc::kill(-pid, signal) };
        ensure!(
            rc == 0,
            "kill(-{pid}, {signal}): {}",
            std::io::Error::last_os_error()
        );
        Ok(())
    }

    /// Waits (bounded: [`COMMAND_POLLS`] x [`COMMAND_POLL`], or the environment's own bound,
    /// [`Provisioned::set_command_limit`]) for the command to exit.
    pub async fn wait(mut self) -> Result<Ran> {
        let mut child = self.child.take().context("already waited on")?;
        for _ in 0..self.polls {
            if let Some(status) = child.try_wait()? {
                return Ok(Ran {
                    what: self.what.clone(),
                    code: status.code(),
                    stdout: fs::read_to_string(&self.stdout).unwrap_or_default(),
                    stderr: fs::read_to_string(&self.stderr).unwrap_or_default(),
                    elapsed: self.started.elapsed(),
                });
            }
            tokio::time::sleep(COMMAND_POLL).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        bail!(
            "{} still ran after {} polls; killed it\n--- stderr\n{}",
            self.what,
            self.polls,
            fs::read_to_string(&self.stderr).unwrap_or_default()
        )
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The unseal shares and initial root token, as `provision up --show-secrets` prints them.
#[derive(Debug, Clone)]
pub struct ShownSecrets {
    pub unseal_keys_b64: Vec<String>,
    pub root_token: String,
}

/// One test environment: its file, its state directory, and the nodes `provision` runs for it.
pub struct Provisioned {
    pub name: String,
    pub nodes: u8,
    pub base: Ipv4Addr,
    pub env_file: PathBuf,
    /// What `--state-dir` names; the environment's own state is [`Provisioned::env_dir`].
    pub state_dir: PathBuf,
    bin: PathBuf,
    /// Extra environment variables of every `provision` command (AWS credentials for moto).
    envs: Vec<(String, String)>,
    /// Dropped last: processes are killed in `drop` before their files go.
    dir: tempfile::TempDir,
    commands: u32,
    polls: u32,
}

impl Provisioned {
    /// Writes the environment `name` (`nodes`, fast timers) on a loopback range of its own
    /// (see [`loopback_base`]; `slot` is a constant of the calling test). Nothing is run.
    pub fn new(name: &str, slot: u8, spec: EnvSpec) -> Result<Provisioned> {
        let base = loopback_base(slot, spec.nodes)?;
        let hcl = environment_hcl(&spec, base, &keyhold_bin()?);
        Provisioned::with_text(name, spec.nodes, base, &hcl)
    }

    /// Like [`Provisioned::new`], with the environment file's text given (`base` and `nodes`
    /// must be what the text says).
    pub fn with_text(name: &str, nodes: u8, base: Ipv4Addr, hcl: &str) -> Result<Provisioned> {
        let dir = test_dir("keyhold-provision-")?;
        let env_file = dir.path().join(format!("{name}.hcl"));
        fs::write(&env_file, hcl).with_context(|| format!("write {}", env_file.display()))?;
        Ok(Provisioned {
            name: name.to_string(),
            nodes,
            base,
            env_file,
            state_dir: dir.path().join("state"),
            bin: provision_bin()?,
            envs: Vec::new(),
            dir,
            commands: 0,
            polls: COMMAND_POLLS,
        })
    }

    /// How long each later command may run before the harness kills it (hosts that are VMs
    /// under TCG need longer than the default).
    pub fn set_command_limit(&mut self, limit: Duration) {
        self.polls = (limit.as_millis() / COMMAND_POLL.as_millis()).max(1) as u32;
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Sets `key=value` in the environment of every later `provision` command.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.envs.push((key.to_string(), value.to_string()));
    }

    /// `STATE/ENV`: state.json, lock, tls/, secrets/, nodes/.
    pub fn env_dir(&self) -> PathBuf {
        self.state_dir.join(&self.name)
    }

    /// `keyhold-N`, 1-based as provision names them.
    pub fn node_name(&self, n: u8) -> String {
        format!("keyhold-{n}")
    }

    pub fn node_dir(&self, n: u8) -> PathBuf {
        self.env_dir().join("nodes").join(self.node_name(n))
    }

    pub fn node_addr(&self, n: u8) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base) + u32::from(n) - 1)
    }

    pub fn api_addr(&self, n: u8) -> String {
        format!("https://{}:8200", self.node_addr(n))
    }

    /// Where the server's own output goes (`provision` redirects it there).
    pub fn server_log(&self, n: u8) -> PathBuf {
        self.node_dir(n).join("var/log/keyhold/keyhold.out")
    }

    pub fn audit_log(&self, n: u8) -> PathBuf {
        self.node_dir(n).join("var/log/keyhold/audit.log")
    }

    pub fn pid_file(&self, n: u8) -> PathBuf {
        self.node_dir(n).join("run/keyhold.pid")
    }

    /// The pid in node `n`'s pid file, if there is one.
    pub fn node_pid(&self, n: u8) -> Option<u32> {
        fs::read_to_string(self.pid_file(n))
            .ok()
            .and_then(|t| t.trim().parse().ok())
    }

    pub fn ca_file(&self) -> PathBuf {
        self.env_dir().join("tls/ca.crt")
    }

    /// The command line for `provision ARGS --env FILE --state-dir DIR`.
    fn command(&self, args: &[&str]) -> Command {
        self.command_for(&self.env_file, args)
    }

    /// `provision ARGS --env ENV_FILE --state-dir DIR`: another environment in this one's
    /// state directory (and test directory, whose processes `drop` kills).
    fn command_for(&self, env_file: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .arg("--env")
            .arg(env_file)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .current_dir(self.dir.path())
            .env_remove("PROVISION_ENV")
            .env_remove("PROVISION_STATE_DIR")
            .env_remove("VAULT_ADDR")
            .env_remove("VAULT_TOKEN")
            .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null());
        cmd
    }

    /// Starts `provision ARGS` in the background, in a process group of its own (so a test can
    /// play the terminal's Ctrl-C on it); output goes to files in the test directory.
    pub fn spawn(&mut self, args: &[&str]) -> Result<Running> {
        let cmd = self.command(args);
        self.spawn_command(cmd, format!("provision {}", args.join(" ")))
    }

    fn spawn_command(&mut self, mut cmd: Command, what: String) -> Result<Running> {
        self.commands += 1;
        let out_dir = self.dir.path().join("commands");
        fs::create_dir_all(&out_dir)?;
        let stem: String = format!("{:03}-{what}", self.commands)
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(60)
            .collect();
        let stdout = out_dir.join(format!("{stem}.out"));
        let stderr = out_dir.join(format!("{stem}.err"));
        let child = cmd
            .stdout(File::create(&stdout)?)
            .stderr(File::create(&stderr)?)
            .process_group(0)
            .spawn()
            .with_context(|| format!("spawn {what}"))?;
        Ok(Running {
            what,
            polls: self.polls,
            child: Some(child),
            stdout,
            stderr,
            started: Instant::now(),
        })
    }

    /// Runs the `keyhold` CLI with the environment `vars` (what `eval "$(provision env)"` sets)
    /// and a private `HOME`, to completion (bounded).
    pub async fn keyhold(&mut self, vars: &BTreeMap<String, String>, args: &[&str]) -> Result<Ran> {
        let home = self.dir.path().join("home");
        fs::create_dir_all(&home)?;
        let mut cmd = Command::new(keyhold_bin()?);
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &home)
            .envs(vars)
            .stdin(Stdio::null());
        self.spawn_command(cmd, format!("keyhold {}", args.join(" ")))?
            .wait()
            .await
    }

    /// Runs `provision ARGS` to completion (bounded).
    pub async fn run(&mut self, args: &[&str]) -> Result<Ran> {
        self.spawn(args)?.wait().await
    }

    /// Runs `provision ARGS` on the environment in `env_file` (in this state directory) to
    /// completion (bounded).
    pub async fn run_env(&mut self, env_file: &Path, args: &[&str]) -> Result<Ran> {
        let cmd = self.command_for(env_file, args);
        self.spawn_command(cmd, format!("provision {}", args.join(" ")))?
            .wait()
            .await
    }

    /// A client of `addr` (`https://...`) trusting the CA in `ca_file`.
    pub fn api_at(&self, ca_file: &Path, addr: &str, token: Option<&str>) -> Result<Api> {
        let ca =
            fs::read_to_string(ca_file).with_context(|| format!("read {}", ca_file.display()))?;
        let http = client_builder(&ca)?.build()?;
        Ok(Api::new(http, addr.to_string()).with_token(token))
    }

    /// `provision up --json`, which must succeed; returns its JSON and how long it took.
    pub async fn up_json(&mut self) -> Result<(Value, Duration)> {
        let ran = self.run(&["up", "--json"]).await?.expect(0)?;
        Ok((ran.json()?, ran.elapsed))
    }

    /// `provision status --json`: its exit code and JSON.
    pub async fn status(&mut self) -> Result<(Option<i32>, Value)> {
        let ran = self.run(&["status", "--json"]).await?;
        let json = ran.json()?;
        Ok((ran.code, json))
    }

    /// The role `status --json` gives each node, in node order.
    pub async fn roles(&mut self) -> Result<Vec<String>> {
        let (_, status) = self.status().await?;
        roles_of(&status)
    }

    /// `provision env`, evaluated: VAULT_ADDR, VAULT_CACERT and VAULT_TOKEN.
    /// `upgrade --binary NEXT --with-load --json`, required to succeed with a clean workload
    /// ([`clean_load`]); its report.
    pub async fn upgrade_under_load(&mut self, next: &Path) -> Result<Value> {
        let report = self
            .run(&[
                "upgrade",
                "--binary",
                &next.display().to_string(),
                "--with-load",
                "--json",
            ])
            .await?
            .expect(0)?
            .json()?;
        clean_load(&report)?;
        Ok(report)
    }

    pub async fn env_vars(&mut self) -> Result<BTreeMap<String, String>> {
        let ran = self.run(&["env"]).await?.expect(0)?;
        parse_exports(&ran.stdout)
    }

    /// `provision up --show-secrets` (an `up` that changes nothing on a healthy cluster).
    pub async fn show_secrets(&mut self) -> Result<ShownSecrets> {
        let ran = self.run(&["up", "--show-secrets"]).await?.expect(0)?;
        let mut keys = Vec::new();
        let mut root = None;
        for line in ran.stdout.lines() {
            let key_line = line
                .strip_prefix("Unseal Key ")
                .or_else(|| line.strip_prefix("Recovery Key "));
            if let Some(rest) = key_line {
                let (_, key) = rest
                    .split_once(": ")
                    .context("Unseal/Recovery Key N: KEY")?;
                keys.push(key.trim().to_string());
            } else if let Some(token) = line.strip_prefix("Initial Root Token: ") {
                root = Some(token.trim().to_string());
            }
        }
        let root_token = root.with_context(|| format!("no root token in {}", ran.stdout))?;
        ensure!(!keys.is_empty(), "no unseal keys in {}", ran.stdout);
        Ok(ShownSecrets {
            unseal_keys_b64: keys,
            root_token,
        })
    }

    /// An API handle on node `n` trusting the environment's CA, with `token`.
    pub fn api(&self, n: u8, token: Option<&str>) -> Result<Api> {
        self.api_at(&self.ca_file(), &self.api_addr(n), token)
    }

    /// What `sys/health` of node `n` answers, or None when nothing answers within two seconds.
    pub async fn health_code(&self, n: u8) -> Option<u16> {
        let api = self.api(n, None).ok()?;
        api.http()
            .get(api.url("sys/health"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()
            .map(|r| r.status().as_u16())
    }

    /// SIGKILLs node `n` (by its pid file) and waits (bounded) until the process is gone.
    pub async fn kill9_node(&self, n: u8) -> Result<u32> {
        let pid = self
            .node_pid(n)
            .with_context(|| format!("{} has no pid file", self.node_name(n)))?;
        ensure!(
            self.processes().contains(&pid),
            "{}'s pid {pid} is not one of this test's processes",
            self.node_name(n)
        );
        send_signal(pid, libc::SIGKILL)?;
        wait_gone(&[pid], "the SIGKILLed node").await?;
        Ok(pid)
    }

    /// Live (not zombie) processes whose command line names this test's directory: the
    /// servers `provision` started, and any `provision` command still running.
    pub fn processes(&self) -> Vec<u32> {
        processes_naming(self.dir.path())
    }

    /// The server processes among [`Provisioned::processes`].
    pub fn server_processes(&self) -> Vec<u32> {
        let me = self.dir.path().to_string_lossy().into_owned();
        self.processes()
            .into_iter()
            .filter(|pid| {
                cmdline(*pid).is_some_and(|args| {
                    args.iter().any(|a| a == "server")
                        && args.iter().any(|a| {
                            a.to_string_lossy().starts_with("-config=")
                                && a.to_string_lossy().contains(&me)
                        })
                })
            })
            .collect()
    }

    /// The last `lines` lines of every node's server output, for failure messages.
    pub fn log_tails(&self, lines: usize) -> String {
        (1..=self.nodes)
            .map(|n| {
                let log = fs::read_to_string(self.server_log(n)).unwrap_or_default();
                let all: Vec<&str> = log.lines().collect();
                format!(
                    "--- {} ---\n{}",
                    self.node_name(n),
                    all[all.len().saturating_sub(lines)..].join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Provisioned {
    fn drop(&mut self) {
        let left = self.processes();
        for pid in &left {
            let _ = send_signal(*pid, libc::SIGKILL);
        }
        if !left.is_empty() {
            eprintln!(
                "{}: killed {} process(es) left running: {left:?}",
                self.name,
                left.len()
            );
            for _ in 0..100 {
                if self.processes().is_empty() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// The `role` of every node in `status --json` output, in node order.
pub fn roles_of(status: &Value) -> Result<Vec<String>> {
    status["nodes"]
        .as_array()
        .with_context(|| format!("no nodes in {status}"))?
        .iter()
        .map(|n| {
            n["role"]
                .as_str()
                .map(str::to_string)
                .with_context(|| format!("no role in {n}"))
        })
        .collect()
}

/// The step `name` in the JSON output of `provision up --json`.
pub fn step<'a>(up: &'a Value, name: &str) -> Result<&'a Value> {
    up["steps"]
        .as_array()
        .with_context(|| format!("no steps in {up}"))?
        .iter()
        .find(|s| s["step"] == serde_json::json!(name))
        .with_context(|| format!("no step {name:?} in {up}"))
}

/// Parses `export NAME=VALUE` lines as a POSIX shell's `eval` would (values bare or in single
/// quotes, `'\''` for a quote inside).
pub fn parse_exports(text: &str) -> Result<BTreeMap<String, String>> {
    let mut vars = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let assignment = line
            .strip_prefix("export ")
            .with_context(|| format!("not an export line: {line:?}"))?;
        let (name, raw) = assignment
            .split_once('=')
            .with_context(|| format!("no `=` in {line:?}"))?;
        let value = match raw.strip_prefix('\'') {
            Some(quoted) => quoted
                .strip_suffix('\'')
                .with_context(|| format!("unterminated quote in {line:?}"))?
                .replace("'\\''", "'"),
            None => raw.to_string(),
        };
        vars.insert(name.to_string(), value);
    }
    Ok(vars)
}

fn send_signal(pid: u32, signal: libc::c_int) -> Result<()> {
    let pid = libc::pid_t::try_from(pid).context("pid out of range")?;
    // SAFETY: kill(2) takes plain integers and touches no memory of ours. Callers name pids they
    // just found to be this test's processes (by command line), so a recycled pid is unlikely.
    let rc = unsafe { libc::kill(pid, signal) };
    ensure!(
        rc == 0,
        "kill({pid}, {signal}): {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

fn cmdline(pid: u32) -> Option<Vec<OsString>> {
    use std::os::unix::ffi::OsStringExt;
    let bytes = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        bytes
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| OsString::from_vec(a.to_vec()))
            .collect(),
    )
}

/// Whether `pid` runs and is not a zombie waiting to be reaped.
pub fn is_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Live processes (other than this one) with an argument that mentions a path under `dir`.
pub fn processes_naming(dir: &Path) -> Vec<u32> {
    let needle = format!("{}/", dir.display());
    let me = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me && is_alive(*pid))
        .filter(|pid| {
            cmdline(*pid).is_some_and(|args| {
                args.iter()
                    .any(|a| a.to_string_lossy().contains(needle.as_str()))
            })
        })
        .collect()
}

/// Waits (bounded: 200 x 50 ms) until none of `pids` is alive.
pub async fn wait_gone(pids: &[u32], what: &str) -> Result<()> {
    for _ in 0..200 {
        if !pids.iter().any(|p| is_alive(*p)) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let alive: Vec<u32> = pids.iter().copied().filter(|p| is_alive(*p)).collect();
    bail!("{what}: pids {alive:?} still alive after 200 polls")
}

/// Every regular file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in fs::read_dir(&d).with_context(|| format!("list {}", d.display()))? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                todo.push(entry.path());
            } else if kind.is_file() {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The workload's figures in a workflow's `--json` report (its `load`): printed, and none
/// failed, none lost, and it ran with its writes read back.
pub fn clean_load(report: &Value) -> Result<()> {
    let load = &report["load"];
    println!(
        "workload: {} operations, {} failed, {} lost, longest write gap {} ms, p99 {} ms",
        load["operations"],
        load["failures"],
        load["lost_writes"],
        load["longest_write_gap_ms"],
        load["p99_ms"]
    );
    ensure!(
        load["failures"] == serde_json::json!(0) && load["lost_writes"] == serde_json::json!(0),
        "the workload during the workflow: {load}"
    );
    ensure!(
        load["operations"].as_u64().unwrap_or(0) > 0 && load["verified"].as_u64().unwrap_or(0) > 0,
        "the workload ran and its writes were read back: {load}"
    );
    Ok(())
}

/// The figure of `systemd-analyze security UNIT`'s "Overall exposure level for UNIT: N" line.
pub fn exposure_level(output: &str, unit: &str) -> Option<f64> {
    let marker = format!("Overall exposure level for {unit}:");
    output
        .lines()
        .find_map(|l| l.split_once(marker.as_str()))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|figure| figure.parse().ok())
}

/// A new ed25519 key pair at `path` (and `path.pub`), no passphrase, for a test's SSH logins.
pub fn ssh_keygen(path: &Path) -> Result<()> {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "keyhold-test", "-f"])
        .arg(path)
        .output()
        .context("run ssh-keygen")?;
    ensure!(out.status.success(), "ssh-keygen: {out:?}");
    Ok(())
}
