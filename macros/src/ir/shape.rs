//! The shape rule of every op (`infer`), numpy broadcasting, and the type errors users see
//! for elementwise ops and `dot`, with hints that quote the fix (``did you mean `w.T`?``).

use super::graph::{op_name, Axis, Binary, Dim, Graph, Op, Type, TypeError};
use crate::syntax::DType;

/// Numpy broadcasting of two shapes (aligned on the right; a static 1 stretches).
pub fn broadcast_shapes(a: &[Dim], b: &[Dim]) -> Option<Vec<Dim>> {
    let n = a.len().max(b.len());
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let da = (i + a.len()).checked_sub(n).map(|k| a[k]);
        let db = (i + b.len()).checked_sub(n).map(|k| b[k]);
        out.push(match (da, db) {
            (Some(x), None) | (None, Some(x)) => x,
            (Some(x), Some(y)) if x == y => x,
            (Some(Dim::Static(1)), Some(y)) => y,
            (Some(x), Some(Dim::Static(1))) => x,
            _ => return None,
        });
    }
    Some(out)
}

/// The product of some dims, if it is a dim: all literals, or one name among ones.
pub fn dim_product(dims: &[Dim]) -> Option<Dim> {
    let syms: Vec<Dim> = dims
        .iter()
        .copied()
        .filter(|d| matches!(d, Dim::Sym(_)))
        .collect();
    let p: u64 = dims
        .iter()
        .map(|d| match d {
            Dim::Static(k) => *k,
            Dim::Sym(_) => 1,
        })
        .product();
    match syms.as_slice() {
        [] => Some(Dim::Static(p)),
        [s] if p == 1 => Some(*s),
        _ => None,
    }
}

/// The user-facing name of an op in error messages (`+` rather than `add`).
fn op_symbol(op: Op) -> &'static str {
    match op {
        Op::Binary(Binary::Add) => "+",
        Op::Binary(Binary::Mul) => "*",
        Op::Binary(Binary::Div) => "/",
        other => op_name(other),
    }
}

/// The error for arithmetic (`what`) on an integer tensor of type `t`.
pub fn int_error(g: &Graph, what: &str, t: &Type) -> TypeError {
    TypeError {
        message: format!(
            "`{what}` of an integer tensor: {} holds labels or indices, not numbers",
            g.type_str(t)
        ),
        help: Some(
            "integers can be compared (`eq(y, k)`), one-hot encoded (`onehot(y, k)`) or used to \
             pick one entry per row (`x[arange(n), y]`)"
                .into(),
        ),
    }
}

/// Refuses integer arguments of arithmetic `what`.
fn numbers(g: &Graph, what: &str, args: &[&Type]) -> Result<(), TypeError> {
    match args.iter().find(|t| t.int.is_some()) {
        Some(t) => Err(int_error(g, what, t)),
        None => Ok(()),
    }
}

