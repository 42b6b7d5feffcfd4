//! The PTX writer's text and the interpreter's GPU semantics on small hand-written kernels:
//! header rules, exact printing, content-hash names, warp shuffles, barriers, and the errors
//! the interpreter reports for kernels that would hang or misbehave on a GPU.

use tensor_fn_kernels::ptx::{
    Address, Axis3, BinOp, Cmp, Header, Inst, KernelBuilder, Module, Operand, ShflMode, Space,
    Special, Type,
};
use tensor_fn_kernels::vm::{self, Arg, Memory};

#[test]
fn header_rules() {
    let m = Module::default();
    let text = m.to_ptx();
    assert!(
        text.contains(".version 7.8\n.target sm_80\n.address_size 64\n"),
        "{text}"
    );
    assert!(Header::new((9, 0), 90, 64).is_ok());
    let e = Header::new((9, 1), 90, 64).unwrap_err();
    assert!(e.0.contains("above 9.0"), "{e}");
    assert!(Header::new((8, 0), 80, 32).is_err());
    let m = Module::new(Header::new((8, 5), 90, 64).unwrap());
    assert!(m.to_ptx().contains(".version 8.5\n.target sm_90\n"));
}

/// `out[tid] = in[tid] * 2 + 1` over one block, as PTX text, exactly.
fn axpy_kernel() -> tensor_fn_kernels::ptx::Kernel {
    let mut k = KernelBuilder::new([32, 1, 1]);
    let pin = k.param("x", Type::U64);
    let pout = k.param("y", Type::U64);
    let x = k.ld_ptr(pin);
    let y = k.ld_ptr(pout);
    let t = k.special(Special::Tid(Axis3::X));
    let ax = k.mad_wide(t, Operand::Imm(4), x);
    let ay = k.mad_wide(t, Operand::Imm(4), y);
    let v = k.ld(Space::Global, Type::F32, Address::reg(ax));
    let w = k.fma(Type::F32, v, Operand::F32(2.0), Operand::F32(1.0));
    k.st(Space::Global, Type::F32, Address::reg(ay), w);
    k.finish("axpy")
}

#[test]
fn printed_text() {
    let k = axpy_kernel();
    let body = k.entry_text().replace(&k.name, "NAME");
    let want = "\
.visible .entry NAME(
\t.param .u64 x,
\t.param .u64 y
)
.maxntid 32, 1, 1
{
\t.reg .b32 %r<1>;
\t.reg .b64 %rd<6>;
\t.reg .f32 %f<2>;
\tld.param.u64 %rd0, [x];
\tcvta.to.global.u64 %rd1, %rd0;
\tld.param.u64 %rd2, [y];
\tcvta.to.global.u64 %rd3, %rd2;
\tmov.u32 %r0, %tid.x;
\tmad.wide.u32 %rd4, %r0, 4, %rd1;
\tmad.wide.u32 %rd5, %r0, 4, %rd3;
\tld.global.f32 %f0, [%rd4];
\tfma.rn.f32 %f1, %f0, 0f40000000, 0f3F800000;
\tst.global.f32 [%rd5], %f1;
\tret;
}
";
    assert_eq!(body, want);
    assert!(
        k.name.starts_with("axpy_") && k.name.len() == "axpy_".len() + 16,
        "{}",
        k.name
    );
    assert_eq!(
        axpy_kernel().name,
        k.name,
        "the same kernel gets the same name"
    );
    assert_eq!(axpy_kernel().entry_text(), k.entry_text());
}

#[test]
fn catalog_is_deterministic_and_names_are_unique() {
    let a = tensor_fn_kernels::catalog::programs();
    let b = tensor_fn_kernels::catalog::programs();
    let text = |ps: &[(String, tensor_fn_kernels::Program)]| {
        let mut m = Module::default();
        for (_, p) in ps {
            p.add_to(&mut m);
        }
        m.to_ptx()
    };
    assert_eq!(text(&a), text(&b), "generating twice gives identical bytes");
    let mut names = std::collections::HashMap::new();
    for (_, p) in &a {
        for l in &p.launches {
            l.kernel
                .check()
                .unwrap_or_else(|e| panic!("{}: {e}", l.kernel.name));
            let entry = l.kernel.entry_text();
            if let Some(prev) = names.insert(l.kernel.name.clone(), entry.clone()) {
                assert_eq!(prev, entry, "two different kernels named {}", l.kernel.name);
            }
        }
    }
}

