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

pub const MAGIC: [u8; 4] = *b"GGUF";
pub const VERSION: u32 = 3;
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// A ggml tensor type id, as stored in a GGUF tensor info.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GgmlType(pub u32);

impl GgmlType {
    pub const F32: Self = Self(0);
    pub const F16: Self = Self(1);
    pub const Q4_0: Self = Self(2);
    pub const Q4_1: Self = Self(3);
    pub const Q5_0: Self = Self(6);
    pub const Q5_1: Self = Self(7);
    pub const Q8_0: Self = Self(8);
    pub const Q8_1: Self = Self(9);
    pub const Q2_K: Self = Self(10);
    pub const Q3_K: Self = Self(11);
    pub const Q4_K: Self = Self(12);
    pub const Q5_K: Self = Self(13);
    pub const Q6_K: Self = Self(14);
    pub const Q8_K: Self = Self(15);
    pub const BF16: Self = Self(30);

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
        (0..64).map(GgmlType).find(|t| t.traits().is_some_and(|(n, _, _)| n.eq_ignore_ascii_case(name)))
    }

    /// Whether this table knows the type (its block layout, so its size).
    pub fn is_known(self) -> bool {
        self.traits().is_some()
    }

    pub fn name(self) -> String {
        self.traits().map_or_else(|| format!("type {}", self.0), |t| t.0.to_string())
    }

    /// Bytes taken by a tensor of this type with dimensions `ne` (ggml order), or `None` for an
    /// unknown type or a row length that is not a whole number of blocks.
    pub fn byte_size(self, ne: &[u64]) -> Option<u64> {
        let (_, block, bytes) = self.traits()?;
        let row = *ne.first().unwrap_or(&1);
        if row % block != 0 {
            return None;
        }
        let rows = ne.iter().skip(1).try_fold(1u64, |acc, &d| acc.checked_mul(d))?;
        (row / block).checked_mul(bytes)?.checked_mul(rows)
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

/// A metadata value. Arrays keep their element type so an empty array round-trips.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(u32, Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
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

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn array_len(&self) -> Option<usize> {
        match self {
            Value::Array(_, items) => Some(items.len()),
            _ => None,
        }
    }
}

/// One entry of the tensor table.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `ne[0]` varies fastest.
    pub ne: Vec<u64>,
    pub ty: GgmlType,
    /// Relative to the start of the data section.
    pub offset: u64,
}

/// A parsed GGUF header: metadata and tensor table, no tensor data.
#[derive(Clone, Debug)]
pub struct Header {
    pub version: u32,
    pub kvs: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Absolute file offset of the data section.
    pub data_offset: u64,
}

impl Header {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.kvs.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Counts bytes so the reader knows where the data section starts without seeking.
struct Counting<R> {
    inner: R,
    pos: u64,
    /// Upper bound for any length field: a string or array longer than the file is corruption, and
    /// checking it first keeps a damaged header from allocating gigabytes.
    limit: u64,
}

impl<R: Read> Counting<R> {
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
    /// A count of items of at least `item_size` bytes each, checked against the bytes left in the file.
    fn len(&mut self, what: &str, item_size: u64) -> io::Result<usize> {
        let n = self.u64()?;
        if n.saturating_mul(item_size) > self.limit.saturating_sub(self.pos) {
            return Err(invalid(format!("{what} count {n} at byte {} exceeds what is left of the file", self.pos - 8)));
        }
        Ok(n as usize)
    }
    fn string(&mut self) -> io::Result<String> {
        let n = self.len("string", 1)?;
        let mut buf = vec![0u8; n];
        self.inner.read_exact(&mut buf)?;
        self.pos += n as u64;
        String::from_utf8(buf).map_err(|_| invalid(format!("string before byte {} is not UTF-8", self.pos)))
    }
    fn value(&mut self, ty: u32, depth: u32) -> io::Result<Value> {
        Ok(match ty {
            0 => Value::U8(u8::from_le_bytes(self.bytes()?)),
            1 => Value::I8(i8::from_le_bytes(self.bytes()?)),
            2 => Value::U16(u16::from_le_bytes(self.bytes()?)),
            3 => Value::I16(i16::from_le_bytes(self.bytes()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.bytes()?)),
            6 => Value::F32(f32::from_le_bytes(self.bytes()?)),
            7 => match self.bytes::<1>()?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(invalid(format!("bool value {b} at byte {}", self.pos - 1))),
            },
            8 => Value::String(self.string()?),
            9 if depth == 0 => {
                let elem = self.u32()?;
                // Smallest encoding of one element: strings carry an 8-byte length.
                let item_size = match elem {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    _ => 8,
                };
                let n = self.len("array", item_size)?;
                let mut items = Vec::with_capacity(n.min(1 << 20));
                for _ in 0..n {
                    items.push(self.value(elem, depth + 1)?);
                }
                Value::Array(elem, items)
            }
            9 => return Err(invalid("nested arrays are not used by llama.cpp and not supported")),
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.bytes()?)),
            12 => Value::F64(f64::from_le_bytes(self.bytes()?)),
            t => return Err(invalid(format!("unknown metadata value type {t} at byte {}", self.pos - 4))),
        })
    }
}

