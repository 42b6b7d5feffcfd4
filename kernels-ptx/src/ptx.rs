//! A typed PTX writer: modules, kernel entries, virtual registers and an instruction set small
//! enough to read in one sitting.
//!
//! Kernels are built as a list of [`Stmt`]s over typed registers ([`Reg`], allocated per
//! [`RegClass`]) and printed by [`Kernel::entry_text`]. The printer is a table: every
//! instruction variant maps to one mnemonic pattern (see [`Inst::mnemonic`]), so what the
//! interpreter in [`crate::vm`] executes is exactly what `ptxas` reads.
//!
//! Floating-point arithmetic always carries an explicit IEEE rounding mode (`.rn`): PTX lets
//! `ptxas` contract a plain `mul` + `add` into an `fma`, which would make the GPU's results
//! differ from the interpreter's. Only `ex2`/`lg2` are `.approx` (PTX has no other kind).

use std::fmt::{self, Write as _};

/// The module header. `.version` is capped at 9.0, the newest ISA that CUDA 13.0 drivers load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    version: (u32, u32),
    target: u32,
    address_size: u32,
}

/// Why a [`Header`] was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderError(pub String);

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HeaderError {}

impl Header {
    /// The newest PTX ISA version we may emit.
    pub const MAX_VERSION: (u32, u32) = (9, 0);

    /// `.version major.minor`, `.target sm_{sm}`, `.address_size {address_size}`.
    pub fn new(version: (u32, u32), sm: u32, address_size: u32) -> Result<Header, HeaderError> {
        if version > Self::MAX_VERSION {
            return Err(HeaderError(format!(
                "PTX .version {}.{} is above {}.{}, the newest CUDA 13.0 drivers load",
                version.0,
                version.1,
                Self::MAX_VERSION.0,
                Self::MAX_VERSION.1
            )));
        }
        // shfl.sync and bar.sync with our semantics need PTX 6.0 / sm_30; our kernels target
        // sm_80 class GPUs, but older targets are the caller's choice.
        if version < (6, 0) {
            return Err(HeaderError(format!(
                "PTX .version {}.{} is below 6.0, which shfl.sync needs",
                version.0, version.1
            )));
        }
        if address_size != 64 {
            return Err(HeaderError(format!(
                ".address_size {address_size}: only 64-bit addressing is emitted"
            )));
        }
        Ok(Header {
            version,
            target: sm,
            address_size,
        })
    }

    pub fn version(&self) -> (u32, u32) {
        self.version
    }

    pub fn target(&self) -> u32 {
        self.target
    }
}

impl Default for Header {
    /// `.version 7.8`, `.target sm_80`, `.address_size 64`: loads on drivers from CUDA 11.8 on
    /// and is JIT-compiled for sm_80/86/89/90.
    fn default() -> Header {
        Header {
            version: (7, 8),
            target: 80,
            address_size: 64,
        }
    }
}

/// PTX value types used by instructions and parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Type {
    Pred,
    B32,
    B64,
    U32,
    U64,
    S32,
    S64,
    F32,
    F64,
}

impl Type {
    pub fn suffix(self) -> &'static str {
        match self {
            Type::Pred => ".pred",
            Type::B32 => ".b32",
            Type::B64 => ".b64",
            Type::U32 => ".u32",
            Type::U64 => ".u64",
            Type::S32 => ".s32",
            Type::S64 => ".s64",
            Type::F32 => ".f32",
            Type::F64 => ".f64",
        }
    }

    /// The register class holding values of this type.
    pub fn class(self) -> RegClass {
        match self {
            Type::Pred => RegClass::Pred,
            Type::B32 | Type::U32 | Type::S32 => RegClass::B32,
            Type::B64 | Type::U64 | Type::S64 => RegClass::B64,
            Type::F32 => RegClass::F32,
            Type::F64 => RegClass::F64,
        }
    }

    /// Size in memory (a predicate has none: it never lives in memory).
    pub fn bytes(self) -> u32 {
        match self {
            Type::Pred => 0,
            Type::B32 | Type::U32 | Type::S32 | Type::F32 => 4,
            Type::B64 | Type::U64 | Type::S64 | Type::F64 => 8,
        }
    }

    pub fn is_float(self) -> bool {
        match self {
            Type::F32 | Type::F64 => true,
            Type::Pred | Type::B32 | Type::B64 | Type::U32 | Type::U64 | Type::S32 | Type::S64 => {
                false
            }
        }
    }

    pub fn is_signed(self) -> bool {
        match self {
            Type::S32 | Type::S64 => true,
            Type::Pred | Type::B32 | Type::B64 | Type::U32 | Type::U64 | Type::F32 | Type::F64 => {
                false
            }
        }
    }
}

/// Virtual register classes, each with its own numbering and `.reg` declaration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RegClass {
    Pred,
    B32,
    B64,
    F32,
    F64,
}

impl RegClass {
    pub const ALL: [RegClass; 5] = [
        RegClass::Pred,
        RegClass::B32,
        RegClass::B64,
        RegClass::F32,
        RegClass::F64,
    ];

    pub fn index(self) -> usize {
        match self {
            RegClass::Pred => 0,
            RegClass::B32 => 1,
            RegClass::B64 => 2,
            RegClass::F32 => 3,
            RegClass::F64 => 4,
        }
    }

    pub fn prefix(self) -> &'static str {
        match self {
            RegClass::Pred => "%p",
            RegClass::B32 => "%r",
            RegClass::B64 => "%rd",
            RegClass::F32 => "%f",
            RegClass::F64 => "%fd",
        }
    }

    fn decl_type(self) -> &'static str {
        match self {
            RegClass::Pred => ".pred",
            RegClass::B32 => ".b32",
            RegClass::B64 => ".b64",
            RegClass::F32 => ".f32",
            RegClass::F64 => ".f64",
        }
    }

    /// Width in bits of the values this class holds (predicates: 1).
    pub fn bits(self) -> u32 {
        match self {
            RegClass::Pred => 1,
            RegClass::B32 | RegClass::F32 => 32,
            RegClass::B64 | RegClass::F64 => 64,
        }
    }
}

