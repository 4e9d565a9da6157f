//! What putting a VM on a pod's network takes, decided without touching
//! the network: which namespace a task joins, which interface the CNI
//! plugin made (from `ip -j` output), the `ip`/`tc` commands that join it
//! to the VM's tap and undo that, and the VM's `--net` value.
//!
//! The wiring is the one Kata Containers and tc-redirect-tap use: a tap
//! beside the pod's interface, an ingress qdisc on each, and a `u32`
//! filter matching every frame whose action is `mirred egress redirect`
//! to the other. The VM takes the interface's MAC and IPv4 address, so
//! the pod's peers (its bridge, other pods, the node) reach the VM at the
//! pod IP, and the VM's frames leave through the interface CNI made.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The VM's tap, inside the pod's network namespace (one per pod, so the
/// name need not be unique on the node).
pub const TAP: &str = "tandem0";

/// Why the pod's network cannot be read from `ip`'s output.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// `ip -j` printed something that is not its JSON.
    #[error("cannot read the output of `ip -j {what}`: {source}")]
    Json {
        /// The command's arguments after `-j`.
        what: &'static str,
        /// The parse error.
        source: serde_json::Error,
    },
    /// No interface to attach to.
    #[error("the pod's network namespace has no interface with an IPv4 address besides lo (interfaces: {0}); did the CNI plugin run?")]
    NoInterface(String),
    /// More than one candidate and no default route to choose by.
    #[error("the pod's network namespace has several interfaces with an IPv4 address ({0}) and no default route to choose one by")]
    Ambiguous(String),
    /// The default route's interface has no IPv4 address.
    #[error("the pod's interface {0} has no IPv4 address")]
    NoIpv4(String),
    /// The interface has no Ethernet address.
    #[error("the pod's interface {0} has no Ethernet (MAC) address")]
    NoMac(String),
    /// An address `ip` printed is not one.
    #[error("the pod's interface {ifname}: {what} {value:?} is not an IPv4 address")]
    Address {
        /// The interface.
        ifname: String,
        /// Which address.
        what: &'static str,
        /// The text.
        value: String,
    },
}

/// The network namespace a task's VM joins, if any.
///
/// `spec` is the path the task's OCI spec names. Under CRI the pod's
/// placeholder (`is_sandbox`) names the namespace CNI wired; its app
/// containers name `/proc/PID/ns/net` of the placeholder's pid, which under
/// this shim is the shim itself (`names_shim`: the path is the shim's own
/// network namespace), so an app container takes its sandbox's namespace
/// (`sandbox`). The shim never rewires its own namespace (the node's, for a
/// pod on the node network).
pub fn task_netns(
    spec: Option<&Path>,
    is_sandbox: bool,
    names_shim: bool,
    sandbox: Option<&Path>,
) -> Option<PathBuf> {
    let spec = spec?;
    match (names_shim, is_sandbox) {
        (false, _) => Some(spec.to_path_buf()),
        (true, true) => None,
        (true, false) => sandbox.map(Path::to_path_buf),
    }
}

/// The interface the CNI plugin made, as `ip -j addr show` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInterface {
    /// Its name (`eth0` under CRI).
    pub name: String,
    /// Its MAC address, which the VM takes.
    pub mac: String,
    /// Its IPv4 address (the pod IP), which the VM takes.
    pub address: Ipv4Addr,
    /// The prefix length.
    pub prefix_len: u8,
    /// Its MTU, which the tap gets.
    pub mtu: u32,
}

/// What the VM needs to know of the pod's network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNetwork {
    /// The interface to join.
    pub iface: PodInterface,
    /// The default gateway, if there is a default route.
    pub gateway: Option<Ipv4Addr>,
    /// Whether a tap of ours is left over (a VM that died with its shim):
    /// [`detach`] runs first.
    pub stale_tap: bool,
}

#[derive(Deserialize)]
struct IpLink {
    ifname: String,
    #[serde(default)]
    address: Option<String>,
    #[serde(default)]
    link_type: Option<String>,
    #[serde(default)]
    mtu: Option<u32>,
    #[serde(default)]
    addr_info: Vec<IpAddrInfo>,
}

#[derive(Deserialize)]
struct IpAddrInfo {
    #[serde(default)]
    family: String,
    #[serde(default)]
    local: String,
    #[serde(default)]
    prefixlen: u8,
}

#[derive(Deserialize)]
struct IpRoute {
    #[serde(default)]
    dst: String,
    #[serde(default)]
    gateway: Option<String>,
    #[serde(default)]
    dev: Option<String>,
}

