use std::borrow::Cow;
use std::ops::Range;

use ndarray::{Array, ArrayView, ArrayViewMut, Dimension, Ix2};

use crate::gpu::{ArgData, Element, GpuBuf};
use crate::{Device, Error};

/// Theano's shared variable: a named value that compiled functions read and update in place.
///
/// The value lives on one [`Device`]. On the CPU, `value`/`data` (and their `_mut` forms)
/// borrow it without copying; on a GPU the value stays in device memory across calls, the
/// borrowing forms are an [`Error::OnDevice`], and [`get_value`](Shared::get_value) copies it
/// back only when asked. The shape is fixed when the variable is made: `set_value` with
/// another shape is an error, so a compiled function's dims bound from it stay valid.
#[derive(Debug)]
pub struct Shared<T, D: Dimension> {
    name: String,
    /// The value on the CPU; on a GPU only its shape is meaningful.
    value: Array<T, D>,
    gpu: Option<OnGpu<T>>,
}

/// Device storage and the element conversions it needs (kept as functions so the host-side
/// API of `Shared` works for any element type).
#[derive(Debug)]
struct OnGpu<T> {
    buf: GpuBuf,
    read: fn(&[u8]) -> Vec<T>,
    write: fn(&[T]) -> Vec<u8>,
}

impl<T: Clone, D: Dimension> Clone for Shared<T, D> {
    /// # Panics
    /// When the value lives on a GPU and the device cannot allocate or copy the duplicate
    /// (as `Vec::clone` does on out-of-memory); [`Shared::try_clone`] returns that error.
    fn clone(&self) -> Self {
        self.try_clone()
            .unwrap_or_else(|e| panic!("cloning shared variable `{}`: {e}", self.name))
    }
}

impl<T: Clone, D: Dimension> Shared<T, D> {
    /// A shared variable on the CPU holding `value` (taken without copying).
    pub fn new(name: impl Into<String>, value: Array<T, D>) -> Self {
        Shared {
            name: name.into(),
            value: value.as_standard_layout().into_owned(),
            gpu: None,
        }
    }

    /// A copy on the same device.
    pub fn try_clone(&self) -> Result<Self, Error> {
        let gpu = match &self.gpu {
            None => None,
            Some(g) => Some(OnGpu {
                buf: g.buf.duplicate()?,
                read: g.read,
                write: g.write,
            }),
        };
        Ok(Shared {
            name: self.name.clone(),
            value: self.value.clone(),
            gpu,
        })
    }

    /// The variable's name, as in error messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The device the value lives on.
    pub fn device(&self) -> Device {
        self.gpu.as_ref().map_or(Device::Cpu, |g| g.buf.device())
    }

    /// The shape of the value.
    pub fn shape(&self) -> &[usize] {
        self.value.shape()
    }

    fn on_device(&self) -> Error {
        Error::OnDevice {
            name: self.name.clone(),
            device: self.device().to_string(),
        }
    }

    /// A copy of the current value on the host (from the device if it lives on a GPU).
    pub fn get_value(&self) -> Result<Array<T, D>, Error> {
        match &self.gpu {
            None => Ok(self.value.clone()),
            Some(g) => {
                let mut bytes = vec![0u8; g.buf.bytes()];
                g.buf.download(0, &mut bytes)?;
                let elems = (g.read)(&bytes);
                Array::from_shape_vec(self.value.raw_dim(), elems)
                    .map_err(|e| Error::Internal(format!("`{}`: {e}", self.name)))
            }
        }
    }

    /// Replaces the value (same shape required), uploading it when the variable lives on a GPU.
    pub fn set_value(&mut self, value: Array<T, D>) -> Result<(), Error> {
        if value.shape() != self.value.shape() {
            return Err(Error::SharedShape {
                name: self.name.clone(),
                expected: self.value.shape().to_vec(),
                found: value.shape().to_vec(),
            });
        }
        let value = value.as_standard_layout().into_owned();
        match &self.gpu {
            None => self.value = value,
            Some(g) => {
                let data = value
                    .as_slice()
                    .ok_or_else(|| Error::Internal("standard layout without a slice".into()))?;
                g.buf.upload(0, &(g.write)(data))?;
            }
        }
        Ok(())
    }

