//! `provision render`: every file each node (or a systemd host) would receive, into a folder.

use super::*;

pub fn run(env: EnvArg, out: PathBuf, host_layout: bool, state_dir: &Path) -> Result<u8, Failure> {
    let d = load(&env, state_dir)?;
    let files = workflows::inspect::render_to(&d, &out, host_layout)?;
    for f in &files {
        println!("{}", f.display());
    }
    eprintln!(
        "Rendered {} file(s) for {} node(s), the monitoring files and the operator host's units into {} (TLS keys are not rendered: `provision up` issues them).",
        files.len(),
        d.nodes.len(),
        out.display()
    );
    Ok(0)
}
