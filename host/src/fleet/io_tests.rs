//! The I/O scheduler's decisions, on simulated time: the budget holds over
//! windows, critical VMs come first, weights share the rest, unused budget
//! flows down, and large requests are slowed, never stuck.

use super::*;

const KIB: u64 = 1024;
const MIB: u64 = 1 << 20;

fn us(n: u64) -> Duration {
    Duration::from_micros(n)
}

/// How a simulated VM offers requests.
#[derive(Clone, Copy)]
enum Load {
    /// Requests of this size as fast as it is let (at most 4 a step).
    FlatOut(u64),
    /// Requests of this size at most this many bytes a second.
    Paced(u64, u64),
    /// Starts `FlatOut` after this long.
    Later(Duration, u64),
}

/// Runs VMs of `classes` with `loads` under `budget` for `run`, in steps
/// of 20 µs; what each moved.
fn simulate(budget: IoBudget, vms: &[(IoClass, Load)], run: Duration) -> Vec<IoUse> {
    let t0 = Instant::now();
    let classes: Vec<IoClass> = vms.iter().map(|v| v.0).collect();
    let mut s = IoScheduler::new(budget, &classes, t0);
    let mut next = vec![t0; vms.len()];
    let mut now = t0;
    while now < t0 + run {
        for (i, (_, load)) in vms.iter().enumerate() {
            let (unit, pace) = match *load {
                Load::FlatOut(u) => (u, None),
                Load::Paced(u, rate) => (u, Some(rate)),
                Load::Later(after, u) if now >= t0 + after => (u, None),
                Load::Later(..) => continue,
            };
            for _ in 0..4 {
                if next[i] > now {
                    break;
                }
                match s.admit(i, unit, now) {
                    Admit::Now => {
                        if let Some(rate) = pace {
                            next[i] = now + Duration::from_nanos(unit * 1_000_000_000 / rate);
                        }
                    }
                    Admit::At(at) => {
                        assert!(at > now, "told to wait until a past instant");
                        next[i] = at;
                    }
                }
            }
        }
        now += us(20);
    }
    (0..vms.len()).map(|i| s.usage(i)).collect()
}

fn bytes(budget: u64) -> IoBudget {
    IoBudget {
        bytes: Some(budget),
        ops: None,
    }
}

#[test]
fn batch_vms_flat_out_stay_within_the_budget_and_use_it() {
    let rate = 64 * MIB;
    let vms = [(IoClass::Batch, Load::FlatOut(64 * KIB)); 3];
    let use_ = simulate(bytes(rate), &vms, Duration::from_secs(2));
    let total: u64 = use_.iter().map(|u| u.bytes).sum();
    let epoch = rate * 2 / 1000;
    let bound = rate * 2 + epoch + 3 * 64 * KIB;
    assert!(total <= bound, "{total} bytes passed, bound {bound}");
    assert!(
        total > rate * 2 * 9 / 10,
        "only {total} of {} bytes",
        rate * 2
    );
    // Equal classes, equal shares (within 10 %).
    for u in &use_ {
        let share = total / 3;
        assert!(u.bytes.abs_diff(share) < share / 10, "{use_:?}");
        assert!(u.held > 0, "a VM flat out was never held: {use_:?}");
    }
}

#[test]
fn a_critical_vm_comes_strictly_first() {
    let rate = 32 * MIB;
    let mut vms = vec![(IoClass::Critical, Load::FlatOut(64 * KIB))];
    vms.extend([(IoClass::Batch, Load::FlatOut(64 * KIB)); 3]);
    let use_ = simulate(bytes(rate), &vms, Duration::from_secs(1));
    let total: u64 = use_.iter().map(|u| u.bytes).sum();
    assert!(total <= rate + rate / 500 + 4 * 64 * KIB, "{use_:?}");
    assert!(
        use_[0].bytes > rate * 9 / 10,
        "the critical VM got {} of {rate}: {use_:?}",
        use_[0].bytes
    );
}

#[test]
fn what_a_critical_vm_leaves_flows_to_the_others() {
    let rate = 32 * MIB;
    // The critical VM wants a quarter of the budget; two batch VMs flat out.
    let mut vms = vec![(IoClass::Critical, Load::Paced(16 * KIB, rate / 4))];
    vms.extend([(IoClass::Batch, Load::FlatOut(64 * KIB)); 2]);
    let secs = 2;
    let use_ = simulate(bytes(rate), &vms, Duration::from_secs(secs));
    let critical = use_[0].bytes;
    let want = rate / 4 * secs;
    assert!(
        critical > want * 95 / 100,
        "critical got {critical} of the {want} it asked for: {use_:?}"
    );
    let batch = use_[1].bytes + use_[2].bytes;
    let rest = rate * secs - want;
    assert!(
        batch > rest * 85 / 100,
        "batch got {batch} of the {rest} left: {use_:?}"
    );
}

#[test]
fn standard_and_batch_share_by_weight() {
    let rate = 32 * MIB;
    let vms = [
        (IoClass::Standard, Load::FlatOut(16 * KIB)),
        (IoClass::Batch, Load::FlatOut(16 * KIB)),
    ];
    let use_ = simulate(bytes(rate), &vms, Duration::from_secs(2));
    let ratio = use_[0].bytes as f64 / use_[1].bytes as f64;
    let expected = (STANDARD_WEIGHT / BATCH_WEIGHT) as f64;
    assert!(
        (ratio - expected).abs() < expected * 0.2,
        "standard/batch = {ratio:.2}, expected about {expected}: {use_:?}"
    );
}

