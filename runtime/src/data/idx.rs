//! The IDX file format (LeCun's MNIST distribution format), for unsigned-byte tensors.
//!
//! An IDX file is a header followed by the elements in row-major order:
//!
//! ```text
//! 0x00 0x00 <type> <ndim>      magic; type 0x08 = unsigned byte (the only type MNIST uses)
//! ndim x u32, big-endian       the dims, outermost first
//! product(dims) elements       the data, one byte each for type 0x08
//! ```
//!
//! Files may be gzipped (recognised by the gzip magic bytes `1f 8b`, whatever their name) or
//! raw. [`read_u8`] checks the header against the file's length, so a truncated file, trailing
//! data or a header with absurd dims is an error naming the file, not a panic or a huge
//! allocation. [`write_u8`] writes either form, deterministically.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use flate2::{Compression, GzBuilder};

use super::{bytes_text, gunzip_reader, is_gzip, read_file, read_up_to};
use super::{DataError, DataErrorKind};

/// IDX element type code for unsigned bytes.
const TYPE_U8: u8 = 0x08;

/// The most data bytes [`read_u8`] accepts (2 GiB); a header claiming more is rejected before
/// anything is allocated. MNIST's largest file holds 47 040 000 bytes.
pub const MAX_DATA_BYTES: u64 = 1 << 31;

/// Most dims an IDX header may declare (the format allows 255; real files use 1 to 3).
const MAX_NDIM: u8 = 16;

/// An IDX tensor of unsigned bytes: its dims and its row-major data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idx {
    dims: Vec<usize>,
    /// The data is `buf[start..]`: for a raw file `buf` is the whole file and `start` the
    /// header's length, so no copy is made.
    buf: Vec<u8>,
    start: usize,
}

impl Idx {
    /// The dims from the header, outermost first, e.g. `[60000, 28, 28]`.
    pub fn dims(&self) -> &[usize] {
        &self.dims
    }

    /// The elements in row-major order; `data().len()` is the product of [`dims`](Self::dims).
    pub fn data(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// The elements as an owned vector.
    pub fn into_data(mut self) -> Vec<u8> {
        self.buf.drain(..self.start);
        self.buf
    }
}

/// Reads an IDX file of unsigned bytes, gzipped or raw.
///
/// Errors name the file and say what is wrong: not found, corrupt or truncated gzip data, a
/// wrong magic number, an element type other than unsigned byte, or dims that disagree with
/// the amount of data.
pub fn read_u8(path: impl AsRef<Path>) -> Result<Idx, DataError> {
    let path = path.as_ref();
    let file = read_file(path)?;
    decode_u8(file).map_err(|kind| DataError::new(path, kind))
}

/// Writes an IDX file of unsigned bytes; gzipped (best compression) if `path` ends in `.gz`.
///
/// The output is deterministic: the gzip header holds no file name and no time stamp.
/// Fails if `data.len()` is not the product of `dims`, or a dim does not fit in a `u32`.
pub fn write_u8(path: impl AsRef<Path>, dims: &[usize], data: &[u8]) -> Result<(), DataError> {
    let path = path.as_ref();
    let io_err = |e: io::Error| DataError::new(path, DataErrorKind::Io(e));
    let mut bytes = Vec::with_capacity(data.len() + 4 + 4 * dims.len());
    encode_u8(&mut bytes, dims, data).map_err(|e| DataError::format(path, e))?;
    if path.extension().is_some_and(|ext| ext == "gz") {
        // No name, mtime 0, OS byte "unknown": the same input always gives the same file.
        let mut gz = GzBuilder::new().write(Vec::new(), Compression::best());
        gz.write_all(&bytes).map_err(io_err)?;
        bytes = gz.finish().map_err(io_err)?;
    }
    fs::write(path, bytes).map_err(io_err)
}

/// Writes the IDX encoding (header, then data) of an unsigned-byte tensor to `w`.
///
/// Fails with [`io::ErrorKind::InvalidInput`] if `data.len()` is not the product of `dims`, if
/// there are no dims or more than 255, or if a dim does not fit in a `u32`.
pub fn encode_u8(mut w: impl Write, dims: &[usize], data: &[u8]) -> io::Result<()> {
    let invalid = |msg: String| io::Error::new(io::ErrorKind::InvalidInput, msg);
    let ndim = u8::try_from(dims.len())
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| invalid(format!("an IDX file has 1 to 255 dims, not {}", dims.len())))?;
    let count = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    if count != Some(data.len()) {
        return Err(invalid(format!(
            "dims {dims:?} do not match {} data bytes",
            data.len()
        )));
    }
    w.write_all(&[0, 0, TYPE_U8, ndim])?;
    for &d in dims {
        let d = u32::try_from(d).map_err(|_| invalid(format!("dim {d} does not fit in a u32")))?;
        w.write_all(&d.to_be_bytes())?;
    }
    w.write_all(data)
}

