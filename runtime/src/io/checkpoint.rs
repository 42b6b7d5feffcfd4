//! Checkpoints: a model's named `f32` tensors plus where training stood, in one checksummed
//! file, for `--resume` (continue a run) and `--init` (start from saved weights).
//!
//! ```no_run
//! # fn main() -> Result<(), tensor_fn_runtime::Error> {
//! use ndarray::{Array1, Array2};
//! use tensor_fn_runtime::io::Checkpoint;
//! let (w, b1, b2) = (Array2::<f32>::zeros((784, 500)), Array1::<f32>::zeros(500), Array1::<f32>::zeros(784));
//! let mut ck = Checkpoint::new(3, 500, 1234);
//! ck.insert("W", &w).insert("b1", &b1).insert("b2", &b2);
//! ck.set_meta("learning_rate", "0.1");
//! ck.save_atomic("out/checkpoint.tfc")?;
//!
//! let ck = Checkpoint::load("out/checkpoint.tfc")?;
//! let w = ck.matrix("W", (784, ck.hidden))?; // an error names the tensor and both shapes
//! # Ok(()) }
//! ```
//!
//! # File format, version 1 (all integers little-endian)
//!
//! ```text
//! magic     8 bytes  \x89 T F C K P T \n   (PNG-style: catches 7-bit and newline mangling)
//! version   u32      1
//! body_len  u64      bytes of body
//! body:
//!   epoch u64, hidden u64, seed u64
//!   meta_count u32,   meta_count   x (key: str, value: str)
//!   tensor_count u32, tensor_count x (name: str, dtype u8 = 1 (f32 LE), rank u8,
//!                                     rank x dim u64, product(dims) x f32 in C order)
//!   where str = u32 byte length + UTF-8 bytes
//! crc32     u32      CRC-32 (IEEE, as zlib/PNG) of every byte before it
//! ```
//!
//! Loading checks, in order: the magic, the version, that `body_len` matches the file's length
//! exactly (truncation), the checksum (corruption), then every length inside the body against
//! the bytes left before reserving memory. Each failure is an [`Error::Format`] naming the file.

use std::path::Path;

use ndarray::{
    ArrayBase, ArrayD, ArrayView1, ArrayView2, ArrayView4, Data, Dimension, Ix1, Ix2, Ix4, IxDyn,
};

use super::{format_error, read_file, write_atomic};
use crate::Error;

/// The first eight bytes of every checkpoint.
pub const MAGIC: [u8; 8] = *b"\x89TFCKPT\n";
/// The format version this build writes and reads.
pub const VERSION: u32 = 1;

/// magic + version + body_len.
const PRELUDE: usize = 8 + 4 + 8;
/// The metadata keys of a model's random stream.
const STREAM_SEED: &str = "random_stream_seed";
const STREAM_CALLS: &str = "random_stream_calls";
/// The dtype tag of little-endian `f32` data, the only one so far.
const DTYPE_F32: u8 = 1;
/// No model of ours has tensors of a higher rank; a larger value means a corrupt file.
const MAX_RANK: usize = 16;

/// A snapshot of training: named `f32` tensors plus the metadata needed to resume.
///
/// Tensor and metadata order is kept as inserted, so a saved file's bytes depend only on the
/// content. Names are unique (checked on save and on load).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Checkpoint {
    /// Epochs completed when the snapshot was taken (0: the initial weights).
    pub epoch: usize,
    /// The model's hidden size (500 in the seed), so a mismatched `--hidden` is caught early.
    pub hidden: usize,
    /// The seed the run was started with.
    pub seed: u64,
    /// Free-form `key = value` metadata (learning rate, batch size, dataset, ...).
    pub meta: Vec<(String, String)>,
    /// The tensors, by name, e.g. `W` `[784, 500]`, `b1` `[500]`, `b2` `[784]`.
    pub tensors: Vec<(String, ArrayD<f32>)>,
}

