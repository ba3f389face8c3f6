//! Go-style flags to clap-style flags. The `vault` CLI parses flags with Go's `flag` package,
//! which takes `-name=value`, `-name value` and `--name`, and booleans as `-name=true|false`.
//! Clap wants `--name`, so argv is rewritten before clap sees it. [`dashless_flags`] also
//! accepts the dash-less `name=value` flags some runbooks give `autopilot set-config`.

use std::collections::HashSet;
use std::ffi::OsString;

/// Rewrites `args` (without the program name):
/// - `-name...` (a dash, then a letter, more than one character) becomes `--name...`; a lone
///   `-`, `-h`, negative numbers and everything after `--` are left alone;
/// - a boolean flag given a value (`--name=true`, `--name=false`, Go's other spellings) becomes
///   `--name` or is dropped, since clap's switches take no value.
pub fn preprocess(args: Vec<OsString>, bool_flags: &HashSet<String>) -> Vec<OsString> {
    let mut out = Vec::with_capacity(args.len());
    let mut rest = false;
    for arg in args {
        if rest {
            out.push(arg);
            continue;
        }
        let Some(s) = arg.to_str() else {
            out.push(arg);
            continue;
        };
        if s == "--" {
            rest = true;
            out.push(arg);
            continue;
        }
        let long = match s.strip_prefix('-') {
            Some(tail)
                if !tail.starts_with('-')
                    && tail.starts_with(|c: char| c.is_ascii_alphabetic())
                    && tail != "h" =>
            {
                format!("--{tail}")
            }
            _ if s.starts_with("--") && s.len() > 2 => s.to_string(),
            _ => {
                out.push(arg);
                continue;
            }
        };
        if let Some((name, value)) = long[2..].split_once('=') {
            if bool_flags.contains(name) {
                match crate::client::parse_bool(value) {
                    Some(true) => out.push(format!("--{name}").into()),
                    Some(false) => {}
                    // Leave it for clap to reject with its own message.
                    None => out.push(long.into()),
                }
                continue;
            }
        }
        out.push(long.into());
    }
    out
}

/// After the subcommand words `path`, a word `name=value` whose `name` is one of `flags`
/// becomes `--name=value`. Published runbooks write `vault operator raft autopilot set-config
/// cleanup-dead-servers=true min-quorum=3`, which vault itself rejects; keyhold accepts it.
/// Flags before and between the subcommand words are skipped (`value_flags`' next word with
/// them); nothing after `--` is touched.
pub fn dashless_flags(
    args: Vec<OsString>,
    path: &[&str],
    flags: &HashSet<String>,
    bool_flags: &HashSet<String>,
) -> Vec<OsString> {
    let mut matched = 0;
    let mut skip_value = false;
    let mut out = Vec::with_capacity(args.len());
    let mut iter = args.into_iter();
    for arg in iter.by_ref() {
        let word = arg.to_str().unwrap_or_default().to_string();
        out.push(arg);
        if skip_value {
            skip_value = false;
            continue;
        }
        if word == "--" {
            break;
        }
        if let Some(name) = word.strip_prefix("--") {
            skip_value = !name.contains('=') && !bool_flags.contains(name);
            continue;
        }
        if matched < path.len() && word == path[matched] {
            matched += 1;
            if matched == path.len() {
                break;
            }
            continue;
        }
        // Some other command.
        out.extend(iter);
        return out;
    }
    if matched < path.len() {
        out.extend(iter);
        return out;
    }
    let mut rest = false;
    for arg in iter {
        rest |= arg == "--";
        let rewritten = match arg.to_str() {
            Some(word) if !rest && !word.starts_with('-') => word
                .split_once('=')
                .filter(|(name, _)| flags.contains(*name))
                .map(|_| OsString::from(format!("--{word}"))),
            _ => None,
        };
        out.push(rewritten.unwrap_or(arg));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expect: &str) {
        let bools: HashSet<String> = ["force", "f", "orphan", "detailed", "dev", "tls-skip-verify"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let args = input.split(' ').map(OsString::from).collect();
        let got: Vec<String> = preprocess(args, &bools)
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(got.join(" "), expect, "input: {input}");
    }

    #[test]
    fn dashless_flags_after_their_subcommand() {
        let path = ["operator", "raft", "autopilot", "set-config"];
        let flags: HashSet<String> = ["min-quorum", "cleanup-dead-servers"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let bools: HashSet<String> = ["tls-skip-verify".to_string()].into();
        for (input, expect) in [
            (
                "operator raft autopilot set-config cleanup-dead-servers=true min-quorum=3",
                "operator raft autopilot set-config --cleanup-dead-servers=true --min-quorum=3",
            ),
            (
                "--address http://x:8200 --tls-skip-verify operator raft autopilot set-config min-quorum=3",
                "--address http://x:8200 --tls-skip-verify operator raft autopilot set-config --min-quorum=3",
            ),
            (
                "operator raft autopilot set-config --min-quorum=3 other=1 -- min-quorum=5",
                "operator raft autopilot set-config --min-quorum=3 other=1 -- min-quorum=5",
            ),
            ("kv put secret/x min-quorum=3", "kv put secret/x min-quorum=3"),
            (
                "operator raft autopilot get-config min-quorum=3",
                "operator raft autopilot get-config min-quorum=3",
            ),
        ] {
            let args = input.split(' ').map(OsString::from).collect();
            let got: Vec<String> = dashless_flags(args, &path, &flags, &bools)
                .into_iter()
                .map(|a| a.into_string().unwrap())
                .collect();
            assert_eq!(got.join(" "), expect, "input: {input}");
        }
    }

    #[test]
    fn go_flags_become_clap_flags() {
        let cases = [
            (
                "server -config=/etc/vault.hcl",
                "server --config=/etc/vault.hcl",
            ),
            (
                "server -config /etc/a.hcl -config=/etc/b.hcl",
                "server --config /etc/a.hcl --config=/etc/b.hcl",
            ),
            (
                "operator init -key-shares=5 -key-threshold=3",
                "operator init --key-shares=5 --key-threshold=3",
            ),
            (
                "read -format=json sys/metrics",
                "read --format=json sys/metrics",
            ),
            (
                "server -dev -dev-root-token-id=root",
                "server --dev --dev-root-token-id=root",
            ),
            (
                "kv put --mount=secret foo a=b",
                "kv put --mount=secret foo a=b",
            ),
            (
                "write -f sys/replication/dr/primary/enable",
                "write --f sys/replication/dr/primary/enable",
            ),
            ("policy write p -", "policy write p -"),
            ("token renew -increment -1", "token renew --increment -1"),
            (
                "kv put secret/foo -- -a=b -c",
                "kv put secret/foo -- -a=b -c",
            ),
            ("status -h", "status -h"),
            (
                "token create -orphan=true -detailed=false",
                "token create --orphan",
            ),
            ("status -tls-skip-verify=1", "status --tls-skip-verify"),
            ("token create -orphan=maybe", "token create --orphan=maybe"),
            (
                "token create -renewable=false",
                "token create --renewable=false",
            ),
            ("write secret/foo value=-abc", "write secret/foo value=-abc"),
        ];
        for (input, expect) in cases {
            check(input, expect);
        }
    }
}
