//! GGUF v3: the container llama.cpp (and so Ollama) loads models and LoRA adapters from.
//!
//! Layout: magic `GGUF`, version, tensor count, KV count, the KVs, the tensor infos, padding to the
//! alignment, then the tensor data, each tensor starting at an aligned offset relative to the start of
//! the data section. All integers are little-endian. Dimensions are in ggml order: `ne[0]` is the
//! fastest-varying one, i.e. the reverse of a numpy/safetensors shape.
//!
//! The reader parses the header and tensor table only (never the tensor data), so it reads a
//! multi-gigabyte model in the time it takes to read its tokenizer. The writer takes the whole tensor
//! table up front and then the tensors' bytes one at a time, so callers can stream.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::Path;

pub(crate) const MAGIC: [u8; 4] = *b"GGUF";
pub(crate) const VERSION: u32 = 3;
pub(crate) const DEFAULT_ALIGNMENT: u64 = 32;

/// A ggml tensor type id, as stored in a GGUF tensor info.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GgmlType(pub u32);

impl GgmlType {
    /// 32-bit IEEE float.
    pub const F32: Self = Self(0);
    /// 16-bit IEEE float.
    pub const F16: Self = Self(1);
    /// Blocks of 32 values: an f16 scale and 4-bit values (18 bytes).
    pub const Q4_0: Self = Self(2);
    pub(crate) const Q4_1: Self = Self(3);
    /// Blocks of 32 values: an f16 scale and 5-bit values (22 bytes).
    pub const Q5_0: Self = Self(6);
    pub(crate) const Q5_1: Self = Self(7);
    /// Blocks of 32 values: an f16 scale and 8-bit values (34 bytes).
    pub const Q8_0: Self = Self(8);
    /// ggml's intermediate type for dot products (36-byte blocks of 32); sized, never converted here.
    pub const Q8_1: Self = Self(9);
    pub(crate) const Q2_K: Self = Self(10);
    pub(crate) const Q3_K: Self = Self(11);
    pub(crate) const Q4_K: Self = Self(12);
    pub(crate) const Q5_K: Self = Self(13);
    pub(crate) const Q6_K: Self = Self(14);
    /// ggml's intermediate type for K-quant dot products (292-byte blocks of 256); sized, never
    /// converted here.
    pub const Q8_K: Self = Self(15);
    /// bfloat16: f32's exponent range with 8 bits of precision.
    pub const BF16: Self = Self(30);
    pub(crate) const MXFP4: Self = Self(39);

    /// `(name, elements per block, bytes per block)`, from ggml's type traits table.
    fn traits(self) -> Option<(&'static str, u64, u64)> {
        Some(match self.0 {
            0 => ("F32", 1, 4),
            1 => ("F16", 1, 2),
            2 => ("Q4_0", 32, 18),
            3 => ("Q4_1", 32, 20),
            6 => ("Q5_0", 32, 22),
            7 => ("Q5_1", 32, 24),
            8 => ("Q8_0", 32, 34),
            9 => ("Q8_1", 32, 36),
            10 => ("Q2_K", 256, 84),
            11 => ("Q3_K", 256, 110),
            12 => ("Q4_K", 256, 144),
            13 => ("Q5_K", 256, 176),
            14 => ("Q6_K", 256, 210),
            15 => ("Q8_K", 256, 292),
            16 => ("IQ2_XXS", 256, 66),
            17 => ("IQ2_XS", 256, 74),
            18 => ("IQ3_XXS", 256, 98),
            19 => ("IQ1_S", 256, 50),
            20 => ("IQ4_NL", 32, 18),
            21 => ("IQ3_S", 256, 110),
            22 => ("IQ2_S", 256, 82),
            23 => ("IQ4_XS", 256, 136),
            24 => ("I8", 1, 1),
            25 => ("I16", 1, 2),
            26 => ("I32", 1, 4),
            27 => ("I64", 1, 8),
            28 => ("F64", 1, 8),
            29 => ("IQ1_M", 256, 56),
            30 => ("BF16", 1, 2),
            // Repacked layouts older GGUFs may hold: Q4_0 / IQ4_NL blocks in another order.
            31 => ("Q4_0_4_4", 32, 18),
            32 => ("Q4_0_4_8", 32, 18),
            33 => ("Q4_0_8_8", 32, 18),
            34 => ("TQ1_0", 256, 54),
            35 => ("TQ2_0", 256, 66),
            36 => ("IQ4_NL_4_4", 32, 18),
            37 => ("IQ4_NL_4_8", 32, 18),
            38 => ("IQ4_NL_8_8", 32, 18),
            39 => ("MXFP4", 32, 17),
            _ => return None,
        })
    }

    /// The type of a ggml type name (`Q4_K`, `F16`), as Ollama's API reports them.
    pub fn from_name(name: &str) -> Option<Self> {
        (0..64)
            .map(GgmlType)
            .find(|t| t.traits().is_some_and(|(n, _, _)| n.eq_ignore_ascii_case(name)))
    }

    /// Whether this table knows the type (its block layout, so its size).
    pub(crate) fn is_known(self) -> bool {
        self.traits().is_some()
    }

    /// ggml's name (`Q4_K`, `BF16`), or `type N` for an id this table does not know.
    pub fn name(self) -> String {
        self.traits()
            .map_or_else(|| format!("type {}", self.0), |t| t.0.to_string())
    }

    /// Bytes taken by a tensor of this type with dimensions `ne` (ggml order), or `None` for an
    /// unknown type, a row length that is not a whole number of blocks, or a size beyond `u64`.
    pub fn byte_size(self, ne: &[u64]) -> Option<u64> {
        self.size(ne).ok()
    }

    /// [`byte_size`](Self::byte_size) with the reason when there is none, for messages.
    fn size(self, ne: &[u64]) -> Result<u64, SizeError> {
        let (_, block, bytes) = self.traits().ok_or(SizeError::Unknown)?;
        let row = *ne.first().unwrap_or(&1);
        if !row.is_multiple_of(block) {
            return Err(SizeError::PartialBlock);
        }
        let rows = ne
            .iter()
            .skip(1)
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .ok_or(SizeError::Overflow)?;
        (row / block)
            .checked_mul(bytes)
            .and_then(|b| b.checked_mul(rows))
            .ok_or(SizeError::Overflow)
    }
}

