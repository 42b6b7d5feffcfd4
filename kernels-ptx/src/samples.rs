//! Small kernels for testing GPU backends (the CUDA backend, the emulated driver): each does
//! one obvious thing to a buffer, so a wrong argument, a wrong order of work or a launch that
//! never ran shows in the numbers.

use crate::ptx::{
    Address, Axis3, BinOp, Cmp, Kernel, KernelBuilder, Operand, Space, Special, Type,
};

/// `x[i] += a` for every `i < n`, one thread per element, blocks of up to 256 threads.
/// Parameters: `x: .u64` (a global address), `a` of type `ty` (`F32` or `F64`), `n: .u32`.
pub fn add_scalar(ty: Type) -> Kernel {
    assert!(ty.is_float(), "add_scalar adds floats, not {ty:?}");
    let mut k = KernelBuilder::new([256, 1, 1]);
    let px = k.param("x", Type::U64);
    let pa = k.param("a", ty);
    let pn = k.param("n", Type::U32);
    let x = k.ld_ptr(px);
    let a = k.ld_param(pa);
    let n = k.ld_param(pn);
    let block = k.special(Special::Ctaid(Axis3::X));
    let width = k.special(Special::Ntid(Axis3::X));
    let lane = k.special(Special::Tid(Axis3::X));
    let first = k.bin(BinOp::Mul, Type::U32, block, width);
    let i = k.bin(BinOp::Add, Type::U32, first, lane);
    let past = k.setp(Cmp::Ge, Type::U32, i, n);
    let end = k.label();
    k.bra_if(past, false, end);
    let at = k.mad_wide(i, Operand::Imm(i64::from(ty.bytes())), x);
    let v = k.ld(Space::Global, ty, Address::reg(at));
    let sum = k.bin(BinOp::Add, ty, v, a);
    k.st(Space::Global, ty, Address::reg(at), sum);
    k.place(end);
    k.finish(&format!("add_{}", ty.suffix().trim_start_matches('.')))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::{self, Arg, Memory};

    #[test]
    fn add_scalar_adds_to_the_first_n_elements() {
        let mut mem = Memory::new();
        let x = mem.upload_f32(&[1.0, 2.0, 3.0, 4.0, 5.0]);
        let k = add_scalar(Type::F32);
        vm::launch(
            &k,
            [2, 1, 1],
            [2, 1, 1],
            &[Arg::U64(x), Arg::F32(0.5), Arg::U32(3)],
            &mut mem,
        )
        .unwrap();
        assert_eq!(mem.read_f32(x, 5), [1.5, 2.5, 3.5, 4.0, 5.0]);
        let y = mem.upload_f64(&[1.0, -1.0]);
        let k = add_scalar(Type::F64);
        vm::launch(
            &k,
            [1, 1, 1],
            [32, 1, 1],
            &[Arg::U64(y), Arg::F64(-2.0), Arg::U32(2)],
            &mut mem,
        )
        .unwrap();
        assert_eq!(mem.read_f64(y, 2), [-1.0, -3.0]);
        assert!(k.name.starts_with("add_f64_"), "{}", k.name);
    }
}
