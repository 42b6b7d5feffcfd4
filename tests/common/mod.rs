//! What several integration tests share.

use ndarray::Array2;

/// Initial weights for the seed's autoencoder: a deterministic spread in the seed's range
/// (a hash, not a generator: tests need no RNG).
pub fn init(hidden: usize) -> Array2<f32> {
    let bound = 4.0 * (6.0f32 / (hidden as f32 + 784.0)).sqrt();
    Array2::from_shape_fn((784, hidden), |(i, j)| {
        let mut x = (i * 7919 + j * 104729 + 1) as u32;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        (x as f32 / u32::MAX as f32 * 2.0 - 1.0) * bound
    })
}