impl Checkpoint {
    /// An empty checkpoint: no tensors, no metadata.
    pub fn new(epoch: usize, hidden: usize, seed: u64) -> Self {
        Checkpoint {
            epoch,
            hidden,
            seed,
            ..Checkpoint::default()
        }
    }

    /// Stores a copy of `array` (any rank, any layout) under `name`, replacing a tensor of
    /// that name. Returns `self` for chaining.
    pub fn insert<S, D>(&mut self, name: impl Into<String>, array: &ArrayBase<S, D>) -> &mut Self
    where
        S: Data<Elem = f32>,
        D: Dimension,
    {
        let name = name.into();
        let array = array.to_owned().into_dyn();
        match self.tensors.iter_mut().find(|(n, _)| *n == name) {
            Some((_, old)) => *old = array,
            None => self.tensors.push((name, array)),
        }
        self
    }

    /// Sets a metadata entry, replacing one with the same key. Returns `self` for chaining.
    pub fn set_meta(&mut self, key: impl Into<String>, value: impl Into<String>) -> &mut Self {
        let (key, value) = (key.into(), value.into());
        match self.meta.iter_mut().find(|(k, _)| *k == key) {
            Some((_, old)) => *old = value,
            None => self.meta.push((key, value)),
        }
        self
    }

    /// The metadata value for `key`, if any.
    pub fn meta(&self, key: &str) -> Option<&str> {
        self.meta
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Records a model's random stream (its `random_stream()`): the seed and the calls that
    /// drew, so a resumed run continues the same stream. Stored as two metadata entries.
    pub fn set_random_stream(&mut self, (seed, calls): (u64, u64)) -> &mut Self {
        self.set_meta(STREAM_SEED, seed.to_string())
            .set_meta(STREAM_CALLS, calls.to_string())
    }

    /// The random stream recorded by [`set_random_stream`](Self::set_random_stream): `None`
    /// when the checkpoint has none; an error naming `path` (the file it came from) when an
    /// entry is missing or not a number.
    pub fn random_stream(&self, path: impl AsRef<Path>) -> Result<Option<(u64, u64)>, Error> {
        let path = path.as_ref();
        let num = |key: &str| -> Result<Option<u64>, Error> {
            self.meta(key)
                .map(|v| {
                    v.parse::<u64>().map_err(|_| {
                        format_error(path, format!("metadata `{key}` is `{v}`, not a u64"))
                    })
                })
                .transpose()
        };
        match (num(STREAM_SEED)?, num(STREAM_CALLS)?) {
            (Some(seed), Some(calls)) => Ok(Some((seed, calls))),
            (None, None) => Ok(None),
            _ => Err(format_error(
                path,
                format!("the random stream needs both `{STREAM_SEED}` and `{STREAM_CALLS}`"),
            )),
        }
    }

    /// The tensor named `name`, if any.
    pub fn tensor(&self, name: &str) -> Option<&ArrayD<f32>> {
        self.tensors.iter().find(|(n, _)| n == name).map(|(_, a)| a)
    }

    /// The tensor named `name` as a matrix of exactly `shape`. A missing tensor or another
    /// shape is an [`Error::Format`] such as
    /// ``checkpoint tensor `W`: has shape [784, 64], expected [784, 500]``.
    pub fn matrix(&self, name: &str, shape: (usize, usize)) -> Result<ArrayView2<'_, f32>, Error> {
        self.shaped(name, &[shape.0, shape.1])?
            .into_dimensionality::<Ix2>()
            .map_err(|e| Error::Internal(format!("checked 2-D view: {e}")))
    }

