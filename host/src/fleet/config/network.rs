//! A fleet's network, decided before anything starts (pure: no interface
//! is touched here; `fleet::runner::network` does that).
//!
//! `[fleet] network = { bridge = "tandem0", subnet = "10.77.0.0/24" }`: the
//! bridge takes the subnet's first address (the VMs' gateway); the VMs
//! whose image declares a network device get, in file order (replicas in
//! turn), the next addresses, a tap `BRIDGE-N` on the bridge (N from 0),
//! and a MAC made from their address ([`mac_for`]). The table's `rate`,
//! `rate_burst`, `pps` and `pps_burst` are every such VM's rate limits, as
//! `--net` takes them, under a VM's own `net = { ... }`.
//!
//! A command line names another VM's address as `${NAME.ip}`
//! ([`substitute`]).

use std::net::Ipv4Addr;

use crate::devices::rate_limiter::RateLimit;

/// The longest interface name Linux takes (`IFNAMSIZ` less its NUL).
pub const MAX_IFNAME: usize = libc::IFNAMSIZ - 1;
/// The longest prefix accepted: a /30 has room for one VM.
pub const MAX_PREFIX: u8 = 30;
/// The first two bytes of a fleet VM's MAC: locally administered, unicast
/// (0x02), then `T`; the other four are its IPv4 address.
pub const MAC_PREFIX: [u8; 2] = [0x02, 0x54];

/// A fleet's network, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetNetwork {
    /// The bridge's name.
    pub bridge: String,
    /// The subnet's network address.
    pub subnet: Ipv4Addr,
    /// Its prefix length.
    pub prefix_len: u8,
    /// The bridge's address, the VMs' gateway: the subnet's first address.
    pub gateway: Ipv4Addr,
    /// Each networked VM's rate limits.
    pub limit: RateLimit,
}

impl FleetNetwork {
    /// A network on `bridge` over `subnet` (`A/P`, `A` the network address).
    pub fn new(bridge: &str, subnet: &str, limit: RateLimit) -> Result<Self, String> {
        check_ifname(bridge)?;
        let (addr, prefix_len) = parse_subnet(subnet)?;
        let gateway = Ipv4Addr::from(u32::from(addr) + 1);
        Ok(Self {
            bridge: bridge.into(),
            subnet: addr,
            prefix_len,
            gateway,
            limit,
        })
    }

    /// How many VMs the subnet has room for (its addresses less the
    /// network address, the gateway and the broadcast address).
    pub fn capacity(&self) -> usize {
        let size = 1u64 << (32 - u32::from(self.prefix_len));
        usize::try_from(size - 3).unwrap_or(usize::MAX)
    }

    /// The `n`th networked VM's address (from 0), if the subnet has room.
    pub fn address(&self, n: usize) -> Option<Ipv4Addr> {
        if n >= self.capacity() {
            return None;
        }
        let n = u32::try_from(n).ok()?;
        Some(Ipv4Addr::from(u32::from(self.gateway) + 1 + n))
    }

    /// The `n`th networked VM's tap.
    pub fn tap_name(&self, n: usize) -> String {
        format!("{}-{n}", self.bridge)
    }

    /// Whether the taps of `count` VMs have names Linux takes: says how
    /// long the bridge's name may be if not.
    pub fn check_tap_names(&self, count: usize) -> Result<(), String> {
        let Some(last) = count.checked_sub(1) else {
            return Ok(());
        };
        let longest = self.tap_name(last);
        if longest.len() > MAX_IFNAME {
            let room = MAX_IFNAME - 1 - last.to_string().len();
            return Err(format!(
                "bridge name `{}` is too long for its VMs' taps (`{longest}` has more than {MAX_IFNAME} bytes): use at most {room} bytes",
                self.bridge
            ));
        }
        Ok(())
    }
}

/// A fleet VM's MAC: [`MAC_PREFIX`] and its address, so that it is unique
/// on the bridge and the same on every restart.
pub fn mac_for(addr: Ipv4Addr) -> [u8; 6] {
    let o = addr.octets();
    [MAC_PREFIX[0], MAC_PREFIX[1], o[0], o[1], o[2], o[3]]
}

/// An interface name Linux takes (1 to 15 bytes; letters, digits, `-`,
/// `_`, `.`).
pub fn check_ifname(name: &str) -> Result<(), String> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if name.is_empty() || name.len() > MAX_IFNAME || !ok_chars {
        return Err(format!(
            "`{name}` is not an interface name (1 to {MAX_IFNAME} letters, digits, `-`, `_`, `.`)"
        ));
    }
    Ok(())
}

/// `A/P`: a network address (host bits zero) and a prefix of 8 to
/// [`MAX_PREFIX`].
pub fn parse_subnet(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let bad = || format!("`{s}` is not a subnet such as \"10.77.0.0/24\"");
    let (a, p) = s.split_once('/').ok_or_else(bad)?;
    let addr: Ipv4Addr = a.parse().map_err(|_| bad())?;
    let prefix: u8 = p.parse().map_err(|_| bad())?;
    if !(8..=MAX_PREFIX).contains(&prefix) {
        return Err(format!(
            "subnet `{s}`: the prefix must be 8 to {MAX_PREFIX} (room for a gateway and a VM)"
        ));
    }
    let mask = u32::MAX << (32 - u32::from(prefix));
    if u32::from(addr) & !mask != 0 {
        let net = Ipv4Addr::from(u32::from(addr) & mask);
        return Err(format!(
            "subnet `{s}` has host bits set: write its network address, {net}/{prefix}"
        ));
    }
    Ok((addr, prefix))
}