/// Why a tensor has no byte size.
#[derive(Clone, Copy, Debug, PartialEq)]
enum SizeError {
    Unknown,
    PartialBlock,
    Overflow,
}

/// The message for a tensor `name` of type `ty` and dimensions `ne` without a byte size.
fn size_message(name: &str, ty: GgmlType, ne: &[u64], e: SizeError) -> String {
    match e {
        SizeError::Unknown => format!(
            "tensor `{name}` has type {}, which this tool does not know the size of",
            ty.0
        ),
        SizeError::PartialBlock => {
            let block = ty.traits().map_or(1, |t| t.1);
            format!(
                "tensor `{name}`: a row of {} is not a whole number of {ty} blocks ({block} values)",
                ne.first().unwrap_or(&1)
            )
        }
        SizeError::Overflow => format!("tensor `{name}`: dimensions {ne:?} overflow (their size does not fit 64 bits)"),
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// Value type 0.
    U8(u8),
    /// Value type 1.
    I8(i8),
    /// Value type 2.
    U16(u16),
    /// Value type 3.
    I16(i16),
    /// Value type 4.
    U32(u32),
    /// Value type 5.
    I32(i32),
    /// Value type 6.
    F32(f32),
    /// Value type 7: one byte, 0 or 1.
    Bool(bool),
    /// Value type 8: UTF-8, with a `u64` byte length in the file.
    String(String),
    /// Value type 9: an element type, a `u64` count, the elements.
    Array(Array),
    /// Value type 10.
    U64(u64),
    /// Value type 11.
    I64(i64),
    /// Value type 12.
    F64(f64),
}

/// A metadata array, one typed vector per element type: a vocabulary of 262,144 tokens or a
/// megabyte of `u8` costs about what it takes in the file, not a 32-byte [`Value`] per element.
/// The element type is kept, so an empty array round-trips.
#[derive(Clone, Debug, PartialEq)]
pub enum Array {
    /// Elements of value type 0.
    U8(Vec<u8>),
    /// Elements of value type 1.
    I8(Vec<i8>),
    /// Elements of value type 2.
    U16(Vec<u16>),
    /// Elements of value type 3.
    I16(Vec<i16>),
    /// Elements of value type 4.
    U32(Vec<u32>),
    /// Elements of value type 5.
    I32(Vec<i32>),
    /// Elements of value type 6.
    F32(Vec<f32>),
    /// Elements of value type 7.
    Bool(Vec<bool>),
    /// Elements of value type 8 (a tokenizer's vocabulary, merges).
    String(Strings),
    /// Elements of value type 10.
    U64(Vec<u64>),
    /// Elements of value type 11.
    I64(Vec<i64>),
    /// Elements of value type 12.
    F64(Vec<f64>),
}

/// A list of strings in one buffer plus their end offsets: 8 bytes per string besides the text,
/// the same as the length field each string has in the file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Strings {
    text: String,
    ends: Vec<usize>,
}

impl Strings {
    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there are no strings (an empty string counts as one).
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub(crate) fn push(&mut self, s: &str) {
        self.text.push_str(s);
        self.ends.push(self.text.len());
    }

    pub(crate) fn get(&self, i: usize) -> Option<&str> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        self.text.get(start..end)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &str> {
        (0..self.len()).filter_map(|i| self.get(i))
    }
}

impl<S: AsRef<str>> FromIterator<S> for Strings {
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> Self {
        let mut out = Strings::default();
        for s in iter {
            out.push(s.as_ref());
        }
        out
    }
}

impl Array {
    /// The GGUF value type id of the elements.
    pub(crate) fn elem_type(&self) -> u32 {
        match self {
            Array::U8(_) => 0,
            Array::I8(_) => 1,
            Array::U16(_) => 2,
            Array::I16(_) => 3,
            Array::U32(_) => 4,
            Array::I32(_) => 5,
            Array::F32(_) => 6,
            Array::Bool(_) => 7,
            Array::String(_) => 8,
            Array::U64(_) => 10,
            Array::I64(_) => 11,
            Array::F64(_) => 12,
        }
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        match self {
            Array::U8(v) => v.len(),
            Array::I8(v) => v.len(),
            Array::U16(v) => v.len(),
            Array::I16(v) => v.len(),
            Array::U32(v) => v.len(),
            Array::I32(v) => v.len(),
            Array::F32(v) => v.len(),
            Array::Bool(v) => v.len(),
            Array::String(v) => v.len(),
            Array::U64(v) => v.len(),
            Array::I64(v) => v.len(),
            Array::F64(v) => v.len(),
        }
    }

    /// Whether there are no elements; an empty array still has its element type.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every element as an unsigned integer (per-layer counts), `None` for a non-integer array or
    /// a negative element.
    pub(crate) fn as_u64s(&self) -> Option<Vec<u64>> {
        fn all<T: Copy>(v: &[T], f: impl Fn(T) -> Option<u64>) -> Option<Vec<u64>> {
            v.iter().map(|&x| f(x)).collect()
        }
        match self {
            Array::U8(v) => all(v, |x| Some(x.into())),
            Array::U16(v) => all(v, |x| Some(x.into())),
            Array::U32(v) => all(v, |x| Some(x.into())),
            Array::U64(v) => Some(v.clone()),
            Array::I8(v) => all(v, |x| u64::try_from(x).ok()),
            Array::I16(v) => all(v, |x| u64::try_from(x).ok()),
            Array::I32(v) => all(v, |x| u64::try_from(x).ok()),
            Array::I64(v) => all(v, |x| u64::try_from(x).ok()),
            Array::F32(_) | Array::F64(_) | Array::Bool(_) | Array::String(_) => None,
        }
    }

    /// The strings of a string array, `None` for any other element type.
    pub fn as_strings(&self) -> Option<&Strings> {
        match self {
            Array::String(s) => Some(s),
            _ => None,
        }
    }
}