/// Decodes a whole IDX file (gzipped or raw) held in memory.
pub(crate) fn decode_u8(file: Vec<u8>) -> Result<Idx, DataErrorKind> {
    if is_gzip(&file) {
        let mut data = Vec::new();
        let dims = decode_u8_with(&file, |_| Ok(()), |chunk| data.extend_from_slice(chunk))?;
        return Ok(Idx {
            dims,
            buf: data,
            start: 0,
        });
    }
    // Raw: the data stays where it is, after the header.
    let dims = decode_u8_with(&file, |_| Ok(()), |_| {})?;
    let start = 4 + 4 * dims.len();
    Ok(Idx {
        dims,
        buf: file,
        start,
    })
}

/// Bytes decompressed per step when streaming: big enough to amortise the calls, small
/// enough to stay in cache while `sink` consumes them.
const CHUNK: usize = 256 << 10;

/// Decodes an IDX file (gzipped or raw) held in memory without collecting it: `check` sees
/// the dims first (and may reject them), then `sink` receives the data in order, in chunks.
/// Returns the dims. On error, `sink` may have seen part of the data; the caller drops it.
///
/// Memory: one chunk, plus what `sink` keeps; nothing is sized from the header's claims.
pub(crate) fn decode_u8_with(
    file: &[u8],
    check: impl FnOnce(&[usize]) -> Result<(), DataErrorKind>,
    mut sink: impl FnMut(&[u8]),
) -> Result<Vec<usize>, DataErrorKind> {
    if !is_gzip(file) {
        let dims = parse_header(file)?;
        let data = &file[4 + 4 * dims.len()..];
        let expected = data_len(&dims)?;
        check_len(&dims, expected, data.len() as u64, false)?;
        check(&dims)?;
        sink(data);
        return Ok(dims);
    }
    let mut reader = gunzip_reader(file);
    let gz = DataErrorKind::Gzip;
    // The header first: 4 bytes of magic, then 4 per dim.
    let mut header = [0u8; 4 + 4 * MAX_NDIM as usize];
    let got = read_up_to(&mut reader, &mut header[..4]).map_err(gz)?;
    let ndim = parse_magic(&header[..got])?;
    let header_len = 4 + 4 * ndim as usize;
    let got = 4 + read_up_to(&mut reader, &mut header[4..header_len]).map_err(gz)?;
    let dims = parse_header(&header[..got])?;
    let expected = data_len(&dims)?;
    check(&dims)?;
    let mut buf = vec![0u8; CHUNK.min(expected as usize)];
    let mut found = 0u64;
    while found < expected {
        let want = buf.len().min((expected - found) as usize);
        let n = read_up_to(&mut reader, &mut buf[..want]).map_err(gz)?;
        if n == 0 {
            break;
        }
        sink(&buf[..n]);
        found += n as u64;
    }
    // One more byte: either there is trailing data, or the stream ends here and the decoder
    // verifies the gzip checksum and length.
    let more = read_up_to(&mut reader, &mut [0u8; 1]).map_err(gz)? > 0;
    check_len(&dims, expected, found, more)?;
    Ok(dims)
}

/// Checks the 4 magic bytes; returns the number of dims.
fn parse_magic(magic: &[u8]) -> Result<u8, DataErrorKind> {
    let bad = |msg: String| Err(DataErrorKind::Format(msg));
    if magic.len() < 4 {
        return bad(format!(
            "not an IDX file: {} bytes, shorter than the 4-byte magic number",
            magic.len()
        ));
    }
    if magic[0] != 0 || magic[1] != 0 {
        return bad(format!(
            "not an IDX file: magic number {:02x} {:02x} {:02x} {:02x} does not start with 00 00",
            magic[0], magic[1], magic[2], magic[3]
        ));
    }
    if magic[2] != TYPE_U8 {
        let name = match magic[2] {
            0x09 => "signed byte",
            0x0b => "i16",
            0x0c => "i32",
            0x0d => "f32",
            0x0e => "f64",
            _ => "unknown",
        };
        return bad(format!(
            "IDX element type 0x{:02x} ({name}) is not supported; only unsigned byte (0x08)",
            magic[2]
        ));
    }
    let ndim = magic[3];
    if ndim == 0 || ndim > MAX_NDIM {
        return bad(format!(
            "IDX header declares {ndim} dims; expected 1 to {MAX_NDIM}"
        ));
    }
    Ok(ndim)
}

