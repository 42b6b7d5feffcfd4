//! Dataset loaders.
//!
//! - [`mnist`]: MNIST, from gzipped or raw IDX files (the copy shipped in `data/mnist` is the
//!   default) or from the classic deeplearning.net `mnist.pkl.gz`.
//! - [`idx`]: the IDX file format itself (unsigned-byte tensors), reading and writing.
//!
//! Every loader returns [`DataError`] on bad input: a missing file, a truncated or corrupt gzip
//! stream, a header that disagrees with the file's length, a pickle of another layout. None of
//! them panics, and none allocates more than the input actually holds: sizes claimed by headers
//! are checked for overflow and against a cap before anything is reserved, and decompression
//! stops at the size the header promised.

use std::fmt;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use flate2::bufread::MultiGzDecoder;

pub mod idx;
pub mod mnist;
mod pickle;

pub use mnist::Mnist;

/// A dataset file could not be read: which file, and what is wrong with it.
///
/// Displays as `path: reason`, e.g.
/// `data/mnist/train-images-idx3-ubyte.gz: corrupt or truncated gzip data: incomplete deflate stream`.
#[derive(Debug, thiserror::Error)]
#[error("{}: {kind}", path.display())]
pub struct DataError {
    /// The file (or directory) the error is about.
    pub path: PathBuf,
    /// What is wrong with it.
    pub kind: DataErrorKind,
}

/// What is wrong with a dataset file; see [`DataError`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataErrorKind {
    /// The file or directory does not exist; the text says what was looked for.
    #[error("{0}")]
    NotFound(String),
    /// The file exists but reading it failed (permissions, I/O error).
    #[error("cannot read: {0}")]
    Io(io::Error),
    /// The gzip stream is truncated, corrupt or has a wrong checksum.
    #[error("corrupt or truncated gzip data: {0}")]
    Gzip(io::Error),
    /// The (decompressed) content does not have the expected layout: a wrong magic number, a
    /// header that disagrees with the length, an unsupported pickle opcode, a label out of
    /// range, two files that disagree with each other, ...
    #[error("{0}")]
    Format(String),
}

impl DataError {
    pub(crate) fn new(path: impl Into<PathBuf>, kind: DataErrorKind) -> Self {
        DataError {
            path: path.into(),
            kind,
        }
    }

    pub(crate) fn format(path: impl Into<PathBuf>, reason: impl fmt::Display) -> Self {
        DataError::new(path, DataErrorKind::Format(reason.to_string()))
    }

    /// True when the file or directory does not exist (as opposed to existing but being bad).
    pub fn is_not_found(&self) -> bool {
        matches!(self.kind, DataErrorKind::NotFound(_))
    }
}

/// The two bytes every gzip member starts with (RFC 1952).
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

fn is_gzip(bytes: &[u8]) -> bool {
    bytes.starts_with(&GZIP_MAGIC)
}

/// Reads a whole file, mapping a missing file to [`DataErrorKind::NotFound`].
fn read_file(path: &Path) -> Result<Vec<u8>, DataError> {
    std::fs::read(path).map_err(|e| {
        let kind = if e.kind() == io::ErrorKind::NotFound {
            DataErrorKind::NotFound("no such file or directory".into())
        } else {
            DataErrorKind::Io(e)
        };
        DataError::new(path, kind)
    })
}

/// A gzip decoder over an in-memory file. Multi-member streams are accepted (as `gzip -d`
/// does), so bytes after the last member are parsed as another header and garbage there is an
/// error rather than silently ignored.
fn gunzip_reader(compressed: &[u8]) -> MultiGzDecoder<&[u8]> {
    MultiGzDecoder::new(compressed)
}

/// Reads until `buf` is full or the reader ends; returns how many bytes were read. Unlike
/// `read_exact`, a short count (a clean end of data) is told apart from a decoder error.
fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Reads the rest of `reader`, but at most `limit` bytes; returns the bytes and whether more
/// were left. Memory grows with the data actually decoded, never with a size someone claimed.
fn read_at_most(reader: &mut impl Read, limit: u64) -> io::Result<(Vec<u8>, bool)> {
    let mut out = Vec::new();
    reader.take(limit).read_to_end(&mut out)?;
    let mut probe = [0u8; 1];
    let more = read_up_to(reader, &mut probe)? > 0;
    Ok((out, more))
}

/// Decompresses a whole in-memory gzip file of at most `limit` decompressed bytes.
fn gunzip(compressed: &[u8], limit: u64) -> Result<Vec<u8>, DataErrorKind> {
    let mut reader = gunzip_reader(compressed);
    match read_at_most(&mut reader, limit) {
        Ok((_, true)) => Err(DataErrorKind::Format(format!(
            "decompresses to more than {limit} bytes, the most this loader accepts"
        ))),
        Ok((bytes, false)) => Ok(bytes),
        Err(e) => Err(DataErrorKind::Gzip(e)),
    }
}

/// `n` bytes, for messages: "47040000 bytes (44.9 MiB)".
fn bytes_text(n: u64) -> String {
    if n < 1 << 20 {
        format!("{n} bytes")
    } else {
        format!("{n} bytes ({:.1} MiB)", n as f64 / (1u64 << 20) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{write::GzEncoder, Compression};
    use std::io::Write;

    pub(crate) fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn gunzip_round_trip_and_limit() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let gz = gzip(&data);
        assert_eq!(gunzip(&gz, 10_000).unwrap(), data);
        let err = gunzip(&gz, 9_999).unwrap_err();
        assert!(err.to_string().contains("more than 9999 bytes"), "{err}");
    }

    #[test]
    fn gunzip_rejects_every_truncation() {
        let data: Vec<u8> = (0..3_000u32).map(|i| (i * 7 % 256) as u8).collect();
        let gz = gzip(&data);
        for len in 0..gz.len() {
            assert!(
                gunzip(&gz[..len], 1 << 20).is_err(),
                "truncated to {len} bytes was accepted"
            );
        }
    }

    #[test]
    fn gunzip_rejects_trailing_garbage() {
        let mut gz = gzip(b"hello");
        gz.extend_from_slice(b"garbage");
        assert!(matches!(gunzip(&gz, 100), Err(DataErrorKind::Gzip(_))));
        // A second, valid member is fine (as with `gzip -d`).
        let mut two = gzip(b"hello ");
        two.extend_from_slice(&gzip(b"world"));
        assert_eq!(gunzip(&two, 100).unwrap(), b"hello world");
    }

    #[test]
    fn missing_file_is_not_found() {
        let err = read_file(Path::new("/nonexistent/tensor-fn/mnist")).unwrap_err();
        assert!(err.is_not_found());
        assert_eq!(
            err.to_string(),
            "/nonexistent/tensor-fn/mnist: no such file or directory"
        );
    }
}
