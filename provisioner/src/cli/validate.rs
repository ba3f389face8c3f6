//! `provision validate`: check an environment file and say what is wrong with it.

use super::*;

pub fn run(env: EnvArg) -> Result<u8, Failure> {
    let file = environment::resolve(&env.env);
    let e = environment::load(&file).map_err(|e| Failure::Invalid(e.to_string()))?;
    println!(
        "{}: environment {:?} is valid ({} nodes, provider {})",
        file.display(),
        e.name,
        e.nodes,
        e.provider.kind()
    );
    Ok(0)
}
