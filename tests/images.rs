//! Image ops through the macro: `conv2d` against a naive loop of its definition (with and
//! without the filter flip), outputs of rank 4, and shape errors at run time.

use ndarray::{Array4, ArrayView4};
use tensor_fn::prelude::*;

tensor_fn! {
    x: f64[n, 3, 7, 9], w: f64[2, 3, 3, 2];
    conv = conv2d(x, w);
    xcorr = conv2d(x, w, filter_flip = false);
    pooled = max_pool(conv2d(x, w), [2, 3]);
}

/// Deterministic values in [-1, 1).
fn fill(shape: (usize, usize, usize, usize), seed: u64) -> Array4<f64> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    Array4::from_shape_fn(shape, |_| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    })
}

/// `sum over c, u, v of x[b, c, i + u, j + v] * w[o, c, u', v']`, with `(u', v')` the flipped
/// taps when `flip`.
fn naive(x: ArrayView4<f64>, w: ArrayView4<f64>, flip: bool) -> Array4<f64> {
    let (n, c, h, wd) = x.dim();
    let (k, _, fh, fw) = w.dim();
    let (oh, ow) = (h - fh + 1, wd - fw + 1);
    Array4::from_shape_fn((n, k, oh, ow), |(b, o, i, j)| {
        let mut acc = 0.0;
        for ch in 0..c {
            for u in 0..fh {
                for v in 0..fw {
                    let (fu, fv) = if flip {
                        (fh - 1 - u, fw - 1 - v)
                    } else {
                        (u, v)
                    };
                    acc += x[[b, ch, i + u, j + v]] * w[[o, ch, fu, fv]];
                }
            }
        }
        acc
    })
}

#[test]
fn conv2d_is_the_definition_with_and_without_flip() {
    let (x, w) = (fill((5, 3, 7, 9), 1), fill((2, 3, 3, 2), 2));
    for (flip, got) in [
        (true, conv(x.view(), w.view()).unwrap()),
        (false, xcorr(x.view(), w.view()).unwrap()),
    ] {
        let want = naive(x.view(), w.view(), flip);
        assert_eq!(got.dim(), (5, 2, 5, 8));
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() <= 1e-13, "flip {flip}: {a} vs {b}");
        }
    }
    // The flip matters: a true convolution differs from a cross-correlation here.
    let (a, b) = (
        conv(x.view(), w.view()).unwrap(),
        xcorr(x.view(), w.view()).unwrap(),
    );
    assert!(a.iter().zip(&b).any(|(p, q)| (p - q).abs() > 1e-3));
}

#[test]
fn pooling_drops_the_border_and_keeps_window_maxima() {
    let (x, w) = (fill((2, 3, 7, 9), 3), fill((2, 3, 3, 2), 4));
    let c = naive(x.view(), w.view(), true);
    let p = pooled(x.view(), w.view()).unwrap();
    // 5x8 maps in windows of 2x3: 2x2 windows, the last row and two columns dropped.
    assert_eq!(p.dim(), (2, 2, 2, 2));
    for ((b, o, i, j), v) in p.indexed_iter() {
        let mut m = f64::NEG_INFINITY;
        for u in 0..2 {
            for t in 0..3 {
                m = m.max(c[[b, o, 2 * i + u, 3 * j + t]]);
            }
        }
        assert!((v - m).abs() <= 1e-13, "{v} vs {m}");
    }
}

#[test]
fn wrong_image_shapes_are_errors_naming_the_argument() {
    let (x, w) = (fill((2, 3, 7, 8), 5), fill((2, 3, 3, 2), 6));
    let e = conv(x.view(), w.view()).unwrap_err().to_string();
    assert_eq!(
        e,
        "argument `x` has size 8 in axis 3, but its type `f64[n, 3, 7, 9]` says 9"
    );
}

tensor_fn! {
    m: f64[4, 6];
    as_matrix = reshape(m, [3, 8]);
    as_images = reshape(m * 2, [2, 3, 2, 2]);
    as_rows = flatten(reshape(m, [2, 3, 4]), 2);
}

#[test]
fn reshaped_outputs_keep_the_element_order() {
    let m = ndarray::Array2::from_shape_fn((4, 6), |(i, j)| (i * 6 + j) as f64);
    let a = as_matrix(m.view()).unwrap();
    assert_eq!(a.dim(), (3, 8));
    assert_eq!(
        a.iter().copied().collect::<Vec<_>>(),
        m.iter().copied().collect::<Vec<_>>()
    );
    let b = as_images(m.view()).unwrap();
    assert_eq!(b.dim(), (2, 3, 2, 2));
    assert_eq!(b[[1, 2, 1, 0]], 2.0 * (12.0 + 8.0 + 2.0));
    let c = as_rows(m.view()).unwrap();
    assert_eq!(c.dim(), (2, 12));
    assert_eq!(c[[1, 11]], 23.0);
}
