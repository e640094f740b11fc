//! The names other machines reach this machine by: its hostname and its non-loopback
//! addresses, for a development server certificate that listens on every address.
//!
//! Read from the kernel's own files (`/proc/sys/kernel/hostname`, `/proc/net/fib_trie`,
//! `/proc/net/if_inet6`) instead of `getifaddrs`, which would need unsafe code or a new
//! dependency. They describe the network namespace the process runs in, which is what a
//! client on the network sees. Where they cannot be read the list is just shorter.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The kernel's hostname file.
pub const HOSTNAME_FILE: &str = "/proc/sys/kernel/hostname";
/// The IPv4 routing trie; an address this machine owns is a `/32 host LOCAL` entry.
pub const IPV4_FILE: &str = "/proc/net/fib_trie";
/// The IPv6 addresses of every interface, one a line.
pub const IPV6_FILE: &str = "/proc/net/if_inet6";

/// This machine's hostname in lower case, if the kernel has one.
pub fn hostname() -> Option<String> {
    let name = std::fs::read_to_string(HOSTNAME_FILE).ok()?;
    let name = name.trim().to_ascii_lowercase();
    (!name.is_empty() && name != "(none)").then_some(name)
}

/// This machine's addresses that another machine could connect to: IPv4 except loopback,
/// IPv6 of global scope (link-local ones need a zone that no certificate can carry).
pub fn addresses() -> Vec<IpAddr> {
    let read = |path| std::fs::read_to_string(path).unwrap_or_default();
    let mut out: Vec<IpAddr> = parse_fib_trie(&read(IPV4_FILE))
        .into_iter()
        .map(IpAddr::V4)
        .collect();
    out.extend(parse_if_inet6(&read(IPV6_FILE)).into_iter().map(IpAddr::V6));
    out
}

/// The non-loopback addresses `/proc/net/fib_trie` lists as local to this host, once each
/// (the trie shows each in the Main and the Local table): an address line `|-- A.B.C.D`
/// followed by a `/32 host LOCAL` line.
fn parse_fib_trie(text: &str) -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    let mut last: Option<Ipv4Addr> = None;
    for line in text.lines().map(str::trim) {
        if let Some(addr) = line.strip_prefix("|-- ") {
            last = addr.trim().parse().ok();
        } else if line.starts_with("/32 host LOCAL") {
            if let Some(ip) = last.filter(|ip| !ip.is_loopback() && !out.contains(ip)) {
                out.push(ip);
            }
        }
    }
    out
}

/// Scope of an address in `/proc/net/if_inet6` that is reachable beyond its link.
const IPV6_SCOPE_GLOBAL: &str = "00";

/// Global-scope addresses from `/proc/net/if_inet6` (`ADDRESS32HEX IFINDEX PREFIX SCOPE
/// FLAGS NAME` a line).
fn parse_if_inet6(text: &str) -> Vec<Ipv6Addr> {
    let mut out = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [hex, _, _, scope, ..] = fields[..] else {
            continue;
        };
        if scope != IPV6_SCOPE_GLOBAL {
            continue;
        }
        let Ok(bits) = u128::from_str_radix(hex, 16) else {
            continue;
        };
        let ip = Ipv6Addr::from(bits);
        if hex.len() == 32 && !ip.is_loopback() && !out.contains(&ip) {
            out.push(ip);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fib_trie_gives_each_local_non_loopback_address_once() {
        let text = "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 0.0.0.0\n        /0 universe UNICAST\n\
           |-- 127.0.0.1\n              /32 host LOCAL\n\
           |-- 192.0.2.0\n              /24 link UNICAST\n\
           |-- 192.0.2.2\n              /32 host LOCAL\n\
        |-- 192.0.2.255\n           /32 link BROADCAST\n\
        Local:\n           |-- 192.0.2.2\n              /32 host LOCAL\n\
           |-- 10.1.2.3\n              /8 host LOCAL\n              /32 host LOCAL\n";
        assert_eq!(
            parse_fib_trie(text),
            vec![Ipv4Addr::new(192, 0, 2, 2), Ipv4Addr::new(10, 1, 2, 3)]
        );
        assert!(parse_fib_trie("garbage\n|-- not-an-ip\n/32 host LOCAL").is_empty());
    }

    #[test]
    fn if_inet6_keeps_global_scope_only() {
        let text = "fd000000000000000000000000000002 04 40 00 82     eth0\n\
                    fe8000000000000000fc00fffe000001 04 40 20 80     eth0\n\
                    00000000000000000000000000000001 01 80 10 80       lo\n\
                    short 01\n";
        assert_eq!(
            parse_if_inet6(text),
            vec!["fd00::2".parse::<Ipv6Addr>().unwrap()]
        );
    }
}
