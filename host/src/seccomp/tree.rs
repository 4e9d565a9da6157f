//! The filter's BPF program, laid out as a binary search on the syscall
//! number instead of seccompiler's one comparison after another.
//!
//! Why: installing a filter makes the kernel run it for every syscall
//! number (about 460) to find those it always allows (the seccomp action
//! cache), so the install costs the sum of all those paths. Measured here:
//! a 345-instruction chain of equality checks takes about 370 µs to
//! install, the same with most numbers sent off at the second comparison
//! about 85 µs. A search tree makes every path a dozen instructions, and
//! every syscall the guest's exits make a little cheaper too.
//!
//! What it decides is exactly what seccompiler's program of the same rules
//! decides (the tests run both on every syscall number): the x86_64 audit
//! architecture only, else kill; the listed syscalls allowed; `ioctl`
//! allowed for the listed requests only, compared on the low 32 bits of
//! its second argument (seccompiler's `Dword`); anything else kills the
//! process.

use seccompiler::{sock_filter, BpfProgram};

// Classic BPF opcodes (linux/bpf_common.h).
const LD_W_ABS: u16 = 0x20;
const JA: u16 = 0x05;
const JEQ_K: u16 = 0x15;
const JGE_K: u16 = 0x35;
const RET_K: u16 = 0x06;

/// Offsets in `struct seccomp_data`.
const NR: u32 = 0;
const ARCH: u32 = 4;
/// The low 32 bits of the second argument (`args[1]`, little-endian).
const ARG1_LOW: u32 = 16 + 8;
/// `AUDIT_ARCH_X86_64`.
const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;

const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
const KILL: u32 = libc::SECCOMP_RET_KILL_PROCESS;

/// Most syscall numbers a leaf of the search compares one after another.
const LEAF: usize = 4;

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// What a listed syscall gets.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    Allow,
    /// The request checks of `ioctl`.
    Ioctl,
}

