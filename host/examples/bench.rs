//! In-process boot benchmark, run by `cargo xtask bench`.
//!
//! `bench --image HELLO --runs N` boots the image N times in this process,
//! interleaved with a baseline written with the same crates (create a VM
//! with one memory slot and one vCPU, run one `hlt` in real mode, take the
//! first exit), and prints one JSON object on stdout: medians, percentiles
//! and the ratio between the two, plus the machine-independent counts.
//!
//! `bench --baseline-process` runs the baseline once and exits: xtask times
//! it as a whole process beside `tandem run`.

use std::time::Instant;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuExit};
use serde_json::{json, Value};
use tandem::trace::rdtsc;
use tandem::{ConsoleSink, ExitStatus, Hypervisor, Image, VmBuilder};
use tandem_abi::stats::quantile;
use tandem_abi::trace::Phase;

/// The baseline: a VM that runs one instruction. Returns microseconds.
fn baseline(kvm: &Kvm, page: &mut [u8]) -> f64 {
    let t = Instant::now();
    let vm = kvm.create_vm().expect("KVM_CREATE_VM");
    page[0] = 0xF4; // hlt
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0x1000,
        memory_size: page.len() as u64,
        userspace_addr: page.as_mut_ptr() as u64,
    };
    // SAFETY: `page` is live, writable memory of `page.len()` bytes that
    // outlives the VM (dropped at the end of this function).
    unsafe { vm.set_user_memory_region(region) }.expect("memory region");
    let mut vcpu = vm.create_vcpu(0).expect("KVM_CREATE_VCPU");
    let mut sregs = vcpu.get_sregs().expect("sregs");
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).expect("sregs");
    let regs = kvm_bindings::kvm_regs {
        rip: 0x1000,
        rflags: 2,
        ..Default::default()
    };
    vcpu.set_regs(&regs).expect("regs");
    match vcpu.run() {
        Ok(VcpuExit::Hlt) => {}
        other => panic!("baseline: unexpected exit {other:?}"),
    }
    t.elapsed().as_secs_f64() * 1e6
}

/// One page-aligned page (KVM needs an aligned userspace address).
#[repr(C, align(4096))]
struct Page([u8; 4096]);

fn stats(mut v: Vec<f64>) -> Value {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| quantile(&v, q).expect("at least one sample");
    let r = |x: f64| (x * 10.0).round() / 10.0;
    json!({"median": r(at(0.5)), "p10": r(at(0.1)), "p90": r(at(0.9)), "min": r(v[0]), "n": v.len()})
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    quantile(v, 0.5).expect("at least one sample")
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut page = Box::new(Page([0u8; 4096]));
    let page = &mut page.0[..];
    if args.iter().any(|a| a == "--baseline-process") {
        let kvm = Kvm::new().expect("open /dev/kvm");
        baseline(&kvm, page);
        return;
    }
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let image_path = value("--image").expect("usage: bench --image PATH [--runs N]");
    let runs: usize = value("--runs").map_or(200, |r| r.parse().expect("--runs N"));

    let hv = Hypervisor::open().expect("open /dev/kvm");
    let image = Image::from_file(image_path.as_ref()).expect("image");

    let boot = |hv: &Hypervisor| {
        let start = rdtsc();
        let t = Instant::now();
        let report = VmBuilder::new(hv, &image)
            .started_at(start)
            .console(ConsoleSink::Discard)
            .run()
            .expect("boot");
        let wall = t.elapsed().as_secs_f64() * 1e6;
        assert_eq!(
            report.status,
            ExitStatus::Exited(0),
            "the benchmark image must exit 0"
        );
        (report, wall)
    };

    // Warm up both paths (page cache, KVM caches, TSC frequency).
    for _ in 0..5 {
        baseline(hv.kvm(), page);
        boot(&hv);
    }

    let mut to_main = Vec::new();
    let mut to_exit = Vec::new();
    let mut base = Vec::new();
    let mut phases: Vec<Vec<f64>> = vec![Vec::new(); Phase::COUNT];
    let mut last = None;
    for _ in 0..runs {
        // Side by side: noise on this shared machine hits both alike.
        base.push(baseline(hv.kvm(), page));
        let (report, wall) = boot(&hv);
        to_main.push(report.trace.micros(Phase::AppMain).expect("main reached"));
        to_exit.push(wall);
        for p in Phase::ALL {
            if let Some(us) = report.trace.micros(p) {
                phases[p as usize].push(us);
            }
        }
        last = Some(report.stats);
    }
    let s = last.expect("at least one run");
    let main_median = median(&mut to_main.clone());
    let base_median = median(&mut base.clone());
    let mut phase_medians = serde_json::Map::new();
    for p in Phase::ALL {
        let v = &mut phases[p as usize];
        if !v.is_empty() {
            phase_medians.insert(p.name().into(), json!((median(v) * 10.0).round() / 10.0));
        }
    }
    let out = json!({
        "runs": runs,
        "boot_to_main_us": stats(to_main),
        "boot_to_exit_us": stats(to_exit),
        "baseline_one_instruction_us": stats(base),
        "ratio_main_to_baseline": (main_median / base_median * 100.0).round() / 100.0,
        "exits_before_main": s.exits_before_main,
        "cpl0_entries_before_main": s.cpl0_entries_before_main,
        "exits_per_run": s.exits,
        "cpl0_entries_per_run": s.cpl0_entries,
        "phase_median_us": phase_medians,
    });
    println!("{out}");
}
