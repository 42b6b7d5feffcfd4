//! The `tensor_fn!` compiler. This file is a shim: parsing, every stage and code generation live
//! in the other modules, on `proc_macro2` types, so they can be tested without a compiler.

mod check;
mod data_parallel;
mod diag;
mod emit;
mod expand;
mod flatten;
mod grad;
mod ir;
mod lower;
mod pattern;
mod primitives;
mod schedule;
mod simplify;
mod syntax;
mod text;

#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod grad_props;
#[cfg(test)]
mod testgen;
#[cfg(test)]
mod tests;

/// Compiles tensor math at Rust compile time. See the crate `tensor-fn` for the language.
#[proc_macro]
pub fn tensor_fn(input: proc_macro::TokenStream) -> proc_macro::TokenStream {
    expand::tensor_fn(input.into()).into()
}
