//! Playbooks: the shipped ones parse; mistakes name file, line and key; applied to a host
//! (here a local root directory) a playbook makes what it says, reports each step changed or
//! unchanged, plans exactly what it then does, and changes nothing the second time.

use std::collections::BTreeMap;
use std::path::Path;

use super::*;
use crate::providers::local::LocalHost;
use crate::render::RenderedFile;

#[test]
fn the_shipped_playbooks_parse() {
    let p = Playbook::shipped("install-server").unwrap();
    assert_eq!(p.name, "install-server");
    assert!(
        matches!(&p.steps[0].action, Action::User { name, system: true, .. } if name == "keyhold")
    );
    assert!(
        p.steps[0].at.starts_with("playbooks/install-server.hcl:"),
        "{}",
        p.steps[0].at
    );
    let data = p
        .steps
        .iter()
        .find_map(|s| match &s.action {
            Action::Directory { path, mode, owner } if path == Path::new("/opt/keyhold/data") => {
                Some((*mode, owner.clone()))
            }
            _ => None,
        })
        .expect("the data directory");
    assert_eq!(data, (0o700, Some(Owner::new("keyhold", "keyhold"))));
    assert!(Playbook::shipped("nope")
        .unwrap_err()
        .to_string()
        .contains("install-server"));
}

#[test]
fn mistakes_name_file_line_and_key() {
    let cases: &[(&str, usize, &[&str])] = &[
        (
            "packages \"x\" {}",
            1,
            &["unknown step kind \"packages\"", "directory"],
        ),
        ("directory {}", 1, &["needs a label"]),
        (
            "directory \"/x\" {\n  mdoe = \"0700\"\n}",
            2,
            &["unknown key \"mdoe\"", "mode"],
        ),
        (
            "directory \"/x\" {\n  mode = \"rwx\"\n}",
            2,
            &["not an octal file mode"],
        ),
        ("directory \"x/y\" {}", 1, &["not an absolute path"]),
        (
            "file \"/x\" {\n  mode = \"0600\"\n}",
            1,
            &["content = \"...\" or source"],
        ),
        (
            "command \"c\" {\n  creates = \"/x\"\n}",
            1,
            &["argv is required"],
        ),
        (
            "systemd \"u\" {\n  state = \"running\"\n}",
            2,
            &["use started, stopped"],
        ),
        (
            "user \"u\" {}\nuser \"v\" {\n  shel = \"/bin/sh\"\n}",
            3,
            &["unknown key \"shel\""],
        ),
    ];
    for (text, line, wanted) in cases {
        let err = parse_str("playbooks/t.hcl", text).unwrap_err();
        let msg = err.to_string();
        assert_eq!(err.line(), *line, "{text}: {msg}");
        assert!(msg.starts_with("playbooks/t.hcl:"), "{msg}");
        for w in *wanted {
            assert!(msg.contains(w), "{text}: {msg} lacks {w:?}");
        }
    }
}

#[test]
fn steps_keep_the_order_they_are_written_in() {
    let p = parse_str(
        "t.hcl",
        "directory \"/a\" {}\nfile \"/a/f\" {\n  content = \"x\"\n}\ndirectory \"/b\" {}\n",
    )
    .unwrap();
    let names: Vec<String> = p.steps.iter().map(Step::describe).collect();
    assert_eq!(names, ["directory /a", "file /a/f", "directory /b"]);
}

const LOCAL: &str = r#"
directory "/opt/keyhold/data" {
  mode = "0700"
}
file "/etc/keyhold.d/motd" {
  content = "managed by provision\n"
  mode    = "0640"
}
file "/usr/local/bin/keyhold" {
  source = "{{keyhold_binary}}"
  mode   = "0755"
}
template "keyhold.service" {}
command "mark it" {
  argv    = ["touch", "opt/keyhold/marked"]
  creates = "/opt/keyhold/marked"
}
command "never twice" {
  argv   = ["sh", "-c", "echo once >> opt/keyhold/ran"]
  unless = ["test", "-e", "opt/keyhold/ran"]
}
sysctl "fs.suid_dumpable" {
  value = "0"
  file  = "/etc/sysctl.d/80-test.conf"
}
sysctl "kernel.core_pattern" {
  value = "|/bin/false"
  file  = "/etc/sysctl.d/80-test.conf"
}
"#;