/// One `${NAME.ip}` of a command line: where it starts (a byte offset)
/// and the VM it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// Byte offset of its `$`.
    pub at: usize,
    /// The VM's name.
    pub name: String,
}

/// A reference that cannot be read, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadReference {
    /// Byte offset of its `$`.
    pub at: usize,
    /// What is wrong.
    pub message: String,
}

/// The `${NAME.ip}` references of `cmdline`, or the first malformed one.
pub fn references(cmdline: &str) -> Result<Vec<Reference>, BadReference> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(i) = cmdline[from..].find("${") {
        let at = from + i;
        let rest = &cmdline[at + 2..];
        let Some(end) = rest.find('}') else {
            return Err(BadReference {
                at,
                message: "`${` without its closing `}` (write ${NAME.ip})".into(),
            });
        };
        let inner = &rest[..end];
        match inner.rsplit_once('.') {
            Some((name, "ip")) if !name.is_empty() => found.push(Reference {
                at,
                name: name.into(),
            }),
            _ => {
                return Err(BadReference {
                    at,
                    message: format!("`${{{inner}}}` is not a reference (write ${{NAME.ip}})"),
                })
            }
        }
        from = at + 2 + end + 1;
    }
    Ok(found)
}

/// `cmdline` with each `${NAME.ip}` replaced by `address(NAME)`, once
/// [`references`] found them all good.
pub fn substitute(cmdline: &str, address: impl Fn(&str) -> Option<Ipv4Addr>) -> String {
    let Ok(refs) = references(cmdline) else {
        return cmdline.into();
    };
    let mut out = String::with_capacity(cmdline.len());
    let mut from = 0;
    for r in refs {
        out.push_str(&cmdline[from..r.at]);
        let len = "${".len() + r.name.len() + ".ip}".len();
        match address(&r.name) {
            Some(a) => out.push_str(&a.to_string()),
            None => out.push_str(&cmdline[r.at..r.at + len]),
        }
        from = r.at + len;
    }
    out.push_str(&cmdline[from..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(subnet: &str) -> FleetNetwork {
        FleetNetwork::new("tandem0", subnet, RateLimit::default()).unwrap()
    }

    #[test]
    fn hands_out_addresses_after_the_gateway() {
        let n = net("10.77.0.0/24");
        assert_eq!(n.gateway, Ipv4Addr::new(10, 77, 0, 1));
        assert_eq!(n.address(0), Some(Ipv4Addr::new(10, 77, 0, 2)));
        assert_eq!(n.address(252), Some(Ipv4Addr::new(10, 77, 0, 254)));
        assert_eq!(n.address(253), None);
        assert_eq!(n.capacity(), 253);
        assert_eq!(net("10.77.0.0/30").capacity(), 1);
        assert_eq!(
            net("10.77.0.4/30").address(0),
            Some(Ipv4Addr::new(10, 77, 0, 6))
        );
        assert_eq!(n.tap_name(3), "tandem0-3");
        assert_eq!(
            mac_for(Ipv4Addr::new(10, 77, 0, 2)),
            [2, 0x54, 10, 77, 0, 2]
        );
    }

    #[test]
    fn refuses_bad_subnets_and_names() {
        assert!(parse_subnet("10.77.0.0")
            .unwrap_err()
            .contains("not a subnet"));
        assert!(parse_subnet("10.77.0.0/31")
            .unwrap_err()
            .contains("8 to 30"));
        assert!(parse_subnet("10.77.0.0/4").unwrap_err().contains("8 to 30"));
        assert!(parse_subnet("10.77.0.5/24")
            .unwrap_err()
            .contains("write its network address, 10.77.0.0/24"));
        assert!(check_ifname("").is_err());
        assert!(check_ifname("br/0").is_err());
        assert!(check_ifname("0123456789abcdef").is_err());
        assert!(check_ifname("0123456789abcde").is_ok());
    }

    #[test]
    fn tap_names_fit_ifnamsiz() {
        let n = FleetNetwork::new("tandem-fleet", "10.77.0.0/16", RateLimit::default()).unwrap();
        // tandem-fleet-9 is 14 bytes, tandem-fleet-10 is 15: fine.
        assert!(n.check_tap_names(11).is_ok());
        let e = n.check_tap_names(101).unwrap_err();
        assert!(
            e.contains("`tandem-fleet-100`") && e.contains("at most 11 bytes"),
            "{e}"
        );
        assert!(n.check_tap_names(0).is_ok());
    }

    #[test]
    fn finds_and_substitutes_references() {
        let c = "db=${db.ip}:5432 cache=${cache-0.ip}";
        let refs = references(c).unwrap();
        assert_eq!(
            refs,
            [
                Reference {
                    at: 3,
                    name: "db".into()
                },
                Reference {
                    at: 23,
                    name: "cache-0".into()
                }
            ]
        );
        let out = substitute(c, |n| match n {
            "db" => Some(Ipv4Addr::new(10, 77, 0, 2)),
            "cache-0" => Some(Ipv4Addr::new(10, 77, 0, 3)),
            _ => None,
        });
        assert_eq!(out, "db=10.77.0.2:5432 cache=10.77.0.3");
        assert_eq!(substitute("plain $HOME", |_| None), "plain $HOME");
        let e = references("a ${db.ip").unwrap_err();
        assert_eq!(e.at, 2);
        assert!(e.message.contains("without its closing"));
        let e = references("x ${db.mac} y").unwrap_err();
        assert_eq!(e.at, 2);
        assert!(
            e.message.contains("`${db.mac}` is not a reference"),
            "{}",
            e.message
        );
        assert!(references("${.ip}").is_err());
    }
}
