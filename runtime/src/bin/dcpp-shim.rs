//! The per-container monitor / built-in executor as a small standalone binary (see
//! `dcpp_runtime::container::shim`). `dcpp __shim` runs the same code.

fn main() {
    dcpp_runtime::container::shim::main(std::env::args_os().skip(1).collect())
}
