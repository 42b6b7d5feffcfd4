//! PNG pictures of a training run, drawn without a plotting library: the grid of learned
//! filters, test digits above their reconstructions, and a line plot of the cost per epoch.
//!
//! Grayscale pictures follow matplotlib's `gist_yarg` colour map, as the seed's figures do: low
//! values are white, high values black, linear in between, so strokes are dark on a light
//! background. Each value becomes a `scale` x `scale` block of pixels (2 by default, so a
//! 28x28 digit is 56x56 pixels) and tiles are separated by a light gray gap; see [`GridStyle`].
//!
//! Every `write_*` function writes atomically ([`super::write_atomic`]); every `render_*`
//! function returns the pixels instead, for tests or further drawing.

use std::path::Path;

use ndarray::ArrayView2;

use super::{format_error, write_atomic};
use crate::Error;

/// No picture we draw needs more pixels than this; a larger one means a wrong argument.
const MAX_PIXELS: u64 = 1 << 28;

/// An 8-bit grayscale picture, row-major, one byte per pixel (0 black, 255 white).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrayImage {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width * height` gray levels, row by row from the top.
    pub pixels: Vec<u8>,
}

/// An 8-bit RGB picture, row-major, three bytes per pixel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `3 * width * height` bytes, `[r, g, b]` per pixel, row by row from the top.
    pub pixels: Vec<u8>,
}

impl GrayImage {
    /// A picture of one gray level. Sizes over 2^28 pixels are refused.
    pub fn new(width: u32, height: u32, gray: u8) -> Result<Self, Error> {
        let n = checked_pixels(width, height, 1)?;
        Ok(GrayImage {
            width,
            height,
            pixels: vec![gray; n],
        })
    }

    /// The gray level at column `x`, row `y` (`None` outside the picture).
    pub fn get(&self, x: u32, y: u32) -> Option<u8> {
        (x < self.width && y < self.height)
            .then(|| self.pixels[y as usize * self.width as usize + x as usize])
    }

    /// The picture as PNG bytes (8-bit grayscale).
    pub fn encode_png(&self) -> Result<Vec<u8>, Error> {
        encode_png(
            self.width,
            self.height,
            png::ColorType::Grayscale,
            &self.pixels,
            None,
        )
        .map_err(|e| Error::Internal(format!("PNG encoding failed: {e}")))
    }

    /// Writes the picture as a PNG file, atomically.
    pub fn write_png(&self, path: impl AsRef<Path>) -> Result<(), Error> {
        write_atomic(path, &self.encode_png()?)
    }

    fn fill_rect(&mut self, x: u32, y: u32, w: u32, h: u32, gray: u8) {
        for row in y..(y + h).min(self.height) {
            let start = row as usize * self.width as usize;
            let (a, b) = (x.min(self.width) as usize, (x + w).min(self.width) as usize);
            self.pixels[start + a..start + b].fill(gray);
        }
    }
}

impl RgbImage {
    /// A picture of one colour. Sizes over 2^28 pixels are refused.
    pub fn new(width: u32, height: u32, rgb: [u8; 3]) -> Result<Self, Error> {
        let n = checked_pixels(width, height, 3)?;
        let pixels = rgb.iter().copied().cycle().take(n).collect();
        Ok(RgbImage {
            width,
            height,
            pixels,
        })
    }

    /// The colour at column `x`, row `y` (`None` outside the picture).
    pub fn get(&self, x: u32, y: u32) -> Option<[u8; 3]> {
        (x < self.width && y < self.height).then(|| {
            let i = 3 * (y as usize * self.width as usize + x as usize);
            [self.pixels[i], self.pixels[i + 1], self.pixels[i + 2]]
        })
    }

    /// The picture as PNG bytes (8-bit RGB).
    pub fn encode_png(&self) -> Result<Vec<u8>, Error> {
        encode_png(
            self.width,
            self.height,
            png::ColorType::Rgb,
            &self.pixels,
            None,
        )
        .map_err(|e| Error::Internal(format!("PNG encoding failed: {e}")))
    }

    /// Writes the picture as a PNG file, atomically.
    pub fn write_png(&self, path: impl AsRef<Path>) -> Result<(), Error> {
        write_atomic(path, &self.encode_png()?)
    }

    fn set(&mut self, x: i64, y: i64, rgb: [u8; 3]) {
        if x >= 0
            && y >= 0
            && (x as u64) < u64::from(self.width)
            && (y as u64) < u64::from(self.height)
        {
            let i = 3 * (y as usize * self.width as usize + x as usize);
            self.pixels[i..i + 3].copy_from_slice(&rgb);
        }
    }

    /// Mixes `rgb` into the pixel with weight `alpha` in [0, 1].
    fn blend(&mut self, x: i64, y: i64, rgb: [u8; 3], alpha: f32) {
        if let Some(old) = self.get_i(x, y) {
            let mix =
                |o: u8, n: u8| (f32::from(o) + (f32::from(n) - f32::from(o)) * alpha).round() as u8;
            self.set(
                x,
                y,
                [
                    mix(old[0], rgb[0]),
                    mix(old[1], rgb[1]),
                    mix(old[2], rgb[2]),
                ],
            );
        }
    }

    fn get_i(&self, x: i64, y: i64) -> Option<[u8; 3]> {
        (x >= 0 && y >= 0)
            .then(|| self.get(u32::try_from(x).ok()?, u32::try_from(y).ok()?))
            .flatten()
    }

    fn fill_rect(&mut self, x: i64, y: i64, w: i64, h: i64, rgb: [u8; 3]) {
        for yy in y..y + h {
            for xx in x..x + w {
                self.set(xx, yy, rgb);
            }
        }
    }
}

