//! What an operator asks for with `--net tap=NAME[,mac=M][,ip=A/P][,gw=G][,dns=D]`
//! and its rate limits `[,rate=BYTES][,rate_burst=BYTES][,pps=N][,pps_burst=N]`:
//! parsed and checked here, so the CLI and the library agree and every
//! refusal is tested.
//!
//! The limits hold for each direction on its own (what the guest sends, what
//! it receives), counted in Ethernet frame bytes: `rate` bytes a second
//! (binary units as `--mem`: `10M` is 10 MiB/s), `pps` frames a second
//! (decimal units: `10k` is 10 000). A burst defaults to a tenth of a
//! second's worth ([`DEFAULT_BURST_DIVISOR`]).

use std::net::Ipv4Addr;

use super::rate_limiter::{Bucket, RateLimit};
use super::tap::TapSetup;
use crate::units::{parse_count, parse_size};

/// A burst left out is the rate divided by this: a tenth of a second.
pub const DEFAULT_BURST_DIVISOR: u64 = 10;

/// A network device to give a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetSpec {
    /// The tap to attach (it must exist).
    pub tap: String,
    /// The guest's MAC address (none: a random locally administered one).
    pub mac: Option<[u8; 6]>,
    /// Static IPv4 settings (none: the guest asks DHCP).
    pub ipv4: Option<StaticIpv4>,
    /// Token-bucket limits for each direction (default: none).
    pub limit: RateLimit,
    /// The bridge a tap Tandem makes joins (a fleet's network; not a
    /// `--net` item): then the host side gets no address of its own.
    pub bridge: Option<String>,
}

impl NetSpec {
    /// How the tap is to be attached or made: a tap Tandem makes gets the
    /// gateway's address (with the guest's prefix) on the host side, or
    /// joins the bridge.
    pub fn tap_setup(&self) -> TapSetup {
        TapSetup {
            name: self.tap.clone(),
            host_ipv4: self
                .ipv4
                .and_then(|ip| ip.gateway.map(|g| (g, ip.prefix_len))),
            bridge: self.bridge.clone(),
        }
    }
}

/// Static IPv4 settings handed to the guest in its boot-info block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaticIpv4 {
    /// The guest's address.
    pub address: Ipv4Addr,
    /// Its prefix length.
    pub prefix_len: u8,
    /// The default gateway.
    pub gateway: Option<Ipv4Addr>,
    /// A DNS server.
    pub dns: Option<Ipv4Addr>,
}

/// Why a `--net` value was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum NetSpecError {
    /// No `tap=NAME`.
    #[error("--net needs tap=NAME (an existing tap, e.g. from `ip tuntap add NAME mode tap`)")]
    NoTap,
    /// An item that is not `key=value` or a key Tandem does not know.
    #[error("--net: unknown item {0:?} (expected tap=, mac=, ip=, gw=, dns=, rate=, rate_burst=, pps=, pps_burst=)")]
    Unknown(String),
    /// A key given twice.
    #[error("--net: {0} given twice")]
    Twice(&'static str),
    /// A bad tap name.
    #[error(
        "--net: tap name {0:?} is not an interface name (1 to 15 bytes, no '/', spaces or ',')"
    )]
    TapName(String),
    /// A bad MAC address.
    #[error("--net: mac {0:?} is not six hex bytes (like 02:00:00:00:00:01) or is multicast")]
    Mac(String),
    /// A bad address or prefix.
    #[error("--net: ip {0:?} is not an IPv4 address with a prefix (like 10.0.0.2/24)")]
    Ip(String),
    /// A bad gateway or DNS address.
    #[error("--net: {what} {value:?} is not an IPv4 address")]
    Addr {
        /// Which key.
        what: &'static str,
        /// The value.
        value: String,
    },
    /// A gateway or DNS without a static address.
    #[error("--net: gw= and dns= need ip= (without it the guest asks DHCP)")]
    NeedsIp,
    /// A bad rate or burst.
    #[error("{key}={value:?}: {reason}")]
    Limit {
        /// Which key.
        key: &'static str,
        /// The value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A burst without its rate.
    #[error("{burst}= needs {rate}= (a burst of no limit means nothing)")]
    BurstWithoutRate {
        /// The burst's key.
        burst: &'static str,
        /// The rate's key.
        rate: &'static str,
    },
    /// A gateway outside the address's network.
    #[error("--net: gateway {gw} is not in {net}")]
    GatewayOffNet {
        /// The gateway.
        gw: Ipv4Addr,
        /// The network, as `A/P`.
        net: String,
    },
}

