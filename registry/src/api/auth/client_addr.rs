//! Which address a request's failed logins count against: the peer's, or, only when the peer
//! is a proxy the operator trusts (`serve --trusted-proxy CIDR`), the address that proxy put
//! last in `X-Forwarded-For` (the one it added; earlier entries come from the client and prove
//! nothing). With no trusted range (the default) the header is ignored: any client could
//! otherwise choose the address its failures count against, escape the per-address lockout, or
//! lock someone else out.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request};
use axum::middleware::Next;
use axum::Router;

/// One trusted range, `ADDRESS/PREFIX` (a bare address is the range of that address alone).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrustedProxy {
    network: IpAddr,
    prefix: u8,
}

impl TrustedProxy {
    /// Whether `addr` is inside this range. An IPv4 address and its IPv6-mapped form
    /// (`::ffff:a.b.c.d`, how a dual-stack listener sees an IPv4 peer) are the same address,
    /// whichever form the range or the peer is written in.
    pub fn contains(&self, addr: IpAddr) -> bool {
        let in_v6 = |net: Ipv6Addr, a: Ipv6Addr| {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(self.prefix))
                .unwrap_or(0);
            u128::from(net) & mask == u128::from(a) & mask
        };
        match (self.network, addr) {
            (IpAddr::V4(net), IpAddr::V4(a)) => in_v4(net, a, self.prefix),
            (IpAddr::V4(net), IpAddr::V6(a)) => a
                .to_ipv4_mapped()
                .is_some_and(|a| in_v4(net, a, self.prefix)),
            (IpAddr::V6(net), IpAddr::V6(a)) => in_v6(net, a),
            (IpAddr::V6(net), IpAddr::V4(a)) => in_v6(net, a.to_ipv6_mapped()),
        }
    }
}

fn in_v4(net: Ipv4Addr, a: Ipv4Addr, prefix: u8) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    u32::from(net) & mask == u32::from(a) & mask
}

impl FromStr for TrustedProxy {
    type Err = String;

    fn from_str(s: &str) -> Result<TrustedProxy, String> {
        let s = s.trim();
        let bad = |why: &str| {
            format!(
                "{s:?} is not a trusted proxy range ({why}): give ADDRESS/PREFIX, e.g. \
                 127.0.0.1/32 or 172.18.0.0/16, or a single address"
            )
        };
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let network: IpAddr = addr.parse().map_err(|_| bad("not an IP address"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| bad(&format!("the prefix must be 0 to {max}")))?,
        };
        Ok(TrustedProxy { network, prefix })
    }
}

impl fmt::Display for TrustedProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The client address a request's failures count against, put in its extensions by
/// [`with_client_addr`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct ClientAddr(pub IpAddr);

/// Puts every request's client address in its extensions, trusting `X-Forwarded-For` only from
/// a peer inside `trusted`. Layered outside the access guard and the token service. With no
/// trusted range there is nothing to resolve (the peer is the address): no layer, no per-request
/// cost.
pub fn with_client_addr(router: Router, trusted: Vec<TrustedProxy>) -> Router {
    if trusted.is_empty() {
        return router;
    }
    let trusted: Arc<[TrustedProxy]> = trusted.into();
    router.layer(axum::middleware::from_fn(
        move |mut request: Request, next: Next| {
            let trusted = trusted.clone();
            async move {
                let addr = resolve(&request, &trusted);
                request.extensions_mut().insert(ClientAddr(addr));
                next.run(request).await
            }
        },
    ))
}

/// The peer, or the last `X-Forwarded-For` entry when the peer is a trusted proxy.
fn resolve(request: &Request, trusted: &[TrustedProxy]) -> IpAddr {
    let peer = peer(request.extensions());
    if !trusted.iter().any(|t| t.contains(peer)) {
        return peer;
    }
    request
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .and_then(|last| last.trim().parse().ok())
        .unwrap_or(peer)
}

fn peer(extensions: &axum::http::Extensions) -> IpAddr {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// The address a request's failed logins count against: as [`with_client_addr`] resolved it,
/// else the peer (no `X-Forwarded-For` is trusted without that layer).
/// The address a request's failed logins count against, from its extensions.
pub(crate) fn client_addr(extensions: &axum::http::Extensions) -> IpAddr {
    extensions
        .get::<ClientAddr>()
        .map(|c| c.0)
        .unwrap_or_else(|| peer(extensions))
}

/// Fuzz target for [`TrustedProxy`]'s parser (bounded run below; `fuzz/` under `cargo fuzz`):
/// any text is refused with a message or parsed into a range that prints back as itself and
/// holds its own network address.
#[cfg(any(test, fuzzing))]
pub fn fuzz_trusted_proxy(data: &[u8]) {
    let text = fuzzkit::text(data);
    match text.parse::<TrustedProxy>() {
        Ok(range) => {
            let printed = range.to_string();
            assert_eq!(
                printed.parse::<TrustedProxy>(),
                Ok(range),
                "{text:?} -> {printed}"
            );
            assert!(range.contains(range.network), "{text:?} -> {printed}");
        }
        Err(message) => assert!(message.contains("trusted proxy range"), "{message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fuzz_trusted_proxy_bounded() {
        let seeds: [&[u8]; 5] = [
            b"127.0.0.1/32",
            b"172.16.0.0/12",
            b"10.0.0.9",
            b"fd00::/8",
            b"::ffff:10.0.0.1/128",
        ];
        fuzzkit::run("registry::trusted_proxy", &seeds, fuzz_trusted_proxy);
    }

    #[test]
    fn ranges_parse_and_contain() {
        let loopback: TrustedProxy = "127.0.0.1/32".parse().unwrap();
        assert!(loopback.contains("127.0.0.1".parse().unwrap()));
        assert!(!loopback.contains("127.0.0.2".parse().unwrap()));
        assert!(loopback.contains("::ffff:127.0.0.1".parse().unwrap()));
        let docker: TrustedProxy = "172.16.0.0/12".parse().unwrap();
        assert!(docker.contains("172.18.0.5".parse().unwrap()));
        assert!(!docker.contains("172.32.0.1".parse().unwrap()));
        let one: TrustedProxy = "10.0.0.9".parse().unwrap();
        assert_eq!(one.to_string(), "10.0.0.9/32");
        let any: TrustedProxy = "0.0.0.0/0".parse().unwrap();
        assert!(any.contains("8.8.8.8".parse().unwrap()));
        let v6: TrustedProxy = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "fd00::/129", "10.0.0.0/x", "host.local", ""] {
            let err = bad.parse::<TrustedProxy>().unwrap_err();
            assert!(err.contains("give ADDRESS/PREFIX"), "{bad:?}: {err}");
        }
        // A range written in the IPv6-mapped form holds the IPv4 peer, and the other way round.
        let mapped: TrustedProxy = "::ffff:10.0.0.0/120".parse().unwrap();
        assert!(mapped.contains("10.0.0.5".parse().unwrap()));
        assert!(mapped.contains("::ffff:10.0.0.5".parse().unwrap()));
        assert!(!mapped.contains("10.0.1.5".parse().unwrap()));
        for bad in ["", "10.0.0.0/33", "fd00::/129", "x/8", "10.0.0.0/-1"] {
            let err = bad.parse::<TrustedProxy>().unwrap_err();
            assert!(err.contains("ADDRESS/PREFIX"), "{err}");
        }
    }
}
