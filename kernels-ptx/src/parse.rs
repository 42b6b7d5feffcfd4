//! Reads PTX printed by [`Module::to_ptx`] back into typed kernels.
//!
//! A runtime that keeps only a module's text (a `&'static str` emitted next to its launch
//! metadata) parses it here and runs the kernels on [`crate::vm`]. The grammar is the printer of
//! [`crate::ptx`] inverted, byte for byte: one fixed layout per line, single spaces, `, ` between
//! operands, decimal numbers without sign or leading zeros where the printer writes none, float
//! immediates as `0f`/`0d` and uppercase hex digits. The instruction table is built from
//! [`Inst::mnemonic`] itself, so the two cannot drift apart. Anything else (hand-written PTX,
//! other whitespace, non-canonical numbers, unknown opcodes) is a [`ParseError`] that names the
//! line, what was expected and what was found. The parser never panics, whatever the input.
//!
//! Beyond syntax, the parser refuses what would make a kernel meaningless or unsafe to run:
//! registers past their `.reg` declaration, branches to labels never placed, labels placed
//! twice, names declared twice, shared arrays whose layout overflows 32 bits, alignments that
//! are not powers of two. Which register class an instruction needs is left to
//! [`Kernel::check`], as for built kernels.
//!
//! Whenever parsing succeeds, printing the result gives back the input exactly (the tests check
//! this on the catalog and on corrupted text). Two kinds of kernels cannot be printed so that
//! they come back: a comment containing a newline, and a shared array of 0 bytes (printed with
//! 1 byte, as PTX has no empty arrays); the crate's builders make neither.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use crate::ptx::{
    Address, Axis3, Base, BinOp, Cmp, CvtRound, Guard, Header, Inst, Kernel, Label, Module,
    Operand, ParamId, Reg, RegClass, SharedDecl, SharedId, ShflMode, Space, Special, Stmt, Type,
    UnOp,
};

/// Why a text is not a module our writer printed: the 1-based line, and a message naming what
/// was expected and what was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for ParseError {}

/// Parses a module printed by [`Module::to_ptx`] back into its kernels, in order.
pub fn parse_module(text: &str) -> std::result::Result<Vec<Kernel>, ParseError> {
    parse_full_module(text).map(|m| m.kernels)
}

/// Like [`parse_module`], keeping the header too, so that the module prints back identically.
pub fn parse_full_module(text: &str) -> std::result::Result<Module, ParseError> {
    let mut lines = Lines {
        rest: text,
        number: 0,
    };
    let header = header(&mut lines)?;
    let mut kernels = Vec::new();
    while !lines.at_end() {
        // The printer puts one empty line before each entry.
        lines.next("an empty line")?.end_as("an empty line")?;
        kernels.push(kernel(&mut lines)?);
    }
    Ok(Module { header, kernels })
}

/// What every step of the parser returns.
type Result<T> = std::result::Result<T, ParseError>;

// ---------------------------------------------------------------------------------------------
// Lines and a cursor over one line.

/// The input, consumed line by line; every line the printer writes ends with `\n`.
struct Lines<'a> {
    rest: &'a str,
    number: usize,
}

impl<'a> Lines<'a> {
    fn at_end(&self) -> bool {
        self.rest.is_empty()
    }

    /// The next line without its newline, without consuming it.
    fn peek(&self) -> &'a str {
        self.rest
            .split_once('\n')
            .map_or(self.rest, |(line, _)| line)
    }

    /// Consumes the next line; `expected` names what should be there if the input has ended.
    fn next(&mut self, expected: &str) -> Result<Cursor<'a>> {
        if self.rest.is_empty() {
            return Err(ParseError {
                line: self.number + 1,
                message: format!("expected {expected}, found end of input"),
            });
        }
        self.number += 1;
        let (text, terminated, rest) = match self.rest.split_once('\n') {
            Some((text, rest)) => (text, true, rest),
            None => (self.rest, false, ""),
        };
        self.rest = rest;
        Ok(Cursor {
            text,
            pos: 0,
            line: self.number,
            terminated,
        })
    }
}

/// A position in one line. It only ever advances over ASCII bytes or whole matched strings, so
/// it always sits on a character boundary.
struct Cursor<'a> {
    text: &'a str,
    pos: usize,
    line: usize,
    /// Whether the line ended with `\n` (only the last line of a truncated input does not).
    terminated: bool,
}

impl<'a> Cursor<'a> {
    fn rest(&self) -> &'a str {
        self.text.get(self.pos..).unwrap_or("")
    }

    /// The text from `start` to the cursor.
    fn since(&self, start: usize) -> &'a str {
        self.text.get(start..self.pos).unwrap_or("")
    }

    fn peek_byte(&self) -> Option<u8> {
        self.rest().bytes().next()
    }

    fn error(&self, expected: impl fmt::Display) -> ParseError {
        self.error_at(self.pos, expected)
    }

    /// An error about the token at `start` (an earlier position, once it turned out wrong).
    fn error_at(&self, start: usize, expected: impl fmt::Display) -> ParseError {
        let found = found(self.text.get(start..).unwrap_or(""));
        ParseError {
            line: self.line,
            message: format!("expected {expected}, found {found}"),
        }
    }

    fn eat(&mut self, literal: &str) -> bool {
        let hit = self.rest().starts_with(literal);
        if hit {
            self.pos += literal.len();
        }
        hit
    }

    fn expect(&mut self, literal: &str) -> Result<()> {
        if self.eat(literal) {
            Ok(())
        } else {
            Err(self.error(format_args!("`{}`", literal.escape_debug())))
        }
    }

    /// Advances over the longest run of bytes `accept` takes; `accept` must refuse non-ASCII.
    fn take_while(&mut self, accept: impl Fn(u8) -> bool) -> &'a str {
        let start = self.pos;
        self.pos += self.rest().bytes().take_while(|&b| accept(b)).count();
        self.since(start)
    }

    /// The line must end here, with a newline.
    fn end(&self) -> Result<()> {
        self.end_as("end of line")
    }

    /// Like [`Cursor::end`], naming the expected line when this one has more text.
    fn end_as(&self, expected: &str) -> Result<()> {
        if !self.rest().is_empty() {
            return Err(self.error(expected));
        }
        if !self.terminated {
            return Err(ParseError {
                line: self.line,
                message: "expected a newline, found end of input".into(),
            });
        }
        Ok(())
    }

    /// An unsigned decimal as Rust prints it: digits, no sign, no leading zeros.
    fn unsigned<T: FromStr>(&mut self, what: &str) -> Result<T> {
        let start = self.pos;
        let digits = self.take_while(|b| b.is_ascii_digit());
        if !canonical_digits(digits) {
            return Err(self.error_at(start, what));
        }
        digits.parse().map_err(|_| self.error_at(start, what))
    }

    /// A signed decimal as Rust prints it: an optional `-`, no leading zeros, no `-0`.
    fn signed<T: FromStr>(&mut self, what: &str) -> Result<T> {
        let start = self.pos;
        let negative = self.eat("-");
        let digits = self.take_while(|b| b.is_ascii_digit());
        if !canonical_digits(digits) || (negative && digits == "0") {
            return Err(self.error_at(start, what));
        }
        self.since(start)
            .parse()
            .map_err(|_| self.error_at(start, what))
    }

    /// A name as PTX spells identifiers, minus the `%` start our registers use.
    fn ident(&mut self, what: &str) -> Result<&'a str> {
        match self.peek_byte() {
            Some(b) if b.is_ascii_alphabetic() || b == b'_' || b == b'$' => {
                Ok(self.take_while(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$'))
            }
            _ => Err(self.error(what)),
        }
    }

    /// A type suffix such as `.u32`.
    fn ty(&mut self) -> Result<Type> {
        let start = self.pos;
        let word = self.take_while(|b| b == b'.' || b.is_ascii_alphanumeric());
        TYPES
            .into_iter()
            .find(|t| t.suffix() == word)
            .ok_or_else(|| self.error_at(start, "a type (`.u32`, `.f32`, ...)"))
    }

    /// `, `, the printer's operand separator.
    fn comma(&mut self) -> Result<()> {
        self.expect(", ")
    }
}

