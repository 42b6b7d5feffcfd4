//! numpy's `.npy` format: one dense array with its dtype and shape.
//!
//! Written: format v1.0 (v2.0 if the header would not fit, which no float array of a sane rank
//! needs), dtype `<f4` or `<f8`, C order, header padded to a multiple of 64 bytes as numpy does.
//! `np.load` reads the files back exactly.
//!
//! Read: format v1.0, v2.0 and v3.0; dtypes `<f4`, `<f8` (and their big-endian forms `>f4`,
//! `>f8`), any rank including 0, C order. What `np.save` writes for a float array of shape
//! `(784, 500)` therefore loads as is. Fortran-order files (what `np.save(f, w.T)` writes for a
//! C-ordered `w`), integer or structured dtypes, truncated files and headers that disagree with
//! the file's length are rejected with [`Error::Format`] saying what was found; nothing panics
//! and nothing is allocated beyond what the file actually holds.
//!
//! ```no_run
//! # fn main() -> Result<(), tensor_fn_runtime::Error> {
//! use tensor_fn_runtime::io::npy;
//! // `np.save("w.npy", w)` on the Python side, `w` float32 or float64 of shape (784, 500):
//! let w: ndarray::Array2<f32> = npy::read_npy_2d("w.npy")?;
//! npy::write_npy("hidden.npy", &w)?;
//! # Ok(()) }
//! ```

use std::path::Path;

use ndarray::{Array2, ArrayBase, ArrayD, Data, Dimension, IxDyn};

use super::{format_error, read_file, write_atomic};
use crate::Error;

/// The first six bytes of every `.npy` file.
const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// numpy pads the header so the data starts at a multiple of this (for aligned memory maps).
const ALIGN: usize = 64;

/// An element type `.npy` files can hold: `f32` (`<f4`) and `f64` (`<f8`).
///
/// Reading converts between the two: an `<f8` file read as `f32` is rounded to nearest (as
/// numpy's `astype(np.float32)`), an `<f4` file read as `f64` is exact.
pub trait NpyElement: Copy + Default + sealed::Sealed + 'static {
    /// The dtype string numpy writes for this type on a little-endian machine.
    const DESCR: &'static str;
    #[doc(hidden)]
    fn from_f32(v: f32) -> Self;
    #[doc(hidden)]
    fn from_f64(v: f64) -> Self;
    #[doc(hidden)]
    fn extend_le(self, out: &mut Vec<u8>);
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