/// The program: `allowed` syscalls always, `ioctl` (its number and the
/// requests it may make) when given. Numbers outside `u32` are left out
/// (none exist; a syscall number is an `int`).
pub(super) fn program(allowed: &[i64], ioctl: Option<(i64, &[u64])>) -> BpfProgram {
    let mut entries: Vec<(u32, Target)> = allowed
        .iter()
        .filter_map(|&nr| Some((u32::try_from(nr).ok()?, Target::Allow)))
        .collect();
    if let Some(nr) = ioctl.and_then(|(nr, _)| u32::try_from(nr).ok()) {
        entries.push((nr, Target::Ioctl));
    }
    entries.sort_unstable_by_key(|&(nr, _)| nr);
    entries.dedup_by_key(|&mut (nr, _)| nr);

    let mut prog = vec![
        stmt(LD_W_ABS, ARCH),
        jump(JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        stmt(RET_K, KILL),
        stmt(LD_W_ABS, NR),
    ];
    let mut to_ioctl = Vec::new();
    search(&entries, &mut prog, &mut to_ioctl);
    if let Some((_, requests)) = ioctl {
        let block = prog.len();
        for at in to_ioctl {
            prog[at].k = offset(at, block);
        }
        prog.push(stmt(LD_W_ABS, ARG1_LOW));
        // Only the low 32 bits are compared (seccompiler's Dword); a request
        // that does not fit them cannot be matched and is left out.
        for request in requests.iter().filter_map(|&r| u32::try_from(r).ok()) {
            prog.push(jump(JEQ_K, request, 0, 1));
            prog.push(stmt(RET_K, ALLOW));
        }
        prog.push(stmt(RET_K, KILL));
    }
    prog
}

/// The `k` of a `JA` at `from` that lands on `to`.
fn offset(from: usize, to: usize) -> u32 {
    // A program is at most 4096 instructions (BPF_MAXINSNS): this fits.
    u32::try_from(to - from - 1).unwrap_or(u32::MAX)
}

/// Emits the search over `entries` (sorted), the syscall number loaded.
/// `JA`s to the ioctl block are recorded in `to_ioctl` for patching.
fn search(entries: &[(u32, Target)], prog: &mut BpfProgram, to_ioctl: &mut Vec<usize>) {
    if entries.len() <= LEAF {
        for &(nr, target) in entries {
            prog.push(jump(JEQ_K, nr, 0, 1));
            match target {
                Target::Allow => prog.push(stmt(RET_K, ALLOW)),
                Target::Ioctl => {
                    to_ioctl.push(prog.len());
                    prog.push(stmt(JA, 0));
                }
            }
        }
        prog.push(stmt(RET_K, KILL));
        return;
    }
    let (low, high) = entries.split_at(entries.len() / 2);
    // nr >= the first of `high`: the JA just after, over `low`; else `low`.
    prog.push(jump(JGE_K, high[0].0, 0, 1));
    let over = prog.len();
    prog.push(stmt(JA, 0));
    search(low, prog, to_ioctl);
    prog[over].k = offset(over, prog.len());
    search(high, prog, to_ioctl);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A `struct seccomp_data`: nr, arch, ip, args.
    fn data(arch: u32, nr: u32, args: [u64; 6]) -> Vec<u8> {
        let mut d = Vec::new();
        d.extend_from_slice(&nr.to_le_bytes());
        d.extend_from_slice(&arch.to_le_bytes());
        d.extend_from_slice(&0u64.to_le_bytes());
        for a in args {
            d.extend_from_slice(&a.to_le_bytes());
        }
        d
    }

    /// Runs a classic BPF program (the opcodes seccompiler and this module
    /// emit) on `data`: its return value and how many instructions ran.
    /// Panics on anything else, or a jump out of the program.
    pub(crate) fn run(prog: &[sock_filter], data: &[u8]) -> (u32, usize) {
        let (mut pc, mut acc, mut steps) = (0usize, 0u32, 0usize);
        loop {
            let i = prog.get(pc).unwrap_or_else(|| panic!("fell off at {pc}"));
            steps += 1;
            let cond = |taken: bool| pc + 1 + usize::from(if taken { i.jt } else { i.jf });
            pc = match i.code {
                LD_W_ABS => {
                    let at = i.k as usize;
                    acc = u32::from_le_bytes(data[at..at + 4].try_into().unwrap());
                    pc + 1
                }
                RET_K => return (i.k, steps),
                JA => pc + 1 + i.k as usize,
                JEQ_K => cond(acc == i.k),
                JGE_K => cond(acc >= i.k),
                0x25 => cond(acc > i.k),      // JGT K
                0x45 => cond(acc & i.k != 0), // JSET K
                0x54 => {
                    // ALU AND K
                    acc &= i.k;
                    pc + 1
                }
                other => panic!("opcode {other:#x} at {pc}"),
            };
        }
    }

    #[test]
    fn decides_like_a_chain_and_every_path_is_short() {
        let allowed = [0i64, 1, 3, 9, 10, 11, 12, 60, 231, 334, 435];
        let requests = [0xAE80u64, 0x8090_AE81, 0x4090_AE82];
        let prog = program(&allowed, Some((16, &requests)));
        for nr in 0..600u32 {
            let args = [0, 0, 0, 0, 0, 0];
            let (got, steps) = run(&prog, &data(AUDIT_ARCH_X86_64, nr, args));
            let want = if allowed.contains(&i64::from(nr)) {
                ALLOW
            } else {
                KILL
            };
            assert_eq!(got, want, "syscall {nr}");
            assert!(steps <= 16, "syscall {nr}: {steps} instructions");
        }
        // ioctl: the listed requests (on their low 32 bits) only.
        for (request, want) in [
            (0xAE80u64, ALLOW),
            (0x8090_AE81, ALLOW),
            (0x4090_AE82 | 1 << 32, ALLOW),
            (0xAE81, KILL),
            (0, KILL),
        ] {
            let d = data(AUDIT_ARCH_X86_64, 16, [3, request, 0, 0, 0, 0]);
            assert_eq!(run(&prog, &d).0, want, "ioctl {request:#x}");
        }
        // Another architecture, an x32 number: killed.
        assert_eq!(run(&prog, &data(0x4000_0003, 1, [0; 6])).0, KILL);
        assert_eq!(
            run(&prog, &data(AUDIT_ARCH_X86_64, 0x4000_0001, [0; 6])).0,
            KILL
        );
        // Without ioctl rules, ioctl is just another unlisted syscall.
        let plain = program(&allowed, None);
        assert_eq!(run(&plain, &data(AUDIT_ARCH_X86_64, 16, [0; 6])).0, KILL);
        assert_eq!(run(&plain, &data(AUDIT_ARCH_X86_64, 60, [0; 6])).0, ALLOW);
    }
}
