//! The language of classifiers, on the CPU: softmax and log_softmax (values, stability at huge
//! logits, the `log(softmax)` rewrite), integer labels (`i32`/`i64` inputs and outputs, their
//! range checks), picking `x[arange(n), y]`, `onehot`, `argmax` (ties, NaN), comparisons,
//! `where`, `keepdims`, and a logistic regression trained to zero errors in f64 and f32.
//! Gradients are checked against finite differences in `grad_check.rs`; the GPU's agreement
//! with the CPU in `gpu.rs`.

use ndarray::{arr1, arr2, Array1, Array2, Axis};
use tensor_fn::prelude::*;
use tensor_fn::Error;

tensor_fn! {
    x: f64[n, k], v: f64[k], y: i64[n], y32: i32[n];
    pub sm = softmax(x);
    pub sm0 = softmax(x, axis = 0);
    pub lsm = log_softmax(x);
    pub lsm_v = log_softmax(v);
    pub by_hand = log(softmax(x));
    pub picked = log_softmax(x)[arange(n), y];
    pub picked32 = x[arange(n), y32];
    pub hot = onehot(y, 3);
    pub top = argmax(x, axis = 1);
    pub top0 = argmax(x, axis = 0);
    pub top_v = argmax(v);
    pub wrong = mean(neq(argmax(x, axis = 1), y));
    pub eq_ = eq(x, 0.5);
    pub neq_ = neq(x, 0.5);
    pub lt_ = lt(x, 0.5);
    pub le_ = le(x, 0.5);
    pub gt_ = gt(x, 0.5);
    pub ge_ = ge(x, 0.5);
    pub clipped = where(gt(x, 0), x, 0.1 * x);
    pub centred = x - mean(x, axis = 1, keepdims = true);
    pub col_max = max(x, axis = 0, keepdims = true);
    pub row_sum = sum(x, axis = 1, keepdims = true);
}

/// The same in f32: integer inputs are computed in the block's float type.
mod f32s {
    use tensor_fn::prelude::*;
    tensor_fn! {
        x: f32[n, k], y: i64[n];
        pub sm = softmax(x);
        pub lsm = log_softmax(x);
        pub top = argmax(x, axis = 1);
        pub wrong = mean(neq(argmax(x, axis = 1), y));
    }
}

fn logits() -> Array2<f64> {
    arr2(&[
        [1.0, 2.0, 0.5],
        [-3.0, 0.0, 3.0],
        [0.25, 0.25, -1.0],
        [2.0, -2.0, 7.0],
    ])
}

/// log(sum(exp(row))) in f64, shifted by the row max.
fn logsumexp(row: &[f64]) -> f64 {
    let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln()
}

fn assert_close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: got {g}, want {w}"
        );
    }
}

#[test]
fn softmax_and_log_softmax_values() {
    let x = logits();
    let s = sm(x.view()).unwrap();
    let l = lsm(x.view()).unwrap();
    for (r, row) in x.rows().into_iter().enumerate() {
        let row: Vec<f64> = row.to_vec();
        let lse = logsumexp(&row);
        let want_l: Vec<f64> = row.iter().map(|v| v - lse).collect();
        let want_s: Vec<f64> = want_l.iter().map(|v| v.exp()).collect();
        assert_close("log_softmax", &l.row(r).to_vec(), &want_l, 1e-15);
        assert_close("softmax", &s.row(r).to_vec(), &want_s, 1e-15);
        assert!((s.row(r).sum() - 1.0).abs() < 1e-15);
    }
    // Over columns: the transpose's rows.
    let s0 = sm0(x.view()).unwrap();
    let st = sm(x.t().as_standard_layout().view()).unwrap();
    assert_close(
        "softmax axis=0",
        &s0.t().iter().cloned().collect::<Vec<_>>(),
        &st.iter().cloned().collect::<Vec<_>>(),
        1e-15,
    );
    // A vector's only axis.
    let v = arr1(&[0.5, -1.0, 2.0]);
    let lse = logsumexp(&v.to_vec());
    assert_close(
        "log_softmax vector",
        &lsm_v(v.view()).unwrap().to_vec(),
        &v.mapv(|a| a - lse).to_vec(),
        1e-15,
    );
}

