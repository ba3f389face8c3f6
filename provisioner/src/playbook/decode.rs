//! A playbook file decoded into steps, in the order written. Mistakes are errors naming the
//! file, line and key (the shared HCL reader and `Section`, as for environment files).

use keyhold_config::section::Section;
use keyhold_config::syntax::{self, Node, Source, Value};
use keyhold_config::ConfigError;

use super::{Action, Content, Playbook, Step, UnitState};
use crate::providers::Owner;

const KINDS: &[&str] = &[
    "command",
    "directory",
    "file",
    "package",
    "sysctl",
    "systemd",
    "template",
    "user",
];

/// Parses playbook `text`, read from `file` (for messages).
pub fn parse_str(file: &str, text: &str) -> Result<Playbook, ConfigError> {
    let src = Source::new(file, text);
    let root = syntax::parse(&src, text, false)?;
    let mut steps = Vec::new();
    for entry in &root.entries {
        let kind = entry.key.as_str();
        if !KINDS.contains(&kind) {
            return Err(src.error(
                entry.key_pos,
                kind,
                format!(
                    "unknown step kind {kind:?}; a playbook's steps are: {}",
                    KINDS.join(", ")
                ),
            ));
        }
        let labelled = match &entry.value.value {
            Value::Object(object) if !object.is_block_body => object,
            _ => {
                return Err(src.error(
                    entry.key_pos,
                    kind,
                    format!("a {kind} step needs a label: {kind} \"NAME\" {{ ... }}"),
                ))
            }
        };
        for label in &labelled.entries {
            let bodies: Vec<&Node> = match &label.value.value {
                Value::List(items) => items.iter().collect(),
                _ => vec![&label.value],
            };
            for body in bodies {
                let at = src.location(entry.key_pos);
                let action = decode_step(&src, kind, &label.key, body)?;
                steps.push(Step {
                    at: format!("{}:{}", at.file, at.line),
                    action,
                });
            }
        }
    }
    let name = std::path::Path::new(file)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("playbook")
        .to_string();
    Ok(Playbook { name, steps })
}

fn mode(s: &Section<'_, '_>, default: Option<u32>) -> Result<Option<u32>, ConfigError> {
    match s.string("mode")? {
        None => Ok(default),
        Some(text) => match u32::from_str_radix(&text, 8) {
            Ok(m) if m <= 0o7777 && text.len() >= 3 => Ok(Some(m)),
            _ => Err(s.value_error(
                "mode",
                format!("{text:?} is not an octal file mode; write it as a string, e.g. \"0640\""),
            )),
        },
    }
}

fn owner(s: &Section<'_, '_>) -> Result<Option<Owner>, ConfigError> {
    let user = s.string("owner")?;
    let group = s.string("group")?;
    Ok(match (user, group) {
        (None, None) => None,
        (Some(user), group) => Some(Owner {
            group: group.unwrap_or_else(|| user.clone()),
            user,
        }),
        (None, Some(_)) => {
            return Err(s.value_error("group", "a group needs an owner beside it"));
        }
    })
}

fn absolute(
    s: &Section<'_, '_>,
    kind: &str,
    label: &str,
) -> Result<std::path::PathBuf, ConfigError> {
    if !label.starts_with('/') || label.contains("/../") || label.ends_with("/..") {
        return Err(s.value_error(
            kind,
            format!("{label:?} is not an absolute path on the host (e.g. \"/opt/keyhold/data\")"),
        ));
    }
    Ok(label.into())
}

fn argv(s: &Section<'_, '_>, key: &str) -> Result<Option<Vec<String>>, ConfigError> {
    let list = s.string_list(key)?;
    if list.as_ref().is_some_and(|l| l.is_empty()) {
        return Err(s.value_error(key, "give the program and its arguments, e.g. [\"true\"]"));
    }
    Ok(list)
}