/// The shape rule of every op: the type of `op` applied to arguments of types `args`.
pub fn infer(g: &Graph, op: Op, args: &[&Type]) -> Result<Type, TypeError> {
    let same_dtype = |what: &str| -> Result<DType, TypeError> {
        let d = args[0].dtype;
        if let Some(other) = args.iter().find(|t| t.dtype != d) {
            return Err(dtype_error(g, what, args[0], other));
        }
        Ok(d)
    };
    let arity = |n: usize| -> Result<(), TypeError> {
        if args.len() == n {
            Ok(())
        } else {
            Err(TypeError::new(format!(
                "internal: `{}` takes {n} arguments, got {}",
                op_name(op),
                args.len()
            )))
        }
    };
    match op {
        Op::Var(_)
        | Op::Const(_)
        | Op::DimSize(_)
        | Op::Broadcast
        | Op::Grad(_)
        | Op::Reshape
        | Op::Call(_)
        | Op::Random(..) => Err(TypeError::new(format!(
            "internal: `{}` has no shape rule",
            op_name(op)
        ))),
        Op::Unary(_) => {
            arity(1)?;
            numbers(g, op_symbol(op), args)?;
            Ok(args[0].clone())
        }
        Op::Binary(_) => {
            arity(2)?;
            binary_type(g, op_symbol(op), args[0], args[1], None)
        }
        Op::Compare(_) => {
            arity(2)?;
            compare_type(g, op_symbol(op), args[0], args[1])
        }
        Op::OneHot(k) => {
            arity(1)?;
            let y = args[0];
            if y.int.is_none() || y.rank() != 1 {
                return Err(TypeError {
                    message: format!(
                        "`onehot` takes a vector of integer labels, found {}",
                        g.type_str(y)
                    ),
                    help: Some("declare the labels as `i64[n]` (or `i32[n]`)".into()),
                });
            }
            Ok(Type::float(y.dtype, vec![y.shape[0], k]))
        }
        Op::ArgMax(axis) => {
            arity(1)?;
            numbers(g, "argmax", args)?;
            matrices(g, "argmax", args[0])?;
            let mut t = reduced(g, args[0], axis)?;
            t.int = Some(crate::ir::IntTy::I64);
            Ok(t)
        }
        Op::Where => {
            arity(3)?;
            numbers(g, "where", args)?;
            let ab = binary_type(g, "where", args[1], args[2], None)?;
            let t = binary_type(g, "where", args[0], &ab, None)?;
            Ok(t)
        }
        Op::Softmax(axis) | Op::LogSoftmax(axis) => {
            arity(1)?;
            numbers(g, op_symbol(op), args)?;
            matrices(g, op_symbol(op), args[0])?;
            if axis as usize >= args[0].rank() {
                return Err(TypeError::new(format!(
                    "internal: softmax over axis {axis} of {}",
                    g.type_str(args[0])
                )));
            }
            Ok(args[0].clone())
        }
        Op::Transpose => {
            arity(1)?;
            if args[0].rank() > 2 {
                return Err(TypeError::new(format!(
                    "`.T` transposes matrices, found {}",
                    g.type_str(args[0])
                )));
            }
            let mut t = args[0].clone();
            t.shape.reverse();
            Ok(t)
        }
        Op::ExpandDims(k) => {
            arity(1)?;
            let mut t = args[0].clone();
            if k as usize > t.shape.len() || t.shape.len() >= 4 {
                return Err(TypeError::new("internal: expand_dims out of range".into()));
            }
            t.shape.insert(k as usize, Dim::Static(1));
            Ok(t)
        }
        Op::Outer => {
            arity(2)?;
            let dtype = same_dtype("outer")?;
            numbers(g, "outer", args)?;
            if args[0].rank() != 1 || args[1].rank() != 1 {
                return Err(TypeError::new("internal: outer takes two vectors".into()));
            }
            Ok(Type::float(dtype, vec![args[0].shape[0], args[1].shape[0]]))
        }
        Op::Dot => {
            arity(2)?;
            dot_type(g, args[0], args[1], None)
        }
        Op::Sum(axis) | Op::Max(axis) => {
            arity(1)?;
            numbers(g, op_symbol(op), args)?;
            reduced(g, args[0], axis)
        }
        Op::Conv2d { .. } => {
            arity(2)?;
            conv_type(g, args[0], args[1])
        }
        Op::ConvGradInput { .. } => {
            arity(2)?;
            let (gy, w) = (args[0], args[1]);
            let [n, _, oh, ow] = dims4(gy)?;
            let [_, c, fh, fw] = dims4(w)?;
            let (oh, ow, fh, fw) = (stat(oh)?, stat(ow)?, stat(fh)?, stat(fw)?);
            Ok(Type::float(
                gy.dtype,
                vec![n, c, Dim::Static(oh + fh - 1), Dim::Static(ow + fw - 1)],
            ))
        }
        Op::ConvGradFilter { .. } => {
            arity(2)?;
            let (x, gy) = (args[0], args[1]);
            let [_, c, h, w] = dims4(x)?;
            let [_, k, oh, ow] = dims4(gy)?;
            let (h, w, oh, ow) = (stat(h)?, stat(w)?, stat(oh)?, stat(ow)?);
            Ok(Type::float(
                x.dtype,
                vec![k, c, Dim::Static(h + 1 - oh), Dim::Static(w + 1 - ow)],
            ))
        }
        Op::MaxPool(ph, pw) => {
            arity(1)?;
            pool_type(g, args[0], (ph, pw))
        }
        Op::MaxPoolGrad(..) => {
            arity(2)?;
            Ok(args[0].clone())
        }
    }
}

