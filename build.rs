//! Hands the shipped build's extra linker arguments to the linker of the binary:
//! `CONNECTED_REGISTRY_LINK_ARGS` (whitespace-separated; `image/build.sh` sets it to lay out the
//! start-up code together, `--symbol-ordering-file`, and to strip the symbols). Through
//! RUSTFLAGS they would change every crate's symbol names (cargo hashes RUSTFLAGS and the
//! profile's `strip` into them), so the ordering file, made from a build with symbols, would
//! name functions the stripped build does not have. Also relinks when a file named there
//! changes, which cargo does not track by itself.

fn main() {
    println!("cargo::rerun-if-env-changed=CONNECTED_REGISTRY_LINK_ARGS");
    let Ok(args) = std::env::var("CONNECTED_REGISTRY_LINK_ARGS") else {
        return;
    };
    for arg in args.split_whitespace() {
        println!("cargo::rustc-link-arg-bins={arg}");
        if let Some((_, file)) = arg.split_once("--symbol-ordering-file=") {
            println!("cargo::rerun-if-changed={file}");
        }
    }
}
