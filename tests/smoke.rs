use ndarray::{arr1, Array2};
use tensor_fn::prelude::*;

#[test]
fn dot_closure() {
    let f = tensor_fn!(|a: f64[n, m], v: f64[m]| dot(a, v));
    let av = f(Array2::ones((2, 2)).view(), arr1(&[1.0, 2.0]).view()).unwrap();
    assert_eq!(av, arr1(&[3.0, 3.0]));
    println!("{}", f.info.graph);
    println!("{}", f.info.plan);
}

#[test]
fn grad_closure() {
    let g = tensor_fn!(|v: f64[n], w: f64[n]| grad(dot(v, w), w));
    assert_eq!(g.info.expr, "v");
    let r = g(arr1(&[0.0, 0.0]).view(), arr1(&[1.0, 2.0]).view()).unwrap();
    assert_eq!(r, arr1(&[0.0, 0.0]));
}

#[test]
fn zero() {
    let h = tensor_fn!(|x: f64| x + (-x));
    assert_eq!(h.info.expr, "0");
    assert_eq!(h(3.0).unwrap(), 0.0);
    println!("{}", h.info.rewrites);
}

tensor_fn! {
    w: f64[n, k], x: f64[k];
    cost = mean(dot(w, x));
    dcost_dw = grad(cost, w);
}

#[test]
fn equations() {
    let w = Array2::from_shape_vec((2, 3), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
    let x = arr1(&[1.0, 1.0, 1.0]);
    assert_eq!(cost(w.view(), x.view()).unwrap(), 10.5);
    let g = dcost_dw(w.view(), x.view()).unwrap();
    assert_eq!(g, Array2::from_elem((2, 3), 0.5));
    println!(
        "{}\n{}\n{}",
        dcost_dw::INFO.graph,
        dcost_dw::INFO.grads,
        dcost_dw::INFO.plan
    );
}

#[test]
fn row_sums_of_every_width() {
    // Rows are summed in 16 lanes plus a tail: widths below, at and around multiples of 16.
    let f = tensor_fn!(|x: f64[n, m]| sum(x * 2, axis = 1));
    for m in [1, 15, 16, 17, 33, 64, 100] {
        let x = Array2::from_shape_fn((3, m), |(i, j)| (i * 31 + j) as f64 * 0.25);
        let want = x.sum_axis(ndarray::Axis(1)) * 2.0;
        assert_eq!(f(x.view()).unwrap(), want, "width {m}");
    }
}
