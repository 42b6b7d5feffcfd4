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
