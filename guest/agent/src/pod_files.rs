//! The pod's `resolv.conf`, `hosts` and `hostname`: written by the agent at `CreateSandbox` into
//! [`dir`] (`<state dir>/pod/`, on the guest's `/run` tmpfs) from the validated request — always,
//! also for a pod without a network (localhost, the hostname, no name server) — and never changed
//! afterwards.
//!
//! A container asks for one with a mount `{"type": "pod", "source": FILE, "destination": PATH,
//! "options": []}`, where FILE and PATH pair exactly as in [`POD_FILES`] (`resolv.conf` →
//! `/etc/resolv.conf`, `hosts` → `/etc/hosts`, `hostname` → `/etc/hostname`), each at most once.
//! [`validate_mounts`] checks that form at decode time; the policy sees the mount as the host sent
//! it (type `pod`); once the policy admitted the container, [`resolve_mounts`] replaces it by a
//! read-only bind (`rbind`, `ro`, `nosuid`, `nodev`, `noexec`) of the pod's file. The host sends
//! these in place of CRI's binds of the host's own copies, which the guest cannot see.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use coffer_policies::Mount;

use crate::error::AgentError;
use crate::pod_network::{PodNetwork, quote};

/// The mount type of a pod file.
pub const POD_MOUNT_TYPE: &str = "pod";
/// The pod files a mount may name, as (source, the only destination it may have).
pub const POD_FILES: [(&str, &str); 3] = [
    ("resolv.conf", "/etc/resolv.conf"),
    ("hosts", "/etc/hosts"),
    ("hostname", "/etc/hostname"),
];
/// What every bind of a pod file is mounted with.
pub const POD_MOUNT_OPTIONS: [&str; 5] = ["rbind", "ro", "nosuid", "nodev", "noexec"];

/// The directory of the pod's files under the agent's state directory.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("pod")
}

/// `/etc/resolv.conf`: the name servers, search domains and options of the pod's DNS
/// configuration; without one, only the leading comment.
pub fn resolv_conf(network: Option<&PodNetwork>) -> String {
    let mut text = String::from(
        "# The pod's resolver configuration, written by coffer-agent at CreateSandbox.\n",
    );
    let Some(dns) = network.map(|n| &n.dns) else {
        return text;
    };
    for server in &dns.servers {
        let _ = writeln!(text, "nameserver {server}");
    }
    if !dns.searches.is_empty() {
        let searches: Vec<&str> = dns.searches.iter().map(|s| s.as_str()).collect();
        let _ = writeln!(text, "search {}", searches.join(" "));
    }
    if !dns.options.is_empty() {
        let _ = writeln!(text, "options {}", dns.options.join(" "));
    }
    text
}

/// `/etc/hosts`: localhost, each of the pod's addresses under its hostname, then the host
/// entries of the pod's network.
pub fn hosts(hostname: &str, network: Option<&PodNetwork>) -> String {
    let mut text = String::from(
        "# The pod's hosts file, written by coffer-agent at CreateSandbox.\n\
         127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n",
    );
    let Some(network) = network else {
        return text;
    };
    for address in network.addresses() {
        let _ = writeln!(text, "{address}\t{hostname}");
    }
    for entry in &network.hosts {
        let names: Vec<&str> = entry.names.iter().map(|n| n.as_str()).collect();
        let _ = writeln!(text, "{}\t{}", entry.ip, names.join(" "));
    }
    text
}