/// Refuses images where `what` takes vectors or matrices.
fn matrices(g: &Graph, what: &str, t: &Type) -> Result<(), TypeError> {
    if t.rank() <= 2 {
        return Ok(());
    }
    Err(TypeError {
        message: format!(
            "`{what}` takes vectors or matrices, found {}",
            g.type_str(t)
        ),
        help: Some("flatten the images first, as in `flatten(h, 2)`".into()),
    })
}

/// The four dims of a rank-4 type.
fn dims4(t: &Type) -> Result<[Dim; 4], TypeError> {
    <[Dim; 4]>::try_from(t.shape.as_slice())
        .map_err(|_| TypeError::new("internal: a rank-4 op of another rank".into()))
}

/// A dim that must be known at compile time.
fn stat(d: Dim) -> Result<u64, TypeError> {
    match d {
        Dim::Static(k) => Ok(k),
        Dim::Sym(_) => Err(TypeError::new("internal: an image dim is a name".into())),
    }
}

/// What `what` takes: a batch of images, `[n, c, h, w]`.
fn images(
    g: &Graph,
    what: &str,
    role: &str,
    t: &Type,
    example: &str,
) -> Result<[Dim; 4], TypeError> {
    if t.int.is_some() {
        return Err(int_error(g, what, t));
    }
    if t.rank() != 4 {
        return Err(TypeError {
            message: format!("`{what}` takes {role} of rank 4, found {}", g.type_str(t)),
            help: Some(format!("reshape it first, as in `{example}`")),
        });
    }
    dims4(t)
}

/// `conv2d(x, w)`: images `[n, c, h, w]` and filters `[k, c, fh, fw]` give
/// `[n, k, h - fh + 1, w - fw + 1]` (valid, stride 1).
fn conv_type(g: &Graph, x: &Type, f: &Type) -> Result<Type, TypeError> {
    let [n, c, h, w] = images(g, "conv2d", "images", x, "reshape(x, [n, 1, 28, 28])")?;
    let [k, fc, fh, fw] = images(g, "conv2d", "filters", f, "w: f32[20, 1, 5, 5]")?;
    if c != fc {
        return Err(TypeError {
            message: format!(
                "`conv2d` channels differ: the images {} have {} channels, the filters {} expect {}",
                g.type_str(x),
                g.dim_str(c),
                g.type_str(f),
                g.dim_str(fc)
            ),
            help: Some(
                "images are `[n, channels, rows, cols]` and filters `[filters, channels, rows, cols]`"
                    .into(),
            ),
        });
    }
    let (h, w, fh, fw) = (stat(h)?, stat(w)?, stat(fh)?, stat(fw)?);
    if fh > h || fw > w {
        return Err(TypeError::new(format!(
            "`conv2d` filters of {fh}x{fw} do not fit in images of {h}x{w} (valid convolution)"
        )));
    }
    Ok(Type::float(
        x.dtype,
        vec![n, k, Dim::Static(h + 1 - fh), Dim::Static(w + 1 - fw)],
    ))
}

/// `max_pool(x, [ph, pw])`: `[n, c, h / ph, w / pw]`, the border that fills no window dropped.
fn pool_type(g: &Graph, x: &Type, (ph, pw): (u8, u8)) -> Result<Type, TypeError> {
    let [n, c, h, w] = images(g, "max_pool", "images", x, "reshape(x, [n, 1, 28, 28])")?;
    let (h, w) = (stat(h)?, stat(w)?);
    let (ph, pw) = (u64::from(ph), u64::from(pw));
    if ph > h || pw > w {
        return Err(TypeError::new(format!(
            "`max_pool` windows of {ph}x{pw} do not fit in images of {h}x{w}"
        )));
    }
    Ok(Type::float(
        x.dtype,
        vec![n, c, Dim::Static(h / ph), Dim::Static(w / pw)],
    ))
}

/// The type of a reduction of `t` over `axis`.
fn reduced(g: &Graph, t: &Type, axis: Axis) -> Result<Type, TypeError> {
    let mut r = t.clone();
    match axis {
        Axis::All => r.shape.clear(),
        Axis::One(k) => {
            if k as usize >= r.shape.len() {
                return Err(TypeError::new(format!(
                    "axis {k} is out of range for {} (rank {})",
                    g.type_str(t),
                    r.shape.len()
                )));
            }
            r.shape.remove(k as usize);
        }
    }
    Ok(r)
}

