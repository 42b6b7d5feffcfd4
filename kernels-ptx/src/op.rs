//! The elementwise ops, one row each: the op enums that the compiler's graph, the kernel IR
//! and the PTX lowering all use, with each op's name, its scalar definition (in
//! [`crate::scalar`]), its cost in the CPU code and where it is defined.
//!
//! These live in the kernel crate because it is the one crate that the macro, the runtime and
//! the facade all see; nothing here knows about PTX.

use std::fmt;

use crate::scalar::{self, Float};

/// A float constant, compared and hashed by its bits (so the compiler's hash-consing can key
/// on it): `-0.0` and `+0.0` are different constants, and each NaN bit pattern is its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Num(pub u64);

impl Num {
    pub fn new(v: f64) -> Num {
        Num(v.to_bits())
    }

    pub fn get(self) -> f64 {
        f64::from_bits(self.0)
    }
}

/// Where an op is defined and smooth: what random programs feed it and where gradient checks
/// sample it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Domain {
    /// Every real number.
    All,
    /// Every real number, but it overflows for moderately large ones: random programs feed it
    /// bounded values.
    Bounded,
    /// x > 0 (x >= 0 for the square root, with an infinite slope at 0).
    Positive,
    /// x > -1.
    AboveMinusOne,
    /// Every real number, with a kink at 0 (the derivative jumps there).
    KinkAtZero,
    /// Piecewise constant: its derivative is zero wherever it exists.
    Piecewise,
}

macro_rules! unary_ops {
    ($(
        $(#[$doc:meta])*
        $variant:ident = $name:literal, $f:ident, cost $cost:literal, $domain:ident;
    )*) => {
        /// One-argument elementwise ops.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Unary {
            $($(#[$doc])* $variant,)*
            /// x^k for a constant k.
            Pow(Num),
        }

        impl Unary {
            /// Every op without a parameter, in table order.
            pub const PLAIN: &'static [Unary] = &[$(Unary::$variant),*];

            /// The name users write and the compiler prints (`pow` for every power).
            pub fn name(self) -> &'static str {
                match self {
                    $(Unary::$variant => $name,)*
                    Unary::Pow(_) => "pow",
                }
            }

            /// The op of a name (not `pow`, which needs its exponent).
            pub fn from_name(name: &str) -> Option<Unary> {
                match name {
                    $($name => Some(Unary::$variant),)*
                    _ => None,
                }
            }

            /// The function of [`crate::scalar`] that defines it, which generated CPU code
            /// calls (a power calls the case for its exponent: [`Unary::pow_call`]).
            pub fn scalar_fn(self) -> &'static str {
                match self {
                    $(Unary::$variant => stringify!($f),)*
                    Unary::Pow(_) => "pow",
                }
            }

            /// Its value at `x`: the op's one definition.
            #[inline(always)]
            pub fn eval<T: Float>(self, x: T) -> T {
                match self {
                    $(Unary::$variant => scalar::$f(x),)*
                    Unary::Pow(k) => scalar::pow(x, k.get()),
                }
            }

            /// Cost per element in the CPU code, in units of an add (measured single-threaded:
            /// a load costs about 2, a division 4, `exp` or `log` 20, `sigmoid` 60, a libm
            /// call such as `tanh` 300). It decides when a loop is worth splitting across
            /// threads.
            pub fn cpu_cost(self) -> usize {
                match self {
                    $(Unary::$variant => $cost,)*
                    // A square root or a few multiplies; any other power is a libm call.
                    Unary::Pow(k) => match PowCall::of(k.get()) {
                        PowCall::Sqrt | PowCall::Integer(_) => 4,
                        PowCall::Float(_) => 300,
                    },
                }
            }

            pub fn domain(self) -> Domain {
                match self {
                    $(Unary::$variant => Domain::$domain,)*
                    Unary::Pow(k) => {
                        let k = k.get();
                        if k.fract() == 0.0 && k >= 0.0 {
                            Domain::All
                        } else {
                            Domain::Positive
                        }
                    }
                }
            }
        }
    };
}

unary_ops! {
    Neg = "neg", neg, cost 1, All;
    Exp = "exp", exp, cost 20, Bounded;
    Log = "log", log, cost 20, Positive;
    Log1p = "log1p", log1p, cost 20, AboveMinusOne;
    Sqrt = "sqrt", sqrt, cost 4, Positive;
    Tanh = "tanh", tanh, cost 300, All;
    /// The error function.
    Erf = "erf", erf, cost 60, All;
    Sigmoid = "sigmoid", sigmoid, cost 60, All;
    Softplus = "softplus", softplus, cost 60, All;
    /// x where x > 0 (or NaN), else 0.
    Relu = "relu", relu, cost 1, KinkAtZero;
    Abs = "abs", abs, cost 1, KinkAtZero;
    /// -1, 0 or 1; keeps the sign of zero and NaN (the derivative of `abs`).
    Sign = "sign", sign, cost 1, Piecewise;
    /// 1 where x > 0, else 0 (the derivative of `relu`).
    Step = "step", step, cost 1, Piecewise;
}

