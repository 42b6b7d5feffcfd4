//! MNIST as shipped in `data/mnist`, and as the deeplearning.net `mnist.pkl.gz` it was made from.
//!
//! The pickle is read from `../shared/data/mnist.pkl.gz` next to the repository; where it is
//! absent, the tests that need it print a note and pass. The shipped IDX tests always run.
//! Fast bad-input tests on synthetic files live in `runtime/src/data/`.

extern crate tensor_fn_runtime;

use std::fs;
use std::path::{Path, PathBuf};

use tensor_fn_runtime::data::mnist::{self, Mnist, Split, PIXELS};
use tensor_fn_runtime::data::{DataError, DataErrorKind};

const SHIPPED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/data/mnist");
const PKL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data/mnist.pkl.gz");

/// The standard MNIST label counts per digit.
const TRAIN_COUNTS: [usize; 10] = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949];
const TEST_COUNTS: [usize; 10] = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009];

fn pkl() -> Option<&'static Path> {
    let path = Path::new(PKL);
    if path.exists() {
        Some(path)
    } else {
        eprintln!("note: {PKL} not found; skipping the test that needs it");
        None
    }
}

fn counts(labels: impl IntoIterator<Item = u8>) -> [usize; 10] {
    let mut counts = [0; 10];
    for label in labels {
        counts[label as usize] += 1;
    }
    counts
}

fn bits(images: impl IntoIterator<Item = f32>) -> Vec<u32> {
    images.into_iter().map(f32::to_bits).collect()
}

