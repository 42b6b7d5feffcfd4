//! MNIST: 70 000 handwritten digits of 28x28 pixels, 60 000 for training and 10 000 for test.
//!
//! ```no_run
//! use tensor_fn_runtime::data::mnist::Mnist;
//!
//! let mnist = Mnist::load(None)?; // TENSOR_FN_MNIST, else the copy shipped in data/mnist
//! assert_eq!(mnist.train_images.shape(), &[60_000, 784]);
//! let (train, valid) = mnist.seed_split(); // 50 000 + 10 000, as in the deeplearning.net pickle
//! # Ok::<(), tensor_fn_runtime::data::DataError>(())
//! ```
//!
//! Two sources are read, with identical results:
//!
//! - A directory of IDX files, LeCun's distribution format, gzipped or raw:
//!   `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`,
//!   `t10k-labels-idx1-ubyte`, each optionally ending in `.gz` (and `.idx` may be written for
//!   `-idx`, as some mirrors do). This is what `data/mnist` in the repository holds.
//! - The classic `mnist.pkl.gz` of the deeplearning.net tutorials: a gzipped Python 2 pickle
//!   of `(train, valid, test)`, each `(float32 images [N, 784], int64 labels [N])`, where
//!   train + valid are the 60 000 IDX training images in order.
//!
//! Pixels are `byte / 256` as `f32`, in `[0, 255/256]`: exactly the values the pickle stores,
//! so both sources give bit-identical arrays. Images are rows of 784 pixels, row-major (pixel
//! `(r, c)` of an image is column `28 * r + c`). Labels are digits `0..=9`.
//!
//! Every failure is a [`DataError`] naming the file and what is wrong with it; see
//! [`crate::data`] for the guarantees on bad input.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};

use ndarray::{s, Array1, Array2, ArrayView1, ArrayView2};

use super::pickle::{self, NdArray, Pickle};
use super::{gunzip, idx, is_gzip, read_file, DataError, DataErrorKind};

/// Height of an image in pixels.
pub const ROWS: usize = 28;
/// Width of an image in pixels.
pub const COLS: usize = 28;
/// Pixels per image: the number of columns of the image arrays.
pub const PIXELS: usize = ROWS * COLS;
/// Images in the standard training set (IDX train; pickle train + valid).
pub const TRAIN_LEN: usize = 60_000;
/// Images in the standard test set.
pub const TEST_LEN: usize = 10_000;
/// Images in the deeplearning.net training split; the rest of the training set is validation.
pub const SEED_TRAIN_LEN: usize = 50_000;
/// Environment variable naming the data when no path is given: a directory of IDX files, or
/// a `mnist.pkl.gz` file.
pub const ENV_VAR: &str = "TENSOR_FN_MNIST";
/// The most bytes a pickle may decompress to (1 GiB); MNIST's is 220 MB.
pub const MAX_PICKLE_BYTES: u64 = 1 << 30;

/// File names in an IDX directory, without the optional `.gz`.
pub const TRAIN_IMAGES: &str = "train-images-idx3-ubyte";
/// See [`TRAIN_IMAGES`].
pub const TRAIN_LABELS: &str = "train-labels-idx1-ubyte";
/// See [`TRAIN_IMAGES`].
pub const TEST_IMAGES: &str = "t10k-images-idx3-ubyte";
/// See [`TRAIN_IMAGES`].
pub const TEST_LABELS: &str = "t10k-labels-idx1-ubyte";

/// Images and their labels: `images` is `[n, 784]`, `labels` is `[n]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    /// One image per row, 784 pixels in `[0, 255/256]`.
    pub images: Array2<f32>,
    /// The digit shown by each image, `0..=9`.
    pub labels: Array1<u8>,
}