/// A virtual register: `%r7`, `%fd2`, ...
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Reg {
    pub class: RegClass,
    pub n: u32,
}

impl fmt::Display for Reg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.class.prefix(), self.n)
    }
}

/// Special registers (all `.u32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Special {
    Tid(Axis3),
    Ntid(Axis3),
    Ctaid(Axis3),
    Nctaid(Axis3),
    LaneId,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Axis3 {
    X,
    Y,
    Z,
}

impl Axis3 {
    pub fn index(self) -> usize {
        match self {
            Axis3::X => 0,
            Axis3::Y => 1,
            Axis3::Z => 2,
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Axis3::X => ".x",
            Axis3::Y => ".y",
            Axis3::Z => ".z",
        }
    }
}

impl fmt::Display for Special {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Special::Tid(a) => write!(f, "%tid{}", a.suffix()),
            Special::Ntid(a) => write!(f, "%ntid{}", a.suffix()),
            Special::Ctaid(a) => write!(f, "%ctaid{}", a.suffix()),
            Special::Nctaid(a) => write!(f, "%nctaid{}", a.suffix()),
            Special::LaneId => f.write_str("%laneid"),
        }
    }
}

/// A kernel parameter (index into [`Kernel::params`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ParamId(pub u32);

/// A `.shared` array of the kernel (index into [`Kernel::shared`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SharedId(pub u32);

/// A branch target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Label(pub u32);

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "$L{}", self.0)
    }
}

/// A source operand.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Operand {
    Reg(Reg),
    /// An integer immediate, printed in decimal; the instruction's type gives its width.
    Imm(i64),
    /// An `f32` immediate, printed bit-exact as `0fXXXXXXXX`.
    F32(f32),
    /// An `f64` immediate, printed bit-exact as `0dXXXXXXXXXXXXXXXX`.
    F64(f64),
    Special(Special),
    /// The shared-window address of a `.shared` array (32 bits).
    Shared(SharedId),
}

impl From<Reg> for Operand {
    fn from(r: Reg) -> Operand {
        Operand::Reg(r)
    }
}

/// What an address is relative to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Base {
    /// A register holding a global (64-bit) or shared (32-bit) address.
    Reg(Reg),
    Param(ParamId),
    Shared(SharedId),
}

/// `[base+offset]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address {
    pub base: Base,
    pub offset: i32,
}

impl Address {
    pub fn reg(r: Reg) -> Address {
        Address {
            base: Base::Reg(r),
            offset: 0,
        }
    }

    pub fn reg_off(r: Reg, offset: i32) -> Address {
        Address {
            base: Base::Reg(r),
            offset,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    Global,
    Shared,
    Param,
}

impl Space {
    fn suffix(self) -> &'static str {
        match self {
            Space::Global => ".global",
            Space::Shared => ".shared",
            Space::Param => ".param",
        }
    }
}

/// Rounding of `cvt`. Float-to-int and narrowing float conversions need one; widening and
/// int-to-int conversions must have none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CvtRound {
    None,
    /// Round to nearest even (int -> float, f64 -> f32).
    Rn,
    /// Round to nearest even integer (float -> int, or float -> same float).
    Rni,
    /// Round toward zero to an integer (float -> int, or float -> same float).
    Rzi,
}

impl CvtRound {
    fn suffix(self) -> &'static str {
        match self {
            CvtRound::None => "",
            CvtRound::Rn => ".rn",
            CvtRound::Rni => ".rni",
            CvtRound::Rzi => ".rzi",
        }
    }
}

/// `setp` comparisons. The `u` forms are "unordered": true when either operand is NaN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Equ,
    Neu,
    Ltu,
    Leu,
    Gtu,
    Geu,
    /// Neither operand is NaN.
    Num,
    /// Either operand is NaN.
    Nan,
}

impl Cmp {
    fn suffix(self) -> &'static str {
        match self {
            Cmp::Eq => ".eq",
            Cmp::Ne => ".ne",
            Cmp::Lt => ".lt",
            Cmp::Le => ".le",
            Cmp::Gt => ".gt",
            Cmp::Ge => ".ge",
            Cmp::Equ => ".equ",
            Cmp::Neu => ".neu",
            Cmp::Ltu => ".ltu",
            Cmp::Leu => ".leu",
            Cmp::Gtu => ".gtu",
            Cmp::Geu => ".geu",
            Cmp::Num => ".num",
            Cmp::Nan => ".nan",
        }
    }

    /// Whether this comparison only exists for floating-point types.
    pub fn float_only(self) -> bool {
        match self {
            Cmp::Eq | Cmp::Ne | Cmp::Lt | Cmp::Le | Cmp::Gt | Cmp::Ge => false,
            Cmp::Equ
            | Cmp::Neu
            | Cmp::Ltu
            | Cmp::Leu
            | Cmp::Gtu
            | Cmp::Geu
            | Cmp::Num
            | Cmp::Nan => true,
        }
    }
}

/// Two-operand instructions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    /// Floats: `mul.rn`; integers: `mul.lo` (the low half of the product).
    Mul,
    /// `mul.wide`: a 32 x 32 -> 64-bit integer product; `ty` is the source type.
    MulWide,
    Div,
    Rem,
    Min,
    Max,
    And,
    Or,
    Xor,
    Shl,
    /// Arithmetic for signed types, logical otherwise.
    Shr,
}