#[test]
fn huge_logits_stay_finite() {
    // exp(1000) overflows f64 and exp(100) f32: the max-shifted forms never compute either.
    let x = arr2(&[[1000.0, 0.0, -1000.0], [-1000.0, -1000.0, -1001.0]]);
    let l = lsm(x.view()).unwrap();
    assert_eq!(l.row(0).to_vec(), vec![0.0, -1000.0, -2000.0]);
    // Row 1 is [0, 0, -1] shifted by -1000.
    let lse = (2.0 + (-1.0f64).exp()).ln();
    assert_close(
        "log_softmax at -1000",
        &l.row(1).to_vec(),
        &[-lse, -lse, -1.0 - lse],
        1e-15,
    );
    let s = sm(x.view()).unwrap();
    assert_eq!(s.row(0).to_vec(), vec![1.0, 0.0, 0.0]);
    assert!(s.iter().all(|v| v.is_finite()));
    // log(softmax(x)) written by hand is rewritten to log_softmax: finite where the literal
    // form would give log(0) = -inf.
    assert_eq!(by_hand(x.view()).unwrap(), l);
    assert!(
        by_hand::INFO.rewrites.contains("log-softmax"),
        "{}",
        by_hand::INFO.rewrites
    );
    let xf = x.mapv(|v| v as f32 / 10.0);
    let lf = f32s::lsm(xf.view()).unwrap();
    assert_eq!(lf.row(0).to_vec(), vec![0.0, -100.0, -200.0]);
    let sf = f32s::sm(xf.view()).unwrap();
    assert!(sf.iter().all(|v| v.is_finite()), "{sf}");
}

#[test]
fn picking_and_onehot() {
    let x = logits();
    let y = arr1(&[1i64, 2, 0, 2]);
    let l = lsm(x.view()).unwrap();
    let want: Vec<f64> = (0..4).map(|i| l[[i, y[i] as usize]]).collect();
    assert_eq!(picked(x.view(), y.view()).unwrap().to_vec(), want);
    let y32 = arr1(&[2i32, 0, 1, 1]);
    let want: Vec<f64> = (0..4).map(|i| x[[i, y32[i] as usize]]).collect();
    assert_eq!(picked32(x.view(), y32.view()).unwrap().to_vec(), want);
    let h = hot(y.view()).unwrap();
    let want = arr2(&[
        [0.0, 1.0, 0.0],
        [0.0, 0.0, 1.0],
        [1.0, 0.0, 0.0],
        [0.0, 0.0, 1.0],
    ]);
    assert_eq!(h, want);
}

#[test]
fn labels_out_of_range_are_errors() {
    let x = logits();
    for (bad, at) in [
        (arr1(&[0i64, 3, 1, 0]), 1usize),
        (arr1(&[0i64, 1, 2, -1]), 3),
    ] {
        let e = picked(x.view(), bad.view()).unwrap_err();
        match &e {
            Error::IntRange { arg, index, .. } => {
                assert_eq!((*arg, *index), ("y", at), "{e}");
            }
            other => panic!("expected IntRange, got {other:?}"),
        }
        let msg = e.to_string();
        assert!(
            msg.contains(&format!(
                "holds {} at index {at}, outside the classes 0..3",
                bad[at]
            )),
            "{msg}"
        );
        assert!(matches!(hot(bad.view()), Err(Error::IntRange { .. })));
    }
    // Labels beyond 2^24 cannot be compared exactly in an f32 function.
    let xf = Array2::<f32>::zeros((2, 3));
    let big = arr1(&[0i64, (1 << 24) + 1]);
    let e = f32s::wrong(xf.view(), big.view()).unwrap_err();
    assert!(e.to_string().contains("beyond 16777216"), "{e}");
    // A wrong length is a shape error, not a panic.
    let short = arr1(&[0i64, 1]);
    assert!(matches!(
        picked(x.view(), short.view()),
        Err(Error::DimConflict { .. })
    ));
}

#[test]
fn argmax_picks_the_first_maximum_and_nan() {
    let x = arr2(&[
        [1.0, 3.0, 3.0],
        [f64::NEG_INFINITY, f64::NEG_INFINITY, f64::NEG_INFINITY],
        [0.0, f64::NAN, 5.0],
        [2.0, -0.0, 0.0],
    ]);
    let t: Array1<i64> = top(x.view()).unwrap();
    assert_eq!(t.to_vec(), vec![1, 0, 1, 0]);
    let t0 = top0(x.view()).unwrap();
    assert_eq!(t0.to_vec(), vec![3, 2, 2]);
    assert_eq!(top_v(arr1(&[-1.0, 4.0, 4.0, 2.0]).view()).unwrap(), 1);
    // In f32, positions are integers, whatever the float type.
    let xf = x.mapv(|v| v as f32);
    let t32: Array1<i64> = f32s::top(xf.view()).unwrap();
    assert_eq!(t32, t);
}

