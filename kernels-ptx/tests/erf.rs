//! erf against 7000 values of mpmath's erf at 60 digits, rounded to f64
//! (`tests/data/erf.txt`, written by `scripts/erf-coefficients.py --reference`): within 2 ulp
//! in f64 and in f32, odd, and exact at the special values.

use tensor_fn_kernels::scalar::{erf_f32, erf_f64};

/// (x, erf(x)) from the reference file.
fn reference() -> Vec<(f64, f64)> {
    include_str!("data/erf.txt")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (x, y) = l.split_once(' ').expect("two numbers per line");
            (x.parse().expect("x"), y.parse().expect("erf(x)"))
        })
        .collect()
}

/// The spacing of f64s at |w| (the gap to the next larger one).
fn ulp64(w: f64) -> f64 {
    let a = w.abs();
    f64::from_bits(a.to_bits() + 1) - a
}

/// The spacing of f32s at |w|.
fn ulp32(w: f64) -> f64 {
    let a = (w as f32).abs();
    (f32::from_bits(a.to_bits() + 1) - a) as f64
}

#[test]
fn erf_f64_is_within_2_ulp_of_mpmath() {
    let table = reference();
    assert!(table.len() > 7000, "{} reference values", table.len());
    let mut worst = (0.0, 0.0);
    for &(x, want) in &table {
        for (x, want) in [(x, want), (-x, -want)] {
            let u = (erf_f64(x) - want).abs() / ulp64(want);
            if u > worst.0 {
                worst = (u, x);
            }
        }
    }
    assert!(worst.0 <= 2.0, "worst {} ulp at x = {:e}", worst.0, worst.1);
    println!("erf f64: worst {:.3} ulp (at {:e})", worst.0, worst.1);
}

#[test]
fn erf_f32_is_within_2_ulp_of_mpmath() {
    // Every f32 in the table, and a dense sweep against the f64 erf (within 2 ulp of f64, so
    // exact at f32's precision). Errors against the exact value: 0.5 is correctly rounded.
    let mut worst = (0.0, 0.0f32);
    let mut check = |x: f32, want: f64| {
        let u = (erf_f32(x) as f64 - want).abs() / ulp32(want);
        if u > worst.0 {
            worst = (u, x);
        }
    };
    for (x, want) in reference() {
        let xf = x as f32;
        if xf as f64 == x {
            check(xf, want);
            check(-xf, -want);
        }
    }
    let n = 2_000_000;
    for i in 0..=n {
        let x = -5.0 + 10.0 * i as f32 / n as f32;
        check(x, erf_f64(x as f64));
    }
    for e in -149..0 {
        let x = 2f32.powi(e) * 1.37;
        check(x, erf_f64(x as f64));
    }
    assert!(worst.0 <= 2.0, "worst {} ulp at x = {:e}", worst.0, worst.1);
    println!("erf f32: worst {:.3} ulp (at {:e})", worst.0, worst.1);
}

#[test]
fn erf_special_values() {
    assert_eq!(erf_f64(0.0).to_bits(), 0.0f64.to_bits());
    assert_eq!(erf_f64(-0.0).to_bits(), (-0.0f64).to_bits());
    assert_eq!(erf_f32(-0.0).to_bits(), (-0.0f32).to_bits());
    assert_eq!(erf_f64(f64::INFINITY), 1.0);
    assert_eq!(erf_f64(f64::NEG_INFINITY), -1.0);
    assert_eq!(erf_f32(f32::NEG_INFINITY), -1.0);
    assert_eq!(erf_f32(10.0), 1.0);
    assert!(erf_f64(f64::NAN).is_nan() && erf_f32(f32::NAN).is_nan());
    // Odd, bit for bit.
    for x in [1e-300, 0.3, 0.99, 1.0, 1.5, 2.0, 3.7, 5.9] {
        assert_eq!(erf_f64(-x).to_bits(), (-erf_f64(x)).to_bits(), "{x}");
        let xf = x as f32;
        assert_eq!(erf_f32(-xf).to_bits(), (-erf_f32(xf)).to_bits(), "{x}");
    }
}