/// Whether `digits` is a non-empty decimal without leading zeros.
fn canonical_digits(digits: &str) -> bool {
    !digits.is_empty() && (digits == "0" || !digits.starts_with('0'))
}

/// Describes the token at the start of `rest` for an error message.
fn found(rest: &str) -> String {
    let Some(c) = rest.chars().next() else {
        return "end of line".into();
    };
    let word_byte =
        |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'$' | b'%' | b'.' | b'-');
    let len = if c.is_ascii() && word_byte(c as u8) {
        rest.bytes().take_while(|&b| word_byte(b)).count().min(40)
    } else {
        c.len_utf8()
    };
    format!("`{}`", rest.get(..len).unwrap_or("").escape_debug())
}

// ---------------------------------------------------------------------------------------------
// The module header and the declarations of a kernel.

/// The comment banner, `.version`, `.target` and `.address_size`.
fn header(lines: &mut Lines) -> Result<Header> {
    for literal in ["//", "// Generated by tensor-fn-kernels", "//"] {
        let mut cur = lines.next(&format!("`{literal}`"))?;
        cur.expect(literal)?;
        cur.end()?;
    }
    lines.next("an empty line")?.end_as("an empty line")?;

    let mut cur = lines.next("`.version`")?;
    cur.expect(".version ")?;
    let start = cur.pos;
    let major = cur.unsigned("a version number")?;
    cur.expect(".")?;
    let minor = cur.unsigned("a version number")?;
    // The target and address size are checked below; these are values `new` accepts.
    Header::new((major, minor), 80, 64)
        .map_err(|e| cur.error_at(start, format_args!("a version the writer emits ({e})")))?;
    cur.end()?;

    let mut cur = lines.next("`.target`")?;
    cur.expect(".target sm_")?;
    let target = cur.unsigned("an SM version")?;
    cur.end()?;

    let mut cur = lines.next("`.address_size`")?;
    cur.expect(".address_size ")?;
    let start = cur.pos;
    let address_size = cur.unsigned("an address size")?;
    let header = Header::new((major, minor), target, address_size).map_err(|e| {
        cur.error_at(
            start,
            format_args!("an address size the writer emits ({e})"),
        )
    })?;
    cur.end()?;
    Ok(header)
}

/// What an address or operand may name: parameters and shared arrays, which share one
/// namespace (PTX refuses a name declared twice in one scope).
type Names<'a> = HashMap<&'a str, Base>;

/// One `.entry`, from its first line to its closing `}`.
fn kernel<'a>(lines: &mut Lines<'a>) -> Result<Kernel> {
    let mut cur = lines.next("`.visible .entry`")?;
    cur.expect(".visible .entry ")?;
    let name = cur.ident("a kernel name")?.to_string();
    cur.expect("(")?;
    cur.end()?;

    let mut names = Names::new();
    let params = params(lines, &mut names)?;
    let max_threads = maxntid(lines)?;
    let mut cur = lines.next("`{`")?;
    cur.expect("{")?;
    cur.end()?;
    let reg_counts = reg_decls(lines)?;
    let shared = shared_decls(lines, &mut names)?;
    let scope = Scope {
        counts: reg_counts,
        names,
    };
    let body = body(lines, &scope)?;
    Ok(Kernel {
        name,
        params,
        shared,
        reg_counts,
        max_threads,
        body,
    })
}

/// Declares `name` (at `start` of `cur`'s line) unless it is taken.
fn declare<'a>(
    names: &mut Names<'a>,
    cur: &Cursor,
    start: usize,
    name: &'a str,
    base: Base,
) -> Result<()> {
    if names.insert(name, base).is_some() {
        return Err(cur.error_at(start, "a name not declared before in this kernel"));
    }
    Ok(())
}

/// A count as a `u32` id, refusing (absurdly) many declarations instead of wrapping.
fn id_of(cur: &Cursor, len: usize) -> Result<u32> {
    u32::try_from(len).map_err(|_| cur.error("fewer than 2^32 declarations"))
}

/// The parameter lines up to and including `)`.
fn params<'a>(lines: &mut Lines<'a>, names: &mut Names<'a>) -> Result<Vec<(String, Type)>> {
    let mut params = Vec::new();
    let mut cur = lines.next("a parameter or `)`")?;
    if cur.rest() == ")" {
        cur.expect(")")?;
        cur.end()?;
        return Ok(params);
    }
    loop {
        if !cur.eat("\t.param ") {
            let what = if params.is_empty() {
                "a parameter or `)`"
            } else {
                "a parameter"
            };
            return Err(cur.error(what));
        }
        let ty = cur.ty()?;
        cur.expect(" ")?;
        let start = cur.pos;
        let name = cur.ident("a parameter name")?;
        declare(
            names,
            &cur,
            start,
            name,
            Base::Param(ParamId(id_of(&cur, params.len())?)),
        )?;
        params.push((name.to_string(), ty));
        let more = cur.eat(",");
        cur.end_as("`,` or end of line")?;
        cur = if more {
            lines.next("a parameter")?
        } else {
            let mut close = lines.next("`)`")?;
            close.expect(")")?;
            close.end()?;
            return Ok(params);
        };
    }
}

/// `.maxntid x, y, z`.
fn maxntid(lines: &mut Lines) -> Result<[u32; 3]> {
    let mut cur = lines.next("`.maxntid`")?;
    cur.expect(".maxntid ")?;
    let x = cur.unsigned("a block size")?;
    cur.comma()?;
    let y = cur.unsigned("a block size")?;
    cur.comma()?;
    let z = cur.unsigned("a block size")?;
    cur.end()?;
    Ok([x, y, z])
}

/// The `.reg` type of each class (the printer's `decl_type`, which `ptx` keeps private).
fn decl_type(class: RegClass) -> &'static str {
    match class {
        RegClass::Pred => ".pred",
        RegClass::B32 => ".b32",
        RegClass::B64 => ".b64",
        RegClass::F32 => ".f32",
        RegClass::F64 => ".f64",
    }
}

