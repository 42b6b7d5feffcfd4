//! `#[nan_guard]` (Theano's NanGuardMode): the generated CPU code checks every value each kernel
//! stores or reduces, and the first NaN or Inf is an `Err` naming the graph node that made it.
//! Without the attribute the same function returns the NaN silently.

use ndarray::{arr1, Array2};
use tensor_fn::prelude::*;

tensor_fn! {
    #[nan_guard]
    x: f64[n];
    guarded = log(x);
}

tensor_fn! {
    x: f64[n];
    unguarded = log(x);
}

#[test]
fn log_of_a_negative_number_is_an_error_naming_the_log_node() {
    let err = guarded(arr1(&[1.0, -1.0, 2.0]).view()).unwrap_err();
    // The node is the `log` of the graph listing, the index the element that was -1.
    assert!(
        guarded::INFO.graph.contains("%1: f64[n] = log %0"),
        "{}",
        guarded::INFO.graph
    );
    match &err {
        Error::NanGuard {
            function,
            kernel,
            node,
            index,
        } => {
            assert_eq!(*function, "guarded");
            assert_eq!(*kernel, 0);
            assert_eq!(*node, "%1 (log)");
            assert_eq!(*index, 1);
        }
        other => panic!("expected NanGuard, got {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "`guarded`: kernel k0 produced NaN or Inf in %1 (log), first at index 1"
    );
    // log(0) = -inf is caught too.
    assert!(matches!(
        guarded(arr1(&[0.0]).view()),
        Err(Error::NanGuard { index: 0, .. })
    ));
}

#[test]
fn good_input_passes_the_guard() {
    let y = guarded(arr1(&[1.0, std::f64::consts::E]).view()).unwrap();
    assert_eq!(y, arr1(&[0.0, 1.0]));
}

#[test]
fn without_the_attribute_nan_comes_back_silently() {
    let y = unguarded(arr1(&[1.0, -1.0, 2.0]).view()).unwrap();
    assert_eq!(y[0], 0.0);
    assert!(y[1].is_nan());
    assert_eq!(y[2], 2f64.ln());
}

#[test]
fn closures_take_the_attribute_too() {
    let f = tensor_fn!(#[nan_guard] |x: f64[n], y: f64[n]| sum(sqrt(x) * y));
    assert_eq!(f(arr1(&[4.0]).view(), arr1(&[2.0]).view()).unwrap(), 4.0);
    let err = f(arr1(&[4.0, -4.0]).view(), arr1(&[2.0, 2.0]).view()).unwrap_err();
    // sqrt and the product are fused into the reduction: the sum is the node that holds NaN.
    assert!(
        err.to_string()
            .starts_with("`<closure>`: kernel k0 produced NaN or Inf in %"),
        "{err}"
    );
    assert!(err.to_string().contains("(sum)"), "{err}");
}

tensor_fn! {
    pub struct Net { w: f64[2, 2] }
    impl Net {
        /// One SGD step; a huge input overflows `exp`.
        #[nan_guard]
        pub fn train(&mut self, x: f64[b, 2], lr: f64) -> f64 {
            let cost = mean(exp(dot(x, w)));
            w -= lr * grad(cost, w);
            cost
        }
    }
}

#[test]
fn methods_take_the_attribute_and_report_the_kernel() {
    let mut net = Net::new(Array2::from_elem((2, 2), 0.5)).unwrap();
    let ok = net
        .train(Array2::from_elem((3, 2), 1.0).view(), 0.01)
        .unwrap();
    assert!((ok - 1f64.exp()).abs() < 1e-12, "{ok}");
    let before = net.w.get_value().unwrap();
    let err = net
        .train(Array2::from_elem((3, 2), 1000.0).view(), 0.01)
        .unwrap_err();
    let Error::NanGuard {
        function,
        kernel,
        node,
        ..
    } = &err
    else {
        panic!("expected NanGuard, got {err:?}");
    };
    assert_eq!(*function, "train");
    // The overflow is caught in the forward pass, before the update of `w` runs.
    assert_eq!(net.w.get_value().unwrap(), before);
    // The node named is in the method's graph listing, and its kernel in the plan.
    let id = node.split(' ').next().unwrap();
    assert!(
        Net::TRAIN_INFO.graph.contains(&format!("{id}: ")),
        "{node} not in\n{}",
        Net::TRAIN_INFO.graph
    );
    assert!(
        Net::TRAIN_INFO.plan.contains(&format!("k{kernel} ")),
        "{}",
        Net::TRAIN_INFO.plan
    );
}