impl NpyElement for f32 {
    const DESCR: &'static str = "<f4";
    fn from_f32(v: f32) -> Self {
        v
    }
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn extend_le(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

impl NpyElement for f64 {
    const DESCR: &'static str = "<f8";
    fn from_f32(v: f32) -> Self {
        f64::from(v)
    }
    fn from_f64(v: f64) -> Self {
        v
    }
    fn extend_le(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

/// Writes `array` to `path` as an `.npy` file, atomically ([`super::write_atomic`]).
///
/// Any layout is accepted (views, transposes, slices); the file is always C order, so numpy
/// sees the array with the same logical shape and values.
pub fn write_npy<T, S, D>(path: impl AsRef<Path>, array: &ArrayBase<S, D>) -> Result<(), Error>
where
    T: NpyElement,
    S: Data<Elem = T>,
    D: Dimension,
{
    write_atomic(path, &to_npy_bytes(array))
}

/// The bytes of an `.npy` file holding `array` (what [`write_npy`] writes).
pub fn to_npy_bytes<T, S, D>(array: &ArrayBase<S, D>) -> Vec<u8>
where
    T: NpyElement,
    S: Data<Elem = T>,
    D: Dimension,
{
    let header = header_text(T::DESCR, array.shape());
    let item = std::mem::size_of::<T>();
    let mut out = Vec::with_capacity(header.len() + 12 + array.len() * item);
    out.extend_from_slice(MAGIC);
    // Version 1.0 stores the header length in a u16; 2.0 in a u32 (prelude 10 vs 12 bytes).
    let padded = |prelude: usize| {
        let unpadded = prelude + header.len() + 1; // +1 for the final '\n'
        unpadded.div_ceil(ALIGN) * ALIGN - prelude
    };
    let header_len = match u16::try_from(padded(10)) {
        Ok(len) => {
            out.extend_from_slice(&[1, 0]);
            out.extend_from_slice(&len.to_le_bytes());
            usize::from(len)
        }
        Err(_) => {
            let len = padded(12);
            out.extend_from_slice(&[2, 0]);
            // A header over 4 GiB needs a rank of hundreds of millions: not constructible.
            out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
            len
        }
    };
    let start = out.len();
    out.extend_from_slice(header.as_bytes());
    out.resize(start + header_len - 1, b' ');
    out.push(b'\n');
    // `iter()` walks in logical (C) order whatever the memory layout.
    for &v in array.iter() {
        v.extend_le(&mut out);
    }
    out
}

/// The header dict exactly as numpy writes it: `{'descr': '<f4', 'fortran_order': False,
/// 'shape': (2, 3), }`. A 1-tuple keeps its trailing comma: `(3,)`.
fn header_text(descr: &str, shape: &[usize]) -> String {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}")
}

/// Reads an `.npy` file of any rank, converting `<f4`/`<f8` data to `T`.
pub fn read_npy<T: NpyElement>(path: impl AsRef<Path>) -> Result<ArrayD<T>, Error> {
    let path = path.as_ref();
    let bytes = read_file(path)?;
    decode(&bytes).map_err(|reason| format_error(path, reason))
}

/// Reads a 2-D `.npy` file (e.g. a weight matrix saved with `np.save`), converting `<f4`/`<f8`
/// data to `T`. Another rank is an [`Error::Format`] that names the shape found.
pub fn read_npy_2d<T: NpyElement>(path: impl AsRef<Path>) -> Result<Array2<T>, Error> {
    let path = path.as_ref();
    let array = read_npy(path)?;
    let shape = array.shape().to_vec();
    array.into_dimensionality().map_err(|_| {
        format_error(
            path,
            format!("expected a 2-D array, found shape {}", shape_text(&shape)),
        )
    })
}

/// Decodes the bytes of an `.npy` file (what [`read_npy`] does after reading the file).
/// Errors name the source as `<npy bytes>`.
pub fn from_npy_bytes<T: NpyElement>(bytes: &[u8]) -> Result<ArrayD<T>, Error> {
    decode(bytes).map_err(|reason| Error::Format {
        path: "<npy bytes>".into(),
        reason,
    })
}

/// `(784, 500)`, `(3,)`, `()`: shapes in numpy's notation, for messages.
fn shape_text(shape: &[usize]) -> String {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    }
}

/// The element types we read, with their byte order.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Dtype {
    F32 { big_endian: bool },
    F64 { big_endian: bool },
}

impl Dtype {
    fn parse(descr: &str) -> Option<Dtype> {
        // '=' is native order; numpy never writes it, but accept it for hand-made files.
        let (big_endian, kind) = match descr.as_bytes().first()? {
            b'<' => (false, &descr[1..]),
            b'>' => (true, &descr[1..]),
            b'=' => (cfg!(target_endian = "big"), &descr[1..]),
            _ => return None,
        };
        match kind {
            "f4" => Some(Dtype::F32 { big_endian }),
            "f8" => Some(Dtype::F64 { big_endian }),
            _ => None,
        }
    }

    fn size(self) -> usize {
        match self {
            Dtype::F32 { .. } => 4,
            Dtype::F64 { .. } => 8,
        }
    }
}

/// A parsed header: what the data that follows it is.
#[derive(Debug, PartialEq)]
struct Header {
    dtype: Dtype,
    shape: Vec<usize>,
}

/// Decodes a whole `.npy` file; the error is the reason, without the path.
fn decode<T: NpyElement>(bytes: &[u8]) -> Result<ArrayD<T>, String> {
    let (header, data) = split(bytes)?;
    let count = header
        .shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|&n| n <= isize::MAX as usize);
    let shape = shape_text(&header.shape);
    let need = count.and_then(|n| n.checked_mul(header.dtype.size()));
    let Some(need) = need else {
        return Err(format!("shape {shape} is too large to exist"));
    };
    if data.len() != need {
        let what = if data.len() < need {
            "truncated"
        } else {
            "trailing bytes"
        };
        return Err(format!(
            "{what}: shape {shape} needs {need} data bytes, the file has {} after the header",
            data.len()
        ));
    }
    // The length check above bounds this allocation by the file's size.
    let values: Vec<T> = match header.dtype {
        Dtype::F32 { big_endian } => data
            .chunks_exact(4)
            .map(|c| {
                let b = [c[0], c[1], c[2], c[3]];
                T::from_f32(if big_endian {
                    f32::from_be_bytes(b)
                } else {
                    f32::from_le_bytes(b)
                })
            })
            .collect(),
        Dtype::F64 { big_endian } => data
            .chunks_exact(8)
            .map(|c| {
                let b = [c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]];
                T::from_f64(if big_endian {
                    f64::from_be_bytes(b)
                } else {
                    f64::from_le_bytes(b)
                })
            })
            .collect(),
    };
    ArrayD::from_shape_vec(IxDyn(&header.shape), values).map_err(|e| format!("shape {shape}: {e}"))
}