/// The `.reg` lines: classes in [`RegClass::ALL`] order, each at most once, counts above 0
/// (the printer leaves out classes without registers).
fn reg_decls(lines: &mut Lines) -> Result<[u32; 5]> {
    let mut counts = [0; 5];
    let mut next_class = 0;
    while lines.peek().starts_with("\t.reg ") {
        let mut cur = lines.next("`.reg`")?;
        cur.expect("\t.reg ")?;
        let start = cur.pos;
        let word = cur.take_while(|b| b == b'.' || b.is_ascii_alphanumeric());
        let Some(index) = (next_class..RegClass::ALL.len())
            .find(|&i| RegClass::ALL.get(i).is_some_and(|c| decl_type(*c) == word))
        else {
            return Err(cur.error_at(
                start,
                "a register class not declared yet, in the order `.pred`, `.b32`, `.b64`, `.f32`, `.f64`",
            ));
        };
        let class = RegClass::ALL[index];
        cur.expect(" ")?;
        cur.expect(class.prefix())?;
        cur.expect("<")?;
        let start = cur.pos;
        let n: u32 = cur.unsigned("a register count")?;
        if n == 0 {
            return Err(cur.error_at(start, "a nonzero register count"));
        }
        cur.expect(">;")?;
        cur.end()?;
        counts[index] = n;
        next_class = index + 1;
    }
    Ok(counts)
}

/// The `.shared` lines. The layout of all arrays must fit the 32-bit shared window, so that
/// [`Kernel::shared_layout`] cannot overflow.
fn shared_decls<'a>(lines: &mut Lines<'a>, names: &mut Names<'a>) -> Result<Vec<SharedDecl>> {
    let mut shared = Vec::new();
    let mut end: u64 = 0;
    while lines.peek().starts_with("\t.shared ") {
        let mut cur = lines.next("`.shared`")?;
        cur.expect("\t.shared .align ")?;
        let start = cur.pos;
        let align: u32 = cur.unsigned("an alignment")?;
        if !align.is_power_of_two() {
            return Err(cur.error_at(start, "a power-of-two alignment"));
        }
        cur.expect(" .b8 ")?;
        let start = cur.pos;
        let name = cur.ident("a shared array name")?;
        declare(
            names,
            &cur,
            start,
            name,
            Base::Shared(SharedId(id_of(&cur, shared.len())?)),
        )?;
        cur.expect("[")?;
        let start = cur.pos;
        let bytes: u32 = cur.unsigned("a size in bytes")?;
        if bytes == 0 {
            return Err(cur.error_at(start, "a nonzero size in bytes"));
        }
        end = end.div_ceil(align.into()) * u64::from(align) + u64::from(bytes);
        if end > u64::from(u32::MAX) {
            return Err(cur.error_at(start, "shared arrays of less than 4 GiB in all"));
        }
        cur.expect("];")?;
        cur.end()?;
        shared.push(SharedDecl {
            name: name.to_string(),
            align,
            bytes,
        });
    }
    Ok(shared)
}

// ---------------------------------------------------------------------------------------------
// The body.

/// What instructions may refer to: declared registers and names.
struct Scope<'a> {
    counts: [u32; 5],
    names: Names<'a>,
}

/// Labels placed so far, and the branches whose targets must be placed by the end.
#[derive(Default)]
struct Labels {
    placed: HashSet<u32>,
    /// Each branch's target and line.
    branches: Vec<(Label, usize)>,
}

impl Labels {
    /// Every branch target must be placed somewhere in the kernel.
    fn check(&self) -> Result<()> {
        for (target, line) in &self.branches {
            if !self.placed.contains(&target.0) {
                return Err(ParseError {
                    line: *line,
                    message: format!("expected a label placed in this kernel, found `{target}`"),
                });
            }
        }
        Ok(())
    }
}

/// The statements up to and including the closing `}`.
fn body(lines: &mut Lines, scope: &Scope) -> Result<Vec<Stmt>> {
    const EXPECTED: &str = "an instruction, a label, a comment or `}`";
    let mut body = Vec::new();
    let mut labels = Labels::default();
    loop {
        let mut cur = lines.next(EXPECTED)?;
        let rest = cur.rest();
        let stmt = if rest == "}" {
            cur.expect("}")?;
            cur.end()?;
            labels.check()?;
            return Ok(body);
        } else if rest.starts_with("$L") {
            label_line(&mut cur, &mut labels)?
        } else if let Some(text) = rest.strip_prefix("\t// ") {
            cur.pos = cur.text.len();
            cur.end()?;
            Stmt::Comment(text.to_string())
        } else if rest.starts_with('\t') {
            let stmt = instruction_line(&mut cur, scope)?;
            if let Stmt::Inst {
                inst: Inst::Bra { target },
                ..
            } = stmt
            {
                labels.branches.push((target, cur.line));
            }
            stmt
        } else {
            return Err(cur.error(EXPECTED));
        };
        body.push(stmt);
    }
}

/// `$L3:`, a label placed once.
fn label_line(cur: &mut Cursor, labels: &mut Labels) -> Result<Stmt> {
    let label = label(cur)?;
    cur.expect(":")?;
    cur.end()?;
    if !labels.placed.insert(label.0) {
        return Err(cur.error_at(0, "a label not placed before in this kernel"));
    }
    Ok(Stmt::Label(label))
}

/// `$L3`.
fn label(cur: &mut Cursor) -> Result<Label> {
    if !cur.eat("$L") {
        return Err(cur.error("a label (`$L` and a number)"));
    }
    Ok(Label(cur.unsigned("a label number")?))
}

/// `\t[@[!]%p0 ]opcode[ operands];`.
fn instruction_line(cur: &mut Cursor, scope: &Scope) -> Result<Stmt> {
    cur.expect("\t")?;
    let guard = if cur.eat("@") {
        let negate = cur.eat("!");
        let pred = register(cur, scope)?;
        cur.expect(" ")?;
        Some(Guard { pred, negate })
    } else {
        None
    };
    let inst = instruction(cur, scope)?;
    cur.expect(";")?;
    cur.end()?;
    Ok(Stmt::Inst { guard, inst })
}

