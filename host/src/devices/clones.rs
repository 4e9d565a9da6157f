//! Which network device each restored VM gets (`tandem restore DIR
//! --clones N --net ...`): a pure decision, made before any VM starts.
//!
//! One `--net` per clone, or one for all with a `{i}` or `{i+K}` template
//! (the clone's index, or the index plus K), expanded per clone:
//! `--net tap=tc{i},ip=10.0.0.{i+10}/24` gives clone 0 `tc0` and
//! `10.0.0.10`. What a clone's `--net` leaves out is the snapshot's: a
//! single restore is the same VM on another tap, keeping its MAC and
//! address; a clone of several gets a MAC of its own, derived (locally
//! administered) from its address, or from its index when it asks DHCP.
//! Clones that would share a tap, a MAC or an address are refused, naming
//! both.

use std::net::Ipv4Addr;

use super::net_state::NetState;
use super::spec::{NetSpec, NetSpecError};

/// Why the clones' network devices were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CloneNetError {
    /// The snapshot's VM has a network device and no `--net` was given.
    #[error("the snapshot's VM has a network device: give --net tap=NAME (one per clone, or one with {{i}} in it)")]
    Missing,
    /// `--net` for a snapshot without a network device.
    #[error("the snapshot's VM has no network device: remove --net")]
    Undeclared,
    /// Neither one `--net` nor one per clone.
    #[error("{clones} clones need one --net each, or one with {{i}} in it; {given} were given")]
    Count {
        /// `--net` options given.
        given: usize,
        /// Clones asked for.
        clones: u32,
    },
    /// A `{...}` that is neither `{i}` nor `{i+K}`.
    #[error("--net {0:?}: a template is {{i}} or {{i+K}} (K a number)")]
    Template(String),
    /// A clone's `--net` does not parse.
    #[error("clone {clone}: {source}")]
    Spec {
        /// The clone.
        clone: u32,
        /// Why.
        #[source]
        source: NetSpecError,
    },
    /// Two clones would share a tap, a MAC or an address.
    #[error("clones {first} and {second} would share {what} {value}: give each its own")]
    Shared {
        /// "tap", "MAC" or "address".
        what: &'static str,
        /// The shared value.
        value: String,
        /// The first clone.
        first: u32,
        /// The second clone.
        second: u32,
    },
}