/// Writes the three pod files into `dir` (created if missing), each through a rename.
/// `hostname` is the validated hostname the guest has.
pub fn write(dir: &Path, hostname: &str, network: Option<&PodNetwork>) -> Result<(), AgentError> {
    std::fs::create_dir_all(dir).map_err(|e| AgentError::io("create", dir, e))?;
    for (name, text) in [
        ("resolv.conf", resolv_conf(network)),
        ("hosts", hosts(hostname, network)),
        ("hostname", format!("{hostname}\n")),
    ] {
        let path = dir.join(name);
        let tmp = dir.join(format!(".{name}.new"));
        let _ = std::fs::remove_file(&tmp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(|e| AgentError::io("create", &tmp, e))?;
        file.write_all(text.as_bytes())
            .map_err(|e| AgentError::io("write", &tmp, e))?;
        drop(file);
        std::fs::rename(&tmp, &path).map_err(|e| AgentError::io("rename", &path, e))?;
    }
    Ok(())
}

fn is_pod_mount(m: &Mount) -> bool {
    m.kind == POD_MOUNT_TYPE
}

/// Checks the form of a spec's pod mounts, before the policy decides on the request: a source of
/// [`POD_FILES`] with exactly its destination, no options (the agent alone decides how it is
/// mounted), each file at most once.
pub fn validate_mounts(mounts: &[Mount]) -> Result<(), AgentError> {
    let mut seen = HashSet::new();
    for m in mounts.iter().filter(|m| is_pod_mount(m)) {
        let destination = m.destination.as_str();
        let invalid = |why: String| {
            AgentError::InvalidArgument(format!("pod mount {}: {why}", quote(destination)))
        };
        let source = m.source.clone();
        let Some((file, expected)) = POD_FILES.iter().find(|(file, _)| *file == source) else {
            return Err(invalid(format!(
                "the source {} is not one of resolv.conf, hosts, hostname",
                quote(&source)
            )));
        };
        if destination != *expected {
            return Err(invalid(format!(
                "the pod's {file} can only be mounted at {expected}"
            )));
        }
        if !m.options.is_empty() {
            return Err(invalid(
                "options are not allowed (it is always mounted read-only, nosuid, nodev, noexec)"
                    .into(),
            ));
        }
        if !seen.insert(*file) {
            return Err(invalid(format!("the pod's {file} is mounted twice")));
        }
    }
    Ok(())
}

/// Replaces every pod mount of `mounts` (validated by [`validate_mounts`]) by a read-only bind of
/// the pod file in `dir`.
pub fn resolve_mounts(mounts: &mut [Mount], dir: &Path) -> Result<(), AgentError> {
    for m in mounts.iter_mut().filter(|m| is_pod_mount(m)) {
        let file = Path::new(&m.source)
            .file_name()
            .map(|name| dir.join(name))
            .ok_or_else(|| AgentError::Internal("a pod mount without a source".into()))?;
        if !file.is_file() {
            return Err(AgentError::FailedPrecondition(format!(
                "the pod file {} was not written (no CreateSandbox)",
                file.display()
            )));
        }
        *m = Mount {
            destination: std::mem::take(&mut m.destination),
            kind: "bind".into(),
            source: file.display().to_string(),
            options: POD_MOUNT_OPTIONS.map(String::from).to_vec(),
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn network() -> PodNetwork {
        PodNetwork::decode(crate::pod_network::tests::full()).unwrap()
    }

    fn spec_with_mounts(mounts: &[serde_json::Value]) -> Vec<Mount> {
        crate::spec::mounts_from_json(mounts)
    }

    fn pod_mount(source: &str, destination: &str) -> serde_json::Value {
        json!({"type": "pod", "source": source, "destination": destination, "options": []})
    }

    #[test]
    fn resolv_conf_lists_servers_searches_and_options() {
        assert_eq!(
            resolv_conf(Some(&network())),
            "# The pod's resolver configuration, written by coffer-agent at CreateSandbox.\n\
             nameserver 10.96.0.10\n\
             nameserver 2001:db8::53\n\
             search default.svc.cluster.local svc.cluster.local cluster.local\n\
             options ndots:5 edns0\n"
        );
        let comment_only =
            "# The pod's resolver configuration, written by coffer-agent at CreateSandbox.\n";
        assert_eq!(resolv_conf(None), comment_only);
        assert_eq!(resolv_conf(Some(&PodNetwork::default())), comment_only);
        let mut servers_only = network();
        servers_only.dns.searches.clear();
        servers_only.dns.options.clear();
        servers_only.dns.servers.truncate(1);
        assert_eq!(
            resolv_conf(Some(&servers_only)),
            format!("{comment_only}nameserver 10.96.0.10\n")
        );
    }

    #[test]
    fn hosts_maps_localhost_the_pod_and_its_entries() {
        let head = "# The pod's hosts file, written by coffer-agent at CreateSandbox.\n\
                    127.0.0.1\tlocalhost\n\
                    ::1\tlocalhost ip6-localhost ip6-loopback\n";
        assert_eq!(
            hosts("web-0", Some(&network())),
            format!(
                "{head}192.0.2.5\tweb-0\n2001:db8::5\tweb-0\n198.51.100.7\tweb-0\n\
                 192.0.2.99\tdb.internal db\n"
            )
        );
        assert_eq!(hosts("coffer", None), head);
    }

    #[test]
    fn files_are_written_whole_and_rewritten() {
        let work = tempfile::tempdir().unwrap();
        let pod = dir(work.path());
        write(&pod, "coffer", None).unwrap();
        let read = |name: &str| std::fs::read_to_string(pod.join(name)).unwrap();
        assert_eq!(read("hostname"), "coffer\n");
        assert_eq!(read("hosts"), hosts("coffer", None));
        assert_eq!(read("resolv.conf"), resolv_conf(None));
        write(&pod, "web-0", Some(&network())).unwrap();
        assert_eq!(read("hostname"), "web-0\n");
        assert!(read("resolv.conf").contains("nameserver 10.96.0.10\n"));
        assert!(read("hosts").contains("192.0.2.5\tweb-0\n"));
        let mut names: Vec<String> = std::fs::read_dir(&pod)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["hostname", "hosts", "resolv.conf"]);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(pod.join("hosts"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
    }

    #[test]
    fn pod_mounts_pair_exactly_without_options() {
        let all = [
            pod_mount("resolv.conf", "/etc/resolv.conf"),
            pod_mount("hosts", "/etc/hosts"),
            pod_mount("hostname", "/etc/hostname"),
            json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        ];
        validate_mounts(&spec_with_mounts(&all)).unwrap();
        // Options absent rather than empty are fine too.
        validate_mounts(&spec_with_mounts(&[
            json!({"type": "pod", "source": "hosts", "destination": "/etc/hosts"}),
        ]))
        .unwrap();
        for (bad, why) in [
            (
                pod_mount("resolv.conf", "/etc/hosts"),
                "pod mount \"/etc/hosts\": the pod's resolv.conf can only be mounted at /etc/resolv.conf",
            ),
            (
                pod_mount("hosts", "/etc/hosts/"),
                "the pod's hosts can only be mounted at /etc/hosts",
            ),
            (
                pod_mount("hostname", "/etc/../etc/hostname"),
                "the pod's hostname can only be mounted at /etc/hostname",
            ),
            (
                pod_mount("/run/coffer/pod/hosts", "/etc/hosts"),
                "the source \"/run/coffer/pod/hosts\" is not one of resolv.conf, hosts, hostname",
            ),
            (
                json!({"type": "pod", "destination": "/etc/hosts"}),
                "the source \"\" is not one of",
            ),
            (
                json!({"type": "pod", "source": "hosts", "destination": "/etc/hosts", "options": ["rw"]}),
                "options are not allowed",
            ),
        ] {
            let err = validate_mounts(&spec_with_mounts(&[bad])).unwrap_err();
            assert!(
                matches!(&err, AgentError::InvalidArgument(m) if m.contains(why)),
                "{err} does not contain {why:?}"
            );
        }
        let twice = [
            pod_mount("hosts", "/etc/hosts"),
            pod_mount("hosts", "/etc/hosts"),
        ];
        let err = validate_mounts(&spec_with_mounts(&twice)).unwrap_err();
        assert!(
            err.to_string().contains("the pod's hosts is mounted twice"),
            "{err}"
        );
    }

    #[test]
    fn pod_mounts_become_read_only_binds_of_the_pod_files() {
        let work = tempfile::tempdir().unwrap();
        let pod = dir(work.path());
        let mut spec = spec_with_mounts(&[
            json!({"destination": "/proc", "type": "proc", "source": "proc"}),
            pod_mount("resolv.conf", "/etc/resolv.conf"),
            pod_mount("hosts", "/etc/hosts"),
        ]);
        // Before CreateSandbox wrote the files there is nothing to bind.
        let err = resolve_mounts(&mut spec.clone(), &pod).unwrap_err();
        assert!(matches!(err, AgentError::FailedPrecondition(_)), "{err}");
        write(&pod, "coffer", None).unwrap();
        resolve_mounts(&mut spec, &pod).unwrap();
        let mounts = spec;
        assert_eq!(mounts[0].kind, "proc");
        for (m, file, destination) in [
            (&mounts[1], "resolv.conf", "/etc/resolv.conf"),
            (&mounts[2], "hosts", "/etc/hosts"),
        ] {
            assert_eq!(m.kind, "bind");
            assert_eq!(m.source, pod.join(file).display().to_string());
            assert_eq!(m.destination, destination);
            assert_eq!(m.options, ["rbind", "ro", "nosuid", "nodev", "noexec"]);
        }
        // A spec without pod mounts is left alone.
        let mut plain =
            spec_with_mounts(&[json!({"destination": "/proc", "type": "proc", "source": "proc"})]);
        let before = plain.clone();
        resolve_mounts(&mut plain, &pod).unwrap();
        assert_eq!(plain, before);
    }
}