/// Parses magic and dims from the start of `bytes` (which may hold more than the header).
fn parse_header(bytes: &[u8]) -> Result<Vec<usize>, DataErrorKind> {
    let ndim = parse_magic(&bytes[..bytes.len().min(4)])? as usize;
    let header_len = 4 + 4 * ndim;
    if bytes.len() < header_len {
        return Err(DataErrorKind::Format(format!(
            "truncated IDX header: {ndim} dims need {header_len} header bytes, the file has {}",
            bytes.len()
        )));
    }
    Ok(bytes[4..header_len]
        .chunks_exact(4)
        .map(|d| u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize)
        .collect())
}

/// The number of data bytes the dims promise, checked for overflow and against the cap.
fn data_len(dims: &[usize]) -> Result<u64, DataErrorKind> {
    dims.iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
        .filter(|&n| n <= MAX_DATA_BYTES)
        .ok_or_else(|| {
            DataErrorKind::Format(format!(
                "IDX header dims {dims:?} claim more than {}, the most this loader accepts",
                bytes_text(MAX_DATA_BYTES)
            ))
        })
}

fn check_len(dims: &[usize], expected: u64, found: u64, more: bool) -> Result<(), DataErrorKind> {
    if found == expected && !more {
        return Ok(());
    }
    let what = if found < expected {
        format!("truncated: the file has only {}", bytes_text(found))
    } else {
        let extra = if more {
            "more".to_string()
        } else {
            bytes_text(found)
        };
        format!("the file has {extra} after the header (trailing data)")
    };
    Err(DataErrorKind::Format(format!(
        "IDX header dims {dims:?} promise {} of data, but {what}",
        bytes_text(expected)
    )))
}

#[cfg(test)]
mod tests {
    use super::super::tests::gzip;
    use super::*;

    /// A small valid IDX file: 3 images of 2x4 pixels.
    fn sample() -> (Vec<usize>, Vec<u8>, Vec<u8>) {
        let dims = vec![3, 2, 4];
        let data: Vec<u8> = (0..24u8).map(|i| i * 10).collect();
        let mut file = Vec::new();
        encode_u8(&mut file, &dims, &data).unwrap();
        (dims, data, file)
    }

    fn format_err(r: Result<Idx, DataErrorKind>) -> String {
        match r {
            Err(DataErrorKind::Format(msg)) => msg,
            other => panic!("expected a format error, got {other:?}"),
        }
    }

    /// Tiny xorshift64 RNG: deterministic, no dependency.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn round_trip_raw_and_gzipped() {
        let (dims, data, file) = sample();
        assert_eq!(
            &file[..16],
            &[0, 0, 8, 3, 0, 0, 0, 3, 0, 0, 0, 2, 0, 0, 0, 4]
        );
        for bytes in [file.clone(), gzip(&file)] {
            let idx = decode_u8(bytes).unwrap();
            assert_eq!(idx.dims(), &dims[..]);
            assert_eq!(idx.data(), &data[..]);
            assert_eq!(idx.into_data(), data);
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        let (_, _, file) = sample();
        for len in 0..file.len() {
            let msg = format_err(decode_u8(file[..len].to_vec()));
            assert!(
                msg.contains("truncated") || msg.contains("shorter than"),
                "raw, {len} bytes: {msg}"
            );
        }
        let gz = gzip(&file);
        for len in 0..gz.len() {
            // A gzip prefix shorter than the magic is "not an IDX file"; a longer one is a gzip
            // error: never accepted, never a panic.
            assert!(decode_u8(gz[..len].to_vec()).is_err(), "gzip, {len} bytes");
        }
    }

    #[test]
    fn trailing_data_is_an_error() {
        let (_, _, mut file) = sample();
        file.push(0);
        let msg = format_err(decode_u8(gzip(&file)));
        assert!(msg.contains("trailing data"), "{msg}");
        let msg = format_err(decode_u8(file));
        assert_eq!(
            msg,
            "IDX header dims [3, 2, 4] promise 24 bytes of data, \
             but the file has 25 bytes after the header (trailing data)"
        );
    }