/// Expands the `{i}` and `{i+K}` of `template` for clone `i`.
///
/// ```
/// use tandem::devices::clones::expand;
/// assert_eq!(expand("tap=tc{i},ip=10.0.0.{i+10}/24", 2).unwrap(), "tap=tc2,ip=10.0.0.12/24");
/// assert!(expand("tap=tc{j}", 0).is_err());
/// ```
pub fn expand(template: &str, i: u32) -> Result<String, CloneNetError> {
    let bad = || CloneNetError::Template(template.into());
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find(['{', '}']) {
        out.push_str(&rest[..open]);
        if rest[open..].starts_with('}') {
            return Err(bad());
        }
        let close = rest[open..].find('}').ok_or_else(bad)? + open;
        let inner = &rest[open + 1..close];
        let value = match inner.strip_prefix('i') {
            Some("") => u64::from(i),
            Some(k) => {
                let k = k.strip_prefix('+').ok_or_else(bad)?;
                if k.is_empty() || !k.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                let k: u64 = k.parse().map_err(|_| bad())?;
                k.checked_add(u64::from(i)).ok_or_else(bad)?
            }
            None => return Err(bad()),
        };
        out.push_str(&value.to_string());
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The network device of each of `clones` VMs restored from a snapshot
/// whose device is `snapshot` (none: it had none), from the `--net`
/// values `given`. Each spec names its MAC and keeps the snapshot's IPv4
/// settings where it gives none.
pub fn plan(
    given: &[String],
    clones: u32,
    snapshot: Option<&NetState>,
) -> Result<Vec<Option<NetSpec>>, CloneNetError> {
    let count = usize::try_from(clones).unwrap_or(usize::MAX);
    let Some(state) = snapshot else {
        if !given.is_empty() {
            return Err(CloneNetError::Undeclared);
        }
        return Ok(vec![None; count]);
    };
    if given.is_empty() {
        return Err(CloneNetError::Missing);
    }
    if given.len() != 1 && given.len() != count {
        return Err(CloneNetError::Count {
            given: given.len(),
            clones,
        });
    }
    let mut specs = Vec::with_capacity(count);
    for i in 0..clones {
        let template = given
            .get(usize::try_from(i).unwrap_or(usize::MAX))
            .unwrap_or(&given[0]);
        let spec: NetSpec = expand(template, i)?
            .parse()
            .map_err(|source| CloneNetError::Spec { clone: i, source })?;
        let ipv4 = spec.ipv4.or(state.ipv4.map(Into::into));
        let mac = match spec.mac {
            Some(m) => m,
            None if clones == 1 => state.mac,
            None => derived_mac(ipv4.map(|ip| ip.address), state.mac, i),
        };
        specs.push(NetSpec {
            mac: Some(mac),
            ipv4,
            ..spec
        });
    }
    refuse_sharing(&specs)?;
    Ok(specs.into_iter().map(Some).collect())
}

/// A clone's own MAC: `02:00` and its IPv4 address, or (asking DHCP) the
/// snapshot's first four bytes, locally administered, and its index.
pub fn derived_mac(address: Option<Ipv4Addr>, snapshot: [u8; 6], index: u32) -> [u8; 6] {
    match address {
        Some(a) => {
            let [b0, b1, b2, b3] = a.octets();
            [0x02, 0x00, b0, b1, b2, b3]
        }
        None => {
            let [_, _, hi, lo] = index.to_be_bytes();
            let first = (snapshot[0] & 0xfc) | 0x02;
            [first, snapshot[1], snapshot[2], snapshot[3], hi, lo]
        }
    }
}

fn refuse_sharing(specs: &[NetSpec]) -> Result<(), CloneNetError> {
    type Key = fn(&NetSpec) -> Option<String>;
    let keys: [(&'static str, Key); 3] = [
        ("tap", |s| Some(s.tap.clone())),
        // Before the MAC: a shared address makes a shared derived MAC.
        ("address", |s| s.ipv4.map(|ip| ip.address.to_string())),
        ("MAC", |s| {
            s.mac.map(|m| {
                m.iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":")
            })
        }),
    ];
    for (what, key) in keys {
        for (first, a) in (0u32..).zip(specs) {
            let Some(value) = key(a) else { continue };
            if let Some(second) = (first + 1..)
                .zip(&specs[usize::try_from(first).unwrap_or(0) + 1..])
                .find_map(|(j, b)| (key(b).as_deref() == Some(value.as_str())).then_some(j))
            {
                return Err(CloneNetError::Shared {
                    what,
                    value,
                    first,
                    second,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::net_state::tests::sample;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn templates_expand_per_clone() {
        assert_eq!(expand("tap=t{i}", 0).unwrap(), "tap=t0");
        assert_eq!(
            expand("tap=t{i},ip=10.0.{i+1}.{i+10}/24", 3).unwrap(),
            "tap=t3,ip=10.0.4.13/24"
        );
        assert_eq!(expand("tap=plain", 5).unwrap(), "tap=plain");
        for bad in [
            "{j}", "{i-1}", "{i+}", "{i+x}", "{", "}", "{i", "{}", "{i+ 1}",
        ] {
            assert!(
                matches!(
                    expand(&format!("tap=t{bad}"), 0),
                    Err(CloneNetError::Template(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_single_restore_keeps_the_snapshot_s_mac_and_address() {
        let state = sample();
        let p = plan(&strings(&["tap=new0"]), 1, Some(&state)).unwrap();
        let spec = p[0].clone().unwrap();
        assert_eq!(spec.tap, "new0");
        assert_eq!(spec.mac, Some(state.mac));
        assert_eq!(spec.ipv4.map(Into::into), state.ipv4);
    }

    #[test]
    fn clones_get_their_own_tap_mac_and_address() {
        let state = sample();
        let p = plan(
            &strings(&["tap=tc{i},ip=10.0.0.{i+10}/24,gw=10.0.0.1"]),
            3,
            Some(&state),
        )
        .unwrap();
        let specs: Vec<NetSpec> = p.into_iter().map(Option::unwrap).collect();
        assert_eq!(specs[2].tap, "tc2");
        assert_eq!(specs[2].ipv4.unwrap().address, Ipv4Addr::new(10, 0, 0, 12));
        assert_eq!(specs[1].mac, Some([2, 0, 10, 0, 0, 11]));
        // One --net each, the MAC given for one of them.
        let p = plan(
            &strings(&[
                "tap=a,ip=10.0.0.5/24",
                "tap=b,mac=02:aa:00:00:00:01,ip=10.0.0.6/24",
            ]),
            2,
            Some(&state),
        )
        .unwrap();
        assert_eq!(p[0].as_ref().unwrap().mac, Some([2, 0, 10, 0, 0, 5]));
        assert_eq!(p[1].as_ref().unwrap().mac, Some([2, 0xaa, 0, 0, 0, 1]));
        // Asking DHCP: MACs from the index.
        let mut dhcp = sample();
        dhcp.ipv4 = None;
        let p = plan(&strings(&["tap=d{i}"]), 2, Some(&dhcp)).unwrap();
        assert_eq!(p[0].as_ref().unwrap().mac, Some([2, 0, 0, 0, 0, 0]));
        assert_eq!(p[1].as_ref().unwrap().mac, Some([2, 0, 0, 0, 0, 1]));
        assert!(p.iter().all(|s| s.as_ref().unwrap().ipv4.is_none()));
    }

    #[test]
    fn sharing_clones_are_refused_naming_both() {
        let state = sample();
        let e = plan(&strings(&["tap=same,ip=10.0.0.{i+2}/24"]), 2, Some(&state)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "clones 0 and 1 would share tap same: give each its own"
        );
        // Without ip= both keep the snapshot's address.
        let e = plan(&strings(&["tap=t{i}"]), 3, Some(&state)).unwrap_err();
        assert_eq!(
            e,
            CloneNetError::Shared {
                what: "address",
                value: "10.0.0.2".into(),
                first: 0,
                second: 1
            }
        );
        let e = plan(
            &strings(&[
                "tap=a,mac=02:00:00:00:00:07,ip=10.0.0.5/24",
                "tap=b,ip=10.0.0.6/24",
                "tap=c,mac=02:00:00:00:00:07,ip=10.0.0.7/24",
            ]),
            3,
            Some(&state),
        )
        .unwrap_err();
        assert!(
            matches!(
                &e,
                CloneNetError::Shared {
                    what: "MAC",
                    first: 0,
                    second: 2,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn the_number_of_nets_must_fit_the_snapshot_and_the_clones() {
        let state = sample();
        assert_eq!(plan(&[], 2, None).unwrap(), vec![None, None]);
        assert_eq!(
            plan(&strings(&["tap=a"]), 1, None),
            Err(CloneNetError::Undeclared)
        );
        assert_eq!(plan(&[], 1, Some(&state)), Err(CloneNetError::Missing));
        assert_eq!(
            plan(&strings(&["tap=a", "tap=b"]), 3, Some(&state)),
            Err(CloneNetError::Count {
                given: 2,
                clones: 3
            })
        );
        let e = plan(
            &strings(&["tap=a,ip=10.0.0.{i+2}/24", "speed=1"]),
            2,
            Some(&state),
        )
        .unwrap_err();
        assert!(matches!(e, CloneNetError::Spec { clone: 1, .. }), "{e}");
        assert!(
            e.to_string().starts_with("clone 1: --net: unknown item"),
            "{e}"
        );
    }
}
