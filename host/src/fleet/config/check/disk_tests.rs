//! The disk rules of a fleet file, on real image files (a tiny image with
//! and without a block device in its manifest) and real disk files.

use std::path::{Path, PathBuf};

use tandem_abi::note::{DeviceKind, DeviceSet, DevicesNote};
use tandem_abi::ABI_VERSION;

use super::super::super::{ConfigError, FleetSpec, LimitOverrides};
use crate::image::tests::tiny_image_with;

/// A folder with `blk.img` (declares a block device), `plain.img` (no
/// devices) and the disk files `disks` (64 KiB each).
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str, disks: &[&str]) -> Self {
        let dir =
            std::env::temp_dir().join(format!("tandem-fleet-disk-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let block = DevicesNote::new(DeviceSet::of(&[DeviceKind::Block])).to_bytes();
        std::fs::write(dir.join("blk.img"), tiny_image_with(ABI_VERSION, &[&block])).unwrap();
        std::fs::write(dir.join("plain.img"), tiny_image_with(ABI_VERSION, &[])).unwrap();
        for d in disks {
            let f = std::fs::File::create(dir.join(d)).unwrap();
            f.set_len(64 << 10).unwrap();
        }
        Self(dir)
    }

    fn parse(&self, text: &str) -> Result<FleetSpec, ConfigError> {
        FleetSpec::parse(text, &self.0, LimitOverrides::default())
    }

    fn problems(&self, text: &str) -> Vec<String> {
        match self.parse(text) {
            Err(ConfigError::Invalid { problems, .. }) => {
                problems.iter().map(ToString::to_string).collect()
            }
            Err(e) => vec![e.to_string()],
            Ok(_) => Vec::new(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn replicas_get_a_disk_each_with_the_vms_limits() {
    let dir = Dir::new("ok", &["d0.img", "d1.img", "base.img", "one.img"]);
    let spec = dir
        .parse(
            "[defaults]\nio_rate = \"50M\"\n\
             [[vm]]\nname = \"db\"\nimage = \"blk.img\"\ncount = 2\niops = 2000\n\
             disk = [\"path=d{i}.img\", \"path=base.img,ro,rate=1M\"]\n\
             [[vm]]\nname = \"one\"\nimage = \"blk.img\"\ndisk = [\"path=one.img\"]\n\
             [[vm]]\nname = \"none\"\nimage = \"plain.img\"\n",
        )
        .unwrap();
    let disks: Vec<Vec<(String, bool)>> = spec
        .vms
        .iter()
        .map(|v| {
            v.disks
                .iter()
                .map(|d| (path(&d.path), d.read_only))
                .collect()
        })
        .collect();
    let p = |n| path(&dir.path(n));
    assert_eq!(
        disks,
        vec![
            vec![(p("d0.img"), false), (p("base.img"), true)],
            vec![(p("d1.img"), false), (p("base.img"), true)],
            vec![(p("one.img"), false)],
            vec![],
        ]
    );
    let own = &spec.vms[0].disks[0].limit;
    assert_eq!(
        own.bytes.unwrap().rate(),
        50 << 20,
        "io_rate from [defaults]"
    );
    assert_eq!(own.ops.unwrap().rate(), 2000, "the VM's iops");
    let base = &spec.vms[1].disks[1].limit;
    assert_eq!(
        base.bytes.unwrap().rate(),
        1 << 20,
        "a disk's own rate= wins"
    );
    assert_eq!(base.ops.unwrap().rate(), 2000);
    let one = &spec.vms[2].disks[0].limit;
    assert_eq!(one.bytes.unwrap().rate(), 50 << 20);
    assert!(one.ops.is_none());
}

#[test]
fn disk_rules_are_checked_at_their_place() {
    let dir = Dir::new("bad", &["a.img", "b{i}.img", "b0.img", "b1.img"]);
    let missing = path(&dir.path("gone.img"));
    let text = "[[vm]]\nname = \"needs\"\nimage = \"blk.img\"\n\
         [[vm]]\nname = \"plain\"\nimage = \"plain.img\"\ndisk = [\"path=a.img\"]\n\
         [[vm]]\nname = \"rep\"\nimage = \"blk.img\"\ncount = 2\ndisk = [\"path=a.img\", \"path=b{i}.img\"]\n\
         [[vm]]\nname = \"twice\"\nimage = \"blk.img\"\ndisk = [\"path=b1.img,ro\"]\n\
         [[vm]]\nname = \"bad\"\nimage = \"blk.img\"\ndisk = [\"path=a.img,rw\", 7, \"path=gone.img\"]\nio_rate = \"0\"\n\
         [[vm]]\nname = \"ckpt\"\nimage = \"blk.img\"\ncheckpoint = \"state\"\ndisk = [\"path=b0.img,ro\"]\n\
         [[vm]]\nname = \"lim\"\nimage = \"plain.img\"\niops = 5\n";
    let p = dir.problems(text);
    let expected = [
        "3:9: vm `needs`: image blk.img needs a block device: give the VM `disk = [\"path=FILE\"]`".to_string(),
        "7:8: vm `plain`: image plain.img does not declare a block device; remove `disk`".into(),
        "12:9: vm `rep`: disk \"path=a.img\": its 2 replicas need one writable disk each: put {i} (the replica's index) in the path".into(),
        "16:9: vm `twice`: disk ".to_string() + &path(&dir.path("b1.img")) + " is vm `rep` (replica 1)'s too: a disk written by one VM is no other VM's",
        "20:9: vm `bad`: disk \"path=a.img,rw\": unknown item \"rw\" (expected path=, ro, rate=, rate_burst=, iops=, iops_burst=)".into(),
        "20:26: vm `bad`: `disk`: invalid type: integer `7`, expected a disk such as \"path=data.img\" or \"path=data-{i}.img,ro\"".into(),
        format!("20:29: vm `bad`: disk image {missing} does not exist (create one with `truncate -s 64M {missing}`)"),
        "21:11: vm `bad`: `io_rate`: rate=\"0\": 0 would stop all I/O (leave the limit out for none)".into(),
        "26:8: vm `ckpt`: `disk` with `checkpoint` is not supported yet (a restore needs a disk file of its own, as `tandem restore --disk path=NEWFILE` takes)".into(),
        // Read here, written by another VM.
        "26:9: vm `ckpt`: disk ".to_string() + &path(&dir.path("b0.img")) + " is vm `rep` (replica 0)'s too: a disk written by one VM is no other VM's",
        "30:8: vm `lim`: `iops` limits the VM's disks, and it has no `disk`".into(),
    ];
    assert_eq!(p, expected, "{p:#?}");
}

#[test]
fn the_io_budget_and_classes_are_read() {
    use crate::fleet::io::{IoBudget, IoClass};
    let dir = Dir::new("budget", &["c.img", "b0.img", "b1.img"]);
    let spec = dir
        .parse(
            "[fleet]\nio_budget = { rate = \"200M\", iops = 20000 }\n\
             [defaults]\nio_class = \"batch\"\n\
             [[vm]]\nname = \"c\"\nimage = \"blk.img\"\nio_class = \"critical\"\ndisk = [\"path=c.img\"]\n\
             [[vm]]\nname = \"b\"\nimage = \"blk.img\"\ncount = 2\ndisk = [\"path=b{i}.img\"]\n\
             [[vm]]\nname = \"plain\"\nimage = \"plain.img\"\nio_class = \"standard\"\n",
        )
        .unwrap();
    assert_eq!(
        spec.io_budget,
        Some(IoBudget {
            bytes: Some(200 << 20),
            ops: Some(20_000)
        })
    );
    let classes: Vec<IoClass> = spec.vms.iter().map(|v| v.io_class).collect();
    assert_eq!(
        classes,
        [
            IoClass::Critical,
            IoClass::Batch,
            IoClass::Batch,
            IoClass::Standard
        ]
    );
    let only_rate = dir
        .parse(
            "[fleet]\nio_budget = { rate = 1000 }\n[[vm]]\nname = \"p\"\nimage = \"plain.img\"\n",
        )
        .unwrap();
    assert_eq!(
        only_rate.io_budget,
        Some(IoBudget {
            bytes: Some(1000),
            ops: None
        })
    );
    assert_eq!(only_rate.vms[0].io_class, IoClass::Standard);
}

#[test]
fn io_budget_errors_are_reported_at_their_place() {
    let dir = Dir::new("badbudget", &[]);
    let vm = "[[vm]]\nname = \"p\"\nimage = \"plain.img\"\n";
    let cases = [
        (
            "[fleet]\nio_budget = { rate = \"fast\", iops = 0 }\n",
            vec![
                "2:22: [fleet] io_budget: `rate`: rate=\"fast\": ",
                "2:37: [fleet] io_budget: `iops`: iops=\"0\": 0 would stop all I/O (leave the limit out for none)",
            ],
        ),
        (
            "[fleet]\nio_budget = {}\n",
            vec!["2:13: [fleet] io_budget: needs `rate` (bytes a second), `iops` (requests a second) or both"],
        ),
        (
            "[fleet]\nio_budget = { rate = \"1M\", burst = 5 }\n",
            vec!["2:28: [fleet]: `io_budget`: unknown field `burst`, expected `rate` or `iops`"],
        ),
        (
            "[fleet]\nio_budget = \"200M\"\n",
            vec!["2:13: [fleet]: `io_budget`: invalid type: string \"200M\", expected a table such as { rate = \"200M\", iops = 20000 }"],
        ),
    ];
    for (fleet, expected) in cases {
        let p = dir.problems(&format!("{fleet}{vm}"));
        assert_eq!(p.len(), expected.len(), "{fleet}: {p:#?}");
        for (got, want) in p.iter().zip(&expected) {
            assert!(
                got.starts_with(want),
                "{fleet}: got {got:?}, expected {want:?}"
            );
        }
    }
    let p = dir.problems(&format!("{vm}io_class = \"urgent\"\n"));
    assert_eq!(
        p,
        ["4:12: vm `p`: `io_class`: \"urgent\" is not an I/O class: expected \"critical\", \"standard\" or \"batch\""],
        "{p:#?}"
    );
}