fn decode_step(
    src: &Source<'_>,
    kind: &str,
    label: &str,
    body: &Node,
) -> Result<Action, ConfigError> {
    let place = format!("in {kind} {label:?}");
    let allowed: &[&str] = match kind {
        "user" => &["home", "shell", "system"],
        "directory" => &["group", "mode", "owner"],
        "file" => &["content", "group", "mode", "owner", "source"],
        "template" => &["group", "mode", "owner"],
        "systemd" => &["daemon_reload", "enabled", "masked", "state"],
        "package" => &["state"],
        "sysctl" => &["file", "value"],
        "command" => &["argv", "creates", "unless"],
        _ => unreachable!("kinds are checked by the caller"),
    };
    let s = Section::new(src, body, place, kind.to_string(), allowed, &[])?;
    Ok(match kind {
        "user" => Action::User {
            name: label.to_string(),
            system: s.bool("system")?.unwrap_or(true),
            home: s.string("home")?.unwrap_or_else(|| "/nonexistent".into()),
            shell: s
                .string("shell")?
                .unwrap_or_else(|| "/usr/sbin/nologin".into()),
        },
        "directory" => Action::Directory {
            path: absolute(&s, kind, label)?,
            mode: mode(&s, Some(0o755))?.expect("a default"),
            owner: owner(&s)?,
        },
        "file" => {
            let content =
                match (s.string("content")?, s.string("source")?) {
                    (Some(text), None) => Content::Text(text),
                    (None, Some(source)) => Content::Source(source),
                    _ => return Err(s.value_error(
                        "content",
                        "a file step takes content = \"...\" or source = \"PATH\" (one of them)",
                    )),
                };
            Action::File {
                path: absolute(&s, kind, label)?,
                content,
                mode: mode(&s, Some(0o644))?.expect("a default"),
                owner: owner(&s)?,
            }
        }
        "template" => Action::Template {
            name: label.to_string(),
            mode: mode(&s, None)?,
            owner: owner(&s)?,
        },
        "systemd" => {
            let state = match s.string("state")?.as_deref() {
                None => None,
                Some("started") => Some(UnitState::Started),
                Some("stopped") => Some(UnitState::Stopped),
                Some("restarted") => Some(UnitState::Restarted),
                Some("reloaded") => Some(UnitState::Reloaded),
                Some(other) => {
                    return Err(s.value_error(
                        "state",
                        format!("{other:?}: use started, stopped, restarted or reloaded"),
                    ))
                }
            };
            Action::Systemd {
                unit: label.to_string(),
                daemon_reload: s.bool("daemon_reload")?.unwrap_or(false),
                enabled: s.bool("enabled")?,
                masked: s.bool("masked")?,
                state,
            }
        }
        "package" => {
            let present = match s.string("state")?.as_deref() {
                None | Some("present") => true,
                Some("absent") => false,
                Some(other) => {
                    return Err(s.value_error(
                        "state",
                        format!("{other:?}: use present (the default) or absent"),
                    ))
                }
            };
            if label.is_empty()
                || !label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
            {
                return Err(s.value_error(
                    "package",
                    format!("{label:?} is not a Debian package name (e.g. \"auditd\")"),
                ));
            }
            Action::Package {
                name: label.to_string(),
                present,
            }
        }
        "sysctl" => {
            if label.is_empty()
                || !label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            {
                return Err(s.value_error(
                    "sysctl",
                    format!("{label:?} is not a kernel setting (e.g. \"fs.suid_dumpable\")"),
                ));
            }
            let value = s.required_string("value", "the setting's value, e.g. \"0\"")?;
            if value.contains('\n') {
                return Err(s.value_error("value", "a kernel setting's value is one line"));
            }
            let file = match s.string("file")? {
                Some(path) => absolute(&s, "file", &path)?,
                None => super::SYSCTL_FILE.into(),
            };
            Action::Sysctl {
                key: label.to_string(),
                value,
                file,
            }
        }
        "command" => {
            let creates = match s.string("creates")? {
                Some(path) => Some(absolute(&s, "creates", &path)?),
                None => None,
            };
            Action::Command {
                name: label.to_string(),
                argv: argv(&s, "argv")?.ok_or_else(|| {
                    s.missing("argv", "the program and its arguments, e.g. [\"true\"]")
                })?,
                creates,
                unless: argv(&s, "unless")?,
            }
        }
        _ => unreachable!("kinds are checked by the caller"),
    })
}