/// An opcode and its operands, up to the `;`.
fn instruction(cur: &mut Cursor, scope: &Scope) -> Result<Inst> {
    let start = cur.pos;
    let opcode = cur.take_while(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_');
    let Some(proto) = table().get(opcode) else {
        return Err(cur.error_at(start, "an opcode"));
    };
    if matches!(proto, Inst::Ret) {
        return Ok(Inst::Ret);
    }
    cur.expect(" ")?;
    operands(cur, scope, proto)
}

/// The operands of `proto`'s kind of instruction, in the printer's order; the opcode's fields
/// (types, modes, rounding) come from `proto`.
fn operands(cur: &mut Cursor, scope: &Scope, proto: &Inst) -> Result<Inst> {
    let inst = match *proto {
        Inst::Ld { space, ty, .. } => {
            let dst = register(cur, scope)?;
            cur.comma()?;
            let addr = address(cur, scope)?;
            Inst::Ld {
                space,
                ty,
                dst,
                addr,
            }
        }
        Inst::St { space, ty, .. } => {
            let addr = address(cur, scope)?;
            let src = next_operand(cur, scope)?;
            Inst::St {
                space,
                ty,
                addr,
                src,
            }
        }
        Inst::CvtaToGlobal { .. } => {
            let dst = register(cur, scope)?;
            let src = next_register(cur, scope)?;
            Inst::CvtaToGlobal { dst, src }
        }
        // `mov.b64` also prints packing and unpacking, told apart by their braces.
        Inst::Mov { ty: Type::B64, .. } => mov_b64(cur, scope)?,
        Inst::Mov { ty, .. } => {
            let dst = register(cur, scope)?;
            let src = next_operand(cur, scope)?;
            Inst::Mov { ty, dst, src }
        }
        Inst::Cvt {
            round,
            dst_ty,
            src_ty,
            ..
        } => {
            let dst = register(cur, scope)?;
            let src = next_register(cur, scope)?;
            Inst::Cvt {
                round,
                dst_ty,
                src_ty,
                dst,
                src,
            }
        }
        Inst::Bin { op, ty, .. } => {
            let dst = register(cur, scope)?;
            let a = next_operand(cur, scope)?;
            let b = next_operand(cur, scope)?;
            Inst::Bin { op, ty, dst, a, b }
        }
        Inst::Un { op, ty, .. } => {
            let dst = register(cur, scope)?;
            let a = next_operand(cur, scope)?;
            Inst::Un { op, ty, dst, a }
        }
        Inst::Fma { ty, .. } => {
            let (dst, a, b, c) = three_sources(cur, scope)?;
            Inst::Fma { ty, dst, a, b, c }
        }
        Inst::MadWide { ty, .. } => {
            let (dst, a, b, c) = three_sources(cur, scope)?;
            Inst::MadWide { ty, dst, a, b, c }
        }
        Inst::Setp { cmp, ty, .. } => {
            let dst = register(cur, scope)?;
            let a = next_operand(cur, scope)?;
            let b = next_operand(cur, scope)?;
            Inst::Setp { cmp, ty, dst, a, b }
        }
        Inst::Selp { ty, .. } => {
            let dst = register(cur, scope)?;
            let a = next_operand(cur, scope)?;
            let b = next_operand(cur, scope)?;
            let p = next_register(cur, scope)?;
            Inst::Selp { ty, dst, a, b, p }
        }
        Inst::Bra { .. } => Inst::Bra {
            target: label(cur)?,
        },
        Inst::BarSync => {
            cur.expect("0")?;
            Inst::BarSync
        }
        Inst::Shfl { mode, .. } => shfl(cur, scope, mode)?,
        Inst::Ret => Inst::Ret,
        // Never in the table: they print as `mov.b64`.
        Inst::Pack64 { .. } | Inst::Unpack64 { .. } => return Err(cur.error("an opcode")),
    };
    Ok(inst)
}

/// `dst, a, b, c` of `fma`/`mad`.
fn three_sources(cur: &mut Cursor, scope: &Scope) -> Result<(Reg, Operand, Operand, Operand)> {
    let dst = register(cur, scope)?;
    let a = next_operand(cur, scope)?;
    let b = next_operand(cur, scope)?;
    let c = next_operand(cur, scope)?;
    Ok((dst, a, b, c))
}

/// `mov.b64 {lo, hi}, src`, `mov.b64 dst, {lo, hi}` or a plain `mov.b64 dst, src`.
fn mov_b64(cur: &mut Cursor, scope: &Scope) -> Result<Inst> {
    if cur.peek_byte() == Some(b'{') {
        let (lo, hi) = reg_pair(cur, scope)?;
        let src = next_register(cur, scope)?;
        return Ok(Inst::Unpack64 { lo, hi, src });
    }
    let dst = register(cur, scope)?;
    cur.comma()?;
    if cur.peek_byte() == Some(b'{') {
        let (lo, hi) = reg_pair(cur, scope)?;
        return Ok(Inst::Pack64 { dst, lo, hi });
    }
    let src = operand(cur, scope)?;
    Ok(Inst::Mov {
        ty: Type::B64,
        dst,
        src,
    })
}

/// `{lo, hi}`.
fn reg_pair(cur: &mut Cursor, scope: &Scope) -> Result<(Reg, Reg)> {
    cur.expect("{")?;
    let lo = register(cur, scope)?;
    let hi = next_register(cur, scope)?;
    cur.expect("}")?;
    Ok((lo, hi))
}

/// `dst, src, lane, clamp, mask`, the mask printed as an `i32`.
fn shfl(cur: &mut Cursor, scope: &Scope, mode: ShflMode) -> Result<Inst> {
    let dst = register(cur, scope)?;
    let src = next_register(cur, scope)?;
    let lane = next_operand(cur, scope)?;
    cur.comma()?;
    let clamp = cur.unsigned("a 32-bit unsigned integer")?;
    cur.comma()?;
    let mask: i32 = cur.signed("a 32-bit integer")?;
    Ok(Inst::Shfl {
        mode,
        dst,
        src,
        lane,
        clamp,
        mask: mask as u32,
    })
}

/// `[base]` or `[base+offset]` (the printer leaves out a zero offset, and writes negative ones
/// as `+-4`).
fn address(cur: &mut Cursor, scope: &Scope) -> Result<Address> {
    cur.expect("[")?;
    let base = if cur.peek_byte() == Some(b'%') {
        Base::Reg(register(cur, scope)?)
    } else {
        let start = cur.pos;
        let name = cur.ident("a register, parameter or shared array name")?;
        *scope
            .names
            .get(name)
            .ok_or_else(|| cur.error_at(start, "a parameter or shared array name"))?
    };
    let offset = if cur.eat("+") {
        let start = cur.pos;
        let offset = cur.signed("a 32-bit offset")?;
        if offset == 0 {
            return Err(cur.error_at(start, "a nonzero offset"));
        }
        offset
    } else {
        0
    };
    cur.expect("]")?;
    Ok(Address { base, offset })
}

fn next_register(cur: &mut Cursor, scope: &Scope) -> Result<Reg> {
    cur.comma()?;
    register(cur, scope)
}

fn next_operand(cur: &mut Cursor, scope: &Scope) -> Result<Operand> {
    cur.comma()?;
    operand(cur, scope)
}

/// A declared register.
fn register(cur: &mut Cursor, scope: &Scope) -> Result<Reg> {
    let start = cur.pos;
    match percent(cur, scope, "a register")? {
        Operand::Reg(r) => Ok(r),
        _ => Err(cur.error_at(start, "a register")),
    }
}

/// A source operand: a register or special register, an integer or float immediate, or the
/// address of a shared array.
fn operand(cur: &mut Cursor, scope: &Scope) -> Result<Operand> {
    let start = cur.pos;
    let rest = cur.rest();
    if rest.starts_with('%') {
        percent(cur, scope, "a register or special register")
    } else if cur.eat("0f") {
        let bits = hex(
            cur,
            start,
            8,
            "an f32 immediate (`0f` and 8 uppercase hex digits)",
        )?;
        Ok(Operand::F32(f32::from_bits(bits as u32)))
    } else if cur.eat("0d") {
        let bits = hex(
            cur,
            start,
            16,
            "an f64 immediate (`0d` and 16 uppercase hex digits)",
        )?;
        Ok(Operand::F64(f64::from_bits(bits)))
    } else if rest.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        Ok(Operand::Imm(cur.signed("a 64-bit integer")?))
    } else if rest.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_' || c == '$') {
        let name = cur.ident("a shared array name")?;
        match scope.names.get(name) {
            Some(Base::Shared(id)) => Ok(Operand::Shared(*id)),
            _ => Err(cur.error_at(start, "a shared array name")),
        }
    } else {
        Err(cur.error("an operand"))
    }
}