/// Checks the prelude, parses the header, returns it with the data bytes that follow.
fn split(bytes: &[u8]) -> Result<(Header, &[u8]), String> {
    if !bytes.starts_with(MAGIC) {
        if bytes.starts_with(b"PK\x03\x04") {
            return Err(
                "this is a zip archive (an .npz?), not an .npy file: save one array \
                        with np.save"
                    .into(),
            );
        }
        if MAGIC.starts_with(bytes) {
            return Err(format!(
                "truncated: {} bytes, not even a header",
                bytes.len()
            ));
        }
        return Err("not an .npy file: it does not start with \\x93NUMPY".into());
    }
    let (major, minor) = match bytes.get(6..8) {
        Some(v) => (v[0], v[1]),
        None => {
            return Err(format!(
                "truncated: {} bytes, not even a header",
                bytes.len()
            ))
        }
    };
    let (len_bytes, utf8) = match major {
        1 => (2, false),
        2 => (4, false),
        3 => (4, true),
        _ => {
            return Err(format!(
                "npy format version {major}.{minor} is not supported (1.0, 2.0 and 3.0 are)"
            ))
        }
    };
    let Some(len_field) = bytes.get(8..8 + len_bytes) else {
        return Err(format!(
            "truncated: {} bytes, not even a header",
            bytes.len()
        ));
    };
    let mut le = [0u8; 4];
    le[..len_bytes].copy_from_slice(len_field);
    let header_len = u32::from_le_bytes(le) as usize;
    let start = 8 + len_bytes;
    let end = start.saturating_add(header_len);
    let Some(text) = bytes.get(start..end) else {
        return Err(format!(
            "truncated: the header claims {header_len} bytes, the file has {} after the prelude",
            bytes.len() - start
        ));
    };
    // v1.0 and v2.0 headers are latin-1, v3.0 UTF-8. Every header we can use is ASCII.
    let text = match std::str::from_utf8(text) {
        Ok(t) if utf8 || t.is_ascii() => t,
        _ => return Err("the header is not ASCII text".into()),
    };
    let header =
        parse_header(text).map_err(|e| format!("bad header {:?}: {e}", text.trim_end()))?;
    Ok((header, &bytes[end..]))
}

/// Parses the header dict, a Python literal such as
/// `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }` followed by padding.
fn parse_header(text: &str) -> Result<Header, String> {
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
    };
    let mut descr = None;
    let mut fortran = None;
    let mut shape = None;
    p.expect(b'{')?;
    loop {
        if p.eat(b'}') {
            break;
        }
        let key = p.string()?;
        p.expect(b':')?;
        match key.as_str() {
            "descr" if descr.is_none() => descr = Some(p.descr()?),
            "fortran_order" if fortran.is_none() => fortran = Some(p.boolean()?),
            "shape" if shape.is_none() => shape = Some(p.tuple()?),
            "descr" | "fortran_order" | "shape" => return Err(format!("key '{key}' twice")),
            _ => return Err(format!("unexpected key '{key}'")),
        }
        if !p.eat(b',') {
            p.expect(b'}')?;
            break;
        }
    }
    p.skip_ws();
    if p.i != p.s.len() {
        return Err("text after the closing '}'".into());
    }
    let descr = descr.ok_or("no 'descr' key")?;
    let fortran = fortran.ok_or("no 'fortran_order' key")?;
    let shape = shape.ok_or("no 'shape' key")?;
    let dtype = Dtype::parse(&descr).ok_or_else(|| {
        format!("dtype '{descr}' is not supported; expected '<f4' (float32) or '<f8' (float64)")
    })?;
    if fortran && shape.len() > 1 {
        return Err("the array is in Fortran order, which is not supported; \
                    save np.ascontiguousarray(a) instead"
            .into());
    }
    Ok(Header { dtype, shape })
}