    /// Borrows the value without copying (Theano's `get_value(borrow=True)`); on a GPU, an
    /// [`Error::OnDevice`].
    pub fn value(&self) -> Result<ArrayView<'_, T, D>, Error> {
        match self.gpu {
            None => Ok(self.value.view()),
            Some(_) => Err(self.on_device()),
        }
    }

    /// Borrows the value mutably without copying; the shape cannot change through this view.
    pub fn value_mut(&mut self) -> Result<ArrayViewMut<'_, T, D>, Error> {
        match self.gpu {
            None => Ok(self.value.view_mut()),
            Some(_) => Err(self.on_device()),
        }
    }

    /// The elements in row-major order, without copying.
    pub fn data(&self) -> Result<&[T], Error> {
        match self.gpu {
            // Standard layout is an invariant: `new` and `set_value` store it so, and views
            // handed out cannot change the layout.
            None => Ok(self
                .value
                .as_slice()
                .expect("Shared values are kept in standard layout")),
            Some(_) => Err(self.on_device()),
        }
    }

    /// The elements in row-major order, mutably, without copying.
    pub fn data_mut(&mut self) -> Result<&mut [T], Error> {
        match self.gpu {
            None => Ok(self
                .value
                .as_slice_mut()
                .expect("Shared values are kept in standard layout")),
            Some(_) => Err(self.on_device()),
        }
    }

    /// Takes the value out (from the device if it lives on a GPU), consuming the variable.
    pub fn into_value(self) -> Result<Array<T, D>, Error> {
        match self.gpu {
            None => Ok(self.value),
            Some(_) => self.get_value(),
        }
    }

    /// The device storage, when the value lives on a GPU (for generated code).
    #[doc(hidden)]
    pub fn gpu_buf(&self) -> Option<&GpuBuf> {
        self.gpu.as_ref().map(|g| &g.buf)
    }
}

impl<T: Element, D: Dimension> Shared<T, D> {
    /// Moves the value to `device`: uploads it to a GPU, or copies it back to the CPU. Until
    /// it moves back, compiled functions given this variable run on that device.
    pub fn to_device(&mut self, device: Device) -> Result<(), Error> {
        if device == self.device() {
            return Ok(());
        }
        // Always through the host: a GPU-to-GPU move is rare and this keeps one path.
        let host = self.get_value()?;
        if device.is_gpu() {
            let data = host
                .as_slice()
                .ok_or_else(|| Error::Internal("standard layout without a slice".into()))?;
            let buf = GpuBuf::from_host(device, T::as_bytes(data))?;
            self.gpu = Some(OnGpu {
                buf,
                read: T::read,
                write: T::write,
            });
        } else {
            self.gpu = None;
        }
        self.value = host;
        Ok(())
    }

    /// The whole value as an argument of a compiled function, on its device, without a copy.
    pub fn arg(&self) -> Arg<'_, T, D> {
        match &self.gpu {
            None => Arg::Host(self.value.view()),
            Some(g) => Arg::Device {
                buf: &g.buf,
                offset: 0,
                dim: self.value.raw_dim(),
            },
        }
    }
}

