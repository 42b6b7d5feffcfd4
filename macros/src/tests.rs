//! Compiler tests at the `proc_macro2` level: stages run without rustc expanding anything.

use std::str::FromStr;
use std::time::Instant;

use proc_macro2::TokenStream;

use crate::expand::{compile, tensor_fn, Compiled};
use crate::syntax;

fn compiled(src: &str) -> Vec<Compiled> {
    let program = syntax::parse(TokenStream::from_str(src).unwrap()).unwrap();
    match compile(&program) {
        Ok(c) => c,
        Err(d) => panic!("{}", d.to_compile_errors()),
    }
}

/// The simplified outputs of a one-function program, as compact text.
fn simplified(src: &str) -> String {
    compiled(src)[0].expr.clone()
}

fn rewrites(src: &str) -> String {
    compiled(src)[0].rewrites.clone()
}

#[test]
fn rewrite_rules_fire() {
    // One line per rule: the input, and what it simplifies to.
    let cases = [
        ("|x: f64| x + (-x)", "0"),
        ("|x: f64[n]| x - x", "0"),
        ("|x: f64| -(-x)", "x"),
        ("|x: f64| x * 1", "x"),
        ("|x: f64| 1 * x + 0", "x"),
        ("|x: f64| x / 1", "x"),
        ("|x: f64| x * 0", "0"),
        ("|x: f64| x / x", "1"),
        ("|x: f64| pow(x, 1)", "x"),
        ("|x: f64[n, m]| (x.T).T", "x"),
        ("|x: f64| 2 + 3 * 4", "14"),
        ("|x: f64| x + x", "2 * x"),
        ("|x: f64, y: f64| y * x - x * y", "0"),
        ("|x: f64| x / 4", "0.25 * x"),
        // log(sigmoid(x)) = -softplus(-x) = x - softplus(x): one softplus, finite everywhere.
        ("|x: f64| log(sigmoid(x))", "-(-x + softplus(x))"),
        ("|x: f64| sigmoid(-x)", "1 - sigmoid(x)"),
        ("|x: f64| log(1 - sigmoid(x))", "-softplus(x)"),
        ("|x: f64| exp(log(x))", "x"),
        ("|x: f64[n]| sum(x * 0 + 1)", "n"),
        ("|a: f64[n, k], b: f64[k, m]| dot(a, b).T", "dot(b.T, a.T)"),
        ("|x: f64[n], w: f64[n]| grad(dot(x, w), w)", "x"),
        // log(softmax(x)) = log_softmax(x): no log of an underflowed 0.
        ("|x: f64[n, k]| log(softmax(x))", "log_softmax(x, axis = 1)"),
        // Each one-hot row sums to 1 (labels are checked to lie in 0..k before a call).
        (
            "|y: i64[n], x: f64[n, 3]| sum(x * 0 + onehot(y, 3), axis = 1)",
            "1",
        ),
        (
            "|y: i64[n], x: f64[n, 3]| sum(-2 * onehot(y, 3), axis = 1)",
            "-2",
        ),
        // The cross-entropy's gradient is softmax(z) - onehot(y), scaled.
        (
            "|z: f64[n, k], y: i64[n]| grad(-mean(log_softmax(z)[arange(n), y]), z)",
            "-(onehot(y, k) * (1 / n)) + 1 / n * exp(log_softmax(z, axis = 1))",
        ),
    ];
    for (src, want) in cases {
        assert_eq!(simplified(src), want, "simplifying {src}");
    }
}

#[test]
fn rewrite_rules_that_must_not_fire() {
    let cases = [
        // x / 3 has no exact reciprocal form.
        ("|x: f64| x / 3", "x / 3"),
        // log(2 - sigmoid(x)) is not the stabilized pattern.
        ("|x: f64| log(2 - sigmoid(x))", "log(2 - sigmoid(x))"),
        // sigmoid then log of something else.
        (
            "|x: f64, y: f64| log(sigmoid(x) * y)",
            "log(y * sigmoid(x))",
        ),
    ];
    for (src, want) in cases {
        assert_eq!(simplified(src), want, "simplifying {src}");
    }
}