/// A cursor over the header text; every method skips leading whitespace.
struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while self.s.get(self.i).is_some_and(|c| c.is_ascii_whitespace()) {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        self.skip_ws();
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: u8) -> Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!("expected '{}' at byte {}", c as char, self.i))
        }
    }

    /// A quoted string without escapes (none of the keys or dtypes we accept has any).
    fn string(&mut self) -> Result<String, String> {
        self.skip_ws();
        let quote = match self.s.get(self.i) {
            Some(&q @ (b'\'' | b'"')) => q,
            _ => return Err(format!("expected a quoted string at byte {}", self.i)),
        };
        let start = self.i + 1;
        let len = self.s[start..]
            .iter()
            .position(|&c| c == quote)
            .ok_or("unterminated string")?;
        self.i = start + len + 1;
        Ok(String::from_utf8_lossy(&self.s[start..start + len]).into_owned())
    }

    /// The dtype: a plain string. A list here is a structured dtype, which we do not read.
    fn descr(&mut self) -> Result<String, String> {
        self.skip_ws();
        if self.s.get(self.i) == Some(&b'[') {
            return Err("structured dtypes are not supported; expected '<f4' or '<f8'".into());
        }
        self.string()
    }

    fn boolean(&mut self) -> Result<bool, String> {
        self.skip_ws();
        for (word, value) in [("True", true), ("False", false)] {
            if self.s[self.i..].starts_with(word.as_bytes()) {
                self.i += word.len();
                return Ok(value);
            }
        }
        Err(format!("expected True or False at byte {}", self.i))
    }

    /// A tuple of non-negative integers: `()`, `(3,)`, `(2, 3)`. Python 2's `3L` is accepted.
    fn tuple(&mut self) -> Result<Vec<usize>, String> {
        self.expect(b'(')?;
        let mut dims = Vec::new();
        loop {
            if self.eat(b')') {
                return Ok(dims);
            }
            if dims.len() == 64 {
                return Err("more than 64 dimensions".into());
            }
            dims.push(self.integer()?);
            if !self.eat(b',') {
                self.expect(b')')?;
                return Ok(dims);
            }
        }
    }

    fn integer(&mut self) -> Result<usize, String> {
        self.skip_ws();
        let start = self.i;
        while self.s.get(self.i).is_some_and(u8::is_ascii_digit) {
            self.i += 1;
        }
        let digits = std::str::from_utf8(&self.s[start..self.i]).unwrap_or_default();
        let n = digits.parse::<usize>().map_err(|_| {
            format!("expected a dimension (a non-negative integer) at byte {start}")
        })?;
        if self.s.get(self.i) == Some(&b'L') {
            self.i += 1;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{arr2, Array, Array1, Array3, ShapeBuilder};
    use std::fs;
    use std::process::Command;

    fn decode_f32(bytes: &[u8]) -> Result<ArrayD<f32>, String> {
        decode::<f32>(bytes)
    }

    /// An `.npy` file as numpy 1.x/2.x writes it, built by hand: v1.0, the 59-byte dict
    /// padded with spaces so that prelude (10) + header ends at a multiple of 64 (128),
    /// ending in '\n'. (Checked byte for byte against `np.save` in `numpy_loads_what_we_write`.)
    fn numpy_style_f4_2x3() -> Vec<u8> {
        let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
        let mut header = format!("{dict:<117}").into_bytes();
        header.push(b'\n');
        assert_eq!(10 + header.len(), 128);
        let mut f = b"\x93NUMPY\x01\x00".to_vec();
        f.extend_from_slice(&(header.len() as u16).to_le_bytes());
        f.extend_from_slice(&header);
        for v in [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.5] {
            f.extend_from_slice(&v.to_le_bytes());
        }
        f
    }

    #[test]
    fn reads_hand_made_numpy_header() {
        let a = decode_f32(&numpy_style_f4_2x3()).unwrap();
        assert_eq!(a.shape(), [2, 3]);
        assert_eq!(
            a.into_raw_vec_and_offset().0,
            [1.0, 2.0, 3.0, 4.0, 5.0, 6.5]
        );
    }

    #[test]
    fn writes_exactly_what_numpy_writes() {
        let a = arr2(&[[1.0f32, 2.0, 3.0], [4.0, 5.0, 6.5]]);
        assert_eq!(to_npy_bytes(&a), numpy_style_f4_2x3());
    }

    #[test]
    fn header_is_64_byte_aligned_and_newline_terminated() {
        for shape in [
            vec![],
            vec![0],
            vec![7],
            vec![784, 500],
            vec![1, 2, 3, 4, 5, 6, 7, 8],
        ] {
            let a = ArrayD::<f64>::zeros(IxDyn(&shape));
            let bytes = to_npy_bytes(&a);
            let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
            assert_eq!((10 + header_len) % 64, 0, "{shape:?}");
            assert_eq!(bytes[10 + header_len - 1], b'\n');
            assert_eq!(bytes.len(), 10 + header_len + 8 * a.len());
        }
    }

    #[test]
    fn header_text_matches_numpy_for_each_rank() {
        assert_eq!(
            header_text("<f4", &[]),
            "{'descr': '<f4', 'fortran_order': False, 'shape': (), }"
        );
        assert_eq!(
            header_text("<f8", &[5]),
            "{'descr': '<f8', 'fortran_order': False, 'shape': (5,), }"
        );
        assert_eq!(
            header_text("<f4", &[784, 500]),
            "{'descr': '<f4', 'fortran_order': False, 'shape': (784, 500), }"
        );
    }

    #[test]
    fn round_trip_f32_and_f64_all_ranks() {
        let dir = crate::io::test_dir("npy-rt");
        let m = Array::from_shape_fn((4, 3), |(i, j)| i as f32 * 0.5 - j as f32 / 3.0);
        write_npy(dir.join("m.npy"), &m).unwrap();
        assert_eq!(read_npy_2d::<f32>(dir.join("m.npy")).unwrap(), m);

        let v = Array1::from_vec(vec![f64::MIN_POSITIVE, -0.0, 1e300, f64::INFINITY]);
        write_npy(dir.join("v.npy"), &v).unwrap();
        assert_eq!(read_npy::<f64>(dir.join("v.npy")).unwrap(), v.into_dyn());

        let t = Array3::from_shape_fn((2, 3, 4), |(i, j, k)| (i * 100 + j * 10 + k) as f32);
        write_npy(dir.join("t.npy"), &t).unwrap();
        assert_eq!(read_npy::<f32>(dir.join("t.npy")).unwrap(), t.into_dyn());

        let s = ArrayD::from_elem(IxDyn(&[]), 42.5f32);
        write_npy(dir.join("s.npy"), &s).unwrap();
        assert_eq!(read_npy::<f32>(dir.join("s.npy")).unwrap(), s);

        let empty = Array2::<f32>::zeros((0, 5));
        write_npy(dir.join("e.npy"), &empty).unwrap();
        assert_eq!(read_npy_2d::<f32>(dir.join("e.npy")).unwrap().dim(), (0, 5));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn non_contiguous_views_are_written_in_logical_order() {
        let a = Array::from_shape_vec((2, 3).f(), vec![1.0f32, 4.0, 2.0, 5.0, 3.0, 6.0]).unwrap();
        let back = decode_f32(&to_npy_bytes(&a)).unwrap();
        assert_eq!(back, arr2(&[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]).into_dyn());
        let t = a.t();
        let back = decode_f32(&to_npy_bytes(&t)).unwrap();
        assert_eq!(back, t.to_owned().into_dyn());
    }

    #[test]
    fn f8_file_reads_as_f32_and_f4_as_f64() {
        let a = arr2(&[[0.1f64, 1e-50], [3.0, -1e40]]);
        let as_f32 = decode_f32(&to_npy_bytes(&a)).unwrap();
        assert_eq!(
            as_f32.into_raw_vec_and_offset().0,
            [0.1f32, 0.0, 3.0, f32::NEG_INFINITY]
        );
        let b = arr2(&[[0.1f32]]);
        let as_f64 = decode::<f64>(&to_npy_bytes(&b)).unwrap();
        assert_eq!(as_f64[[0, 0]], f64::from(0.1f32));
    }

    #[test]
    fn reads_v2_v3_big_endian_and_python2_headers() {
        let make = |version: u8, dict: &str, data: &[u8]| {
            let mut f = MAGIC.to_vec();
            f.extend_from_slice(&[version, 0]);
            let text = format!("{dict}\n");
            if version == 1 {
                f.extend_from_slice(&(text.len() as u16).to_le_bytes());
            } else {
                f.extend_from_slice(&(text.len() as u32).to_le_bytes());
            }
            f.extend_from_slice(text.as_bytes());
            f.extend_from_slice(data);
            f
        };
        let le: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let be: Vec<u8> = [1.5f64, -2.0]
            .iter()
            .flat_map(|v| v.to_be_bytes())
            .collect();
        for bytes in [
            make(
                2,
                "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }",
                &le,
            ),
            make(
                3,
                "{\"descr\": \"<f4\", \"fortran_order\": False, \"shape\": (2,)}",
                &le,
            ),
            make(
                1,
                "{'descr': '>f8', 'fortran_order': False, 'shape': (2L,), }",
                &be,
            ),
            make(
                1,
                "{'shape': (1, 2), 'fortran_order': False, 'descr': '<f4'}",
                &le,
            ),
            // Fortran order of a 1-D array is the same as C order; numpy writes it for views.
            make(
                1,
                "{'descr': '<f4', 'fortran_order': True, 'shape': (2,), }",
                &le,
            ),
        ] {
            let a = decode_f32(&bytes).unwrap();
            assert_eq!(a.iter().copied().collect::<Vec<_>>(), [1.5, -2.0]);
        }
    }

    fn error_of(dict: &str, data_len: usize) -> String {
        let text = format!("{dict}\n");
        let mut f = MAGIC.to_vec();
        f.extend_from_slice(&[1, 0]);
        f.extend_from_slice(&(text.len() as u16).to_le_bytes());
        f.extend_from_slice(text.as_bytes());
        f.resize(f.len() + data_len, 0);
        decode_f32(&f).unwrap_err()
    }

    #[test]
    fn rejects_fortran_order_other_dtypes_and_bad_headers() {
        let e = error_of(
            "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }",
            24,
        );
        assert!(e.contains("Fortran order"), "{e}");
        let e = error_of(
            "{'descr': '<i8', 'fortran_order': False, 'shape': (2,), }",
            16,
        );
        assert!(e.contains("dtype '<i8' is not supported"), "{e}");
        let e = error_of(
            "{'descr': '<f2', 'fortran_order': False, 'shape': (2,), }",
            4,
        );
        assert!(e.contains("dtype '<f2'"), "{e}");
        let e = error_of(
            "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }",
            8,
        );
        assert!(e.contains("structured"), "{e}");
        let e = error_of("{'descr': '<f4', 'shape': (2,), }", 8);
        assert!(e.contains("no 'fortran_order'"), "{e}");
        let e = error_of(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1}",
            8,
        );
        assert!(e.contains("unexpected key 'x'"), "{e}");
        let e = error_of(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (-2,), }",
            8,
        );
        assert!(e.contains("non-negative integer"), "{e}");
        let e = error_of(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }",
            12,
        );
        assert!(e.contains("trailing bytes"), "{e}");
        let e = decode_f32(b"PK\x03\x04rest of a zip").unwrap_err();
        assert!(e.contains(".npz"), "{e}");
        let e = decode_f32(b"\x93NUMPY\x04\x00\x00\x00").unwrap_err();
        assert!(e.contains("version 4.0"), "{e}");
    }

    #[test]
    fn lying_header_does_not_allocate() {
        // Claims 2^62 elements; the file holds 8 data bytes.
        let e = error_of(
            "{'descr': '<f8', 'fortran_order': False, 'shape': (4611686018427387904,), }",
            8,
        );
        assert!(e.contains("too large") || e.contains("truncated"), "{e}");
        let e = error_of(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (100000, 100000), }",
            8,
        );
        assert!(
            e.contains("truncated: shape (100000, 100000) needs 40000000000"),
            "{e}"
        );
        // The header length field claims more than the file holds.
        let mut f = numpy_style_f4_2x3();
        f[8] = 0xff;
        f[9] = 0xff;
        assert!(decode_f32(&f)
            .unwrap_err()
            .contains("header claims 65535 bytes"));
    }

    #[test]
    fn every_truncation_is_an_error() {
        for full in [numpy_style_f4_2x3(), to_npy_bytes(&arr2(&[[1.0f64, 2.0]]))] {
            for len in 0..full.len() {
                assert!(
                    decode_f32(&full[..len]).is_err(),
                    "length {len} of {}",
                    full.len()
                );
            }
            assert!(decode_f32(&full).is_ok());
        }
    }

    #[test]
    fn every_byte_corruption_of_the_header_is_handled() {
        // Not all are errors (a space may become another space), but none may panic.
        let full = numpy_style_f4_2x3();
        for i in 0..128 {
            for v in [0u8, b'(', b')', b',', b'\'', b'9', 0xff] {
                let mut f = full.clone();
                f[i] = v;
                let _ = decode_f32(&f);
            }
        }
    }

    #[test]
    fn read_errors_name_the_file() {
        let dir = crate::io::test_dir("npy-err");
        let path = dir.join("w.npy");
        fs::write(&path, &numpy_style_f4_2x3()[..70]).unwrap();
        let e = read_npy::<f32>(&path).unwrap_err().to_string();
        assert!(
            e.starts_with(&path.display().to_string()) && e.contains("truncated"),
            "{e}"
        );
        write_npy(&path, &Array1::<f32>::zeros(3)).unwrap();
        let e = read_npy_2d::<f32>(&path).unwrap_err().to_string();
        assert!(e.contains("expected a 2-D array, found shape (3,)"), "{e}");
        let e = read_npy::<f32>(dir.join("missing.npy")).unwrap_err();
        assert!(matches!(e, Error::Io { .. }), "{e:?}");
        fs::remove_dir_all(&dir).unwrap();
    }

    /// `python3` with numpy, or `None` (the interop tests then skip, saying so).
    fn python_with_numpy() -> Option<&'static str> {
        let ok = Command::new("python3")
            .args(["-c", "import numpy"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            eprintln!("skipped: python3 with numpy is not available");
        }
        ok.then_some("python3")
    }

    #[test]
    fn numpy_loads_what_we_write() {
        let Some(python) = python_with_numpy() else {
            return;
        };
        let dir = crate::io::test_dir("npy-numpy-load");
        let m = Array::from_shape_fn((3, 4), |(i, j)| (i * 4 + j) as f32 + 0.25);
        write_npy(dir.join("m.npy"), &m).unwrap();
        write_npy(dir.join("v.npy"), &Array1::from_vec(vec![1e-300f64, 2.0])).unwrap();
        write_npy(dir.join("s.npy"), &ArrayD::from_elem(IxDyn(&[]), 7.0f32)).unwrap();
        fs::write(dir.join("hand.npy"), numpy_style_f4_2x3()).unwrap();
        let script = r#"
import io, sys, numpy as np
d = sys.argv[1]
b = io.BytesIO()
np.save(b, np.array([[1, 2, 3], [4, 5, 6.5]], dtype=np.float32))
assert b.getvalue() == open(d + "/hand.npy", "rb").read(), "np.save writes other bytes"
m = np.load(d + "/m.npy")
assert m.dtype == np.float32 and m.shape == (3, 4) and m.flags.c_contiguous, (m.dtype, m.shape)
assert (m == np.arange(12, dtype=np.float32).reshape(3, 4) + 0.25).all(), m
v = np.load(d + "/v.npy")
assert v.dtype == np.float64 and v.tolist() == [1e-300, 2.0], v
s = np.load(d + "/s.npy")
assert s.shape == () and s == 7.0, s
"#;
        let out = Command::new(python)
            .args(["-c", script])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn we_load_what_numpy_writes() {
        let Some(python) = python_with_numpy() else {
            return;
        };
        let dir = crate::io::test_dir("npy-numpy-save");
        let script = r#"
import sys, numpy as np
d = sys.argv[1]
w = (np.arange(784 * 5).reshape(784, 5) / 7.0)
np.save(d + "/w8.npy", w)
np.save(d + "/w4.npy", w.astype(np.float32))
np.save(d + "/wT.npy", np.arange(6, dtype=np.float32).reshape(2, 3).T)
np.save(d + "/i.npy", np.arange(3))
"#;
        let out = Command::new(python)
            .args(["-c", script])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let expect = Array::from_shape_fn((784, 5), |(i, j)| ((i * 5 + j) as f64 / 7.0) as f32);
        assert_eq!(read_npy_2d::<f32>(dir.join("w8.npy")).unwrap(), expect);
        assert_eq!(read_npy_2d::<f32>(dir.join("w4.npy")).unwrap(), expect);
        let e = read_npy::<f32>(dir.join("wT.npy")).unwrap_err().to_string();
        assert!(e.contains("Fortran order"), "{e}");
        let e = read_npy::<f32>(dir.join("i.npy")).unwrap_err().to_string();
        assert!(e.contains("dtype '<i8' is not supported"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
