//! Reads a GGUF file's header (metadata and tensor directory) into candle's [`Content`],
//! checking every number against what the file holds before allocating for it: counts and
//! lengths against the bytes left, tensor shapes and offsets against the data region, the
//! alignment (a power of two; candle divides by it). A crafted file is an error, never a panic
//! or an allocation larger than a small multiple of the file.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};

use candle_core::quantized::gguf_file::{Content, TensorInfo, Value, VersionedMagic};
use candle_core::quantized::GgmlDType;

/// The alignment of the tensor data when `general.alignment` is absent.
const DEFAULT_ALIGNMENT: u64 = 32;
/// Nesting of arrays in arrays (the format allows it; no model uses more than one level).
const MAX_ARRAY_DEPTH: usize = 8;
/// GGML tensors have at most 4 dimensions.
const MAX_DIMS: u32 = 4;

/// Why a header is refused; the caller names the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct HeaderError(pub String);

fn fail<T>(message: impl Into<String>) -> Result<T, HeaderError> {
    Err(HeaderError(message.into()))
}

/// Reads the header of the GGUF file `reader` holds (from its start); `reader` may be
/// anywhere afterwards.
pub fn read_header<R: Read + Seek>(reader: &mut R) -> Result<Content, HeaderError> {
    let len = reader
        .seek(SeekFrom::End(0))
        .and_then(|len| reader.seek(SeekFrom::Start(0)).map(|_| len))
        .map_err(|e| HeaderError(format!("cannot read it: {e}")))?;
    let mut r = Bounded {
        inner: reader,
        pos: 0,
        len,
    };
    let magic = read_magic(&mut r)?;
    let tensor_count = r.length(magic, "the tensor count")?;
    let metadata_count = r.length(magic, "the metadata count")?;
    // Each metadata entry takes at least a key length, a type and one byte; each tensor at
    // least a name length, a dimension count, a type and an offset.
    let prefix = prefix_len(magic);
    let needed = metadata_count
        .saturating_mul(prefix + 5)
        .saturating_add(tensor_count.saturating_mul(prefix + 16));
    if needed > r.remaining() {
        return fail(format!(
            "the header declares {tensor_count} tensors and {metadata_count} metadata entries, \
             which need at least {needed} bytes; the file has {} left (truncated or corrupted)",
            r.remaining()
        ));
    }
    let mut metadata = HashMap::new();
    for _ in 0..metadata_count {
        let key = r.string(magic, "a metadata key")?;
        let kind = r.u32()?;
        let value = read_value(&mut r, magic, kind, 0)
            .map_err(|e| HeaderError(format!("metadata `{key}`: {e}")))?;
        if metadata.insert(key.clone(), value).is_some() {
            return fail(format!("metadata `{key}` appears twice"));
        }
    }
    let alignment = alignment(&metadata)?;
    let mut tensor_infos = HashMap::new();
    let mut sizes = Vec::new();
    for _ in 0..tensor_count {
        let name = r.string(magic, "a tensor name")?;
        let (info, bytes) = read_tensor_info(&mut r, magic)
            .map_err(|e| HeaderError(format!("tensor `{name}`: {e}")))?;
        if info.offset % alignment != 0 {
            return fail(format!(
                "tensor `{name}`: offset {} is not a multiple of the alignment {alignment}",
                info.offset
            ));
        }
        sizes.push((name.clone(), info.offset, bytes));
        if tensor_infos.insert(name.clone(), info).is_some() {
            return fail(format!("tensor `{name}` appears twice"));
        }
    }
    let tensor_data_offset = r
        .pos
        .checked_next_multiple_of(alignment)
        .filter(|&o| o <= len || tensor_count == 0)
        .ok_or_else(|| {
            HeaderError("the tensor data would start past the end of the file".into())
        })?;
    for (name, offset, bytes) in sizes {
        let end = tensor_data_offset
            .checked_add(offset)
            .and_then(|start| start.checked_add(bytes));
        if end.is_none_or(|end| end > len) {
            return fail(format!(
                "tensor `{name}`: {bytes} bytes at offset {offset} of the data go past the end \
                 of the file ({len} bytes; truncated or corrupted)"
            ));
        }
    }
    Ok(Content {
        magic,
        metadata,
        tensor_infos,
        tensor_data_offset,
    })
}