impl Value {
    fn type_id(&self) -> u32 {
        match self {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::String(_) => 8,
            Value::Array(..) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }

    /// The value as an unsigned integer, whichever integer type the writer chose.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float: either float type, or an integer ([`as_u64`](Self::as_u64)'s, so not a
    /// negative one); `None` for anything else.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The array, `None` for a scalar or a string.
    pub fn as_array(&self) -> Option<&Array> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    pub(crate) fn array_len(&self) -> Option<usize> {
        self.as_array().map(Array::len)
    }
}

/// One entry of the tensor table.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    /// The tensor's name, unique in the file (`blk.0.attn_q.weight`).
    pub name: String,
    /// ggml order: `ne[0]` varies fastest.
    pub ne: Vec<u64>,
    /// The element type; may be one this tool does not know (then the tensor is not sized).
    pub ty: GgmlType,
    /// Relative to the start of the data section.
    pub offset: u64,
}

/// A parsed GGUF header: metadata and tensor table, no tensor data.
#[derive(Clone, Debug)]
pub struct Header {
    /// The GGUF version: 2 or 3.
    pub version: u32,
    /// The metadata, in file order.
    pub kvs: Vec<(String, Value)>,
    /// The tensor table, in file order; every tensor of a known type lies inside the file.
    pub tensors: Vec<TensorInfo>,
    /// `general.alignment` (a power of two), or 32 when the file does not set it.
    pub alignment: u64,
    /// Absolute file offset of the data section.
    pub data_offset: u64,
}

impl Header {
    /// The metadata value of `key` (the first, should a file repeat one).
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.kvs.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The metadata value of `key` if it is a string.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    /// The tensor-table entry named `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// The most header (metadata and tensor table) the reader takes. The largest real headers (a
/// 262k-token vocabulary with its merges) are tens of MiB; this bound keeps a crafted length field
/// in a huge (or sparse) file from making the reader take gigabytes.
pub(crate) const MAX_HEADER_BYTES: u64 = 256 << 20;

/// Elements a list is given room for before any of them is read: a count field alone never
/// allocates more than this; the list then grows as elements really arrive.
const PREALLOC: usize = 1024;

/// Counts bytes so the reader knows where the data section starts without seeking.
struct Counting<R> {
    inner: R,
    pos: u64,
    /// The file's size (as known: a prefix's announced size), for messages and length checks.
    file_len: u64,
    /// Scratch buffer for strings.
    scratch: Vec<u8>,
}

impl<R: Read> Counting<R> {
    fn new(inner: R, file_len: u64) -> Self {
        Counting {
            inner,
            pos: 0,
            file_len,
            scratch: Vec::new(),
        }
    }
    fn bytes<const N: usize>(&mut self) -> io::Result<[u8; N]> {
        let mut b = [0u8; N];
        self.inner.read_exact(&mut b)?;
        self.pos += N as u64;
        Ok(b)
    }
    fn u32(&mut self) -> io::Result<u32> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }
    fn u64(&mut self) -> io::Result<u64> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }
    /// A count of items of at least `item_size` bytes each, checked against what is left of the file
    /// and of [`MAX_HEADER_BYTES`]. Only a cheap first check: the items are then read one by one.
    fn len(&mut self, what: &str, item_size: u64) -> io::Result<usize> {
        let n = self.u64()?;
        let at = self.pos - 8;
        let need = n.saturating_mul(item_size);
        if need > self.file_len.saturating_sub(self.pos) {
            return Err(invalid(format!(
                "{what} count {n} at byte {at} exceeds what is left of the file ({} bytes)",
                self.file_len
            )));
        }
        if need > MAX_HEADER_BYTES.saturating_sub(self.pos) {
            return Err(invalid(format!(
                "{what} count {n} at byte {at} would make the header larger than {} MiB, more than any model's: the file is damaged",
                MAX_HEADER_BYTES >> 20
            )));
        }
        usize::try_from(n).map_err(|_| invalid(format!("{what} count {n} at byte {at} does not fit this machine")))
    }
    /// Reads a string's bytes into `scratch` as they arrive (never allocating from the length field).
    fn string_bytes(&mut self) -> io::Result<()> {
        let n = self.len("string", 1)? as u64;
        self.scratch.clear();
        let got = (&mut self.inner).take(n).read_to_end(&mut self.scratch)? as u64;
        self.pos += got;
        if got != n {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the file ends inside a string of {n} bytes"),
            ));
        }
        Ok(())
    }
    fn str(&mut self) -> io::Result<&str> {
        self.string_bytes()?;
        std::str::from_utf8(&self.scratch).map_err(|_| invalid(format!("string before byte {} is not UTF-8", self.pos)))
    }
    fn string(&mut self) -> io::Result<String> {
        self.str().map(str::to_string)
    }
    fn value(&mut self, ty: u32) -> io::Result<Value> {
        Ok(match ty {
            0 => Value::U8(u8::from_le_bytes(self.bytes()?)),
            1 => Value::I8(i8::from_le_bytes(self.bytes()?)),
            2 => Value::U16(u16::from_le_bytes(self.bytes()?)),
            3 => Value::I16(i16::from_le_bytes(self.bytes()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.bytes()?)),
            6 => Value::F32(f32::from_le_bytes(self.bytes()?)),
            7 => Value::Bool(self.bool()?),
            8 => Value::String(self.string()?),
            9 => Value::Array(self.array()?),
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.bytes()?)),
            12 => Value::F64(f64::from_le_bytes(self.bytes()?)),
            t => {
                return Err(invalid(format!(
                    "unknown metadata value type {t} at byte {}",
                    self.pos - 4
                )));
            }
        })
    }
    fn bool(&mut self) -> io::Result<bool> {
        match self.bytes::<1>()?[0] {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(invalid(format!("bool value {b} at byte {}", self.pos - 1))),
        }
    }
    /// `n` items read by `item`, in a list that grows as they arrive.
    fn items<T>(&mut self, n: usize, mut item: impl FnMut(&mut Self) -> io::Result<T>) -> io::Result<Vec<T>> {
        let mut out = Vec::with_capacity(n.min(PREALLOC));
        for _ in 0..n {
            out.push(item(self)?);
        }
        Ok(out)
    }
    fn array(&mut self) -> io::Result<Array> {
        let elem = self.u32()?;
        // Smallest encoding of one element: strings carry an 8-byte length.
        let item_size = match elem {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            8 | 10..=12 => 8,
            9 => return Err(invalid("nested arrays are not used by llama.cpp and not supported")),
            t => {
                return Err(invalid(format!(
                    "unknown array element type {t} at byte {}",
                    self.pos - 4
                )));
            }
        };
        let n = self.len("array", item_size)?;
        Ok(match elem {
            0 => Array::U8(self.items(n, |r| Ok(r.bytes::<1>()?[0]))?),
            1 => Array::I8(self.items(n, |r| Ok(i8::from_le_bytes(r.bytes()?)))?),
            2 => Array::U16(self.items(n, |r| Ok(u16::from_le_bytes(r.bytes()?)))?),
            3 => Array::I16(self.items(n, |r| Ok(i16::from_le_bytes(r.bytes()?)))?),
            4 => Array::U32(self.items(n, Self::u32)?),
            5 => Array::I32(self.items(n, |r| Ok(i32::from_le_bytes(r.bytes()?)))?),
            6 => Array::F32(self.items(n, |r| Ok(f32::from_le_bytes(r.bytes()?)))?),
            7 => Array::Bool(self.items(n, Self::bool)?),
            8 => {
                let mut out = Strings::default();
                for _ in 0..n {
                    out.push(self.str()?);
                }
                Array::String(out)
            }
            10 => Array::U64(self.items(n, Self::u64)?),
            11 => Array::I64(self.items(n, |r| Ok(i64::from_le_bytes(r.bytes()?)))?),
            _ => Array::F64(self.items(n, |r| Ok(f64::from_le_bytes(r.bytes()?)))?),
        })
    }
    /// Magic, version, tensor count and KV count.
    fn preamble(&mut self) -> io::Result<(u32, usize, usize)> {
        let magic: [u8; 4] = self
            .bytes()
            .map_err(|_| invalid("file is shorter than a GGUF header"))?;
        if magic != MAGIC {
            return Err(invalid(format!(
                "not a GGUF file (starts with {magic:02x?}, expected \"GGUF\")"
            )));
        }
        let version = self.u32()?;
        if !(2..=3).contains(&version) {
            return Err(invalid(format!(
                "GGUF version {version} is not supported (2 and 3 are)"
            )));
        }
        // A tensor info takes at least 32 bytes, a KV at least 13.
        let n_tensors = self.len("tensor count", 32)?;
        let n_kv = self.len("metadata count", 13)?;
        Ok((version, n_tensors, n_kv))
    }
    fn kv(&mut self) -> io::Result<(String, Value)> {
        let key = self.string()?;
        let ty = self.u32()?;
        let value = self
            .value(ty)
            .map_err(|e| io::Error::new(e.kind(), format!("metadata `{key}`: {e}")))?;
        Ok((key, value))
    }
    fn tensor_info(&mut self) -> io::Result<TensorInfo> {
        let name = self.string()?;
        let n_dims = self.u32()?;
        if n_dims == 0 || n_dims > 4 {
            return Err(invalid(format!(
                "tensor `{name}` has {n_dims} dimensions (ggml allows 1 to 4)"
            )));
        }
        let ne = (0..n_dims).map(|_| self.u64()).collect::<io::Result<Vec<_>>>()?;
        let ty = GgmlType(self.u32()?);
        let offset = self.u64()?;
        Ok(TensorInfo { name, ne, ty, offset })
    }
}