/// The metadata value `key` of a GGUF file of `file_len` bytes, read from the first bytes of the file
/// only (`prefix`, e.g. from a Range request). `None` when `prefix` is not a GGUF header or ends
/// before the key is reached.
pub fn kv_in_prefix(prefix: &[u8], file_len: u64, key: &str) -> Option<Value> {
    let mut r = Counting { inner: io::Cursor::new(prefix), pos: 0, limit: file_len };
    if r.bytes::<4>().ok()? != MAGIC || !(2..=3).contains(&r.u32().ok()?) {
        return None;
    }
    r.len("tensor count", 32).ok()?;
    let n_kv = r.len("metadata count", 13).ok()?;
    for _ in 0..n_kv {
        let k = r.string().ok()?;
        let ty = r.u32().ok()?;
        let value = r.value(ty, 0).ok()?;
        if k == key {
            return Some(value);
        }
    }
    None
}

/// Whether the file at `path` starts with the GGUF magic.
pub fn is_gguf(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    std::fs::File::open(path).and_then(|mut f| io::Read::read_exact(&mut f, &mut magic)).is_ok() && &magic == b"GGUF"
}

/// Reads the header and tensor table of a GGUF file, checking that every tensor lies inside the file.
pub fn read_header(path: &Path) -> io::Result<Header> {
    let file = File::open(path)?;
    let file_len = file.metadata()?.len();
    let mut r = Counting { inner: BufReader::with_capacity(1 << 16, file), pos: 0, limit: file_len };
    let magic: [u8; 4] = r.bytes().map_err(|_| invalid("file is shorter than a GGUF header"))?;
    if magic != MAGIC {
        return Err(invalid(format!("not a GGUF file (starts with {magic:02x?}, expected \"GGUF\")")));
    }
    let version = r.u32()?;
    if !(2..=3).contains(&version) {
        return Err(invalid(format!("GGUF version {version} is not supported (2 and 3 are)")));
    }
    // A tensor info takes at least 32 bytes, a KV at least 13.
    let n_tensors = r.len("tensor count", 32)?;
    let n_kv = r.len("metadata count", 13)?;
    let mut kvs = Vec::with_capacity(n_kv.min(4096));
    for _ in 0..n_kv {
        let key = r.string()?;
        let ty = r.u32()?;
        let value = r.value(ty, 0).map_err(|e| invalid(format!("metadata `{key}`: {e}")))?;
        kvs.push((key, value));
    }
    let mut tensors = Vec::with_capacity(n_tensors.min(1 << 16));
    for _ in 0..n_tensors {
        let name = r.string()?;
        let n_dims = r.u32()?;
        if n_dims == 0 || n_dims > 4 {
            return Err(invalid(format!("tensor `{name}` has {n_dims} dimensions (ggml allows 1 to 4)")));
        }
        let ne = (0..n_dims).map(|_| r.u64()).collect::<io::Result<Vec<_>>>()?;
        let ty = GgmlType(r.u32()?);
        let offset = r.u64()?;
        tensors.push(TensorInfo { name, ne, ty, offset });
    }
    let alignment = match kvs.iter().find(|(k, _)| k == "general.alignment") {
        Some((_, v)) => v.as_u64().filter(|a| a.is_power_of_two()).ok_or_else(|| invalid("general.alignment is not a power of two"))?,
        None => DEFAULT_ALIGNMENT,
    };
    let data_offset = r.pos.next_multiple_of(alignment);
    for t in &tensors {
        if t.offset % alignment != 0 {
            return Err(invalid(format!("tensor `{}` offset {} is not aligned to {alignment}", t.name, t.offset)));
        }
        // A type this table does not know (newer ggml) cannot be sized; its shape is still right,
        // which is all a LoRA needs, so it is only the bounds check that is skipped.
        let Some(size) = t.ty.byte_size(&t.ne) else {
            if t.ty.traits().is_some() {
                return Err(invalid(format!("tensor `{}`: a row of {} is not a whole number of {} blocks", t.name, t.ne[0], t.ty)));
            }
            continue;
        };
        let end = data_offset.checked_add(t.offset).and_then(|o| o.checked_add(size));
        if end.is_none_or(|end| end > file_len) {
            return Err(invalid(format!(
                "tensor `{}` ({} bytes at data offset {}) extends past the end of the file ({file_len} bytes): the file is truncated",
                t.name, size, t.offset
            )));
        }
    }
    Ok(Header { version, kvs, tensors, alignment, data_offset })
}

