//! The files a training run writes and reads back: arrays, pictures, learning curves and
//! checkpoints.
//!
//! - [`npy`]: numpy's `.npy` format (v1.0 written; v1.0, v2.0 and v3.0 read), `f32`/`f64`.
//! - [`image`]: PNG pictures drawn without a plotting library: a grid of learned filters, test
//!   digits above their reconstructions, a line plot of the cost per epoch.
//! - [`checkpoint`]: named `f32` tensors plus training metadata in one checksummed file, for
//!   `--resume` and `--init`.
//! - [`write_cost_csv`]: the learning curve as `epoch,cost,seconds`.
//!
//! Every writer goes through [`write_atomic`]: the bytes land in a temporary file next to the
//! target, are flushed to disk, and the temporary is renamed over the target. A crash or a full
//! disk in the middle of a save leaves the previous file as it was, never half a file.
//!
//! Every reader returns [`Error`] on bad input and never panics: sizes claimed by a header are
//! checked against the file's actual length before anything is allocated.

use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::Error;

pub mod checkpoint;
pub mod image;
pub mod npy;

pub use checkpoint::Checkpoint;
pub use image::{
    write_filter_grid, write_line_plot, write_reconstructions, GrayImage, GridStyle, LinePlot,
    RgbImage,
};
pub use npy::{read_npy, read_npy_2d, write_npy, NpyElement};

/// Writes `bytes` to `path` atomically: either the whole new content is there afterwards, or
/// (on any error, or a crash midway) the previous file is left untouched.
///
/// The bytes go to a fresh temporary file in the same directory (`.NAME.PID.N.tmp`), which is
/// flushed to disk (`fsync`) and then renamed over `path`; on Unix the directory is synced too,
/// so the rename itself survives a power cut. On error the temporary file is removed.
///
/// The directory must exist. If `path` is a symbolic link, the link is replaced, not the file it
/// points to. Errors are [`Error::Io`] naming `path`.
pub fn write_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> Result<(), Error> {
    write_atomic_with(path, |w| w.write_all(bytes))
}

/// Like [`write_atomic`], but the content is streamed by `write` into a buffered writer, so it
/// need not be built in memory first. If `write` returns an error, nothing is replaced and that
/// error is returned (as [`Error::Io`] naming `path`).
pub fn write_atomic_with<F>(path: impl AsRef<Path>, write: F) -> Result<(), Error>
where
    F: FnOnce(&mut dyn Write) -> io::Result<()>,
{
    let path = path.as_ref();
    write_atomic_impl(path, write).map_err(|source| io_error(path, source))
}

/// Counts temporary files made by this process, so that concurrent writers of one target
/// (threads) never share a temporary name.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A temporary file that is removed when dropped, unless it was renamed into place.
struct TempFile {
    path: PathBuf,
    keep: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            // Best effort: the error that made us give up is the one worth reporting.
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn write_atomic_impl<F>(path: &Path, write: F) -> io::Result<()>
where
    F: FnOnce(&mut dyn Write) -> io::Result<()>,
{
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a file name (ends in `..` or `/`)",
        )
    })?;
    // `Path::parent` is `Some("")` for a bare file name: that means the current directory.
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    // Keep the temporary name within the usual 255-byte limit however long the target is.
    let stem: String = name.to_string_lossy().chars().take(180).collect();
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut temp = TempFile {
        path: dir.join(format!(".{stem}.{}.{n}.tmp", std::process::id())),
        keep: false,
    };
    // `create_new`: never write through a file (or link) that happens to have the temp's name.
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temp.path)
        .map_err(|e| {
            context(
                e,
                format!("cannot create a temporary file in {}", dir.display()),
            )
        })?;
    let mut out = BufWriter::new(file);
    write(&mut out)?;
    let file = out.into_inner().map_err(io::IntoInnerError::into_error)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&temp.path, path).map_err(|e| context(e, "cannot replace the file".into()))?;
    temp.keep = true;
    sync_dir(dir);
    Ok(())
}