/// The metadata value `key` of a GGUF file of `file_len` bytes, read from the first bytes of the file
/// only (`prefix`, e.g. from a Range request). `None` when `prefix` is not a GGUF header or ends
/// before the key is reached. Memory follows `prefix`, not `file_len` (which a server announces).
pub fn kv_in_prefix(prefix: &[u8], file_len: u64, key: &str) -> Option<Value> {
    let mut r = Counting::new(io::Cursor::new(prefix), file_len);
    let (_, _, n_kv) = r.preamble().ok()?;
    for _ in 0..n_kv {
        let (k, value) = r.kv().ok()?;
        if k == key {
            return Some(value);
        }
    }
    None
}

/// Whether the file at `path` starts with the GGUF magic.
pub(crate) fn is_gguf(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| io::Read::read_exact(&mut f, &mut magic))
        .is_ok()
        && &magic == b"GGUF"
}

/// Reads the header and tensor table of a GGUF file, checking that every tensor lies inside the file.
/// Memory is bounded by the bytes really read (at most 256 MiB of header), never by a length field.
pub fn read_header(path: &Path) -> io::Result<Header> {
    let file = File::open(path)?;
    let file_len = file.metadata()?.len();
    let mut r = Counting::new(BufReader::with_capacity(1 << 16, file), file_len);
    let (version, n_tensors, n_kv) = r.preamble()?;
    let kvs = r.items(n_kv, Counting::kv)?;
    let tensors = r.items(n_tensors, Counting::tensor_info)?;
    let alignment = match kvs.iter().find(|(k, _)| k == "general.alignment") {
        Some((_, v)) => v
            .as_u64()
            .filter(|a| a.is_power_of_two())
            .ok_or_else(|| invalid(format!("general.alignment {v:?} is not a power of two")))?,
        None => DEFAULT_ALIGNMENT,
    };
    let data_offset = r
        .pos
        .checked_next_multiple_of(alignment)
        .ok_or_else(|| invalid("general.alignment is too large"))?;
    let mut names = std::collections::HashSet::with_capacity(tensors.len());
    for t in &tensors {
        if !names.insert(t.name.as_str()) {
            return Err(invalid(format!("tensor `{}` is listed twice", t.name)));
        }
        check_tensor(t, alignment, data_offset, file_len)?;
    }
    Ok(Header {
        version,
        kvs,
        tensors,
        alignment,
        data_offset,
    })
}

