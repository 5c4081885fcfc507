//! The client's address, believing `X-Forwarded-For` only from trusted proxies.
//!
//! actix-web's `realip_remote_addr()` takes the *left-most* X-Forwarded-For entry, which
//! the client chooses (nginx's `$proxy_add_x_forwarded_for` appends). We start from the
//! socket peer and, while the hop we are looking at is a trusted proxy, step one entry to
//! the left; the first untrusted address is the client. The tracker never hands IPs to
//! peers (WebRTC does its own ICE), so this only feeds per-IP limits and logs.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

/// Resolves the client IP from the socket peer and the X-Forwarded-For header values (in
/// the order they appeared).
pub fn resolve<'a>(
    peer: Option<SocketAddr>,
    forwarded_for: impl Iterator<Item = &'a str>,
    trusted: &[IpNet],
) -> Option<IpAddr> {
    let peer_ip = canonical(peer?.ip());
    if !is_trusted(peer_ip, trusted) {
        return Some(peer_ip);
    }
    let hops: Vec<&str> = forwarded_for
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|hop| !hop.is_empty())
        .collect();
    let mut client = peer_ip;
    for hop in hops.iter().rev() {
        match parse_hop(hop) {
            Some(ip) => {
                client = ip;
                if !is_trusted(ip, trusted) {
                    break;
                }
            }
            // Garbage in the chain: stop at the last address we could trust.
            None => break,
        }
    }
    Some(client)
}

fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|net| net.contains(&ip))
}

/// IPv4-mapped IPv6 addresses count as IPv4, so limits and trust lists match either form.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// An XFF hop may be `1.2.3.4`, `1.2.3.4:5678`, `::1` or `[::1]:5678`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    hop.parse::<SocketAddr>()
        .ok()
        .map(|addr| canonical(addr.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|net| net.parse().expect("cidr")).collect()
    }

    fn peer(ip: &str) -> Option<SocketAddr> {
        Some(SocketAddr::new(ip.parse().expect("ip"), 4000))
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_the_header_says() {
        let ip = resolve(
            peer("203.0.113.9"),
            ["6.6.6.6"].into_iter(),
            &nets(&["10.0.0.0/8"]),
        );
        assert_eq!(ip, Some("203.0.113.9".parse().expect("ip")));
    }

    #[test]
    fn trusted_proxy_yields_the_rightmost_untrusted_hop() {
        let ip = resolve(
            peer("10.0.0.1"),
            ["6.6.6.6, 198.51.100.7, 10.0.0.2"].into_iter(),
            &nets(&["10.0.0.0/8"]),
        );
        assert_eq!(ip, Some("198.51.100.7".parse().expect("ip")));
    }

    #[test]
    fn several_headers_are_one_list_and_ports_are_ignored() {
        let ip = resolve(
            peer("127.0.0.1"),
            ["198.51.100.7:5555", "[2001:db8::1]:443"].into_iter(),
            &nets(&["127.0.0.1/32"]),
        );
        assert_eq!(ip, Some("2001:db8::1".parse().expect("ip")));
    }

    #[test]
    fn trusted_proxy_without_header_is_the_client() {
        let ip = resolve(
            peer("127.0.0.1"),
            std::iter::empty(),
            &nets(&["127.0.0.1/32"]),
        );
        assert_eq!(ip, Some("127.0.0.1".parse().expect("ip")));
    }

    #[test]
    fn garbage_stops_the_walk() {
        let ip = resolve(
            peer("127.0.0.1"),
            ["198.51.100.7, not-an-ip"].into_iter(),
            &nets(&["127.0.0.1/32"]),
        );
        assert_eq!(ip, Some("127.0.0.1".parse().expect("ip")));
    }

    #[test]
    fn mapped_ipv4_counts_as_ipv4() {
        let ip = resolve(peer("::ffff:192.0.2.1"), std::iter::empty(), &[]);
        assert_eq!(ip, Some("192.0.2.1".parse().expect("ip")));
    }
}