/// A scratch directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("tensor-fn-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// A copy of the shipped data, to damage.
    fn shipped_copy(tag: &str) -> TempDir {
        let tmp = TempDir::new(tag);
        for entry in fs::read_dir(SHIPPED).unwrap() {
            let entry = entry.unwrap();
            fs::copy(entry.path(), tmp.0.join(entry.file_name())).unwrap();
        }
        tmp
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn shipped_idx_is_standard_mnist() {
    let m = Mnist::load_dir(SHIPPED).unwrap();
    assert_eq!(m.train_images.shape(), &[60_000, PIXELS]);
    assert_eq!(m.test_images.shape(), &[10_000, PIXELS]);
    assert_eq!(counts(m.train_labels.iter().copied()), TRAIN_COUNTS);
    assert_eq!(counts(m.test_labels.iter().copied()), TEST_COUNTS);
    assert_eq!(
        m.train_labels.slice(ndarray::s![..10]).to_vec(),
        [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    );
    assert_eq!(
        m.test_labels.slice(ndarray::s![..10]).to_vec(),
        [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    );
    // Pixels are byte / 256: from 0 up to 255/256, and every one a multiple of 1/256.
    let max = m.train_images.iter().copied().fold(0.0f32, f32::max);
    assert_eq!(max, 255.0 / 256.0);
    assert!(m
        .test_images
        .iter()
        .all(|&p| (p * 256.0).fract() == 0.0 && p >= 0.0));
    let (train, valid) = m.seed_split();
    assert_eq!(
        (train.shape(), valid.shape()),
        (&[50_000, PIXELS][..], &[10_000, PIXELS][..])
    );
    assert_eq!(valid.row(0), m.train_images.row(50_000));
    let (train_labels, valid_labels) = m.seed_split_labels();
    assert_eq!((train_labels.len(), valid_labels.len()), (50_000, 10_000));
}

#[test]
fn default_location_is_the_shipped_copy() {
    let shipped = fs::canonicalize(SHIPPED).unwrap();
    assert_eq!(fs::canonicalize(mnist::default_dir()).unwrap(), shipped);
    if std::env::var_os(mnist::ENV_VAR).is_none() {
        assert_eq!(fs::canonicalize(mnist::resolve(None)).unwrap(), shipped);
        let m = Mnist::load(None).unwrap();
        assert_eq!(m.test_images.nrows(), 10_000);
    }
}

#[test]
fn pickle_and_idx_are_bit_identical() {
    let Some(pkl) = pkl() else { return };
    let idx = Mnist::load_dir(SHIPPED).unwrap();
    let (train, valid, test): (Split, Split, Split) = mnist::read_pkl_gz(pkl).unwrap();
    assert_eq!(
        (train.len(), valid.len(), test.len()),
        (50_000, 10_000, 10_000)
    );
    // pkl train + valid = IDX train, in order; pkl test = IDX test. Bit for bit.
    let (idx_train, idx_valid) = idx.seed_split();
    assert_eq!(
        bits(train.images.iter().copied()),
        bits(idx_train.iter().copied())
    );
    assert_eq!(
        bits(valid.images.iter().copied()),
        bits(idx_valid.iter().copied())
    );
    assert_eq!(
        bits(test.images.iter().copied()),
        bits(idx.test_images.iter().copied())
    );
    let (idx_train_labels, idx_valid_labels) = idx.seed_split_labels();
    assert_eq!(train.labels.view(), idx_train_labels);
    assert_eq!(valid.labels.view(), idx_valid_labels);
    assert_eq!(test.labels, idx.test_labels);
    // And the joined form through `load`.
    let joined = Mnist::load(Some(pkl)).unwrap();
    assert!(joined == idx);
}

#[test]
fn truncated_real_pickle_is_an_error() {
    let Some(pkl) = pkl() else { return };
    let tmp = TempDir::new("pkl-trunc");
    let path = tmp.0.join("mnist.pkl.gz");
    let bytes = fs::read(pkl).unwrap();
    for len in [0, 1, 2, 10, 100, 1 << 20] {
        fs::write(&path, &bytes[..len]).unwrap();
        let err = Mnist::load_pkl_gz(&path).unwrap_err();
        assert_eq!(err.path, path);
        let msg = err.to_string();
        assert!(msg.starts_with(&path.display().to_string()), "{msg}");
        match len {
            0 | 1 => assert!(msg.contains("(not a pickle; "), "{len}: {msg}"),
            _ => assert!(matches!(err.kind, DataErrorKind::Gzip(_)), "{len}: {msg}"),
        }
    }
}

#[test]
fn damaged_shipped_files_are_errors_naming_the_file() {
    let tmp = TempDir::shipped_copy("idx-damage");
    let labels = tmp.0.join("train-labels-idx1-ubyte.gz");
    let good = fs::read(&labels).unwrap();
    let expect_err = |what: &str| -> DataError {
        let err = Mnist::load_dir(&tmp.0).expect_err(what);
        assert_eq!(err.path, labels, "{what}: {err}");
        err
    };

    // Truncated: every 601st length, and the last few bytes (the gzip trailer).
    for len in (0..good.len())
        .step_by(601)
        .chain(good.len() - 9..good.len())
    {
        fs::write(&labels, &good[..len]).unwrap();
        expect_err(&format!("truncated to {len}"));
    }
    // A flipped bit in the compressed data: the gzip checksum catches it.
    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 0x10;
    fs::write(&labels, &flipped).unwrap();
    let err = expect_err("bit flip");
    assert!(matches!(err.kind, DataErrorKind::Gzip(_)), "{err}");
    // Garbage after the gzip signature.
    fs::write(&labels, [&[0x1f, 0x8b][..], &[0x55; 64]].concat()).unwrap();
    expect_err("gzip of garbage");
    // Raw garbage with the right name.
    fs::write(&labels, b"these are not the labels you are looking for").unwrap();
    let err = expect_err("garbage");
    assert!(
        err.to_string().contains("not an IDX file: magic number"),
        "{err}"
    );
    // A valid label file of another length than the training images.
    let eleven = [0, 0, 8, 1, 0, 0, 0, 11, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1];
    fs::write(&labels, eleven).unwrap();
    let err = expect_err("11 labels");
    assert!(
        err.to_string()
            .contains("holds 11 labels, but the image file"),
        "{err}"
    );
    assert!(err.to_string().contains("holds 60000 images"), "{err}");
    // A header promising more labels than the file holds.
    let lying = [0, 0, 8, 1, 0, 0, 0xea, 0x60, 1, 2, 3];
    fs::write(&labels, lying).unwrap();
    let err = expect_err("lying header");
    assert!(
        err.to_string()
            .contains("promise 60000 bytes of data, but truncated"),
        "{err}"
    );
    // Missing.
    fs::remove_file(&labels).unwrap();
    let err = Mnist::load_dir(&tmp.0).unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert_eq!(err.path, tmp.0);
}
