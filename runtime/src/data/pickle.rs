//! A reader for the small subset of Python's pickle format that numpy-array pickles use.
//!
//! Pickle is a program for a stack machine: each opcode pushes a value, builds a container
//! from values on the stack, or calls a global (`REDUCE`) and sets its state (`BUILD`). This
//! reader runs that program without executing anything: a global is only a name, a call is
//! recorded as an [`Value::Object`] of (callable, arguments, state), and [`Pickle::ndarray`]
//! then recognises the shape numpy gives arrays:
//!
//! ```text
//! _reconstruct(ndarray, (0,), b'b').__setstate__((1, shape, dtype, is_fortran, raw_bytes))
//! dtype('f4', 0, 1).__setstate__((3, '<', None, None, None, -1, -1, 0))
//! ```
//!
//! Values live in an arena and refer to each other by index, so a memo entry fetched many
//! times (`BINGET`) is shared rather than copied, nothing is recursive (no deep drop, no stack
//! overflow on nested tuples), and byte strings borrow from the input. The number of opcodes
//! is capped: the pickles this reads hold a few hundred, and a cap keeps a garbage file from
//! building a huge arena.
//!
//! Supported opcodes: those of protocol 2 pickles of numpy arrays as Python 2 wrote them
//! (PROTO, GLOBAL, MARK, BININT, BININT1, BININT2, LONG1, TUPLE, TUPLE1-3, EMPTY_TUPLE,
//! REDUCE, BUILD, BINPUT, LONG_BINPUT, BINGET, LONG_BINGET, SHORT_BINSTRING, BINSTRING,
//! BINUNICODE, NONE, NEWTRUE, NEWFALSE, EMPTY_LIST, APPEND, APPENDS, EMPTY_DICT, SETITEM,
//! SETITEMS, STOP) and the few that Python 3 uses for the same objects (SHORT_BINBYTES,
//! BINBYTES, BINBYTES8, SHORT_BINUNICODE, BINUNICODE8, STACK_GLOBAL, MEMOIZE, FRAME). Any
//! other opcode is an error naming it and its offset.

use std::collections::HashMap;
use std::fmt;

/// Index of a value in [`Pickle::values`].
pub(crate) type Id = usize;

/// Most opcodes one pickle may execute; MNIST's has about 200.
const MAX_OPS: usize = 100_000;

/// A value built by the pickle program.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value<'a> {
    None,
    Bool(bool),
    Int(i64),
    /// A Python 2 `str` or a Python 3 `bytes`.
    Bytes(&'a [u8]),
    /// A Python `unicode` / `str` (UTF-8 in the pickle).
    Str(&'a str),
    Tuple(Vec<Id>),
    List(Vec<Id>),
    Dict(Vec<(Id, Id)>),
    /// A global named `module.name` (never imported, never called).
    Global {
        module: &'a str,
        name: &'a str,
    },
    /// `callable(*args)` (REDUCE), then `__setstate__(state)` (BUILD) if given.
    Object {
        callable: Id,
        args: Id,
        state: Option<Id>,
    },
}

/// A pickle program that ran to `STOP`: the arena of values and the result.
#[derive(Debug)]
pub(crate) struct Pickle<'a> {
    values: Vec<Value<'a>>,
    root: Id,
}

/// Why a pickle could not be read: the byte offset of the opcode, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PickleError {
    pub offset: usize,
    pub message: String,
}

impl fmt::Display for PickleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pickle: {} (at offset {})", self.message, self.offset)
    }
}

/// A numpy array found in a pickle: its dtype descriptor, shape and raw data (borrowed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NdArray<'a> {
    /// Byte order and type, numpy-style: `<f4`, `<i8`, `|u1`.
    pub descr: String,
    pub shape: Vec<usize>,
    pub fortran_order: bool,
    pub data: &'a [u8],
}

