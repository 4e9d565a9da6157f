//! The device manifest's rule: a VM gets exactly the devices its image
//! declares. [`check`] is the one decision, made before the VM (or a tap)
//! is set up, by `tandem run`, the fleet checker and [`Vm`](crate::Vm)'s
//! boot alike.

use tandem_abi::note::{DeviceKind, DeviceSet};

/// Why a run's devices do not match its image's manifest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceMismatch {
    /// The image declares a device the run does not offer.
    #[error("image {image} needs {}: {}", .kind.noun(), offer_hint(*.kind))]
    Missing {
        /// The image's name.
        image: String,
        /// The device.
        kind: DeviceKind,
    },
    /// The run offers a device the image does not declare.
    #[error("image {image} does not declare {}; {}", .kind.noun(), remove_hint(*.kind))]
    Undeclared {
        /// The image's name.
        image: String,
        /// The device.
        kind: DeviceKind,
    },
}

fn offer_hint(kind: DeviceKind) -> &'static str {
    match kind {
        DeviceKind::Net => "run it with --net tap=NAME",
        DeviceKind::Block => "run it with --disk path=FILE",
    }
}

fn remove_hint(kind: DeviceKind) -> &'static str {
    match kind {
        DeviceKind::Net => "remove --net",
        DeviceKind::Block => "remove --disk",
    }
}

/// The devices a run offers when `net` is set (what
/// [`VmConfig`](crate::VmConfig) asks for).
pub fn offered(net: bool) -> DeviceSet {
    offered_with(net, false)
}

/// The devices a run offers with a network device when `net` and disks
/// when `block`.
pub fn offered_with(net: bool, block: bool) -> DeviceSet {
    match (net, block) {
        (false, false) => DeviceSet::NONE,
        (true, false) => DeviceSet::of(&[DeviceKind::Net]),
        (false, true) => DeviceSet::of(&[DeviceKind::Block]),
        (true, true) => DeviceSet::of(&[DeviceKind::Net, DeviceKind::Block]),
    }
}

/// Whether a run that offers `offers` may boot an image that `needs`:
/// only if they are the same set. A missing device is reported before an
/// undeclared one, each kind in bit order. `image` names the image in the
/// message (empty: "the image").
///
/// ```
/// use tandem::devices::manifest::{check, offered};
/// use tandem_abi::note::DeviceSet;
/// assert!(check("hello", DeviceSet::NONE, offered(false)).is_ok());
/// let e = check("hello", DeviceSet::NONE, offered(true)).unwrap_err();
/// assert_eq!(e.to_string(), "image hello does not declare a network device; remove --net");
/// ```
pub fn check(image: &str, needs: DeviceSet, offers: DeviceSet) -> Result<(), DeviceMismatch> {
    let image = || {
        if image.is_empty() {
            "(unnamed)".to_string()
        } else {
            image.to_string()
        }
    };
    if let Some(kind) = needs.kinds().find(|k| !offers.contains(*k)) {
        return Err(DeviceMismatch::Missing {
            image: image(),
            kind,
        });
    }
    if let Some(kind) = offers.kinds().find(|k| !needs.contains(*k)) {
        return Err(DeviceMismatch::Undeclared {
            image: image(),
            kind,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NET: DeviceSet = DeviceSet::of(&[DeviceKind::Net]);
    const BLOCK: DeviceSet = DeviceSet::of(&[DeviceKind::Block]);
    const BOTH: DeviceSet = DeviceSet::of(&DeviceKind::ALL);

    fn text(needs: DeviceSet, offers: DeviceSet) -> String {
        check("httpd", needs, offers).unwrap_err().to_string()
    }

    #[test]
    fn equal_sets_run() {
        for set in [DeviceSet::NONE, NET, BLOCK, BOTH] {
            assert_eq!(check("app", set, set), Ok(()));
        }
        assert_eq!(check("hello", DeviceSet::NONE, offered(false)), Ok(()));
        assert_eq!(check("httpd", NET, offered(true)), Ok(()));
    }

    #[test]
    fn a_missing_device_is_named_with_the_option_that_offers_it() {
        assert_eq!(
            text(NET, DeviceSet::NONE),
            "image httpd needs a network device: run it with --net tap=NAME"
        );
        assert_eq!(
            check("httpd", NET, DeviceSet::NONE),
            Err(DeviceMismatch::Missing {
                image: "httpd".into(),
                kind: DeviceKind::Net
            })
        );
        assert_eq!(
            text(BLOCK, NET),
            "image httpd needs a block device: run it with --disk path=FILE"
        );
        assert!(text(BOTH, NET).contains("needs a block device"));
    }

    #[test]
    fn an_undeclared_device_is_named_with_the_option_to_drop() {
        assert_eq!(
            text(DeviceSet::NONE, NET),
            "image httpd does not declare a network device; remove --net"
        );
        assert_eq!(
            check("hello", DeviceSet::NONE, offered(true)),
            Err(DeviceMismatch::Undeclared {
                image: "hello".into(),
                kind: DeviceKind::Net
            })
        );
        assert!(text(NET, BOTH).contains("does not declare a block device; remove --disk"));
        assert_eq!(offered_with(true, true), BOTH);
        assert_eq!(offered_with(false, true), BLOCK);
    }

    #[test]
    fn missing_comes_before_undeclared() {
        // Needs block, offers net: the missing one is the news.
        assert!(text(BLOCK, NET).contains("needs a block device"));
        let e = check("", NET, DeviceSet::NONE).unwrap_err().to_string();
        assert!(e.starts_with("image (unnamed) needs"), "{e}");
    }
}