#[test]
fn a_critical_vm_arriving_late_is_served_at_once_or_within_an_epoch() {
    let t0 = Instant::now();
    let rate = 100 * MIB;
    let classes = [IoClass::Critical, IoClass::Batch];
    let mut s = IoScheduler::new(bytes(rate), &classes, t0);
    // The batch VM takes a burst; next epoch it is granted what it wants.
    while s.admit(1, 4 * KIB, t0) == Admit::Now {}
    let e1 = t0 + EPOCH;
    assert_eq!(s.admit(1, 4 * KIB, e1), Admit::Now);
    // Mid-epoch the critical VM takes from the batch VM's unspent grant.
    let mid = e1 + us(500);
    assert_eq!(s.admit(0, 16 * KIB, mid), Admit::Now);
    // Once everything is spent, it waits for the next epoch, no longer.
    while s.admit(1, 4 * KIB, mid) == Admit::Now {}
    let mut waited = None;
    for _ in 0..1000 {
        if let Admit::At(at) = s.admit(0, 16 * KIB, mid) {
            waited = Some(at);
            break;
        }
    }
    let mut at = waited.expect("the critical VM was never held");
    while let Admit::At(later) = s.admit(0, 16 * KIB, at) {
        assert!(later > at, "told to wait until a past instant");
        at = later;
    }
    assert!(at <= mid + EPOCH, "held until {:?} after", at - mid);
    // And the batch VM, asking at the same instant, waits behind it.
    let mut critical_first = 0u64;
    while s.admit(0, 16 * KIB, at) == Admit::Now {
        critical_first += 16 * KIB;
    }
    assert!(critical_first >= rate * 2 / 1000 / 2, "{critical_first}");
    assert!(matches!(s.admit(1, 4 * KIB, at), Admit::At(_)));
}

#[test]
fn a_request_larger_than_an_epoch_passes_and_is_paid_back() {
    // 1 MiB/s: an epoch is 2 KiB, requests are 64 KiB.
    let rate = MIB;
    let vms = [(IoClass::Batch, Load::FlatOut(64 * KIB)); 2];
    let use_ = simulate(bytes(rate), &vms, Duration::from_secs(4));
    let total: u64 = use_.iter().map(|u| u.bytes).sum();
    assert!(total >= 2 * MIB, "large requests got stuck: {use_:?}");
    assert!(
        total <= rate * 4 + 2 * 64 * KIB + 2 * KIB,
        "debt was not paid back: {use_:?}"
    );
}

#[test]
fn the_operation_budget_holds_too() {
    let budget = IoBudget {
        bytes: None,
        ops: Some(10_000),
    };
    let vms = [
        (IoClass::Standard, Load::FlatOut(512)),
        (IoClass::Batch, Load::FlatOut(512)),
    ];
    let use_ = simulate(budget, &vms, Duration::from_secs(1));
    let ops: u64 = use_.iter().map(|u| u.ops).sum();
    assert!(ops <= 10_000 + 20 + 2, "{use_:?}");
    assert!(ops > 9_000, "{use_:?}");
}

#[test]
fn a_late_starter_gets_its_share_from_then_on() {
    let rate = 16 * MIB;
    let vms = [
        (IoClass::Batch, Load::FlatOut(64 * KIB)),
        (
            IoClass::Critical,
            Load::Later(Duration::from_millis(500), 64 * KIB),
        ),
    ];
    let use_ = simulate(bytes(rate), &vms, Duration::from_secs(1));
    // Half a second alone, then strictly behind the critical VM.
    assert!(use_[0].bytes > rate / 2 * 9 / 10, "{use_:?}");
    assert!(use_[0].bytes < rate / 2 * 11 / 10, "{use_:?}");
    assert!(use_[1].bytes > rate / 2 * 9 / 10, "{use_:?}");
}

#[test]
fn unknown_vms_and_a_clock_going_back() {
    let t0 = Instant::now() + Duration::from_secs(1);
    let mut s = IoScheduler::new(bytes(MIB), &[IoClass::Standard], t0);
    assert_eq!(s.admit(7, u64::MAX, t0), Admit::Now);
    while s.admit(0, KIB, t0) == Admit::Now {}
    let earlier = t0 - Duration::from_millis(500);
    assert!(matches!(s.admit(0, KIB, earlier), Admit::At(_)));
    assert_eq!(s.admit(0, KIB, t0 + EPOCH), Admit::Now);
    assert_eq!(IoClass::from_name("batch"), Some(IoClass::Batch));
    assert_eq!(IoClass::from_name("urgent"), None);
    for (name, class) in IoClass::ALL {
        assert_eq!(class.name(), name);
    }
}

#[test]
fn water_filling_gives_small_wants_in_full() {
    let mut left = 100u128;
    let got = water_fill(&[(0, 10, 1), (1, 1000, 1), (2, 1000, 3)], &mut left);
    assert_eq!(got, [(0, 10), (2, 67), (1, 23)]);
    assert_eq!(left, 0);
}