/// The name of every pickle opcode (protocols 0 to 5), for error messages.
fn opcode_name(op: u8) -> Option<&'static str> {
    Some(match op {
        b'(' => "MARK",
        b'.' => "STOP",
        b'0' => "POP",
        b'1' => "POP_MARK",
        b'2' => "DUP",
        b'F' => "FLOAT",
        b'I' => "INT",
        b'J' => "BININT",
        b'K' => "BININT1",
        b'L' => "LONG",
        b'M' => "BININT2",
        b'N' => "NONE",
        b'P' => "PERSID",
        b'Q' => "BINPERSID",
        b'R' => "REDUCE",
        b'S' => "STRING",
        b'T' => "BINSTRING",
        b'U' => "SHORT_BINSTRING",
        b'V' => "UNICODE",
        b'X' => "BINUNICODE",
        b'a' => "APPEND",
        b'b' => "BUILD",
        b'c' => "GLOBAL",
        b'd' => "DICT",
        b'}' => "EMPTY_DICT",
        b'e' => "APPENDS",
        b'g' => "GET",
        b'h' => "BINGET",
        b'i' => "INST",
        b'j' => "LONG_BINGET",
        b'l' => "LIST",
        b']' => "EMPTY_LIST",
        b'o' => "OBJ",
        b'p' => "PUT",
        b'q' => "BINPUT",
        b'r' => "LONG_BINPUT",
        b's' => "SETITEM",
        b't' => "TUPLE",
        b')' => "EMPTY_TUPLE",
        b'u' => "SETITEMS",
        b'G' => "BINFLOAT",
        b'B' => "BINBYTES",
        b'C' => "SHORT_BINBYTES",
        0x80 => "PROTO",
        0x81 => "NEWOBJ",
        0x82 => "EXT1",
        0x83 => "EXT2",
        0x84 => "EXT4",
        0x85 => "TUPLE1",
        0x86 => "TUPLE2",
        0x87 => "TUPLE3",
        0x88 => "NEWTRUE",
        0x89 => "NEWFALSE",
        0x8a => "LONG1",
        0x8b => "LONG4",
        0x8c => "SHORT_BINUNICODE",
        0x8d => "BINUNICODE8",
        0x8e => "BINBYTES8",
        0x8f => "EMPTY_SET",
        0x90 => "ADDITEMS",
        0x91 => "FROZENSET",
        0x92 => "NEWOBJ_EX",
        0x93 => "STACK_GLOBAL",
        0x94 => "MEMOIZE",
        0x95 => "FRAME",
        0x96 => "BYTEARRAY8",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        _ => return None,
    })
}

/// The running machine: input cursor, stack, marks (stack heights saved by MARK) and memo.
struct Machine<'a> {
    input: &'a [u8],
    pos: usize,
    /// Offset of the opcode being run, for errors.
    at: usize,
    op: u8,
    values: Vec<Value<'a>>,
    stack: Vec<Id>,
    marks: Vec<usize>,
    memo: HashMap<u64, Id>,
}

/// Runs a pickle program held in memory; the whole input must be one pickle ending in STOP.
pub(crate) fn parse(input: &[u8]) -> Result<Pickle<'_>, PickleError> {
    let mut m = Machine {
        input,
        pos: 0,
        at: 0,
        op: 0,
        values: Vec::new(),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
    };
    for _ in 0..MAX_OPS {
        if let Some(root) = m.step()? {
            return Ok(Pickle {
                values: m.values,
                root,
            });
        }
    }
    Err(PickleError {
        offset: m.pos,
        message: format!("more than {MAX_OPS} opcodes; not a pickle of a few numpy arrays"),
    })
}

impl<'a> Machine<'a> {
    fn err<T>(&self, message: impl Into<String>) -> Result<T, PickleError> {
        let name = opcode_name(self.op).unwrap_or("?");
        Err(PickleError {
            offset: self.at,
            message: format!("{name}: {}", message.into()),
        })
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], PickleError> {
        let left = self.input.len() - self.pos;
        if n > left as u64 {
            return self.err(format!(
                "needs {n} more bytes, but the pickle ends after {left}"
            ));
        }
        let bytes = &self.input[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(bytes)
    }

    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }

    fn le<const N: usize>(&mut self) -> Result<[u8; N], PickleError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N as u64)?);
        Ok(out)
    }

    fn str_of(&self, bytes: &'a [u8]) -> Result<&'a str, PickleError> {
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s),
            Err(_) => self.err("string is not valid UTF-8"),
        }
    }

    /// A newline-terminated ASCII name, as GLOBAL's arguments are written.
    fn line(&mut self) -> Result<&'a str, PickleError> {
        let rest = &self.input[self.pos..];
        let Some(len) = rest.iter().take(256).position(|&b| b == b'\n') else {
            return self.err("no newline within 256 bytes after a global's name");
        };
        let bytes = self.take(len as u64 + 1)?;
        self.str_of(&bytes[..len])
    }

    fn push(&mut self, v: Value<'a>) {
        self.values.push(v);
        self.stack.push(self.values.len() - 1);
    }

    fn pop(&mut self) -> Result<Id, PickleError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        match self.stack.len() > floor {
            true => self
                .stack
                .pop()
                .map_or_else(|| self.err("the stack is empty"), Ok),
            false => self.err("the stack is empty (or holds only a MARK)"),
        }
    }

    fn top(&self) -> Result<Id, PickleError> {
        match self.stack.last() {
            Some(&id) if self.stack.len() > self.marks.last().copied().unwrap_or(0) => Ok(id),
            _ => self.err("the stack is empty (or holds only a MARK)"),
        }
    }

    fn pop_n(&mut self, n: usize) -> Result<Vec<Id>, PickleError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() < floor + n {
            return self.err(format!("needs {n} values on the stack"));
        }
        Ok(self.stack.split_off(self.stack.len() - n))
    }

    /// Everything above the last MARK, which is removed.
    fn pop_mark(&mut self) -> Result<Vec<Id>, PickleError> {
        let Some(mark) = self.marks.pop() else {
            return self.err("no MARK on the stack");
        };
        Ok(self.stack.split_off(mark))
    }

    fn memo_put(&mut self, key: u64) -> Result<(), PickleError> {
        let id = self.top()?;
        self.memo.insert(key, id);
        Ok(())
    }

    fn memo_get(&mut self, key: u64) -> Result<(), PickleError> {
        match self.memo.get(&key) {
            Some(&id) => {
                self.stack.push(id);
                Ok(())
            }
            None => self.err(format!("memo key {key} was never stored")),
        }
    }

    fn bytes_of_len(&mut self, len: u64, as_str: bool) -> Result<(), PickleError> {
        let bytes = self.take(len)?;
        let v = if as_str {
            Value::Str(self.str_of(bytes)?)
        } else {
            Value::Bytes(bytes)
        };
        self.push(v);
        Ok(())
    }

    /// Runs one opcode; returns the result at STOP.
    fn step(&mut self) -> Result<Option<Id>, PickleError> {
        self.at = self.pos;
        self.op = 0;
        let Some(&op) = self.input.get(self.pos) else {
            return Err(PickleError {
                offset: self.pos,
                message: "the pickle ends without a STOP opcode (truncated?)".into(),
            });
        };
        self.op = op;
        self.pos += 1;
        match op {
            0x80 => {
                // PROTO
                let proto = self.u8()?;
                if !(2..=4).contains(&proto) {
                    return self.err(format!(
                        "protocol {proto} is not supported; only protocols 2 to 4"
                    ));
                }
            }
            0x95 => {
                // FRAME: a length hint for buffered reading; the input is already in memory.
                self.le::<8>()?;
            }
            b'.' => {
                // STOP
                let root = self.pop()?;
                if !self.stack.is_empty() || !self.marks.is_empty() {
                    return self.err("values or MARKs are left on the stack at STOP");
                }
                if self.pos != self.input.len() {
                    return self.err(format!(
                        "{} bytes follow the end of the pickle",
                        self.input.len() - self.pos
                    ));
                }
                return Ok(Some(root));
            }
            b'(' => self.marks.push(self.stack.len()),
            b'N' => self.push(Value::None),
            0x88 => self.push(Value::Bool(true)),
            0x89 => self.push(Value::Bool(false)),
            b'J' => {
                let v = i32::from_le_bytes(self.le()?);
                self.push(Value::Int(v.into()));
            }
            b'K' => {
                let v = self.u8()?;
                self.push(Value::Int(v.into()));
            }
            b'M' => {
                let v = u16::from_le_bytes(self.le()?);
                self.push(Value::Int(v.into()));
            }
            0x8a => {
                // LONG1: n bytes of little-endian two's complement.
                let n = self.u8()? as u64;
                let bytes = self.take(n)?;
                if n > 8 {
                    return self.err(format!("a {n}-byte integer does not fit in an i64"));
                }
                let mut v: i64 = 0;
                for (i, &b) in bytes.iter().enumerate() {
                    v |= (b as i64) << (8 * i);
                }
                if (1..8).contains(&n) && bytes[n as usize - 1] & 0x80 != 0 {
                    v -= 1 << (8 * n); // sign-extend
                }
                self.push(Value::Int(v));
            }
            b'U' | b'C' => {
                // SHORT_BINSTRING, SHORT_BINBYTES
                let len = self.u8()?;
                self.bytes_of_len(len.into(), false)?;
            }
            b'T' => {
                // BINSTRING: a signed 4-byte length.
                let len = i32::from_le_bytes(self.le()?);
                if len < 0 {
                    return self.err(format!("negative string length {len}"));
                }
                self.bytes_of_len(len as u64, false)?;
            }
            b'B' => {
                let len = u32::from_le_bytes(self.le()?);
                self.bytes_of_len(len.into(), false)?;
            }
            0x8e => {
                let len = u64::from_le_bytes(self.le()?);
                self.bytes_of_len(len, false)?;
            }
            0x8c => {
                let len = self.u8()?;
                self.bytes_of_len(len.into(), true)?;
            }
            b'X' => {
                let len = u32::from_le_bytes(self.le()?);
                self.bytes_of_len(len.into(), true)?;
            }
            0x8d => {
                let len = u64::from_le_bytes(self.le()?);
                self.bytes_of_len(len, true)?;
            }
            b'c' => {
                let module = self.line()?;
                let name = self.line()?;
                self.push(Value::Global { module, name });
            }
            0x93 => {
                // STACK_GLOBAL: module and name are strings on the stack.
                let name = self.pop()?;
                let module = self.pop()?;
                match (&self.values[module], &self.values[name]) {
                    (&Value::Str(module), &Value::Str(name)) => {
                        self.push(Value::Global { module, name })
                    }
                    _ => return self.err("module and name must be strings"),
                }
            }
            b')' => self.push(Value::Tuple(Vec::new())),
            b't' => {
                let items = self.pop_mark()?;
                self.push(Value::Tuple(items));
            }
            0x85..=0x87 => {
                let items = self.pop_n((op - 0x84) as usize)?;
                self.push(Value::Tuple(items));
            }
            b']' => self.push(Value::List(Vec::new())),
            b'}' => self.push(Value::Dict(Vec::new())),
            b'a' => {
                let item = self.pop()?;
                self.extend_list(vec![item])?;
            }
            b'e' => {
                let items = self.pop_mark()?;
                self.extend_list(items)?;
            }
            b's' => {
                let items = self.pop_n(2)?;
                self.extend_dict(items)?;
            }
            b'u' => {
                let items = self.pop_mark()?;
                self.extend_dict(items)?;
            }
            b'R' => {
                let args = self.pop()?;
                let callable = self.pop()?;
                if !matches!(self.values[callable], Value::Global { .. }) {
                    return self.err("the callable is not a global");
                }
                if !matches!(self.values[args], Value::Tuple(_)) {
                    return self.err("the arguments are not a tuple");
                }
                self.push(Value::Object {
                    callable,
                    args,
                    state: None,
                });
            }
            b'b' => {
                let new_state = self.pop()?;
                let target = self.top()?;
                match &mut self.values[target] {
                    Value::Object {
                        state: state @ None,
                        ..
                    } => *state = Some(new_state),
                    Value::Object { .. } => return self.err("the object's state is already set"),
                    _ => return self.err("the target is not an object made by REDUCE"),
                }
            }
            b'q' => {
                let key = self.u8()?;
                self.memo_put(key.into())?;
            }
            b'r' => {
                let key = u32::from_le_bytes(self.le()?);
                self.memo_put(key.into())?;
            }
            0x94 => {
                let key = self.memo.len() as u64;
                self.memo_put(key)?;
            }
            b'h' => {
                let key = self.u8()?;
                self.memo_get(key.into())?;
            }
            b'j' => {
                let key = u32::from_le_bytes(self.le()?);
                self.memo_get(key.into())?;
            }
            _ => {
                let name = match opcode_name(op) {
                    Some(name) => format!("opcode {name} (0x{op:02x})"),
                    None => format!("byte 0x{op:02x}, which is no pickle opcode"),
                };
                return Err(PickleError {
                    offset: self.at,
                    message: format!("unsupported {name}"),
                });
            }
        }
        Ok(None)
    }

    fn extend_list(&mut self, items: Vec<Id>) -> Result<(), PickleError> {
        let target = self.top()?;
        match &mut self.values[target] {
            Value::List(list) => {
                list.extend(items);
                Ok(())
            }
            _ => self.err("the target is not a list"),
        }
    }

    fn extend_dict(&mut self, items: Vec<Id>) -> Result<(), PickleError> {
        if items.len() & 1 == 1 {
            return self.err("an odd number of keys and values");
        }
        let target = self.top()?;
        match &mut self.values[target] {
            Value::Dict(dict) => {
                dict.extend(items.chunks_exact(2).map(|kv| (kv[0], kv[1])));
                Ok(())
            }
            _ => self.err("the target is not a dict"),
        }
    }
}