/// Exactly `digits` uppercase hex digits (the printer's `{:08X}` / `{:016X}`).
fn hex(cur: &mut Cursor, start: usize, digits: usize, what: &str) -> Result<u64> {
    let word = cur.take_while(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b));
    if word.len() != digits {
        return Err(cur.error_at(start, what));
    }
    u64::from_str_radix(word, 16).map_err(|_| cur.error_at(start, what))
}

/// A `%` name: a register within its declaration, or a special register.
fn percent(cur: &mut Cursor, scope: &Scope, what: &str) -> Result<Operand> {
    let start = cur.pos;
    if !cur.eat("%") {
        return Err(cur.error(what));
    }
    let letters = cur.take_while(|b| b.is_ascii_lowercase());
    let per_axis: Option<fn(Axis3) -> Special> = match letters {
        "tid" => Some(Special::Tid),
        "ntid" => Some(Special::Ntid),
        "ctaid" => Some(Special::Ctaid),
        "nctaid" => Some(Special::Nctaid),
        _ => None,
    };
    if let Some(make) = per_axis {
        return Ok(Operand::Special(make(axis(cur)?)));
    }
    let class = match letters {
        "laneid" => return Ok(Operand::Special(Special::LaneId)),
        "p" => RegClass::Pred,
        "r" => RegClass::B32,
        "rd" => RegClass::B64,
        "f" => RegClass::F32,
        "fd" => RegClass::F64,
        _ => return Err(cur.error_at(start, what)),
    };
    let n: u32 = cur.unsigned("a register number")?;
    let declared = scope.counts[class.index()];
    if n >= declared {
        let p = class.prefix();
        let expected = match declared {
            0 => format!("a declared register (no {p} registers are declared)"),
            d => format!("a declared register ({p}0 to {p}{})", d - 1),
        };
        return Err(cur.error_at(start, expected));
    }
    Ok(Operand::Reg(Reg { class, n }))
}

/// `.x`, `.y` or `.z` of a special register.
fn axis(cur: &mut Cursor) -> Result<Axis3> {
    for (suffix, axis) in [(".x", Axis3::X), (".y", Axis3::Y), (".z", Axis3::Z)] {
        if cur.eat(suffix) {
            return Ok(axis);
        }
    }
    Err(cur.error("`.x`, `.y` or `.z`"))
}

// ---------------------------------------------------------------------------------------------
// The instruction table: every opcode the printer can write, with the instruction it heads.

const TYPES: [Type; 9] = [
    Type::Pred,
    Type::B32,
    Type::B64,
    Type::U32,
    Type::U64,
    Type::S32,
    Type::S64,
    Type::F32,
    Type::F64,
];
const SPACES: [Space; 3] = [Space::Global, Space::Shared, Space::Param];
const ROUNDS: [CvtRound; 4] = [CvtRound::None, CvtRound::Rn, CvtRound::Rni, CvtRound::Rzi];
const BIN_OPS: [BinOp; 13] = [
    BinOp::Add,
    BinOp::Sub,
    BinOp::Mul,
    BinOp::MulWide,
    BinOp::Div,
    BinOp::Rem,
    BinOp::Min,
    BinOp::Max,
    BinOp::And,
    BinOp::Or,
    BinOp::Xor,
    BinOp::Shl,
    BinOp::Shr,
];
const UN_OPS: [UnOp; 7] = [
    UnOp::Neg,
    UnOp::Abs,
    UnOp::Not,
    UnOp::Rcp,
    UnOp::Sqrt,
    UnOp::Ex2,
    UnOp::Lg2,
];
const CMPS: [Cmp; 14] = [
    Cmp::Eq,
    Cmp::Ne,
    Cmp::Lt,
    Cmp::Le,
    Cmp::Gt,
    Cmp::Ge,
    Cmp::Equ,
    Cmp::Neu,
    Cmp::Ltu,
    Cmp::Leu,
    Cmp::Gtu,
    Cmp::Geu,
    Cmp::Num,
    Cmp::Nan,
];
const SHFL_MODES: [ShflMode; 2] = [ShflMode::Bfly, ShflMode::Down];

/// One instruction of every opcode the printer can write (operands are placeholders), so the
/// table is the printer's own [`Inst::mnemonic`] run over every combination of fields.
/// `Pack64`/`Unpack64` are left out: they print as `mov.b64`, which [`mov_b64`] tells apart.
fn prototypes() -> Vec<Inst> {
    let r = Reg {
        class: RegClass::Pred,
        n: 0,
    };
    let o = Operand::Reg(r);
    let addr = Address::reg(r);
    let mut v = vec![
        Inst::CvtaToGlobal { dst: r, src: r },
        Inst::Bra { target: Label(0) },
        Inst::BarSync,
        Inst::Ret,
    ];
    for mode in SHFL_MODES {
        v.push(Inst::Shfl {
            mode,
            dst: r,
            src: r,
            lane: o,
            clamp: 0,
            mask: 0,
        });
    }
    for ty in TYPES {
        for space in SPACES {
            v.push(Inst::Ld {
                space,
                ty,
                dst: r,
                addr,
            });
            v.push(Inst::St {
                space,
                ty,
                addr,
                src: o,
            });
        }
        v.push(Inst::Mov { ty, dst: r, src: o });
        v.push(Inst::Fma {
            ty,
            dst: r,
            a: o,
            b: o,
            c: o,
        });
        v.push(Inst::MadWide {
            ty,
            dst: r,
            a: o,
            b: o,
            c: o,
        });
        v.push(Inst::Selp {
            ty,
            dst: r,
            a: o,
            b: o,
            p: r,
        });
        for op in BIN_OPS {
            v.push(Inst::Bin {
                op,
                ty,
                dst: r,
                a: o,
                b: o,
            });
        }
        for op in UN_OPS {
            v.push(Inst::Un {
                op,
                ty,
                dst: r,
                a: o,
            });
        }
        for cmp in CMPS {
            v.push(Inst::Setp {
                cmp,
                ty,
                dst: r,
                a: o,
                b: o,
            });
        }
        for round in ROUNDS {
            for src_ty in TYPES {
                v.push(Inst::Cvt {
                    round,
                    dst_ty: ty,
                    src_ty,
                    dst: r,
                    src: r,
                });
            }
        }
    }
    v
}