impl Split {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// The MNIST training and test sets.
///
/// Invariants (checked when loading): `train_images` is `[train_labels.len(), 784]`,
/// `test_images` is `[test_labels.len(), 784]`, pixels are in `[0, 1]`, labels are `0..=9`.
/// The standard files give 60 000 training and 10 000 test images.
#[derive(Debug, Clone, PartialEq)]
pub struct Mnist {
    /// `[60000, 784]`: one image per row, pixels `byte / 256`.
    pub train_images: Array2<f32>,
    /// `[60000]`: digits `0..=9`.
    pub train_labels: Array1<u8>,
    /// `[10000, 784]`.
    pub test_images: Array2<f32>,
    /// `[10000]`.
    pub test_labels: Array1<u8>,
}

/// Where the copy of MNIST shipped with tensor-fn lives: `data/mnist` at the root of the
/// repository, found from this crate's manifest directory
/// (`concat!(env!("CARGO_MANIFEST_DIR"), "/../data/mnist")`).
///
/// This works from a git checkout of tensor-fn (or a path/git dependency on it). A copy of the
/// crate from crates.io has no `data/` next to it: set [`ENV_VAR`] or pass a path instead.
pub fn default_dir() -> PathBuf {
    let runtime = Path::new(env!("CARGO_MANIFEST_DIR"));
    match runtime.parent() {
        Some(root) => root.join("data").join("mnist"),
        None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../data/mnist")),
    }
}

/// The path [`Mnist::load`] reads: `explicit` if given; else the value of [`ENV_VAR`] if it is
/// set and not empty; else [`default_dir`].
pub fn resolve(explicit: Option<&Path>) -> PathBuf {
    resolve_with(explicit, std::env::var_os(ENV_VAR)).0
}

/// Where a path came from, for the not-found message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Explicit,
    Env,
    Default,
}

fn resolve_with(explicit: Option<&Path>, env: Option<OsString>) -> (PathBuf, Origin) {
    match (explicit, env) {
        (Some(path), _) => (path.to_path_buf(), Origin::Explicit),
        (None, Some(env)) if !env.is_empty() => (PathBuf::from(env), Origin::Env),
        (None, _) => (default_dir(), Origin::Default),
    }
}

impl Mnist {
    /// Loads MNIST from `path`, or from where [`resolve`] says when `path` is `None`
    /// ([`ENV_VAR`], else the shipped `data/mnist`). A directory is read as IDX files
    /// ([`load_dir`](Self::load_dir)); a file as a pickle ([`load_pkl_gz`](Self::load_pkl_gz)).
    pub fn load(path: Option<&Path>) -> Result<Mnist, DataError> {
        let (path, origin) = resolve_with(path, std::env::var_os(ENV_VAR));
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_dir() => Mnist::load_dir(&path),
            Ok(_) => Mnist::load_pkl_gz(&path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let reason = match origin {
                    Origin::Explicit => "no such file or directory".to_string(),
                    Origin::Env => format!("no such file or directory (the value of {ENV_VAR})"),
                    Origin::Default => format!(
                        "no such directory: the MNIST shipped with tensor-fn is in data/mnist of \
                         its git checkout; elsewhere set {ENV_VAR} to a directory of IDX files \
                         or to mnist.pkl.gz"
                    ),
                };
                Err(DataError::new(path, DataErrorKind::NotFound(reason)))
            }
            Err(e) => Err(DataError::new(path, DataErrorKind::Io(e))),
        }
    }

    /// [`Mnist::load(None)`](Self::load): [`ENV_VAR`], else the shipped `data/mnist`.
    pub fn load_default() -> Result<Mnist, DataError> {
        Mnist::load(None)
    }

    /// Loads the four IDX files from `dir` (see the [module docs](self) for their names; each
    /// may be gzipped). Checks that images are 28x28, that each image file has as many
    /// images as its label file has labels, and that labels are `0..=9`.
    pub fn load_dir(dir: impl AsRef<Path>) -> Result<Mnist, DataError> {
        let dir = dir.as_ref();
        match std::fs::metadata(dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(DataError::format(
                    dir,
                    "not a directory (for mnist.pkl.gz use Mnist::load_pkl_gz or Mnist::load)",
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(DataError::new(
                    dir,
                    DataErrorKind::NotFound("no such directory".into()),
                ))
            }
            Err(e) => return Err(DataError::new(dir, DataErrorKind::Io(e))),
        }
        // The test set loads on a second thread while this one does the (6x larger) training
        // set; if no thread can be started, it loads afterwards on this one.
        let (train, test) = std::thread::scope(|scope| {
            let test = std::thread::Builder::new()
                .name("mnist-test-set".into())
                .spawn_scoped(scope, || load_idx_pair(dir, TEST_IMAGES, TEST_LABELS));
            let train = load_idx_pair(dir, TRAIN_IMAGES, TRAIN_LABELS);
            let test = match test {
                Ok(handle) => handle
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                Err(_) => load_idx_pair(dir, TEST_IMAGES, TEST_LABELS),
            };
            (train, test)
        });
        Ok(Mnist::from_splits(train?, test?))
    }

    /// Loads the deeplearning.net `mnist.pkl.gz` (gzipped or not); its train and valid splits
    /// are joined, in that order, into the 60 000 training images. Use [`read_pkl_gz`] to keep
    /// the three splits apart.
    pub fn load_pkl_gz(path: impl AsRef<Path>) -> Result<Mnist, DataError> {
        let path = path.as_ref();
        let bytes = read_pickle_bytes(path)?;
        Mnist::from_pickle(path, &bytes)
    }

    /// The Mnist in a decompressed pickle; `path` is for messages.
    fn from_pickle(path: &Path, bytes: &[u8]) -> Result<Mnist, DataError> {
        let [train, valid, test] = pkl_splits(path, bytes)?;
        let train = join_splits(path, &[train, valid])?;
        let test = join_splits(path, &[test])?;
        Ok(Mnist::from_splits(train, test))
    }

    fn from_splits(train: Split, test: Split) -> Mnist {
        Mnist {
            train_images: train.images,
            train_labels: train.labels,
            test_images: test.images,
            test_labels: test.labels,
        }
    }

    /// The seed's split of the training images: the first 50 000 for training and the rest
    /// (the last 10 000 of the standard set) for validation, exactly the `train` and `valid`
    /// sets of `mnist.pkl.gz`. Views, no copies. With fewer than 50 000 training images, all
    /// of them are in the first view and the second is empty.
    pub fn seed_split(&self) -> (ArrayView2<'_, f32>, ArrayView2<'_, f32>) {
        let n = SEED_TRAIN_LEN.min(self.train_images.nrows());
        (
            self.train_images.slice(s![..n, ..]),
            self.train_images.slice(s![n.., ..]),
        )
    }

    /// The labels of [`seed_split`](Self::seed_split)'s two parts.
    pub fn seed_split_labels(&self) -> (ArrayView1<'_, u8>, ArrayView1<'_, u8>) {
        let n = SEED_TRAIN_LEN.min(self.train_labels.len());
        (
            self.train_labels.slice(s![..n]),
            self.train_labels.slice(s![n..]),
        )
    }
}