/// How x^k is computed for a constant k ([`scalar::pow`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PowCall {
    /// k = 1/2: the square root.
    Sqrt,
    /// An integer k with |k| <= 64: repeated squaring.
    Integer(i32),
    /// Any other k: libm's `pow`.
    Float(f64),
}

impl PowCall {
    pub fn of(k: f64) -> PowCall {
        if k == 0.5 {
            PowCall::Sqrt
        } else if scalar::is_small_integer(k) {
            PowCall::Integer(k as i32)
        } else {
            PowCall::Float(k)
        }
    }
}

impl Unary {
    /// For a power, how it is computed; `None` for other ops.
    pub fn pow_call(self) -> Option<PowCall> {
        match self {
            Unary::Pow(k) => Some(PowCall::of(k.get())),
            _ => None,
        }
    }
}

macro_rules! binary_ops {
    ($(
        $(#[$doc:meta])*
        $variant:ident = $name:literal, $f:ident, cost $cost:literal;
    )*) => {
        /// Two-argument elementwise ops (numpy broadcasting applies before them).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Binary {
            $($(#[$doc])* $variant,)*
        }

        impl Binary {
            pub const ALL: &'static [Binary] = &[$(Binary::$variant),*];

            pub fn name(self) -> &'static str {
                match self {
                    $(Binary::$variant => $name,)*
                }
            }

            pub fn from_name(name: &str) -> Option<Binary> {
                match name {
                    $($name => Some(Binary::$variant),)*
                    _ => None,
                }
            }

            /// The function of [`crate::scalar`] that defines it.
            pub fn scalar_fn(self) -> &'static str {
                match self {
                    $(Binary::$variant => stringify!($f),)*
                }
            }

            #[inline(always)]
            pub fn eval<T: Float>(self, a: T, b: T) -> T {
                match self {
                    $(Binary::$variant => scalar::$f(a, b),)*
                }
            }

            /// As [`Unary::cpu_cost`].
            pub fn cpu_cost(self) -> usize {
                match self {
                    $(Binary::$variant => $cost,)*
                }
            }
        }
    };
}

binary_ops! {
    Add = "add", add, cost 1;
    Mul = "mul", mul, cost 1;
    Div = "div", div, cost 4;
    /// NaN-propagating maximum (numpy's `maximum`).
    Maximum = "maximum", maximum, cost 1;
    Minimum = "minimum", minimum, cost 1;
    /// 1 where a >= b, else 0 (the comparisons give 1 or 0, and 0 whenever NaN is involved,
    /// but for `ne`).
    Ge = "ge", ge, cost 1;
    /// 1 where a == b, else 0.
    Eq = "eq", eq, cost 1;
    Gt = "gt", gt, cost 1;
    Lt = "lt", lt, cost 1;
    Le = "le", le, cost 1;
    /// 1 where a != b (or either is NaN), else 0.
    Ne = "ne", ne, cost 1;
}

impl fmt::Display for Unary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unary::Pow(k) => write!(f, "pow[{}]", k.get()),
            u => f.write_str(u.name()),
        }
    }
}

impl fmt::Display for Binary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the reductions compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reduce {
    Sum,
    /// The sum times 1 / count.
    Mean,
    Max,
}

