//! An interpreter of [`crate::ptx::Kernel`]s with GPU semantics, for testing on machines without a GPU.
//!
//! It executes the very instruction list that is printed for `ptxas`, so what the tests check is
//! what the GPU runs (up to `ex2.approx`/`lg2.approx`, evaluated here correctly rounded).
//!
//! Semantics:
//! - Blocks run one after another; the threads of a block run one at a time, each until it
//!   reaches a `bar.sync`, a `shfl.sync` or its end. A `shfl.sync` executes when all 32 lanes of
//!   the warp wait at that same instruction (its mask must be the full warp); a `bar.sync`
//!   releases when every thread of the block waits at a barrier. Anything else is a deadlock
//!   and an error (on hardware it would hang or be undefined).
//! - Shared memory is checked for races: between two barriers, a word written by one thread
//!   must not be read or written by another, and reading a word never written is an error.
//! - Global memory is a set of buffers; every access is bounds-checked. Fresh buffers and shared
//!   memory are filled with 0xFF bytes (NaN as floats), so reading what was never written shows.
//! - Floating point is IEEE with the instruction's rounding; `fma` is fused.

use std::fmt;

use crate::meta::{ParamTy, Program, Role};
use crate::ptx::{
    Base, BinOp, Cmp, CvtRound, Guard, Inst, Kernel, Operand, Reg, RegClass, ShflMode, Space,
    Special, Stmt, Type, UnOp,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmError(pub String);

impl fmt::Display for VmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for VmError {}

fn err<T>(m: impl Into<String>) -> Result<T, VmError> {
    Err(VmError(m.into()))
}

/// Global memory: buffers addressed by `(index + 1) << 40 | offset`.
#[derive(Debug, Default, Clone)]
pub struct Memory {
    bufs: Vec<Vec<u8>>,
}

const PTR_SHIFT: u32 = 40;

impl Memory {
    pub fn new() -> Memory {
        Memory::default()
    }

    /// A fresh buffer of `bytes` bytes, each 0xFF.
    pub fn alloc(&mut self, bytes: usize) -> u64 {
        self.bufs.push(vec![0xFF; bytes]);
        (self.bufs.len() as u64) << PTR_SHIFT
    }

    pub fn upload_f32(&mut self, data: &[f32]) -> u64 {
        let p = self.alloc(data.len() * 4);
        self.write_f32(p, data);
        p
    }

    pub fn upload_f64(&mut self, data: &[f64]) -> u64 {
        let p = self.alloc(data.len() * 8);
        self.write_f64(p, data);
        p
    }

    pub fn upload_i32(&mut self, data: &[i32]) -> u64 {
        let p = self.alloc(data.len() * 4);
        self.write_i32(p, data);
        p
    }

    pub fn upload_i64(&mut self, data: &[i64]) -> u64 {
        let p = self.alloc(data.len() * 8);
        self.write_i64(p, data);
        p
    }

    pub fn write_i32(&mut self, ptr: u64, data: &[i32]) {
        let bytes: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.slice_mut(ptr, bytes.len())
            .expect("write inside the buffer")
            .copy_from_slice(&bytes);
    }

    pub fn write_i64(&mut self, ptr: u64, data: &[i64]) {
        let bytes: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.slice_mut(ptr, bytes.len())
            .expect("write inside the buffer")
            .copy_from_slice(&bytes);
    }

    pub fn read_i32(&self, ptr: u64, n: usize) -> Vec<i32> {
        let s = self.slice(ptr, n * 4).expect("read inside the buffer");
        s.chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    pub fn read_i64(&self, ptr: u64, n: usize) -> Vec<i64> {
        let s = self.slice(ptr, n * 8).expect("read inside the buffer");
        s.chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    pub fn write_f32(&mut self, ptr: u64, data: &[f32]) {
        let bytes: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.slice_mut(ptr, bytes.len())
            .expect("write inside the buffer")
            .copy_from_slice(&bytes);
    }

    pub fn write_f64(&mut self, ptr: u64, data: &[f64]) {
        let bytes: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.slice_mut(ptr, bytes.len())
            .expect("write inside the buffer")
            .copy_from_slice(&bytes);
    }

    pub fn read_f32(&self, ptr: u64, n: usize) -> Vec<f32> {
        let s = self.slice(ptr, n * 4).expect("read inside the buffer");
        s.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    pub fn read_f64(&self, ptr: u64, n: usize) -> Vec<f64> {
        let s = self.slice(ptr, n * 8).expect("read inside the buffer");
        s.chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    /// Copies bytes into memory at `ptr` (bounds-checked).
    pub fn write_bytes(&mut self, ptr: u64, data: &[u8]) -> Result<(), VmError> {
        self.slice_mut(ptr, data.len())?.copy_from_slice(data);
        Ok(())
    }

    /// Copies bytes out of memory at `ptr` (bounds-checked).
    pub fn read_bytes(&self, ptr: u64, out: &mut [u8]) -> Result<(), VmError> {
        out.copy_from_slice(self.slice(ptr, out.len())?);
        Ok(())
    }

    /// Copies `len` bytes between two locations (bounds-checked; overlap is an error, as it is
    /// undefined for a GPU's copy engine).
    pub fn copy(&mut self, dst: u64, src: u64, len: usize) -> Result<(), VmError> {
        let data = self.slice(src, len)?.to_vec();
        let (sb, so) = if len == 0 {
            (0, 0)
        } else {
            self.locate(src, len)?
        };
        if len > 0 {
            let (db, d_off) = self.locate(dst, len)?;
            if db == sb && d_off < so + len && so < d_off + len {
                return err(format!("copy of {len} bytes between overlapping ranges"));
            }
        }
        self.write_bytes(dst, &data)
    }

    /// Frees the buffer `ptr` points to (the start of an allocation): later accesses through
    /// any pointer into it are errors, which is how tests catch use after free.
    pub fn free(&mut self, ptr: u64) -> Result<(), VmError> {
        let id = (ptr >> PTR_SHIFT) as usize;
        if ptr & ((1 << PTR_SHIFT) - 1) != 0 || id == 0 || id > self.bufs.len() {
            return err(format!("free of {ptr:#x}: not the start of a buffer"));
        }
        self.bufs[id - 1] = Vec::new();
        Ok(())
    }

    fn locate(&self, addr: u64, len: usize) -> Result<(usize, usize), VmError> {
        let id = (addr >> PTR_SHIFT) as usize;
        let off = (addr & ((1 << PTR_SHIFT) - 1)) as usize;
        if id == 0 || id > self.bufs.len() {
            return err(format!("global access at {addr:#x}: not a buffer"));
        }
        let b = &self.bufs[id - 1];
        if off + len > b.len() {
            return err(format!(
                "global access out of bounds: bytes {off}..{} of buffer {} ({} bytes)",
                off + len,
                id - 1,
                b.len()
            ));
        }
        Ok((id - 1, off))
    }

    fn slice(&self, addr: u64, len: usize) -> Result<&[u8], VmError> {
        if len == 0 {
            return Ok(&[]);
        }
        let (b, off) = self.locate(addr, len)?;
        Ok(&self.bufs[b][off..off + len])
    }

    fn slice_mut(&mut self, addr: u64, len: usize) -> Result<&mut [u8], VmError> {
        if len == 0 {
            return Ok(&mut []);
        }
        let (b, off) = self.locate(addr, len)?;
        Ok(&mut self.bufs[b][off..off + len])
    }
}

/// A kernel argument.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Arg {
    U32(u32),
    U64(u64),
    F32(f32),
    F64(f64),
}

/// Counters of one or more launches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub instructions: u64,
    pub barriers: u64,
    pub shuffles: u64,
}

/// Stop after this many executed instructions per launch (a hung kernel is an error).
const INSTRUCTION_BUDGET: u64 = 4_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Ready,
    AtBarrier,
    AtShfl,
    Done,
}

struct Thread {
    pc: usize,
    regs: Vec<u64>,
    state: State,
    tid: [u32; 3],
    linear: u32,
}

/// Shared-memory race bookkeeping for one 4-byte word.
#[derive(Clone, Copy)]
struct Word {
    write_phase: u32,
    writer: u32,
    read_phase: u32,
    /// `MANY` when several threads read it in `read_phase`.
    reader: u32,
}

const MANY: u32 = u32::MAX;

struct Exec<'k> {
    code: Vec<(Option<Guard>, &'k Inst)>,
    label_pc: Vec<usize>,
    reg_base: [usize; 5],
    params: Vec<u64>,
    param_types: Vec<Type>,
    shared_offs: Vec<u32>,
    shared: Vec<u8>,
    words: Vec<Word>,
    phase: u32,
    block: [u32; 3],
    grid: [u32; 3],
    ctaid: [u32; 3],
    stats: Stats,
}

/// Runs `k` over a grid of blocks.
pub fn launch(
    k: &Kernel,
    grid: [u32; 3],
    block: [u32; 3],
    args: &[Arg],
    mem: &mut Memory,
) -> Result<Stats, VmError> {
    k.check().map_err(|e| VmError(format!("{}: {e}", k.name)))?;
    if args.len() != k.params.len() {
        return err(format!(
            "{}: {} arguments for {} parameters",
            k.name,
            args.len(),
            k.params.len()
        ));
    }
    let mut params = Vec::new();
    for (i, (a, (name, ty))) in args.iter().zip(&k.params).enumerate() {
        let (aty, v) = match a {
            Arg::U32(x) => (Type::U32, *x as u64),
            Arg::U64(x) => (Type::U64, *x),
            Arg::F32(x) => (Type::F32, x.to_bits() as u64),
            Arg::F64(x) => (Type::F64, x.to_bits()),
        };
        if aty != *ty {
            return err(format!(
                "argument {i} ({name}): {a:?} for a {} parameter",
                ty.suffix()
            ));
        }
        params.push(v);
    }
    let threads = block[0] * block[1] * block[2];
    if threads == 0 || threads > 1024 || grid.contains(&0) {
        return err(format!("bad launch: grid {grid:?}, block {block:?}"));
    }
    if block[0] > k.max_threads[0] || threads > k.max_threads.iter().product() {
        return err(format!(
            "block {block:?} exceeds .maxntid {:?}",
            k.max_threads
        ));
    }
    // Labels are positions in the instruction list without labels and comments.
    let mut code = Vec::new();
    let mut label_pc = vec![usize::MAX; k.body.len()];
    for st in &k.body {
        match st {
            Stmt::Label(l) => {
                if label_pc.len() <= l.0 as usize {
                    label_pc.resize(l.0 as usize + 1, usize::MAX);
                }
                label_pc[l.0 as usize] = code.len();
            }
            Stmt::Comment(_) => {}
            Stmt::Inst { guard, inst } => code.push((*guard, inst)),
        }
    }
    let mut reg_base = [0usize; 5];
    let mut nregs = 0usize;
    for c in RegClass::ALL {
        reg_base[c.index()] = nregs;
        nregs += k.reg_counts[c.index()] as usize;
    }
    let (shared_offs, shared_total) = k.shared_layout();
    let mut ex = Exec {
        code,
        label_pc,
        reg_base,
        params,
        param_types: k.params.iter().map(|p| p.1).collect(),
        shared_offs,
        shared: Vec::new(),
        words: Vec::new(),
        phase: 1,
        block,
        grid,
        ctaid: [0; 3],
        stats: Stats::default(),
    };
    for bz in 0..grid[2] {
        for by in 0..grid[1] {
            for bx in 0..grid[0] {
                ex.ctaid = [bx, by, bz];
                ex.shared = vec![0xFF; shared_total as usize];
                ex.words = vec![
                    Word {
                        write_phase: 0,
                        writer: 0,
                        read_phase: 0,
                        reader: 0,
                    };
                    (shared_total as usize).div_ceil(4)
                ];
                ex.run_block(nregs, mem)
                    .map_err(|e| VmError(format!("{} block {:?}: {}", k.name, ex.ctaid, e.0)))?;
            }
        }
    }
    Ok(ex.stats)
}

enum Stop {
    Barrier,
    Shfl,
    Done,
}

impl Exec<'_> {
    fn run_block(&mut self, nregs: usize, mem: &mut Memory) -> Result<(), VmError> {
        let b = self.block;
        let mut threads: Vec<Thread> = Vec::new();
        for z in 0..b[2] {
            for y in 0..b[1] {
                for x in 0..b[0] {
                    threads.push(Thread {
                        pc: 0,
                        regs: vec![0; nregs],
                        state: State::Ready,
                        tid: [x, y, z],
                        linear: threads.len() as u32,
                    });
                }
            }
        }
        let nwarps = threads.len().div_ceil(32);
        loop {
            let mut progress = false;
            for t in threads.iter_mut() {
                if t.state == State::Ready {
                    progress = true;
                    t.state = match self.run_thread(t, mem)? {
                        Stop::Barrier => State::AtBarrier,
                        Stop::Shfl => State::AtShfl,
                        Stop::Done => State::Done,
                    };
                }
            }
            for w in 0..nwarps {
                let lanes =
                    &mut threads[w * 32..((w + 1) * 32).min(b.iter().product::<u32>() as usize)];
                if !lanes.iter().any(|t| t.state == State::AtShfl) {
                    continue;
                }
                let pc = lanes.iter().find(|t| t.state == State::AtShfl).unwrap().pc;
                if lanes.len() == 32 && lanes.iter().all(|t| t.state == State::AtShfl && t.pc == pc)
                {
                    self.shuffle(lanes)?;
                    progress = true;
                } else if lanes
                    .iter()
                    .any(|t| t.state == State::Done || t.state == State::AtBarrier)
                {
                    return err(format!(
                        "warp {w}: shfl.sync at {pc} with lanes that exited or wait at a barrier"
                    ));
                } else if lanes.len() < 32 {
                    return err(format!(
                        "warp {w}: shfl.sync with a full mask in a partial warp"
                    ));
                }
            }
            if progress {
                continue;
            }
            if threads.iter().all(|t| t.state == State::Done) {
                return Ok(());
            }
            if threads.iter().all(|t| t.state == State::AtBarrier) {
                self.phase += 1;
                self.stats.barriers += 1;
                for t in threads.iter_mut() {
                    t.state = State::Ready;
                }
                continue;
            }
            let waiting = threads
                .iter()
                .filter(|t| t.state == State::AtBarrier)
                .count();
            let done = threads.iter().filter(|t| t.state == State::Done).count();
            return err(format!(
                "deadlock: {waiting} threads wait at bar.sync while {done} have exited"
            ));
        }
    }

    fn reg(&self, t: &Thread, r: Reg) -> u64 {
        t.regs[self.reg_base[r.class.index()] + r.n as usize]
    }

    fn set(&self, t: &mut Thread, r: Reg, v: u64) {
        let v = match r.class {
            RegClass::Pred => v & 1,
            RegClass::B32 | RegClass::F32 => v & 0xffff_ffff,
            RegClass::B64 | RegClass::F64 => v,
        };
        t.regs[self.reg_base[r.class.index()] + r.n as usize] = v;
    }

    fn special(&self, t: &Thread, s: Special) -> u64 {
        (match s {
            Special::Tid(a) => t.tid[a.index()],
            Special::Ntid(a) => self.block[a.index()],
            Special::Ctaid(a) => self.ctaid[a.index()],
            Special::Nctaid(a) => self.grid[a.index()],
            Special::LaneId => t.linear % 32,
        }) as u64
    }

    fn operand(&self, t: &Thread, o: &Operand, ty: Type) -> u64 {
        match o {
            Operand::Reg(r) => self.reg(t, *r),
            Operand::Imm(i) => match ty.class().bits() {
                64 => *i as u64,
                1 => (*i != 0) as u64,
                _ => (*i as u64) & 0xffff_ffff,
            },
            Operand::F32(x) => x.to_bits() as u64,
            Operand::F64(x) => x.to_bits(),
            Operand::Special(s) => self.special(t, *s),
            Operand::Shared(id) => self.shared_offs[id.0 as usize] as u64,
        }
    }

    fn shared_at(&self, t: &Thread, base: Base, offset: i32) -> Result<usize, VmError> {
        let b = match base {
            Base::Reg(r) => self.reg(t, r) as i64,
            Base::Shared(id) => self.shared_offs[id.0 as usize] as i64,
            Base::Param(_) => return err("shared access through a parameter"),
        };
        let a = b + offset as i64;
        if a < 0 {
            return err(format!("shared access at negative address {a}"));
        }
        Ok(a as usize)
    }

    /// A global address, which must be aligned to the access size like on the GPU.
    fn global_at(&self, t: &Thread, base: Base, offset: i32, len: usize) -> Result<u64, VmError> {
        let a = match base {
            Base::Reg(r) => self.reg(t, r).wrapping_add(offset as i64 as u64),
            Base::Shared(_) | Base::Param(_) => {
                return err("global access without a register base")
            }
        };
        if a % len as u64 != 0 {
            return err(format!("misaligned global access of {len} bytes at {a:#x}"));
        }
        Ok(a)
    }

    fn shared_access(
        &mut self,
        t: &Thread,
        at: usize,
        len: usize,
        write: bool,
    ) -> Result<(), VmError> {
        if at + len > self.shared.len() || !at.is_multiple_of(len) {
            return err(format!(
                "shared access of {len} bytes at {at} (window of {} bytes)",
                self.shared.len()
            ));
        }
        let me = t.linear;
        for w in (at / 4)..(at + len).div_ceil(4) {
            let word = &mut self.words[w];
            if write {
                if word.write_phase == self.phase && word.writer != me {
                    return err(format!(
                        "shared race: threads {} and {me} write byte {} between barriers",
                        word.writer,
                        w * 4
                    ));
                }
                if word.read_phase == self.phase && word.reader != me {
                    return err(format!("shared race: thread {me} writes byte {} that another thread read since the last barrier", w * 4));
                }
                word.write_phase = self.phase;
                word.writer = me;
            } else {
                if word.write_phase == 0 {
                    return err(format!(
                        "thread {me} reads shared byte {} that was never written",
                        w * 4
                    ));
                }
                if word.write_phase == self.phase && word.writer != me {
                    return err(format!(
                        "shared race: thread {me} reads byte {} written by thread {} since the last barrier",
                        w * 4,
                        word.writer
                    ));
                }
                if word.read_phase == self.phase {
                    if word.reader != me {
                        word.reader = MANY;
                    }
                } else {
                    word.read_phase = self.phase;
                    word.reader = me;
                }
            }
        }
        Ok(())
    }

    fn load(
        &mut self,
        t: &Thread,
        space: Space,
        ty: Type,
        base: Base,
        offset: i32,
        mem: &Memory,
    ) -> Result<u64, VmError> {
        let len = ty.bytes() as usize;
        let bytes: Vec<u8> = match space {
            Space::Param => {
                let Base::Param(p) = base else {
                    return err("ld.param without a parameter");
                };
                if offset != 0 || self.param_types[p.0 as usize] != ty {
                    return err("ld.param of a different type or offset");
                }
                return Ok(self.params[p.0 as usize]);
            }
            Space::Global => {
                let a = self.global_at(t, base, offset, len)?;
                mem.slice(a, len)?.to_vec()
            }
            Space::Shared => {
                let a = self.shared_at(t, base, offset)?;
                self.shared_access(t, a, len, false)?;
                self.shared[a..a + len].to_vec()
            }
        };
        let mut v = 0u64;
        for (i, b) in bytes.iter().enumerate() {
            v |= (*b as u64) << (8 * i);
        }
        Ok(v)
    }

    #[allow(clippy::too_many_arguments)]
    fn store(
        &mut self,
        t: &Thread,
        space: Space,
        ty: Type,
        base: Base,
        offset: i32,
        v: u64,
        mem: &mut Memory,
    ) -> Result<(), VmError> {
        let len = ty.bytes() as usize;
        let bytes = &v.to_le_bytes()[..len];
        match space {
            Space::Param => err("st.param"),
            Space::Global => {
                let a = self.global_at(t, base, offset, len)?;
                mem.slice_mut(a, len)?.copy_from_slice(bytes);
                Ok(())
            }
            Space::Shared => {
                let a = self.shared_at(t, base, offset)?;
                self.shared_access(t, a, len, true)?;
                self.shared[a..a + len].copy_from_slice(bytes);
                Ok(())
            }
        }
    }

    fn run_thread(&mut self, t: &mut Thread, mem: &mut Memory) -> Result<Stop, VmError> {
        loop {
            let Some(&(guard, inst)) = self.code.get(t.pc) else {
                return Ok(Stop::Done);
            };
            self.stats.instructions += 1;
            if self.stats.instructions > INSTRUCTION_BUDGET {
                return err("instruction budget exhausted (a kernel that does not end?)");
            }
            if let Some(g) = guard {
                let p = self.reg(t, g.pred) != 0;
                if p == g.negate {
                    t.pc += 1;
                    continue;
                }
            }
            match inst {
                Inst::Ld {
                    space,
                    ty,
                    dst,
                    addr,
                } => {
                    let v = self.load(t, *space, *ty, addr.base, addr.offset, mem)?;
                    self.set(t, *dst, v);
                }
                Inst::St {
                    space,
                    ty,
                    addr,
                    src,
                } => {
                    let v = self.operand(t, src, *ty);
                    self.store(t, *space, *ty, addr.base, addr.offset, v, mem)?;
                }
                Inst::CvtaToGlobal { dst, src } => {
                    let v = self.reg(t, *src);
                    self.set(t, *dst, v);
                }
                Inst::Mov { ty, dst, src } => {
                    let v = self.operand(t, src, *ty);
                    self.set(t, *dst, v);
                }
                Inst::Cvt {
                    round,
                    dst_ty,
                    src_ty,
                    dst,
                    src,
                } => {
                    let v = cvt(*round, *dst_ty, *src_ty, self.reg(t, *src));
                    self.set(t, *dst, v);
                }
                Inst::Bin { op, ty, dst, a, b } => {
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
                    let x = self.operand(t, a, *ty);
                    let y = self.operand(t, b, bty);
                    let v = bin(*op, *ty, x, y)?;
                    self.set(t, *dst, v);
                }
                Inst::Un { op, ty, dst, a } => {
                    let x = self.operand(t, a, *ty);
                    self.set(t, *dst, un(*op, *ty, x));
                }
                Inst::Fma { ty, dst, a, b, c } => {
                    let (x, y, z) = (
                        self.operand(t, a, *ty),
                        self.operand(t, b, *ty),
                        self.operand(t, c, *ty),
                    );
                    let v = match ty {
                        Type::F32 => f32b(f32v(x).mul_add(f32v(y), f32v(z))),
                        Type::F64 => f64v(x).mul_add(f64v(y), f64v(z)).to_bits(),
                        Type::Pred
                        | Type::B32
                        | Type::B64
                        | Type::U32
                        | Type::U64
                        | Type::S32
                        | Type::S64 => x.wrapping_mul(y).wrapping_add(z),
                    };
                    self.set(t, *dst, v);
                }
                Inst::MadWide { ty, dst, a, b, c } => {
                    let (x, y) = (self.operand(t, a, *ty), self.operand(t, b, *ty));
                    let z = self.operand(t, c, Type::U64);
                    let p = if *ty == Type::S32 {
                        ((x as u32 as i32 as i64) * (y as u32 as i32 as i64)) as u64
                    } else {
                        x * y
                    };
                    self.set(t, *dst, p.wrapping_add(z));
                }
                Inst::Setp { cmp, ty, dst, a, b } => {
                    let (x, y) = (self.operand(t, a, *ty), self.operand(t, b, *ty));
                    self.set(t, *dst, setp(*cmp, *ty, x, y) as u64);
                }
                Inst::Selp { ty, dst, a, b, p } => {
                    let v = if self.reg(t, *p) != 0 {
                        self.operand(t, a, *ty)
                    } else {
                        self.operand(t, b, *ty)
                    };
                    self.set(t, *dst, v);
                }
                Inst::Bra { target } => {
                    t.pc = self.label_pc[target.0 as usize];
                    continue;
                }
                Inst::BarSync => {
                    t.pc += 1;
                    return Ok(Stop::Barrier);
                }
                Inst::Shfl { .. } => return Ok(Stop::Shfl),
                Inst::Pack64 { dst, lo, hi } => {
                    let v = (self.reg(t, *lo) & 0xffff_ffff) | (self.reg(t, *hi) << 32);
                    self.set(t, *dst, v);
                }
                Inst::Unpack64 { lo, hi, src } => {
                    let v = self.reg(t, *src);
                    self.set(t, *lo, v & 0xffff_ffff);
                    self.set(t, *hi, v >> 32);
                }
                Inst::Ret => return Ok(Stop::Done),
            }
            t.pc += 1;
        }
    }

    /// Executes the `shfl.sync` all 32 lanes wait at.
    fn shuffle(&mut self, lanes: &mut [Thread]) -> Result<(), VmError> {
        let (_, inst) = self.code[lanes[0].pc];
        let Inst::Shfl {
            mode,
            dst,
            src,
            lane,
            clamp,
            mask,
        } = inst
        else {
            return err("shuffle state at a non-shfl instruction");
        };
        if *mask != u32::MAX {
            return err("shfl.sync with a partial mask");
        }
        self.stats.shuffles += 1;
        self.stats.instructions += 32;
        let vals: Vec<u64> = lanes.iter().map(|t| self.reg(t, *src)).collect();
        let c = *clamp;
        let seg_mask = (c >> 8) & 0x1f;
        let cval = c & 0x1f;
        for (l, t) in lanes.iter_mut().enumerate() {
            let l = l as u32;
            let b = (self.operand(t, lane, Type::U32) & 0x1f) as u32;
            let max_lane = (l & seg_mask) | (cval & !seg_mask);
            let j = match mode {
                ShflMode::Bfly => l ^ b,
                ShflMode::Down => l + b,
            };
            let j = if j <= max_lane { j } else { l };
            let v = vals[j as usize];
            self.set(t, *dst, v);
            t.pc += 1;
            t.state = State::Ready;
        }
        Ok(())
    }
}

fn f32v(x: u64) -> f32 {
    f32::from_bits(x as u32)
}

fn f32b(x: f32) -> u64 {
    x.to_bits() as u64
}

fn f64v(x: u64) -> f64 {
    f64::from_bits(x)
}

/// An integer value of `ty`, sign-extended when the type is signed.
fn int(ty: Type, x: u64) -> i128 {
    match ty {
        Type::S32 => x as u32 as i32 as i128,
        Type::S64 => x as i64 as i128,
        Type::U32 | Type::B32 => (x & 0xffff_ffff) as i128,
        Type::U64 | Type::B64 => x as i128,
        Type::Pred => (x & 1) as i128,
        Type::F32 | Type::F64 => unreachable!("int() of a float type"),
    }
}

fn wrap(ty: Type, v: i128) -> u64 {
    match ty.class().bits() {
        64 => v as u64,
        1 => (v & 1) as u64,
        _ => (v as u64) & 0xffff_ffff,
    }
}

/// PTX `min`/`max` on floats: NaN operands are ignored (NaN only when both are), and -0 < +0.
fn fminmax(max: bool, a: f64, b: f64) -> f64 {
    if a.is_nan() {
        return b;
    }
    if b.is_nan() {
        return a;
    }
    if a == b {
        // Differs only for signed zeros.
        return if max == (a.is_sign_negative() && !b.is_sign_negative()) {
            b
        } else {
            a
        };
    }
    if (a > b) == max {
        a
    } else {
        b
    }
}

fn bin(op: BinOp, ty: Type, x: u64, y: u64) -> Result<u64, VmError> {
    match ty {
        Type::F32 => {
            let (a, b) = (f32v(x), f32v(y));
            Ok(f32b(match op {
                BinOp::Add => a + b,
                BinOp::Sub => a - b,
                BinOp::Mul => a * b,
                BinOp::Div => a / b,
                BinOp::Min => fminmax(false, a as f64, b as f64) as f32,
                BinOp::Max => fminmax(true, a as f64, b as f64) as f32,
                BinOp::MulWide
                | BinOp::Rem
                | BinOp::And
                | BinOp::Or
                | BinOp::Xor
                | BinOp::Shl
                | BinOp::Shr => return err("integer op on f32"),
            }))
        }
        Type::F64 => {
            let (a, b) = (f64v(x), f64v(y));
            Ok(match op {
                BinOp::Add => a + b,
                BinOp::Sub => a - b,
                BinOp::Mul => a * b,
                BinOp::Div => a / b,
                BinOp::Min => fminmax(false, a, b),
                BinOp::Max => fminmax(true, a, b),
                BinOp::MulWide
                | BinOp::Rem
                | BinOp::And
                | BinOp::Or
                | BinOp::Xor
                | BinOp::Shl
                | BinOp::Shr => return err("integer op on f64"),
            }
            .to_bits())
        }
        Type::Pred | Type::B32 | Type::B64 | Type::U32 | Type::U64 | Type::S32 | Type::S64 => {
            let bits = ty.class().bits() as u64;
            let (a, b) = (int(ty, x), int(ty, y));
            let v = match op {
                BinOp::Add => a + b,
                BinOp::Sub => a - b,
                BinOp::Mul => a.wrapping_mul(b),
                BinOp::MulWide => return Ok((a * b) as u64),
                BinOp::Div | BinOp::Rem => {
                    if b == 0 {
                        return err("integer division by zero");
                    }
                    if op == BinOp::Div {
                        a / b
                    } else {
                        a % b
                    }
                }
                BinOp::Min => a.min(b),
                BinOp::Max => a.max(b),
                BinOp::And => a & b,
                BinOp::Or => a | b,
                BinOp::Xor => a ^ b,
                // Shift amounts beyond the width clamp to the width.
                BinOp::Shl => {
                    let s = (y & 0xffff_ffff).min(bits);
                    if s >= bits {
                        0
                    } else {
                        ((x as u128) << s) as i128
                    }
                }
                BinOp::Shr => {
                    let s = (y & 0xffff_ffff).min(bits) as u32;
                    if ty.is_signed() {
                        if s as u64 >= bits {
                            if a < 0 {
                                -1
                            } else {
                                0
                            }
                        } else {
                            a >> s
                        }
                    } else if s as u64 >= bits {
                        0
                    } else {
                        a >> s
                    }
                }
            };
            Ok(wrap(ty, v))
        }
    }
}

fn un(op: UnOp, ty: Type, x: u64) -> u64 {
    match ty {
        Type::F32 => {
            let a = f32v(x);
            f32b(match op {
                UnOp::Neg => -a,
                UnOp::Abs => a.abs(),
                UnOp::Rcp => 1.0 / a,
                UnOp::Sqrt => a.sqrt(),
                // The hardware approximates; here they are correctly rounded from f64.
                UnOp::Ex2 => (a as f64).exp2() as f32,
                UnOp::Lg2 => (a as f64).log2() as f32,
                UnOp::Not => f32::from_bits(!a.to_bits()),
            })
        }
        Type::F64 => {
            let a = f64v(x);
            match op {
                UnOp::Neg => -a,
                UnOp::Abs => a.abs(),
                UnOp::Rcp => 1.0 / a,
                UnOp::Sqrt => a.sqrt(),
                UnOp::Ex2 => a.exp2(),
                UnOp::Lg2 => a.log2(),
                UnOp::Not => f64::from_bits(!a.to_bits()),
            }
            .to_bits()
        }
        Type::Pred | Type::B32 | Type::B64 | Type::U32 | Type::U64 | Type::S32 | Type::S64 => {
            let a = int(ty, x);
            let v = match op {
                UnOp::Neg => -a,
                UnOp::Abs => a.abs(),
                UnOp::Not => !a,
                // Rejected by the checker; never reached.
                UnOp::Rcp | UnOp::Sqrt | UnOp::Ex2 | UnOp::Lg2 => a,
            };
            wrap(ty, v)
        }
    }
}

fn float_of(ty: Type, x: u64) -> f64 {
    match ty {
        Type::F32 => f32v(x) as f64,
        Type::F64 => f64v(x),
        Type::Pred | Type::B32 | Type::B64 | Type::U32 | Type::U64 | Type::S32 | Type::S64 => {
            int(ty, x) as f64
        }
    }
}

fn setp(cmp: Cmp, ty: Type, x: u64, y: u64) -> bool {
    if ty.is_float() {
        let (a, b) = (float_of(ty, x), float_of(ty, y));
        let nan = a.is_nan() || b.is_nan();
        match cmp {
            Cmp::Eq => a == b,
            Cmp::Ne => !nan && a != b,
            Cmp::Lt => a < b,
            Cmp::Le => a <= b,
            Cmp::Gt => a > b,
            Cmp::Ge => a >= b,
            Cmp::Equ => nan || a == b,
            Cmp::Neu => nan || a != b,
            Cmp::Ltu => nan || a < b,
            Cmp::Leu => nan || a <= b,
            Cmp::Gtu => nan || a > b,
            Cmp::Geu => nan || a >= b,
            Cmp::Num => !nan,
            Cmp::Nan => nan,
        }
    } else {
        let (a, b) = (int(ty, x), int(ty, y));
        match cmp {
            Cmp::Eq | Cmp::Equ => a == b,
            Cmp::Ne | Cmp::Neu => a != b,
            Cmp::Lt | Cmp::Ltu => a < b,
            Cmp::Le | Cmp::Leu => a <= b,
            Cmp::Gt | Cmp::Gtu => a > b,
            Cmp::Ge | Cmp::Geu => a >= b,
            Cmp::Num => true,
            Cmp::Nan => false,
        }
    }
}

fn round_int(round: CvtRound, v: f64) -> f64 {
    match round {
        CvtRound::Rni => v.round_ties_even(),
        CvtRound::Rzi => v.trunc(),
        CvtRound::None | CvtRound::Rn => v,
    }
}

fn cvt(round: CvtRound, dst: Type, src: Type, x: u64) -> u64 {
    /// The source value, exactly.
    enum Src {
        Int(i128),
        Float(f64),
    }
    let v = match src {
        Type::F32 => Src::Float(f32v(x) as f64),
        Type::F64 => Src::Float(f64v(x)),
        Type::Pred | Type::B32 | Type::B64 | Type::U32 | Type::U64 | Type::S32 | Type::S64 => {
            Src::Int(int(src, x))
        }
    };
    match (dst, v) {
        // One rounding: integers and f64 values round straight to f32.
        (Type::F32, Src::Int(i)) => f32b(i as f32),
        (Type::F32, Src::Float(f)) => f32b(round_int(round, f) as f32),
        (Type::F64, Src::Int(i)) => (i as f64).to_bits(),
        (Type::F64, Src::Float(f)) => round_int(round, f).to_bits(),
        (
            Type::Pred | Type::B32 | Type::B64 | Type::U32 | Type::U64 | Type::S32 | Type::S64,
            Src::Int(i),
        ) => wrap(dst, i),
        // Float to integer saturates and maps NaN to 0, like PTX (and Rust's `as`).
        (Type::S32, Src::Float(f)) => round_int(round, f) as i32 as u32 as u64,
        (Type::S64, Src::Float(f)) => round_int(round, f) as i64 as u64,
        (Type::U32 | Type::B32, Src::Float(f)) => round_int(round, f) as u32 as u64,
        (Type::U64 | Type::B64, Src::Float(f)) => round_int(round, f) as u64,
        (Type::Pred, Src::Float(f)) => (f != 0.0) as u64,
    }
}

/// A value bound to a parameter role by [`run`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    Ptr(u64),
    U32(u32),
    F32(f32),
    F64(f64),
}

