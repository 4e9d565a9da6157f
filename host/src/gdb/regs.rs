//! The registers gdb sees (`gdbstub_arch`'s x86_64 with SSE) made from
//! KVM's register sets or the guest's fault record, and gdb's writes taken
//! back, with what gdb may not change (privilege, interrupt and I/O
//! flags; the segment selectors; the x87 state and MXCSR) kept as it was.

use gdbstub_arch::x86::reg::{X86SegmentRegs, X86_64CoreRegs, X87FpuInternalRegs};
use kvm_bindings::{kvm_regs, kvm_sregs};
use tandem_abi::trace::FaultRecord;

/// RFLAGS bits a debugger may set: the arithmetic flags, TF and DF.
pub const USER_FLAGS: u64 = 0x1 | 0x4 | 0x10 | 0x40 | 0x80 | 0x100 | 0x400 | 0x800;
/// The trap flag (single-step).
pub const TF: u64 = 0x100;

/// `old` with the bits of `new` a debugger may change.
pub fn merge_rflags(old: u64, new: u64) -> u64 {
    (old & !USER_FLAGS) | (new & USER_FLAGS) | 0x2
}

/// gdb's order of the general registers in KVM's set.
fn kvm_gprs(r: &kvm_regs) -> [u64; 16] {
    [
        r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.rsp, r.r8, r.r9, r.r10, r.r11, r.r12,
        r.r13, r.r14, r.r15,
    ]
}

fn segments(sregs: &kvm_sregs, cs: u64, ss: u64) -> X86SegmentRegs {
    // Selectors are 16-bit; the record's u64 copies of cs and ss too.
    let sel = |v: u64| u32::try_from(v & 0xFFFF).unwrap_or(0);
    X86SegmentRegs {
        cs: sel(cs),
        ss: sel(ss),
        ds: u32::from(sregs.ds.selector),
        es: u32::from(sregs.es.selector),
        fs: u32::from(sregs.fs.selector),
        gs: u32::from(sregs.gs.selector),
    }
}

/// What gdb sees of a vCPU stopped outside the exception entry.
pub fn from_kvm(regs: &kvm_regs, sregs: &kvm_sregs) -> X86_64CoreRegs {
    X86_64CoreRegs {
        regs: kvm_gprs(regs),
        rip: regs.rip,
        eflags: u32::try_from(regs.rflags & 0xFFFF_FFFF).unwrap_or(0),
        segments: segments(
            sregs,
            u64::from(sregs.cs.selector),
            u64::from(sregs.ss.selector),
        ),
        ..X86_64CoreRegs::default()
    }
}

/// What gdb sees of a vCPU stopped in the exception entry: the trapping
/// code's registers, from the fault record.
pub fn from_record(rec: &FaultRecord, sregs: &kvm_sregs) -> X86_64CoreRegs {
    let g = &rec.gprs;
    X86_64CoreRegs {
        regs: [
            g[0], g[1], g[2], g[3], g[4], g[5], g[6], rec.rsp, g[7], g[8], g[9], g[10], g[11],
            g[12], g[13], g[14],
        ],
        rip: rec.rip,
        eflags: u32::try_from(rec.rflags & 0xFFFF_FFFF).unwrap_or(0),
        segments: segments(sregs, rec.cs, rec.ss),
        ..X86_64CoreRegs::default()
    }
}

/// KVM's registers with gdb's writes.
pub fn to_kvm(old: &kvm_regs, new: &X86_64CoreRegs) -> kvm_regs {
    let r = &new.regs;
    kvm_regs {
        rax: r[0],
        rbx: r[1],
        rcx: r[2],
        rdx: r[3],
        rsi: r[4],
        rdi: r[5],
        rbp: r[6],
        rsp: r[7],
        r8: r[8],
        r9: r[9],
        r10: r[10],
        r11: r[11],
        r12: r[12],
        r13: r[13],
        r14: r[14],
        r15: r[15],
        rip: new.rip,
        rflags: merge_rflags(old.rflags, u64::from(new.eflags)),
    }
}

/// The fault record with gdb's writes.
pub fn to_record(old: &FaultRecord, new: &X86_64CoreRegs) -> FaultRecord {
    let r = &new.regs;
    FaultRecord {
        gprs: [
            r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[8], r[9], r[10], r[11], r[12], r[13],
            r[14], r[15],
        ],
        rip: new.rip,
        rsp: r[7],
        rflags: merge_rflags(old.rflags, u64::from(new.eflags)),
        ..*old
    }
}

/// The x87 and SSE registers from an FXSAVE image (the first 512 bytes of
/// an XSAVE area), into `regs`.
pub fn add_fxsave(regs: &mut X86_64CoreRegs, fx: &[u8]) {
    use tandem_abi::le::{u16_at, u32_at, u64_at};
    if fx.len() < 512 {
        return;
    }
    let w16 = |at| u32::from(u16_at(fx, at).unwrap_or(0));
    let w64 = |at| u64_at(fx, at).unwrap_or(0);
    let low = |v: u64| u32::try_from(v & 0xFFFF_FFFF).unwrap_or(0);
    regs.fpu = X87FpuInternalRegs {
        fctrl: w16(0),
        fstat: w16(2),
        ftag: u32::from(fx[4]),
        fiseg: 0,
        fioff: low(w64(8)),
        foseg: 0,
        fooff: low(w64(16)),
        fop: w16(6),
    };
    for (i, st) in regs.st.iter_mut().enumerate() {
        st.copy_from_slice(&fx[32 + 16 * i..32 + 16 * i + 10]);
    }
    for (i, x) in regs.xmm.iter_mut().enumerate() {
        let at = FXSAVE_XMM + 16 * i;
        *x = u128::from(w64(at)) | (u128::from(w64(at + 8)) << 64);
    }
    regs.mxcsr = u32_at(fx, 24).unwrap_or(0);
}