#[test]
fn strict_mode_keeps_inexact_rewrites_off() {
    assert_eq!(simplified("#[strict] |x: f64| x + (-x)"), "x - x");
    assert_eq!(simplified("#[strict] |x: f64| x * 0"), "0 * x");
    assert_eq!(simplified("#[strict] |x: f64| x / x"), "x / x");
    // Exact rewrites stay on.
    assert_eq!(simplified("#[strict] |x: f64| -(-x) * 1"), "x");
    assert_eq!(
        simplified("#[strict] |x: f64| log(sigmoid(x))"),
        "-softplus(-x)"
    );
}

#[test]
fn rewrite_report_marks_inexact_rules() {
    let r = rewrites("|x: f64| x + (-x)");
    assert_eq!(r, "add-cancel x1 (inexact: assumes finite values)\n");
    let r = rewrites("|x: f64| log(1 - sigmoid(x))");
    assert!(r.contains("log-one-minus-sigmoid x1\n"), "{r}");
}

#[test]
fn zero_function_does_no_arithmetic() {
    let c = compiled("|x: f64[n]| x + (-x)");
    let plan = c[0].schedule.plan_text(&c[0].f.graph);
    // One kernel that only stores a constant.
    assert_eq!(plan, "k0 loop [n]: 1 ops, store b0\n");
    let code = tensor_fn(TokenStream::from_str("|x: f64[n]| x + (-x)").unwrap()).to_string();
    assert!(code.contains("let __v0 : f64 = 0f64"), "{code}");
    assert!(!code.contains("__in0"), "x is never read: {code}");
}

/// The seed's autoencoder exactly as the main job writes it: the tokens of the `tensor_fn!`
/// invocation in `examples/autoencoder.rs`.
fn autoencoder() -> TokenStream {
    let file =
        syn::parse_file(include_str!("../../examples/autoencoder.rs")).expect("the example parses");
    file.items
        .iter()
        .find_map(|item| match item {
            syn::Item::Macro(m) if m.mac.path.is_ident("tensor_fn") => Some(m.mac.tokens.clone()),
            _ => None,
        })
        .expect("examples/autoencoder.rs defines its model with tensor_fn!")
}

fn autoencoder_src() -> String {
    autoencoder().to_string()
}

#[test]
fn expansion_is_deterministic() {
    let a = tensor_fn(autoencoder()).to_string();
    let b = tensor_fn(autoencoder()).to_string();
    assert_eq!(a, b);
}

#[test]
fn autoencoder_gradient_is_stable() {
    let c = compiled(&autoencoder_src());
    let train = &c[0];
    let graph = train.graph.clone();
    // The loss and its gradient evaluate no log and no division after stabilization.
    assert!(!graph.contains("= log"), "{graph}");
    // The only division left is the scalar 1 / b of the mean, computed once per call.
    let tensor_divs = graph
        .lines()
        .filter(|l| l.contains("= div") && l.contains('['))
        .count();
    assert_eq!(tensor_divs, 0, "{graph}");
    assert!(
        train.rewrites.contains("log-sigmoid x1"),
        "{}",
        train.rewrites
    );
    assert!(
        train.rewrites.contains("log-one-minus-sigmoid x1"),
        "{}",
        train.rewrites
    );
}

#[test]
fn expansion_time_of_the_seed_autoencoder() {
    let tokens = autoencoder();
    let t = Instant::now();
    let runs = 20;
    for _ in 0..runs {
        let _ = tensor_fn(tokens.clone());
    }
    let per = t.elapsed().as_secs_f64() / runs as f64;
    println!("expansion of the seed autoencoder: {:.2} ms", per * 1e3);
}