#[test]
fn runs_axpy() {
    let k = axpy_kernel();
    let mut mem = Memory::new();
    let x: Vec<f32> = (0..32).map(|i| i as f32).collect();
    let px = mem.upload_f32(&x);
    let py = mem.alloc(32 * 4);
    vm::launch(
        &k,
        [1, 1, 1],
        [32, 1, 1],
        &[Arg::U64(px), Arg::U64(py)],
        &mut mem,
    )
    .unwrap();
    let y = mem.read_f32(py, 32);
    assert_eq!(y, x.iter().map(|v| v * 2.0 + 1.0).collect::<Vec<_>>());
    // Out of bounds: a block of 32 threads over a 16-element output.
    let short = mem.alloc(16 * 4);
    let e = vm::launch(
        &k,
        [1, 1, 1],
        [32, 1, 1],
        &[Arg::U64(px), Arg::U64(short)],
        &mut mem,
    )
    .unwrap_err();
    assert!(e.0.contains("out of bounds"), "{e}");
    let e = vm::launch(
        &k,
        [1, 1, 1],
        [32, 1, 1],
        &[Arg::U64(px), Arg::U32(3)],
        &mut mem,
    )
    .unwrap_err();
    assert!(e.0.contains("argument 1"), "{e}");
}

/// `out[lane] = shfl(lane * 10, 5)` in one warp.
fn shuffle_kernel(mode: ShflMode, clamp: u32) -> tensor_fn_kernels::ptx::Kernel {
    let mut k = KernelBuilder::new([32, 1, 1]);
    let pout = k.param("out", Type::U64);
    let out = k.ld_ptr(pout);
    let t = k.special(Special::Tid(Axis3::X));
    let v = k.bin(BinOp::Mul, Type::U32, t, Operand::Imm(10));
    let d = k.reg(Type::U32);
    k.push(Inst::Shfl {
        mode,
        dst: d,
        src: v,
        lane: Operand::Imm(5),
        clamp,
        mask: u32::MAX,
    });
    let a = k.mad_wide(t, Operand::Imm(4), out);
    k.st(Space::Global, Type::U32, Address::reg(a), d);
    k.finish("shfl")
}

fn read_u32(mem: &Memory, p: u64, n: usize) -> Vec<u32> {
    mem.read_f32(p, n)
        .into_iter()
        .map(|x| x.to_bits())
        .collect()
}

#[test]
fn shuffles() {
    let mut mem = Memory::new();
    let out = mem.alloc(32 * 4);
    let k = shuffle_kernel(ShflMode::Bfly, 31);
    vm::launch(&k, [1, 1, 1], [32, 1, 1], &[Arg::U64(out)], &mut mem).unwrap();
    let want: Vec<u32> = (0..32).map(|l| (l ^ 5) * 10).collect();
    assert_eq!(read_u32(&mem, out, 32), want);
    let k = shuffle_kernel(ShflMode::Down, 31);
    vm::launch(&k, [1, 1, 1], [32, 1, 1], &[Arg::U64(out)], &mut mem).unwrap();
    let want: Vec<u32> = (0..32)
        .map(|l| if l + 5 < 32 { (l + 5) * 10 } else { l * 10 })
        .collect();
    assert_eq!(read_u32(&mem, out, 32), want);
    // Segments of 8 lanes (c = ((32 - 8) << 8) | 31): `down` stays inside each segment.
    let k = shuffle_kernel(ShflMode::Down, (24 << 8) | 31);
    vm::launch(&k, [1, 1, 1], [32, 1, 1], &[Arg::U64(out)], &mut mem).unwrap();
    let want: Vec<u32> = (0..32)
        .map(|l| if l % 8 + 5 < 8 { (l + 5) * 10 } else { l * 10 })
        .collect();
    assert_eq!(read_u32(&mem, out, 32), want);
    // A partial warp cannot run a full-mask shuffle.
    let e = vm::launch(&k, [1, 1, 1], [16, 1, 1], &[Arg::U64(out)], &mut mem).unwrap_err();
    assert!(e.0.contains("partial warp"), "{e}");
}

/// Thread 0 skips the barrier the others wait at: a hang on a GPU, an error here.
#[test]
fn divergent_barrier_is_a_deadlock() {
    let mut k = KernelBuilder::new([64, 1, 1]);
    let t = k.special(Special::Tid(Axis3::X));
    let p = k.setp(Cmp::Eq, Type::U32, t, Operand::Imm(0));
    let end = k.label();
    k.bra_if(p, false, end);
    k.bar_sync();
    k.place(end);
    let kernel = k.finish("deadlock");
    let e = vm::launch(&kernel, [1, 1, 1], [64, 1, 1], &[], &mut Memory::new()).unwrap_err();
    assert!(e.0.contains("deadlock"), "{e}");
}