/// Reads the deeplearning.net `mnist.pkl.gz` (gzipped or not) as its three splits
/// `(train, valid, test)`: 50 000, 10 000 and 10 000 images.
///
/// Checks the layout: a tuple of three `(images, labels)` pairs of numpy arrays, images
/// `float32` (`<f4`) of shape `[n, 784]` with pixels in `[0, 1]`, labels `int64` (`<i8`, or
/// `<i4`) of shape `[n]` with values `0..=9`, and data of exactly the length the shape needs.
pub fn read_pkl_gz(path: impl AsRef<Path>) -> Result<(Split, Split, Split), DataError> {
    let path = path.as_ref();
    let bytes = read_pickle_bytes(path)?;
    let [train, valid, test] = pkl_splits(path, &bytes)?;
    Ok((
        join_splits(path, &[train])?,
        join_splits(path, &[valid])?,
        join_splits(path, &[test])?,
    ))
}

/// Reads an IDX image file (gzipped or raw) of 28x28 images as `[n, 784]` pixels `byte / 256`.
pub fn read_idx_images(path: impl AsRef<Path>) -> Result<Array2<f32>, DataError> {
    let path = path.as_ref();
    let file = read_file(path)?;
    let check = |dims: &[usize]| {
        match dims {
        [_, ROWS, COLS] => Ok(()),
        _ => Err(DataErrorKind::Format(format!(
            "expected images of {ROWS}x{COLS} pixels (dims [n, {ROWS}, {COLS}]), found dims {dims:?}"
        ))),
    }
    };
    // Decompress and convert chunk by chunk, straight into the pixel vector: no intermediate
    // copy of the bytes.
    let mut pixels = Vec::new();
    let sink = |bytes: &[u8]| pixels.extend(bytes.iter().map(|&b| pixel(b)));
    let dims = idx::decode_u8_with(&file, check, sink).map_err(|e| DataError::new(path, e))?;
    to_array2(path, dims[0], pixels)
}

/// Reads an IDX label file (gzipped or raw): dims `[n]`, values `0..=9`.
pub fn read_idx_labels(path: impl AsRef<Path>) -> Result<Array1<u8>, DataError> {
    let path = path.as_ref();
    let labels = idx::read_u8(path)?;
    if labels.dims().len() != 1 {
        return Err(DataError::format(
            path,
            format!("expected labels (dims [n]), found dims {:?}", labels.dims()),
        ));
    }
    let labels = labels.into_data();
    check_labels(path, labels.iter().map(|&l| i64::from(l)))?;
    Ok(Array1::from(labels))
}

