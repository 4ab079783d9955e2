//! The agent's own data dir holds this server's private key, its pinned
//! CA and plan key, and the delivered stack secrets of every container on
//! the host. No container may bind-mount it, anything in it, or a
//! directory above it: a section that asks for one is refused before the
//! plan holding it is stored, whatever the coordinator's policy allowed.

use std::path::{Path, PathBuf};

use skiff_shared::files::{Reach, normalize};

use skiff_shared::sections::containers::ContainersSection;
use skiff_shared::workload::MountKind;

/// The data dir as an absolute path without `.` or `..`, and, when it
/// differs, with its symbolic links resolved.
pub(super) fn own_dirs(data_dir: &Path) -> Vec<PathBuf> {
    let absolute = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_owned());
    let mut dirs = vec![normalize(&absolute)];
    if let Ok(real) = std::fs::canonicalize(data_dir)
        && !dirs.contains(&real)
    {
        dirs.push(real);
    }
    dirs
}

/// How a bind source relates to the data dir, if it reaches into it.
fn overlap(source: &Path, dir: &Path) -> Option<&'static str> {
    Reach::of(source, dir).map(|r| match r {
        Reach::Is => "is",
        Reach::Inside => "is inside",
        Reach::Above => "contains",
    })
}

/// Refuses a section with a container that bind-mounts one of `own_dirs`,
/// something in one, or a directory above one. A source that exists on
/// this host is also checked with its links resolved.
pub(super) fn check(section: &ContainersSection, own_dirs: &[PathBuf]) -> Result<(), String> {
    for c in &section.containers {
        for m in c.mounts.iter().filter(|m| m.kind == MountKind::Bind) {
            let written = Path::new(&m.source);
            let mut sources = vec![normalize(written)];
            if let Ok(real) = std::fs::canonicalize(written)
                && !sources.contains(&real)
            {
                sources.push(real);
            }
            for source in &sources {
                for dir in own_dirs {
                    if let Some(how) = overlap(source, dir) {
                        return Err(format!(
                            "container {} may not bind-mount {} (at {}): it {how} the agent's data dir {}, which holds this server's key and the stacks' secrets",
                            c.name(),
                            m.source,
                            m.target,
                            dir.display()
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use skiff_shared::workload::{ContainerSpec, MountSpec};

    use super::*;

    fn section(kind: MountKind, source: &str) -> ContainersSection {
        let mut spec: ContainerSpec = serde_json::from_str(
            r#"{"stack":"s","service":"web","slot":1,"revision":2,"image":"x"}"#,
        )
        .unwrap();
        spec.mounts.push(MountSpec {
            kind,
            source: source.into(),
            target: "/mnt".into(),
            read_only: true,
        });
        ContainersSection {
            containers: vec![spec],
        }
    }

    #[test]
    fn the_data_dir_its_contents_and_its_parents_are_refused() {
        let dirs = vec![PathBuf::from("/var/lib/skiff/agent")];
        for (source, how) in [
            ("/var/lib/skiff/agent", "is"),
            ("/var/lib/skiff/agent/", "is"),
            ("/var/lib/skiff/agent/secrets", "is inside"),
            ("/var/lib/skiff/agent/node.key", "is inside"),
            ("/var/lib/skiff", "contains"),
            ("/var", "contains"),
            ("/", "contains"),
            ("/srv/../var/lib/skiff/./agent", "is"),
        ] {
            let err = check(&section(MountKind::Bind, source), &dirs).unwrap_err();
            assert!(
                err.contains(&format!(
                    "it {how} the agent's data dir /var/lib/skiff/agent"
                )) && err.contains("container s.web.1 may not bind-mount"),
                "{source}: {err}"
            );
        }
        for source in [
            "/var/lib/skiff/agent2",
            "/var/lib/other",
            "/srv/data",
            "/dev/null",
        ] {
            assert_eq!(
                check(&section(MountKind::Bind, source), &dirs),
                Ok(()),
                "{source}"
            );
        }
        // Volumes and tmpfs name no host path.
        assert_eq!(check(&section(MountKind::Volume, "agent"), &dirs), Ok(()));
    }

    #[test]
    fn a_link_to_the_data_dir_is_refused_too() {
        let root = tempfile::tempdir().unwrap();
        let data = root.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let link = root.path().join("innocent");
        std::os::unix::fs::symlink(&data, &link).unwrap();
        let dirs = own_dirs(&data);
        let err = check(
            &section(MountKind::Bind, &link.display().to_string()),
            &dirs,
        )
        .unwrap_err();
        assert!(err.contains("it is the agent's data dir"), "{err}");
        // A relative data dir is compared as the absolute path it names.
        let here = std::env::current_dir().unwrap();
        let dirs = own_dirs(Path::new("relative/data"));
        assert!(dirs.contains(&here.join("relative/data")), "{dirs:?}");
    }
}