#[test]
fn pathological_inputs_stay_bounded() {
    // A sum of 2000 terms and deep nesting expand in bounded time.
    let terms: Vec<String> = (0..2000).map(|i| format!("x * {i}")).collect();
    let src = format!("|x: f64| {}", terms.join(" + "));
    let t = Instant::now();
    let out = tensor_fn(TokenStream::from_str(&src).unwrap()).to_string();
    assert!(
        !out.contains("compile_error"),
        "{}",
        &out[..out.len().min(400)]
    );
    let nested = format!("|x: f64| {}x{}", "tanh(".repeat(200), ")".repeat(200));
    let out = tensor_fn(TokenStream::from_str(&nested).unwrap()).to_string();
    assert!(!out.contains("compile_error"));
    println!(
        "pathological expansions: {:.2} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
}

/// Wide sums of distinct terms, with their gradients: bounded time, and past the depth limit
/// a clear error instead of a long build.
#[test]
fn wide_sums_with_gradients_stay_bounded() {
    let sum = |n: usize| {
        (1..=n)
            .map(|i| format!("tanh(x * {i})"))
            .collect::<Vec<_>>()
            .join(" + ")
    };
    let t = Instant::now();
    let out = tensor_fn(
        TokenStream::from_str(&format!(
            "x: f64[n]; c = sum({}); g = grad(c, x);",
            sum(3000)
        ))
        .unwrap(),
    )
    .to_string();
    assert!(
        !out.contains("compile_error"),
        "{}",
        &out[..out.len().min(400)]
    );
    let t3000 = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let out = tensor_fn(
        TokenStream::from_str(&format!(
            "x: f64[n]; c = sum({}); g = grad(c, x);",
            sum(10_000)
        ))
        .unwrap(),
    )
    .to_string();
    assert!(
        out.contains("is too deep to compile"),
        "{}",
        &out[..out.len().min(400)]
    );
    println!(
        "sum of 3000 distinct terms + grad: {t3000:.2} s; of 10000: a clear error in {:.2} s",
        t.elapsed().as_secs_f64()
    );
}

#[test]
fn garbage_never_panics() {
    let inputs = [
        "",
        "|",
        "|x|",
        "|x: f64|",
        "struct",
        "x: f64;",
        "x: f64; y = ;",
        "|x: f64| dot(",
        "|x: f64| x +",
        "|x: f64[3,]| x",
        "|x: f64[n, m, k]| x",
        "|x: u8| x",
        "|x: f64| grad(x)",
        "|x: f64| grad(x, 1)",
        "|x: f64| sum(x, axis = y)",
        "|x: f64| x.U",
        "struct M { w: f64 } impl M { fn f(&self) { w = 1; } }",
        "|x: f64| 1e999",
        "|x: f32| x * 1e39",
        "|x: f64| pow(x, x)",
        "|x: f64[n]| max(x, axis = -2)",
    ];
    for src in inputs {
        if let Ok(ts) = TokenStream::from_str(src) {
            let _ = tensor_fn(ts);
        }
    }
}

/// Every loop kernel the compiler emits, run on the GPU-semantics interpreter from its PTX-level
/// instruction list, against the kernel crate's CPU reference of the same kernel, at sizes that
/// are not multiples of any block or warp size.
#[test]
fn emitted_loop_kernels_match_the_reference_on_the_interpreter() {
    use std::collections::HashMap;
    use tensor_fn_kernels::check::check_loop;

    // The autoencoder in f64: its gradient cancels terms (x - sigmoid(z)), and the reference's
    // error bound scales with the result, so f32 roundoff would look like a mismatch. The f32
    // kernels of every op are checked in the kernel crate with ulp bounds.
    let autoencoder = autoencoder_src().replace("f32", "f64");
    let programs = [
        autoencoder.as_str(),
        "|x: f64[n, m], y: f64[m]| (sum(exp(x) * y, axis = 1), max(x - y, axis = 0), mean(tanh(x)))",
        "|x: f32[n, m], c: f32| sum(maximum(x, c) * sigmoid(x) + softplus(-x) + relu(x - 0.5), axis = 0)",
        "|a: f64[n], b: f64[n]| grad(sum(pow(a, 3) * log1p(b) + sqrt(a * b) / (1 + abs(b))), a)",
        "w: f64[n, k], x: f64[k]; cost = mean(dot(w, x) * dot(w, x)); g = grad(cost, w);",
        // Classifiers: integer labels, picking, one-hot, argmax along both axes, where.
        "x: f64[n, m], w: f64[m, k], y: i64[n]; z = dot(x, w); nll = -mean(log_softmax(z)[arange(n), y]); g = grad(nll, w); top = argmax(z, axis = 1); top0 = argmax(softmax(z), axis = 0); err = mean(neq(argmax(z, axis = 1), y)); sel = where(gt(z, 0), z, 0) - max(z, axis = 1, keepdims = true);",
    ];
    let mut checked = 0;
    for src in programs {
        for c in compiled(src) {
            // The function's element type, as the compiler chose it (a data-parallel update
            // part has no outputs: its updates say).
            let dt = c.dtype;
            let syms: HashMap<u32, u64> = (0..c.f.graph.syms.len() as u32)
                .map(|i| (i, 7 + 26 * i as u64))
                .collect();
            let args: HashMap<u32, f64> =
                (0..c.f.graph.vars.len() as u32).map(|v| (v, 0.3)).collect();
            for (i, kern) in c.schedule.kernels.iter().enumerate() {
                if let crate::schedule::Kernel::Loop(l) = kern {
                    let k = crate::emit::ptx::loop_kernel(&c.schedule, l, dt);
                    let chain = if dt == crate::ir::DType::F64 {
                        1e5
                    } else {
                        256.0
                    };
                    check_loop(
                        &format!("{} k{i}", c.f.name),
                        &k,
                        &syms,
                        &args,
                        0.1,
                        0.9,
                        chain,
                        i as u64,
                    );
                    checked += 1;
                }
            }
        }
    }
    println!("checked {checked} emitted loop kernels on the interpreter");
    assert!(checked >= 15, "only {checked} kernels");
}

/// Every library call gets GPU launches; one whose sizes exceed the GPU kernels' 32-bit
/// indexing leaves its function to the CPU (the plan's `cpu_only`) instead of failing to
/// compile.
#[test]
fn library_calls_have_gpu_launches_unless_too_large() {
    let c = compiled(
        "x: f32[n, 3, 7, 9], w: f32[4, 3, 3, 2]; y = max_pool(conv2d(x, w), [2, 2]); g = grad(sum(y), w);",
    );
    for f in &c {
        let plan = f.gpu_plan.to_string();
        assert!(
            plan.contains("cpu_only : :: core :: option :: Option :: None"),
            "{plan}"
        );
        assert!(
            !f.ptx.launches.contains("no GPU kernel"),
            "{}",
            f.ptx.launches
        );
    }
    assert!(
        c[1].ptx.launches.contains("conv2d_grad_filter("),
        "{}",
        c[1].ptx.launches
    );
    assert!(
        c[1].ptx.launches.contains("max_pool_grad("),
        "{}",
        c[1].ptx.launches
    );
    // 3 x 50000 x 20000 pixels: 3e9 elements an image.
    let c = compiled("x: f32[n, 3, 50000, 20000], w: f32[1, 3, 1, 1]; y = conv2d(x, w);");
    let plan = c[0].gpu_plan.to_string();
    assert!(
        plan.contains(r#"cpu_only : :: core :: option :: Option :: Some ("conv2d")"#),
        "{plan}"
    );
    assert!(
        c[0].ptx.launches.contains("no GPU kernel"),
        "{}",
        c[0].ptx.launches
    );
}

#[test]
fn nan_guard_adds_checks_only_when_asked() {
    let src = "x: f64[n]; y = sum(log(x) * x); z = exp(x);";
    let plain = tensor_fn(TokenStream::from_str(src).unwrap()).to_string();
    let guarded =
        tensor_fn(TokenStream::from_str(&format!("#[nan_guard] {src}")).unwrap()).to_string();
    assert!(!plain.contains("NanGuard"), "{plain}");
    // One check per written buffer: y's sum and z's exp.
    assert_eq!(guarded.matches("NanGuard").count(), 2, "{guarded}");
    assert!(guarded.contains("\"%3 (sum)\""), "{guarded}");
    assert!(guarded.contains("\"%1 (exp)\""), "{guarded}");
}
