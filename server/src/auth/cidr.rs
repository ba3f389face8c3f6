//! CIDR blocks for `token_bound_cidrs` and `secret_id_bound_cidrs`: parsed
//! when a role or user is written, checked against the caller's address on
//! login.

use std::net::IpAddr;

use crate::error::{Error, Result};

/// An address block such as `10.0.0.0/8` or `::1/128`; a bare address is a
/// single-host block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Self> {
        let s = s.trim();
        let bad = || Error::invalid(format!("invalid CIDR block {s:?}"));
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let network: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
            None => max,
        };
        Ok(Cidr { network, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 client reached over a dual-stack socket shows up mapped.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Validates a list of CIDR strings as stored on a role or user.
pub fn validate_all(blocks: &[String]) -> Result<()> {
    blocks.iter().try_for_each(|b| Cidr::parse(b).map(|_| ()))
}

/// Whether `addr` may log in under `blocks`: an empty list or an unknown
/// address (no socket, e.g. an in-process call) allows it.
pub fn allows(blocks: &[String], addr: Option<IpAddr>) -> bool {
    let Some(addr) = addr else { return true };
    if blocks.is_empty() {
        return true;
    }
    blocks
        .iter()
        .filter_map(|b| Cidr::parse(b).ok())
        .any(|c| c.contains(addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn membership() {
        let cases = [
            ("10.0.0.0/8", "10.1.2.3", true),
            ("10.0.0.0/8", "11.0.0.1", false),
            ("127.0.0.1", "127.0.0.1", true),
            ("127.0.0.1", "127.0.0.2", false),
            ("0.0.0.0/0", "8.8.8.8", true),
            ("::1/128", "::1", true),
            ("fd00::/8", "fd12::1", true),
            ("10.0.0.0/8", "::ffff:10.0.0.1", true),
            ("10.0.0.0/8", "::1", false),
        ];
        for (block, ip, want) in cases {
            let c = Cidr::parse(block).unwrap();
            assert_eq!(c.contains(ip.parse().unwrap()), want, "{block} {ip}");
        }
        for bad in ["10.0.0.0/33", "nope", "10.0.0/8", "::1/129"] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }
}
