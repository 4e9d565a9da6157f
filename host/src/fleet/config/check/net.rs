//! The rules of a fleet's network: the `network` table, each VM's address,
//! tap and limits, and the `${NAME.ip}` references of command lines.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use tandem_abi::note::DeviceKind;
use toml::Spanned;

use super::super::network::{self, FleetNetwork};
use super::super::raw::{RawNetwork, Text};
use super::super::Problems;
use super::Entry;
use crate::devices::spec::{LimitItems, NetSpec, StaticIpv4};
use crate::image::Image;

/// The `network` table, checked, with the places its later problems are
/// reported at.
pub(super) struct NetworkPlan {
    pub(super) net: FleetNetwork,
    /// Its rate-limit items, under each VM's own.
    items: LimitItems,
    /// The `subnet` value (a pool too small) and the `bridge` value (tap
    /// names too long).
    subnet_at: Range<usize>,
    bridge_at: Range<usize>,
}

/// Rate-limit items as a table gives them, each bad value a problem at it
/// (`None` then).
pub(super) fn limit_items(
    values: [(&str, &Option<Spanned<Text>>); 4],
    what: &str,
    p: &mut Problems,
) -> Option<LimitItems> {
    let mut items = LimitItems::default();
    let mut ok = true;
    for (key, value) in values {
        let Some(v) = value else { continue };
        if let Err(e) = items.set(key, &v.get_ref().0) {
            p.at(&v.span(), format!("{what}: {e}"));
            ok = false;
        }
    }
    ok.then_some(items)
}

pub(super) fn network(raw: &Spanned<RawNetwork>, p: &mut Problems) -> Option<NetworkPlan> {
    let table = raw.span();
    let n = raw.get_ref();
    let what = "[fleet] network";
    let (Some(bridge), Some(subnet)) = (&n.bridge, &n.subnet) else {
        p.at(
            &table,
            format!("{what}: needs `bridge` and `subnet` (like {{ bridge = \"tandem0\", subnet = \"10.77.0.0/24\" }})"),
        );
        return None;
    };
    let values = [
        ("rate", &n.rate),
        ("rate_burst", &n.rate_burst),
        ("pps", &n.pps),
        ("pps_burst", &n.pps_burst),
    ];
    let items = limit_items(values, what, p);
    let mut ok = items.is_some();
    let items = items.unwrap_or_default();
    let limit = match items.build() {
        Ok(l) => l,
        Err(e) => {
            p.at(&table, format!("{what}: {e}"));
            return None;
        }
    };
    if let Err(e) = network::check_ifname(bridge.get_ref()) {
        p.at(&bridge.span(), format!("{what}: `bridge`: {e}"));
        ok = false;
    }
    let net = match FleetNetwork::new(bridge.get_ref(), subnet.get_ref(), limit) {
        Ok(net) => net,
        Err(e) => {
            if network::check_ifname(bridge.get_ref()).is_ok() {
                p.at(&subnet.span(), format!("{what}: `subnet`: {e}"));
            }
            return None;
        }
    };
    ok.then_some(NetworkPlan {
        net,
        items,
        subnet_at: subnet.span(),
        bridge_at: bridge.span(),
    })
}