/// Runs a program the way a runtime would, from its metadata alone: allocates its scratch
/// regions, binds constants ([`Role::Const`]) itself and every other parameter by role through
/// `bind`, evaluates the grid formulas with the dims `bind(Role::Dim(id))` gives, and launches
/// each kernel in order.
pub fn run(
    program: &Program,
    mem: &mut Memory,
    bind: &dyn Fn(Role) -> Option<Value>,
) -> Result<Stats, VmError> {
    // Sizes need every symbolic dim; a missing or mistyped one is reported after evaluation.
    let unbound = std::cell::Cell::new(None);
    let dim = |id: u32| -> u64 {
        match bind(Role::Dim(id)) {
            Some(Value::U32(x)) => x as u64,
            Some(Value::Ptr(_) | Value::F32(_) | Value::F64(_)) | None => {
                unbound.set(Some(id));
                0
            }
        }
    };
    let scratch: Vec<u64> = program
        .scratch
        .iter()
        .map(|s| mem.alloc(s.bytes.eval(&dim) as usize))
        .collect();
    let mut stats = Stats::default();
    for l in &program.launches {
        let m = &l.meta;
        if m.name != l.kernel.name
            || m.shared_bytes != l.kernel.shared_bytes()
            || m.block != l.kernel.max_threads
        {
            return err(format!("{}: metadata disagrees with the kernel", m.name));
        }
        let mut args = Vec::new();
        for p in &m.params {
            let v = match (p.role, p.ty) {
                (Role::Scratch(i), _) => Some(Value::Ptr(scratch[i])),
                (Role::Const(bits), ParamTy::F32) => Some(Value::F32(f64::from_bits(bits) as f32)),
                (Role::Const(bits), ParamTy::F64) => Some(Value::F64(f64::from_bits(bits))),
                (r, _) => bind(r),
            };
            let a = match (p.ty, v) {
                (ParamTy::Ptr, Some(Value::Ptr(x))) => Arg::U64(x),
                (ParamTy::U32, Some(Value::U32(x))) => Arg::U32(x),
                (ParamTy::F32, Some(Value::F32(x))) => Arg::F32(x),
                (ParamTy::F64, Some(Value::F64(x))) => Arg::F64(x),
                (ty, v) => {
                    return err(format!(
                        "{}: parameter {} ({ty:?}, {:?}) bound to {v:?}",
                        m.name, p.name, p.role
                    ))
                }
            };
            args.push(a);
        }
        let grid = [0, 1, 2].map(|i| m.grid[i].eval(&dim) as u32);
        if let Some(id) = unbound.get() {
            return err(format!("{}: dim d{id} is not bound to a u32", m.name));
        }
        let s = launch(&l.kernel, grid, m.block, &args, mem)?;
        stats.instructions += s.instructions;
        stats.barriers += s.barriers;
        stats.shuffles += s.shuffles;
    }
    Ok(stats)
}