/// One-operand instructions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnOp {
    Neg,
    Abs,
    Not,
    /// `rcp.rn`: IEEE-correct reciprocal.
    Rcp,
    /// `sqrt.rn`: IEEE-correct square root.
    Sqrt,
    /// `ex2.approx.f32` (max. relative error 2^-22 on sm_80+, per the PTX ISA).
    Ex2,
    /// `lg2.approx.f32` (max. absolute error 2^-22 in [0.5, 2]).
    Lg2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShflMode {
    /// Reads lane `laneid ^ b`.
    Bfly,
    /// Reads lane `laneid + b` (its own value past the end of the segment).
    Down,
}

/// One PTX instruction. Every variant prints as one line through [`Inst::mnemonic`] and the
/// operand list in [`Kernel::entry_text`].
#[derive(Debug, Clone, PartialEq)]
pub enum Inst {
    Ld {
        space: Space,
        ty: Type,
        dst: Reg,
        addr: Address,
    },
    St {
        space: Space,
        ty: Type,
        addr: Address,
        src: Operand,
    },
    /// `cvta.to.global.u64`: a generic pointer parameter to a global address.
    CvtaToGlobal {
        dst: Reg,
        src: Reg,
    },
    Mov {
        ty: Type,
        dst: Reg,
        src: Operand,
    },
    Cvt {
        round: CvtRound,
        dst_ty: Type,
        src_ty: Type,
        dst: Reg,
        src: Reg,
    },
    Bin {
        op: BinOp,
        ty: Type,
        dst: Reg,
        a: Operand,
        b: Operand,
    },
    Un {
        op: UnOp,
        ty: Type,
        dst: Reg,
        a: Operand,
    },
    /// Floats: `fma.rn` (one rounding); integers: `mad.lo`.
    Fma {
        ty: Type,
        dst: Reg,
        a: Operand,
        b: Operand,
        c: Operand,
    },
    /// `mad.wide.u32`/`.s32`: 64-bit `a * b + c` from 32-bit `a`, `b`.
    MadWide {
        ty: Type,
        dst: Reg,
        a: Operand,
        b: Operand,
        c: Operand,
    },
    Setp {
        cmp: Cmp,
        ty: Type,
        dst: Reg,
        a: Operand,
        b: Operand,
    },
    /// `dst = p ? a : b`.
    Selp {
        ty: Type,
        dst: Reg,
        a: Operand,
        b: Operand,
        p: Reg,
    },
    Bra {
        target: Label,
    },
    /// `bar.sync 0`: every thread of the block waits here.
    BarSync,
    /// `shfl.sync.{mode}.b32 dst, src, lane, clamp, mask`.
    Shfl {
        mode: ShflMode,
        dst: Reg,
        src: Reg,
        lane: Operand,
        clamp: u32,
        mask: u32,
    },
    /// `mov.b64 dst, {lo, hi}`.
    Pack64 {
        dst: Reg,
        lo: Reg,
        hi: Reg,
    },
    /// `mov.b64 {lo, hi}, src`.
    Unpack64 {
        lo: Reg,
        hi: Reg,
        src: Reg,
    },
    Ret,
}

impl Inst {
    /// The full opcode with modifiers and type, e.g. `add.rn.f32`. This is the printer's table.
    pub fn mnemonic(&self) -> String {
        match self {
            Inst::Ld { space, ty, .. } => format!("ld{}{}", space.suffix(), ty.suffix()),
            Inst::St { space, ty, .. } => format!("st{}{}", space.suffix(), ty.suffix()),
            Inst::CvtaToGlobal { .. } => "cvta.to.global.u64".to_string(),
            Inst::Mov { ty, .. } => format!("mov{}", ty.suffix()),
            Inst::Cvt {
                round,
                dst_ty,
                src_ty,
                ..
            } => format!(
                "cvt{}{}{}",
                round.suffix(),
                dst_ty.suffix(),
                src_ty.suffix()
            ),
            Inst::Bin { op, ty, .. } => {
                let (name, modifier) = bin_op_text(*op, *ty);
                format!("{name}{modifier}{}", ty.suffix())
            }
            Inst::Un { op, ty, .. } => {
                let (name, modifier) = un_op_text(*op, *ty);
                format!("{name}{modifier}{}", ty.suffix())
            }
            Inst::Fma { ty, .. } => {
                if ty.is_float() {
                    format!("fma.rn{}", ty.suffix())
                } else {
                    format!("mad.lo{}", ty.suffix())
                }
            }
            Inst::MadWide { ty, .. } => format!("mad.wide{}", ty.suffix()),
            Inst::Setp { cmp, ty, .. } => format!("setp{}{}", cmp.suffix(), ty.suffix()),
            Inst::Selp { ty, .. } => format!("selp{}", ty.suffix()),
            // Never `bra.uni`: guarded loop exits diverge across a warp, and `.uni` on a
            // divergent branch is undefined; ptxas finds the uniform ones itself.
            Inst::Bra { .. } => "bra".to_string(),
            Inst::BarSync => "bar.sync".to_string(),
            Inst::Shfl { mode, .. } => match mode {
                ShflMode::Bfly => "shfl.sync.bfly.b32".to_string(),
                ShflMode::Down => "shfl.sync.down.b32".to_string(),
            },
            Inst::Pack64 { .. } | Inst::Unpack64 { .. } => "mov.b64".to_string(),
            Inst::Ret => "ret".to_string(),
        }
    }
}