/// Makes a rename in `dir` durable. Some file systems refuse to sync a directory; the rename
/// has happened either way, so failures are ignored.
fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

/// Prefixes an I/O error's message with what we were doing, keeping its kind.
fn context(e: io::Error, what: String) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

pub(crate) fn io_error(path: &Path, source: io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        source,
    }
}

pub(crate) fn format_error(path: &Path, reason: impl Into<String>) -> Error {
    Error::Format {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// Reads a whole file, as [`Error::Io`] naming it on failure.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, Error> {
    fs::read(path).map_err(|e| io_error(path, e))
}

/// One row of the learning curve written by [`write_cost_csv`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EpochCost {
    /// The epoch, counted from 1.
    pub epoch: usize,
    /// The mean training cost over the epoch's minibatches.
    pub cost: f64,
    /// Wall-clock seconds the epoch took.
    pub seconds: f64,
}

/// Writes the learning curve as CSV with the header `epoch,cost,seconds`, one row per entry.
///
/// Costs are written with Rust's shortest round-trip formatting (reading them back gives the
/// same `f64`), seconds with microsecond precision. The write is atomic ([`write_atomic`]).
pub fn write_cost_csv(path: impl AsRef<Path>, rows: &[EpochCost]) -> Result<(), Error> {
    let mut text = String::from("epoch,cost,seconds\n");
    for r in rows {
        // Writing to a String cannot fail.
        let _ = writeln!(text, "{},{},{:.6}", r.epoch, r.cost, r.seconds);
    }
    write_atomic(path, text.as_bytes())
}

/// A fresh empty directory under the system temp dir for one test; removed by the test.
#[cfg(test)]
pub(crate) fn test_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tensor-fn-io-{name}-{}-{}",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names of the entries of `dir`, sorted.
    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn write_atomic_creates_and_replaces() {
        let dir = test_dir("atomic-replace");
        let target = dir.join("out.bin");
        write_atomic(&target, b"first").unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"first");
        write_atomic(&target, b"second, longer").unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"second, longer");
        assert_eq!(entries(&dir), ["out.bin"], "no temporary file left behind");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn failed_write_leaves_old_file_and_no_temp() {
        let dir = test_dir("atomic-fail");
        let target = dir.join("ckpt.bin");
        write_atomic(&target, b"old content").unwrap();
        // The writer gets halfway and fails, as a full disk would.
        let err = write_atomic_with(&target, |w| {
            w.write_all(&[7u8; 100_000])?;
            Err(io::Error::other("disk full"))
        })
        .unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("ckpt.bin"), "{err}");
        assert_eq!(fs::read(&target).unwrap(), b"old content");
        assert_eq!(entries(&dir), ["ckpt.bin"]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn failed_rename_leaves_target_and_no_temp() {
        let dir = test_dir("atomic-rename");
        // A non-empty directory where the file should go: the rename over it must fail.
        let target = dir.join("features.png");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("keep.txt"), b"precious").unwrap();
        let err = write_atomic(&target, b"new").unwrap_err();
        assert!(err.to_string().contains("cannot replace the file"), "{err}");
        assert_eq!(fs::read(target.join("keep.txt")).unwrap(), b"precious");
        assert_eq!(entries(&dir), ["features.png"]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_directory_is_an_io_error_naming_the_target() {
        let dir = test_dir("atomic-nodir");
        let target = dir.join("no/such/dir/w.npy");
        let err = write_atomic(&target, b"x").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("no/such/dir/w.npy"), "{text}");
        assert!(text.contains("cannot create a temporary file"), "{text}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn cost_csv_has_header_and_round_trip_costs() {
        let dir = test_dir("csv");
        let path = dir.join("cost.csv");
        let rows = [
            EpochCost {
                epoch: 1,
                cost: 0.1 + 0.2,
                seconds: 1.5,
            },
            EpochCost {
                epoch: 2,
                cost: 63.25,
                seconds: 1.25,
            },
        ];
        write_cost_csv(&path, &rows).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "epoch,cost,seconds\n1,0.30000000000000004,1.500000\n2,63.25,1.250000\n"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