/// A tensor's shape, alignment and extent, as llama.cpp's loader checks them.
fn check_tensor(t: &TensorInfo, alignment: u64, data_offset: u64, file_len: u64) -> io::Result<()> {
    if t.ne.contains(&0) {
        return Err(invalid(format!(
            "tensor `{}` has dimensions {:?}: an empty tensor is no model weight",
            t.name, t.ne
        )));
    }
    // ggml counts elements in int64_t.
    let elements =
        t.ne.iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&n| n <= i64::MAX as u64);
    if elements.is_none() {
        return Err(invalid(size_message(&t.name, t.ty, &t.ne, SizeError::Overflow)));
    }
    if !t.offset.is_multiple_of(alignment) {
        return Err(invalid(format!(
            "tensor `{}` offset {} is not aligned to {alignment}",
            t.name, t.offset
        )));
    }
    // A type this table does not know (newer ggml) cannot be sized; its shape is still right,
    // which is all a LoRA needs, so it is only the bounds check that is skipped.
    let size = match t.ty.size(&t.ne) {
        Ok(size) => size,
        Err(SizeError::Unknown) => return Ok(()),
        Err(e) => return Err(invalid(size_message(&t.name, t.ty, &t.ne, e))),
    };
    let end = data_offset.checked_add(t.offset).and_then(|o| o.checked_add(size));
    if end.is_none_or(|end| end > file_len) {
        return Err(invalid(format!(
            "tensor `{}` ({} bytes at data offset {}) extends past the end of the file ({file_len} bytes): the file is truncated",
            t.name, size, t.offset
        )));
    }
    Ok(())
}

/// Reads the bytes of tensor `t` of `header` (read from `file`) into `buf`, resized to fit. The size
/// was checked against the file by [`read_header`]; an unknown type is an error.
pub fn read_tensor_data(file: &File, header: &Header, t: &TensorInfo, buf: &mut Vec<u8>) -> io::Result<()> {
    let size =
        t.ty.size(&t.ne)
            .map_err(|e| invalid(size_message(&t.name, t.ty, &t.ne, e)))?;
    let start = header
        .data_offset
        .checked_add(t.offset)
        .ok_or_else(|| invalid(format!("tensor `{}` offset overflows", t.name)))?;
    let len = usize::try_from(size)
        .map_err(|_| invalid(format!("tensor `{}` ({size} bytes) does not fit this machine", t.name)))?;
    buf.clear();
    buf.try_reserve_exact(len).map_err(|_| {
        io::Error::new(
            io::ErrorKind::OutOfMemory,
            format!("tensor `{}`: {size} bytes of memory are not available", t.name),
        )
    })?;
    buf.resize(len, 0);
    crate::formats::peft::read_exact_at(file, buf, start).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("reading tensor `{}` ({size} bytes at byte {start}): {e}", t.name),
        )
    })
}

/// What the writer needs to know about a tensor before any data is written.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorSpec {
    /// The tensor's name; names are not checked for uniqueness, which llama.cpp requires.
    pub name: String,
    /// Dimensions in ggml order (`ne[0]` varies fastest), 1 to 4 of them.
    pub ne: Vec<u64>,
    /// The element type; the writer refuses one whose size it does not know.
    pub ty: GgmlType,
}

impl TensorSpec {
    /// The bytes the tensor takes; an error names the tensor when its type or shape has no size
    /// (a type this tool does not know, a partial block, dimensions that overflow).
    pub fn byte_size(&self) -> io::Result<u64> {
        if self.ne.is_empty() || self.ne.len() > 4 {
            return Err(invalid(format!(
                "tensor `{}` has {} dimensions (ggml allows 1 to 4)",
                self.name,
                self.ne.len()
            )));
        }
        self.ty.size(&self.ne).map_err(|e| {
            let msg = size_message(&self.name, self.ty, &self.ne, e);
            invalid(format!("{msg}; it cannot be written"))
        })
    }
}

/// Streams a GGUF file: header first, then each tensor's bytes in table order, whole or in pieces.
pub struct Writer<W: Write> {
    out: W,
    sizes: Vec<u64>,
    next: usize,
    /// Bytes of the current tensor written so far.
    written: u64,
}

fn put_string(out: &mut impl Write, s: &str) -> io::Result<()> {
    out.write_all(&(s.len() as u64).to_le_bytes())?;
    out.write_all(s.as_bytes())
}

fn put_value(out: &mut impl Write, v: &Value) -> io::Result<()> {
    match v {
        Value::U8(x) => out.write_all(&x.to_le_bytes()),
        Value::I8(x) => out.write_all(&x.to_le_bytes()),
        Value::U16(x) => out.write_all(&x.to_le_bytes()),
        Value::I16(x) => out.write_all(&x.to_le_bytes()),
        Value::U32(x) => out.write_all(&x.to_le_bytes()),
        Value::I32(x) => out.write_all(&x.to_le_bytes()),
        Value::F32(x) => out.write_all(&x.to_le_bytes()),
        Value::Bool(x) => out.write_all(&[u8::from(*x)]),
        Value::String(s) => put_string(out, s),
        Value::Array(a) => put_array(out, a),
        Value::U64(x) => out.write_all(&x.to_le_bytes()),
        Value::I64(x) => out.write_all(&x.to_le_bytes()),
        Value::F64(x) => out.write_all(&x.to_le_bytes()),
    }
}

fn put_array(out: &mut impl Write, a: &Array) -> io::Result<()> {
    fn each<T: Copy, const N: usize>(out: &mut impl Write, v: &[T], f: impl Fn(T) -> [u8; N]) -> io::Result<()> {
        v.iter().try_for_each(|&x| out.write_all(&f(x)))
    }
    out.write_all(&a.elem_type().to_le_bytes())?;
    out.write_all(&(a.len() as u64).to_le_bytes())?;
    match a {
        Array::U8(v) => out.write_all(v),
        Array::I8(v) => each(out, v, i8::to_le_bytes),
        Array::U16(v) => each(out, v, u16::to_le_bytes),
        Array::I16(v) => each(out, v, i16::to_le_bytes),
        Array::U32(v) => each(out, v, u32::to_le_bytes),
        Array::I32(v) => each(out, v, i32::to_le_bytes),
        Array::F32(v) => each(out, v, f32::to_le_bytes),
        Array::Bool(v) => each(out, v, |b| [u8::from(b)]),
        Array::String(v) => v.iter().try_for_each(|s| put_string(out, s)),
        Array::U64(v) => each(out, v, u64::to_le_bytes),
        Array::I64(v) => each(out, v, i64::to_le_bytes),
        Array::F64(v) => each(out, v, f64::to_le_bytes),
    }
}

