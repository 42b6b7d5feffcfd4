//! For tests that need a GPU: skip where there is none, fail where one is required.
//!
//! ```
//! use tensor_fn_runtime::{gpu::testing::require_or_skip, Device};
//!
//! let Some(device) = require_or_skip(Device::cuda(0)) else { return };
//! // ... the test body, on `device`
//! # let _ = device;
//! ```
//!
//! Without a device the test prints `skipped: no device (<reason>)` and passes. On the GPU
//! machine the run script sets `TENSOR_FN_REQUIRE_GPU=1`, and then a missing device fails the
//! test instead, so a GPU run cannot pass by skipping everything.

use crate::{Device, Error};

/// The environment variable that turns skips into failures: set to anything but `0` or empty.
pub const REQUIRE_GPU_ENV: &str = "TENSOR_FN_REQUIRE_GPU";

/// Whether this run must have a GPU (`TENSOR_FN_REQUIRE_GPU=1`).
pub fn gpu_required() -> bool {
    matches!(std::env::var(REQUIRE_GPU_ENV).as_deref(), Ok(v) if !v.is_empty() && v != "0")
}

/// The device, or `None` after printing why the test is skipped.
///
/// # Panics
/// When there is no device and [`gpu_required`]: the test fails with the reason.
#[track_caller]
pub fn require_or_skip(device: Result<Device, Error>) -> Option<Device> {
    decide(device, gpu_required())
}

#[track_caller]
fn decide(device: Result<Device, Error>, required: bool) -> Option<Device> {
    match device {
        Ok(d) => Some(d),
        Err(e) if required => panic!("{REQUIRE_GPU_ENV}=1, but there is no device: {e}"),
        Err(e) => {
            eprintln!("skipped: no device ({e})");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_device() -> Result<Device, Error> {
        Err(Error::DeviceUnavailable(
            "no CUDA device: CUDA_ERROR_NO_DEVICE".into(),
        ))
    }

    #[test]
    fn a_present_device_is_used() {
        assert_eq!(decide(Ok(Device::PtxVm), false), Some(Device::PtxVm));
        assert_eq!(decide(Ok(Device::PtxVm), true), Some(Device::PtxVm));
    }

    #[test]
    fn a_missing_device_skips() {
        assert_eq!(decide(no_device(), false), None);
    }

    #[test]
    #[should_panic(
        expected = "TENSOR_FN_REQUIRE_GPU=1, but there is no device: device unavailable: no CUDA device"
    )]
    fn a_missing_device_fails_when_required() {
        decide(no_device(), true);
    }
}
