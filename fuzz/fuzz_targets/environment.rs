//! The provisioner's environment decoder (`provisioner::environment::parse_str`) on any text,
//! read as if it were `environments/fuzz.hcl` (so its policy files resolve against the real
//! `environments/policies/`). Never a panic; an error names the file and a line inside the
//! text; an environment that decodes renders every file of its first node, whose server config
//! keyhold's own parser accepts (decoding must refuse what could not be deployed).
#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use provisioner::environment::parse_str;
use provisioner::render::{Layout, NodeSpec, Renderer};

const FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../environments/fuzz.hcl");

fn renderer() -> &'static Renderer {
    static RENDERER: OnceLock<Renderer> = OnceLock::new();
    RENDERER.get_or_init(|| Renderer::new().expect("the templates parse"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = match parse_str(Path::new(FILE), text) {
        Ok(env) => env,
        Err(e) => {
            assert_eq!(e.location.file, FILE, "{e}");
            let lines = text.split('\n').count();
            assert!(
                e.location.line <= lines,
                "line {} of {lines}: {e}",
                e.location.line
            );
            return;
        }
    };
    let addresses: Vec<IpAddr> = (1..=env.nodes)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 10, i as u8)))
        .collect();
    let nodes = NodeSpec::cluster(&env, &addresses, |name| {
        Layout::local(PathBuf::from("/srv/provision/fuzz/nodes").join(name))
    })
    .expect("a decoded environment's nodes");
    if let Err(e) = renderer().render_node(&env, &nodes[0]) {
        panic!("a decoded environment does not render: {e:#}");
    }
});
