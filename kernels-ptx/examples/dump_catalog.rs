//! Prints the catalog as one PTX module (for reading, or for feeding to ptxas by hand):
//!   cargo run -p tensor-fn-kernels --example dump_catalog > all.ptx
use tensor_fn_kernels::catalog;

fn main() {
    for (name, p) in catalog::programs() {
        eprintln!("{name}:\n{}", p.describe());
    }
    print!("{}", catalog::module_ptx());
}
