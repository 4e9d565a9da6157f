//! Exercises the heap: Vec, String and BTreeMap, many allocations and
//! frees, and one large block. `oom` asks for more than guest memory.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::collections::BTreeMap;
use tandem_guest::prelude::*;

tandem_guest::entry!(main);

fn main(env: &Env) -> u8 {
    if env.args().next() == Some("oom") {
        let heap = env.boot_info().heap.len as usize;
        println!(
            "allocating {} MiB from a {} MiB heap",
            (heap * 2) >> 20,
            heap >> 20
        );
        let v: Vec<u8> = vec![1; heap * 2];
        println!("allocated {} bytes?", v.len());
        return 1;
    }
    let start = Instant::now();
    // Many small allocations of varied sizes, freed in a scrambled order.
    let mut boxes: Vec<Vec<u64>> = Vec::new();
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in 0..20_000u64 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let len = (seed % 64) as usize + 1;
        boxes.push(vec![i; len]);
        if seed.is_multiple_of(3) && !boxes.is_empty() {
            let at = (seed as usize / 3) % boxes.len();
            let gone = boxes.swap_remove(at);
            assert!(gone.iter().all(|&x| x == gone[0]), "heap corrupted a block");
        }
    }
    for b in &boxes {
        assert!(b.iter().all(|&x| x == b[0]), "heap corrupted a block");
    }
    let live = boxes.len();
    drop(boxes);

    let mut map = BTreeMap::new();
    for i in 0..5_000u32 {
        map.insert(format!("key-{i:05}"), i * 3);
    }
    assert_eq!(map.get("key-04242"), Some(&12_726));
    let total: u64 = map.values().map(|&v| u64::from(v)).sum();

    let big_len = 16 << 20;
    let mut big = vec![0u8; big_len];
    for (i, b) in big.iter_mut().enumerate().step_by(4096) {
        *b = (i / 4096) as u8;
    }
    let sum: u64 = big.iter().map(|&b| u64::from(b)).sum();
    drop(big);

    let mut s = String::new();
    for w in ["heap", "ok"] {
        s.push_str(w);
        s.push(' ');
    }
    let (used, free) = tandem_guest::heap::usage();
    println!(
        "{}: {live} live blocks, map total {total}, big sum {sum}, {used} bytes used, {} MiB free, {} us",
        s.trim_end(),
        free >> 20,
        start.elapsed().as_micros()
    );
    0
}