impl<T: Element> Shared<T, Ix2> {
    /// Rows `range` of a matrix as an argument of a compiled function, without any copy
    /// (Theano's `givens` slicing a minibatch out of a shared dataset). On the CPU this is a
    /// view; on a GPU, a range of the device buffer.
    pub fn rows(&self, range: Range<usize>) -> Result<Arg<'_, T, Ix2>, Error> {
        let (n, m) = self.value.dim();
        if range.start > range.end || range.end > n {
            return Err(Error::Format {
                path: format!("shared variable `{}`", self.name),
                reason: format!("rows {range:?} of a {n} x {m} matrix"),
            });
        }
        Ok(match &self.gpu {
            None => Arg::Host(self.value.slice(ndarray::s![range, ..])),
            Some(g) => Arg::Device {
                buf: &g.buf,
                offset: range.start * m * std::mem::size_of::<T>(),
                dim: Ix2(range.end - range.start, m),
            },
        })
    }
}

/// An array argument of a compiled model method: a host view, or device memory (a shared
/// variable's value or a row range of it).
#[derive(Debug, Clone)]
pub enum Arg<'a, T, D: Dimension> {
    Host(ArrayView<'a, T, D>),
    Device {
        buf: &'a GpuBuf,
        /// In bytes.
        offset: usize,
        dim: D,
    },
}

impl<'a, T, D: Dimension> From<ArrayView<'a, T, D>> for Arg<'a, T, D> {
    fn from(v: ArrayView<'a, T, D>) -> Self {
        Arg::Host(v)
    }
}

impl<'a, T, D: Dimension> From<&'a Array<T, D>> for Arg<'a, T, D> {
    fn from(v: &'a Array<T, D>) -> Self {
        Arg::Host(v.view())
    }
}

impl<'a, T: Element, D: Dimension> From<&'a Shared<T, D>> for Arg<'a, T, D> {
    fn from(s: &'a Shared<T, D>) -> Self {
        s.arg()
    }
}

impl<'a, T: Element, D: Dimension> Arg<'a, T, D> {
    /// The argument's shape.
    pub fn shape(&self) -> &[usize] {
        match self {
            Arg::Host(v) => v.shape(),
            Arg::Device { dim, .. } => dim.slice(),
        }
    }

    /// Where the argument lives.
    pub fn device(&self) -> Device {
        match self {
            Arg::Host(_) => Device::Cpu,
            Arg::Device { buf, .. } => buf.device(),
        }
    }

    /// The host view, or an error naming the argument when it lives on a GPU (a function that
    /// runs on the CPU never copies from a device behind the caller's back).
    #[doc(hidden)]
    pub fn host(&self, function: &'static str, name: &str) -> Result<ArrayView<'a, T, D>, Error> {
        match self {
            Arg::Host(v) => Ok(v.clone()),
            Arg::Device { buf, .. } => Err(Error::WrongDevice {
                function,
                what: format!("argument `{name}`"),
                found: buf.device().to_string(),
                device: "cpu".into(),
            }),
        }
    }

    /// The argument as the GPU executor takes it: contiguous host elements (copied only for
    /// non-standard layouts) or a device range.
    #[doc(hidden)]
    pub fn staged(&self) -> Staged<'a, T> {
        match self {
            Arg::Host(v) => match v.to_slice() {
                Some(s) => Staged::Host(Cow::Borrowed(s)),
                None => Staged::Host(Cow::Owned(v.iter().copied().collect())),
            },
            Arg::Device { buf, offset, dim } => Staged::Device {
                buf,
                offset: *offset,
                bytes: dim.size() * std::mem::size_of::<T>(),
            },
        }
    }
}

/// An argument ready for the GPU executor (see [`Arg::staged`]).
#[doc(hidden)]
#[derive(Debug)]
pub enum Staged<'a, T: Clone> {
    Host(Cow<'a, [T]>),
    Device {
        buf: &'a GpuBuf,
        offset: usize,
        bytes: usize,
    },
}

impl<T: Element> Staged<'_, T> {
    pub fn data(&self) -> ArgData<'_> {
        match self {
            Staged::Host(h) => ArgData::Host(T::as_bytes(h)),
            Staged::Device { buf, offset, bytes } => ArgData::Device {
                buf,
                offset: *offset,
                bytes: *bytes,
            },
        }
    }
}