fn checked_pixels(width: u32, height: u32, channels: u64) -> Result<usize, Error> {
    let n = u64::from(width) * u64::from(height);
    if width == 0 || height == 0 || n > MAX_PIXELS {
        return Err(Error::Format {
            path: "<image>".into(),
            reason: format!(
                "a picture of {width}x{height} pixels cannot be drawn (1 to 2^28 pixels can)"
            ),
        });
    }
    Ok((n * channels) as usize)
}

fn encode_png(
    width: u32,
    height: u32,
    color: png::ColorType,
    data: &[u8],
    title: Option<&str>,
) -> Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, width, height);
    enc.set_color(color);
    enc.set_depth(png::BitDepth::Eight);
    enc.add_text_chunk("Software".into(), "tensor-fn".into())?;
    // tEXt holds Latin-1; a title in other scripts is simply not stored.
    if let Some(t) = title.filter(|t| !t.is_empty() && t.is_ascii()) {
        enc.add_text_chunk("Title".into(), t.into())?;
    }
    let mut writer = enc.write_header()?;
    writer.write_image_data(data)?;
    writer.finish()?;
    Ok(out)
}

/// How tiled grayscale pictures are drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GridStyle {
    /// Pixels per value along each axis (1 draws a 28x28 digit as 28x28 pixels). At least 1.
    pub scale: u32,
    /// Pixels between tiles and around the grid.
    pub gap: u32,
    /// Gray level of the gaps (255 is white). A light gray keeps white tile edges visible.
    pub background: u8,
}

impl Default for GridStyle {
    /// `scale: 2, gap: 2, background: 200`: 56x56-pixel digits separated by light gray lines.
    fn default() -> Self {
        GridStyle {
            scale: 2,
            gap: 2,
            background: 200,
        }
    }
}

impl GridStyle {
    /// The top-left pixel of tile `index` in a grid of `cols` columns of `side`-value tiles.
    pub fn tile_origin(&self, index: usize, cols: usize, side: usize) -> (u32, u32) {
        let step = side as u32 * self.scale + self.gap;
        let (r, c) = ((index / cols) as u32, (index % cols) as u32);
        (self.gap + c * step, self.gap + r * step)
    }
}

/// `gist_yarg` on `[lo, hi]`: `lo` (and below) white, `hi` (and above) black, linear in
/// between. NaN is mid-gray. If `hi <= lo`, everything at or below `lo` is white.
fn yarg(v: f32, lo: f64, hi: f64) -> u8 {
    let v = f64::from(v);
    if v.is_nan() {
        return 128;
    }
    let t = if hi > lo {
        ((v - lo) / (hi - lo)).clamp(0.0, 1.0)
    } else if v > hi {
        1.0
    } else {
        0.0
    };
    (255.0 * (1.0 - t)).round() as u8
}

/// The side of a square tile of `n` values, if `n` is a positive square.
fn square_side(n: usize) -> Option<usize> {
    let s = (n as f64).sqrt().round() as usize;
    (s > 0 && s * s == n).then_some(s)
}

/// Draws tiles of `side` x `side` values into a grid of `cols` columns. `tile(k)` yields the
/// values of tile `k` in row-major order together with the range mapped to white..black.
fn render_tiles<'a, I>(
    count: usize,
    cols: usize,
    side: usize,
    style: &GridStyle,
    mut tile: impl FnMut(usize) -> (I, f64, f64),
) -> Result<GrayImage, String>
where
    I: Iterator<Item = &'a f32>,
{
    if style.scale == 0 {
        return Err("style.scale must be at least 1".into());
    }
    let rows = count.div_ceil(cols);
    let span = |n: usize| -> Option<u32> {
        let step = u64::try_from(side).ok()? * u64::from(style.scale) + u64::from(style.gap);
        u32::try_from(u64::from(style.gap) + u64::try_from(n).ok()? * step).ok()
    };
    let (Some(width), Some(height)) = (span(cols), span(rows)) else {
        return Err(format!(
            "{count} tiles in {cols} columns do not fit in a picture"
        ));
    };
    let mut img = GrayImage::new(width, height, style.background).map_err(|e| match e {
        Error::Format { reason, .. } => reason,
        other => other.to_string(),
    })?;
    let s = style.scale;
    for k in 0..count {
        let (values, lo, hi) = tile(k);
        let (x0, y0) = style.tile_origin(k, cols, side);
        for (i, &v) in values.enumerate() {
            let (r, c) = ((i / side) as u32, (i % side) as u32);
            img.fill_rect(x0 + c * s, y0 + r * s, s, s, yarg(v, lo, hi));
        }
    }
    Ok(img)
}

/// The finite min and max of `values`, or `(0, 0)` if none is finite.
fn finite_range<'a>(values: impl Iterator<Item = &'a f32>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(f64::from(v)), hi.max(f64::from(v)))
        });
    if lo <= hi {
        (lo, hi)
    } else {
        (0.0, 0.0)
    }
}

/// Draws the first `count` columns of `w` (each a filter of `side * side` weights, side 28 for
/// MNIST's 784) as square tiles in a grid of `cols` columns, the seed's picture of learned
/// features. Filter `j` is `w[:, j].reshape(side, side)` in row-major order, as numpy does.
///
/// Each tile is scaled to its own range: its smallest weight is white, its largest black
/// (`gist_yarg`). A constant filter is all white; NaN weights are mid-gray. `count` larger than
/// the number of columns of `w` draws them all.
///
/// Errors ([`Error::Format`] naming the picture): `w.nrows()` not a square, `count` or `cols`
/// zero, a picture over 2^28 pixels.
pub fn render_filter_grid(
    w: ArrayView2<'_, f32>,
    count: usize,
    cols: usize,
    style: &GridStyle,
) -> Result<GrayImage, Error> {
    filter_grid(w, count, cols, style).map_err(|reason| Error::Format {
        path: "<filter grid>".into(),
        reason,
    })
}

