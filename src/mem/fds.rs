//! What the process holds open: file descriptors by kind, and TCP sockets by
//! state and peer, read from the target's own network namespace
//! (`/proc/PID/net/tcp{,6}`, so a target in a container is seen as `ss`
//! inside it would see it) and matched to its fds by socket inode.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::target::TargetError;

/// File descriptors of one process.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Fds {
    /// Open descriptors.
    pub total: u64,
    /// By kind: tcp, tcp6 counted as tcp, udp, unix, pipe, eventfd, epoll,
    /// timerfd, signalfd, inotify, file, dev, socket (other families), anon.
    pub by_kind: BTreeMap<String, u64>,
    /// TCP sockets by state name (ss's names, upper case as /proc has them).
    pub tcp_states: BTreeMap<String, u64>,
    /// TCP sockets grouped by remote address:port and state, most first.
    pub tcp_peers: Vec<Peer>,
    /// Listening sockets (by local address:port).
    pub tcp_listen: Vec<String>,
}

/// Sockets to one peer in one state.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Peer {
    /// `addr:port` (IPv6 in brackets).
    pub peer: String,
    /// State name.
    pub state: String,
    /// How many.
    pub count: u64,
}

/// TCP state names by the hex code in /proc/net/tcp (include/net/tcp_states.h).
pub fn tcp_state_name(code: u8) -> &'static str {
    match code {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        12 => "NEW_SYN_RECV",
        _ => "UNKNOWN",
    }
}

/// One socket line of /proc/net/tcp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpSock {
    /// Local address:port.
    pub local: String,
    /// Remote address:port.
    pub remote: String,
    /// State code.
    pub state: u8,
    /// Socket inode.
    pub inode: u64,
}

fn hex_addr(s: &str) -> Option<String> {
    let (a, p) = s.split_once(':')?;
    let port = u16::from_str_radix(p, 16).ok()?;
    match a.len() {
        8 => {
            let v = u32::from_str_radix(a, 16).ok()?;
            // Stored in network order, printed by the kernel as a host u32.
            let ip = std::net::Ipv4Addr::from(v.to_le_bytes());
            Some(format!("{ip}:{port}"))
        }
        32 => {
            let mut b = [0u8; 16];
            for w in 0..4 {
                let v = u32::from_str_radix(&a[w * 8..w * 8 + 8], 16).ok()?;
                b[w * 4..w * 4 + 4].copy_from_slice(&v.to_le_bytes());
            }
            let ip = std::net::Ipv6Addr::from(b);
            match ip.to_ipv4_mapped() {
                Some(v4) => Some(format!("{v4}:{port}")),
                None => Some(format!("[{ip}]:{port}")),
            }
        }
        _ => None,
    }
}

/// Parse /proc/net/tcp or tcp6 text.
pub fn parse_tcp(text: &str) -> Vec<TcpSock> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 10 {
                return None;
            }
            Some(TcpSock {
                local: hex_addr(f[1])?,
                remote: hex_addr(f[2])?,
                state: u8::from_str_radix(f[3], 16).ok()?,
                inode: f[9].parse().ok()?,
            })
        })
        .collect()
}

fn socket_inodes(pid: i32, file: &str) -> HashMap<u64, ()> {
    std::fs::read_to_string(format!("/proc/{pid}/net/{file}"))
        .map(|t| {
            t.lines()
                .skip(1)
                .filter_map(|l| l.split_whitespace().nth(9)?.parse().ok())
                .map(|i| (i, ()))
                .collect()
        })
        .unwrap_or_default()
}

fn unix_inodes(pid: i32) -> HashMap<u64, ()> {
    std::fs::read_to_string(format!("/proc/{pid}/net/unix"))
        .map(|t| {
            t.lines()
                .skip(1)
                .filter_map(|l| l.split_whitespace().nth(6)?.parse().ok())
                .map(|i| (i, ()))
                .collect()
        })
        .unwrap_or_default()
}

/// Classify the fd links of `pid`.
pub fn read(pid: i32) -> Result<Fds, TargetError> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map_err(|e| TargetError::from_io(pid, "listing /proc/PID/fd", e))?;
    let mut tcp: HashMap<u64, TcpSock> = HashMap::new();
    for f in ["tcp", "tcp6"] {
        if let Ok(t) = std::fs::read_to_string(format!("/proc/{pid}/net/{f}")) {
            for s in parse_tcp(&t) {
                tcp.insert(s.inode, s);
            }
        }
    }
    let udp: HashMap<u64, ()> = socket_inodes(pid, "udp")
        .into_iter()
        .chain(socket_inodes(pid, "udp6"))
        .collect();
    let unix = unix_inodes(pid);
    let mut out = Fds::default();
    let mut peers: BTreeMap<(String, String), u64> = BTreeMap::new();
    for e in dir.flatten().take(1 << 22) {
        let Ok(link) = std::fs::read_link(e.path()) else {
            continue; // closed meanwhile
        };
        let l = link.to_string_lossy();
        out.total += 1;
        let kind = if let Some(ino) = l
            .strip_prefix("socket:[")
            .and_then(|x| x.strip_suffix(']'))
            .and_then(|x| x.parse::<u64>().ok())
        {
            if let Some(s) = tcp.get(&ino) {
                let st = tcp_state_name(s.state).to_string();
                *out.tcp_states.entry(st.clone()).or_default() += 1;
                if s.state == 10 {
                    out.tcp_listen.push(s.local.clone());
                } else {
                    *peers.entry((s.remote.clone(), st)).or_default() += 1;
                }
                "tcp"
            } else if udp.contains_key(&ino) {
                "udp"
            } else if unix.contains_key(&ino) {
                "unix"
            } else {
                "socket"
            }
        } else if l.starts_with("pipe:") {
            "pipe"
        } else if let Some(a) = l.strip_prefix("anon_inode:") {
            match a.trim_matches(|c| c == '[' || c == ']') {
                "eventfd" => "eventfd",
                "eventpoll" => "epoll",
                "timerfd" => "timerfd",
                "signalfd" => "signalfd",
                "inotify" => "inotify",
                _ => "anon",
            }
        } else if l.starts_with("/dev/") {
            "dev"
        } else if l.starts_with('/') {
            "file"
        } else {
            "other"
        };
        *out.by_kind.entry(kind.to_string()).or_default() += 1;
    }
    out.tcp_listen.sort();
    out.tcp_listen.dedup();
    out.tcp_peers = peers
        .into_iter()
        .map(|((peer, state), count)| Peer { peer, state, count })
        .collect();
    out.tcp_peers
        .sort_by(|a, b| b.count.cmp(&a.count).then(a.peer.cmp(&b.peer)));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_tcp() {
        let t = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:4E20 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0
   1: 0100007F:C350 0100007F:4E20 08 00000000:00000000 00:00000000 00000000     0        0 12346 1 0000000000000000 20 4 30 10 -1
";
        let s = parse_tcp(t);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].local, "127.0.0.1:20000");
        assert_eq!(s[1].remote, "127.0.0.1:20000");
        assert_eq!(tcp_state_name(s[1].state), "CLOSE_WAIT");
        assert_eq!(s[1].inode, 12346);
        let v6 = hex_addr("00000000000000000000000001000000:0050").unwrap();
        assert_eq!(v6, "[::1]:80");
    }
}
