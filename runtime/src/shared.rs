use ndarray::{Array, ArrayView, ArrayViewMut, Dimension};

use crate::{Device, Error};

/// Theano's shared variable: a named value that compiled functions read and update in place.
///
/// `get_value` and `set_value` copy; `value` and `value_mut` borrow without copying. The shape
/// is fixed when the variable is made: `set_value` with another shape is an error, so a compiled
/// function's dims bound from it stay valid.
#[derive(Debug, Clone)]
pub struct Shared<T, D: Dimension> {
    name: String,
    value: Array<T, D>,
    device: Device,
}

impl<T: Clone, D: Dimension> Shared<T, D> {
    /// A shared variable on the CPU holding `value` (taken without copying).
    pub fn new(name: impl Into<String>, value: Array<T, D>) -> Self {
        Shared {
            name: name.into(),
            value: value.as_standard_layout().into_owned(),
            device: Device::Cpu,
        }
    }

    /// The variable's name, as in error messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The device the value lives on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The shape of the value.
    pub fn shape(&self) -> &[usize] {
        self.value.shape()
    }

    /// A copy of the current value.
    pub fn get_value(&self) -> Array<T, D> {
        self.value.clone()
    }

    /// Replaces the value (same shape required); the new value is moved in, not copied.
    pub fn set_value(&mut self, value: Array<T, D>) -> Result<(), Error> {
        if value.shape() != self.value.shape() {
            return Err(Error::SharedShape {
                name: self.name.clone(),
                expected: self.value.shape().to_vec(),
                found: value.shape().to_vec(),
            });
        }
        self.value = value.as_standard_layout().into_owned();
        Ok(())
    }

    /// Borrows the value without copying (Theano's `get_value(borrow=True)`).
    pub fn value(&self) -> ArrayView<'_, T, D> {
        self.value.view()
    }

    /// Borrows the value mutably without copying. The shape cannot change through this view.
    pub fn value_mut(&mut self) -> ArrayViewMut<'_, T, D> {
        self.value.view_mut()
    }

    /// The elements in row-major order, without copying.
    pub fn data(&self) -> &[T] {
        // Standard layout is an invariant: `new` and `set_value` store it so, and views
        // handed out cannot change the layout.
        self.value
            .as_slice()
            .expect("Shared values are kept in standard layout")
    }

    /// The elements in row-major order, mutably, without copying.
    pub fn data_mut(&mut self) -> &mut [T] {
        self.value
            .as_slice_mut()
            .expect("Shared values are kept in standard layout")
    }

    /// Takes the value out, consuming the variable.
    pub fn into_value(self) -> Array<T, D> {
        self.value
    }
}