#[tokio::test]
async fn a_playbook_plans_what_it_does_and_a_second_run_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let binary = dir.path().join("keyhold");
    std::fs::write(&binary, b"#!/bin/sh\n").unwrap();
    let host = LocalHost::new("keyhold-1", root.clone(), binary.clone(), None);
    let rendered = [RenderedFile {
        path: "etc/systemd/system/keyhold.service".into(),
        mode: 0o644,
        content: "[Service]\n".into(),
        purpose: "server unit",
        template: "keyhold.service",
    }];
    let vars = BTreeMap::from([("keyhold_binary".to_string(), binary.display().to_string())]);
    let target = Target {
        host: &host,
        rendered: &rendered,
        vars: &vars,
        live: false,
    };
    let p = parse_str("playbooks/local.hcl", LOCAL).unwrap();
    let planned = p.check(&target).await.unwrap();
    assert_eq!(planned.len(), 8, "{planned:#?}");
    let applied = p.apply(&target).await.unwrap();
    assert!(applied.iter().all(|o| o.changed), "{applied:#?}");
    let mode = |rel: &str| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(root.join(rel))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("opt/keyhold/data"), 0o700);
    assert_eq!(mode("etc/keyhold.d/motd"), 0o640);
    assert_eq!(mode("usr/local/bin/keyhold"), 0o755);
    assert_eq!(
        std::fs::read_to_string(root.join("etc/systemd/system/keyhold.service")).unwrap(),
        "[Service]\n"
    );
    assert!(root.join("opt/keyhold/marked").exists());
    assert_eq!(
        std::fs::read_to_string(root.join("etc/sysctl.d/80-test.conf")).unwrap(),
        "# Kernel settings kept by provision's playbooks (sysctl steps).\n\
         fs.suid_dumpable = 0\nkernel.core_pattern = |/bin/false\n"
    );

    assert!(
        p.check(&target).await.unwrap().is_empty(),
        "nothing left to do"
    );
    let again = p.apply(&target).await.unwrap();
    assert!(again.iter().all(|o| !o.changed), "{again:#?}");
    assert_eq!(
        std::fs::read_to_string(root.join("opt/keyhold/ran")).unwrap(),
        "once\n",
        "a guarded command ran once"
    );

    // A change on the host is found and put right.
    std::fs::write(root.join("etc/keyhold.d/motd"), "edited by hand\n").unwrap();
    let planned = p.check(&target).await.unwrap();
    assert_eq!(planned.len(), 1, "{planned:?}");
    assert!(planned[0].contains("content"), "{planned:?}");
    p.apply(&target).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(root.join("etc/keyhold.d/motd")).unwrap(),
        "managed by provision\n"
    );
}

#[test]
fn sysctl_files_keep_one_line_per_setting() {
    let text = "# mine\nvm.swappiness=10\nfs.suid_dumpable = 2\n# fs.suid_dumpable = 9\n";
    assert_eq!(sysctl_line(text, "fs.suid_dumpable").as_deref(), Some("2"));
    assert_eq!(sysctl_line(text, "vm.swappiness").as_deref(), Some("10"));
    assert_eq!(sysctl_line(text, "kernel.x"), None);
    let updated = with_sysctl_line(text, "fs.suid_dumpable", "0");
    assert_eq!(
        updated,
        "# mine\nvm.swappiness=10\nfs.suid_dumpable = 0\n# fs.suid_dumpable = 9\n"
    );
    assert_eq!(with_sysctl_line(&updated, "fs.suid_dumpable", "0"), updated);
    assert!(
        with_sysctl_line(text, "kernel.kptr_restrict", "2").ends_with("kernel.kptr_restrict = 2\n")
    );
    assert_eq!(normalize("1\t4  1 7"), "1 4 1 7");
}

#[test]
fn package_sysctl_and_mask_steps_decode() {
    let p = parse_str(
        "t.hcl",
        "package \"auditd\" {}\npackage \"cron\" {\n  state = \"absent\"\n}\n\
         sysctl \"fs.suid_dumpable\" {\n  value = \"0\"\n}\n\
         systemd \"swap.target\" {\n  masked = true\n}\n",
    )
    .unwrap();
    assert_eq!(
        p.steps.iter().map(|s| s.action.clone()).collect::<Vec<_>>(),
        vec![
            Action::Package {
                name: "auditd".into(),
                present: true
            },
            Action::Package {
                name: "cron".into(),
                present: false
            },
            Action::Sysctl {
                key: "fs.suid_dumpable".into(),
                value: "0".into(),
                file: SYSCTL_FILE.into(),
            },
            Action::Systemd {
                unit: "swap.target".into(),
                daemon_reload: false,
                enabled: None,
                masked: Some(true),
                state: None,
            },
        ]
    );
    for (text, line, want) in [
        ("package \"a b\" {}", 1, "not a Debian package name"),
        (
            "package \"a\" {\n  state = \"gone\"\n}",
            2,
            "present (the default) or absent",
        ),
        ("sysctl \"fs.x\" {}", 1, "value is required"),
        (
            "sysctl \"fs x\" {\n  value = \"1\"\n}",
            1,
            "not a kernel setting",
        ),
    ] {
        let err = parse_str("playbooks/t.hcl", text).unwrap_err().to_string();
        assert!(err.contains(want), "{text}: {err}");
        assert!(
            err.contains(&format!("playbooks/t.hcl:{line}")),
            "{text}: {err}"
        );
    }
}

#[tokio::test]
async fn a_failing_step_names_itself_and_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let host = LocalHost::new(
        "keyhold-1",
        dir.path().join("root"),
        "/bin/true".into(),
        None,
    );
    let vars = BTreeMap::new();
    let target = Target {
        host: &host,
        rendered: &[],
        vars: &vars,
        live: false,
    };
    let p = parse_str(
        "playbooks/t.hcl",
        "directory \"/a\" {}\ncommand \"fails\" {\n  argv = [\"sh\", \"-c\", \"echo nope >&2; exit 1\"]\n}\n",
    )
    .unwrap();
    let err = format!("{:#}", p.apply(&target).await.unwrap_err());
    assert!(
        err.contains("command \"fails\" (playbooks/t.hcl:2)") && err.contains("nope"),
        "{err}"
    );
    let p = parse_str("playbooks/t.hcl", "template \"keyhold.hcl\" {}\n").unwrap();
    let err = format!("{:#}", p.check(&target).await.unwrap_err());
    assert!(
        err.contains("no template \"keyhold.hcl\" is rendered"),
        "{err}"
    );
}