/// Loads one IDX image file and its label file from `dir`, and checks their counts agree.
fn load_idx_pair(dir: &Path, images_name: &str, labels_name: &str) -> Result<Split, DataError> {
    let images_path = find_idx(dir, images_name)?;
    let labels_path = find_idx(dir, labels_name)?;
    // Labels first: the small file, so a bad one is reported without decoding the images.
    let labels = read_idx_labels(&labels_path)?;
    let images = read_idx_images(&images_path)?;
    if images.nrows() != labels.len() {
        return Err(DataError::format(
            &labels_path,
            format!(
                "holds {} labels, but the image file {} holds {} images",
                labels.len(),
                images_path.display(),
                images.nrows()
            ),
        ));
    }
    Ok(Split { images, labels })
}

/// The first of `name`, `name.gz` (and the `.idx` spellings) that exists in `dir`.
fn find_idx(dir: &Path, name: &str) -> Result<PathBuf, DataError> {
    let dotted = name.replacen("-idx", ".idx", 1);
    let candidates = [
        name.to_string(),
        format!("{name}.gz"),
        dotted.clone(),
        format!("{dotted}.gz"),
    ];
    candidates
        .iter()
        .map(|c| dir.join(c))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            DataError::new(
                dir,
                DataErrorKind::NotFound(format!("no `{name}` or `{name}.gz` in this directory")),
            )
        })
}

/// `byte / 256`: exact in f32 (a power-of-two scale), and equal to the values stored in
/// `mnist.pkl.gz`. Inlined into a tight loop the compiler vectorises.
#[inline]
fn pixel(byte: u8) -> f32 {
    const SCALE: f32 = 1.0 / 256.0;
    f32::from(byte) * SCALE
}

fn to_array2(path: &Path, n: usize, pixels: Vec<f32>) -> Result<Array2<f32>, DataError> {
    Array2::from_shape_vec((n, PIXELS), pixels)
        .map_err(|e| DataError::format(path, format!("internal error: {e}")))
}

/// Checks labels are digits; reports the first that is not.
fn check_labels(path: &Path, labels: impl Iterator<Item = i64>) -> Result<(), DataError> {
    for (i, label) in labels.enumerate() {
        if !(0..=9).contains(&label) {
            return Err(DataError::format(
                path,
                format!("label {i} is {label}; MNIST labels are 0 to 9"),
            ));
        }
    }
    Ok(())
}

/// The decompressed pickle: gunzipped if it starts with the gzip magic, else as is.
fn read_pickle_bytes(path: &Path) -> Result<Vec<u8>, DataError> {
    let file = read_file(path)?;
    if !is_gzip(&file) {
        if file.len() as u64 > MAX_PICKLE_BYTES {
            return Err(DataError::format(
                path,
                "pickle larger than 1 GiB; not MNIST",
            ));
        }
        return Ok(file);
    }
    gunzip(&file, MAX_PICKLE_BYTES).map_err(|kind| DataError::new(path, kind))
}

/// One split of the pickle, checked but not yet converted: raw little-endian data.
struct RawSplit<'a> {
    n: usize,
    images: &'a [u8],
    labels: &'a [u8],
    label_size: usize,
}

/// Runs the pickle and checks it is `(train, valid, test)` of `(images, labels)`.
fn pkl_splits<'a>(path: &Path, bytes: &'a [u8]) -> Result<[RawSplit<'a>; 3], DataError> {
    let pickle = pickle::parse(bytes).map_err(|e| {
        let hint = if e.offset == 0 && bytes.first() != Some(&0x80) {
            " (not a pickle; for IDX files pass their directory)"
        } else {
            ""
        };
        DataError::format(path, format!("{e}{hint}"))
    })?;
    let layout = |what: &str, msg: String| {
        DataError::format(path, format!("not the mnist.pkl.gz layout: {what}: {msg}"))
    };
    let top = pickle
        .tuple(pickle.root(), 3)
        .map_err(|e| layout("the pickled object (train, valid, test)", e))?;
    let split = |i: usize, name: &str| {
        let pair = pickle
            .tuple(top[i], 2)
            .map_err(|e| layout(&format!("{name} (images, labels)"), e))?;
        raw_split(&pickle, pair, name).map_err(|(what, msg)| layout(&what, msg))
    };
    Ok([split(0, "train")?, split(1, "valid")?, split(2, "test")?])
}