/// How a builtin function is lowered into the compiler's graph; this also decides its shape
/// rule ([`Lowering::shape_rule`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Lowering {
    /// An elementwise op of one tensor.
    Unary(Unary),
    /// An elementwise op of two tensors, broadcast against each other.
    Binary(Binary),
    /// `pow(x, k)`: `Unary::Pow(k)`, k a numeric literal.
    Pow,
    /// numpy's `dot` for ranks 1 and 2.
    Dot,
    /// A reduction over everything or `axis = k` (`keepdims = true` keeps the folded axis as a
    /// dim of 1).
    Reduce(Reduce),
    /// `softmax(x)` (`log`: `log_softmax(x)`) over the last axis or `axis = k`.
    Softmax { log: bool },
    /// `argmax(x, axis = k)`: integer indices.
    ArgMax,
    /// A comparison of numbers or of integers (`eq`, `neq`, ...): 1 or 0 as a float, without
    /// a gradient.
    Compare(Binary),
    /// `where(c, a, b)`: `a` where `c` is not 0, else `b`.
    Where,
    /// `onehot(y, k)`: `[n, k]` floats from `n` integer labels.
    OneHot,
    /// `arange(n)`: the row numbers, only as the first index of `x[arange(n), y]`.
    Arange,
    /// A random draw of a given shape (`shape(x)` or `[n, 784]`) with scalar parameters, inside
    /// a model method: `binomial(size, p)`, `uniform(size, lo, hi)`, `normal(size, mean, std)`.
    Random(crate::ir::RandKind),
    /// `grad(cost, x)`.
    Grad,
    /// `reshape(x, [n, 1, 28, 28])`: the same elements in another shape of the same size.
    Reshape,
    /// `flatten(x, k)`: the first `k - 1` axes kept, the rest merged into one (Theano's
    /// `flatten(ndim = k)`).
    Flatten,
    /// `conv2d(x, w)`: images `[n, c, h, w]` by filters `[k, c, fh, fw]`, valid, stride 1;
    /// filters flipped (a true convolution) unless `filter_flip = false`.
    Conv2d,
    /// `max_pool(x, [ph, pw])`: non-overlapping windows over the last two axes, the border that
    /// fills no window ignored.
    MaxPool,
    /// Another expression of its arguments, in the compiler's rewrite-pattern language (`?x`
    /// the first argument, `?y` the second): no op, shape rule or derivative of its own. The
    /// domain is that of the expression (see [`Unary::domain`]).
    Composite(&'static str, Domain),
}

/// How a builtin's result type follows from its arguments'.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShapeRule {
    /// The argument's type.
    Same,
    /// numpy broadcasting of the two arguments.
    Broadcast,
    /// numpy's `dot`.
    Dot,
    /// The argument's type without the folded axis (a scalar for all of them).
    Reduce,
    /// The type of the variable differentiated by.
    Grad,
    /// That of the expression it stands for.
    Composite,
    /// `[n, k]` from `n` labels and `k` classes.
    OneHot,
    /// Only inside an index.
    Index,
    /// The shape its first argument gives, in the function's float type.
    Given,
    /// The shape its second argument gives, of the same size as the first's.
    Reshape,
    /// `[n, k, h - fh + 1, w - fw + 1]` from images `[n, c, h, w]` and filters `[k, c, fh, fw]`.
    Conv,
    /// `[n, c, h / ph, w / pw]`.
    Pool,
}

impl Lowering {
    pub fn shape_rule(self) -> ShapeRule {
        match self {
            Lowering::Unary(_) | Lowering::Pow | Lowering::Softmax { .. } => ShapeRule::Same,
            Lowering::Binary(_) | Lowering::Compare(_) | Lowering::Where => ShapeRule::Broadcast,
            Lowering::Dot => ShapeRule::Dot,
            Lowering::Reduce(_) | Lowering::ArgMax => ShapeRule::Reduce,
            Lowering::Grad => ShapeRule::Grad,
            Lowering::Composite(..) => ShapeRule::Composite,
            Lowering::OneHot => ShapeRule::OneHot,
            Lowering::Arange => ShapeRule::Index,
            Lowering::Random(_) => ShapeRule::Given,
            Lowering::Reshape | Lowering::Flatten => ShapeRule::Reshape,
            Lowering::Conv2d => ShapeRule::Conv,
            Lowering::MaxPool => ShapeRule::Pool,
        }
    }
}

/// A function of the language: one row per name.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Builtin {
    pub name: &'static str,
    /// Positional arguments.
    pub args: usize,
    /// Named arguments it accepts (`axis = k`).
    pub keywords: &'static [&'static str],
    pub lowering: Lowering,
}

const fn unary(name: &'static str, u: Unary) -> Builtin {
    Builtin {
        name,
        args: 1,
        keywords: &[],
        lowering: Lowering::Unary(u),
    }
}

const fn reduce(name: &'static str, r: Reduce) -> Builtin {
    Builtin {
        name,
        args: 1,
        keywords: &["axis", "keepdims"],
        lowering: Lowering::Reduce(r),
    }
}

const fn compare(name: &'static str, b: Binary) -> Builtin {
    Builtin {
        name,
        args: 2,
        keywords: &[],
        lowering: Lowering::Compare(b),
    }
}