/// Mnemonic and modifier of each binary op for a type: floats get IEEE rounding, integer
/// products their half.
fn bin_op_text(op: BinOp, ty: Type) -> (&'static str, &'static str) {
    let float = ty.is_float();
    match op {
        BinOp::Add => ("add", if float { ".rn" } else { "" }),
        BinOp::Sub => ("sub", if float { ".rn" } else { "" }),
        BinOp::Mul => ("mul", if float { ".rn" } else { ".lo" }),
        BinOp::MulWide => ("mul", ".wide"),
        BinOp::Div => ("div", if float { ".rn" } else { "" }),
        BinOp::Rem => ("rem", ""),
        BinOp::Min => ("min", ""),
        BinOp::Max => ("max", ""),
        BinOp::And => ("and", ""),
        BinOp::Or => ("or", ""),
        BinOp::Xor => ("xor", ""),
        BinOp::Shl => ("shl", ""),
        BinOp::Shr => ("shr", ""),
    }
}

fn un_op_text(op: UnOp, _ty: Type) -> (&'static str, &'static str) {
    match op {
        UnOp::Neg => ("neg", ""),
        UnOp::Abs => ("abs", ""),
        UnOp::Not => ("not", ""),
        UnOp::Rcp => ("rcp", ".rn"),
        UnOp::Sqrt => ("sqrt", ".rn"),
        UnOp::Ex2 => ("ex2", ".approx"),
        UnOp::Lg2 => ("lg2", ".approx"),
    }
}

/// A guard predicate: `@%p1` or `@!%p1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guard {
    pub pred: Reg,
    pub negate: bool,
}

/// A line of a kernel body.
#[derive(Debug, Clone, PartialEq)]
pub enum Stmt {
    Label(Label),
    Inst {
        guard: Option<Guard>,
        inst: Inst,
    },
    /// A comment line, for readers of the PTX; no effect.
    Comment(String),
}

/// A `.shared` array declared in the kernel body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedDecl {
    pub name: String,
    pub align: u32,
    pub bytes: u32,
}

/// One `.entry`: its parameters, shared arrays, register counts and body.
#[derive(Debug, Clone, PartialEq)]
pub struct Kernel {
    pub name: String,
    pub params: Vec<(String, Type)>,
    pub shared: Vec<SharedDecl>,
    /// Registers allocated per class, indexed by [`RegClass::index`].
    pub reg_counts: [u32; 5],
    /// `.maxntid`: the block size the kernel is written for.
    pub max_threads: [u32; 3],
    pub body: Vec<Stmt>,
}

impl Kernel {
    /// Total static shared memory in bytes, with each array aligned as declared.
    pub fn shared_bytes(&self) -> u32 {
        self.shared_layout().1
    }

    /// Offsets of each shared array in the block's shared window, and the total.
    pub fn shared_layout(&self) -> (Vec<u32>, u32) {
        let mut offs = Vec::with_capacity(self.shared.len());
        let mut at = 0u32;
        for s in &self.shared {
            at = at.div_ceil(s.align) * s.align;
            offs.push(at);
            at += s.bytes;
        }
        (offs, at)
    }

    /// The `.entry` text (no module header).
    pub fn entry_text(&self) -> String {
        entry_text(self, &self.name)
    }

    /// Checks that every instruction's registers have the classes its types require, that
    /// labels are placed once and that ids are in range. The builders in this crate only
    /// produce checked kernels; the interpreter refuses unchecked ones.
    pub fn check(&self) -> Result<(), String> {
        check_kernel(self)
    }
}

fn entry_text(k: &Kernel, name: &str) -> String {
    let mut s = String::new();
    let _ = write!(s, ".visible .entry {name}(");
    for (i, (pname, ty)) in k.params.iter().enumerate() {
        s.push_str(if i == 0 { "\n\t" } else { ",\n\t" });
        let _ = write!(s, ".param {} {pname}", ty.suffix());
    }
    s.push_str("\n)\n");
    let _ = writeln!(
        s,
        ".maxntid {}, {}, {}",
        k.max_threads[0], k.max_threads[1], k.max_threads[2]
    );
    s.push_str("{\n");
    for class in RegClass::ALL {
        let n = k.reg_counts[class.index()];
        if n > 0 {
            let _ = writeln!(s, "\t.reg {} {}<{n}>;", class.decl_type(), class.prefix());
        }
    }
    for sh in &k.shared {
        let _ = writeln!(
            s,
            "\t.shared .align {} .b8 {}[{}];",
            sh.align,
            sh.name,
            sh.bytes.max(1)
        );
    }
    for st in &k.body {
        match st {
            Stmt::Label(l) => {
                let _ = writeln!(s, "{l}:");
            }
            Stmt::Comment(c) => {
                let _ = writeln!(s, "\t// {c}");
            }
            Stmt::Inst { guard, inst } => {
                s.push('\t');
                if let Some(g) = guard {
                    let _ = write!(s, "@{}{} ", if g.negate { "!" } else { "" }, g.pred);
                }
                s.push_str(&inst.mnemonic());
                let ops = operands_text(k, inst);
                if !ops.is_empty() {
                    s.push(' ');
                    s.push_str(&ops);
                }
                s.push_str(";\n");
            }
        }
    }
    s.push_str("}\n");
    s
}

fn operand_text(k: &Kernel, o: &Operand) -> String {
    match o {
        Operand::Reg(r) => r.to_string(),
        Operand::Imm(i) => i.to_string(),
        Operand::F32(x) => format!("0f{:08X}", x.to_bits()),
        Operand::F64(x) => format!("0d{:016X}", x.to_bits()),
        Operand::Special(sp) => sp.to_string(),
        Operand::Shared(id) => k.shared[id.0 as usize].name.clone(),
    }
}

fn address_text(k: &Kernel, a: &Address) -> String {
    let base = match a.base {
        Base::Reg(r) => r.to_string(),
        Base::Param(p) => k.params[p.0 as usize].0.clone(),
        Base::Shared(id) => k.shared[id.0 as usize].name.clone(),
    };
    match a.offset {
        0 => format!("[{base}]"),
        o => format!("[{base}+{o}]"),
    }
}