fn filter_grid(
    w: ArrayView2<'_, f32>,
    count: usize,
    cols: usize,
    style: &GridStyle,
) -> Result<GrayImage, String> {
    let side = square_side(w.nrows()).ok_or_else(|| {
        format!(
            "filters have {} weights (w is {}x{}), not a square number like 784 = 28x28",
            w.nrows(),
            w.nrows(),
            w.ncols()
        )
    })?;
    let count = count.min(w.ncols());
    if count == 0 || cols == 0 {
        return Err(format!(
            "nothing to draw: {count} filters (w has {} columns) in {cols} columns",
            w.ncols()
        ));
    }
    let cols = cols.min(count);
    // Column j of a row-major w is strided; copy each filter once, contiguous.
    let filters: Vec<Vec<f32>> = (0..count).map(|j| w.column(j).to_vec()).collect();
    render_tiles(count, cols, side, style, |k| {
        let (lo, hi) = finite_range(filters[k].iter());
        (filters[k].iter(), lo, hi)
    })
}

/// Writes [`render_filter_grid`] with the default [`GridStyle`] to `path` as a PNG, e.g.
/// `write_filter_grid("out/features.png", w.view(), 100, 10)` for the seed's 10x10 grid.
pub fn write_filter_grid(
    path: impl AsRef<Path>,
    w: ArrayView2<'_, f32>,
    count: usize,
    cols: usize,
) -> Result<(), Error> {
    write_filter_grid_with(path, w, count, cols, &GridStyle::default())
}

/// [`write_filter_grid`] with an explicit style.
pub fn write_filter_grid_with(
    path: impl AsRef<Path>,
    w: ArrayView2<'_, f32>,
    count: usize,
    cols: usize,
    style: &GridStyle,
) -> Result<(), Error> {
    let path = path.as_ref();
    let img = filter_grid(w, count, cols, style).map_err(|r| format_error(path, r))?;
    img.write_png(path)
}

/// Draws each row of `originals` (a flattened square image, 784 = 28x28 for MNIST) in the top
/// row and the same row of `recons` below it: test digits above their reconstructions.
///
/// Values are drawn on the fixed range [0, 1] (0 white, 1 black, clamped), the range of MNIST
/// pixels and of sigmoid outputs, so originals and reconstructions are comparable. Pass a
/// handful of rows (say 10 to 20); the picture is one tile wide per row.
///
/// Errors ([`Error::Format`]): the two arrays differ in shape, are empty, or have rows that are
/// not square images.
pub fn render_reconstructions(
    originals: ArrayView2<'_, f32>,
    recons: ArrayView2<'_, f32>,
    style: &GridStyle,
) -> Result<GrayImage, Error> {
    reconstructions(originals, recons, style).map_err(|reason| Error::Format {
        path: "<reconstructions>".into(),
        reason,
    })
}

fn reconstructions(
    originals: ArrayView2<'_, f32>,
    recons: ArrayView2<'_, f32>,
    style: &GridStyle,
) -> Result<GrayImage, String> {
    if originals.dim() != recons.dim() {
        return Err(format!(
            "originals are {:?} but reconstructions are {:?}",
            originals.dim(),
            recons.dim()
        ));
    }
    let (n, pixels) = originals.dim();
    let side = square_side(pixels)
        .ok_or_else(|| format!("rows have {pixels} values, not a square number like 784"))?;
    if n == 0 {
        return Err("no images to draw".into());
    }
    let rows: Vec<Vec<f32>> = originals
        .rows()
        .into_iter()
        .chain(recons.rows())
        .map(|r| r.to_vec())
        .collect();
    render_tiles(2 * n, n, side, style, |k| (rows[k].iter(), 0.0, 1.0))
}

/// Writes [`render_reconstructions`] with the default [`GridStyle`] to `path` as a PNG.
pub fn write_reconstructions(
    path: impl AsRef<Path>,
    originals: ArrayView2<'_, f32>,
    recons: ArrayView2<'_, f32>,
) -> Result<(), Error> {
    let path = path.as_ref();
    let img = reconstructions(originals, recons, &GridStyle::default())
        .map_err(|r| format_error(path, r))?;
    img.write_png(path)
}

/// Writes a line plot of `ys` against 1, 2, 3, ... (epochs) to `path` as a PNG, titled
/// `title`. See [`LinePlot`] for axis labels, size and the first x.
pub fn write_line_plot(path: impl AsRef<Path>, ys: &[f64], title: &str) -> Result<(), Error> {
    LinePlot::new(title).write(path, ys)
}

/// A line plot of one series, e.g. the cost per epoch: white background, framed axes with
/// "nice" ticks (1, 2 or 5 times a power of ten) and numeric labels, light grid lines, the
/// series as an anti-aliased polyline with a marker per point (markers are left out when points
/// are closer than 8 pixels).
///
/// Text uses a built-in 5x7 bitmap font of digits, letters (shown upper-case) and
/// `. , - + : / ( ) [ ] _ = % ' ?`; other characters show as `?`. Non-finite values are not
/// drawn and break the line.
///
/// ```no_run
/// # fn main() -> Result<(), tensor_fn_runtime::Error> {
/// use tensor_fn_runtime::io::LinePlot;
/// let costs = [98.2, 75.1, 70.4, 68.9];
/// LinePlot::new("cost per epoch").x_label("epoch").y_label("cost").write("out/cost.png", &costs)?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct LinePlot {
    /// Drawn centred above the plot (and stored in the PNG's `Title` if ASCII).
    pub title: String,
    /// Drawn centred below the x axis.
    pub x_label: String,
    /// Drawn vertically left of the y axis.
    pub y_label: String,
    /// The x of the first value; the i-th value is at `x_start + i`. 1 by default (epochs).
    pub x_start: f64,
    /// Picture width in pixels (800 by default).
    pub width: u32,
    /// Picture height in pixels (500 by default).
    pub height: u32,
}