/// What the writer needs to know about a tensor before any data is written.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub ne: Vec<u64>,
    pub ty: GgmlType,
}

impl TensorSpec {
    pub fn byte_size(&self) -> u64 {
        self.ty.byte_size(&self.ne).expect("writer tensor types have a fixed size")
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
        Value::Array(elem, items) => {
            out.write_all(&elem.to_le_bytes())?;
            out.write_all(&(items.len() as u64).to_le_bytes())?;
            for item in items {
                if item.type_id() != *elem {
                    return Err(invalid("array element of a different type than the array"));
                }
                put_value(out, item)?;
            }
            Ok(())
        }
        Value::U64(x) => out.write_all(&x.to_le_bytes()),
        Value::I64(x) => out.write_all(&x.to_le_bytes()),
        Value::F64(x) => out.write_all(&x.to_le_bytes()),
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
            let size = t.byte_size();
            sizes.push(size);
            offset += size.next_multiple_of(DEFAULT_ALIGNMENT);
        }
        pos += header.len() as u64;
        out.write_all(&header)?;
        out.write_all(&PADDING[..(pos.next_multiple_of(DEFAULT_ALIGNMENT) - pos) as usize])?;
        Ok(Self { out, sizes, next: 0, written: 0 })
    }

    /// Writes the next tensor's bytes, then the padding that aligns the one after it.
    pub fn write_tensor(&mut self, data: &[u8]) -> io::Result<()> {
        self.write_part(data)?;
        self.end_tensor()
    }

    /// Appends bytes to the current tensor (for tensors streamed in pieces).
    pub fn write_part(&mut self, data: &[u8]) -> io::Result<()> {
        let expected = *self.sizes.get(self.next).ok_or_else(|| invalid("more tensors written than declared"))?;
        if self.written + data.len() as u64 > expected {
            return Err(invalid(format!("tensor {} gets more than its declared {expected} bytes", self.next)));
        }
        self.out.write_all(data)?;
        self.written += data.len() as u64;
        Ok(())
    }

    /// Ends the current tensor: checks it is complete and pads to the next alignment.
    pub fn end_tensor(&mut self) -> io::Result<()> {
        let expected = *self.sizes.get(self.next).ok_or_else(|| invalid("more tensors written than declared"))?;
        if self.written != expected {
            return Err(invalid(format!("tensor {} has {} bytes, declared {expected}", self.next, self.written)));
        }
        self.out.write_all(&PADDING[..(expected.next_multiple_of(DEFAULT_ALIGNMENT) - expected) as usize])?;
        self.next += 1;
        self.written = 0;
        Ok(())
    }

    pub fn finish(mut self) -> io::Result<W> {
        if self.next != self.sizes.len() {
            return Err(invalid(format!("{} of {} tensors written", self.next, self.sizes.len())));
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
            ("x.list".to_string(), Value::Array(4, vec![Value::U32(1), Value::U32(2)])),
            ("x.empty".to_string(), Value::Array(8, vec![])),
        ];
        let tensors = vec![
            TensorSpec { name: "a".into(), ne: vec![3, 1], ty: GgmlType::F32 },
            TensorSpec { name: "b".into(), ne: vec![5], ty: GgmlType::F16 },
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
        let tensors: [(&str, u32, [u64; 2], u64); 3] =
            [("a.q4k", 12, [256, 2], 2 * 144), ("b.q6k", 14, [512, 1], 2 * 210), ("c.q80", 8, [64, 3], 3 * 2 * 34)];
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
                specs.push(TensorSpec { name: format!("blk.{i}.{stem}.weight"), ne: ne.to_vec(), ty });
            }
        }
        let file = File::create(&path).unwrap();
        Writer::new(&file, &[("general.architecture".into(), Value::String("llama".into()))], &specs).unwrap();
        let header_len = file.metadata().unwrap().len();
        let total: u64 = specs.iter().map(|s| s.byte_size().next_multiple_of(32)).sum();
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
        let tensors = vec![TensorSpec { name: "a".into(), ne: vec![64], ty: GgmlType::F32 }];
        let mut w = Writer::new(File::create(&path).unwrap(), &[], &tensors).unwrap();
        w.write_tensor(&[0u8; 256]).unwrap();
        w.finish().unwrap();
        let len = std::fs::metadata(&path).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(len - 1).unwrap();
        let err = read_header(&path).unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");

        std::fs::write(&path, b"PK\x03\x04 not a gguf").unwrap();
        assert!(read_header(&path).unwrap_err().to_string().contains("not a GGUF file"));
    }
}