fn operands_text(k: &Kernel, inst: &Inst) -> String {
    let o = |x: &Operand| operand_text(k, x);
    match inst {
        Inst::Ld { dst, addr, .. } => format!("{dst}, {}", address_text(k, addr)),
        Inst::St { addr, src, .. } => format!("{}, {}", address_text(k, addr), o(src)),
        Inst::CvtaToGlobal { dst, src } => format!("{dst}, {src}"),
        Inst::Mov { dst, src, .. } => format!("{dst}, {}", o(src)),
        Inst::Cvt { dst, src, .. } => format!("{dst}, {src}"),
        Inst::Bin { dst, a, b, .. } => format!("{dst}, {}, {}", o(a), o(b)),
        Inst::Un { dst, a, .. } => format!("{dst}, {}", o(a)),
        Inst::Fma { dst, a, b, c, .. } | Inst::MadWide { dst, a, b, c, .. } => {
            format!("{dst}, {}, {}, {}", o(a), o(b), o(c))
        }
        Inst::Setp { dst, a, b, .. } => format!("{dst}, {}, {}", o(a), o(b)),
        Inst::Selp { dst, a, b, p, .. } => format!("{dst}, {}, {}, {p}", o(a), o(b)),
        Inst::Bra { target } => target.to_string(),
        Inst::BarSync => "0".to_string(),
        Inst::Shfl {
            dst,
            src,
            lane,
            clamp,
            mask,
            ..
        } => format!("{dst}, {src}, {}, {clamp}, {}", o(lane), *mask as i32),
        Inst::Pack64 { dst, lo, hi } => format!("{dst}, {{{lo}, {hi}}}"),
        Inst::Unpack64 { lo, hi, src } => format!("{{{lo}, {hi}}}, {src}"),
        Inst::Ret => String::new(),
    }
}

fn check_kernel(k: &Kernel) -> Result<(), String> {
    let mut placed = Vec::new();
    let mut targets = Vec::new();
    for (pc, st) in k.body.iter().enumerate() {
        match st {
            Stmt::Label(l) => {
                if placed.contains(&l.0) {
                    return Err(format!("label {l} placed twice"));
                }
                placed.push(l.0);
            }
            Stmt::Comment(_) => {}
            Stmt::Inst { guard, inst } => {
                let at = |e: String| format!("{}: `{}`: {e}", pc, inst.mnemonic());
                if let Some(g) = guard {
                    reg_is(k, g.pred, RegClass::Pred).map_err(at)?;
                }
                check_inst(k, inst).map_err(at)?;
                if let Inst::Bra { target } = inst {
                    targets.push(*target);
                }
            }
        }
    }
    for t in targets {
        if !placed.contains(&t.0) {
            return Err(format!("branch to {t}, which is never placed"));
        }
    }
    Ok(())
}

fn reg_is(k: &Kernel, r: Reg, class: RegClass) -> Result<(), String> {
    if r.class != class {
        return Err(format!("{r} is not a {} register", class.decl_type()));
    }
    if r.n >= k.reg_counts[class.index()] {
        return Err(format!("{r} was never allocated"));
    }
    Ok(())
}

fn operand_is(k: &Kernel, o: &Operand, ty: Type) -> Result<(), String> {
    match o {
        Operand::Reg(r) => reg_is(k, *r, ty.class()),
        Operand::Imm(_) => match ty.class() {
            RegClass::B32 | RegClass::B64 | RegClass::Pred => Ok(()),
            RegClass::F32 | RegClass::F64 => {
                Err(format!("integer immediate used as {}", ty.suffix()))
            }
        },
        Operand::F32(_) => match ty {
            Type::F32 => Ok(()),
            Type::Pred
            | Type::B32
            | Type::B64
            | Type::U32
            | Type::U64
            | Type::S32
            | Type::S64
            | Type::F64 => Err(format!("f32 immediate used as {}", ty.suffix())),
        },
        Operand::F64(_) => match ty {
            Type::F64 => Ok(()),
            Type::Pred
            | Type::B32
            | Type::B64
            | Type::U32
            | Type::U64
            | Type::S32
            | Type::S64
            | Type::F32 => Err(format!("f64 immediate used as {}", ty.suffix())),
        },
        Operand::Special(_) | Operand::Shared(_) => match ty {
            Type::U32 | Type::B32 | Type::S32 => Ok(()),
            Type::Pred | Type::B64 | Type::U64 | Type::S64 | Type::F32 | Type::F64 => Err(format!(
                "32-bit special/shared address used as {}",
                ty.suffix()
            )),
        },
    }
}

fn address_ok(k: &Kernel, space: Space, a: &Address) -> Result<(), String> {
    match (space, a.base) {
        (Space::Global, Base::Reg(r)) => reg_is(k, r, RegClass::B64),
        (Space::Shared, Base::Reg(r)) => reg_is(k, r, RegClass::B32),
        (Space::Shared, Base::Shared(id)) => {
            if (id.0 as usize) < k.shared.len() {
                Ok(())
            } else {
                Err("unknown shared array".into())
            }
        }
        (Space::Param, Base::Param(p)) => {
            if (p.0 as usize) < k.params.len() {
                Ok(())
            } else {
                Err("unknown parameter".into())
            }
        }
        (Space::Global, Base::Param(_) | Base::Shared(_))
        | (Space::Shared, Base::Param(_))
        | (Space::Param, Base::Reg(_) | Base::Shared(_)) => {
            Err("address base does not fit the state space".into())
        }
    }
}