    /// The tensor named `name` as a vector of exactly `len` elements; errors as
    /// [`matrix`](Self::matrix).
    pub fn vector(&self, name: &str, len: usize) -> Result<ArrayView1<'_, f32>, Error> {
        self.shaped(name, &[len])?
            .into_dimensionality::<Ix1>()
            .map_err(|e| Error::Internal(format!("checked 1-D view: {e}")))
    }

    /// The tensor named `name` as a rank-4 array of exactly `shape` (convolution filters,
    /// `[out_channels, in_channels, rows, cols]`); errors as [`matrix`](Self::matrix).
    pub fn array4(
        &self,
        name: &str,
        shape: (usize, usize, usize, usize),
    ) -> Result<ArrayView4<'_, f32>, Error> {
        self.shaped(name, &[shape.0, shape.1, shape.2, shape.3])?
            .into_dimensionality::<Ix4>()
            .map_err(|e| Error::Internal(format!("checked 4-D view: {e}")))
    }

    fn shaped(&self, name: &str, shape: &[usize]) -> Result<ndarray::ArrayViewD<'_, f32>, Error> {
        let fail = |reason: String| Error::Format {
            path: format!("checkpoint tensor `{name}`"),
            reason,
        };
        let Some(a) = self.tensor(name) else {
            let names: Vec<String> = self.tensors.iter().map(|(n, _)| format!("`{n}`")).collect();
            return Err(fail(format!(
                "missing; the checkpoint has {}",
                if names.is_empty() {
                    "no tensors".into()
                } else {
                    names.join(", ")
                }
            )));
        };
        if a.shape() != shape {
            return Err(fail(format!(
                "has shape {:?}, expected {shape:?}",
                a.shape()
            )));
        }
        Ok(a.view())
    }

    /// Writes the checkpoint to `path` atomically (see [`super::write_atomic`]): a crash or a
    /// full disk during the save leaves the previous checkpoint intact. Two tensors or two
    /// metadata entries with one name are an [`Error::Format`].
    pub fn save_atomic(&self, path: impl AsRef<Path>) -> Result<(), Error> {
        let path = path.as_ref();
        let bytes = self.encode().map_err(|reason| format_error(path, reason))?;
        write_atomic(path, &bytes)
    }

    /// Reads a checkpoint written by [`save_atomic`](Self::save_atomic).
    pub fn load(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let bytes = read_file(path)?;
        decode(&bytes).map_err(|reason| format_error(path, reason))
    }

    /// The bytes [`save_atomic`](Self::save_atomic) writes. Errors name `<checkpoint>`.
    pub fn to_bytes(&self) -> Result<Vec<u8>, Error> {
        self.encode().map_err(|reason| Error::Format {
            path: "<checkpoint>".into(),
            reason,
        })
    }

    /// Parses the bytes of a checkpoint file. Errors name `<checkpoint bytes>`.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        decode(bytes).map_err(|reason| Error::Format {
            path: "<checkpoint bytes>".into(),
            reason,
        })
    }

    fn encode(&self) -> Result<Vec<u8>, String> {
        if let Some(name) = first_duplicate(self.tensors.iter().map(|(n, _)| n)) {
            return Err(format!("two tensors named `{name}`"));
        }
        if let Some(key) = first_duplicate(self.meta.iter().map(|(k, _)| k)) {
            return Err(format!("two metadata entries named `{key}`"));
        }
        let data: usize = self.tensors.iter().map(|(_, a)| a.len() * 4).sum();
        let mut body = Vec::with_capacity(data + 256);
        put_u64(&mut body, self.epoch as u64);
        put_u64(&mut body, self.hidden as u64);
        put_u64(&mut body, self.seed);
        put_count(&mut body, self.meta.len(), "metadata entries")?;
        for (k, v) in &self.meta {
            put_str(&mut body, k)?;
            put_str(&mut body, v)?;
        }
        put_count(&mut body, self.tensors.len(), "tensors")?;
        for (name, a) in &self.tensors {
            put_str(&mut body, name)?;
            if a.ndim() > MAX_RANK {
                return Err(format!(
                    "tensor `{name}` has rank {}, at most {MAX_RANK} is supported",
                    a.ndim()
                ));
            }
            body.push(DTYPE_F32);
            body.push(a.ndim() as u8);
            for &d in a.shape() {
                put_u64(&mut body, d as u64);
            }
            for &v in a.iter() {
                body.extend_from_slice(&v.to_le_bytes());
            }
        }
        let mut out = Vec::with_capacity(PRELUDE + body.len() + 4);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        put_u64(&mut out, body.len() as u64);
        out.extend_from_slice(&body);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        Ok(out)
    }
}