impl std::str::FromStr for NetSpec {
    type Err = NetSpecError;

    /// ```
    /// use tandem::devices::NetSpec;
    /// let spec: NetSpec = "tap=tdm0,ip=10.0.0.2/24,gw=10.0.0.1".parse().unwrap();
    /// assert_eq!(spec.tap, "tdm0");
    /// assert_eq!(spec.ipv4.unwrap().prefix_len, 24);
    /// assert!("ip=10.0.0.2/24".parse::<NetSpec>().is_err());
    /// ```
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (mut tap, mut mac, mut ip, mut gw, mut dns) = (None, None, None, None, None);
        let mut limits = LimitItems::default();
        fn once<T>(slot: &mut Option<T>, key: &'static str, v: T) -> Result<(), NetSpecError> {
            if slot.replace(v).is_some() {
                return Err(NetSpecError::Twice(key));
            }
            Ok(())
        }
        let addr = |what, v: &str| {
            v.parse::<Ipv4Addr>().map_err(|_| NetSpecError::Addr {
                what,
                value: v.into(),
            })
        };
        for item in s.split(',').filter(|i| !i.is_empty()) {
            let Some((key, value)) = item.split_once('=') else {
                return Err(NetSpecError::Unknown(item.into()));
            };
            match key {
                "tap" => once(&mut tap, "tap", tap_name(value)?)?,
                "mac" => once(&mut mac, "mac", parse_mac(value)?)?,
                "ip" => once(&mut ip, "ip", parse_cidr(value)?)?,
                "gw" => once(&mut gw, "gw", addr("gw", value)?)?,
                "dns" => once(&mut dns, "dns", addr("dns", value)?)?,
                _ => {
                    if !limits.set(key, value).map_err(in_net)? {
                        return Err(NetSpecError::Unknown(item.into()));
                    }
                }
            }
        }
        let tap = tap.ok_or(NetSpecError::NoTap)?;
        let ipv4 = match ip {
            None if gw.is_some() || dns.is_some() => return Err(NetSpecError::NeedsIp),
            None => None,
            Some((address, prefix_len)) => {
                if let Some(g) = gw {
                    let mask = u32::MAX
                        .checked_shl(32 - u32::from(prefix_len))
                        .unwrap_or(0);
                    if u32::from(g) & mask != u32::from(address) & mask {
                        return Err(NetSpecError::GatewayOffNet {
                            gw: g,
                            net: format!("{address}/{prefix_len}"),
                        });
                    }
                }
                Some(StaticIpv4 {
                    address,
                    prefix_len,
                    gateway: gw,
                    dns,
                })
            }
        };
        let limit = limits.build().map_err(in_net)?;
        Ok(Self {
            tap,
            mac,
            ipv4,
            limit,
            bridge: None,
        })
    }
}

/// A limit's refusal as part of `--net`.
fn in_net(e: NetSpecError) -> NetSpecError {
    match e {
        NetSpecError::Limit { key, value, reason } => NetSpecError::Limit {
            key,
            value,
            reason: format!("{reason} (in --net)"),
        },
        e => e,
    }
}