const WHITE: [u8; 3] = [255, 255, 255];
const INK: [u8; 3] = [34, 34, 34];
const GRID: [u8; 3] = [228, 228, 228];
/// matplotlib's first default colour, `#1f77b4`.
const LINE: [u8; 3] = [31, 119, 180];
/// Font scale for all text: 5x7 glyphs drawn as 10x14 pixels.
const TEXT: i64 = 2;

impl LinePlot {
    /// A plot with this title, no axis labels, x starting at 1, 800x500 pixels.
    pub fn new(title: impl Into<String>) -> Self {
        LinePlot {
            title: title.into(),
            x_label: String::new(),
            y_label: String::new(),
            x_start: 1.0,
            width: 800,
            height: 500,
        }
    }

    /// Sets the x-axis label.
    pub fn x_label(mut self, label: impl Into<String>) -> Self {
        self.x_label = label.into();
        self
    }

    /// Sets the y-axis label.
    pub fn y_label(mut self, label: impl Into<String>) -> Self {
        self.y_label = label.into();
        self
    }

    /// Sets the x of the first value (e.g. the first epoch of a resumed run).
    pub fn x_start(mut self, x: f64) -> Self {
        self.x_start = x;
        self
    }

    /// Sets the picture size; at least 200x150 pixels.
    pub fn size(mut self, width: u32, height: u32) -> Self {
        self.width = width;
        self.height = height;
        self
    }

    /// Writes the plot of `ys` to `path` as a PNG, atomically.
    pub fn write(&self, path: impl AsRef<Path>, ys: &[f64]) -> Result<(), Error> {
        let path = path.as_ref();
        let img = self.render(ys).map_err(|e| match e {
            Error::Format { reason, .. } => format_error(path, reason),
            other => other,
        })?;
        let png = encode_png(
            img.width,
            img.height,
            png::ColorType::Rgb,
            &img.pixels,
            Some(&self.title),
        )
        .map_err(|e| Error::Internal(format!("PNG encoding failed: {e}")))?;
        write_atomic(path, &png)
    }

    /// Draws the plot of `ys`. An empty `ys` draws empty axes.
    pub fn render(&self, ys: &[f64]) -> Result<RgbImage, Error> {
        if self.width < 200 || self.height < 150 || !self.x_start.is_finite() {
            return Err(Error::Format {
                path: "<line plot>".into(),
                reason: format!(
                    "a {}x{} plot starting at x = {} cannot be drawn (at least 200x150, finite x)",
                    self.width, self.height, self.x_start
                ),
            });
        }
        let mut img = RgbImage::new(self.width, self.height, WHITE)?;
        let (w, h) = (i64::from(self.width), i64::from(self.height));

        // Data ranges, padded so points do not sit on the frame.
        let n = ys.len();
        let (x_lo, x_hi) = (self.x_start, self.x_start + n.saturating_sub(1) as f64);
        let (x_min, x_max) = if x_hi - x_lo < 1.0 {
            (x_lo - 0.5, x_hi + 0.5)
        } else {
            let pad = 0.03 * (x_hi - x_lo);
            (x_lo - pad, x_hi + pad)
        };
        let (y_lo, y_hi) = ys
            .iter()
            .filter(|y| y.is_finite())
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &y| {
                (a.min(y), b.max(y))
            });
        let (y_min, y_max) = if y_lo > y_hi {
            (0.0, 1.0)
        } else if y_hi - y_lo <= 1e-12 * y_hi.abs().max(y_lo.abs()).max(1e-300) {
            let pad = (0.05 * y_lo.abs()).max(0.5);
            (y_lo - pad, y_hi + pad)
        } else {
            let pad = 0.05 * (y_hi - y_lo);
            (y_lo - pad, y_hi + pad)
        };
        let (x_step, x_ticks) = nice_ticks(x_min, x_max, 8, 1.0);
        let (y_step, y_ticks) = nice_ticks(y_min, y_max, 6, 0.0);
        let y_labels: Vec<String> = y_ticks.iter().map(|&v| tick_label(v, y_step)).collect();

        // Margins from the text they hold.
        let glyph_h = 7 * TEXT;
        let widest = y_labels
            .iter()
            .map(|s| text_width(s, TEXT))
            .max()
            .unwrap_or(0);
        let left =
            12 + if self.y_label.is_empty() {
                0
            } else {
                glyph_h + 12
            } + widest
                + 10;
        let top = if self.title.is_empty() {
            20
        } else {
            16 + glyph_h + 16
        };
        let bottom = 8
            + glyph_h
            + 10
            + if self.x_label.is_empty() {
                0
            } else {
                glyph_h + 10
            };
        let (x0, x1, y0, y1) = (left, w - 24, top, h - bottom);
        if x1 - x0 < 40 || y1 - y0 < 40 {
            return Err(Error::Format {
                path: "<line plot>".into(),
                reason: format!("a {w}x{h} picture leaves no room for the plot area"),
            });
        }
        let px = |x: f64| x0 as f64 + (x - x_min) / (x_max - x_min) * (x1 - x0) as f64;
        let py = |y: f64| y1 as f64 - (y - y_min) / (y_max - y_min) * (y1 - y0) as f64;

        // Grid lines and ticks with labels.
        for (&v, label) in y_ticks.iter().zip(&y_labels) {
            let y = py(v).round() as i64;
            img.fill_rect(x0 + 1, y, x1 - x0 - 1, 1, GRID);
            img.fill_rect(x0 - 5, y, 5, 1, INK);
            let tx = x0 - 9 - text_width(label, TEXT);
            draw_text(&mut img, tx, y - glyph_h / 2, label, TEXT, INK);
        }
        for &v in &x_ticks {
            let x = px(v).round() as i64;
            img.fill_rect(x, y0 + 1, 1, y1 - y0 - 1, GRID);
            img.fill_rect(x, y1 + 1, 1, 5, INK);
            let label = tick_label(v, x_step);
            draw_text(
                &mut img,
                x - text_width(&label, TEXT) / 2,
                y1 + 9,
                &label,
                TEXT,
                INK,
            );
        }
        // The frame.
        img.fill_rect(x0, y0, x1 - x0 + 1, 1, INK);
        img.fill_rect(x0, y1, x1 - x0 + 1, 1, INK);
        img.fill_rect(x0, y0, 1, y1 - y0 + 1, INK);
        img.fill_rect(x1, y0, 1, y1 - y0 + 1, INK);