fn raw_split<'a>(
    pickle: &Pickle<'a>,
    pair: &[pickle::Id],
    name: &str,
) -> Result<RawSplit<'a>, (String, String)> {
    let images_what = format!("{name} images");
    let labels_what = format!("{name} labels");
    let images: NdArray<'a> = pickle
        .ndarray(pair[0])
        .map_err(|e| (images_what.clone(), e))?;
    let labels: NdArray<'a> = pickle
        .ndarray(pair[1])
        .map_err(|e| (labels_what.clone(), e))?;
    if images.descr != "<f4" {
        let msg = format!("expected dtype <f4 (float32), found {}", images.descr);
        return Err((images_what, msg));
    }
    let n = match images.shape[..] {
        [n, PIXELS] => n,
        _ => {
            let msg = format!("expected shape [n, {PIXELS}], found {:?}", images.shape);
            return Err((images_what, msg));
        }
    };
    if images.fortran_order && n > 1 {
        return Err((
            images_what,
            "Fortran (column-major) order is not supported".into(),
        ));
    }
    let label_size = match labels.descr.as_str() {
        "<i8" => 8,
        "<i4" => 4,
        other => {
            let msg = format!("expected dtype <i8 (int64), found {other}");
            return Err((labels_what, msg));
        }
    };
    if labels.shape != [n] {
        let msg = format!(
            "expected shape [{n}] like the images, found {:?}",
            labels.shape
        );
        return Err((labels_what, msg));
    }
    Ok(RawSplit {
        n,
        images: images.data,
        labels: labels.data,
        label_size,
    })
}

