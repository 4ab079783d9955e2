//! The size and shape of what an agent may tell the coordinator about
//! itself: its [`Hello`], its [`HostFacts`] (sent in the hello and with the
//! join request) and its containers' [`ObservedState`].
//!
//! The coordinator checks every such message against these bounds before
//! it keeps any of it (`check`); the agent fits what it collects into them
//! before it sends (`fit`), so that an unusual host (hundreds of
//! addresses, a very long error from the engine) is trimmed rather than
//! refused. Containers are never dropped from a report: a report over
//! [`MAX_REPORTED_CONTAINERS`] is refused whole.
//!
//! The bounds are generous: a real host is far inside every one of them.

use crate::protocol::{Hello, HostFacts};
use crate::workload::ObservedState;

/// Largest serialised [`Hello`] envelope the coordinator accepts.
pub const MAX_HELLO_BYTES: usize = 64 * 1024;
/// Largest serialised [`HostFacts`]: with the rest of a hello (or of a join
/// request) it stays under [`MAX_HELLO_BYTES`].
pub const MAX_FACTS_BYTES: usize = 48 * 1024;
/// Longest string in host facts (a host name, an OS or kernel version, a
/// mount point, an address, an extra fact's value), in bytes.
pub const MAX_FACT_BYTES: usize = 1024;
/// Most disks in host facts.
pub const MAX_DISKS: usize = 256;
/// Most addresses in host facts.
pub const MAX_ADDRESSES: usize = 1024;
/// Most extra facts.
pub const MAX_EXTRA_FACTS: usize = 64;
/// Most protocol versions or capabilities in a hello.
pub const MAX_HELLO_ITEMS: usize = 64;
/// Longest capability name or agent version in a hello, in bytes.
pub const MAX_HELLO_NAME_BYTES: usize = 128;

/// Most containers in one report.
pub const MAX_REPORTED_CONTAINERS: usize = 10_000;
/// Most images in one report.
pub const MAX_REPORTED_IMAGES: usize = 10_000;
/// Most addresses of one container.
pub const MAX_CONTAINER_IPS: usize = 64;
/// Longest string of a reported container or image, in bytes.
pub const MAX_REPORT_STRING_BYTES: usize = 1024;
/// Longest reconcile error in a report, in bytes.
pub const MAX_REPORT_ERROR_BYTES: usize = 8 * 1024;
/// Containers a report may list as failed to come up.
pub const MAX_REPORTED_FAILURES: usize = 256;
/// A failed container's message (the engine's words).
pub const MAX_FAILURE_MESSAGE_BYTES: usize = 2 * 1024;

pub(crate) fn check_str(what: &str, s: &str, max: usize) -> Result<(), String> {
    if s.len() > max {
        return Err(format!("{what} is {} bytes long, over {max}", s.len()));
    }
    Ok(())
}

pub(crate) fn check_len<T>(what: &str, list: &[T], max: usize) -> Result<(), String> {
    if list.len() > max {
        return Err(format!("{what} has {} entries, over {max}", list.len()));
    }
    Ok(())
}

/// Cuts `s` to at most `max` bytes, on a character boundary.
pub fn truncate(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
}

fn serialised_len<T: serde::Serialize>(value: &T) -> usize {
    serde_json::to_vec(value).map_or(usize::MAX, |v| v.len())
}

