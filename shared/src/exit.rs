//! Exit codes: the codes the guest library and the VMM give a run, in one
//! table.
//!
//! A guest's exit code is the app's own (0–255: the value `main` returned,
//! or `exit(code)`), and `tandem run` exits with it. A few codes are taken:
//! the guest library's (101–103, for a run that ends before or outside the
//! app's control), the VMM's (121–125, for a run the guest did not end
//! itself; chosen at the top of the range, like `timeout(1)` and container
//! runtimes) and the command line's (2, clap's usage error).
//!
//! [`TABLE`] lists every taken code with its name and meaning: the `tandem`
//! binary's help text is generated from it, and a test checks the README's
//! table against it.

/// Who gives a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The guest library (`tandem-guest`), through its exit hypercall or
    /// QEMU's `isa-debug-exit`.
    Guest,
    /// The VMM, for a run the guest did not end itself.
    Vmm,
    /// The command line parser of the `tandem` binary.
    CommandLine,
}

/// One taken exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitCodeInfo {
    /// The constant's name in this module.
    pub name: &'static str,
    /// The code.
    pub code: u8,
    /// What it means, as the README and the help text say it.
    pub meaning: &'static str,
    /// Who gives it.
    pub source: Source,
}

/// Defines each code's constant and [`TABLE`] from one list, so a code, its
/// name and its meaning are written once.
macro_rules! exit_codes {
    ($($name:ident = $code:literal, $source:ident, $meaning:literal;)*) => {
        $(
            #[doc = concat!("Exit code ", $code, ": ", $meaning, ".")]
            pub const $name: u8 = $code;
        )*

        /// Every taken exit code, guest library's first, then the VMM's and
        /// the command line's.
        pub const TABLE: &[ExitCodeInfo] = &[$(ExitCodeInfo {
            name: stringify!($name),
            code: $name,
            meaning: $meaning,
            source: Source::$source,
        }),*];
    };
}

exit_codes! {
    PANIC = 101, Guest, "the guest panicked";
    EXCEPTION = 102, Guest, "the guest took a CPU exception it could not handle";
    BAD_BOOT_INFO = 103, Guest,
        "the guest refused its boot-info block (bad magic, version or checksum)";
    CORRUPT_MEMORY = 121, Vmm,
        "a snapshot's memory chunk did not match its digest when the guest first touched it (`--verify lazy`)";
    CRASHED = 122, Vmm, "the guest crashed (triple fault or an unexpected VM exit)";
    PROTOCOL = 123, Vmm, "the guest broke the hypercall protocol";
    TIMEOUT = 124, Vmm, "timeout (`--timeout`)";
    VMM_ERROR = 125, Vmm, "VMM error: bad image, bad options, KVM failure";
    USAGE = 2, CommandLine, "command-line usage error";
}

/// The entry for `code`, if it is a taken one.
pub fn info(code: u8) -> Option<&'static ExitCodeInfo> {
    TABLE.iter().find(|e| e.code == code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_names_are_unique() {
        for (i, a) in TABLE.iter().enumerate() {
            for b in &TABLE[i + 1..] {
                assert_ne!(a.code, b.code, "{} and {}", a.name, b.name);
                assert_ne!(a.name, b.name);
            }
        }
    }

    #[test]
    fn each_source_keeps_to_its_range() {
        for e in TABLE {
            let range = match e.source {
                Source::Guest => 101..=103,
                Source::Vmm => 121..=125,
                Source::CommandLine => 2..=2,
            };
            assert!(range.contains(&e.code), "{} = {}", e.name, e.code);
        }
        assert_eq!(info(VMM_ERROR).map(|e| e.name), Some("VMM_ERROR"));
        assert_eq!(info(0), None);
    }
}