/// Every thread writes shared word 0 between two barriers: a race.
#[test]
fn shared_races_are_reported() {
    let mut k = KernelBuilder::new([64, 1, 1]);
    let s = k.shared(4, 256);
    let t = k.special(Special::Tid(Axis3::X));
    let base = k.mov(Type::U32, Operand::Shared(s));
    k.st(Space::Shared, Type::U32, Address::reg(base), t);
    k.bar_sync();
    let kernel = k.finish("race");
    let e = vm::launch(&kernel, [1, 1, 1], [64, 1, 1], &[], &mut Memory::new()).unwrap_err();
    assert!(e.0.contains("shared race"), "{e}");

    // Reading a word nobody wrote is reported too.
    let mut k = KernelBuilder::new([32, 1, 1]);
    let s = k.shared(4, 256);
    let base = k.mov(Type::U32, Operand::Shared(s));
    let _ = k.ld(Space::Shared, Type::U32, Address::reg_off(base, 8));
    let kernel = k.finish("uninit");
    let e = vm::launch(&kernel, [1, 1, 1], [32, 1, 1], &[], &mut Memory::new()).unwrap_err();
    assert!(e.0.contains("never written"), "{e}");
}

/// The checker refuses registers of the wrong class before anything runs.
#[test]
fn type_checker() {
    let mut k = KernelBuilder::new([32, 1, 1]);
    let f = k.reg(Type::F32);
    let r = k.reg(Type::U32);
    k.push(Inst::Bin {
        op: BinOp::Add,
        ty: Type::F32,
        dst: r,
        a: Operand::Reg(f),
        b: Operand::Reg(f),
    });
    let kernel = k.finish("bad");
    let e = kernel.check().unwrap_err();
    assert!(e.contains("%r0 is not a .f32 register"), "{e}");
    assert!(vm::launch(&kernel, [1, 1, 1], [32, 1, 1], &[], &mut Memory::new()).is_err());
}