impl<'a> Pickle<'a> {
    /// The value the pickle stands for.
    pub fn root(&self) -> Id {
        self.root
    }

    pub fn get(&self, id: Id) -> &Value<'a> {
        &self.values[id]
    }

    /// The items of a tuple of exactly `n` items.
    pub fn tuple(&self, id: Id, n: usize) -> Result<&[Id], String> {
        match self.get(id) {
            Value::Tuple(items) if items.len() == n => Ok(items),
            other => Err(format!(
                "expected a tuple of {n}, found {}",
                self.describe(other)
            )),
        }
    }

    /// A short description of a value for messages, without descending into it.
    pub fn describe(&self, v: &Value<'_>) -> String {
        match v {
            Value::None => "None".into(),
            Value::Bool(b) => format!("the bool {}", if *b { "True" } else { "False" }),
            Value::Int(i) => format!("the int {i}"),
            Value::Bytes(b) => format!("a byte string of length {}", b.len()),
            Value::Str(s) if s.len() <= 32 => format!("the string {s:?}"),
            Value::Str(s) => format!("a string of length {}", s.len()),
            Value::Tuple(items) => format!("a tuple of {}", items.len()),
            Value::List(items) => format!("a list of {}", items.len()),
            Value::Dict(items) => format!("a dict of {}", items.len()),
            Value::Global { module, name } => format!("the global {module}.{name}"),
            Value::Object { callable, .. } => match self.get(*callable) {
                Value::Global { module, name } => format!("an object made by {module}.{name}"),
                _ => "an object".into(),
            },
        }
    }

    fn int(&self, id: Id) -> Result<i64, String> {
        match self.get(id) {
            Value::Int(i) => Ok(*i),
            other => Err(format!("expected an int, found {}", self.describe(other))),
        }
    }

    fn text(&self, id: Id) -> Result<&'a str, String> {
        match *self.get(id) {
            Value::Str(s) => Ok(s),
            Value::Bytes(b) => std::str::from_utf8(b).map_err(|_| "a non-UTF-8 string".into()),
            ref other => Err(format!("expected a string, found {}", self.describe(other))),
        }
    }

    /// An object made by calling `module.name` (one of `modules`), with its args and state.
    fn object(&self, id: Id, modules: &[&str], name: &str) -> Result<(Id, Option<Id>), String> {
        let wanted = || format!("{}.{name}", modules[0]);
        match self.get(id) {
            Value::Object {
                callable,
                args,
                state,
            } => match self.get(*callable) {
                Value::Global { module: m, name: n } if modules.contains(m) && *n == name => {
                    Ok((*args, *state))
                }
                _ => Err(format!(
                    "expected an object made by {}, found {}",
                    wanted(),
                    self.describe(self.get(id))
                )),
            },
            other => Err(format!(
                "expected an object made by {}, found {}",
                wanted(),
                self.describe(other)
            )),
        }
    }

    /// Recognises a numpy array (see the module docs for the layout) and borrows its data.
    /// Checks the layout, the dtype descriptor's form and that the data length matches the
    /// shape and item size; what dtype and shape are acceptable is the caller's business.
    pub fn ndarray(&self, id: Id) -> Result<NdArray<'a>, String> {
        const MULTIARRAY: &[&str] = &["numpy.core.multiarray", "numpy._core.multiarray"];
        let (args, state) = self.object(id, MULTIARRAY, "_reconstruct")?;
        let args = self
            .tuple(args, 3)
            .map_err(|e| format!("_reconstruct args: {e}"))?;
        match self.get(args[0]) {
            Value::Global {
                module: "numpy",
                name: "ndarray",
            } => {}
            other => {
                return Err(format!(
                    "expected a numpy.ndarray, found a subclass or other type: {}",
                    self.describe(other)
                ))
            }
        }
        let state = state.ok_or("the array has no state (no BUILD)")?;
        let state = self
            .tuple(state, 5)
            .map_err(|e| format!("array state: {e}"))?;
        let version = self.int(state[0])?;
        if version != 1 {
            return Err(format!("array state version {version}; expected 1"));
        }
        let shape = match self.get(state[1]) {
            Value::Tuple(dims) => dims
                .iter()
                .map(|&d| {
                    let d = self.int(d)?;
                    usize::try_from(d).map_err(|_| format!("negative dim {d} in the shape"))
                })
                .collect::<Result<Vec<usize>, String>>()?,
            other => {
                return Err(format!(
                    "shape: expected a tuple, found {}",
                    self.describe(other)
                ))
            }
        };
        let (descr, itemsize) = self.dtype(state[2])?;
        let fortran_order = match self.get(state[3]) {
            Value::Bool(b) => *b,
            Value::Int(i) => *i != 0,
            other => {
                return Err(format!(
                    "is_fortran: expected a bool, found {}",
                    self.describe(other)
                ))
            }
        };
        let data = match *self.get(state[4]) {
            Value::Bytes(b) => b,
            ref other => {
                return Err(format!(
                    "array data: expected a byte string, found {}",
                    self.describe(other)
                ))
            }
        };
        let expected = shape
            .iter()
            .try_fold(itemsize as u64, |acc, &d| acc.checked_mul(d as u64))
            .ok_or_else(|| format!("shape {shape:?} overflows"))?;
        if data.len() as u64 != expected {
            return Err(format!(
                "array of shape {shape:?} and dtype {descr} needs {expected} bytes of data, found {}",
                data.len()
            ));
        }
        Ok(NdArray {
            descr,
            shape,
            fortran_order,
            data,
        })
    }

    /// A numpy dtype: `dtype('f4', 0, 1)` with state `(3, '<', None, None, None, -1, -1, 0)`.
    /// Returns the descriptor (`<f4`) and the item size.
    fn dtype(&self, id: Id) -> Result<(String, usize), String> {
        let (args, state) = self.object(id, &["numpy"], "dtype")?;
        let args = self
            .tuple(args, 3)
            .map_err(|e| format!("dtype args: {e}"))?;
        let code = self.text(args[0])?;
        let (kind, size) = code.split_at(code.len().min(1));
        let itemsize: usize = match (kind, size.parse::<usize>()) {
            ("f" | "i" | "u" | "b", Ok(n @ (1 | 2 | 4 | 8))) => n,
            _ => return Err(format!("unsupported dtype {code:?}")),
        };
        let state = state.ok_or("the dtype has no state (no BUILD)")?;
        let state = match self.get(state) {
            Value::Tuple(items) if items.len() >= 2 => items,
            other => {
                return Err(format!(
                    "dtype state: expected a tuple, found {}",
                    self.describe(other)
                ))
            }
        };
        let order = self.text(state[1])?;
        if !matches!(order, "<" | ">" | "|" | "=") {
            return Err(format!("dtype byte order {order:?} is not one of < > | ="));
        }
        Ok((format!("{order}{code}"), itemsize))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Writes pickles opcode by opcode, the way Python 2's `cPickle.dump(obj, f, 2)` writes
    /// numpy arrays, for tests.
    #[derive(Default)]
    pub(crate) struct Writer {
        pub out: Vec<u8>,
        memo: u8,
    }

    impl Writer {
        pub fn op(&mut self, bytes: &[u8]) -> &mut Self {
            self.out.extend_from_slice(bytes);
            self
        }
        pub fn put(&mut self) -> u8 {
            let key = self.memo;
            self.op(&[b'q', key]);
            self.memo += 1;
            key
        }
        pub fn short_str(&mut self, s: &[u8]) -> &mut Self {
            self.op(&[b'U', s.len() as u8]).op(s)
        }
        pub fn binint1(&mut self, v: u8) -> &mut Self {
            self.op(&[b'K', v])
        }
        pub fn int(&mut self, v: usize) -> &mut Self {
            if v < 256 {
                self.op(&[b'K', v as u8])
            } else if v < 65536 {
                self.op(b"M").op(&(v as u16).to_le_bytes())
            } else {
                self.op(b"J").op(&(v as i32).to_le_bytes())
            }
        }
        /// An ndarray of dtype `<{code}` with the given shape and raw data; `dtype_memo` is
        /// where a previous array left the same dtype (it is then fetched with BINGET).
        pub fn ndarray(
            &mut self,
            code: &str,
            shape: &[usize],
            data: &[u8],
            dtype_memo: &mut HashMap<String, u8>,
        ) -> &mut Self {
            self.op(b"cnumpy.core.multiarray\n_reconstruct\n");
            self.put();
            self.op(b"cnumpy\nndarray\n");
            self.put();
            self.binint1(0)
                .op(&[0x85])
                .short_str(b"b")
                .op(&[0x87, b'R']);
            self.put();
            self.op(b"(").binint1(1);
            for &d in shape {
                self.int(d);
            }
            self.op(match shape.len() {
                1 => &[0x85],
                2 => &[0x86],
                _ => panic!("test writer: rank 1 or 2"),
            });
            self.put();
            if let Some(&key) = dtype_memo.get(code) {
                self.op(&[b'h', key]);
            } else {
                self.op(b"cnumpy\ndtype\n");
                self.put();
                self.short_str(code.as_bytes())
                    .binint1(0)
                    .binint1(1)
                    .op(&[0x87, b'R']);
                let key = self.put();
                dtype_memo.insert(code.to_string(), key);
                self.op(b"(").binint1(3).short_str(b"<").op(b"NNN");
                self.op(b"J\xff\xff\xff\xffJ\xff\xff\xff\xff")
                    .binint1(0)
                    .op(b"tb");
            }
            self.op(&[0x89, b'T'])
                .op(&(data.len() as u32).to_le_bytes())
                .op(data);
            self.put();
            self.op(b"tb");
            self.put();
            self
        }
    }

    fn run(bytes: &[u8]) -> Result<Pickle<'_>, PickleError> {
        parse(bytes)
    }

    #[test]
    fn scalars_tuples_and_memo() {
        // (1, 300, -1, b'ab', u'é', None, True, (1, 1)) with the inner 1 fetched from the memo
        let mut w = Writer::default();
        w.op(&[0x80, 2, b'(']).binint1(1);
        w.put();
        w.op(b"M\x2c\x01J\xff\xff\xff\xff").short_str(b"ab");
        w.op(b"X\x02\x00\x00\x00\xc3\xa9N\x88h\x00h\x00\x86t.");
        let p = run(&w.out).unwrap();
        let items = p.tuple(p.root(), 8).unwrap();
        let vals: Vec<&Value> = items.iter().map(|&i| p.get(i)).collect();
        assert_eq!(vals[0], &Value::Int(1));
        assert_eq!(vals[1], &Value::Int(300));
        assert_eq!(vals[2], &Value::Int(-1));
        assert_eq!(vals[3], &Value::Bytes(b"ab"));
        assert_eq!(vals[4], &Value::Str("é"));
        assert_eq!(vals[5], &Value::None);
        assert_eq!(vals[6], &Value::Bool(true));
        let inner = p.tuple(items[7], 2).unwrap();
        assert_eq!((inner[0], inner[1]), (items[0], items[0]));
    }

    #[test]
    fn long1_lists_and_dicts() {
        // ([-2, 2**40], {1: 2, 3: 4})
        let mut w = Writer::default();
        w.op(&[
            0x80, 2, b']', b'(', 0x8a, 1, 0xfe, 0x8a, 6, 0, 0, 0, 0, 0, 1, b'e',
        ]);
        w.op(b"}(K\x01K\x02K\x03K\x04u");
        w.op(&[0x86, b'.']);
        let p = run(&w.out).unwrap();
        let items = p.tuple(p.root(), 2).unwrap();
        let Value::List(list) = p.get(items[0]) else {
            panic!()
        };
        assert_eq!(p.get(list[0]), &Value::Int(-2));
        assert_eq!(p.get(list[1]), &Value::Int(1 << 40));
        let Value::Dict(dict) = p.get(items[1]) else {
            panic!()
        };
        assert_eq!(dict.len(), 2);
    }

    #[test]
    fn ndarray_round_trip() {
        let mut w = Writer::default();
        let mut dtypes = HashMap::new();
        let floats: Vec<u8> = [0.5f32, 0.25, 1.0, 0.0, 0.125, 0.75]
            .iter()
            .flat_map(|f| f.to_le_bytes())
            .collect();
        w.op(&[0x80, 2]);
        w.ndarray("f4", &[2, 3], &floats, &mut dtypes);
        w.ndarray("f4", &[1, 0], &[], &mut dtypes); // second one fetches the dtype from the memo
        w.op(&[0x86, b'.']);
        let p = run(&w.out).unwrap();
        let items = p.tuple(p.root(), 2).unwrap();
        let a = p.ndarray(items[0]).unwrap();
        assert_eq!(a.descr, "<f4");
        assert_eq!(a.shape, vec![2, 3]);
        assert!(!a.fortran_order);
        assert_eq!(a.data, &floats[..]);
        let b = p.ndarray(items[1]).unwrap();
        assert_eq!((b.descr.as_str(), b.shape.as_slice()), ("<f4", &[1, 0][..]));
    }

    #[test]
    fn ndarray_data_length_is_checked() {
        let mut w = Writer::default();
        w.op(&[0x80, 2]);
        w.ndarray("i8", &[3], &[0; 16], &mut HashMap::new());
        w.op(b".");
        let p = run(&w.out).unwrap();
        let err = p.ndarray(p.root()).unwrap_err();
        assert_eq!(
            err,
            "array of shape [3] and dtype <i8 needs 24 bytes of data, found 16"
        );
    }

    #[test]
    fn errors_name_opcode_and_offset() {
        let err = run(&[0x80, 2, b'G', 0, 0, 0, 0, 0, 0, 0, 0, b'.']).unwrap_err();
        assert_eq!(
            err.to_string(),
            "pickle: unsupported opcode BINFLOAT (0x47) (at offset 2)"
        );
        let err = run(&[0x80, 2, 0xff]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "pickle: unsupported byte 0xff, which is no pickle opcode (at offset 2)"
        );
        let err = run(&[0x80, 5, b'N', b'.']).unwrap_err();
        assert_eq!(
            err.to_string(),
            "pickle: PROTO: protocol 5 is not supported; only protocols 2 to 4 (at offset 0)"
        );
        let err = run(&[0x80, 2, b'N']).unwrap_err();
        assert_eq!(err.offset, 3);
        assert!(err.message.contains("without a STOP"));
        let err = run(&[0x80, 2, b'T', 0xff, 0xff, 0xff, 0x7f, b'.']).unwrap_err();
        assert_eq!(
            err.to_string(),
            "pickle: BINSTRING: needs 2147483647 more bytes, but the pickle ends after 1 (at offset 2)"
        );
        let err = run(&[0x80, 2, b'T', 0xff, 0xff, 0xff, 0xff, b'.']).unwrap_err();
        assert!(err.message.contains("negative string length -1"), "{err}");
        let err = run(&[0x80, 2, b'h', 7, b'.']).unwrap_err();
        assert!(err.message.contains("memo key 7 was never stored"), "{err}");
        let err = run(&[0x80, 2, b't', b'.']).unwrap_err();
        assert!(err.message.contains("no MARK"), "{err}");
        let err = run(&[0x80, 2, b'(', b'R', b'.']).unwrap_err();
        assert!(err.message.contains("stack is empty"), "{err}");
        let err = run(&[0x80, 2, b'N', b'N', b'.']).unwrap_err();
        assert!(err.message.contains("left on the stack"), "{err}");
        let err = run(&[0x80, 2, b'N', b'.', 0]).unwrap_err();
        assert!(err.message.contains("1 bytes follow"), "{err}");
        let err = run(&[0x80, 2, b'N', b')', b'R', b'.']).unwrap_err();
        assert!(err.message.contains("callable is not a global"), "{err}");
        let err = run(&[0x80, 2, b'N', b'N', b'b', b'.']).unwrap_err();
        assert!(err.message.contains("not an object"), "{err}");
    }

    #[test]
    fn op_count_is_capped() {
        let mut bytes = vec![0x80, 2];
        bytes.extend(vec![b'N'; MAX_OPS + 10]);
        let err = run(&bytes).unwrap_err();
        assert!(err.message.contains("more than"), "{err}");
    }

    #[test]
    fn deep_nesting_does_not_overflow_the_stack() {
        // 50 000 nested 1-tuples: fine to build, to drop, and to reject as not-an-array.
        let mut bytes = vec![0x80, 2, b'N'];
        bytes.extend(vec![0x85; 50_000]);
        bytes.push(b'.');
        let p = run(&bytes).unwrap();
        assert!(p.ndarray(p.root()).is_err());
    }
}