fn check_inst(k: &Kernel, inst: &Inst) -> Result<(), String> {
    match inst {
        Inst::Ld {
            space,
            ty,
            dst,
            addr,
        } => {
            if let (Space::Param, Base::Param(p)) = (space, addr.base) {
                if let Some((_, pty)) = k.params.get(p.0 as usize) {
                    if pty != ty {
                        return Err(format!(
                            "parameter is {}, loaded as {}",
                            pty.suffix(),
                            ty.suffix()
                        ));
                    }
                }
            }
            reg_is(k, *dst, ty.class())?;
            address_ok(k, *space, addr)
        }
        Inst::St {
            space,
            ty,
            addr,
            src,
        } => {
            if *space == Space::Param {
                return Err("kernels never store parameters".into());
            }
            operand_is(k, src, *ty)?;
            address_ok(k, *space, addr)
        }
        Inst::CvtaToGlobal { dst, src } => {
            reg_is(k, *dst, RegClass::B64)?;
            reg_is(k, *src, RegClass::B64)
        }
        Inst::Mov { ty, dst, src } => {
            // `mov.b32`/`mov.b64` reinterpret bits between integer and float registers.
            match ty {
                Type::B32 => {
                    if !matches!(dst.class, RegClass::B32 | RegClass::F32) {
                        return Err("mov.b32 into a non-32-bit register".into());
                    }
                    reg_is(k, *dst, dst.class)?;
                    match src {
                        Operand::Reg(r) if matches!(r.class, RegClass::B32 | RegClass::F32) => {
                            reg_is(k, *r, r.class)
                        }
                        Operand::Reg(_) => Err("mov.b32 from a non-32-bit register".into()),
                        Operand::Imm(_) | Operand::Special(_) | Operand::Shared(_) => Ok(()),
                        Operand::F32(_) | Operand::F64(_) => {
                            Err("float immediate in mov.b32".into())
                        }
                    }
                }
                Type::B64 => {
                    if !matches!(dst.class, RegClass::B64 | RegClass::F64) {
                        return Err("mov.b64 into a non-64-bit register".into());
                    }
                    reg_is(k, *dst, dst.class)?;
                    match src {
                        Operand::Reg(r) if matches!(r.class, RegClass::B64 | RegClass::F64) => {
                            reg_is(k, *r, r.class)
                        }
                        Operand::Reg(_) => Err("mov.b64 from a non-64-bit register".into()),
                        Operand::Imm(_) => Ok(()),
                        Operand::Special(_)
                        | Operand::Shared(_)
                        | Operand::F32(_)
                        | Operand::F64(_) => Err("bad source for mov.b64".into()),
                    }
                }
                Type::Pred
                | Type::U32
                | Type::U64
                | Type::S32
                | Type::S64
                | Type::F32
                | Type::F64 => {
                    reg_is(k, *dst, ty.class())?;
                    operand_is(k, src, *ty)
                }
            }
        }
        Inst::Cvt {
            round,
            dst_ty,
            src_ty,
            dst,
            src,
        } => {
            reg_is(k, *dst, dst_ty.class())?;
            reg_is(k, *src, src_ty.class())?;
            let need = match (dst_ty.is_float(), src_ty.is_float()) {
                (false, false) => "none",
                (true, false) => "rn",
                (false, true) => "integer",
                (true, true) => {
                    if dst_ty == src_ty {
                        "integer"
                    } else if *dst_ty == Type::F32 {
                        "rn"
                    } else {
                        "none"
                    }
                }
            };
            let ok = match round {
                CvtRound::None => need == "none",
                CvtRound::Rn => need == "rn",
                CvtRound::Rni | CvtRound::Rzi => need == "integer",
            };
            if ok {
                Ok(())
            } else {
                Err(format!("cvt{} needs rounding `{need}`", round.suffix()))
            }
        }
        Inst::Bin { op, ty, dst, a, b } => {
            let valid = match op {
                BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Min | BinOp::Max => {
                    !matches!(ty, Type::Pred | Type::B32 | Type::B64)
                }
                BinOp::Div => !matches!(ty, Type::Pred | Type::B32 | Type::B64),
                BinOp::Rem => matches!(ty, Type::U32 | Type::U64 | Type::S32 | Type::S64),
                BinOp::MulWide => matches!(ty, Type::U32 | Type::S32),
                BinOp::And | BinOp::Or | BinOp::Xor => {
                    matches!(ty, Type::Pred | Type::B32 | Type::B64)
                }
                BinOp::Shl => matches!(ty, Type::B32 | Type::B64),
                BinOp::Shr => matches!(
                    ty,
                    Type::B32 | Type::B64 | Type::U32 | Type::U64 | Type::S32 | Type::S64
                ),
            };
            if !valid {
                return Err("operation not defined for this type".into());
            }
            let dst_class = if *op == BinOp::MulWide {
                RegClass::B64
            } else {
                ty.class()
            };
            reg_is(k, *dst, dst_class)?;
            operand_is(k, a, *ty)?;
            // Shift amounts are always 32-bit.
            let bty = match op {
                BinOp::Shl | BinOp::Shr => Type::U32,
                BinOp::Add
                | BinOp::Sub
                | BinOp::Mul
                | BinOp::MulWide
                | BinOp::Div
                | BinOp::Rem
                | BinOp::Min
                | BinOp::Max
                | BinOp::And
                | BinOp::Or
                | BinOp::Xor => *ty,
            };
            operand_is(k, b, bty)
        }
        Inst::Un { op, ty, dst, a } => {
            let valid = match op {
                UnOp::Neg | UnOp::Abs => {
                    matches!(ty, Type::S32 | Type::S64 | Type::F32 | Type::F64)
                }
                UnOp::Not => matches!(ty, Type::Pred | Type::B32 | Type::B64),
                UnOp::Rcp | UnOp::Sqrt => ty.is_float(),
                UnOp::Ex2 | UnOp::Lg2 => *ty == Type::F32,
            };
            if !valid {
                return Err("operation not defined for this type".into());
            }
            reg_is(k, *dst, ty.class())?;
            operand_is(k, a, *ty)
        }
        Inst::Fma { ty, dst, a, b, c } => {
            if matches!(ty, Type::Pred | Type::B32 | Type::B64) {
                return Err("fma/mad needs a numeric type".into());
            }
            reg_is(k, *dst, ty.class())?;
            operand_is(k, a, *ty)?;
            operand_is(k, b, *ty)?;
            operand_is(k, c, *ty)
        }
        Inst::MadWide { ty, dst, a, b, c } => {
            if !matches!(ty, Type::U32 | Type::S32) {
                return Err("mad.wide takes 32-bit integers".into());
            }
            reg_is(k, *dst, RegClass::B64)?;
            operand_is(k, a, *ty)?;
            operand_is(k, b, *ty)?;
            operand_is(
                k,
                c,
                if *ty == Type::S32 {
                    Type::S64
                } else {
                    Type::U64
                },
            )
        }
        Inst::Setp { cmp, ty, dst, a, b } => {
            if *ty == Type::Pred || (cmp.float_only() && !ty.is_float()) {
                return Err("comparison not defined for this type".into());
            }
            reg_is(k, *dst, RegClass::Pred)?;
            operand_is(k, a, *ty)?;
            operand_is(k, b, *ty)
        }
        Inst::Selp { ty, dst, a, b, p } => {
            if *ty == Type::Pred {
                return Err("selp of predicates".into());
            }
            reg_is(k, *dst, ty.class())?;
            operand_is(k, a, *ty)?;
            operand_is(k, b, *ty)?;
            reg_is(k, *p, RegClass::Pred)
        }
        Inst::Bra { .. } | Inst::BarSync | Inst::Ret => Ok(()),
        Inst::Shfl {
            dst,
            src,
            lane,
            clamp,
            ..
        } => {
            if !matches!(dst.class, RegClass::B32 | RegClass::F32) || src.class != dst.class {
                return Err("shfl moves 32-bit registers of one class".into());
            }
            reg_is(k, *dst, dst.class)?;
            reg_is(k, *src, src.class)?;
            operand_is(k, lane, Type::U32)?;
            if *clamp > 0x1f1f {
                return Err("shfl clamp/segment value out of range".into());
            }
            Ok(())
        }
        Inst::Pack64 { dst, lo, hi } => {
            if !matches!(dst.class, RegClass::B64 | RegClass::F64) {
                return Err("pack into a non-64-bit register".into());
            }
            reg_is(k, *dst, dst.class)?;
            reg_is(k, *lo, RegClass::B32)?;
            reg_is(k, *hi, RegClass::B32)
        }
        Inst::Unpack64 { lo, hi, src } => {
            if !matches!(src.class, RegClass::B64 | RegClass::F64) {
                return Err("unpack of a non-64-bit register".into());
            }
            reg_is(k, *src, src.class)?;
            reg_is(k, *lo, RegClass::B32)?;
            reg_is(k, *hi, RegClass::B32)
        }
    }
}