/// A comparison (`sym`): two numbers or two integers, broadcast; 1 or 0 as a float.
pub fn compare_type(g: &Graph, sym: &str, a: &Type, b: &Type) -> Result<Type, TypeError> {
    if a.int.is_some() != b.int.is_some() {
        return Err(TypeError {
            message: format!(
                "`{sym}` compares numbers with numbers or integers with integers: left is {}, right is {}",
                g.type_str(a),
                g.type_str(b)
            ),
            help: Some("integers are labels or indices, which numbers are not".into()),
        });
    }
    if a.int.is_some() && a.dtype != b.dtype {
        return Err(TypeError {
            message: format!(
                "`{sym}` compares integers computed in {} with integers computed in {}",
                a.dtype.name(),
                b.dtype.name()
            ),
            help: Some(
                "integers are computed in the float type of the values they come from (an \
                 integer input: the first float declared beside it): keep f32 and f64 values \
                 in separate blocks"
                    .into(),
            ),
        });
    }
    let mut t = broadcast_type(g, sym, a, b, None)?;
    t.int = None;
    Ok(t)
}

fn dtype_error(g: &Graph, what: &str, a: &Type, b: &Type) -> TypeError {
    TypeError {
        message: format!(
            "element types differ in `{what}`: left is {}, right is {}",
            g.type_str(a),
            g.type_str(b)
        ),
        help: Some(
            "tensor_fn! never converts implicitly: declare both as `f32` or both as `f64`".into(),
        ),
    }
}

/// The shape rule of an elementwise binary op, shown to the user as `sym` (`+`, `-`,
/// `maximum`): one element type, numpy-broadcast shapes. `src` is the source text of both
/// sides, when known, so that a hint can quote the fix.
pub fn binary_type(
    g: &Graph,
    sym: &str,
    a: &Type,
    b: &Type,
    src: Option<(&str, &str)>,
) -> Result<Type, TypeError> {
    numbers(g, sym, &[a, b])?;
    broadcast_type(g, sym, a, b, src)
}

/// One element type, numpy-broadcast shapes.
fn broadcast_type(
    g: &Graph,
    sym: &str,
    a: &Type,
    b: &Type,
    src: Option<(&str, &str)>,
) -> Result<Type, TypeError> {
    if a.dtype != b.dtype {
        return Err(dtype_error(g, sym, a, b));
    }
    match broadcast_shapes(&a.shape, &b.shape) {
        Some(shape) => Ok(Type {
            dtype: a.dtype,
            shape,
            int: a.int,
        }),
        None => Err(TypeError {
            message: format!(
                "shapes do not broadcast in `{sym}`: left is {}, right is {}",
                g.type_str(a),
                g.type_str(b)
            ),
            help: Some(broadcast_help(g, sym, a, b, src)),
        }),
    }
}

/// The shape rule of `dot` (numpy's, for ranks 1 and 2); `src` as in `binary_type`.
pub fn dot_type(
    g: &Graph,
    ta: &Type,
    tb: &Type,
    src: Option<(&str, &str)>,
) -> Result<Type, TypeError> {
    if ta.dtype != tb.dtype {
        return Err(dtype_error(g, "dot", ta, tb));
    }
    numbers(g, "dot", &[ta, tb])?;
    let (a, b) = (&ta.shape, &tb.shape);
    if a.len() > 2 || b.len() > 2 {
        return Err(TypeError {
            message: format!(
                "`dot` multiplies vectors and matrices: left is {}, right is {}",
                g.type_str(ta),
                g.type_str(tb)
            ),
            help: Some("flatten the images first, as in `dot(flatten(h, 2), w)`".into()),
        });
    }
    if a.is_empty() || b.is_empty() {
        return Err(TypeError {
            message: format!(
                "`dot` needs vectors or matrices: left is {}, right is {}",
                g.type_str(ta),
                g.type_str(tb)
            ),
            help: Some("multiply by a scalar with `*`".into()),
        });
    }
    if a[a.len() - 1] != b[0] {
        return Err(TypeError {
            message: format!(
                "shape mismatch in `dot`: left is {}, right is {}",
                g.type_str(ta),
                g.type_str(tb)
            ),
            help: Some(dot_help(g, a, b, src)),
        });
    }
    let mut shape = Vec::new();
    if a.len() == 2 {
        shape.push(a[0]);
    }
    if b.len() == 2 {
        shape.push(b[1]);
    }
    Ok(Type::float(ta.dtype, shape))
}