/// Where XMM0 starts in an FXSAVE image (16 bytes a register).
const FXSAVE_XMM: usize = 160;

/// gdb's XMM registers written into an FXSAVE image (the first 512 bytes
/// of an XSAVE area); whether that changed it. The x87 registers and MXCSR
/// stay read-only: a bad MXCSR would make the host's XRSTOR fault.
pub fn set_fxsave_xmm(fx: &mut [u8], regs: &X86_64CoreRegs) -> bool {
    let Some(area) = fx.get_mut(FXSAVE_XMM..FXSAVE_XMM + 16 * regs.xmm.len()) else {
        return false;
    };
    let mut changed = false;
    for (slot, x) in area.chunks_exact_mut(16).zip(regs.xmm.iter()) {
        let bytes = x.to_le_bytes();
        if *slot != bytes {
            slot.copy_from_slice(&bytes);
            changed = true;
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdb_may_change_arithmetic_flags_and_tf_only() {
        // IF and IOPL stay; CF, ZF and TF follow gdb; bit 1 is always set.
        assert_eq!(merge_rflags(0x202, 0x3141), 0x302 | 0x41);
        assert_eq!(merge_rflags(0x3202, 0), 0x3202);
    }

    #[test]
    fn registers_round_trip_through_gdb_order() {
        let kvm = kvm_regs {
            rax: 1,
            rbx: 2,
            rsp: 8,
            rbp: 7,
            r8: 9,
            r15: 16,
            rip: 0x20_0125,
            rflags: 0x246,
            ..Default::default()
        };
        let sregs = kvm_sregs::default();
        let g = from_kvm(&kvm, &sregs);
        assert_eq!(g.regs[0], 1);
        assert_eq!(g.regs[6], 7); // rbp
        assert_eq!(g.regs[7], 8); // rsp
        assert_eq!(g.regs[8], 9); // r8
        assert_eq!(g.regs[15], 16);
        assert_eq!(to_kvm(&kvm, &g), kvm);

        let mut rec = FaultRecord {
            rip: 0x20_0140,
            rsp: 0x1f_be90,
            rflags: 0x10246,
            cs: 0x23,
            ss: 0x1b,
            ..FaultRecord::default()
        };
        for (i, r) in rec.gprs.iter_mut().enumerate() {
            *r = 100 + i as u64;
        }
        let g = from_record(&rec, &sregs);
        assert_eq!((g.regs[6], g.regs[7], g.regs[8]), (106, 0x1f_be90, 107));
        assert_eq!((g.segments.cs, g.segments.ss), (0x23, 0x1b));
        assert_eq!(to_record(&rec, &g), rec);
        // A write of rip and a trap flag lands in the record.
        let mut w = g.clone();
        w.rip = 0x20_0150;
        w.eflags |= 0x100;
        let r2 = to_record(&rec, &w);
        assert_eq!((r2.rip, r2.rflags & TF), (0x20_0150, TF));
    }

    #[test]
    fn sse_registers_come_from_the_fxsave_image() {
        let mut fx = [0u8; 512];
        fx[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
        fx[160..168].copy_from_slice(&0x1122u64.to_le_bytes());
        fx[168..176].copy_from_slice(&0x3344u64.to_le_bytes());
        let mut g = X86_64CoreRegs::default();
        add_fxsave(&mut g, &fx);
        assert_eq!(g.mxcsr, 0x1f80);
        assert_eq!(g.xmm[0], 0x3344u128 << 64 | 0x1122);
        // Too short: nothing changes.
        let mut h = X86_64CoreRegs::default();
        add_fxsave(&mut h, &fx[..100]);
        assert_eq!(h, X86_64CoreRegs::default());
    }

    #[test]
    fn xmm_writes_land_in_the_fxsave_image_and_nothing_else() {
        let mut fx = [0u8; 512];
        fx[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
        let mut g = X86_64CoreRegs::default();
        add_fxsave(&mut g, &fx);
        assert!(!set_fxsave_xmm(&mut fx, &g), "nothing changed");
        g.xmm[1] = 0xAABB_u128 << 64 | 0xCCDD;
        g.mxcsr = 0xFFFF_FFFF;
        let before = fx;
        assert!(set_fxsave_xmm(&mut fx, &g));
        let mut back = X86_64CoreRegs::default();
        add_fxsave(&mut back, &fx);
        assert_eq!(back.xmm[1], g.xmm[1]);
        assert_eq!(back.mxcsr, 0x1f80, "MXCSR is read-only");
        let differing: Vec<usize> = (0..512).filter(|&i| fx[i] != before[i]).collect();
        assert!(
            differing.iter().all(|&i| (176..192).contains(&i)),
            "{differing:?}"
        );
        // Too short: nothing written.
        assert!(!set_fxsave_xmm(&mut fx[..100], &g));
    }
}
