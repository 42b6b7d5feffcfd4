//! Fuzz tests of the expansion entry point: whatever tokens come in, `expand::tensor_fn`
//! returns (code or `compile_error!`s) and never panics or hangs.
//!
//! Three generators, each bounded and seeded: (a) random token streams over the language's
//! vocabulary, (b) random mutations (delete, duplicate, swap, replace, insert) of valid
//! programs, (c) random well-formed programs in all three forms. Every input is expanded on a
//! worker thread (rustc's 8 MiB stack) inside `catch_unwind`; the test thread waits for each
//! with a timeout, so a hang is reported with its input instead of stalling CI. Besides panics,
//! an "internal error" in the output is a compiler bug too, and a well-formed program must
//! expand to code that parses as Rust with no `compile_error!`.

use std::str::FromStr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use proc_macro2::{Delimiter, Spacing, TokenStream, TokenTree};

use crate::expand::tensor_fn;
use crate::grad_props::panic_text;
use crate::testgen::{self, Rng};

/// What one expansion did.
enum Outcome {
    /// The input does not lex as Rust tokens (only the random generators make these).
    NotTokens,
    Panicked(String),
    /// Expanded: whether it holds `compile_error!`s, an internal error, and whether the code
    /// parses as Rust.
    Expanded {
        errors: bool,
        internal: bool,
        parses: bool,
    },
}

enum Msg {
    Start(usize, String),
    Done(Outcome, Duration),
}

#[derive(Default, Debug)]
struct Tally {
    inputs: usize,
    not_tokens: usize,
    errors: usize,
    compiled: usize,
    failures: Vec<String>,
    /// The slowest expansion and its input.
    slowest: (Duration, String),
}

/// How long one expansion may take before it counts as a hang.
const HANG: Duration = Duration::from_secs(20);

fn expand_one(src: &str) -> Outcome {
    let Ok(tokens) = TokenStream::from_str(src) else {
        return Outcome::NotTokens;
    };
    let r = std::panic::catch_unwind(|| tensor_fn(tokens).to_string());
    match r {
        Err(p) => Outcome::Panicked(panic_text(&p)),
        Ok(code) => {
            let errors = code.contains("compile_error");
            let internal = code.contains("internal error");
            let ts = TokenStream::from_str(&code).expect("expansions lex");
            let parses = syn::parse2::<syn::File>(ts.clone()).is_ok()
                || syn::parse2::<syn::Expr>(ts).is_ok();
            Outcome::Expanded {
                errors,
                internal,
                parses,
            }
        }
    }
}