fn first_duplicate<'a>(names: impl Iterator<Item = &'a String>) -> Option<&'a String> {
    let mut seen = std::collections::HashSet::new();
    names.into_iter().find(|n| !seen.insert(n.as_str()))
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_count(out: &mut Vec<u8>, n: usize, what: &str) -> Result<(), String> {
    let n = u32::try_from(n).map_err(|_| format!("{n} {what}, at most {} fit", u32::MAX))?;
    out.extend_from_slice(&n.to_le_bytes());
    Ok(())
}

fn put_str(out: &mut Vec<u8>, s: &str) -> Result<(), String> {
    put_count(out, s.len(), "bytes in a name")?;
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

/// Parses a whole checkpoint file; the error is the reason, without the path.
fn decode(bytes: &[u8]) -> Result<Checkpoint, String> {
    let truncated = || {
        format!(
            "truncated: {} bytes, shorter than any checkpoint",
            bytes.len()
        )
    };
    if bytes.len() < MAGIC.len() {
        return Err(if MAGIC.starts_with(bytes) {
            truncated()
        } else {
            "not a tensor-fn checkpoint (wrong magic bytes)".into()
        });
    }
    if bytes[..8] != MAGIC {
        let hint = if bytes.starts_with(b"\x93NUMPY") {
            " (this is an .npy file)"
        } else {
            ""
        };
        return Err(format!(
            "not a tensor-fn checkpoint (wrong magic bytes){hint}"
        ));
    }
    let mut c = Cursor { b: bytes, i: 8 };
    let version = c.u32().map_err(|_| truncated())?;
    if version != VERSION {
        return Err(format!(
            "checkpoint format version {version}; this build reads version {VERSION}"
        ));
    }
    let body_len = c.u64().map_err(|_| truncated())?;
    let expected = (body_len as u128) + (PRELUDE as u128) + 4;
    if (bytes.len() as u128) != expected {
        let what = if (bytes.len() as u128) < expected {
            "truncated"
        } else {
            "trailing bytes"
        };
        return Err(format!(
            "{what}: the header promises {expected} bytes in all, the file has {}",
            bytes.len()
        ));
    }
    let (content, tail) = bytes.split_at(bytes.len() - 4);
    let stored = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
    let computed = crc32fast::hash(content);
    if stored != computed {
        return Err(format!(
            "checksum mismatch (stored {stored:#010x}, computed {computed:#010x}): the file is corrupt"
        ));
    }
    let mut c = Cursor {
        b: content,
        i: PRELUDE,
    };
    decode_body(&mut c).map_err(|e| format!("corrupt body at byte {}: {e}", c.i))
}

fn decode_body(c: &mut Cursor<'_>) -> Result<Checkpoint, String> {
    let epoch = c.usize("epoch")?;
    let hidden = c.usize("hidden size")?;
    let seed = c.u64()?;
    let n_meta = c.u32()?;
    let mut meta = Vec::new();
    for _ in 0..n_meta {
        let key = c.str()?;
        let value = c.str()?;
        meta.push((key, value));
    }
    let n_tensors = c.u32()?;
    let mut tensors = Vec::new();
    for _ in 0..n_tensors {
        let name = c.str()?;
        let dtype = c.u8()?;
        if dtype != DTYPE_F32 {
            return Err(format!("tensor `{name}` has unknown dtype tag {dtype}"));
        }
        let rank = usize::from(c.u8()?);
        if rank > MAX_RANK {
            return Err(format!(
                "tensor `{name}` has rank {rank}, at most {MAX_RANK} is supported"
            ));
        }
        let mut shape = Vec::with_capacity(rank);
        for _ in 0..rank {
            shape.push(c.usize("a dimension")?);
        }
        let bytes = shape
            .iter()
            .try_fold(4usize, |n, &d| n.checked_mul(d))
            .filter(|&n| n <= c.left())
            .ok_or_else(|| {
                format!(
                    "tensor `{name}` of shape {shape:?} needs more bytes than the file has left ({})",
                    c.left()
                )
            })?;
        // Bounded by the file's length (checked just above).
        let data = c.take(bytes)?;
        let values: Vec<f32> = data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let array = ArrayD::from_shape_vec(IxDyn(&shape), values)
            .map_err(|e| format!("tensor `{name}`: {e}"))?;
        tensors.push((name, array));
    }
    if c.left() != 0 {
        return Err(format!(
            "{} unexplained bytes after the last tensor",
            c.left()
        ));
    }
    if let Some(name) = first_duplicate(tensors.iter().map(|(n, _)| n)) {
        return Err(format!("two tensors named `{name}`"));
    }
    if let Some(key) = first_duplicate(meta.iter().map(|(k, _)| k)) {
        return Err(format!("two metadata entries named `{key}`"));
    }
    Ok(Checkpoint {
        epoch,
        hidden,
        seed,
        meta,
        tensors,
    })
}

/// Reads little-endian values; every read checks the bytes left first.
struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    fn left(&self) -> usize {
        self.b.len() - self.i
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.left() {
            return Err(format!("needs {n} more bytes, {} are left", self.left()));
        }
        let s = &self.b[self.i..self.i + n];
        self.i += n;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes([
            b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
        ]))
    }

    fn usize(&mut self, what: &str) -> Result<usize, String> {
        let v = self.u64()?;
        usize::try_from(v).map_err(|_| format!("{what} {v} does not fit this machine"))
    }

    fn str(&mut self) -> Result<String, String> {
        let n = self.u32()? as usize;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| "a name is not UTF-8".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{arr1, Array, Array2};
    use std::fs;

    fn small() -> Checkpoint {
        let mut ck = Checkpoint::new(7, 3, 0xDEAD_BEEF_1234);
        ck.insert(
            "W",
            &Array::from_shape_fn((4, 3), |(i, j)| i as f32 - j as f32 * 0.5),
        )
        .insert("b1", &arr1(&[0.1f32, -0.2, 0.3]))
        .insert("b2", &arr1(&[1.0f32, 2.0, 3.0, 4.0]));
        ck.set_meta("learning_rate", "0.1").set_meta("batch", "20");
        ck
    }

    /// Recomputes the checksum after a test has edited the body on purpose.
    fn reseal(bytes: &mut [u8]) {
        let n = bytes.len() - 4;
        let crc = crc32fast::hash(&bytes[..n]);
        bytes[n..].copy_from_slice(&crc.to_le_bytes());
    }

    #[test]
    fn random_streams_round_trip_and_bad_ones_are_errors() {
        let mut ck = small();
        assert_eq!(ck.random_stream("ck").unwrap(), None);
        ck.set_random_stream((u64::MAX, 12345));
        let back = Checkpoint::from_bytes(&ck.to_bytes().unwrap()).unwrap();
        assert_eq!(back.random_stream("ck").unwrap(), Some((u64::MAX, 12345)));
        ck.set_meta(STREAM_CALLS, "-1");
        let e = ck.random_stream("ck").unwrap_err().to_string();
        assert!(
            e.contains("`random_stream_calls` is `-1`, not a u64"),
            "{e}"
        );
        ck.meta.retain(|(k, _)| k != STREAM_CALLS);
        let e = ck.random_stream("ck").unwrap_err().to_string();
        assert!(e.contains("needs both"), "{e}");
    }

    #[test]
    fn round_trip_in_memory_and_on_disk() {
        let mut ck = small();
        ck.insert("scalar", &ndarray::arr0(f32::NAN))
            .insert("empty", &Array2::<f32>::zeros((0, 5)))
            .insert(
                "cube",
                &Array::from_shape_fn((2, 2, 2), |(a, b, c)| (a * 4 + b * 2 + c) as f32),
            );
        ck.set_meta("note", "ünïcode ok");
        let back = Checkpoint::from_bytes(&ck.to_bytes().unwrap()).unwrap();
        assert_eq!(
            (back.epoch, back.hidden, back.seed),
            (7, 3, 0xDEAD_BEEF_1234)
        );
        assert_eq!(back.meta, ck.meta);
        let names: Vec<&str> = back.tensors.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["W", "b1", "b2", "scalar", "empty", "cube"]);
        for ((_, a), (_, b)) in ck.tensors.iter().zip(&back.tensors) {
            assert_eq!(a.shape(), b.shape());
            let bits = |x: &ArrayD<f32>| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(a), bits(b), "bit-exact, NaN included");
        }

        let dir = crate::io::test_dir("ckpt-rt");
        let path = dir.join("run.tfc");
        small().save_atomic(&path).unwrap();
        assert_eq!(Checkpoint::load(&path).unwrap(), small());
        // Saving again replaces it, leaving exactly one file.
        let mut next = small();
        next.epoch = 8;
        next.save_atomic(&path).unwrap();
        assert_eq!(Checkpoint::load(&path).unwrap().epoch, 8);
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn encoding_is_deterministic() {
        assert_eq!(small().to_bytes().unwrap(), small().to_bytes().unwrap());
    }

    #[test]
    fn typed_accessors_check_shapes() {
        let ck = small();
        assert_eq!(ck.matrix("W", (4, 3)).unwrap()[[3, 2]], 2.0);
        assert_eq!(ck.vector("b1", 3).unwrap()[1], -0.2);
        assert_eq!(ck.meta("batch"), Some("20"));
        let e = ck.matrix("W", (784, 3)).unwrap_err().to_string();
        assert_eq!(
            e,
            "checkpoint tensor `W`: has shape [4, 3], expected [784, 3]"
        );
        let e = ck.vector("W", 12).unwrap_err().to_string();
        assert!(e.contains("has shape [4, 3], expected [12]"), "{e}");
        let e = ck.matrix("V", (4, 3)).unwrap_err().to_string();
        assert_eq!(
            e,
            "checkpoint tensor `V`: missing; the checkpoint has `W`, `b1`, `b2`"
        );
    }

    #[test]
    fn rank_4_tensors_round_trip_through_array4() {
        let w = Array::from_shape_fn((3, 2, 5, 4), |(o, i, r, c)| {
            (o * 1000 + i * 100 + r * 10 + c) as f32 - 0.5
        });
        let mut ck = small();
        ck.insert("w0", &w);
        let back = Checkpoint::from_bytes(&ck.to_bytes().unwrap()).unwrap();
        let v = back.array4("w0", (3, 2, 5, 4)).unwrap();
        assert_eq!(v, w.view());
        assert_eq!(v[[2, 1, 4, 3]], 2142.5);
        let e = back.array4("w0", (3, 2, 4, 5)).unwrap_err().to_string();
        assert_eq!(
            e,
            "checkpoint tensor `w0`: has shape [3, 2, 5, 4], expected [3, 2, 4, 5]"
        );
        let e = back.array4("W", (4, 3, 1, 1)).unwrap_err().to_string();
        assert!(e.contains("has shape [4, 3], expected [4, 3, 1, 1]"), "{e}");
        let e = back.array4("w9", (3, 2, 5, 4)).unwrap_err().to_string();
        assert!(e.contains("`w9`: missing"), "{e}");
    }

    #[test]
    fn insert_and_set_meta_replace_by_name() {
        let mut ck = small();
        ck.insert("b1", &arr1(&[9.0f32]));
        ck.set_meta("batch", "50");
        assert_eq!(ck.tensors.len(), 3);
        assert_eq!(ck.vector("b1", 1).unwrap()[0], 9.0);
        assert_eq!(ck.meta("batch"), Some("50"));
    }

    #[test]
    fn duplicate_names_are_refused_on_save() {
        let mut ck = small();
        ck.tensors.push(("W".into(), ArrayD::zeros(IxDyn(&[1]))));
        let dir = crate::io::test_dir("ckpt-dup");
        let e = ck.save_atomic(dir.join("c.tfc")).unwrap_err().to_string();
        assert!(e.contains("two tensors named `W`"), "{e}");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0, "nothing written");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn every_truncation_is_an_error() {
        let full = small().to_bytes().unwrap();
        for len in 0..full.len() {
            let e = Checkpoint::from_bytes(&full[..len])
                .unwrap_err()
                .to_string();
            assert!(e.contains("truncated"), "length {len}: {e}");
        }
    }

    #[test]
    fn every_bit_flip_is_detected() {
        let full = small().to_bytes().unwrap();
        for i in 0..full.len() * 8 {
            let mut bytes = full.clone();
            bytes[i / 8] ^= 1 << (i % 8);
            assert!(
                Checkpoint::from_bytes(&bytes).is_err(),
                "flip of bit {i} went unnoticed"
            );
        }
        // Flips in the body are reported as what they are.
        let mut bytes = full.clone();
        bytes[PRELUDE + 3] ^= 0x10;
        let e = Checkpoint::from_bytes(&bytes).unwrap_err().to_string();
        assert!(e.contains("checksum mismatch"), "{e}");
    }

    #[test]
    fn wrong_magic_version_and_trailing_bytes() {
        let full = small().to_bytes().unwrap();
        let e = Checkpoint::from_bytes(b"\x93NUMPY\x01\x00rest")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not a tensor-fn checkpoint") && e.contains(".npy"),
            "{e}"
        );
        let mut v2 = full.clone();
        v2[8] = 2;
        reseal(&mut v2);
        let e = Checkpoint::from_bytes(&v2).unwrap_err().to_string();
        assert!(e.contains("version 2; this build reads version 1"), "{e}");
        let mut long = full.clone();
        long.push(0);
        let e = Checkpoint::from_bytes(&long).unwrap_err().to_string();
        assert!(e.contains("trailing bytes"), "{e}");
    }

    #[test]
    fn absurd_sizes_in_a_sealed_body_are_errors() {
        let full = small().to_bytes().unwrap();
        // The first tensor's first dim: after epoch, hidden, seed, the metadata and the name.
        let meta_len: usize = small()
            .meta
            .iter()
            .map(|(k, v)| 8 + k.len() + v.len())
            .sum();
        let dim_at = PRELUDE + 24 + 4 + meta_len + 4 + (4 + 1) + 2;
        assert_eq!(
            full[dim_at..dim_at + 8],
            4u64.to_le_bytes(),
            "layout as documented"
        );
        for dim in [1u64 << 40, u64::MAX, 5] {
            let mut bytes = full.clone();
            bytes[dim_at..dim_at + 8].copy_from_slice(&dim.to_le_bytes());
            reseal(&mut bytes);
            let e = Checkpoint::from_bytes(&bytes).unwrap_err().to_string();
            assert!(e.contains("corrupt body"), "{dim}: {e}");
        }
        // A string length far beyond the file.
        let mut bytes = full.clone();
        let key_len_at = PRELUDE + 24 + 4;
        bytes[key_len_at..key_len_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        reseal(&mut bytes);
        let e = Checkpoint::from_bytes(&bytes).unwrap_err().to_string();
        assert!(e.contains("needs 4294967295 more bytes"), "{e}");
        // A huge body_len claim is truncation, checked before anything is read.
        let mut bytes = full.clone();
        bytes[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
        let e = Checkpoint::from_bytes(&bytes).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
    }

    #[test]
    fn load_errors_name_the_file() {
        let dir = crate::io::test_dir("ckpt-err");
        let path = dir.join("c.tfc");
        let full = small().to_bytes().unwrap();
        fs::write(&path, &full[..full.len() - 1]).unwrap();
        let e = Checkpoint::load(&path).unwrap_err().to_string();
        assert!(
            e.starts_with(&path.display().to_string()) && e.contains("truncated"),
            "{e}"
        );
        assert!(matches!(
            Checkpoint::load(dir.join("none")),
            Err(Error::Io { .. })
        ));
        fs::remove_dir_all(&dir).unwrap();
    }
}