const PADDING: [u8; DEFAULT_ALIGNMENT as usize] = [0; DEFAULT_ALIGNMENT as usize];

impl<W: Write> Writer<W> {
    /// Writes the header (with the default alignment of 32) and returns a writer expecting the
    /// tensors' data in the order of `tensors`.
    pub fn new(mut out: W, kvs: &[(String, Value)], tensors: &[TensorSpec]) -> io::Result<Self> {
        let mut pos = 0u64;
        let mut header = Vec::new();
        header.extend_from_slice(&MAGIC);
        header.extend_from_slice(&VERSION.to_le_bytes());
        header.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        header.extend_from_slice(&(kvs.len() as u64).to_le_bytes());
        for (key, value) in kvs {
            put_string(&mut header, key)?;
            header.extend_from_slice(&value.type_id().to_le_bytes());
            put_value(&mut header, value)?;
        }
        let mut offset = 0u64;
        let mut sizes = Vec::with_capacity(tensors.len());
        for t in tensors {
            put_string(&mut header, &t.name)?;
            header.extend_from_slice(&(t.ne.len() as u32).to_le_bytes());
            for d in &t.ne {
                header.extend_from_slice(&d.to_le_bytes());
            }
            header.extend_from_slice(&t.ty.0.to_le_bytes());
            header.extend_from_slice(&offset.to_le_bytes());
            let size = t.byte_size()?;
            sizes.push(size);
            offset = size
                .checked_next_multiple_of(DEFAULT_ALIGNMENT)
                .and_then(|s| offset.checked_add(s))
                .ok_or_else(|| {
                    invalid(format!(
                        "tensor `{}`: the tensors' total size overflows 64 bits",
                        t.name
                    ))
                })?;
        }
        pos += header.len() as u64;
        out.write_all(&header)?;
        out.write_all(&PADDING[..(pos.next_multiple_of(DEFAULT_ALIGNMENT) - pos) as usize])?;
        Ok(Self {
            out,
            sizes,
            next: 0,
            written: 0,
        })
    }

    /// Writes the next tensor's bytes, then the padding that aligns the one after it.
    pub fn write_tensor(&mut self, data: &[u8]) -> io::Result<()> {
        self.write_part(data)?;
        self.end_tensor()
    }

    /// Appends bytes to the current tensor (for tensors streamed in pieces).
    pub fn write_part(&mut self, data: &[u8]) -> io::Result<()> {
        let expected = *self
            .sizes
            .get(self.next)
            .ok_or_else(|| invalid("more tensors written than declared"))?;
        if self.written.saturating_add(data.len() as u64) > expected {
            return Err(invalid(format!(
                "tensor {} gets more than its declared {expected} bytes",
                self.next
            )));
        }
        self.out.write_all(data)?;
        self.written += data.len() as u64;
        Ok(())
    }

    /// Ends the current tensor: checks it is complete and pads to the next alignment.
    pub fn end_tensor(&mut self) -> io::Result<()> {
        let expected = *self
            .sizes
            .get(self.next)
            .ok_or_else(|| invalid("more tensors written than declared"))?;
        if self.written != expected {
            return Err(invalid(format!(
                "tensor {} has {} bytes, declared {expected}",
                self.next, self.written
            )));
        }
        self.out
            .write_all(&PADDING[..(expected.next_multiple_of(DEFAULT_ALIGNMENT) - expected) as usize])?;
        self.next += 1;
        self.written = 0;
        Ok(())
    }

