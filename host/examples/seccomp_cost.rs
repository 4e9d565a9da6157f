//! How long building and installing the seccomp filter takes (for the notes).
fn main() {
    let t = std::time::Instant::now();
    tandem::privileges::limit_open_files(256).unwrap();
    let lim = t.elapsed();
    let t = std::time::Instant::now();
    let p = tandem::seccomp::filter(tandem::seccomp::ThreadKind::Vcpu).unwrap();
    let built = t.elapsed();
    // A tiny filter first: is the cost per filter or per instruction?
    let tiny: seccompiler::BpfProgram = seccompiler::SeccompFilter::new(
        [(libc::SYS_getpid, vec![])].into_iter().collect(),
        seccompiler::SeccompAction::Allow,
        seccompiler::SeccompAction::Log,
        seccompiler::TargetArch::x86_64,
    )
    .unwrap()
    .try_into()
    .unwrap();
    let t = std::time::Instant::now();
    seccompiler::apply_filter(&tiny).unwrap();
    println!(
        "tiny filter ({} instructions): {:?}",
        tiny.len(),
        t.elapsed()
    );
    for kind in [
        tandem::seccomp::ThreadKind::Vcpu,
        tandem::seccomp::ThreadKind::Io,
        tandem::seccomp::ThreadKind::Control,
    ] {
        let len = tandem::seccomp::filter(kind).unwrap().len();
        println!("{kind:?} filter: {len} BPF instructions");
    }
    // The vCPU filter has no clone: threads are started by the I/O thread.
    tandem::io_thread::start().unwrap();
    let t = std::time::Instant::now();
    seccompiler::apply_filter(&p).unwrap();
    let applied = t.elapsed();
    let t = std::time::Instant::now();
    let handle = tandem::io_thread::spawn("control", move || {
        let t = std::time::Instant::now();
        tandem::seccomp::install(tandem::seccomp::ThreadKind::Control).unwrap();
        t.elapsed()
    })
    .unwrap();
    let second = handle.join().unwrap();
    let spawn = t.elapsed();
    println!(
        "rlimit {lim:?} build {built:?} apply {applied:?} ({} BPF instructions); a second (control) filter on a new thread {second:?} (spawn and join {spawn:?})",
        p.len()
    );
}
