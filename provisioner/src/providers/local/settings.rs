//! The local provider's block of an environment file, `provider "local" { address_base }`:
//! decoded and checked here, by the provider that uses it.

use std::net::Ipv4Addr;

use keyhold_config::section::Section;
use keyhold_config::syntax::{Node, Source};
use keyhold_config::ConfigError;
use serde::Serialize;

/// `provider "local" { ... }`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LocalSettings {
    /// The first node's address; node N listens on this address plus N-1 (127.0.1.1, .2, ...).
    pub address_base: Ipv4Addr,
}

impl Default for LocalSettings {
    fn default() -> Self {
        LocalSettings {
            address_base: Ipv4Addr::new(127, 0, 1, 1),
        }
    }
}

impl LocalSettings {
    /// Decodes and checks the block's body.
    pub fn decode(src: &Source<'_>, body: &Node) -> Result<LocalSettings, ConfigError> {
        let s = Section::new(
            src,
            body,
            "in provider \"local\"",
            "provider.local",
            &["address_base"],
            &[],
        )?;
        let address_base = match s.string("address_base")? {
            None => LocalSettings::default().address_base,
            Some(text) => match text.parse::<Ipv4Addr>() {
                Ok(ip) if ip.is_loopback() && ip.octets()[3] != 0 => ip,
                _ => {
                    return Err(s.value_error(
                        "address_base",
                        format!(
                            "{text:?} is not a usable loopback address; the local provider \
                             puts node N on this address plus N-1, e.g. \"127.0.1.1\""
                        ),
                    ))
                }
            },
        };
        Ok(LocalSettings { address_base })
    }
}