        // Labels and title.
        if !self.title.is_empty() {
            let tw = text_width(&self.title, TEXT);
            draw_text(&mut img, (x0 + x1) / 2 - tw / 2, 16, &self.title, TEXT, INK);
        }
        if !self.x_label.is_empty() {
            let tw = text_width(&self.x_label, TEXT);
            let y = y1 + 9 + glyph_h + 10;
            draw_text(
                &mut img,
                (x0 + x1) / 2 - tw / 2,
                y,
                &self.x_label,
                TEXT,
                INK,
            );
        }
        if !self.y_label.is_empty() {
            let tw = text_width(&self.y_label, TEXT);
            draw_text_up(
                &mut img,
                12,
                (y0 + y1) / 2 + tw / 2,
                &self.y_label,
                TEXT,
                INK,
            );
        }

        // The series: coverage of line and markers, composited once so overlaps do not darken.
        let points: Vec<Option<(f64, f64)>> = ys
            .iter()
            .enumerate()
            .map(|(i, &y)| y.is_finite().then(|| (px(self.x_start + i as f64), py(y))))
            .collect();
        let mut cover = Coverage::new(x0 + 1, y0 + 1, x1 - 1, y1 - 1);
        for pair in points.windows(2) {
            if let [Some(a), Some(b)] = pair {
                cover.segment(*a, *b, 1.1);
            }
        }
        let spacing = if n > 1 {
            (px(1.0) - px(0.0)).abs()
        } else {
            f64::INFINITY
        };
        if spacing >= 8.0 {
            for p in points.iter().flatten() {
                cover.segment(*p, *p, 3.5);
            }
        }
        cover.paint(&mut img, LINE);
        Ok(img)
    }
}

/// Ticks at multiples of a "nice" step (1, 2 or 5 times a power of ten, at least `min_step`)
/// inside `[lo, hi]`, about `target` of them. Returns the step and the ticks.
fn nice_ticks(lo: f64, hi: f64, target: usize, min_step: f64) -> (f64, Vec<f64>) {
    let raw = ((hi - lo) / target as f64).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let nice = if f < 1.5 {
        1.0
    } else if f < 3.5 {
        2.0
    } else if f < 7.5 {
        5.0
    } else {
        10.0
    };
    let step = (nice * mag).max(min_step);
    let first = (lo / step).ceil();
    let ticks = (0..)
        .map(|k| (first + k as f64) * step)
        .take_while(|&v| v <= hi + step * 1e-9)
        .take(100)
        .collect();
    (step, ticks)
}

/// A tick value with as many decimals as its step needs; scientific for extreme magnitudes.
fn tick_label(v: f64, step: f64) -> String {
    let v = if v.abs() < step * 1e-6 { 0.0 } else { v };
    let decimals = (-(step.log10() + 1e-9).floor()).max(0.0) as usize;
    if decimals > 5 || v.abs() >= 1e7 {
        format!("{v:.1e}")
    } else {
        format!("{v:.decimals$}")
    }
}

/// Anti-aliased coverage of round-capped thick segments, clipped to a rectangle.
struct Coverage {
    x0: i64,
    y0: i64,
    w: i64,
    h: i64,
    alpha: Vec<f32>,
}

impl Coverage {
    fn new(x0: i64, y0: i64, x1: i64, y1: i64) -> Self {
        let (w, h) = ((x1 - x0 + 1).max(0), (y1 - y0 + 1).max(0));
        Coverage {
            x0,
            y0,
            w,
            h,
            alpha: vec![0.0; (w * h) as usize],
        }
    }

    /// Covers the pixels within `radius` of the segment `a`-`b` (a disc if `a == b`).
    fn segment(&mut self, a: (f64, f64), b: (f64, f64), radius: f64) {
        let reach = radius + 1.0;
        let xs = ((a.0.min(b.0) - reach).floor() as i64).max(self.x0);
        let xe = ((a.0.max(b.0) + reach).ceil() as i64).min(self.x0 + self.w - 1);
        let ys = ((a.1.min(b.1) - reach).floor() as i64).max(self.y0);
        let ye = ((a.1.max(b.1) + reach).ceil() as i64).min(self.y0 + self.h - 1);
        let (dx, dy) = (b.0 - a.0, b.1 - a.1);
        let len2 = dx * dx + dy * dy;
        for y in ys..=ye {
            for x in xs..=xe {
                // Distance from the pixel centre to the segment.
                let (cx, cy) = (x as f64 + 0.5 - a.0, y as f64 + 0.5 - a.1);
                let t = if len2 > 0.0 {
                    ((cx * dx + cy * dy) / len2).clamp(0.0, 1.0)
                } else {
                    0.0
                };
                let d = ((cx - t * dx).powi(2) + (cy - t * dy).powi(2)).sqrt();
                let c = (radius + 0.5 - d).clamp(0.0, 1.0) as f32;
                let i = ((y - self.y0) * self.w + (x - self.x0)) as usize;
                self.alpha[i] = self.alpha[i].max(c);
            }
        }
    }

    fn paint(&self, img: &mut RgbImage, rgb: [u8; 3]) {
        for (i, &a) in self.alpha.iter().enumerate() {
            if a > 0.0 {
                let (x, y) = (self.x0 + i as i64 % self.w, self.y0 + i as i64 / self.w);
                img.blend(x, y, rgb, a);
            }
        }
    }
}

