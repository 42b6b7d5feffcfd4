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

tensor_fn! {
    /// Updates that read each other's old values, and a parameter's own reduction: the
    /// simultaneous semantics an update loop writing its parameter in place must keep.
    struct Cross { a: f64[4], b: f64[4], c: f64[2, 3] }

    impl Cross {
        fn step(&mut self, s: f64) {
            a = a + b * s;
            b = b * a - sum(a);
            c = c * 2 + mean(c);
        }
    }
}

#[test]
fn updates_in_place_keep_the_old_values_simultaneous() {
    let (a0, b0) = (arr1(&[1.0, -2.0, 0.5, 3.0]), arr1(&[0.25, 1.5, -1.0, 2.0]));
    let c0 = Array2::from_shape_fn((2, 3), |(i, j)| (i * 3 + j) as f64 - 2.5);
    let mut m = Cross::new(a0.clone(), b0.clone(), c0.clone()).unwrap();
    // The same on the PTX interpreter's GPU, where the in-place loop is a kernel.
    let mut vm = Cross::new(a0.clone(), b0.clone(), c0.clone()).unwrap();
    vm.to_device(Device::PtxVm).unwrap();
    let (mut a, mut b, mut c) = (a0, b0, c0);
    for _ in 0..3 {
        m.step(0.5).unwrap();
        vm.step(0.5).unwrap();
        // The reference: every right side at the old values.
        let a1 = &a + &(&b * 0.5);
        let b1 = &b * &a - a.sum();
        let c1 = &c * 2.0 + c.mean().unwrap();
        (a, b, c) = (a1, b1, c1);
    }
    assert_eq!(m.a.get_value().unwrap(), a);
    assert_eq!(m.b.get_value().unwrap(), b);
    assert_eq!(m.c.get_value().unwrap(), c);
    let close = |x: &ndarray::ArrayD<f64>, y: &ndarray::ArrayD<f64>| {
        x.iter()
            .zip(y)
            .all(|(p, q)| (p - q).abs() <= 1e-12 * (1.0 + q.abs()))
    };
    assert!(close(
        &vm.a.get_value().unwrap().into_dyn(),
        &a.clone().into_dyn()
    ));
    assert!(close(
        &vm.b.get_value().unwrap().into_dyn(),
        &b.clone().into_dyn()
    ));
    assert!(close(
        &vm.c.get_value().unwrap().into_dyn(),
        &c.clone().into_dyn()
    ));
    // `c`'s update and one of `a`'s and `b`'s write in place; the other reads the first's
    // parameter, so it is computed aside and copied after.
    let plan = Cross::STEP_INFO.plan;
    assert_eq!(
        plan.lines().filter(|l| l.starts_with("update")).count(),
        1,
        "{plan}"
    );
}
