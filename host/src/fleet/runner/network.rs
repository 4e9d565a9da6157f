//! A fleet's network on the host: the bridge and one tap per networked VM,
//! made before the first VM starts (and before privileges are dropped)
//! and removed when the fleet ends. What the fleet finds already there
//! (an operator's bridge or tap) it uses and leaves alone.
//!
//! The fleet holds each tap it made open ([`Tap::hold`]): a VM attempt gets
//! a duplicate of its descriptor and lets it go at its end, and the tap
//! stays on the bridge for the next attempt (a restart) until [`FleetNet`]
//! is dropped; then it goes with its last descriptor, as it also does if
//! the process is killed. A bridge the fleet made is removed by a small
//! child process ([`BridgeReaper`]) when the fleet lets it go or ends in
//! any way, which also works after the fleet has dropped to `--user`.

use crate::devices::netif::{self, BridgeReaper, NetifError};
use crate::devices::tap::{self, Tap, TapError, TapSetup};
use crate::fleet::config::{FleetNetwork, VmSpec};

/// Why a fleet's network could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The bridge is missing and the fleet may not make it.
    #[error("the fleet's bridge {bridge} does not exist, and tandem lacks CAP_NET_ADMIN to make it and its taps: run the fleet as root, or make them first (`ip link add {bridge} type bridge`, `ip addr add {gateway}/{prefix_len} dev {bridge}`, `ip link set {bridge} up`, and for each VM N `ip tuntap add {bridge}-N mode tap user $USER` and `ip link set {bridge}-N master {bridge} up`)")]
    NoCapability {
        /// The bridge.
        bridge: String,
        /// Its address.
        gateway: std::net::Ipv4Addr,
        /// Its prefix.
        prefix_len: u8,
    },
    /// An interface of the bridge's name that is no bridge.
    #[error(
        "network interface {0} exists and is not a bridge (choose another [fleet] network bridge)"
    )]
    NotABridge(String),
    /// Setting up the bridge failed.
    #[error("fleet bridge {bridge}: {source}")]
    Bridge {
        /// The bridge.
        bridge: String,
        /// Why.
        #[source]
        source: NetifError,
    },
    /// Making or setting up a tap failed.
    #[error("fleet tap {tap}: {source}")]
    Tap {
        /// The tap.
        tap: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// The bridge and taps a fleet made; dropping it removes them.
#[derive(Debug)]
pub struct FleetNet {
    bridge: Option<BridgeReaper>,
    taps: Vec<String>,
}

impl FleetNet {
    /// Makes what `net` needs for `vms` and is not there yet.
    pub fn up(net: &FleetNetwork, vms: &[VmSpec]) -> Result<Self, NetworkError> {
        let mut made = Self {
            bridge: None,
            taps: Vec::new(),
        };
        let bridge = net.bridge.as_str();
        if netif::exists(bridge) {
            if !netif::is_bridge(bridge) {
                return Err(NetworkError::NotABridge(bridge.into()));
            }
        } else {
            if !netif::has_net_admin() {
                return Err(NetworkError::NoCapability {
                    bridge: bridge.into(),
                    gateway: net.gateway,
                    prefix_len: net.prefix_len,
                });
            }
            let on_bridge = |source| NetworkError::Bridge {
                bridge: bridge.into(),
                source,
            };
            netif::add_bridge(bridge).map_err(on_bridge)?;
            match BridgeReaper::spawn(bridge) {
                Ok(reaper) => made.bridge = Some(reaper),
                Err(e) => {
                    let _ = netif::remove_bridge(bridge);
                    return Err(on_bridge(e));
                }
            }
            netif::set_ipv4(bridge, net.gateway, net.prefix_len).map_err(on_bridge)?;
            netif::set_up(bridge, true).map_err(on_bridge)?;
            log::info!(
                "made bridge {bridge} ({}/{}; removed when the fleet ends)",
                net.gateway,
                net.prefix_len
            );
        }
        for spec in vms.iter().filter_map(|v| v.net.as_ref()) {
            let tap = spec.tap.as_str();
            if netif::exists(tap) {
                continue;
            }
            let on_tap = |source: Box<dyn std::error::Error + Send + Sync>| NetworkError::Tap {
                tap: tap.into(),
                source,
            };
            if !netif::has_net_admin() {
                let user = std::env::var("USER").unwrap_or_else(|_| "$USER".into());
                return Err(on_tap(Box::new(TapError::NoCapability {
                    name: tap.into(),
                    user,
                })));
            }
            let setup = TapSetup {
                name: tap.into(),
                host_ipv4: None,
                bridge: Some(bridge.into()),
            };
            Tap::create(&setup).map_err(|e| on_tap(Box::new(e)))?.hold();
            made.taps.push(tap.into());
        }
        if !made.taps.is_empty() {
            log::info!(
                "made {} taps on {bridge} (removed when the fleet ends)",
                made.taps.len()
            );
        }
        Ok(made)
    }
}

impl Drop for FleetNet {
    fn drop(&mut self) {
        // Every VM thread has ended: the fleet's descriptor is the last.
        for name in self.taps.drain(..) {
            tap::release(&name);
        }
        // After the taps: the reaper removes the bridge and is waited for.
        drop(self.bridge.take());
    }
}