#[test]
fn error_rate_in_f64_and_f32() {
    let x = logits();
    // Row maxima are at 1, 2, 0 (tie, first) and 2.
    let y = arr1(&[1i64, 2, 1, 0]);
    assert_eq!(wrong(x.view(), y.view()).unwrap(), 0.5);
    let e: f32 = f32s::wrong(x.mapv(|v| v as f32).view(), y.view()).unwrap();
    assert_eq!(e, 0.5);
}

#[test]
fn comparisons_where_and_keepdims() {
    let x = arr2(&[[0.5, -1.0], [2.0, f64::NAN]]);
    assert_eq!(eq_(x.view()).unwrap(), arr2(&[[1.0, 0.0], [0.0, 0.0]]));
    assert_eq!(neq_(x.view()).unwrap(), arr2(&[[0.0, 1.0], [1.0, 1.0]]));
    assert_eq!(lt_(x.view()).unwrap(), arr2(&[[0.0, 1.0], [0.0, 0.0]]));
    assert_eq!(le_(x.view()).unwrap(), arr2(&[[1.0, 1.0], [0.0, 0.0]]));
    assert_eq!(gt_(x.view()).unwrap(), arr2(&[[0.0, 0.0], [1.0, 0.0]]));
    assert_eq!(ge_(x.view()).unwrap(), arr2(&[[1.0, 0.0], [1.0, 0.0]]));
    let c = clipped(x.view()).unwrap();
    assert_eq!(c[[0, 0]], 0.5);
    assert_eq!(c[[0, 1]], -0.1);
    assert_eq!(c[[1, 0]], 2.0);
    assert!(c[[1, 1]].is_nan());
    let x = logits();
    let m = centred(x.view()).unwrap();
    for row in m.rows() {
        assert!(row.sum().abs() < 1e-14);
    }
    let cm: Array2<f64> = col_max(x.view()).unwrap();
    assert_eq!(cm, arr2(&[[2.0, 2.0, 7.0]]));
    let rs: Array2<f64> = row_sum(x.view()).unwrap();
    assert_eq!(rs.shape(), &[4, 1]);
    assert_eq!(rs.column(0).to_vec(), x.sum_axis(Axis(1)).to_vec());
}

tensor_fn! {
    /// Multiclass logistic regression, as the tutorials write it.
    pub struct Logistic { w: f64[m, k], b: f64[k] }
    impl Logistic {
        pub fn train(&mut self, x: f64[n, m], y: i64[n], lr: f64) -> f64 {
            let p_y = softmax(dot(x, w) + b);
            let cost = -mean(log(p_y)[arange(n), y]);
            w -= lr * grad(cost, w);
            b -= lr * grad(cost, b);
            cost
        }
        pub fn errors(&self, x: f64[n, m], y: i64[n]) -> f64 {
            mean(neq(argmax(softmax(dot(x, w) + b), axis = 1), y))
        }
        pub fn predict(&self, x: f64[n, m]) -> i64[n] {
            argmax(dot(x, w) + b, axis = 1)
        }
    }
}

tensor_fn! {
    pub struct Logistic32 { w: f32[m, k], b: f32[k] }
    impl Logistic32 {
        pub fn train(&mut self, x: f32[n, m], y: i32[n], lr: f32) -> f32 {
            let cost = -mean(log_softmax(dot(x, w) + b)[arange(n), y]);
            w -= lr * grad(cost, w);
            b -= lr * grad(cost, b);
            cost
        }
        pub fn errors(&self, x: f32[n, m], y: i32[n]) -> f32 {
            mean(neq(argmax(dot(x, w) + b, axis = 1), y))
        }
    }
}