/// Expands `count` inputs from `gen` (seeded), on a worker thread with a per-input timeout.
/// `well_formed`: the inputs are valid programs, so any `compile_error!` is a failure too.
fn fuzz(
    name: &str,
    seed: u64,
    count: usize,
    well_formed: bool,
    gen: fn(&mut Rng) -> String,
) -> Tally {
    let t = Instant::now();
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::Builder::new()
        .name(format!("fuzz-{name}"))
        .stack_size(8 << 20)
        .spawn(move || {
            let mut rng = Rng::new(seed);
            for i in 0..count {
                let src = gen(&mut rng);
                if tx.send(Msg::Start(i, src.clone())).is_err() {
                    return;
                }
                let t = Instant::now();
                let outcome = expand_one(&src);
                let _ = tx.send(Msg::Done(outcome, t.elapsed()));
            }
        })
        .expect("spawn the fuzz worker");
    let mut tally = Tally::default();
    let mut current = (0, String::new());
    loop {
        match rx.recv_timeout(HANG) {
            Ok(Msg::Start(i, src)) => current = (i, src),
            Ok(Msg::Done(outcome, took)) => {
                tally.inputs += 1;
                let (i, src) = &current;
                if took > tally.slowest.0 {
                    tally.slowest = (took, src.clone());
                }
                match outcome {
                    Outcome::NotTokens => tally.not_tokens += 1,
                    Outcome::Panicked(msg) => tally
                        .failures
                        .push(format!("{name} #{i} panicked: {msg}\n  input: {src}")),
                    Outcome::Expanded {
                        errors,
                        internal,
                        parses,
                    } => {
                        if errors {
                            tally.errors += 1;
                        } else {
                            tally.compiled += 1;
                        }
                        if internal {
                            tally
                                .failures
                                .push(format!("{name} #{i}: internal error\n  input: {src}"));
                        } else if !parses {
                            tally.failures.push(format!(
                                "{name} #{i}: the expansion is not valid Rust\n  input: {src}"
                            ));
                        } else if well_formed && errors {
                            tally.failures.push(format!(
                                "{name} #{i}: a well-formed program does not compile\n  input: {src}"
                            ));
                        }
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                "{name} #{}: expansion still running after {HANG:?}\n  input: {}",
                current.0, current.1
            ),
        }
    }
    worker.join().expect("the worker catches every panic");
    println!(
        "fuzz {name}: {} inputs ({} not tokens), {} compiled, {} with compile errors, {} failures, {:.2} s; slowest {:.1} ms: {}",
        tally.inputs,
        tally.not_tokens,
        tally.compiled,
        tally.errors,
        tally.failures.len(),
        t.elapsed().as_secs_f64(),
        tally.slowest.0.as_secs_f64() * 1e3,
        tally.slowest.1
    );
    tally
}

fn assert_clean(t: &Tally) {
    assert!(
        t.failures.is_empty(),
        "{} failing inputs:\n{}",
        t.failures.len(),
        t.failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// (a) Random token streams over the language's vocabulary.

/// The words of the language around its functions; the functions' names come from the table.
const WORDS: &[&str] = &[
    "x", "y", "w", "b", "n", "m", "k", "b1", "cost", "lr", "f32", "f64", "f16", "u8", "T", "t",
    "axis", "self", "Self", "NaN", "inf", "_", "struct", "impl", "fn", "let", "pub", "mut",
    "crate", "M", "Model",
];

fn idents() -> Vec<&'static str> {
    let mut v = WORDS.to_vec();
    v.extend(tensor_fn_kernels::op::BUILTINS.iter().map(|b| b.name));
    v
}

const LITERALS: &[&str] = &[
    "0",
    "1",
    "2",
    "3",
    "784",
    "0.5",
    "1e999",
    "1e-999",
    "1e308",
    "1.7976931348623157e308",
    "3.4e38",
    "3.5e38",
    "1e39",
    "0.0",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999999999999999999999",
    "4294967296",
    "0x10",
    "0b11",
    "1_000",
    "1f32",
    "2.0f64",
    "1u8",
    "1e400f64",
    "\"s\"",
    "'c'",
    "b'x'",
    "1.",
];

const PUNCTS: &[&str] = &[
    "|",
    ":",
    ",",
    ";",
    "+",
    "-",
    "*",
    "/",
    ".",
    "=",
    "-=",
    "+=",
    "==",
    "**",
    "->",
    "&",
    "#",
    "!",
    "<",
    ">",
    "::",
    "..",
    "&mut self",
    "&self",
    ".T",
    "axis =",
    "#[strict]",
    "#[nan_guard]",
    "#[doc = \"d\"]",
    "#[inline]",
];

fn token(rng: &mut Rng) -> String {
    match rng.below(10) {
        0..=3 => rng.pick(&idents()).to_string(),
        4 | 5 => rng.pick(LITERALS).to_string(),
        _ => rng.pick(PUNCTS).to_string(),
    }
}

/// A random token sequence; groups nest, so brackets always balance.
fn stream(rng: &mut Rng, len: usize, depth: u32) -> String {
    let mut out = Vec::new();
    for _ in 0..len {
        if depth < 3 && rng.chance(0.15) {
            let n = rng.below(6);
            let inner = stream(rng, n, depth + 1);
            let (o, c) = *rng.pick(&[("(", ")"), ("[", "]"), ("{", "}")]);
            out.push(format!("{o} {inner} {c}"));
        } else {
            out.push(token(rng));
        }
    }
    out.join(" ")
}

fn random_tokens(rng: &mut Rng) -> String {
    let len = 1 + rng.below(24);
    // Openings of the three forms, so that parsing gets past the first token often.
    match rng.below(5) {
        0 => format!("| {} | {}", stream(rng, 3, 1), stream(rng, len, 0)),
        1 => format!("{} ; {}", stream(rng, 4, 1), stream(rng, len, 0)),
        2 => format!(
            "struct M {{ {} }} impl M {{ fn f ( &mut self , {} ) {} }}",
            stream(rng, 4, 1),
            stream(rng, 3, 1),
            stream(rng, len, 1)
        ),
        _ => stream(rng, len, 0),
    }
}

#[test]
fn fuzz_random_token_streams() {
    assert_clean(&fuzz("tokens", 0xA11CE, 3000, false, random_tokens));
}

// ---------------------------------------------------------------------------------------------
// (b) Random mutations of valid programs.

const VALID: &[&str] = &[
    "|a: f64[n, m], v: f64[m]| dot(a, v)",
    "|v: f64[n], w: f64[n]| grad(dot(v, w), w)",
    "|x: f64| x + (-x)",
    "#[strict] |x: f32[n, 3], y: f32[3]| (sum(exp(x) * y, axis = 1), max(x - y, axis = 0), mean(tanh(x)))",
    "w: f64[n, k], x: f64[k]; cost = mean(dot(w, x)); dcost_dw = grad(cost, w);",
    "a: f64[n], b: f64[n]; c = grad(sum(pow(a, 3) * log1p(b) + sqrt(a * b) / (1 + abs(b))), a); h = grad(sum(c * b), a);",
    "pub struct Autoencoder { w: f32[784, h], b1: f32[h], b2: f32[784] }
     impl Autoencoder {
        #[nan_guard]
        pub fn train(&mut self, x: f32[b, 784], lr: f32) -> f32 {
            let hidden = sigmoid(dot(x, w) + b1);
            let output = sigmoid(dot(hidden, w.T) + b2);
            let cost = mean(-sum(x * log(output) + (1 - x) * log(1 - output), axis = 1));
            w -= lr * grad(cost, w);
            b1 -= lr * grad(cost, b1);
            b2 -= lr * grad(cost, b2);
            cost
        }
        pub fn hidden(&self, x: f32[b, 784]) -> f32[b, h] { sigmoid(dot(x, w) + b1) }
     }",
    "struct M { w: f64[2, 2], s: f64 } impl M { fn step(&mut self, x: f64[2]) -> (f64, f64[2]) { let y = dot(w, x); w = w * s; s += 1; (sum(y), relu(y)) } }",
    "|x: f64[n, 1], y: f64[1, m], z: f64[m]| maximum(x + y, z) - minimum(x * y, 2) / softplus(z)",
];

/// Flat tokens of a program: group delimiters as their own tokens, joint punctuation merged.
fn flat_tokens(ts: TokenStream, out: &mut Vec<String>) {
    let mut joint = false;
    for tt in ts {
        match tt {
            TokenTree::Group(g) => {
                let (o, c) = match g.delimiter() {
                    Delimiter::Parenthesis => ("(", ")"),
                    Delimiter::Bracket => ("[", "]"),
                    Delimiter::Brace => ("{", "}"),
                    Delimiter::None => ("", ""),
                };
                out.push(o.into());
                flat_tokens(g.stream(), out);
                out.push(c.into());
                joint = false;
            }
            TokenTree::Punct(p) => {
                if joint {
                    out.last_mut().expect("a previous punct").push(p.as_char());
                } else {
                    out.push(p.as_char().to_string());
                }
                joint = p.spacing() == Spacing::Joint;
            }
            other => {
                out.push(other.to_string());
                joint = false;
            }
        }
    }
}

/// Drops closers that match no opener, fixes mismatched ones and closes what is left open.
fn rebalance(toks: Vec<String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut open: Vec<&str> = Vec::new();
    for t in toks {
        let closer = match t.as_str() {
            "(" => Some(")"),
            "[" => Some("]"),
            "{" => Some("}"),
            _ => None,
        };
        if let Some(c) = closer {
            open.push(c);
            out.push(t);
        } else if matches!(t.as_str(), ")" | "]" | "}") {
            if let Some(c) = open.pop() {
                out.push(c.to_string());
            }
        } else {
            out.push(t);
        }
    }
    while let Some(c) = open.pop() {
        out.push(c.to_string());
    }
    out
}

fn mutated_program(rng: &mut Rng) -> String {
    let src = if rng.chance(0.5) {
        rng.pick(VALID).to_string()
    } else {
        testgen::program(rng)
    };
    let mut toks = Vec::new();
    flat_tokens(
        TokenStream::from_str(&src).expect("valid programs lex"),
        &mut toks,
    );
    for _ in 0..1 + rng.below(3) {
        if toks.is_empty() {
            break;
        }
        let i = rng.below(toks.len());
        match rng.below(8) {
            0 => {
                toks.remove(i);
            }
            1 => {
                let t = toks[i].clone();
                toks.insert(i, t);
            }
            2 => {
                let j = rng.below(toks.len());
                toks.swap(i, j);
            }
            3 => toks[i] = token(rng),
            4 => toks.insert(i, token(rng)),
            // Same-kind replacements get past the parser and exercise the later stages: another
            // name (an op, a variable, a dim), another number, another operator.
            _ => {
                let t = &toks[i];
                let first = t.chars().next().unwrap_or(' ');
                toks[i] = if first.is_ascii_digit() {
                    rng.pick(LITERALS).to_string()
                } else if first.is_alphabetic() || first == '_' {
                    if rng.chance(0.5) {
                        rng.pick(&idents()).to_string()
                    } else {
                        toks[rng.below(toks.len())].clone()
                    }
                } else if matches!(t.as_str(), "+" | "-" | "*" | "/") {
                    rng.pick(&["+", "-", "*", "/"]).to_string()
                } else {
                    t.clone()
                };
            }
        }
    }
    rebalance(toks).join(" ")
}

#[test]
fn fuzz_mutated_programs() {
    assert_clean(&fuzz("mutations", 0xB0B, 3000, false, mutated_program));
}

// ---------------------------------------------------------------------------------------------
// (c) Random well-formed programs.

#[test]
fn fuzz_well_formed_programs() {
    assert_clean(&fuzz("programs", 0xC0FFEE, 700, true, testgen::program));
}

#[test]
fn mutations_keep_brackets_balanced() {
    let mut toks = Vec::new();
    flat_tokens(TokenStream::from_str(VALID[6]).unwrap(), &mut toks);
    assert!(toks.contains(&"-=".to_string()), "{toks:?}");
    let mut rng = Rng::new(1);
    for _ in 0..200 {
        let src = mutated_program(&mut rng);
        assert!(TokenStream::from_str(&src).is_ok(), "{src}");
    }
}

// ---------------------------------------------------------------------------------------------
// Deep and shared inputs: the compiler runs the macro on an 8 MiB stack, and a DAG printed as a
// tree can be exponentially long.

/// Expands `src` on a thread with rustc's stack size; returns (milliseconds, output length,
/// whether it reports errors).
fn expand_on_rustc_stack(src: String) -> (f64, usize, bool) {
    std::thread::Builder::new()
        .stack_size(8 << 20)
        .spawn(move || {
            let t = Instant::now();
            let out = tensor_fn(TokenStream::from_str(&src).unwrap()).to_string();
            (
                t.elapsed().as_secs_f64() * 1e3,
                out.len(),
                out.contains("compile_error"),
            )
        })
        .unwrap()
        .join()
        .expect("no panic")
}

#[test]
fn deep_inputs_are_errors_not_stack_overflows() {
    let n = 20_000;
    let lets = |f: &dyn Fn(usize) -> String| {
        let body: String = (1..n).map(|i| format!("let a{i} = {}; ", f(i))).collect();
        format!("|x: f64| {{ let a0 = x; {body} grad(a{}, x) }}", n - 1)
    };
    let cases = [
        format!("|x: f64| {}x{}", "(".repeat(n), ")".repeat(n)),
        format!("|x: f64| {}x{}", "tanh(".repeat(n), ")".repeat(n)),
        format!("|x: f64| {}x", "-".repeat(n)),
        format!("|x: f64[n, n]| x{}", ".T".repeat(n)),
        format!("|x: f64| x{}", " * x".repeat(n)),
        format!(
            "|x: f64| grad({}x{}, x)",
            "sigmoid(x + ".repeat(n),
            ")".repeat(n)
        ),
        // Deep graphs from shallow source: a chain of `let`s.
        lets(&|i| format!("tanh(a{})", i - 1)),
        lets(&|i| format!("a{} * x", i - 1)),
    ];
    for src in cases {
        let head: String = src.chars().take(60).collect();
        let (ms, _, errors) = expand_on_rustc_stack(src);
        assert!(errors, "{head}...: expected a nesting or depth error");
        println!("deep input {head}...: {ms:.1} ms");
    }
    // Long but shallow: a sum of 20000 terms is fine.
    let terms: Vec<String> = (0..n).map(|i| format!("x * {i}")).collect();
    let (ms, _, errors) = expand_on_rustc_stack(format!("|x: f64| {}", terms.join(" + ")));
    assert!(!errors);
    println!("sum of {n} terms: {ms:.1} ms");
}

#[test]
fn shared_subexpressions_print_in_linear_time() {
    // Each `let` uses the previous value three times: printed as a tree, 3^60 nodes.
    let body: String = (1..60)
        .map(|i| format!("let a{i} = tanh(a{p} * a{p} + a{p}); ", p = i - 1))
        .collect();
    let src = format!("|x: f64| {{ let a0 = x; {body} grad(a59, x) }}");
    let (ms, len, errors) = expand_on_rustc_stack(src);
    assert!(!errors);
    assert!(len < 2_000_000, "{len} bytes of expansion");
    println!("60 shared lets: {ms:.1} ms, {len} bytes");
}