/// A reader that knows how many bytes are left, so no length is trusted beyond them.
struct Bounded<'r, R> {
    inner: &'r mut R,
    pos: u64,
    len: u64,
}

impl<R: Read> Bounded<'_, R> {
    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    fn fill(&mut self, buf: &mut [u8]) -> Result<(), HeaderError> {
        if buf.len() as u64 > self.remaining() {
            return fail(format!(
                "it ends at byte {} in the middle of the header (truncated?)",
                self.len
            ));
        }
        self.inner
            .read_exact(buf)
            .map_err(|e| HeaderError(format!("cannot read it at byte {}: {e}", self.pos)))?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], HeaderError> {
        let mut buf = [0u8; N];
        self.fill(&mut buf)?;
        Ok(buf)
    }

    fn u32(&mut self) -> Result<u32, HeaderError> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, HeaderError> {
        self.array().map(u64::from_le_bytes)
    }

    /// A count or length: 32 bits in version 1, 64 after.
    fn length(&mut self, magic: VersionedMagic, what: &str) -> Result<u64, HeaderError> {
        match magic {
            VersionedMagic::GgufV1 => self.u32().map(u64::from),
            _ => self.u64(),
        }
        .map_err(|e| HeaderError(format!("{what}: {e}")))
    }

    /// A length-prefixed string, its length checked against the bytes left first.
    fn string(&mut self, magic: VersionedMagic, what: &str) -> Result<String, HeaderError> {
        let len = self.length(magic, what)?;
        if len > self.remaining() {
            return fail(format!(
                "{what} of {len} bytes at byte {} is longer than the {} bytes left",
                self.pos,
                self.remaining()
            ));
        }
        let mut bytes = vec![0u8; len as usize];
        self.fill(&mut bytes)?;
        // Strings are not NUL-terminated by the spec, but some writers add one.
        while bytes.last() == Some(&0) {
            bytes.pop();
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

fn read_magic<R: Read>(r: &mut Bounded<'_, R>) -> Result<VersionedMagic, HeaderError> {
    let magic = r
        .array::<4>()
        .map_err(|_| HeaderError("too short for a GGUF header".into()))?;
    if &magic != b"GGUF" {
        return fail(format!(
            "it does not start with `GGUF` (found {magic:02x?})"
        ));
    }
    match r.u32()? {
        1 => Ok(VersionedMagic::GgufV1),
        2 => Ok(VersionedMagic::GgufV2),
        3 => Ok(VersionedMagic::GgufV3),
        v => fail(format!("GGUF version {v} is not supported (1 to 3 are)")),
    }
}

fn prefix_len(magic: VersionedMagic) -> u64 {
    match magic {
        VersionedMagic::GgufV1 => 4,
        _ => 8,
    }
}

/// The fewest bytes one value of type `kind` takes (for checking an array's length).
fn min_size(kind: u32, magic: VersionedMagic) -> Option<u64> {
    Some(match kind {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 => prefix_len(magic),
        9 => 4 + prefix_len(magic),
        10..=12 => 8,
        _ => return None,
    })
}

fn read_value<R: Read>(
    r: &mut Bounded<'_, R>,
    magic: VersionedMagic,
    kind: u32,
    depth: usize,
) -> Result<Value, HeaderError> {
    Ok(match kind {
        0 => Value::U8(r.array::<1>()?[0]),
        1 => Value::I8(i8::from_le_bytes(r.array()?)),
        2 => Value::U16(u16::from_le_bytes(r.array()?)),
        3 => Value::I16(i16::from_le_bytes(r.array()?)),
        4 => Value::U32(r.u32()?),
        5 => Value::I32(i32::from_le_bytes(r.array()?)),
        6 => Value::F32(f32::from_le_bytes(r.array()?)),
        7 => match r.array::<1>()?[0] {
            0 => Value::Bool(false),
            1 => Value::Bool(true),
            b => return fail(format!("a boolean must be 0 or 1, found {b}")),
        },
        8 => Value::String(r.string(magic, "a string")?),
        9 => read_array(r, magic, depth)?,
        10 => Value::U64(r.u64()?),
        11 => Value::I64(i64::from_le_bytes(r.array()?)),
        12 => Value::F64(f64::from_le_bytes(r.array()?)),
        other => return fail(format!("unknown value type {other}")),
    })
}

fn read_array<R: Read>(
    r: &mut Bounded<'_, R>,
    magic: VersionedMagic,
    depth: usize,
) -> Result<Value, HeaderError> {
    if depth >= MAX_ARRAY_DEPTH {
        return fail(format!("arrays nested more than {MAX_ARRAY_DEPTH} deep"));
    }
    let kind = r.u32()?;
    let min = min_size(kind, magic)
        .ok_or_else(|| HeaderError(format!("unknown array element type {kind}")))?;
    let len = r.length(magic, "an array length")?;
    if len.saturating_mul(min) > r.remaining() {
        return fail(format!(
            "an array of {len} elements needs at least {} bytes; the file has {} left",
            len.saturating_mul(min),
            r.remaining()
        ));
    }
    // Bounded by the bytes left: at most one element per byte.
    let mut items = Vec::with_capacity(len as usize);
    for _ in 0..len {
        items.push(read_value(r, magic, kind, depth + 1)?);
    }
    Ok(Value::Array(items))
}

/// One tensor's directory entry and the bytes its data takes.
fn read_tensor_info<R: Read>(
    r: &mut Bounded<'_, R>,
    magic: VersionedMagic,
) -> Result<(TensorInfo, u64), HeaderError> {
    let n_dims = r.u32()?;
    if n_dims > MAX_DIMS {
        return fail(format!(
            "{n_dims} dimensions (GGML tensors have at most {MAX_DIMS})"
        ));
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for _ in 0..n_dims {
        let dim = match magic {
            VersionedMagic::GgufV1 => u64::from(r.u32()?),
            _ => r.u64()?,
        };
        dims.push(
            usize::try_from(dim)
                .map_err(|_| HeaderError(format!("dimension {dim} is too large")))?,
        );
    }
    let dtype = ggml_dtype(r.u32()?)?;
    let offset = r.u64()?;
    let elements = dims
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| HeaderError(format!("shape {dims:?} has too many elements")))?;
    let block = dtype.block_size();
    if dims.first().is_some_and(|&d| d % block != 0) {
        return fail(format!(
            "its rows of {} values do not split into {dtype:?} blocks of {block}",
            dims[0]
        ));
    }
    let bytes = (elements / block)
        .checked_mul(dtype.type_size())
        .ok_or_else(|| HeaderError(format!("shape {dims:?} is too large")))? as u64;
    // GGUF lists the fastest-varying dimension first; candle's shapes are row-major.
    dims.reverse();
    Ok((
        TensorInfo {
            ggml_dtype: dtype,
            shape: candle_core::Shape::from(dims),
            offset,
        },
        bytes,
    ))
}

/// The GGML type ids candle can read (ggml.h's `ggml_type`).
fn ggml_dtype(id: u32) -> Result<GgmlDType, HeaderError> {
    Ok(match id {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        9 => GgmlDType::Q8_1,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        15 => GgmlDType::Q8K,
        30 => GgmlDType::BF16,
        other => return fail(format!("tensor type {other} is not supported")),
    })
}

/// `general.alignment`: a power of two (GGUF's rule; candle divides by it unchecked).
fn alignment(metadata: &HashMap<String, Value>) -> Result<u64, HeaderError> {
    let Some(value) = metadata.get("general.alignment") else {
        return Ok(DEFAULT_ALIGNMENT);
    };
    let alignment = match *value {
        Value::U8(v) => u64::from(v),
        Value::U16(v) => u64::from(v),
        Value::U32(v) => u64::from(v),
        Value::U64(v) => v,
        Value::I8(v) => u64::try_from(v).unwrap_or(0),
        Value::I16(v) => u64::try_from(v).unwrap_or(0),
        Value::I32(v) => u64::try_from(v).unwrap_or(0),
        Value::I64(v) => u64::try_from(v).unwrap_or(0),
        _ => return fail("metadata `general.alignment` must be an integer"),
    };
    if !alignment.is_power_of_two() {
        return fail(format!(
            "metadata `general.alignment` is {alignment}; it must be a power of two like 32"
        ));
    }
    Ok(alignment)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::gguf_file;
    use candle_core::quantized::QTensor;
    use candle_core::{Device, Tensor};

    fn file(metadata: &[(&str, Value)], tensors: &[(&str, QTensor)]) -> Vec<u8> {
        let refs: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
        let trefs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (*k, v)).collect();
        let mut out = std::io::Cursor::new(Vec::new());
        gguf_file::write(&mut out, &refs, &trefs).unwrap();
        out.into_inner()
    }

    fn tensor(rows: usize, cols: usize) -> QTensor {
        let t = Tensor::zeros((rows, cols), candle_core::DType::F32, &Device::Cpu).unwrap();
        QTensor::quantize(&t, GgmlDType::F32).unwrap()
    }

    fn read(bytes: &[u8]) -> Result<Content, HeaderError> {
        read_header(&mut std::io::Cursor::new(bytes))
    }

    #[test]
    fn reads_what_candle_writes() {
        let bytes = file(
            &[
                ("general.architecture", Value::String("llama".into())),
                ("v", Value::Array(vec![Value::U32(1), Value::U32(2)])),
            ],
            &[("a", tensor(2, 3)), ("b", tensor(4, 8))],
        );
        let content = read(&bytes).unwrap();
        let ours = content.tensor_infos["b"].shape.dims().to_vec();
        let candle = gguf_file::Content::read(&mut std::io::Cursor::new(&bytes)).unwrap();
        assert_eq!(ours, candle.tensor_infos["b"].shape.dims());
        assert_eq!(content.tensor_data_offset, candle.tensor_data_offset);
        assert_eq!(ours, [4, 8]);
        let t = content
            .tensor(&mut std::io::Cursor::new(&bytes), "b", &Device::Cpu)
            .unwrap();
        assert_eq!(t.shape().dims(), [4, 8]);
    }

    /// Issue 16: `general.alignment = 0` panicked inside candle (a division by zero).
    #[test]
    fn alignment_zero_or_odd_is_refused() {
        for bad in [0u32, 3, 48] {
            let bytes = file(
                &[("general.alignment", Value::U32(bad))],
                &[("a", tensor(2, 2))],
            );
            let err = read(&bytes).unwrap_err().to_string();
            assert!(err.contains("must be a power of two"), "{err}");
        }
        let bytes = file(
            &[("general.alignment", Value::U32(32))],
            &[("a", tensor(2, 2))],
        );
        read(&bytes).unwrap();
    }

    #[test]
    fn counts_lengths_and_shapes_beyond_the_file_are_refused() {
        let bytes = file(
            &[("k", Value::String("hello".into()))],
            &[("a", tensor(2, 2))],
        );
        // The tensor count (bytes 8..16) claims 2^40 tensors.
        let mut huge = bytes.clone();
        huge[8..16].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(read(&huge)
            .unwrap_err()
            .to_string()
            .contains("need at least"));
        // The key length of the first metadata entry (bytes 24..32) claims 2^62 bytes.
        let mut long = bytes.clone();
        long[24..32].copy_from_slice(&(1u64 << 62).to_le_bytes());
        let err = read(&long).unwrap_err().to_string();
        assert!(err.contains("longer than the"), "{err}");
        // A truncated data region (the 16 bytes of `a` are followed by 16 of padding).
        read(&bytes[..bytes.len() - 16]).unwrap();
        let err = read(&bytes[..bytes.len() - 20]).unwrap_err().to_string();
        assert!(err.contains("past the end of the file"), "{err}");
    }

    #[test]
    fn a_tensor_with_an_overflowing_shape_is_refused() {
        let mut bytes = file(&[], &[("a", tensor(2, 2))]);
        // Header: magic 4, version 4, counts 16; the name `a`: 8 + 1; n_dims 4; dims 2 × 8.
        let dims = 24 + 9 + 4;
        bytes[dims..dims + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        bytes[dims + 8..dims + 16].copy_from_slice(&u64::MAX.to_le_bytes());
        let err = read(&bytes).unwrap_err().to_string();
        assert!(
            err.contains("too many elements") || err.contains("too large"),
            "{err}"
        );
    }
}
