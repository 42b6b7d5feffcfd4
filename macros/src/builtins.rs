//! The names of the built-in functions. The parser reads them for its hints (`x.exp` is a call
//! written as a member), the lowering to resolve calls and to suggest a name for a typo.

/// Every built-in function, in the order the "unknown function" hint lists them.
pub const ALL_FUNCS: &[&str] = &[
    "exp", "log", "log1p", "sqrt", "tanh", "sigmoid", "softplus", "relu", "abs", "pow", "maximum",
    "minimum", "dot", "sum", "mean", "max", "grad",
];