/// Each VM's network device (replicas expanded): the VMs whose image
/// declares one, in order, get the pool's addresses and taps.
pub(super) fn vm_networks(
    entries: &[Entry],
    images: &BTreeMap<PathBuf, Arc<Image>>,
    plan: &NetworkPlan,
    p: &mut Problems,
) -> Vec<Option<NetSpec>> {
    let net = &plan.net;
    let mut nets = Vec::new();
    let mut next = 0usize;
    for e in entries {
        // An image that did not load is reported already; counting it
        // networked keeps references to it from adding noise.
        let declares = e.image.as_ref().is_none_or(|i| {
            images
                .get(i.get_ref())
                .is_none_or(|i| i.devices.contains(DeviceKind::Net))
        });
        let limit = match &e.net_items {
            None => net.limit,
            Some((items, at)) => match plan.items.overlay(*items).build() {
                Ok(l) => l,
                Err(err) => {
                    p.at(at, format!("{}: `net`: {err}", e.label));
                    net.limit
                }
            },
        };
        if let (Some((_, at)), false) = (&e.net_items, declares) {
            p.at(
                at,
                format!(
                    "{}: `net` limits for a VM whose image declares no network device",
                    e.label
                ),
            );
        }
        for _ in 0..e.count {
            if !declares {
                nets.push(None);
                continue;
            }
            let k = next;
            next += 1;
            nets.push(net.address(k).map(|address| NetSpec {
                tap: net.tap_name(k),
                mac: Some(network::mac_for(address)),
                ipv4: Some(StaticIpv4 {
                    address,
                    prefix_len: net.prefix_len,
                    gateway: Some(net.gateway),
                    dns: None,
                }),
                limit,
                bridge: Some(net.bridge.clone()),
            }));
        }
    }
    if next > net.capacity() {
        p.at(
            &plan.subnet_at,
            format!(
                "[fleet] network: subnet {}/{} has room for {} VMs, and {next} VMs of the fleet have a network device",
                net.subnet,
                net.prefix_len,
                net.capacity()
            ),
        );
    }
    if let Err(e) = net.check_tap_names(next) {
        p.at(&plan.bridge_at, format!("[fleet] network: {e}"));
    }
    nets
}

/// Each entry's command line with its `${NAME.ip}` references replaced by
/// the addresses they name. A reference must name a VM of the fleet that
/// has a network device and that the entry waits for (`after`), so the
/// address answers by the time the app reads it; else it is a problem at
/// the reference.
pub(super) fn references(
    entries: &[Entry],
    nets: &[Option<NetSpec>],
    p: &mut Problems,
) -> Vec<String> {
    // Expanded names: `db`, `web-0`, ...; a group of one is its name.
    let mut vms: HashMap<String, (usize, &str)> = HashMap::new();
    let mut next = 0usize;
    for e in entries {
        let Some(group) = e.name() else {
            next += e.count;
            continue;
        };
        for r in 0..e.count {
            let name = if e.count == 1 {
                group.to_string()
            } else {
                format!("{group}-{r}")
            };
            vms.entry(name).or_insert((next + r, group));
        }
        next += e.count;
    }
    let text = p.text;
    entries
        .iter()
        .map(|e| {
            let Some(span) = &e.cmdline_at else {
                return e.cmdline.clone();
            };
            // The reference's own column when the string is written as it
            // reads (no escapes); else the string's.
            let exact = text.get(span.start + 1..span.start + 1 + e.cmdline.len())
                == Some(e.cmdline.as_str());
            let place = |at: usize| {
                if exact {
                    span.start + 1 + at..span.start + 2 + at
                } else {
                    span.clone()
                }
            };
            let refs = match network::references(&e.cmdline) {
                Ok(r) => r,
                Err(bad) => {
                    p.at(&place(bad.at), format!("{}: `cmdline`: {}", e.label, bad.message));
                    return e.cmdline.clone();
                }
            };
            for r in &refs {
                let name = r.name.as_str();
                let problem = match vms.get(name) {
                    None => Some(format!("`${{{name}.ip}}` names no VM of this fleet")),
                    Some(&(_, group)) if !e.after.iter().any(|a| a.get_ref() == group) => {
                        Some(format!(
                            "`${{{name}.ip}}`: `{group}` is not in `after` (add after = [\"{group}\"], so that it is up first)"
                        ))
                    }
                    Some(&(i, _)) if nets.get(i).is_none_or(Option::is_none) => Some(format!(
                        "`${{{name}.ip}}`: vm `{name}` has no network device (its image declares none, or the fleet has no [fleet] network)"
                    )),
                    Some(_) => None,
                };
                if let Some(problem) = problem {
                    p.at(&place(r.at), format!("{}: `cmdline`: {problem}", e.label));
                }
            }
            network::substitute(&e.cmdline, |name| {
                let &(i, _) = vms.get(name)?;
                nets.get(i)?.as_ref()?.ipv4.map(|ip| ip.address)
            })
        })
        .collect()
}
