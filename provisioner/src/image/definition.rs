//! Image definitions (`images/NAME.hcl`): what the builder starts from (a debootstrap suite and
//! variant), what it installs with the base, the playbooks it runs in the image, and the disk
//! it makes. Mistakes are errors naming the file, line and key, as in environment files.
//!
//! ```hcl
//! image "debian-bookworm-keyhold" {
//!   base {
//!     suite   = "bookworm"
//!     variant = "minbase"
//!     mirror  = "http://deb.debian.org/debian"
//!   }
//!   packages  = ["systemd-sysv", "openssh-server", "linux-image-amd64"]
//!   playbooks = ["image-base", "harden-host", "install-server"]
//!   disk_size = "3G"
//! }
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use keyhold_config::section::Section;
use keyhold_config::syntax::{self, Node, Source, Value};
use keyhold_config::ConfigError;

/// A parsed image definition.
#[derive(Debug, Clone, PartialEq)]
pub struct Definition {
    pub name: String,
    /// The file it was read from, and its text (part of the image's input hash).
    pub file: PathBuf,
    pub text: String,
    pub suite: String,
    pub variant: String,
    pub mirror: String,
    /// Installed by debootstrap with the base, sorted.
    pub packages: Vec<String>,
    /// Run in order in the image: a shipped playbook's name, or a path to a `.hcl` file
    /// (relative to the current directory).
    pub playbooks: Vec<String>,
    pub disk_size_mib: u64,
}

const VARIANTS: &[&str] = &["minbase", "buildd", "fakechroot", "-"];

/// Reads and checks an image definition.
pub fn load(path: &Path) -> Result<Definition> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "read image definition {} (images/NAME.hcl; the repository ships \
             images/debian-bookworm-keyhold.hcl)",
            path.display()
        )
    })?;
    parse_str(path, &text).map_err(|e| anyhow::anyhow!("{e}"))
}

pub fn parse_str(path: &Path, text: &str) -> Result<Definition, ConfigError> {
    let file = path.display().to_string();
    let src = Source::new(&file, text);
    let root = Node {
        value: Value::Object(syntax::parse(&src, text, false)?),
        pos: 0,
    };
    let top = Section::new(&src, &root, "at the top level", "", &["image"], &[])?;
    let images = top.labelled("image", "image \"debian-bookworm-keyhold\" { ... }")?;
    let [image] = images.as_slice() else {
        return Err(src.error(
            root.pos,
            "image",
            format!(
                "an image definition has exactly one image \"NAME\" {{ ... }} block ({} found)",
                images.len()
            ),
        ));
    };
    let name = image.label.to_string();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        return Err(src.error(
            image.label_pos,
            "image",
            format!("{name:?}: an image name is letters, digits, '-', '_' and '.'"),
        ));
    }
    let s = Section::new(
        &src,
        image.body,
        format!("in image {name:?}"),
        format!("image.{name}"),
        &["base", "disk_size", "packages", "playbooks"],
        &[],
    )?;
    let bases = s.blocks("base")?;
    let [base] = bases.as_slice() else {
        return Err(s.missing(
            "base",
            "a block: base { suite = \"bookworm\", variant = \"minbase\" }",
        ));
    };
    let b = Section::new(
        &src,
        base,
        format!("in image {name:?} base"),
        format!("image.{name}.base"),
        &["mirror", "suite", "variant"],
        &[],
    )?;
    let suite = b.required_string("suite", "a Debian suite, e.g. \"bookworm\"")?;
    if !suite.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(b.value_error("suite", format!("{suite:?} is not a Debian suite name")));
    }
    let variant = b.string("variant")?.unwrap_or_else(|| "minbase".into());
    if !VARIANTS.contains(&variant.as_str()) {
        return Err(b.value_error(
            "variant",
            format!(
                "{variant:?}: debootstrap's variants are {}",
                VARIANTS.join(", ")
            ),
        ));
    }
    let mirror = b
        .string("mirror")?
        .unwrap_or_else(|| "http://deb.debian.org/debian".into());
    if !(mirror.starts_with("http://") || mirror.starts_with("https://")) {
        return Err(b.value_error("mirror", format!("{mirror:?} is not an http(s) URL")));
    }
    let mut packages = s.string_list("packages")?.unwrap_or_default();
    for p in &packages {
        if p.is_empty()
            || !p
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        {
            return Err(s.value_error("packages", format!("{p:?} is not a Debian package name")));
        }
    }
    packages.sort();
    packages.dedup();
    let playbooks = s.string_list("playbooks")?.unwrap_or_default();
    let disk_size_mib = match s.string("disk_size")? {
        None => 3 * 1024,
        Some(size) => parse_size(&size).ok_or_else(|| {
            s.value_error(
                "disk_size",
                format!("{size:?}: write a size such as \"3G\" or \"2048M\" (at least 512M)"),
            )
        })?,
    };
    Ok(Definition {
        name,
        file: path.to_path_buf(),
        text: text.to_string(),
        suite,
        variant,
        mirror,
        packages,
        playbooks,
        disk_size_mib,
    })
}

/// `3G`, `2048M` in MiB; at least 512 MiB, at most 1 TiB.
fn parse_size(text: &str) -> Option<u64> {
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit())?);
    let number: u64 = number.parse().ok()?;
    let mib = match unit {
        "M" | "MiB" => number,
        "G" | "GiB" => number.checked_mul(1024)?,
        _ => return None,
    };
    (512..=1024 * 1024).contains(&mib).then_some(mib)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_definition_parses() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../images/debian-bookworm-keyhold.hcl"
        ));
        let d = load(path).unwrap();
        assert_eq!(d.name, "debian-bookworm-keyhold");
        assert_eq!(
            (d.suite.as_str(), d.variant.as_str()),
            ("bookworm", "minbase")
        );
        for p in [
            "openssh-server",
            "auditd",
            "systemd-timesyncd",
            "linux-image-amd64",
        ] {
            assert!(d.packages.iter().any(|x| x == p), "{p} in {:?}", d.packages);
        }
        assert!(d.playbooks.iter().any(|p| p == "harden-host"));
        assert!(d.playbooks.iter().any(|p| p == "install-server"));
        for name in &d.playbooks {
            crate::playbook::Playbook::shipped(name).unwrap();
        }
    }

    #[test]
    fn mistakes_name_the_line_and_what_to_write() {
        let cases: &[(&str, &str)] = &[
            ("", "exactly one image"),
            (
                "image \"a b\" {\n base { suite = \"bookworm\" }\n}",
                "letters, digits",
            ),
            ("image \"x\" {\n}", "base is required"),
            (
                "image \"x\" {\n base { suite = \"bookworm\"\n variant = \"huge\" }\n}",
                "debootstrap's variants",
            ),
            (
                "image \"x\" {\n base { suite = \"bookworm\" }\n disk_size = \"3T\"\n}",
                "write a size",
            ),
            (
                "image \"x\" {\n base { suite = \"bookworm\" }\n packages = [\"a;b\"]\n}",
                "not a Debian package",
            ),
            (
                "image \"x\" {\n base { suite = \"bookworm\" }\n packagez = []\n}",
                "unknown key \"packagez\"",
            ),
        ];
        for (text, want) in cases {
            let err = parse_str(Path::new("images/x.hcl"), text)
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{text:?}: {err}");
            assert!(err.contains("images/x.hcl"), "{err}");
        }
        assert_eq!(parse_size("2048M"), Some(2048));
        assert_eq!(parse_size("3G"), Some(3072));
        assert_eq!(parse_size("100M"), None);
    }
}
