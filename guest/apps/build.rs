fn main() {
    // Every app links with the unikernel's linker script.
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tandem-guest/link.ld");
    println!("cargo:rerun-if-changed={}", script.display());
    println!("cargo:rustc-link-arg-bins=-T{}", script.display());
    println!("cargo:rustc-link-arg-bins=--no-pie");
}