fn rev(s: &[Dim]) -> Vec<Dim> {
    s.iter().rev().copied().collect()
}

fn dot_help(g: &Graph, a: &[Dim], b: &[Dim], src: Option<(&str, &str)>) -> String {
    let fits = |a: &[Dim], b: &[Dim]| a[a.len() - 1] == b[0];
    if b.len() == 2 && fits(a, &rev(b)) {
        return match src {
            Some((l, r)) => format!("did you mean `dot({l}, {r}.T)`?"),
            None => "did you mean to transpose the right side (`.T`)?".into(),
        };
    }
    if a.len() == 2 && fits(&rev(a), b) {
        return match src {
            Some((l, r)) => format!("did you mean `dot({l}.T, {r})`?"),
            None => "did you mean to transpose the left side (`.T`)?".into(),
        };
    }
    format!(
        "`dot` needs the last dim of the left side ({}) to equal the first dim of the right side ({})",
        g.dim_str(a[a.len() - 1]),
        g.dim_str(b[0])
    )
}

/// Why two dims that must be equal are not, when symbolic dims are involved.
fn dims_hint(g: &Graph, x: Dim, y: Dim) -> Option<String> {
    match (x, y) {
        (Dim::Sym(_), Dim::Static(_)) | (Dim::Static(_), Dim::Sym(_)) => {
            let (s, k) = if matches!(x, Dim::Sym(_)) { (x, y) } else { (y, x) };
            Some(format!(
                "`{}` is a symbolic dim, so it is never known to be {}: declare both with `{}`, or both with {}",
                g.dim_str(s),
                g.dim_str(k),
                g.dim_str(s),
                g.dim_str(k)
            ))
        }
        (Dim::Sym(_), Dim::Sym(_)) => Some(format!(
            "`{}` and `{}` are different symbolic dims: if they are the same size, use one name for both",
            g.dim_str(x),
            g.dim_str(y)
        )),
        (Dim::Static(_), Dim::Static(_)) => None,
    }
}

fn broadcast_help(g: &Graph, sym: &str, a: &Type, b: &Type, src: Option<(&str, &str)>) -> String {
    let quote = |l: &str, r: &str| {
        if sym.starts_with(|c: char| c.is_ascii_alphabetic()) {
            format!("`{sym}({l}, {r})`")
        } else {
            format!("`{l} {sym} {r}`")
        }
    };
    // An update (`w -= v`) cannot transpose its left side.
    let is_update = sym.ends_with('=');
    if a.rank() == 2 && !is_update && broadcast_shapes(&rev(&a.shape), &b.shape).is_some() {
        return match src {
            Some((l, r)) => format!(
                "the shapes fit if the left side is transposed: {}",
                quote(&format!("{l}.T"), r)
            ),
            None => "the shapes fit if the left side is transposed (`.T`)".into(),
        };
    }
    if b.rank() == 2 && broadcast_shapes(&a.shape, &rev(&b.shape)).is_some() {
        return match src {
            Some((l, r)) => format!(
                "the shapes fit if the right side is transposed: {}",
                quote(l, &format!("{r}.T"))
            ),
            None => "the shapes fit if the right side is transposed (`.T`)".into(),
        };
    }
    // The first pair of dims (aligned on the right) that does not broadcast.
    let clash = a
        .shape
        .iter()
        .rev()
        .zip(b.shape.iter().rev())
        .find(|(x, y)| x != y && **x != Dim::Static(1) && **y != Dim::Static(1));
    if let Some(h) = clash.and_then(|(x, y)| dims_hint(g, *x, *y)) {
        return h;
    }
    "numpy broadcasting aligns shapes on the right; each pair of dims must be equal or a static 1"
        .into()
}