/// Opcode text to prototype, built once. Were two prototypes to print alike, the first would
/// win; a test checks that none do.
fn table() -> &'static HashMap<String, Inst> {
    static TABLE: OnceLock<HashMap<String, Inst>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = HashMap::new();
        for p in prototypes() {
            table.entry(p.mnemonic()).or_insert(p);
        }
        table
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog;
    use crate::check::{self, Rng};
    use crate::ir::{DType, Dim};
    use crate::ptx::KernelBuilder;

    /// Kernel equality with float immediates compared by their bits: the derived `==` finds a
    /// kernel with a NaN constant unequal to itself.
    fn same_kernels(a: &[Kernel], b: &[Kernel]) -> bool {
        a.len() == b.len()
            && a.iter().zip(b).all(|(x, y)| {
                let (x, xf) = floats_apart(x);
                let (y, yf) = floats_apart(y);
                x == y && xf == yf
            })
    }

    /// The kernel with every float immediate replaced by `Imm(0)`, and the replaced ones as
    /// (statement, operand slot, bits, is f64).
    fn floats_apart(k: &Kernel) -> (Kernel, Vec<(usize, usize, u64, bool)>) {
        let mut k = k.clone();
        let mut floats = Vec::new();
        for (i, st) in k.body.iter_mut().enumerate() {
            if let Stmt::Inst { inst, .. } = st {
                for (j, o) in sources_mut(inst).into_iter().enumerate() {
                    let bits = match *o {
                        Operand::F32(x) => Some((u64::from(x.to_bits()), false)),
                        Operand::F64(x) => Some((x.to_bits(), true)),
                        _ => None,
                    };
                    if let Some((bits, wide)) = bits {
                        floats.push((i, j, bits, wide));
                        *o = Operand::Imm(0);
                    }
                }
            }
        }
        (k, floats)
    }

    fn sources_mut(inst: &mut Inst) -> Vec<&mut Operand> {
        match inst {
            Inst::St { src, .. } | Inst::Mov { src, .. } => vec![src],
            Inst::Bin { a, b, .. } | Inst::Setp { a, b, .. } | Inst::Selp { a, b, .. } => {
                vec![a, b]
            }
            Inst::Un { a, .. } => vec![a],
            Inst::Fma { a, b, c, .. } | Inst::MadWide { a, b, c, .. } => vec![a, b, c],
            Inst::Shfl { lane, .. } => vec![lane],
            Inst::Ld { .. }
            | Inst::CvtaToGlobal { .. }
            | Inst::Cvt { .. }
            | Inst::Bra { .. }
            | Inst::BarSync
            | Inst::Pack64 { .. }
            | Inst::Unpack64 { .. }
            | Inst::Ret => Vec::new(),
        }
    }

    fn module_of(kernels: Vec<Kernel>) -> Module {
        Module {
            header: Header::default(),
            kernels,
        }
    }

    /// Parses `text`, asserts the kernels equal `want` and print back to `text`.
    fn assert_round_trip(what: &str, text: &str, want: &[Kernel]) {
        let m = parse_full_module(text).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(same_kernels(&m.kernels, want), "{what}: kernels differ");
        assert_eq!(m.to_ptx(), text, "{what}: printed differently");
    }

    #[test]
    fn every_catalog_program_round_trips() {
        let mut kernels = 0;
        for (name, p) in catalog::programs() {
            let mut m = Module::default();
            p.add_to(&mut m);
            assert_round_trip(&name, &m.to_ptx(), &m.kernels);
            for k in parse_module(&m.to_ptx()).unwrap_or_default() {
                k.check().unwrap_or_else(|e| panic!("{name}: {e}"));
            }
            kernels += m.kernels.len();
        }
        assert!(kernels >= 100, "only {kernels} kernels in the catalog");
    }

    #[test]
    fn catalog_module_round_trips() {
        let mut m = Module::default();
        for (_, p) in catalog::programs() {
            p.add_to(&mut m);
        }
        let text = catalog::module_ptx();
        assert_round_trip("catalog module", &text, &m.kernels);
        assert_eq!(parse_module(&text).map(|k| k.len()), Ok(m.kernels.len()));
    }

    #[test]
    fn other_headers_round_trip() {
        for (version, sm) in [((6, 0), 30), ((9, 0), 90), ((8, 5), 100)] {
            let header = Header::new(version, sm, 64).unwrap_or_else(|e| panic!("{e}"));
            let mut m = Module::new(header.clone());
            m.add(KernelBuilder::new([1, 1, 1]).finish("empty"));
            let parsed = parse_full_module(&m.to_ptx()).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(parsed, m);
        }
        let empty = Module::default().to_ptx();
        assert_eq!(parse_module(&empty), Ok(Vec::new()));
    }

    #[test]
    fn opcode_table_has_no_collisions() {
        assert_eq!(table().len(), prototypes().len());
        assert!(table().contains_key("mov.b64"));
    }

    /// Every opcode of the table, guarded and not, plus packing and unpacking, in a kernel
    /// printed and parsed back (the kernel is not type-correct; only its text matters here).
    #[test]
    fn every_opcode_round_trips() {
        let pred = Reg {
            class: RegClass::Pred,
            n: 0,
        };
        let (lo, hi, wide) = (
            Reg {
                class: RegClass::B32,
                n: 1,
            },
            Reg {
                class: RegClass::B32,
                n: 2,
            },
            Reg {
                class: RegClass::F64,
                n: 0,
            },
        );
        let mut body = vec![Stmt::Label(Label(0))];
        for (i, inst) in prototypes().into_iter().enumerate() {
            let guard = match i % 3 {
                0 => None,
                n => Some(Guard {
                    pred,
                    negate: n == 2,
                }),
            };
            body.push(Stmt::Inst { guard, inst });
        }
        for inst in [
            Inst::Pack64 { dst: wide, lo, hi },
            Inst::Unpack64 { lo, hi, src: wide },
        ] {
            body.push(Stmt::Inst { guard: None, inst });
        }
        let k = Kernel {
            name: "every_opcode".into(),
            params: Vec::new(),
            shared: Vec::new(),
            reg_counts: [1, 3, 1, 1, 1],
            max_threads: [1024, 1, 1],
            body,
        };
        let m = module_of(vec![k]);
        assert_round_trip("every opcode", &m.to_ptx(), &m.kernels);
    }

    /// Every operand form: special registers, float immediates of every class (NaN payloads,
    /// -0, infinities, subnormals), extreme integers, addresses of every base with negative and
    /// positive offsets, shared addresses as operands, shuffle masks, comments.
    #[test]
    fn every_operand_form_round_trips() {
        let mut b = KernelBuilder::new([128, 2, 3]);
        let params: Vec<ParamId> = TYPES
            .iter()
            .enumerate()
            .map(|(i, t)| b.param(&format!("p{i}_$x"), *t))
            .collect();
        let s0 = b.shared(16, 100);
        let s1 = b.shared(4, 1);
        let r = b.reg(Type::U32);
        let rd = b.reg(Type::U64);
        let f = b.reg(Type::F32);
        let fd = b.reg(Type::F64);
        let p = b.reg(Type::Pred);
        b.comment("");
        b.comment("ünïcödé // {} \t $L0: ;");
        for axis in [Axis3::X, Axis3::Y, Axis3::Z] {
            for make in [Special::Tid, Special::Ntid, Special::Ctaid, Special::Nctaid] {
                b.push(Inst::Mov {
                    ty: Type::U32,
                    dst: r,
                    src: Operand::Special(make(axis)),
                });
            }
        }
        b.special(Special::LaneId);
        let f32s = [
            f32::from_bits(0x7FC0_0001),
            f32::from_bits(0xFF80_0000),
            -0.0,
            f32::INFINITY,
            f32::from_bits(1),
            1.0,
            f32::MAX,
        ];
        for x in f32s {
            b.push(Inst::Mov {
                ty: Type::F32,
                dst: f,
                src: Operand::F32(x),
            });
        }
        let f64s = [
            f64::from_bits(0x7FF0_0000_0000_0001),
            f64::NAN,
            -0.0,
            f64::NEG_INFINITY,
            f64::from_bits(1),
            0.1,
        ];
        for x in f64s {
            b.push(Inst::Mov {
                ty: Type::F64,
                dst: fd,
                src: Operand::F64(x),
            });
        }
        for x in [i64::MIN, i64::MAX, 0, -1, 10] {
            b.push(Inst::Mov {
                ty: Type::S64,
                dst: rd,
                src: Operand::Imm(x),
            });
        }
        for (i, param) in params.iter().enumerate() {
            b.ld_param(*param);
            let offset = [0, -4, 8, i32::MIN, i32::MAX][i % 5];
            b.ld(
                Space::Param,
                TYPES[i],
                Address {
                    base: Base::Param(*param),
                    offset,
                },
            );
        }
        let l = b.label();
        b.place(l);
        for (base, offset) in [
            (Base::Shared(s0), 0),
            (Base::Shared(s1), -8),
            (Base::Reg(r), 12),
        ] {
            b.st(Space::Shared, Type::F32, Address { base, offset }, f);
        }
        b.st(
            Space::Global,
            Type::U64,
            Address::reg_off(rd, -1),
            Operand::Imm(7),
        );
        b.mov(Type::U32, Operand::Shared(s1));
        for (clamp, mask) in [(0x1f, u32::MAX), (0, 0), (0x1f1f, 0x8000_0000)] {
            b.push(Inst::Shfl {
                mode: ShflMode::Down,
                dst: r,
                src: r,
                lane: Operand::Imm(16),
                clamp,
                mask,
            });
        }
        b.bra_if(p, true, l);
        b.bra_if(p, false, l);
        b.bar_sync();
        let k = b.finish("forms");
        let mut empty = KernelBuilder::new([u32::MAX, 0, 7]);
        empty.shared(1, u32::MAX);
        let m = module_of(vec![k, empty.finish("empty")]);
        assert_round_trip("operand forms", &m.to_ptx(), &m.kernels);
    }

    /// A module of a few catalog programs (tens of kilobytes).
    fn small_module() -> Module {
        let mut m = Module::default();
        for (name, p) in catalog::programs() {
            if name.starts_with("scalar")
                || name.starts_with("transpose")
                || name == "mixed f32 [d0, d1]"
            {
                p.add_to(&mut m);
            }
        }
        m
    }

    /// A prefix either fails to parse or is a complete module that prints back as itself.
    fn assert_prefix_ok(prefix: &str) -> bool {
        match parse_full_module(prefix) {
            Err(_) => false,
            Ok(m) => {
                assert_eq!(
                    m.to_ptx(),
                    prefix,
                    "accepted a prefix that prints differently"
                );
                true
            }
        }
    }

    #[test]
    fn truncated_modules_fail_or_are_whole_modules() {
        let m = small_module();
        let text = m.to_ptx();
        assert!(text.len() > 5_000, "{} bytes", text.len());
        let dense = 2_000.min(text.len());
        let cuts = (0..dense).chain((dense..text.len()).step_by(97));
        let accepted = cuts
            .filter(|&n| assert_prefix_ok(text.get(..n).unwrap_or("")))
            .count();
        // The header alone is a module; cuts before the first kernel's `}` are not.
        assert!(accepted >= 1);
        // Cuts right after each kernel give the kernels so far.
        let mut ends = text.match_indices("}\n").map(|(i, _)| i + 2);
        for i in 0..m.kernels.len() {
            let end = ends.next().unwrap_or(0);
            assert!(end > 0, "kernel {i} has no end");
            let got = parse_module(text.get(..end).unwrap_or("")).unwrap_or_default();
            assert!(same_kernels(&got, &m.kernels[..=i]), "cut after kernel {i}");
            assert!(parse_module(text.get(..end.saturating_sub(1)).unwrap_or("")).is_err());
        }
    }

    #[test]
    fn corrupted_modules_never_panic_and_accepted_ones_are_canonical() {
        let text: Vec<char> = small_module().to_ptx().chars().collect();
        let alphabet: Vec<char> = "0123456789aAfFdDxyz%$.,;:{}[]<>+-@!_ \t\n/é\0rLpd"
            .chars()
            .collect();
        let mut rng = Rng::new(7);
        let mut pick = |n: usize| (rng.next_u64() % n as u64) as usize;
        let mut accepted = 0;
        for _ in 0..3_000 {
            let mut t = text.clone();
            for _ in 0..1 + pick(3) {
                let at = pick(t.len());
                let c = alphabet[pick(alphabet.len())];
                match pick(4) {
                    0 => t[at] = c,
                    1 => {
                        let flipped = u32::from(t[at]) ^ (1 << pick(8));
                        t[at] = char::from_u32(flipped).unwrap_or('?');
                    }
                    2 => t.insert(at, c),
                    _ => {
                        t.remove(at);
                    }
                }
            }
            let s: String = t.into_iter().collect();
            if let Ok(m) = parse_full_module(&s) {
                assert_eq!(m.to_ptx(), s, "accepted a text that prints differently");
                accepted += 1;
            }
        }
        // Some corruptions stay valid (a digit of a constant, say); most do not.
        assert!(accepted < 3_000);
    }

    /// Parsing speed on the whole catalog (about 1 MB of text); for a release build:
    /// `cargo test --release -p tensor-fn-kernels parse_speed -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn parse_speed() {
        let text = catalog::module_ptx();
        let t = std::time::Instant::now();
        for _ in 0..10 {
            assert!(parse_module(&text).is_ok());
        }
        eprintln!("{} bytes: {:?} per parse", text.len(), t.elapsed() / 10);
    }

    #[test]
    fn garbage_and_huge_numbers_are_errors() {
        for text in [
            "",
            "\n",
            "\u{0}",
            "//\n// Generated by tensor-fn-kernels\n//\n\n.version 99999999999.0\n",
            "//\n// Generated by tensor-fn-kernels\n//\n\n.version 7.8\n.target sm_80\n.address_size 64\n\n.visible .entry",
        ] {
            assert!(parse_module(text).is_err(), "{text:?}");
        }
    }

    /// A small module, printed by the writer, to corrupt one line at a time.
    const SMALL: &str = "//