impl HostFacts {
    /// Checks the facts against the bounds above; the message names the
    /// field and the bound.
    ///
    /// # Errors
    /// The first field over its bound.
    pub fn check(&self) -> Result<(), String> {
        for (what, s) in [
            ("host facts: hostname", &self.hostname),
            ("host facts: os", &self.os),
            ("host facts: kernel", &self.kernel),
            ("host facts: arch", &self.arch),
        ] {
            check_str(what, s, MAX_FACT_BYTES)?;
        }
        for (what, s) in [
            ("host facts: docker_version", &self.docker_version),
            ("host facts: docker_api_version", &self.docker_api_version),
            ("host facts: mesh_endpoint", &self.mesh_endpoint),
        ] {
            check_str(what, s.as_deref().unwrap_or(""), MAX_FACT_BYTES)?;
        }
        check_len("host facts: disks", &self.disks, MAX_DISKS)?;
        for d in &self.disks {
            check_str("host facts: a disk's mount", &d.mount, MAX_FACT_BYTES)?;
            check_str(
                "host facts: a disk's filesystem",
                &d.filesystem,
                MAX_FACT_BYTES,
            )?;
        }
        check_len("host facts: addresses", &self.addresses, MAX_ADDRESSES)?;
        for a in &self.addresses {
            check_str("host facts: an address", a, MAX_FACT_BYTES)?;
        }
        if self.extra.len() > MAX_EXTRA_FACTS {
            return Err(format!(
                "host facts: extra has {} entries, over {MAX_EXTRA_FACTS}",
                self.extra.len()
            ));
        }
        for (k, v) in &self.extra {
            check_str("host facts: an extra fact's name", k, MAX_FACT_BYTES)?;
            check_str("host facts: an extra fact's value", v, MAX_FACT_BYTES)?;
        }
        let len = serialised_len(self);
        if len > MAX_FACTS_BYTES {
            return Err(format!(
                "host facts are {len} bytes serialised, over {MAX_FACTS_BYTES}"
            ));
        }
        Ok(())
    }

    /// Trims the facts into the bounds: long strings are cut, long lists
    /// shortened, and then addresses, disks and extra facts dropped from
    /// the end until the whole fits. Facts that fit are left as they are.
    #[must_use]
    pub fn fit(mut self) -> Self {
        for s in [
            &mut self.hostname,
            &mut self.os,
            &mut self.kernel,
            &mut self.arch,
        ] {
            truncate(s, MAX_FACT_BYTES);
        }
        for s in [
            &mut self.docker_version,
            &mut self.docker_api_version,
            &mut self.mesh_endpoint,
        ]
        .into_iter()
        .flatten()
        {
            truncate(s, MAX_FACT_BYTES);
        }
        self.disks.truncate(MAX_DISKS);
        for d in &mut self.disks {
            truncate(&mut d.mount, MAX_FACT_BYTES);
            truncate(&mut d.filesystem, MAX_FACT_BYTES);
        }
        self.addresses.truncate(MAX_ADDRESSES);
        for a in &mut self.addresses {
            truncate(a, MAX_FACT_BYTES);
        }
        while self.extra.len() > MAX_EXTRA_FACTS {
            self.extra.pop_last();
        }
        self.extra = std::mem::take(&mut self.extra)
            .into_iter()
            .map(|(mut k, mut v)| {
                truncate(&mut k, MAX_FACT_BYTES);
                truncate(&mut v, MAX_FACT_BYTES);
                (k, v)
            })
            .collect();
        // Serialised once; each entry dropped takes its own JSON and a comma.
        let mut len = serialised_len(&self);
        while len > MAX_FACTS_BYTES {
            let freed = if let Some(a) = self.addresses.pop() {
                serialised_len(&a)
            } else if let Some(d) = self.disks.pop() {
                serialised_len(&d)
            } else if let Some((k, v)) = self.extra.pop_last() {
                serialised_len(&k) + 1 + serialised_len(&v)
            } else {
                break;
            };
            len = len.saturating_sub(freed + 1);
            if len <= MAX_FACTS_BYTES {
                len = serialised_len(&self);
            }
        }
        self
    }
}