/// The rate-limit items (`rate`, `rate_burst`, `pps`, `pps_burst`) as
/// `--net` and a fleet file's `network` table give them, checked one by one
/// and then together.
///
/// ```
/// use tandem::devices::spec::LimitItems;
/// let mut items = LimitItems::default();
/// assert!(items.set("rate", "10M").unwrap());
/// assert!(items.set("pps", "10k").unwrap());
/// assert!(!items.set("colour", "blue").unwrap()); // not a limit key
/// let limit = items.build().unwrap();
/// assert_eq!(limit.bytes.unwrap().rate(), 10 << 20);
/// assert_eq!(limit.bytes.unwrap().burst(), (10 << 20) / 10);
/// assert_eq!(limit.ops.unwrap().burst(), 1000);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitItems {
    rate: Option<u64>,
    rate_burst: Option<u64>,
    pps: Option<u64>,
    pps_burst: Option<u64>,
}

impl LimitItems {
    /// Takes `key=value` if `key` is a limit key (`Ok(false)` if it is
    /// not); refuses a bad value or a key given twice.
    pub fn set(&mut self, key: &str, value: &str) -> Result<bool, NetSpecError> {
        type Parse = fn(&str) -> Result<u64, String>;
        let (key, slot, parse): (&'static str, _, Parse) = match key {
            "rate" => ("rate", &mut self.rate, parse_size),
            "rate_burst" => ("rate_burst", &mut self.rate_burst, parse_size),
            "pps" => ("pps", &mut self.pps, parse_count),
            "pps_burst" => ("pps_burst", &mut self.pps_burst, parse_count),
            _ => return Ok(false),
        };
        let n = parse(value).map_err(|reason| NetSpecError::Limit {
            key,
            value: value.into(),
            reason,
        })?;
        if n == 0 {
            return Err(NetSpecError::Limit {
                key,
                value: value.into(),
                reason: "0 would stop all traffic (leave the limit out for none)".into(),
            });
        }
        if slot.replace(n).is_some() {
            return Err(NetSpecError::Twice(key));
        }
        Ok(true)
    }

    /// These items, with each one `over` gives taking the place of this one
    /// (a fleet VM's own limits over the fleet's).
    pub fn overlay(self, over: LimitItems) -> LimitItems {
        LimitItems {
            rate: over.rate.or(self.rate),
            rate_burst: over.rate_burst.or(self.rate_burst),
            pps: over.pps.or(self.pps),
            pps_burst: over.pps_burst.or(self.pps_burst),
        }
    }

    /// The limit they describe; a burst left out is a tenth of a second's
    /// worth (at least 1).
    pub fn build(self) -> Result<RateLimit, NetSpecError> {
        fn bucket(
            rate: Option<u64>,
            burst: Option<u64>,
            keys: (&'static str, &'static str),
        ) -> Result<Option<Bucket>, NetSpecError> {
            let Some(rate) = rate else {
                return match burst {
                    Some(_) => Err(NetSpecError::BurstWithoutRate {
                        burst: keys.1,
                        rate: keys.0,
                    }),
                    None => Ok(None),
                };
            };
            let burst = burst.unwrap_or((rate / DEFAULT_BURST_DIVISOR).max(1));
            Bucket::new(rate, burst)
                .map(Some)
                .map_err(|e| NetSpecError::Limit {
                    key: keys.0,
                    value: rate.to_string(),
                    reason: e.to_string(),
                })
        }
        Ok(RateLimit {
            bytes: bucket(self.rate, self.rate_burst, ("rate", "rate_burst"))?,
            ops: bucket(self.pps, self.pps_burst, ("pps", "pps_burst"))?,
        })
    }
}

fn tap_name(v: &str) -> Result<String, NetSpecError> {
    let ok = !v.is_empty()
        && v.len() < libc::IFNAMSIZ
        && v.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b',');
    ok.then(|| v.to_string())
        .ok_or_else(|| NetSpecError::TapName(v.into()))
}