// Generated by tensor-fn-kernels
//

.version 7.8
.target sm_80
.address_size 64

.visible .entry k(
\t.param .u64 p
)
.maxntid 32, 1, 1
{
\t.reg .pred %p<1>;
\t.reg .b32 %r<2>;
\t.reg .b64 %rd<2>;
\t.shared .align 8 .b8 smem0[16];
\tld.param.u64 %rd0, [p];
\tmov.u32 %r0, %tid.x;
\tsetp.lt.u32 %p0, %r0, 4;
$L0:
\t@!%p0 bra $L0;
\tret;
}
";

    /// `SMALL` with its line `line` (1-based) replaced.
    fn with_line(line: usize, text: &str) -> String {
        let mut lines: Vec<&str> = SMALL.split('\n').collect();
        lines[line - 1] = text;
        lines.join("\n")
    }

    #[test]
    fn the_small_module_parses() {
        let m = parse_full_module(SMALL).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.to_ptx(), SMALL);
        assert_eq!(m.kernels[0].check(), Ok(()));
    }

    #[test]
    fn malformed_lines_give_exact_messages() {
        let cases: &[(usize, &str, &str)] = &[
            (5, ".version 5.0", "expected a version the writer emits (PTX .version 5.0 is below 6.0, which shfl.sync needs), found `5.0`"),
            (7, ".address_size 32", "expected an address size the writer emits (.address_size 32: only 64-bit addressing is emitted), found `32`"),
            (8, "x", "expected an empty line, found `x`"),
            (10, "\t.param .u63 p", "expected a type (`.u32`, `.f32`, ...), found `.u63`"),
            (12, ".maxntid 32, 1", "expected `, `, found end of line"),
            (15, "\t.reg .b32 %r<0>;", "expected a nonzero register count, found `0`"),
            (15, "\t.reg .pred %p<1>;", "expected a register class not declared yet, in the order `.pred`, `.b32`, `.b64`, `.f32`, `.f64`, found `.pred`"),
            (17, "\t.shared .align 3 .b8 smem0[16];", "expected a power-of-two alignment, found `3`"),
            (17, "\t.shared .align 8 .b8 p[16];", "expected a name not declared before in this kernel, found `p`"),
            (18, "\tld.param.u64 %rd0, [q];", "expected a parameter or shared array name, found `q`"),
            (18, "\tld.param.u64 %rd0, [p+0];", "expected a nonzero offset, found `0`"),
            (19, "\tmov.u32 %r2, %tid.x;", "expected a declared register (%r0 to %r1), found `%r2`"),
            (19, "\tmov.u32 %f0, %tid.x;", "expected a declared register (no %f registers are declared), found `%f0`"),
            (19, "\tmov.u32 %r0, %tid.w;", "expected `.x`, `.y` or `.z`, found `.w`"),
            (19, "\tfrob.u32 %r0, %r1;", "expected an opcode, found `frob.u32`"),
            (19, "\tmov.u32 %r0, 99999999999999999999;", "expected a 64-bit integer, found `99999999999999999999`"),
            (19, "\tmov.u32 %r0, 007;", "expected a 64-bit integer, found `007`"),
            (19, "\tmov.u32 %r0, 0f3f800000;", "expected an f32 immediate (`0f` and 8 uppercase hex digits), found `0f3f800000`"),
            (19, "\tmov.u32 %r0, smem1;", "expected a shared array name, found `smem1`"),
            (20, "\tsetp.lt.u32 %p0, %r0;", "expected `, `, found `;`"),
            (20, "\tsetp.lt.u32 %p0, %r0, 4; ", "expected end of line, found ` `"),
            (22, "$L0:", "expected a label not placed before in this kernel, found `$L0`"),
            (22, "\t@!%p0 bra $L7;", "expected a label placed in this kernel, found `$L7`"),
            (23, "\tret", "expected `;`, found end of line"),
            (24, "} x", "expected an instruction, a label, a comment or `}`, found `}`"),
        ];
        for &(line, text, message) in cases {
            let got = parse_module(&with_line(line, text));
            let want = ParseError {
                line,
                message: message.to_string(),
            };
            assert_eq!(got, Err(want), "line {line}: {text:?}");
        }
    }

    #[test]
    fn truncation_errors_name_the_end() {
        let cut = SMALL.trim_end_matches('\n');
        assert_eq!(
            parse_module(cut),
            Err(ParseError {
                line: 24,
                message: "expected a newline, found end of input".into()
            })
        );
        let cut = SMALL.get(..SMALL.find("\tld").unwrap_or(0)).unwrap_or("");
        assert_eq!(
            parse_module(cut),
            Err(ParseError {
                line: 18,
                message: "expected an instruction, a label, a comment or `}`, found end of input"
                    .into()
            })
        );
        assert_eq!(
            parse_module(""),
            Err(ParseError {
                line: 1,
                message: "expected `//`, found end of input".into()
            })
        );
        let e = parse_module("").err().map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("line 1: expected `//`, found end of input")
        );
    }

    /// A loop program (grid-stride loops and reductions, symbolic dims) runs from parsed text
    /// exactly like the original.
    #[test]
    fn parsed_program_runs_like_the_original() {
        let lk = catalog::mixed_kernel(DType::F32, Dim::Sym(0), Dim::Sym(1));
        let program = crate::lower_loop(&lk).unwrap_or_else(|e| panic!("{e}"));
        let mut m = Module::default();
        program.add_to(&mut m);
        let parsed = parse_module(&m.to_ptx()).unwrap_or_else(|e| panic!("{e}"));
        let mut from_text = program.clone();
        for l in &mut from_text.launches {
            let k = parsed.iter().find(|k| k.name == l.kernel.name);
            l.kernel = k
                .cloned()
                .unwrap_or_else(|| panic!("{} missing", l.kernel.name));
        }

        let syms = check::syms(&[(0, 5), (1, 37)]);
        let args: HashMap<u32, f64> = [(0, 0.75)].into_iter().collect();
        let mut rng = Rng::new(3);
        let mut data = HashMap::new();
        let mut bufs = Vec::new();
        for b in check::inputs(&lk) {
            let n = check::elems(&lk.bufs[b].shape, &syms);
            data.insert(b, rng.vec(n, 0.1, 2.0));
            bufs.push((b, n));
        }
        for b in check::outputs(&lk) {
            bufs.push((b, check::elems(&lk.bufs[b].shape, &syms).max(1)));
        }
        let run = |p: &crate::meta::Program| {
            check::run_program(p, DType::F32, &bufs, &data, &syms, &args)
        };
        let (want, want_stats) = run(&program);
        let (got, got_stats) = run(&from_text);
        assert_eq!(got_stats, want_stats);
        for b in check::outputs(&lk) {
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got[&b]), bits(&want[&b]), "b{b}");
        }
    }

    /// Adding a variant to one of these enums fails to compile here: add it to the table's
    /// lists above too.
    #[test]
    fn table_lists_every_variant() {
        let listed = |t: Type| match t {
            Type::Pred
            | Type::B32
            | Type::B64
            | Type::U32
            | Type::U64
            | Type::S32
            | Type::S64
            | Type::F32
            | Type::F64 => TYPES.contains(&t),
        };
        assert!(TYPES.into_iter().all(listed));
        let space = |s: Space| match s {
            Space::Global | Space::Shared | Space::Param => SPACES.contains(&s),
        };
        assert!(SPACES.into_iter().all(space));
        let round = |r: CvtRound| match r {
            CvtRound::None | CvtRound::Rn | CvtRound::Rni | CvtRound::Rzi => ROUNDS.contains(&r),
        };
        assert!(ROUNDS.into_iter().all(round));
        let bin = |op: BinOp| match op {
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
            | BinOp::Xor
            | BinOp::Shl
            | BinOp::Shr => BIN_OPS.contains(&op),
        };
        assert!(BIN_OPS.into_iter().all(bin));
        let un = |op: UnOp| match op {
            UnOp::Neg | UnOp::Abs | UnOp::Not | UnOp::Rcp | UnOp::Sqrt | UnOp::Ex2 | UnOp::Lg2 => {
                UN_OPS.contains(&op)
            }
        };
        assert!(UN_OPS.into_iter().all(un));
        let cmp = |c: Cmp| match c {
            Cmp::Eq
            | Cmp::Ne
            | Cmp::Lt
            | Cmp::Le
            | Cmp::Gt
            | Cmp::Ge
            | Cmp::Equ
            | Cmp::Neu
            | Cmp::Ltu
            | Cmp::Leu
            | Cmp::Gtu
            | Cmp::Geu
            | Cmp::Num
            | Cmp::Nan => CMPS.contains(&c),
        };
        assert!(CMPS.into_iter().all(cmp));
        let mode = |m: ShflMode| match m {
            ShflMode::Bfly | ShflMode::Down => SHFL_MODES.contains(&m),
        };
        assert!(SHFL_MODES.into_iter().all(mode));
    }
}