/// Converts and concatenates pickle splits: pixels from little-endian f32 (checked to lie in
/// `[0, 1]`), labels from little-endian i64/i32 (checked to be `0..=9`).
fn join_splits(path: &Path, parts: &[RawSplit<'_>]) -> Result<Split, DataError> {
    let n: usize = parts.iter().map(|p| p.n).sum();
    let mut pixels = Vec::with_capacity(n * PIXELS);
    let mut labels = Vec::with_capacity(n);
    for part in parts {
        let start = pixels.len();
        pixels.extend(
            part.images
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        );
        if let Some(i) = pixels[start..]
            .iter()
            .position(|p| !(0.0..=1.0).contains(p))
        {
            return Err(DataError::format(
                path,
                format!(
                    "pixel {} of image {} is {}; expected a value in [0, 1]",
                    i % PIXELS,
                    (start + i) / PIXELS,
                    pixels[start + i]
                ),
            ));
        }
        let wide = part.labels.chunks_exact(part.label_size).map(|b| {
            let mut le = [0u8; 8];
            le[..b.len()].copy_from_slice(b);
            // Sign-extend an i32 label.
            if b.len() == 4 && b[3] & 0x80 != 0 {
                le[4..].fill(0xff);
            }
            i64::from_le_bytes(le)
        });
        check_labels(path, wide.clone())?;
        labels.extend(wide.map(|l| l as u8));
    }
    Ok(Split {
        images: to_array2(path, n, pixels)?,
        labels: Array1::from(labels),
    })
}

#[cfg(test)]
mod tests {
    use super::super::pickle::tests::Writer;
    use super::super::tests::gzip;
    use super::*;
    use std::collections::HashMap;
    use std::fs;

    /// A scratch directory removed on drop.
    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let dir =
                std::env::temp_dir().join(format!("tensor-fn-mnist-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// `n` synthetic images: pixel j of image i is `(i * 7 + j) % 256`; label `i % 10`.
    fn synthetic(n: usize) -> (Vec<u8>, Vec<u8>) {
        let pixels = (0..n * PIXELS)
            .map(|k| ((k / PIXELS) * 7 + k % PIXELS) as u8)
            .collect();
        let labels = (0..n).map(|i| (i % 10) as u8).collect();
        (pixels, labels)
    }

    fn write_dir(dir: &Path, n_train: usize, n_test: usize, gz: bool) {
        let ext = if gz { ".gz" } else { "" };
        for (images, labels, n) in [
            (TRAIN_IMAGES, TRAIN_LABELS, n_train),
            (TEST_IMAGES, TEST_LABELS, n_test),
        ] {
            let (pixels, digits) = synthetic(n);
            idx::write_u8(
                dir.join(format!("{images}{ext}")),
                &[n, ROWS, COLS],
                &pixels,
            )
            .unwrap();
            idx::write_u8(dir.join(format!("{labels}{ext}")), &[n], &digits).unwrap();
        }
    }

    /// A pickle in the mnist.pkl.gz layout holding `synthetic` images: `sizes` per split.
    fn synthetic_pickle(sizes: [usize; 3]) -> Vec<u8> {
        pickle_with_counts(sizes.map(|n| (n, n)))
    }

    /// Like `synthetic_pickle`, with a count of images and a count of labels per split.
    fn pickle_with_counts(sizes: [(usize, usize); 3]) -> Vec<u8> {
        let total = sizes.iter().map(|&(i, l)| i.max(l)).sum();
        let (pixels, labels) = synthetic(total);
        let mut w = Writer::default();
        let mut dtypes = HashMap::new();
        w.op(&[0x80, 2]);
        let mut start = 0;
        for (split, (n, n_labels)) in sizes.into_iter().enumerate() {
            if split == 2 {
                start = 0; // test images restart, as in `write_dir`
            }
            let floats: Vec<u8> = pixels[start * PIXELS..(start + n) * PIXELS]
                .iter()
                .flat_map(|&b| (f32::from(b) / 256.0).to_le_bytes())
                .collect();
            let longs: Vec<u8> = labels[start..start + n_labels]
                .iter()
                .flat_map(|&l| i64::from(l).to_le_bytes())
                .collect();
            w.ndarray("f4", &[n, PIXELS], &floats, &mut dtypes);
            w.ndarray("i8", &[n_labels], &longs, &mut dtypes);
            w.op(&[0x86]);
            start += n.max(n_labels);
        }
        w.op(&[0x87, b'.']);
        w.out
    }

    fn err_text(r: Result<Mnist, DataError>) -> String {
        r.expect_err("expected an error").to_string()
    }

    #[test]
    fn dir_and_pickle_agree_bitwise() {
        let tmp = TempDir::new("agree");
        write_dir(&tmp.0, 5, 3, true);
        let pkl = tmp.0.join("mnist.pkl.gz");
        fs::write(&pkl, gzip(&synthetic_pickle([3, 2, 3]))).unwrap();
        let a = Mnist::load_dir(&tmp.0).unwrap();
        let b = Mnist::load_pkl_gz(&pkl).unwrap();
        assert_eq!(a.train_images.shape(), &[5, PIXELS]);
        assert_eq!(a.test_labels.to_vec(), vec![0, 1, 2]);
        let bits = |x: &Array2<f32>| x.iter().map(|p| p.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a.train_images), bits(&b.train_images));
        assert_eq!(bits(&a.test_images), bits(&b.test_images));
        assert_eq!(a, b);
        assert_eq!(a.train_images[[1, 2]], 9.0 / 256.0);
        // `load` tells a directory from a file.
        assert_eq!(Mnist::load(Some(&tmp.0)).unwrap(), a);
        assert_eq!(Mnist::load(Some(&pkl)).unwrap(), a);
        // The three splits, kept apart.
        let (train, valid, test) = read_pkl_gz(&pkl).unwrap();
        assert_eq!((train.len(), valid.len(), test.len()), (3, 2, 3));
        assert_eq!(valid.labels.to_vec(), vec![3, 4]);
        // An uncompressed pickle works too.
        let raw = tmp.0.join("mnist.pkl");
        fs::write(&raw, synthetic_pickle([3, 2, 3])).unwrap();
        assert_eq!(Mnist::load_pkl_gz(&raw).unwrap(), a);
    }

    #[test]
    fn raw_and_dotted_idx_names() {
        let tmp = TempDir::new("raw");
        write_dir(&tmp.0, 4, 2, false);
        fs::rename(
            tmp.0.join(TEST_IMAGES),
            tmp.0.join("t10k-images.idx3-ubyte"),
        )
        .unwrap();
        let m = Mnist::load_dir(&tmp.0).unwrap();
        assert_eq!(m.test_images.nrows(), 2);
        assert_eq!(m.train_images[[3, 0]], 21.0 / 256.0);
    }

    #[test]
    fn seed_split_views() {
        let tmp = TempDir::new("seed");
        write_dir(&tmp.0, 3, 1, true);
        let m = Mnist::load_dir(&tmp.0).unwrap();
        let (train, valid) = m.seed_split();
        assert_eq!((train.nrows(), valid.nrows()), (3, 0));
        let (tl, vl) = m.seed_split_labels();
        assert_eq!((tl.len(), vl.len()), (3, 0));
    }

    #[test]
    fn missing_files_and_dirs() {
        let tmp = TempDir::new("missing");
        let err = Mnist::load_dir(tmp.0.join("nope")).unwrap_err();
        assert!(err.is_not_found());
        assert!(
            err.to_string().ends_with("nope: no such directory"),
            "{err}"
        );
        let err = Mnist::load_dir(&tmp.0).unwrap_err();
        assert!(err.is_not_found());
        assert!(
            err.to_string().ends_with(
                "no `train-images-idx3-ubyte` or `train-images-idx3-ubyte.gz` in this directory"
            ),
            "{err}"
        );
        let err = Mnist::load(Some(&tmp.0.join("nope.pkl.gz"))).unwrap_err();
        assert!(err.is_not_found(), "{err}");
        let err = Mnist::load_pkl_gz(tmp.0.join("nope.pkl.gz")).unwrap_err();
        assert!(err.is_not_found(), "{err}");
        // load_dir on a file
        let file = tmp.0.join("f");
        fs::write(&file, b"x").unwrap();
        assert!(err_text(Mnist::load_dir(&file)).contains("not a directory"));
    }

    #[test]
    fn image_and_label_counts_must_agree() {
        let tmp = TempDir::new("pair");
        write_dir(&tmp.0, 4, 2, true);
        let (_, labels) = synthetic(3);
        let labels_path = tmp.0.join(format!("{TRAIN_LABELS}.gz"));
        idx::write_u8(&labels_path, &[3], &labels).unwrap();
        let msg = err_text(Mnist::load_dir(&tmp.0));
        assert!(msg.starts_with(&labels_path.display().to_string()), "{msg}");
        assert!(msg.contains("holds 3 labels, but the image file"), "{msg}");
        assert!(msg.contains("holds 4 images"), "{msg}");
    }

    #[test]
    fn wrong_dims_and_labels() {
        let tmp = TempDir::new("dims");
        write_dir(&tmp.0, 2, 2, true);
        let images = tmp.0.join(format!("{TEST_IMAGES}.gz"));
        idx::write_u8(&images, &[2, 28, 27], &vec![0; 2 * 28 * 27]).unwrap();
        let msg = err_text(Mnist::load_dir(&tmp.0));
        assert!(msg.contains("found dims [2, 28, 27]"), "{msg}");
        write_dir(&tmp.0, 2, 2, true);
        idx::write_u8(tmp.0.join(format!("{TEST_LABELS}.gz")), &[2], &[3, 10]).unwrap();
        let msg = err_text(Mnist::load_dir(&tmp.0));
        assert!(
            msg.ends_with("label 1 is 10; MNIST labels are 0 to 9"),
            "{msg}"
        );
        idx::write_u8(tmp.0.join(format!("{TEST_LABELS}.gz")), &[1, 2], &[3, 1]).unwrap();
        let msg = err_text(Mnist::load_dir(&tmp.0));
        assert!(
            msg.ends_with("expected labels (dims [n]), found dims [1, 2]"),
            "{msg}"
        );
    }

    #[test]
    fn truncated_idx_file_names_the_file() {
        let tmp = TempDir::new("trunc");
        write_dir(&tmp.0, 2, 2, true);
        let path = tmp.0.join(format!("{TRAIN_IMAGES}.gz"));
        let bytes = fs::read(&path).unwrap();
        fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let msg = err_text(Mnist::load(Some(&tmp.0)));
        assert!(
            msg.starts_with(&format!(
                "{}: corrupt or truncated gzip data",
                path.display()
            )),
            "{msg}"
        );
    }

    /// Replaces the first occurrence of `from` in `bytes` by `to` (same length).
    fn patched(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
        assert_eq!(from.len(), to.len());
        let i = bytes.windows(from.len()).position(|w| w == from).unwrap();
        let mut out = bytes.to_vec();
        out[i..i + to.len()].copy_from_slice(to);
        out
    }

    /// The error for a (decompressed) pickle, without the path prefix.
    fn pickle_err(bytes: Vec<u8>) -> String {
        let msg = err_text(Mnist::from_pickle(Path::new("t.pkl"), &bytes));
        msg.strip_prefix("t.pkl: ")
            .expect("message names the file")
            .to_string()
    }

    #[test]
    fn pickle_layout_errors() {
        // Train labels are 0, 1, 2, 3; the first pixels of train image 0 are 0, 1/256.
        let good = synthetic_pickle([4, 1, 1]);
        assert!(Mnist::from_pickle(Path::new("t.pkl"), &good).is_ok());
        assert_eq!(
            pickle_err(patched(&good, b"U\x02f4", b"U\x02i4")),
            "not the mnist.pkl.gz layout: train images: expected dtype <f4 (float32), found <i4"
        );
        assert_eq!(
            pickle_err(patched(&good, b"U\x02i8", b"U\x02u8")),
            "not the mnist.pkl.gz layout: train labels: expected dtype <i8 (int64), found <u8"
        );
        assert_eq!(
            pickle_err(patched(&good, b"U\x01<", b"U\x01>")),
            "not the mnist.pkl.gz layout: train images: expected dtype <f4 (float32), found >f4"
        );
        // Shape [4, 784] -> [4, 392]: the data length no longer matches.
        assert_eq!(
            pickle_err(patched(&good, b"K\x04M\x10\x03", b"K\x04M\x88\x01")),
            "not the mnist.pkl.gz layout: train images: array of shape [4, 392] and dtype <f4 \
             needs 6272 bytes of data, found 12544"
        );
        // Labels of another count than the images.
        assert_eq!(
            pickle_err(pickle_with_counts([(4, 4), (2, 1), (1, 1)])),
            "not the mnist.pkl.gz layout: valid labels: expected shape [2] like the images, \
             found [1]"
        );
        // The top level is a 2-tuple.
        let mut two = good.clone();
        let n = two.len();
        two[n - 2] = 0x86;
        assert_eq!(
            pickle_err(two),
            format!(
                "pickle: STOP: values or MARKs are left on the stack at STOP (at offset {})",
                n - 1
            )
        );
        let top_pair = [&[0x80, 2, b'N', b'N', 0x86, b'.'][..]].concat();
        assert_eq!(
            pickle_err(top_pair),
            "not the mnist.pkl.gz layout: the pickled object (train, valid, test): \
             expected a tuple of 3, found a tuple of 2"
        );
        // Not a pickle at all (an IDX file).
        let mut idx_file = Vec::new();
        idx::encode_u8(&mut idx_file, &[2], &[1, 2]).unwrap();
        let msg = pickle_err(idx_file);
        assert!(msg.contains("for IDX files pass their directory"), "{msg}");
        // A label of 12.
        let msg = pickle_err(patched(
            &good,
            &[2, 0, 0, 0, 0, 0, 0, 0, 3],
            &[12, 0, 0, 0, 0, 0, 0, 0, 3],
        ));
        assert_eq!(msg, "label 2 is 12; MNIST labels are 0 to 9");
        // A NaN pixel.
        let msg = pickle_err(patched(
            &good,
            &[0, 0, 0, 0, 0, 0, 0x80, 0x3b],
            &[0, 0, 0xc0, 0x7f, 0, 0, 0x80, 0x3b],
        ));
        assert_eq!(msg, "pixel 0 of image 0 is NaN; expected a value in [0, 1]");
    }

    #[test]
    fn pickle_truncations_and_bit_flips_never_panic() {
        let good = synthetic_pickle([1, 1, 1]);
        let path = Path::new("mem.pkl");
        // Every truncation: an error naming an offset, never a panic.
        for len in 0..good.len() {
            let r = pkl_splits(path, &good[..len]);
            assert!(r.is_err(), "truncated to {len} bytes was accepted");
        }
        // Random bit flips in the pickle stream (the gzip CRC would catch them in a file).
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut accepted = 0;
        for _ in 0..3000 {
            let mut bytes = good.clone();
            let i = (next() % bytes.len() as u64) as usize;
            bytes[i] ^= 1 << (next() % 8);
            if let Ok([a, b, c]) = pkl_splits(path, &bytes) {
                accepted += 1;
                for split in [a, b, c] {
                    if let Ok(s) = join_splits(path, &[split]) {
                        assert_eq!(s.images.nrows(), s.labels.len());
                    }
                }
            }
        }
        // Flips inside the pixel data keep the layout intact; most others break it.
        assert!(accepted < 3000);
    }

    #[test]
    fn resolve_order() {
        let explicit = Path::new("/x/mnist.pkl.gz");
        let env = Some(OsString::from("/from/env"));
        assert_eq!(
            resolve_with(Some(explicit), env.clone()),
            (explicit.to_path_buf(), Origin::Explicit)
        );
        assert_eq!(
            resolve_with(None, env),
            (PathBuf::from("/from/env"), Origin::Env)
        );
        assert_eq!(
            resolve_with(None, Some(OsString::new())),
            (default_dir(), Origin::Default)
        );
        assert_eq!(resolve_with(None, None).1, Origin::Default);
        assert!(default_dir().ends_with("data/mnist"));
        assert!(!default_dir().to_string_lossy().contains(".."));
    }
}