/// A 5x7 bitmap font: rows top to bottom, `#` set. Lower-case letters use the capitals.
const FONT: &[(char, &str)] = &[
    ('0', " ### |#   #|#  ##|# # #|##  #|#   #| ### "),
    ('1', "  #  | ##  |  #  |  #  |  #  |  #  | ### "),
    ('2', " ### |#   #|    #|   # |  #  | #   |#####"),
    ('3', "#####|   # |  #  |   # |    #|#   #| ### "),
    ('4', "   # |  ## | # # |#  # |#####|   # |   # "),
    ('5', "#####|#    |#### |    #|    #|#   #| ### "),
    ('6', "  ## | #   |#    |#### |#   #|#   #| ### "),
    ('7', "#####|    #|   # |  #  | #   | #   | #   "),
    ('8', " ### |#   #|#   #| ### |#   #|#   #| ### "),
    ('9', " ### |#   #|#   #| ####|    #|   # | ##  "),
    ('A', " ### |#   #|#   #|#####|#   #|#   #|#   #"),
    ('B', "#### |#   #|#   #|#### |#   #|#   #|#### "),
    ('C', " ### |#   #|#    |#    |#    |#   #| ### "),
    ('D', "###  |#  # |#   #|#   #|#   #|#  # |###  "),
    ('E', "#####|#    |#    |#### |#    |#    |#####"),
    ('F', "#####|#    |#    |#### |#    |#    |#    "),
    ('G', " ### |#   #|#    |# ###|#   #|#   #| ####"),
    ('H', "#   #|#   #|#   #|#####|#   #|#   #|#   #"),
    ('I', " ### |  #  |  #  |  #  |  #  |  #  | ### "),
    ('J', "  ###|   # |   # |   # |   # |#  # | ##  "),
    ('K', "#   #|#  # |# #  |##   |# #  |#  # |#   #"),
    ('L', "#    |#    |#    |#    |#    |#    |#####"),
    ('M', "#   #|## ##|# # #|# # #|#   #|#   #|#   #"),
    ('N', "#   #|#   #|##  #|# # #|#  ##|#   #|#   #"),
    ('O', " ### |#   #|#   #|#   #|#   #|#   #| ### "),
    ('P', "#### |#   #|#   #|#### |#    |#    |#    "),
    ('Q', " ### |#   #|#   #|#   #|# # #|#  # | ## #"),
    ('R', "#### |#   #|#   #|#### |# #  |#  # |#   #"),
    ('S', " ####|#    |#    | ### |    #|    #|#### "),
    ('T', "#####|  #  |  #  |  #  |  #  |  #  |  #  "),
    ('U', "#   #|#   #|#   #|#   #|#   #|#   #| ### "),
    ('V', "#   #|#   #|#   #|#   #|#   #| # # |  #  "),
    ('W', "#   #|#   #|#   #|# # #|# # #|# # #| # # "),
    ('X', "#   #|#   #| # # |  #  | # # |#   #|#   #"),
    ('Y', "#   #|#   #| # # |  #  |  #  |  #  |  #  "),
    ('Z', "#####|    #|   # |  #  | #   |#    |#####"),
    ('.', "     |     |     |     |     | ##  | ##  "),
    (',', "     |     |     |     | ##  |  #  | #   "),
    ('-', "     |     |     |#####|     |     |     "),
    ('+', "     |  #  |  #  |#####|  #  |  #  |     "),
    (':', "     | ##  | ##  |     | ##  | ##  |     "),
    ('/', "     |    #|   # |  #  | #   |#    |     "),
    ('(', "   # |  #  | #   | #   | #   |  #  |   # "),
    (')', " #   |  #  |   # |   # |   # |  #  | #   "),
    ('[', " ### | #   | #   | #   | #   | #   | ### "),
    (']', " ### |   # |   # |   # |   # |   # | ### "),
    ('_', "     |     |     |     |     |     |#####"),
    ('=', "     |     |#####|     |#####|     |     "),
    ('%', "##   |##  #|   # |  #  | #   |#  ##|   ##"),
    ('\'', "  #  |  #  |     |     |     |     |     "),
    ('?', " ### |#   #|    #|   # |  #  |     |  #  "),
    (' ', "     |     |     |     |     |     |     "),
];

/// The rows of `c`'s glyph; unknown characters get `?`.
fn glyph(c: char) -> &'static str {
    let c = c.to_ascii_uppercase();
    FONT.iter()
        .find(|(g, _)| *g == c)
        .or_else(|| FONT.iter().find(|(g, _)| *g == '?'))
        .map_or("", |(_, rows)| rows)
}

/// Width in pixels of `text` at `scale`: 5 columns per glyph plus 1 between glyphs.
fn text_width(text: &str, scale: i64) -> i64 {
    let n = text.chars().count() as i64;
    (6 * n - 1).max(0) * scale
}

/// Draws `text` with its top-left corner at (`x`, `y`).
fn draw_text(img: &mut RgbImage, x: i64, y: i64, text: &str, scale: i64, rgb: [u8; 3]) {
    for (k, c) in text.chars().enumerate() {
        for (r, row) in glyph(c).split('|').enumerate() {
            for (col, b) in row.bytes().enumerate() {
                if b == b'#' {
                    let gx = x + (6 * k as i64 + col as i64) * scale;
                    img.fill_rect(gx, y + r as i64 * scale, scale, scale, rgb);
                }
            }
        }
    }
}