/// Builds one kernel: parameters, shared arrays, fresh registers and labels, and the body.
/// Helpers that produce a value allocate its destination register and return it.
#[derive(Debug, Clone)]
pub struct KernelBuilder {
    params: Vec<(String, Type)>,
    shared: Vec<SharedDecl>,
    counts: [u32; 5],
    labels: u32,
    body: Vec<Stmt>,
    max_threads: [u32; 3],
}

impl KernelBuilder {
    /// A kernel written for blocks of `max_threads` threads (its `.maxntid`).
    pub fn new(max_threads: [u32; 3]) -> KernelBuilder {
        KernelBuilder {
            params: Vec::new(),
            shared: Vec::new(),
            counts: [0; 5],
            labels: 0,
            body: Vec::new(),
            max_threads,
        }
    }

    pub fn param(&mut self, name: &str, ty: Type) -> ParamId {
        self.params.push((name.to_string(), ty));
        ParamId(self.params.len() as u32 - 1)
    }

    pub fn shared(&mut self, align: u32, bytes: u32) -> SharedId {
        let id = self.shared.len() as u32;
        self.shared.push(SharedDecl {
            name: format!("smem{id}"),
            align,
            bytes,
        });
        SharedId(id)
    }

    pub fn reg(&mut self, ty: Type) -> Reg {
        self.reg_of(ty.class())
    }

    pub fn reg_of(&mut self, class: RegClass) -> Reg {
        let c = &mut self.counts[class.index()];
        *c += 1;
        Reg { class, n: *c - 1 }
    }

    pub fn label(&mut self) -> Label {
        self.labels += 1;
        Label(self.labels - 1)
    }

    pub fn place(&mut self, l: Label) {
        self.body.push(Stmt::Label(l));
    }

    pub fn comment(&mut self, text: impl Into<String>) {
        self.body.push(Stmt::Comment(text.into()));
    }

    pub fn push(&mut self, inst: Inst) {
        self.body.push(Stmt::Inst { guard: None, inst });
    }

    /// `@p inst` (or `@!p inst` when `negate`).
    pub fn push_if(&mut self, pred: Reg, negate: bool, inst: Inst) {
        self.body.push(Stmt::Inst {
            guard: Some(Guard { pred, negate }),
            inst,
        });
    }

    /// Loads a parameter into a fresh register.
    pub fn ld_param(&mut self, p: ParamId) -> Reg {
        let ty = self.params[p.0 as usize].1;
        let dst = self.reg(ty);
        self.push(Inst::Ld {
            space: Space::Param,
            ty,
            dst,
            addr: Address {
                base: Base::Param(p),
                offset: 0,
            },
        });
        dst
    }

    /// Loads a pointer parameter and converts it to a global address.
    pub fn ld_ptr(&mut self, p: ParamId) -> Reg {
        let generic = self.ld_param(p);
        let dst = self.reg(Type::U64);
        self.push(Inst::CvtaToGlobal { dst, src: generic });
        dst
    }