    /// Checks that every declared tensor was written, flushes, and returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        if self.next != self.sizes.len() {
            return Err(invalid(format!(
                "{} of {} tensors written",
                self.next,
                self.sizes.len()
            )));
        }
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantized_sizes_follow_block_layout() {
        // 4096 x 4096 Q4_K: 16 blocks of 144 bytes per row.
        assert_eq!(GgmlType::Q4_K.byte_size(&[4096, 4096]), Some(16 * 144 * 4096));
        assert_eq!(GgmlType::Q6_K.byte_size(&[4096, 2]), Some(16 * 210 * 2));
        assert_eq!(GgmlType::Q8_0.byte_size(&[64, 3]), Some(2 * 34 * 3));
        assert_eq!(GgmlType::BF16.byte_size(&[7, 3]), Some(42));
        // A row that is not a whole number of blocks has no valid size.
        assert_eq!(GgmlType::Q4_0.byte_size(&[48, 1]), None);
        assert_eq!(GgmlType(99).byte_size(&[1]), None);
    }

    #[test]
    fn round_trip_header_and_alignment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.gguf");
        let kvs = vec![
            ("general.architecture".to_string(), Value::String("llama".into())),
            ("adapter.lora.alpha".to_string(), Value::F32(16.0)),
            ("x.list".to_string(), Value::Array(Array::U32(vec![1, 2]))),
            ("x.empty".to_string(), Value::Array(Array::String(Strings::default()))),
        ];
        let tensors = vec![
            TensorSpec {
                name: "a".into(),
                ne: vec![3, 1],
                ty: GgmlType::F32,
            },
            TensorSpec {
                name: "b".into(),
                ne: vec![5],
                ty: GgmlType::F16,
            },
        ];
        let mut w = Writer::new(File::create(&path).unwrap(), &kvs, &tensors).unwrap();
        w.write_tensor(&[1u8; 12]).unwrap();
        w.write_tensor(&[2u8; 10]).unwrap();
        w.finish().unwrap();

        let h = read_header(&path).unwrap();
        assert_eq!(h.version, 3);
        assert_eq!(h.kvs, kvs);
        assert_eq!(h.data_offset % 32, 0);
        assert_eq!(h.tensors[0].offset, 0);
        assert_eq!(h.tensors[1].offset, 32);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len() as u64, h.data_offset + 32 + 32);
        assert_eq!(&bytes[h.data_offset as usize..][..12], &[1u8; 12]);
        assert_eq!(&bytes[(h.data_offset + 32) as usize..][..10], &[2u8; 10]);
    }

    /// A header built byte by byte with sizes from ggml's block tables (not from this module's own
    /// table): Q4_K 144 bytes per 256 values, Q6_K 210 per 256, Q8_0 34 per 32.
    #[test]
    fn quantized_tensor_sizes_read_from_a_hand_built_file() {
        let tensors: [(&str, u32, [u64; 2], u64); 3] = [
            ("a.q4k", 12, [256, 2], 2 * 144),
            ("b.q6k", 14, [512, 1], 2 * 210),
            ("c.q80", 8, [64, 3], 3 * 2 * 34),
        ];
        let mut b = Vec::new();
        b.extend_from_slice(b"GGUF");
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes());
        b.extend_from_slice(&(20u64).to_le_bytes());
        b.extend_from_slice(b"general.architecture");
        b.extend_from_slice(&8u32.to_le_bytes());
        b.extend_from_slice(&5u64.to_le_bytes());
        b.extend_from_slice(b"llama");
        let mut offset = 0u64;
        let mut offsets = Vec::new();
        for (name, ty, ne, size) in tensors {
            b.extend_from_slice(&(name.len() as u64).to_le_bytes());
            b.extend_from_slice(name.as_bytes());
            b.extend_from_slice(&2u32.to_le_bytes());
            b.extend_from_slice(&ne[0].to_le_bytes());
            b.extend_from_slice(&ne[1].to_le_bytes());
            b.extend_from_slice(&ty.to_le_bytes());
            b.extend_from_slice(&offset.to_le_bytes());
            offsets.push(offset);
            offset = (offset + size).div_ceil(32) * 32;
        }
        let data_start = b.len().div_ceil(32) * 32;
        let end = data_start as u64 + offsets[2] + tensors[2].3;
        b.resize(end as usize, 0);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.gguf");
        std::fs::write(&path, &b).unwrap();
        let h = read_header(&path).unwrap();
        assert_eq!(h.data_offset, data_start as u64);
        for (t, (name, ty, ne, size)) in h.tensors.iter().zip(tensors) {
            assert_eq!((t.name.as_str(), t.ty.0, t.ne.as_slice()), (name, ty, &ne[..]));
            assert_eq!(t.ty.byte_size(&t.ne), Some(size), "{name}");
        }
        assert_eq!(h.tensors[2].offset, 736);
        // One byte short of the last tensor is a truncated file.
        std::fs::write(&path, &b[..b.len() - 1]).unwrap();
        assert!(read_header(&path).unwrap_err().to_string().contains("truncated"));
    }

    /// Only the header is read: a multi-gigabyte model (sparse here) costs what its header costs.
    #[test]
    fn header_of_a_large_quantized_model_without_reading_its_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.gguf");
        // Llama-3.1-8B's layer shapes in Q4_K/Q6_K: about 4.6 GB of data, never written.
        let mut specs = Vec::new();
        for i in 0..32 {
            for (stem, ne, ty) in [
                ("attn_q", [4096, 4096], GgmlType::Q4_K),
                ("attn_k", [4096, 1024], GgmlType::Q4_K),
                ("attn_v", [4096, 1024], GgmlType::Q6_K),
                ("attn_output", [4096, 4096], GgmlType::Q4_K),
                ("ffn_gate", [4096, 14336], GgmlType::Q4_K),
                ("ffn_up", [4096, 14336], GgmlType::Q4_K),
                ("ffn_down", [14336, 4096], GgmlType::Q6_K),
            ] {
                specs.push(TensorSpec {
                    name: format!("blk.{i}.{stem}.weight"),
                    ne: ne.to_vec(),
                    ty,
                });
            }
        }
        let file = File::create(&path).unwrap();
        Writer::new(
            &file,
            &[("general.architecture".into(), Value::String("llama".into()))],
            &specs,
        )
        .unwrap();
        let header_len = file.metadata().unwrap().len();
        let total: u64 = specs.iter().map(|s| s.byte_size().unwrap().next_multiple_of(32)).sum();
        file.set_len(header_len + total).unwrap();
        assert!(total > 4_000_000_000);
        let h = read_header(&path).unwrap();
        assert_eq!(h.tensors.len(), 224);
        assert_eq!(h.tensors[4].ty.byte_size(&h.tensors[4].ne), Some(14336 * 16 * 144));
    }

    #[test]
    fn truncated_and_foreign_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.gguf");
        let tensors = vec![TensorSpec {
            name: "a".into(),
            ne: vec![64],
            ty: GgmlType::F32,
        }];
        let mut w = Writer::new(File::create(&path).unwrap(), &[], &tensors).unwrap();
        w.write_tensor(&[0u8; 256]).unwrap();
        w.finish().unwrap();
        let len = std::fs::metadata(&path).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 1)
            .unwrap();
        let err = read_header(&path).unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");

        std::fs::write(&path, b"PK\x03\x04 not a gguf").unwrap();
        assert!(read_header(&path).unwrap_err().to_string().contains("not a GGUF file"));
    }

    /// A GGUF preamble (v3) followed by `rest`.
    fn raw(n_tensors: u64, n_kv: u64, rest: &[u8]) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&n_tensors.to_le_bytes());
        b.extend_from_slice(&n_kv.to_le_bytes());
        b.extend_from_slice(rest);
        b
    }

    fn tensor_info(name: &str, ne: &[u64], ty: u32) -> Vec<u8> {
        let mut b = (name.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(name.as_bytes());
        b.extend_from_slice(&(ne.len() as u32).to_le_bytes());
        ne.iter().for_each(|d| b.extend_from_slice(&d.to_le_bytes()));
        b.extend_from_slice(&ty.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        b
    }

    fn header_error(bytes: &[u8]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.gguf");
        std::fs::write(&path, bytes).unwrap();
        read_header(&path).unwrap_err().to_string()
    }

    /// A server announcing a 1 TB file whose first key claims a 1 TB string: the probe reads the
    /// prefix it has, and allocates nothing from the length field (it used to abort the process).
    #[test]
    fn announced_size_does_not_drive_allocation() {
        let mut kv = (1u64 << 40).to_le_bytes().to_vec();
        kv.extend_from_slice(b"general.type");
        let prefix = raw(0, 1, &kv);
        assert_eq!(kv_in_prefix(&prefix, 1 << 41, "general.type"), None);
        // An array count as large: the same.
        let mut kv = 4u64.to_le_bytes().to_vec();
        kv.extend_from_slice(b"x.xs");
        kv.extend_from_slice(&9u32.to_le_bytes());
        kv.extend_from_slice(&10u32.to_le_bytes());
        kv.extend_from_slice(&(1u64 << 37).to_le_bytes());
        assert_eq!(kv_in_prefix(&raw(0, 1, &kv), 1 << 41, "x.xs"), None);
    }

    /// A sparse 1 TiB local file claiming a 512 GiB key: refused by the header bound at once.
    #[test]
    fn sparse_file_with_a_huge_length_field_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse.gguf");
        let mut kv = (1u64 << 39).to_le_bytes().to_vec();
        kv.extend_from_slice(b"general.architecture");
        std::fs::write(&path, raw(0, 1, &kv)).unwrap();
        if File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_len(1 << 40))
            .is_err()
        {
            return; // a file system without sparse files of that size: nothing to check here
        }
        let err = read_header(&path).unwrap_err().to_string();
        assert!(err.contains("larger than 256 MiB"), "{err}");
    }

    #[test]
    fn every_array_type_round_trips_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.gguf"), dir.path().join("b.gguf"));
        let arrays = [
            Array::U8(vec![0, 255]),
            Array::I8(vec![-128, 127]),
            Array::U16(vec![65535]),
            Array::I16(vec![-2]),
            Array::U32(vec![]),
            Array::I32(vec![i32::MIN]),
            Array::F32(vec![1.5, f32::NAN.copysign(-1.0)]),
            Array::Bool(vec![true, false]),
            Array::String(["", "é", "tok"].into_iter().collect()),
            Array::U64(vec![u64::MAX]),
            Array::I64(vec![-1]),
            Array::F64(vec![0.1]),
        ];
        let kvs: Vec<(String, Value)> = arrays
            .into_iter()
            .enumerate()
            .map(|(i, a)| (format!("x.{i}"), Value::Array(a)))
            .collect();
        Writer::new(File::create(&a).unwrap(), &kvs, &[])
            .unwrap()
            .finish()
            .unwrap();
        let h = read_header(&a).unwrap();
        assert_eq!(
            h.get("x.8")
                .and_then(Value::as_array)
                .and_then(Array::as_strings)
                .unwrap()
                .iter()
                .collect::<Vec<_>>(),
            ["", "é", "tok"]
        );
        assert_eq!(h.get("x.4").and_then(Value::array_len), Some(0));
        Writer::new(File::create(&b).unwrap(), &h.kvs, &[])
            .unwrap()
            .finish()
            .unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    }

    #[test]
    fn writer_refuses_types_and_shapes_it_cannot_size() {
        let spec = |ne: Vec<u64>, ty| TensorSpec {
            name: "blk.0.x.weight".into(),
            ne,
            ty,
        };
        for (s, want) in [
            (spec(vec![64], GgmlType(99)), "type 99"),
            (spec(vec![1 << 32, 1 << 32, 1 << 32], GgmlType::F32), "overflow"),
            (spec(vec![48], GgmlType::Q4_0), "not a whole number of Q4_0 blocks"),
            (spec(vec![], GgmlType::F32), "0 dimensions"),
        ] {
            let err = Writer::new(Vec::new(), &[], &[s]).err().unwrap().to_string();
            assert!(err.contains("blk.0.x.weight") && err.contains(want), "{err}");
        }
    }

    #[test]
    fn overflowing_empty_and_duplicate_tensors_are_named() {
        // Q4_0 rows of 2^32 values, 2^32 rows: the size overflows, and the row is whole blocks.
        let err = header_error(&raw(1, 0, &tensor_info("w", &[1 << 32, 1 << 32], 2)));
        assert!(
            err.contains("tensor `w`: dimensions [4294967296, 4294967296] overflow"),
            "{err}"
        );
        let err = header_error(&raw(1, 0, &tensor_info("w", &[u64::MAX, 2], 99)));
        assert!(err.contains("overflow"), "{err}");
        let err = header_error(&raw(1, 0, &tensor_info("w", &[64, 0], 0)));
        assert!(err.contains("`w` has dimensions [64, 0]"), "{err}");
        let two = [tensor_info("w", &[8], 0), tensor_info("w", &[8], 0)].concat();
        let err = header_error(&raw(2, 0, &[two, vec![0; 64]].concat()));
        assert!(err.contains("`w` is listed twice"), "{err}");
    }

    #[test]
    fn tensor_data_is_read_within_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.gguf");
        let tensors = vec![TensorSpec {
            name: "a".into(),
            ne: vec![2, 2],
            ty: GgmlType::F32,
        }];
        let mut w = Writer::new(File::create(&path).unwrap(), &[], &tensors).unwrap();
        w.write_tensor(&[7u8; 16]).unwrap();
        w.finish().unwrap();
        let h = read_header(&path).unwrap();
        let mut buf = Vec::new();
        read_tensor_data(&File::open(&path).unwrap(), &h, &h.tensors[0], &mut buf).unwrap();
        assert_eq!(buf, [7u8; 16]);
        let unknown = TensorInfo {
            ty: GgmlType(99),
            ..h.tensors[0].clone()
        };
        let err = read_tensor_data(&File::open(&path).unwrap(), &h, &unknown, &mut buf)
            .unwrap_err()
            .to_string();
        assert!(err.contains("type 99"), "{err}");
    }
}
