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
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        #[doc(hidden)]
        #[unsafe(no_mangle)]
        pub extern "Rust" fn __tandem_app_main(env: &$crate::Env) -> u8 {
            $crate::Termination::exit_code($main(env))
        }
    };
}