    pub fn special(&mut self, s: Special) -> Reg {
        self.mov(Type::U32, Operand::Special(s))
    }

    pub fn mov(&mut self, ty: Type, src: impl Into<Operand>) -> Reg {
        let dst = self.reg(ty);
        self.push(Inst::Mov {
            ty,
            dst,
            src: src.into(),
        });
        dst
    }

    /// Reinterprets the bits of a 32/64-bit register as another class of the same width.
    pub fn bitcast(&mut self, src: Reg, to: RegClass) -> Reg {
        let dst = self.reg_of(to);
        let ty = if to.bits() == 64 {
            Type::B64
        } else {
            Type::B32
        };
        self.push(Inst::Mov {
            ty,
            dst,
            src: Operand::Reg(src),
        });
        dst
    }

    pub fn cvt(&mut self, round: CvtRound, dst_ty: Type, src_ty: Type, src: Reg) -> Reg {
        let dst = self.reg(dst_ty);
        self.push(Inst::Cvt {
            round,
            dst_ty,
            src_ty,
            dst,
            src,
        });
        dst
    }

    pub fn bin(
        &mut self,
        op: BinOp,
        ty: Type,
        a: impl Into<Operand>,
        b: impl Into<Operand>,
    ) -> Reg {
        let dst = if op == BinOp::MulWide {
            self.reg_of(RegClass::B64)
        } else {
            self.reg(ty)
        };
        self.push(Inst::Bin {
            op,
            ty,
            dst,
            a: a.into(),
            b: b.into(),
        });
        dst
    }

    pub fn un(&mut self, op: UnOp, ty: Type, a: impl Into<Operand>) -> Reg {
        let dst = self.reg(ty);
        self.push(Inst::Un {
            op,
            ty,
            dst,
            a: a.into(),
        });
        dst
    }

    pub fn fma(
        &mut self,
        ty: Type,
        a: impl Into<Operand>,
        b: impl Into<Operand>,
        c: impl Into<Operand>,
    ) -> Reg {
        let dst = self.reg(ty);
        self.push(Inst::Fma {
            ty,
            dst,
            a: a.into(),
            b: b.into(),
            c: c.into(),
        });
        dst
    }

    pub fn mad_wide(
        &mut self,
        a: impl Into<Operand>,
        b: impl Into<Operand>,
        c: impl Into<Operand>,
    ) -> Reg {
        let dst = self.reg(Type::U64);
        self.push(Inst::MadWide {
            ty: Type::U32,
            dst,
            a: a.into(),
            b: b.into(),
            c: c.into(),
        });
        dst
    }

    pub fn setp(
        &mut self,
        cmp: Cmp,
        ty: Type,
        a: impl Into<Operand>,
        b: impl Into<Operand>,
    ) -> Reg {
        let dst = self.reg(Type::Pred);
        self.push(Inst::Setp {
            cmp,
            ty,
            dst,
            a: a.into(),
            b: b.into(),
        });
        dst
    }

    pub fn selp(&mut self, ty: Type, a: impl Into<Operand>, b: impl Into<Operand>, p: Reg) -> Reg {
        let dst = self.reg(ty);
        self.push(Inst::Selp {
            ty,
            dst,
            a: a.into(),
            b: b.into(),
            p,
        });
        dst
    }

    pub fn bra(&mut self, target: Label) {
        self.push(Inst::Bra { target });
    }

    /// `@p bra target` (`@!p` when `negate`).
    pub fn bra_if(&mut self, p: Reg, negate: bool, target: Label) {
        self.push_if(p, negate, Inst::Bra { target });
    }

    pub fn bar_sync(&mut self) {
        self.push(Inst::BarSync);
    }

    pub fn ld(&mut self, space: Space, ty: Type, addr: Address) -> Reg {
        let dst = self.reg(ty);
        self.push(Inst::Ld {
            space,
            ty,
            dst,
            addr,
        });
        dst
    }

    pub fn st(&mut self, space: Space, ty: Type, addr: Address, src: impl Into<Operand>) {
        self.push(Inst::St {
            space,
            ty,
            addr,
            src: src.into(),
        });
    }

    /// Ends the kernel and names it `{prefix}_{hash}`, where the hash is FNV-1a over the entry
    /// text without its name: the same kernel always gets the same name, different kernels
    /// (almost surely) different names.
    pub fn finish(mut self, prefix: &str) -> Kernel {
        self.push(Inst::Ret);
        let mut k = Kernel {
            name: String::new(),
            params: self.params,
            shared: self.shared,
            reg_counts: self.counts,
            max_threads: self.max_threads,
            body: self.body,
        };
        let hash = crate::fnv1a64(entry_text(&k, "").as_bytes());
        k.name = format!("{prefix}_{hash:016x}");
        k
    }
}

/// A PTX module: a header and its kernels, printed in insertion order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Module {
    pub header: Header,
    pub kernels: Vec<Kernel>,
}

impl Module {
    pub fn new(header: Header) -> Module {
        Module {
            header,
            kernels: Vec::new(),
        }
    }

    /// Adds a kernel unless one of the same name (hence the same text) is already there.
    pub fn add(&mut self, k: Kernel) {
        if !self.kernels.iter().any(|x| x.name == k.name) {
            self.kernels.push(k);
        }
    }

    pub fn to_ptx(&self) -> String {
        let mut s = String::new();
        s.push_str("//\n// Generated by tensor-fn-kernels\n//\n\n");
        let h = &self.header;
        let _ = writeln!(s, ".version {}.{}", h.version.0, h.version.1);
        let _ = writeln!(s, ".target sm_{}", h.target);
        let _ = writeln!(s, ".address_size {}", h.address_size);
        for k in &self.kernels {
            s.push('\n');
            s.push_str(&k.entry_text());
        }
        s
    }
}