#[test]
fn logistic_regression_learns_three_classes() {
    let x = arr2(&[
        [1.0, 0.0],
        [0.0, 1.0],
        [1.0, 1.0],
        [-1.0, 0.5],
        [2.0, 0.1],
        [0.1, 2.0],
    ]);
    let y = arr1(&[0i64, 1, 2, 1, 0, 1]);
    let mut m = Logistic::new(Array2::zeros((2, 3)), Array1::zeros(3)).unwrap();
    let first = m.train(x.view(), y.view(), 0.5).unwrap();
    assert!((first - 3f64.ln()).abs() < 1e-15, "uniform start: {first}");
    let mut last = first;
    for _ in 0..300 {
        last = m.train(x.view(), y.view(), 0.5).unwrap();
    }
    assert!(last < 0.2, "cost {last}");
    assert_eq!(m.errors(x.view(), y.view()).unwrap(), 0.0);
    assert_eq!(m.predict(x.view()).unwrap(), y);
    // The cross-entropy's gradient is the fused softmax(z) - onehot(y): no log survives.
    assert!(
        Logistic::TRAIN_INFO.rewrites.contains("log-softmax"),
        "{}",
        Logistic::TRAIN_INFO.rewrites
    );

    let mut m32 = Logistic32::new(Array2::zeros((2, 3)), Array1::zeros(3)).unwrap();
    let xf = x.mapv(|v| v as f32);
    let yf = y.mapv(|v| v as i32);
    for _ in 0..300 {
        m32.train(xf.view(), yf.view(), 0.5).unwrap();
    }
    assert_eq!(m32.errors(xf.view(), yf.view()).unwrap(), 0.0);
}

tensor_fn! {
    /// A softmax layer with a squared-weights penalty: `w`'s update is one GEMM into `w` with
    /// beta `1 - lr * 2 * l2`; `v`'s penalty is spelled differently and has two own terms.
    pub struct Decayed { w: f64[m, k], v: f64[k, k] }
    impl Decayed {
        pub fn step(&mut self, x: f64[n, m], y: i64[n], lr: f64, l2: f64) -> f64 {
            let z = dot(dot(x, w), v);
            let cost = -mean(log_softmax(z)[arange(n), y]) + l2 * sum(w * w) + sum(v * v) * l2 / 2;
            w -= lr * grad(cost, w);
            v -= lr * grad(cost, v) + 0.5 * lr * l2 * v;
            cost
        }
    }
}

#[test]
fn weight_decay_updates_match_the_formula() {
    let info = Decayed::STEP_INFO;
    assert!(info.plan.contains("beta = 1 - "), "{}", info.plan);
    let (n, m, k) = (7, 5, 3);
    let x = Array2::from_shape_fn((n, m), |(i, j)| ((i * 5 + j * 3) % 11) as f64 / 11.0 - 0.4);
    let y: Array1<i64> = (0..n as i64).map(|i| i % k as i64).collect();
    let w0 = Array2::from_shape_fn((m, k), |(i, j)| ((i * 3 + j * 7) % 13) as f64 / 13.0 - 0.5);
    let v0 = Array2::from_shape_fn((k, k), |(i, j)| if i == j { 1.0 } else { 0.1 * j as f64 });
    let (lr, l2) = (0.3, 0.05);
    let mut model = Decayed::new(w0.clone(), v0.clone()).unwrap();
    let cost = model.step(x.view(), y.view(), lr, l2).unwrap();
    // By hand: g_z = (softmax(z) - onehot(y)) / n, then the chain rule and the penalties.
    let h = x.dot(&w0);
    let z = h.dot(&v0);
    let mut gz = z.clone();
    let mut nll = 0.0;
    for (i, mut row) in gz.rows_mut().into_iter().enumerate() {
        let lse = logsumexp(z.row(i).as_slice().unwrap());
        nll += lse - z[[i, y[i] as usize]];
        row.mapv_inplace(|zi| (zi - lse).exp() / n as f64);
        row[y[i] as usize] -= 1.0 / n as f64;
    }
    let penalty = l2 * w0.mapv(|a| a * a).sum() + v0.mapv(|a| a * a).sum() * l2 / 2.0;
    assert!((cost - (nll / n as f64 + penalty)).abs() < 1e-12, "{cost}");
    let gw = x.t().dot(&gz.dot(&v0.t())) + 2.0 * l2 * &w0;
    let gv = h.t().dot(&gz) + l2 * &v0;
    let want_w = &w0 - lr * &gw;
    let want_v = &v0 - (lr * &gv + 0.5 * lr * l2 * &v0);
    let got_w = model.w.get_value().unwrap();
    let got_v = model.v.get_value().unwrap();
    assert_close(
        "w",
        got_w.as_slice().unwrap(),
        want_w.as_slice().unwrap(),
        1e-13,
    );
    assert_close(
        "v",
        got_v.as_slice().unwrap(),
        want_v.as_slice().unwrap(),
        1e-13,
    );
}
