//! tensor-fn: Theano-style tensor math compiled at Rust compile time.