/// The language's functions, in the order users see them listed.
pub const BUILTINS: &[Builtin] = &[
    unary("exp", Unary::Exp),
    unary("log", Unary::Log),
    unary("log1p", Unary::Log1p),
    unary("sqrt", Unary::Sqrt),
    unary("tanh", Unary::Tanh),
    unary("sigmoid", Unary::Sigmoid),
    unary("softplus", Unary::Softplus),
    unary("relu", Unary::Relu),
    unary("abs", Unary::Abs),
    unary("erf", Unary::Erf),
    // gelu(x) = x/2 (1 + erf(x / sqrt 2)), the Gaussian error linear unit.
    Builtin {
        name: "gelu",
        args: 1,
        keywords: &[],
        lowering: Lowering::Composite(
            "(mul (mul 0.5 ?x) (add 1 (erf (mul 0.7071067811865476 ?x))))",
            Domain::All,
        ),
    },
    Builtin {
        name: "pow",
        args: 2,
        keywords: &[],
        lowering: Lowering::Pow,
    },
    Builtin {
        name: "maximum",
        args: 2,
        keywords: &[],
        lowering: Lowering::Binary(Binary::Maximum),
    },
    Builtin {
        name: "minimum",
        args: 2,
        keywords: &[],
        lowering: Lowering::Binary(Binary::Minimum),
    },
    Builtin {
        name: "dot",
        args: 2,
        keywords: &[],
        lowering: Lowering::Dot,
    },
    reduce("sum", Reduce::Sum),
    reduce("mean", Reduce::Mean),
    reduce("max", Reduce::Max),
    Builtin {
        name: "softmax",
        args: 1,
        keywords: &["axis"],
        lowering: Lowering::Softmax { log: false },
    },
    Builtin {
        name: "log_softmax",
        args: 1,
        keywords: &["axis"],
        lowering: Lowering::Softmax { log: true },
    },
    Builtin {
        name: "argmax",
        args: 1,
        keywords: &["axis"],
        lowering: Lowering::ArgMax,
    },
    compare("eq", Binary::Eq),
    compare("neq", Binary::Ne),
    compare("lt", Binary::Lt),
    compare("le", Binary::Le),
    compare("gt", Binary::Gt),
    compare("ge", Binary::Ge),
    Builtin {
        name: "where",
        args: 3,
        keywords: &[],
        lowering: Lowering::Where,
    },
    Builtin {
        name: "onehot",
        args: 2,
        keywords: &[],
        lowering: Lowering::OneHot,
    },
    Builtin {
        name: "arange",
        args: 1,
        keywords: &[],
        lowering: Lowering::Arange,
    },
    Builtin {
        name: "binomial",
        args: 2,
        keywords: &[],
        lowering: Lowering::Random(crate::ir::RandKind::Binomial),
    },
    Builtin {
        name: "uniform",
        args: 3,
        keywords: &[],
        lowering: Lowering::Random(crate::ir::RandKind::Uniform),
    },
    Builtin {
        name: "normal",
        args: 3,
        keywords: &[],
        lowering: Lowering::Random(crate::ir::RandKind::Normal),
    },
    Builtin {
        name: "grad",
        args: 2,
        keywords: &[],
        lowering: Lowering::Grad,
    },
    Builtin {
        name: "reshape",
        args: 2,
        keywords: &[],
        lowering: Lowering::Reshape,
    },
    Builtin {
        name: "flatten",
        args: 2,
        keywords: &[],
        lowering: Lowering::Flatten,
    },
    Builtin {
        name: "conv2d",
        args: 2,
        keywords: &["filter_flip"],
        lowering: Lowering::Conv2d,
    },
    Builtin {
        name: "max_pool",
        args: 2,
        keywords: &[],
        lowering: Lowering::MaxPool,
    },
];

impl Builtin {
    /// For a function of one tensor, where it is defined (what random programs feed it).
    pub fn domain(&self) -> Option<Domain> {
        match self.lowering {
            Lowering::Unary(u) => Some(u.domain()),
            Lowering::Composite(_, d) if self.args == 1 => Some(d),
            _ => None,
        }
    }
}

/// The builtin function of a name.
pub fn builtin(name: &str) -> Option<&'static Builtin> {
    BUILTINS.iter().find(|b| b.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_ops_round_trip() {
        for (i, b) in BUILTINS.iter().enumerate() {
            assert!(
                BUILTINS[..i].iter().all(|o| o.name != b.name),
                "{} twice",
                b.name
            );
        }
        for &u in Unary::PLAIN {
            assert_eq!(Unary::from_name(u.name()), Some(u));
        }
        for &b in Binary::ALL {
            assert_eq!(Binary::from_name(b.name()), Some(b));
        }
        assert_eq!(Unary::Pow(Num::new(2.0)).to_string(), "pow[2]");
    }
}