/// The MTU when `ip` does not say.
const DEFAULT_MTU: u32 = 1500;

/// Reads the pod's network from `ip -j addr show` (`addrs`) and `ip -j -4
/// route show default` (`routes`): the interface of the default route,
/// else the only one besides `lo` (and our tap) with an IPv4 address.
pub fn pod_network(addrs: &[u8], routes: &[u8]) -> Result<PodNetwork, PlanError> {
    let links: Vec<IpLink> = serde_json::from_slice(addrs).map_err(|source| PlanError::Json {
        what: "addr show",
        source,
    })?;
    let routes: Vec<IpRoute> =
        serde_json::from_slice(routes).map_err(|source| PlanError::Json {
            what: "-4 route show default",
            source,
        })?;
    let stale_tap = links.iter().any(|l| l.ifname == TAP);
    let default = routes.iter().find(|r| r.dst == "default");
    let ipv4 = |l: &IpLink| l.addr_info.iter().any(|a| a.family == "inet");
    let candidates: Vec<&IpLink> = links
        .iter()
        .filter(|l| l.ifname != TAP && l.link_type.as_deref() != Some("loopback"))
        .collect();
    let link = match default.and_then(|r| r.dev.as_deref()) {
        Some(dev) => candidates
            .iter()
            .find(|l| l.ifname == dev)
            .copied()
            .ok_or_else(|| PlanError::NoIpv4(dev.into()))?,
        None => {
            let with_ip: Vec<&IpLink> = candidates.iter().copied().filter(|l| ipv4(l)).collect();
            match with_ip.as_slice() {
                [one] => *one,
                [] => {
                    let names: Vec<&str> = links.iter().map(|l| l.ifname.as_str()).collect();
                    return Err(PlanError::NoInterface(names.join(", ")));
                }
                many => {
                    let names: Vec<&str> = many.iter().map(|l| l.ifname.as_str()).collect();
                    return Err(PlanError::Ambiguous(names.join(", ")));
                }
            }
        }
    };
    let iface = interface(link)?;
    let gateway = match default.and_then(|r| r.gateway.as_deref()) {
        Some(gw) => Some(gw.parse().map_err(|_| PlanError::Address {
            ifname: iface.name.clone(),
            what: "gateway",
            value: gw.into(),
        })?),
        None => None,
    };
    Ok(PodNetwork {
        iface,
        gateway,
        stale_tap,
    })
}

fn interface(link: &IpLink) -> Result<PodInterface, PlanError> {
    let name = link.ifname.clone();
    let info = link
        .addr_info
        .iter()
        .find(|a| a.family == "inet")
        .ok_or_else(|| PlanError::NoIpv4(name.clone()))?;
    let address = info.local.parse().map_err(|_| PlanError::Address {
        ifname: name.clone(),
        what: "address",
        value: info.local.clone(),
    })?;
    let mac = link
        .address
        .clone()
        .filter(|_| link.link_type.as_deref() == Some("ether"))
        .ok_or_else(|| PlanError::NoMac(name.clone()))?;
    Ok(PodInterface {
        name,
        mac,
        address,
        prefix_len: info.prefixlen,
        mtu: link.mtu.unwrap_or(DEFAULT_MTU),
    })
}

/// One command: the program (`ip` or `tc`) and its arguments.
pub type Cmd = Vec<String>;

fn cmd(words: &[&str]) -> Cmd {
    words.iter().map(|w| w.to_string()).collect()
}

/// `tc filter` redirecting every frame that arrives on `from` out of `to`.
fn redirect(from: &str, to: &str) -> Cmd {
    cmd(&[
        "tc", "filter", "add", "dev", from, "parent", "ffff:", "protocol", "all", "u32", "match",
        "u8", "0", "0", "action", "mirred", "egress", "redirect", "dev", to,
    ])
}

/// The commands that make the tap and join it to the pod's interface, in
/// order. The tap gets no IPv6 link-local address (`addrgenmode none`), so
/// the namespace's own stack sends nothing into the VM. The interface keeps
/// its address: every frame it receives is redirected at ingress, before
/// the namespace's stack could answer, so the address there is inert, and
/// the interface stays as CNI left it for CNI's DEL.
pub fn attach(net: &PodNetwork) -> Vec<Cmd> {
    let pod = net.iface.name.as_str();
    let mtu = net.iface.mtu.to_string();
    vec![
        cmd(&["ip", "tuntap", "add", "dev", TAP, "mode", "tap"]),
        cmd(&[
            "ip",
            "link",
            "set",
            "dev",
            TAP,
            "mtu",
            &mtu,
            "addrgenmode",
            "none",
        ]),
        cmd(&["ip", "link", "set", "dev", TAP, "up"]),
        cmd(&["tc", "qdisc", "add", "dev", pod, "ingress"]),
        redirect(pod, TAP),
        cmd(&["tc", "qdisc", "add", "dev", TAP, "ingress"]),
        redirect(TAP, pod),
    ]
}

