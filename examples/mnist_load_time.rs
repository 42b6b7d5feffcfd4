//! How long loading MNIST takes: the 60 000 training images from the shipped gzipped IDX
//! files, the whole IDX directory, and the deeplearning.net `mnist.pkl.gz`.
//!
//! ```text
//! cargo run --release --example mnist_load_time [-- PATH_TO_MNIST_PKL_GZ]
//! ```
//!
//! The pickle defaults to `../shared/data/mnist.pkl.gz` next to the repository; it is skipped
//! with a note when absent. Each load runs a few times; the best and the first are printed.

use std::error::Error;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tensor_fn_runtime::data::mnist::{self, Mnist, TRAIN_IMAGES};

/// Runs `f` `runs` times; returns the first and the best time, and the last result.
fn time<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, Duration, T) {
    let start = Instant::now();
    let mut out = f();
    let first = start.elapsed();
    let mut best = first;
    for _ in 1..runs {
        let start = Instant::now();
        out = f();
        best = best.min(start.elapsed());
    }
    (first, best, out)
}

fn report(what: &str, first: Duration, best: Duration) {
    println!(
        "{what:<48} best {:>7.1} ms   first {:>7.1} ms",
        best.as_secs_f64() * 1e3,
        first.as_secs_f64() * 1e3
    );
}

fn main() -> Result<(), Box<dyn Error>> {
    let dir = mnist::default_dir();
    let train_images = dir.join(format!("{TRAIN_IMAGES}.gz"));

    let (first, best, images) = time(5, || mnist::read_idx_images(&train_images));
    let images = images?;
    report("IDX train images (60000 x 784, gzipped)", first, best);
    assert_eq!(images.shape(), &[60_000, 784]);

    let (first, best, m) = time(5, || Mnist::load_dir(&dir));
    let m = m?;
    report("IDX directory (train + test, images + labels)", first, best);

    let pkl = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../shared/data/mnist.pkl.gz"
            ))
        });
    if !pkl.exists() {
        println!("{}: not found; pickle timing skipped", pkl.display());
        return Ok(());
    }
    let (first, best, p) = time(3, || Mnist::load_pkl_gz(&pkl));
    let p = p?;
    report("mnist.pkl.gz (train + valid + test)", first, best);
    assert!(p == m, "the pickle and the IDX files disagree");
    Ok(())
}