    #[test]
    fn bad_magic_and_types() {
        let (_, _, file) = sample();
        let with = |i: usize, b: u8| {
            let mut f = file.clone();
            f[i] = b;
            f
        };
        let msg = format_err(decode_u8(with(0, 0x12)));
        assert!(
            msg.starts_with("not an IDX file: magic number 12 00 08 03"),
            "{msg}"
        );
        let msg = format_err(decode_u8(with(2, 0x0d)));
        assert!(msg.contains("0x0d (f32) is not supported"), "{msg}");
        let msg = format_err(decode_u8(with(3, 0)));
        assert!(msg.contains("declares 0 dims"), "{msg}");
        let msg = format_err(decode_u8(gzip(&with(3, 200))));
        assert!(msg.contains("declares 200 dims"), "{msg}");
        let msg = format_err(decode_u8(b"hello world, not idx".to_vec()));
        assert!(msg.starts_with("not an IDX file"), "{msg}");
    }

    #[test]
    fn lying_header_allocates_nothing_large() {
        // 4 billion x 4 billion x 255: overflows u64 arithmetic in the naive product.
        let huge = [
            0, 0, 8, 3, 255, 255, 255, 255, 255, 255, 255, 255, 0, 0, 0, 255,
        ];
        for bytes in [huge.to_vec(), gzip(&huge)] {
            let msg = format_err(decode_u8(bytes));
            assert!(msg.contains("claim more than"), "{msg}");
        }
        // 1.5 GiB claimed (under the cap) but 8 bytes present: a length error, found before
        // anything that size is allocated.
        let lie = [0, 0, 8, 1, 0x60, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
        for bytes in [lie.to_vec(), gzip(&lie)] {
            let msg = format_err(decode_u8(bytes));
            assert!(
                msg.contains("truncated: the file has only 8 bytes"),
                "{msg}"
            );
        }
    }

    #[test]
    fn garbage_gzip_is_a_gzip_error() {
        let mut bytes = vec![0x1f, 0x8b];
        bytes.extend_from_slice(b"definitely not deflate data");
        assert!(matches!(decode_u8(bytes), Err(DataErrorKind::Gzip(_))));
    }

    #[test]
    fn random_bit_flips_never_panic() {
        let (dims, data, file) = sample();
        let gz = gzip(&file);
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        for round in 0..2000 {
            let mut bytes = if round % 2 == 0 {
                file.clone()
            } else {
                gz.clone()
            };
            for _ in 0..1 + rng.below(3) {
                let i = rng.below(bytes.len());
                bytes[i] ^= 1 << rng.below(8);
            }
            // A flip in the data of a raw file is undetectable and fine; anything accepted
            // must still be self-consistent.
            if let Ok(idx) = decode_u8(bytes) {
                let n: usize = idx.dims().iter().product();
                assert_eq!(n, idx.data().len());
                if round % 2 == 1 {
                    // gzip's CRC catches flips in the compressed data (or they are in
                    // header fields that don't matter).
                    assert_eq!((idx.dims(), idx.data()), (&dims[..], &data[..]));
                }
            }
        }
    }

    #[test]
    fn encode_rejects_inconsistent_input() {
        let err = encode_u8(Vec::new(), &[2, 3], &[0; 5]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(encode_u8(Vec::new(), &[], &[]).is_err());
        assert!(encode_u8(Vec::new(), &[usize::MAX, 2], &[]).is_err());
    }

    #[test]
    fn file_round_trip_is_deterministic() {
        let (dims, data, _) = sample();
        let dir = std::env::temp_dir().join(format!("tensor-fn-idx-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a-idx3-ubyte.gz"), dir.join("b-idx3-ubyte.gz"));
        write_u8(&a, &dims, &data).unwrap();
        write_u8(&b, &dims, &data).unwrap();
        let (fa, fb) = (fs::read(&a).unwrap(), fs::read(&b).unwrap());
        assert_eq!(fa, fb);
        assert_eq!(&fa[..10], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 255]);
        assert_eq!(read_u8(&a).unwrap().data(), &data[..]);
        let raw = dir.join("c-idx3-ubyte");
        write_u8(&raw, &dims, &data).unwrap();
        assert_eq!(read_u8(&raw).unwrap().dims(), &dims[..]);
        let err = read_u8(dir.join("missing")).unwrap_err();
        assert!(err.is_not_found(), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