/// The commands that undo [`attach`]: the interface's ingress qdisc (and
/// its filter) and the tap (with its own). Each is tried even if one fails.
pub fn detach(net: &PodNetwork) -> Vec<Cmd> {
    vec![
        cmd(&["tc", "qdisc", "del", "dev", &net.iface.name, "ingress"]),
        cmd(&["ip", "link", "del", "dev", TAP]),
    ]
}

/// The VM's `--net` value: the tap, the pod interface's MAC and address,
/// the gateway.
pub fn net_arg(net: &PodNetwork) -> String {
    let i = &net.iface;
    let mut arg = format!("tap={TAP},mac={},ip={}/{}", i.mac, i.address, i.prefix_len);
    if let Some(gw) = net.gateway {
        arg.push_str(&format!(",gw={gw}"));
    }
    arg
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ip -j addr show` in a CRI pod's namespace after the bridge plugin
    /// (iproute2 6.1), trimmed.
    const ADDRS: &str = r#"[
      {"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP"],"mtu":65536,"link_type":"loopback",
       "address":"00:00:00:00:00:00","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8}]},
      {"ifindex":2,"link_index":9,"ifname":"eth0","flags":["BROADCAST","UP"],"mtu":1500,
       "link_type":"ether","address":"6a:1f:0c:aa:bb:cc","link_netnsid":0,
       "addr_info":[{"family":"inet","local":"10.213.4.7","prefixlen":24,"broadcast":"10.213.4.255"},
                    {"family":"inet6","local":"fe80::681f:cff:feaa:bbcc","prefixlen":64}]}
    ]"#;
    const ROUTES: &str = r#"[{"dst":"default","gateway":"10.213.4.1","dev":"eth0","flags":[]}]"#;

    #[test]
    fn the_vm_takes_the_interface_of_the_default_route() {
        let net = pod_network(ADDRS.as_bytes(), ROUTES.as_bytes()).unwrap();
        assert_eq!(
            net,
            PodNetwork {
                iface: PodInterface {
                    name: "eth0".into(),
                    mac: "6a:1f:0c:aa:bb:cc".into(),
                    address: Ipv4Addr::new(10, 213, 4, 7),
                    prefix_len: 24,
                    mtu: 1500,
                },
                gateway: Some(Ipv4Addr::new(10, 213, 4, 1)),
                stale_tap: false,
            }
        );
        assert_eq!(
            net_arg(&net),
            "tap=tandem0,mac=6a:1f:0c:aa:bb:cc,ip=10.213.4.7/24,gw=10.213.4.1"
        );
        // The value is one `tandem run --net` accepts.
        let spec: tandem::devices::NetSpec = net_arg(&net).parse().unwrap();
        assert_eq!(spec.tap, TAP);
    }

    #[test]
    fn without_a_default_route_the_only_interface_is_taken() {
        let net = pod_network(ADDRS.as_bytes(), b"[]").unwrap();
        assert_eq!((net.iface.name.as_str(), net.gateway), ("eth0", None));
        assert_eq!(
            net_arg(&net),
            "tap=tandem0,mac=6a:1f:0c:aa:bb:cc,ip=10.213.4.7/24"
        );
        let lo_only = r#"[{"ifname":"lo","link_type":"loopback","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8}]}]"#;
        let e = pod_network(lo_only.as_bytes(), b"[]").unwrap_err();
        assert!(matches!(e, PlanError::NoInterface(_)), "{e}");
        assert!(e.to_string().contains("did the CNI plugin run?"), "{e}");
        let two = r#"[
          {"ifname":"a","link_type":"ether","address":"02:00:00:00:00:01","addr_info":[{"family":"inet","local":"10.0.0.2","prefixlen":24}]},
          {"ifname":"b","link_type":"ether","address":"02:00:00:00:00:02","addr_info":[{"family":"inet","local":"10.0.1.2","prefixlen":24}]}
        ]"#;
        let e = pod_network(two.as_bytes(), b"[]").unwrap_err();
        assert!(
            matches!(e, PlanError::Ambiguous(ref s) if s == "a, b"),
            "{e}"
        );
    }

    #[test]
    fn bad_ip_output_is_named() {
        let e = pod_network(b"garbage", ROUTES.as_bytes()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot read the output of `ip -j addr show`"),
            "{e}"
        );
        let e = pod_network(ADDRS.as_bytes(), b"{").unwrap_err();
        assert!(e.to_string().contains("-4 route show default"), "{e}");
        let no_v4 = r#"[{"ifname":"eth0","link_type":"ether","address":"02:00:00:00:00:01","addr_info":[{"family":"inet6","local":"fe80::1","prefixlen":64}]}]"#;
        let e = pod_network(no_v4.as_bytes(), ROUTES.as_bytes()).unwrap_err();
        assert!(matches!(e, PlanError::NoIpv4(ref i) if i == "eth0"), "{e}");
        let no_mac = r#"[{"ifname":"eth0","link_type":"none","addr_info":[{"family":"inet","local":"10.0.0.2","prefixlen":24}]}]"#;
        let e = pod_network(no_mac.as_bytes(), ROUTES.as_bytes()).unwrap_err();
        assert!(matches!(e, PlanError::NoMac(_)), "{e}");
        let bad_gw = r#"[{"dst":"default","gateway":"fe80::1","dev":"eth0"}]"#;
        let e = pod_network(ADDRS.as_bytes(), bad_gw.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("gateway \"fe80::1\""), "{e}");
        let off = r#"[{"dst":"default","gateway":"10.0.0.1","dev":"wg0"}]"#;
        let e = pod_network(ADDRS.as_bytes(), off.as_bytes()).unwrap_err();
        assert!(matches!(e, PlanError::NoIpv4(ref i) if i == "wg0"), "{e}");
    }

    #[test]
    fn tap_and_interface_redirect_to_each_other_and_detach_undoes_it() {
        let net = pod_network(ADDRS.as_bytes(), ROUTES.as_bytes()).unwrap();
        let lines: Vec<String> = attach(&net).iter().map(|c| c.join(" ")).collect();
        assert_eq!(
            lines,
            [
                "ip tuntap add dev tandem0 mode tap",
                "ip link set dev tandem0 mtu 1500 addrgenmode none",
                "ip link set dev tandem0 up",
                "tc qdisc add dev eth0 ingress",
                "tc filter add dev eth0 parent ffff: protocol all u32 match u8 0 0 action mirred egress redirect dev tandem0",
                "tc qdisc add dev tandem0 ingress",
                "tc filter add dev tandem0 parent ffff: protocol all u32 match u8 0 0 action mirred egress redirect dev eth0",
            ]
        );
        let undo: Vec<String> = detach(&net).iter().map(|c| c.join(" ")).collect();
        assert_eq!(
            undo,
            ["tc qdisc del dev eth0 ingress", "ip link del dev tandem0"]
        );
        // A tap left by a VM that died with its shim is seen.
        let left = ADDRS.replace(
            r#"{"ifindex":1,"#,
            r#"{"ifname":"tandem0","link_type":"ether","address":"02:00:00:00:00:09","addr_info":[]},{"ifindex":1,"#,
        );
        let net = pod_network(left.as_bytes(), ROUTES.as_bytes()).unwrap();
        assert!(net.stale_tap);
        assert_eq!(net.iface.name, "eth0");
    }

    #[test]
    fn app_containers_take_their_sandboxs_namespace() {
        let cni = Path::new("/var/run/netns/cni-1");
        let shim = Path::new("/proc/42/ns/net");
        // The placeholder names the namespace CNI wired.
        assert_eq!(task_netns(Some(cni), true, false, None), Some(cni.into()));
        // An app container names the placeholder's pid, the shim's: it
        // takes the namespace its sandbox named.
        assert_eq!(
            task_netns(Some(shim), false, true, Some(cni)),
            Some(cni.into())
        );
        // A pod on the node network: nothing is rewired.
        assert_eq!(task_netns(Some(shim), true, true, None), None);
        assert_eq!(task_netns(Some(shim), false, true, None), None);
        assert_eq!(task_netns(None, false, false, Some(cni)), None);
        // A container naming some other namespace (`ctr run --with-ns`).
        let other = Path::new("/var/run/netns/mine");
        assert_eq!(
            task_netns(Some(other), false, false, Some(cni)),
            Some(other.into())
        );
    }
}
