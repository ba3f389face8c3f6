//! `provision image build`: progress on stderr, what was built (or found) on stdout.

use super::*;
use crate::image;

pub async fn build(
    definition: PathBuf,
    out: Option<PathBuf>,
    binary: Option<PathBuf>,
    force: bool,
    json: bool,
) -> Result<u8, Failure> {
    // The build mounts scratch space and /proc in the image: in a mount namespace of its own,
    // so nothing stays mounted if it is interrupted.
    if std::env::var_os(image::NAMESPACE_ENV).is_none() {
        let exe = std::env::current_exe().map_err(anyhow::Error::from)?;
        let status = std::process::Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--"])
            .arg(exe)
            .args(std::env::args_os().skip(1))
            .env(image::NAMESPACE_ENV, "1")
            .status()
            .map_err(|e| {
                Failure::Failed(anyhow::anyhow!(
                    "run the build in a mount namespace of its own (unshare, util-linux;                      needs root): {e}"
                ))
            })?;
        return Ok(status.code().map_or(EXIT_FAILED, |c| c as u8));
    }
    let def =
        image::definition::load(&definition).map_err(|e| Failure::Invalid(format!("{e:#}")))?;
    let binary = match binary {
        Some(path) => path,
        None => std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|d| d.join("keyhold")))
            .filter(|p| p.is_file())
            .ok_or_else(|| {
                Failure::Invalid(
                    "no keyhold binary beside provision: build it (cargo build --release) or \
                     pass --binary PATH"
                        .to_string(),
                )
            })?,
    };
    let opts = image::BuildOptions {
        out: out.unwrap_or_else(image::default_out),
        binary,
        force,
    };
    let progress = |line: &str| eprintln!("==> {line}");
    let built = image::build(&def, &opts, &progress).await?;
    if json {
        let mut value = serde_json::to_value(&built).expect("JSON");
        value["cached"] = built.cached.into();
        value["dir"] = built.dir.display().to_string().into();
        println!("{}", serde_json::to_string_pretty(&value).expect("JSON"));
    } else {
        println!(
            "{} {}\n  disk:    {}\n  kernel:  {}\n  initrd:  {}\n  rootfs:  {}\n  \
             checks:  {}/{} passed\n  manifest: {}",
            built.id,
            if built.cached {
                "(unchanged, not rebuilt)"
            } else {
                "built"
            },
            built.path(&built.disk).display(),
            built.path(&built.kernel).display(),
            built.path(&built.initrd).display(),
            built.path(&built.rootfs).display(),
            built.checks.iter().filter(|c| c.ok).count(),
            built.checks.len(),
            opts.out.join("manifest.json").display(),
        );
    }
    Ok(0)
}
