//! Writes MNIST as gzipped IDX files from the deeplearning.net `mnist.pkl.gz`: how the copy in
//! `data/mnist` was made.
//!
//! ```text
//! cargo run --release --example make_mnist_idx -- /path/to/mnist.pkl.gz data/mnist
//! ```
//!
//! The training set is the pickle's train split followed by its valid split (60 000 images),
//! the test set its test split (10 000). Each pixel of the pickle is `byte / 256` exactly; the
//! tool checks that every value times 256 is an integer in 0..=255 and writes that byte. The
//! gzip output is deterministic (best compression, no file name, no time stamp), so running
//! the tool again gives byte-identical files.

use std::error::Error;
use std::path::PathBuf;

use tensor_fn_runtime::data::idx;
use tensor_fn_runtime::data::mnist::{self, COLS, PIXELS, ROWS};
use tensor_fn_runtime::data::mnist::{TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS};

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [pkl, out] = &args[..] else {
        return Err("usage: make_mnist_idx MNIST_PKL_GZ OUT_DIR".into());
    };
    let out = PathBuf::from(out);
    std::fs::create_dir_all(&out)?;

    let (train, valid, test) = mnist::read_pkl_gz(pkl)?;
    println!(
        "{pkl}: train {}, valid {}, test {} images",
        train.len(),
        valid.len(),
        test.len()
    );
    for (parts, images_name, labels_name) in [
        (
            &[("train", train), ("valid", valid)][..],
            TRAIN_IMAGES,
            TRAIN_LABELS,
        ),
        (&[("test", test)][..], TEST_IMAGES, TEST_LABELS),
    ] {
        let n: usize = parts.iter().map(|(_, split)| split.len()).sum();
        let mut pixels = Vec::with_capacity(n * PIXELS);
        let mut labels = Vec::with_capacity(n);
        for (name, split) in parts {
            for (i, &v) in split.images.iter().enumerate() {
                pixels.push(pixel_byte(v).ok_or_else(|| {
                    let (image, pixel) = (i / PIXELS, i % PIXELS);
                    format!("{pkl}: {name} image {image}, pixel {pixel} is {v}, not k/256 for an integer k in 0..=255")
                })?);
            }
            labels.extend(split.labels.iter().copied());
        }
        let images_path = out.join(format!("{images_name}.gz"));
        let labels_path = out.join(format!("{labels_name}.gz"));
        idx::write_u8(&images_path, &[n, ROWS, COLS], &pixels)?;
        idx::write_u8(&labels_path, &[n], &labels)?;
        for path in [images_path, labels_path] {
            let size = std::fs::metadata(&path)?.len();
            println!("wrote {} ({size} bytes)", path.display());
        }
    }
    Ok(())
}

/// The byte `b` with `v == b / 256` exactly, if there is one.
fn pixel_byte(v: f32) -> Option<u8> {
    let scaled = v * 256.0; // exact: a power-of-two scale
    (scaled.fract() == 0.0 && (0.0..=255.0).contains(&scaled)).then_some(scaled as u8)
}