/// Integer memory and conversions: `ld`/`st` of `.s32`/`.s64`, integer to float with `.rn`
/// (rounding to nearest even where the float has too few bits), float to integer with `.rzi`
/// and `.rni` (NaN to 0, saturating), and `cvt.s64.u32` (zero extension) against
/// `cvt.s64.s32` (sign extension); then the same through printed and parsed PTX.
#[test]
fn integer_loads_stores_and_conversions() {
    use tensor_fn_kernels::ptx::CvtRound;
    let mut k = KernelBuilder::new([8, 1, 1]);
    let names = [
        "i64",
        "i32",
        "f64",
        "o_f32_s64",
        "o_f64_s64",
        "o_f32_s32",
        "o_f64_s32",
        "o_rzi_s64",
        "o_rni_s64",
        "o_rzi_s32",
        "o_s64_u32",
        "o_s64_s32",
        "o_rzi_s64_f32",
    ];
    let ptrs: Vec<_> = names
        .iter()
        .map(|n| {
            let p = k.param(n, Type::U64);
            k.ld_ptr(p)
        })
        .collect();
    let t = k.special(Special::Tid(Axis3::X));
    let at = |k: &mut KernelBuilder, p, es: i64| Address::reg(k.mad_wide(t, Operand::Imm(es), p));
    let a = at(&mut k, ptrs[0], 8);
    let l64 = k.ld(Space::Global, Type::S64, a);
    let a = at(&mut k, ptrs[1], 4);
    let l32 = k.ld(Space::Global, Type::S32, a);
    let a = at(&mut k, ptrs[2], 8);
    let f = k.ld(Space::Global, Type::F64, a);
    let f32v = k.cvt(CvtRound::Rn, Type::F32, Type::F64, f);
    let outs = [
        (Type::F32, k.cvt(CvtRound::Rn, Type::F32, Type::S64, l64), 4),
        (Type::F64, k.cvt(CvtRound::Rn, Type::F64, Type::S64, l64), 8),
        (Type::F32, k.cvt(CvtRound::Rn, Type::F32, Type::S32, l32), 4),
        (Type::F64, k.cvt(CvtRound::Rn, Type::F64, Type::S32, l32), 8),
        (Type::S64, k.cvt(CvtRound::Rzi, Type::S64, Type::F64, f), 8),
        (Type::S64, k.cvt(CvtRound::Rni, Type::S64, Type::F64, f), 8),
        (Type::S32, k.cvt(CvtRound::Rzi, Type::S32, Type::F64, f), 4),
        (
            Type::S64,
            k.cvt(CvtRound::None, Type::S64, Type::U32, l32),
            8,
        ),
        (
            Type::S64,
            k.cvt(CvtRound::None, Type::S64, Type::S32, l32),
            8,
        ),
        (
            Type::S64,
            k.cvt(CvtRound::Rzi, Type::S64, Type::F32, f32v),
            8,
        ),
    ];
    for (o, (ty, r, es)) in outs.into_iter().enumerate() {
        let a = at(&mut k, ptrs[3 + o], es);
        k.st(Space::Global, ty, a, r);
    }
    let kernel = k.finish("ints");
    let text = kernel.entry_text();
    for op in [
        "ld.global.s64",
        "ld.global.s32",
        "cvt.rn.f32.s64",
        "cvt.rn.f64.s32",
        "cvt.rzi.s64.f64",
        "cvt.rni.s64.f64",
        "cvt.rzi.s32.f64",
        "cvt.s64.u32",
        "cvt.rzi.s64.f32",
        "st.global.s64",
        "st.global.s32",
    ] {
        assert!(text.contains(op), "{op} in\n{text}");
    }

    let i64s = [
        0,
        -1,
        (1 << 53) + 1,
        -(1 << 40) + 3,
        i64::MAX,
        i64::MIN,
        16_777_217,
        7,
    ];
    let i32s = [0, -1, i32::MAX, i32::MIN, 16_777_217, 3, -5, 100];
    let f64s = [-2.5, 2.5, -0.9, f64::NAN, 1e20, -1e20, 3.7, -3.7];
    let run = |kernel: &tensor_fn_kernels::ptx::Kernel| {
        let mut mem = Memory::new();
        let mut args = vec![
            Arg::U64(mem.upload_i64(&i64s)),
            Arg::U64(mem.upload_i32(&i32s)),
            Arg::U64(mem.upload_f64(&f64s)),
        ];
        let sizes = [4, 8, 4, 8, 8, 8, 4, 8, 8, 8];
        let outs: Vec<u64> = sizes.iter().map(|s| mem.alloc(8 * s)).collect();
        args.extend(outs.iter().map(|p| Arg::U64(*p)));
        vm::launch(kernel, [1, 1, 1], [8, 1, 1], &args, &mut mem).unwrap();
        (mem, outs)
    };
    let check = |mem: &Memory, outs: &[u64]| {
        let f32s: Vec<f32> = i64s.iter().map(|&x| x as f32).collect();
        assert_eq!(mem.read_f32(outs[0], 8), f32s);
        assert_eq!(mem.read_f32(outs[0], 8)[6], 16_777_216.0, "ties to even");
        let f64s_of: Vec<f64> = i64s.iter().map(|&x| x as f64).collect();
        assert_eq!(mem.read_f64(outs[1], 8), f64s_of);
        let f32s: Vec<f32> = i32s.iter().map(|&x| x as f32).collect();
        assert_eq!(mem.read_f32(outs[2], 8), f32s);
        let f64s_of: Vec<f64> = i32s.iter().map(|&x| x as f64).collect();
        assert_eq!(mem.read_f64(outs[3], 8), f64s_of);
        assert_eq!(
            mem.read_i64(outs[4], 8),
            [-2, 2, 0, 0, i64::MAX, i64::MIN, 3, -3]
        );
        assert_eq!(
            mem.read_i64(outs[5], 8),
            [-2, 2, -1, 0, i64::MAX, i64::MIN, 4, -4]
        );
        assert_eq!(
            mem.read_i32(outs[6], 8),
            [-2, 2, 0, 0, i32::MAX, i32::MIN, 3, -3]
        );
        let zext: Vec<i64> = i32s.iter().map(|&x| x as u32 as i64).collect();
        assert_eq!(mem.read_i64(outs[7], 8), zext);
        assert_eq!(mem.read_i64(outs[7], 8)[1], 4_294_967_295);
        let sext: Vec<i64> = i32s.iter().map(|&x| x as i64).collect();
        assert_eq!(mem.read_i64(outs[8], 8), sext);
        assert_eq!(
            mem.read_i64(outs[9], 8),
            [-2, 2, 0, 0, i64::MAX, i64::MIN, 3, -3]
        );
    };
    let (mem, outs) = run(&kernel);
    check(&mem, &outs);
    let mut m = Module::default();
    m.add(kernel.clone());
    let parsed = tensor_fn_kernels::parse::parse_module(&m.to_ptx()).unwrap();
    assert_eq!(parsed, vec![kernel]);
    let (mem, outs) = run(&parsed[0]);
    check(&mem, &outs);
}