impl Hello {
    /// Checks everything in a hello but its serialised size (which the
    /// receiver checks on the text before parsing it).
    ///
    /// # Errors
    /// The first field over its bound.
    pub fn check(&self) -> Result<(), String> {
        check_len(
            "hello: protocol_versions",
            &self.protocol_versions,
            MAX_HELLO_ITEMS,
        )?;
        check_len("hello: capabilities", &self.capabilities, MAX_HELLO_ITEMS)?;
        for c in &self.capabilities {
            check_str("hello: a capability", c, MAX_HELLO_NAME_BYTES)?;
        }
        check_str(
            "hello: agent_version",
            &self.agent_version,
            MAX_HELLO_NAME_BYTES,
        )?;
        self.facts.check()
    }
}

impl ObservedState {
    /// Checks a report against the bounds above.
    ///
    /// # Errors
    /// The first field over its bound.
    pub fn check(&self) -> Result<(), String> {
        check_len(
            "report: containers",
            &self.containers,
            MAX_REPORTED_CONTAINERS,
        )?;
        for c in &self.containers {
            for (what, s) in [
                ("report: a container's name", &c.name),
                ("report: a container's key", &c.key),
                ("report: a container's id", &c.id),
                ("report: a container's image_id", &c.image_id),
                ("report: a container's spec", &c.spec),
            ] {
                check_str(what, s, MAX_REPORT_STRING_BYTES)?;
            }
            check_str(
                "report: a container's started_at",
                c.started_at.as_deref().unwrap_or(""),
                MAX_REPORT_STRING_BYTES,
            )?;
            check_len("report: a container's ips", &c.ips, MAX_CONTAINER_IPS)?;
            for ip in &c.ips {
                check_str("report: a container's ip", ip, MAX_REPORT_STRING_BYTES)?;
            }
            check_len(
                "report: a container's addresses",
                &c.addresses,
                MAX_CONTAINER_IPS,
            )?;
            for a in &c.addresses {
                check_str(
                    "report: a container's network",
                    &a.network,
                    MAX_REPORT_STRING_BYTES,
                )?;
                check_str(
                    "report: a container's address",
                    &a.address,
                    MAX_REPORT_STRING_BYTES,
                )?;
            }
        }
        check_str(
            "report: error",
            self.error.as_deref().unwrap_or(""),
            MAX_REPORT_ERROR_BYTES,
        )?;
        check_len("report: images", &self.images, MAX_REPORTED_IMAGES)?;
        for i in &self.images {
            check_str("report: an image", i, MAX_REPORT_STRING_BYTES)?;
        }
        check_len("report: failures", &self.failures, MAX_REPORTED_FAILURES)?;
        for f in &self.failures {
            check_str("report: a failure's key", &f.key, MAX_REPORT_STRING_BYTES)?;
            check_str(
                "report: a failure's message",
                &f.message,
                MAX_FAILURE_MESSAGE_BYTES,
            )?;
        }
        Ok(())
    }