/// Draws `text` rotated a quarter turn counter-clockwise (reading upwards), starting at
/// (`x`, `y`), the bottom-left corner of the first glyph.
fn draw_text_up(img: &mut RgbImage, x: i64, y: i64, text: &str, scale: i64, rgb: [u8; 3]) {
    for (k, c) in text.chars().enumerate() {
        for (r, row) in glyph(c).split('|').enumerate() {
            for (col, b) in row.bytes().enumerate() {
                if b == b'#' {
                    let along = (6 * k as i64 + col as i64) * scale;
                    img.fill_rect(x + r as i64 * scale, y - along - scale, scale, scale, rgb);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array, Array2};
    use std::fs;

    /// Decodes a PNG file with the `png` crate: (width, height, colour type, pixels).
    fn decode(path: &Path) -> (u32, u32, png::ColorType, Vec<u8>) {
        let decoder = png::Decoder::new(fs::File::open(path).unwrap());
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        buf.truncate(info.buffer_size());
        assert_eq!(info.bit_depth, png::BitDepth::Eight);
        (info.width, info.height, info.color_type, buf)
    }

    /// A 784 x 7 matrix whose filter j has its minimum at pixel j and its maximum at pixel
    /// 783 - j, with noise in between.
    fn filters() -> Array2<f32> {
        let mut w = Array::from_shape_fn((784, 7), |(i, j)| ((i * 31 + j * 17) % 97) as f32 / 97.0);
        for j in 0..7 {
            w[[j, j]] = -3.0 - j as f32;
            w[[783 - j, j]] = 5.0 + j as f32;
        }
        w
    }

    #[test]
    fn filter_grid_png_decodes_with_expected_size() {
        let dir = crate::io::test_dir("png-grid");
        let path = dir.join("features.png");
        write_filter_grid(&path, filters().view(), 100, 3).unwrap();
        let (w, h, color, px) = decode(&path);
        // 7 filters (count clamped) in 3 columns -> 3 rows; tiles 56 px, gaps 2 px.
        assert_eq!((w, h), (2 + 3 * 58, 2 + 3 * 58));
        assert_eq!(color, png::ColorType::Grayscale);
        assert_eq!(px.len(), (w * h) as usize);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn seed_grid_is_10_by_10_tiles() {
        let w = Array::from_shape_fn((784, 500), |(i, j)| ((i + j) % 13) as f32);
        let img = render_filter_grid(w.view(), 100, 10, &GridStyle::default()).unwrap();
        assert_eq!((img.width, img.height), (582, 582));
    }

    #[test]
    fn filter_grid_maps_each_tiles_min_to_white_and_max_to_black() {
        let w = filters();
        let style = GridStyle::default();
        let img = render_filter_grid(w.view(), 7, 3, &style).unwrap();
        for j in 0..7 {
            let (x0, y0) = style.tile_origin(j, 3, 28);
            let at = |p: usize| {
                let (r, c) = ((p / 28) as u32, (p % 28) as u32);
                // Every pixel of the 2x2 block agrees.
                let v = img.get(x0 + 2 * c, y0 + 2 * r).unwrap();
                assert_eq!(img.get(x0 + 2 * c + 1, y0 + 2 * r + 1), Some(v));
                v
            };
            assert_eq!(at(j), 255, "filter {j}: its minimum is white");
            assert_eq!(at(783 - j), 0, "filter {j}: its maximum is black");
            // A mid value is mid gray, scaled to this tile's own range.
            let (lo, hi) = (-3.0 - j as f64, 5.0 + j as f64);
            let p = 400;
            let t = (f64::from(w[[p, j]]) - lo) / (hi - lo);
            assert_eq!(at(p), (255.0 * (1.0 - t)).round() as u8);
        }
        // Gaps and the unused tile slots are the background.
        assert_eq!(img.get(0, 0), Some(style.background));
        let (x7, y7) = style.tile_origin(7, 3, 28);
        assert_eq!(img.get(x7 + 10, y7 + 10), Some(style.background));
    }

    #[test]
    fn constant_and_nan_filters_do_not_fail() {
        let mut w = Array2::<f32>::from_elem((4, 2), 0.3);
        w[[1, 1]] = f32::NAN;
        w[[2, 1]] = 1.0;
        let style = GridStyle {
            scale: 1,
            gap: 1,
            background: 99,
        };
        let img = render_filter_grid(w.view(), 2, 2, &style).unwrap();
        assert_eq!((img.width, img.height), (7, 4));
        // Filter 0 (constant): all white. Filter 1: NaN gray, 1.0 black, 0.3 white.
        assert_eq!(&img.pixels[7..14], &[99, 255, 255, 99, 255, 128, 99]);
        assert_eq!(&img.pixels[14..21], &[99, 255, 255, 99, 0, 255, 99]);
    }

    #[test]
    fn filter_grid_argument_errors() {
        let w = Array2::<f32>::zeros((783, 4));
        let e = render_filter_grid(w.view(), 4, 2, &GridStyle::default()).unwrap_err();
        assert!(e.to_string().contains("783 weights"), "{e}");
        let w = Array2::<f32>::zeros((784, 4));
        assert!(render_filter_grid(w.view(), 0, 2, &GridStyle::default()).is_err());
        assert!(render_filter_grid(w.view(), 4, 0, &GridStyle::default()).is_err());
        let dir = crate::io::test_dir("png-grid-err");
        let path = dir.join("f.png");
        let e = write_filter_grid(&path, Array2::<f32>::zeros((10, 3)).view(), 3, 3).unwrap_err();
        assert!(
            e.to_string().starts_with(&path.display().to_string()),
            "{e}"
        );
        assert!(!path.exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reconstructions_png_has_two_rows_on_a_fixed_range() {
        let n = 5;
        let originals = Array::from_shape_fn((n, 784), |(k, i)| if i == k { 1.0 } else { 0.0 });
        let recons = Array::from_shape_fn((n, 784), |(k, i)| if i == k { 0.5 } else { 2.0 });
        let dir = crate::io::test_dir("png-recons");
        let path = dir.join("reconstructions.png");
        write_reconstructions(&path, originals.view(), recons.view()).unwrap();
        let (w, h, color, px) = decode(&path);
        assert_eq!(
            (w, h, color),
            (2 + 5 * 58, 2 + 2 * 58, png::ColorType::Grayscale)
        );
        let get = |x: u32, y: u32| px[(y * w + x) as usize];
        let style = GridStyle::default();
        for k in 0..n {
            let (x, y) = style.tile_origin(k, n, 28);
            assert_eq!(get(x + 2 * k as u32, y), 0, "original pixel 1.0 is black");
            assert_eq!(get(x + 2 * 27, y + 2 * 27), 255, "original 0.0 is white");
            let (x, y) = style.tile_origin(n + k, n, 28);
            assert_eq!(get(x + 2 * k as u32, y), 128, "0.5 is mid gray");
            assert_eq!(get(x + 2 * 27, y + 2 * 27), 0, "2.0 clamps to black");
        }
        let e = write_reconstructions(&path, originals.view(), recons.slice(ndarray::s![..4, ..]))
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("(5, 784) but reconstructions are (4, 784)"),
            "{e}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn line_plot_png_decodes_and_draws_the_series() {
        let dir = crate::io::test_dir("png-plot");
        let path = dir.join("cost.png");
        let ys: Vec<f64> = (0..20).map(|e| 60.0 + 40.0 / (1.0 + e as f64)).collect();
        write_line_plot(&path, &ys, "cost per epoch").unwrap();
        let (w, h, color, px) = decode(&path);
        assert_eq!((w, h, color), (800, 500, png::ColorType::Rgb));
        let line_pixels = px.chunks_exact(3).filter(|p| *p == LINE).count();
        assert!(
            line_pixels > 200,
            "the polyline and markers are drawn ({line_pixels} px)"
        );
        let ink = px.chunks_exact(3).filter(|p| *p == INK).count();
        assert!(ink > 1000, "frame, ticks and text are drawn ({ink} px)");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn line_plot_edge_cases_render() {
        let plot = LinePlot::new("t").x_label("epoch").y_label("cost");
        for ys in [
            vec![],
            vec![3.0],
            vec![2.0, 2.0, 2.0],
            vec![1.0, f64::NAN, 3.0, f64::INFINITY, 2.0],
            vec![1e-9, 2e-9],
            vec![1e12, -1e12],
            (0..5000).map(|i| (i as f64).sin()).collect(),
        ] {
            let img = plot.render(&ys).unwrap();
            assert_eq!((img.width, img.height), (800, 500), "{ys:?}");
        }
        assert!(LinePlot::new("").size(10, 10).render(&[1.0]).is_err());
    }

    #[test]
    fn nice_ticks_and_labels() {
        let (step, ticks) = nice_ticks(0.43, 20.57, 8, 1.0);
        assert_eq!(step, 2.0);
        assert_eq!(
            ticks,
            [2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0, 16.0, 18.0, 20.0]
        );
        let (step, ticks) = nice_ticks(61.5, 100.3, 6, 0.0);
        assert_eq!(step, 5.0);
        assert_eq!(ticks.first(), Some(&65.0));
        assert_eq!(tick_label(65.0, 5.0), "65");
        assert_eq!(tick_label(0.30000000000000004, 0.1), "0.3");
        assert_eq!(tick_label(-1e-17, 0.05), "0.00");
        assert_eq!(tick_label(2e-7, 1e-7), "2.0e-7");
    }

    /// Renders one of each picture from synthetic data into `$TENSOR_FN_SAMPLES` (default: the
    /// temp dir) to look at: `cargo test -p tensor-fn-runtime --lib render_samples -- --ignored`.
    #[test]
    #[ignore = "writes sample pictures for a person to look at"]
    fn render_samples() {
        let dir = std::env::var_os("TENSOR_FN_SAMPLES")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut uniform = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 40) as f32 / (1u64 << 24) as f32
        };
        // Filter j: a dark blob whose centre moves with j (row j / 10, column j % 10), on noise.
        let w = Array::from_shape_fn((784, 500), |(p, j)| {
            let (r, c) = ((p / 28) as f32, (p % 28) as f32);
            let (cr, cc) = (
                3.0 + 2.4 * (j / 10 % 10) as f32,
                3.0 + 2.4 * (j % 10) as f32,
            );
            let d2 = (r - cr).powi(2) + (c - cc).powi(2);
            (-d2 / 8.0).exp() + 0.3 * (uniform() - 0.5)
        });
        write_filter_grid(dir.join("sample_features.png"), w.view(), 100, 10).unwrap();
        // Digits: rings of growing radius; reconstructions: blurred, noisy copies.
        let ring = |k: usize, blur: f32, p: usize| {
            let (r, c) = ((p / 28) as f32 - 13.5, (p % 28) as f32 - 13.5);
            let d = (r * r + c * c).sqrt() - (4.0 + k as f32);
            (-(d * d) / (2.0 * blur * blur)).exp()
        };
        let originals = Array::from_shape_fn((10, 784), |(k, p)| ring(k, 1.0, p));
        let recons = Array::from_shape_fn((10, 784), |(k, p)| {
            (0.8 * ring(k, 1.8, p) + 0.15 * uniform()).min(1.0)
        });
        write_reconstructions(
            dir.join("sample_reconstructions.png"),
            originals.view(),
            recons.view(),
        )
        .unwrap();
        let costs: Vec<f64> = (0..20)
            .map(|e| 62.0 + 40.0 / (1.0 + 0.8 * e as f64) + 0.8 * f64::from(uniform()))
            .collect();
        LinePlot::new("cost per epoch")
            .x_label("epoch")
            .y_label("cost")
            .write(dir.join("sample_cost.png"), &costs)
            .unwrap();
        eprintln!("wrote sample_*.png to {}", dir.display());
    }

    #[test]
    fn font_glyphs_are_5_by_7() {
        for (c, rows) in FONT {
            let rows: Vec<&str> = rows.split('|').collect();
            assert_eq!(rows.len(), 7, "{c:?}");
            assert!(rows.iter().all(|r| r.len() == 5), "{c:?}");
        }
        assert_eq!(glyph('e'), glyph('E'));
        assert_eq!(glyph('~'), glyph('?'));
    }
}
