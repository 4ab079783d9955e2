//! What holds a port: from `/proc/net/*` (the socket's inode) and
//! `/proc/<pid>/fd` (the process with that socket), so that a bind error
//! can say what to stop. Best effort: `None` when it cannot be told.

use std::fs;

use skiff_shared::sections::ingress::Protocol;

/// The process listening on `port`, as "process nginx (pid 812)", or
/// "another program" when the socket is there but its process is not
/// visible (another namespace, no permission).
pub fn holder(port: u16, protocol: Protocol) -> Option<String> {
    let (tables, listening) = match protocol {
        Protocol::Tcp => (["/proc/net/tcp", "/proc/net/tcp6"], "0A"),
        Protocol::Udp => (["/proc/net/udp", "/proc/net/udp6"], "07"),
    };
    let inodes: Vec<String> = tables
        .iter()
        .filter_map(|t| fs::read_to_string(t).ok())
        .flat_map(|text| sockets(&text, port, listening))
        .collect();
    if inodes.is_empty() {
        return None;
    }
    Some(process_of(&inodes).unwrap_or_else(|| "another program".to_owned()))
}

/// The inodes of the sockets bound to `port` in `state`, from a
/// `/proc/net/{tcp,udp}{,6}` table.
fn sockets(text: &str, port: u16, state: &str) -> Vec<String> {
    let want = format!("{port:04X}");
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local_port = f.get(1)?.rsplit(':').next()?;
            (local_port == want && *f.get(3)? == state && *f.get(9)? != "0")
                .then(|| f[9].to_owned())
        })
        .collect()
}

fn process_of(inodes: &[String]) -> Option<String> {
    let targets: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    for proc_entry in fs::read_dir("/proc").ok()?.flatten() {
        let name = proc_entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(fds) = fs::read_dir(proc_entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(link) = fs::read_link(fd.path()) else {
                continue;
            };
            if targets.iter().any(|t| link.as_os_str() == t.as_str()) {
                let comm = fs::read_to_string(proc_entry.path().join("comm")).unwrap_or_default();
                return Some(format!("process {} (pid {pid})", comm.trim()));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listening_socket_is_found_in_the_table() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0\n   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 777 1 0000000000000000 100 0 0 10 0\n";
        assert_eq!(sockets(text, 8080, "0A"), vec!["12345"]);
        assert!(sockets(text, 8081, "0A").is_empty());
    }

    #[test]
    fn this_process_is_named_as_the_holder_of_its_port() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let h = holder(port, Protocol::Tcp).expect("the socket is found");
        assert!(h.contains(&format!("pid {}", std::process::id())), "{h}");
    }
}