fn parse_mac(v: &str) -> Result<[u8; 6], NetSpecError> {
    let bad = || NetSpecError::Mac(v.into());
    let mut mac = [0u8; 6];
    let mut parts = v.split([':', '-']);
    for b in &mut mac {
        let p = parts.next().ok_or_else(bad)?;
        if p.len() != 2 {
            return Err(bad());
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() || mac[0] & 1 != 0 {
        return Err(bad());
    }
    Ok(mac)
}

fn parse_cidr(v: &str) -> Result<(Ipv4Addr, u8), NetSpecError> {
    let bad = || NetSpecError::Ip(v.into());
    let (a, p) = v.split_once('/').ok_or_else(bad)?;
    let address = a.parse::<Ipv4Addr>().map_err(|_| bad())?;
    let prefix = p.parse::<u8>().map_err(|_| bad())?;
    if !(1..=32).contains(&prefix) || address.is_unspecified() || address.is_multicast() {
        return Err(bad());
    }
    Ok((address, prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<NetSpec, NetSpecError> {
        s.parse()
    }

    #[test]
    fn parses_every_item() {
        let spec = parse("tap=tdm0,mac=02:aa:bb:cc:dd:0e,ip=10.99.1.2/24,gw=10.99.1.1,dns=1.1.1.1")
            .unwrap();
        assert_eq!(spec.tap, "tdm0");
        assert_eq!(spec.mac, Some([2, 0xaa, 0xbb, 0xcc, 0xdd, 0x0e]));
        let ip = spec.ipv4.unwrap();
        assert_eq!(ip.address, Ipv4Addr::new(10, 99, 1, 2));
        assert_eq!(ip.prefix_len, 24);
        assert_eq!(ip.gateway, Some(Ipv4Addr::new(10, 99, 1, 1)));
        assert_eq!(ip.dns, Some(Ipv4Addr::new(1, 1, 1, 1)));
        assert_eq!(
            parse("tap=t").unwrap(),
            NetSpec {
                tap: "t".into(),
                mac: None,
                ipv4: None,
                limit: RateLimit::default(),
                bridge: None,
            }
        );
    }

    #[test]
    fn refuses_bad_values_by_name() {
        assert_eq!(parse(""), Err(NetSpecError::NoTap));
        assert_eq!(parse("ip=10.0.0.2/24"), Err(NetSpecError::NoTap));
        assert_eq!(parse("tap=a,tap=b"), Err(NetSpecError::Twice("tap")));
        assert!(matches!(
            parse("tap=a,speed=1"),
            Err(NetSpecError::Unknown(_))
        ));
        assert!(matches!(parse("tap"), Err(NetSpecError::Unknown(_))));
        assert!(matches!(
            parse("tap=0123456789abcdef"),
            Err(NetSpecError::TapName(_))
        ));
        assert!(matches!(parse("tap=a/b"), Err(NetSpecError::TapName(_))));
        for mac in [
            "02:00:00:00:00",
            "02:00:00:00:00:00:00",
            "zz:00:00:00:00:00",
            "01:00:00:00:00:00",
            "2:0:0:0:0:0",
        ] {
            assert!(
                matches!(
                    parse(&format!("tap=a,mac={mac}")),
                    Err(NetSpecError::Mac(_))
                ),
                "{mac}"
            );
        }
        for ip in [
            "10.0.0.2",
            "10.0.0.2/33",
            "10.0.0.2/0",
            "10.0.0/24",
            "0.0.0.0/8",
            "224.0.0.1/4",
        ] {
            assert!(
                matches!(parse(&format!("tap=a,ip={ip}")), Err(NetSpecError::Ip(_))),
                "{ip}"
            );
        }
        assert!(matches!(
            parse("tap=a,ip=10.0.0.2/24,gw=10.0.0"),
            Err(NetSpecError::Addr { what: "gw", .. })
        ));
        assert_eq!(parse("tap=a,gw=10.0.0.1"), Err(NetSpecError::NeedsIp));
        let e = parse("tap=a,ip=10.0.0.2/24,gw=10.0.1.1").unwrap_err();
        assert_eq!(
            e.to_string(),
            "--net: gateway 10.0.1.1 is not in 10.0.0.2/24"
        );
        assert!(parse("tap=a,ip=10.0.0.2/32,gw=10.0.0.2").is_ok());
    }

    #[test]
    fn parses_rate_limits_with_default_bursts() {
        let spec = parse("tap=a,rate=10M,pps=10k").unwrap();
        let (bytes, ops) = (spec.limit.bytes.unwrap(), spec.limit.ops.unwrap());
        assert_eq!((bytes.rate(), bytes.burst()), (10 << 20, 1 << 20));
        assert_eq!((ops.rate(), ops.burst()), (10_000, 1000));
        let spec = parse("tap=a,rate=512K,rate_burst=64K,pps=5,pps_burst=1").unwrap();
        let (bytes, ops) = (spec.limit.bytes.unwrap(), spec.limit.ops.unwrap());
        assert_eq!((bytes.rate(), bytes.burst()), (512 << 10, 64 << 10));
        assert_eq!((ops.rate(), ops.burst()), (5, 1));
        // A tiny rate still gets a burst of at least one.
        assert_eq!(parse("tap=a,pps=3").unwrap().limit.ops.unwrap().burst(), 1);
        assert!(!parse("tap=a").unwrap().limit.is_limited());
    }

    #[test]
    fn a_vms_items_overlay_the_fleets() {
        let mut fleet = LimitItems::default();
        fleet.set("rate", "10M").unwrap();
        fleet.set("pps", "10k").unwrap();
        let mut vm = LimitItems::default();
        vm.set("rate", "1M").unwrap();
        let limit = fleet.overlay(vm).build().unwrap();
        assert_eq!(limit.bytes.unwrap().rate(), 1 << 20);
        assert_eq!(limit.ops.unwrap().rate(), 10_000);
    }

    #[test]
    fn a_made_tap_gets_the_gateway_address() {
        let spec = parse("tap=t0,ip=10.9.0.2/24,gw=10.9.0.1").unwrap();
        assert_eq!(
            spec.tap_setup().host_ipv4,
            Some((Ipv4Addr::new(10, 9, 0, 1), 24))
        );
        assert_eq!(
            parse("tap=t0,ip=10.9.0.2/24")
                .unwrap()
                .tap_setup()
                .host_ipv4,
            None
        );
        assert_eq!(parse("tap=t0").unwrap().tap_setup().bridge, None);
    }

    #[test]
    fn refuses_bad_rate_limits_by_name() {
        let e = parse("tap=a,rate=10Q").unwrap_err();
        assert!(matches!(e, NetSpecError::Limit { key: "rate", .. }), "{e}");
        assert!(e.to_string().contains("unknown size unit"), "{e}");
        let e = parse("tap=a,pps=fast").unwrap_err();
        assert!(e.to_string().starts_with("pps=\"fast\""), "{e}");
        assert!(e.to_string().contains("not a count"), "{e}");
        let e = parse("tap=a,rate=0").unwrap_err();
        assert!(e.to_string().contains("stop all traffic"), "{e}");
        assert!(matches!(
            parse("tap=a,pps_burst=0,pps=1"),
            Err(NetSpecError::Limit {
                key: "pps_burst",
                ..
            })
        ));
        assert_eq!(
            parse("tap=a,rate_burst=1M"),
            Err(NetSpecError::BurstWithoutRate {
                burst: "rate_burst",
                rate: "rate"
            })
        );
        assert_eq!(parse("tap=a,pps=1,pps=2"), Err(NetSpecError::Twice("pps")));
        assert!(parse("tap=a,rate=99999999999999G").is_err());
    }
}
