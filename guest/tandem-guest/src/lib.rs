//! The Tandem unikernel: a `no_std` library an app links against.
//!
//! On the Tandem PV path the VMM has already built page tables, GDT, TSS,
//! IDT, stacks and the boot-info block, and enters [`_start`](entry) at CPL3
//! with the boot-info address in `rdi`. The library checks the block, sets up
//! the heap, and calls the app's `main` without executing a single CPL0
//! instruction. The CPL0 code it contains handles CPU exceptions only.
//!
//! ```ignore
//! #![no_std]
//! #![no_main]
//! use tandem_guest::prelude::*;
//!
//! tandem_guest::entry!(main);
//!
//! fn main(env: &Env) -> u8 {
//!     println!("hello, {}", env.cmdline());
//!     0
//! }
//! ```
#![no_std]

extern crate alloc;

mod boot;
mod entry;
mod exceptions;
pub mod heap;
mod pages;
mod panic;
mod tsc;
mod virtio;

pub mod blk;
pub mod console;
pub mod env;
pub mod hypercall;
pub mod idle;
pub mod net;
pub mod platform;
pub mod stdin;
pub mod time;
pub mod trace;

pub use env::{exit, ready, Env, Termination};
pub use idle::{idle, Wake};
pub use tandem_abi as abi;

/// What most apps need: `print!`, `println!`, `Env`, `ready`, `exit`, and `alloc`'s collections.
pub mod prelude {
    pub use crate::env::{exit, ready, Env};
    pub use crate::time::Instant;
    pub use crate::{print, println};
    pub use alloc::{
        borrow::ToOwned, boxed::Box, format, string::String, string::ToString, vec, vec::Vec,
    };
}

/// Declares the app's entry point: a function taking `&Env` and returning
/// `()`, `u8` (the exit code) or `Result<(), E: Display>`.
///
/// `entry!(main, devices = [net])` also declares the devices the app needs,
/// as [`devices!`] does.
#[macro_export]
macro_rules! entry {
    ($main:path, devices = [$($dev:ident),* $(,)?]) => {
        $crate::entry!($main);
        $crate::devices!($($dev),*);
    };
    ($main:path) => {
        #[doc(hidden)]
        #[unsafe(no_mangle)]
        pub extern "Rust" fn __tandem_app_main(env: &$crate::Env) -> u8 {
            $crate::Termination::exit_code($main(env))
        }
    };
}

/// Declares the devices the app needs: `devices!(net)`. It emits the image's
/// device manifest, a second ELF note (`tandem_abi::note::NT_TANDEM_DEVICES`),
/// and the Tandem VMM refuses to run the image without those devices, or
/// with one it does not declare. An app without it needs no devices. Known
/// names: `net` (the virtio-net device, [`net`]), `block` (virtio-blk
/// disks, [`blk`]). Once per image: a second
/// use is a duplicate-symbol link error.
#[macro_export]
macro_rules! devices {
    ($($dev:ident),* $(,)?) => {
        ::core::arch::global_asm!(
            ".pushsection .note.tandem, \"a\", @note",
            ".balign 4",
            ".globl __tandem_device_manifest",
            "__tandem_device_manifest:",
            ".long 7",
            ".long {desc_size}",
            ".long {note_type}",
            ".asciz \"Tandem\"",
            ".balign 4",
            ".long {version}",
            ".long {bits}",
            ".popsection",
            desc_size = const $crate::abi::note::DEVICES_DESC_SIZE,
            note_type = const $crate::abi::note::NT_TANDEM_DEVICES,
            version = const $crate::abi::note::DEVICES_VERSION,
            bits = const $crate::abi::note::DeviceSet::of(&[$($crate::__device_kind!($dev)),*]).bits(),
        );
    };
}

/// The [`DeviceKind`](tandem_abi::note::DeviceKind) a name in [`devices!`] stands for.
#[doc(hidden)]
#[macro_export]
macro_rules! __device_kind {
    (net) => {
        $crate::abi::note::DeviceKind::Net
    };
    (block) => {
        $crate::abi::note::DeviceKind::Block
    };
    ($other:ident) => {
        ::core::compile_error!(::core::concat!(
            "devices!: unknown device `",
            ::core::stringify!($other),
            "` (known: net, block)"
        ))
    };
}