    /// Trims what can be trimmed without misleading the coordinator: the
    /// error is cut and the image list shortened (it only guides
    /// placement). Containers are left as they are.
    #[must_use]
    pub fn fit(mut self) -> Self {
        if let Some(e) = self.error.as_mut() {
            truncate(e, MAX_REPORT_ERROR_BYTES);
        }
        self.images.retain(|i| i.len() <= MAX_REPORT_STRING_BYTES);
        self.images.truncate(MAX_REPORTED_IMAGES);
        self.failures
            .retain(|f| f.key.len() <= MAX_REPORT_STRING_BYTES);
        self.failures.truncate(MAX_REPORTED_FAILURES);
        for f in &mut self.failures {
            truncate(&mut f.message, MAX_FAILURE_MESSAGE_BYTES);
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Disk, PROTOCOL_VERSION};
    use proptest::prelude::*;

    fn facts() -> HostFacts {
        HostFacts {
            hostname: "web-1".into(),
            os: "Debian GNU/Linux 12".into(),
            kernel: "6.1.0".into(),
            arch: "x86_64".into(),
            cpus: 4,
            memory_bytes: 1 << 33,
            disks: vec![Disk {
                mount: "/".into(),
                filesystem: "ext4".into(),
                total_bytes: 1,
                available_bytes: 1,
            }],
            addresses: vec!["10.0.0.5".into()],
            docker_version: Some("24.0.7".into()),
            docker_api_version: Some("1.43".into()),
            mesh_endpoint: None,
            extra: Default::default(),
        }
    }

    #[test]
    fn a_real_host_is_inside_the_bounds_and_fit_leaves_it_alone() {
        assert_eq!(facts().check(), Ok(()));
        assert_eq!(facts().fit(), facts());
        let hello = Hello {
            protocol_versions: vec![PROTOCOL_VERSION],
            agent_version: crate::VERSION.into(),
            capabilities: vec!["containers.v1".into(), "networks.v1".into()],
            facts: facts(),
            plan_generation: Some(3),
        };
        assert_eq!(hello.check(), Ok(()));
    }

    #[test]
    fn each_bound_is_checked_and_named() {
        let mut f = facts();
        f.hostname = "h".repeat(MAX_FACT_BYTES + 1);
        assert!(f.check().unwrap_err().contains("hostname"));
        let mut f = facts();
        f.addresses = vec!["10.0.0.1".into(); MAX_ADDRESSES + 1];
        assert!(
            f.check()
                .unwrap_err()
                .contains("addresses has 1025 entries")
        );
        let mut f = facts();
        f.disks = vec![f.disks[0].clone(); MAX_DISKS + 1];
        assert!(f.check().unwrap_err().contains("disks"));
        let mut f = facts();
        f.extra = (0..=MAX_EXTRA_FACTS)
            .map(|i| (i.to_string(), String::new()))
            .collect();
        assert!(f.check().unwrap_err().contains("extra"));
        // Within every per-field bound, but too large as a whole.
        let mut f = facts();
        f.addresses = vec!["a".repeat(100); MAX_ADDRESSES];
        assert!(f.check().unwrap_err().contains("serialised"));

        let hello = Hello {
            protocol_versions: vec![1; MAX_HELLO_ITEMS + 1],
            agent_version: String::new(),
            capabilities: vec![],
            facts: facts(),
            plan_generation: None,
        };
        assert!(hello.check().unwrap_err().contains("protocol_versions"));

        let report = ObservedState {
            plan_generation: 1,
            containers: vec![],
            error: Some("e".repeat(MAX_REPORT_ERROR_BYTES + 1)),
            images: vec![],
            failures: vec![],
        };
        assert!(report.check().unwrap_err().contains("error"));
        assert_eq!(report.fit().check(), Ok(()));

        let failure = crate::workload::ContainerFailure {
            key: "s.web.1@2".into(),
            stage: crate::workload::FailureStage::Start,
            message: "é".repeat(MAX_FAILURE_MESSAGE_BYTES),
        };
        let report = ObservedState {
            failures: vec![failure; MAX_REPORTED_FAILURES + 1],
            ..ObservedState::default()
        };
        assert!(report.check().unwrap_err().contains("failures"));
        let fitted = report.fit();
        assert_eq!(fitted.check(), Ok(()));
        assert_eq!(fitted.failures.len(), MAX_REPORTED_FAILURES);
        assert!(fitted.failures[0].message.starts_with("éé"));
    }

    #[test]
    fn truncation_keeps_whole_characters() {
        let mut s = "é".repeat(10);
        truncate(&mut s, 5);
        assert_eq!(s, "éé");
    }

    proptest! {
        #[test]
        fn fitted_facts_always_pass_the_check(
            hostname in ".{0,1500}",
            addresses in proptest::collection::vec("[0-9a-f:.]{0,60}", 0..1300),
            long in proptest::collection::vec(".{1000,1100}", 0..3),
            extra in proptest::collection::btree_map(".{0,10}", ".{0,1200}", 0..80),
        ) {
            let mut addresses = addresses;
            addresses.extend(long);
            let f = HostFacts { hostname, addresses, extra, ..facts() };
            prop_assert_eq!(f.fit().check(), Ok(()));
        }
    }
}
