//! The `tensor_fn!` compiler. This file is a shim: everything happens in [`expand`].
