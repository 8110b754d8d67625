//! TensorBoard event files for the training log: scalars under the names `metrics.jsonl` uses
//! (`train/loss`, `eval/rewards/accuracies`) at each optimizer step, so that
//! `tensorboard --logdir artifacts` shows every run as `<stage>/<key>`.
//!
//! The format is TFRecord framing (length, masked CRC-32C of the length, data, masked CRC-32C
//! of the data) around `tensorflow.Event` protobufs; the few fields needed are encoded by
//! hand. The crates that write it (tensorboard-rs 0.5.9, last released 2022, on protobuf 2
//! with a background thread, panics on I/O errors and a hostname in the file name) did not fit
//! a deterministic artifact. Here only `wall_time` varies between two runs.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The event file's name: TensorBoard reads any file whose name contains `tfevents`; a fixed
/// name keeps the artifact's file list the same from run to run.
pub const EVENTS_FILE: &str = "events.out.tfevents.pipe";

/// The version record every event file starts with.
const FILE_VERSION: &str = "brain.Event:2";

/// One decoded event: the file version, or scalars at a step.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub wall_time: f64,
    pub step: i64,
    pub file_version: Option<String>,
    /// (tag, value) of each `simple_value` of the event's summary.
    pub scalars: Vec<(String, f32)>,
}

/// An append-only event file.
#[derive(Debug)]
pub struct EventWriter {
    path: PathBuf,
    file: File,
}

impl EventWriter {
    /// A new file holding only the version record (an existing one is replaced).
    pub fn create(path: &Path) -> std::io::Result<Self> {
        let version = Event {
            wall_time: wall_time(),
            step: 0,
            file_version: Some(FILE_VERSION.to_string()),
            scalars: Vec::new(),
        };
        Self::rewrite(path, &[version])
    }

    /// Reopens `path` for a resumed run: keeps its events of steps `<= keep_through` (the
    /// resumed run redoes the later ones) and appends after them.
    pub fn resume(path: &Path, keep_through: usize) -> std::io::Result<Self> {
        let kept: Vec<Event> = read(path)?
            .into_iter()
            .filter(|e| e.file_version.is_some() || e.step <= keep_through as i64)
            .collect();
        Self::rewrite(path, &kept)
    }

    /// Replaces `path` with `events` through a synced temp file and a rename, then opens it
    /// for appending.
    fn rewrite(path: &Path, events: &[Event]) -> std::io::Result<Self> {
        let mut bytes = Vec::new();
        for e in events {
            bytes.extend(frame(&encode_event(e)));
        }
        let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
        tmp_name.push(".tmp");
        let tmp = path.with_file_name(tmp_name);
        let mut file = File::create(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        let file = OpenOptions::new().append(true).open(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Appends one event with `scalars` at `step`, stamped with the current time.
    pub fn write_scalars(&mut self, step: i64, scalars: &[(String, f32)]) -> std::io::Result<()> {
        let event = Event {
            wall_time: wall_time(),
            step,
            file_version: None,
            scalars: scalars.to_vec(),
        };
        self.file.write_all(&frame(&encode_event(&event)))?;
        self.file.flush()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The TensorBoard tag of a `metrics.jsonl` field: `eval_loss` -> `eval/loss`,
/// `rewards/margins` -> `train/rewards/margins`.
pub fn tag(field: &str) -> String {
    match field.strip_prefix("eval_") {
        Some(rest) => format!("eval/{rest}"),
        None => format!("train/{field}"),
    }
}

fn wall_time() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Every event of a file; a torn last record (a crash mid-write) is dropped, a corrupt one
/// before the end is an error.
pub fn read(path: &Path) -> std::io::Result<Vec<Event>> {
    let bytes = std::fs::read(path)?;
    let bad = |what: &str, at: usize| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: {what} at byte {at}", path.display()),
        )
    };
    let mut events = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let Some(header) = bytes.get(at..at + 12) else {
            break;
        };
        let len = u64::from_le_bytes(header[..8].try_into().expect("8 bytes")) as usize;
        if masked_crc(&header[..8]) != u32::from_le_bytes(header[8..].try_into().expect("4 bytes"))
        {
            return Err(bad("a record length with a wrong checksum", at));
        }
        let Some(data) = bytes.get(at + 12..at + 12 + len) else {
            break;
        };
        let Some(crc) = bytes.get(at + 12 + len..at + 16 + len) else {
            break;
        };
        if masked_crc(data) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
            return Err(bad("a record with a wrong checksum", at));
        }
        events.push(decode_event(data).ok_or_else(|| bad("an undecodable event", at))?);
        at += 16 + len;
    }
    Ok(events)
}

/// TFRecord framing of one record.
fn frame(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

/// TFRecord's masked CRC: a CRC of data that holds CRCs is rotated and offset.
fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// CRC-32C (Castagnoli), bytewise with a table built at compile time.
fn crc32c(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0x82f6_3b78
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    let mut crc = !0u32;
    for &b in data {
        crc = TABLE[((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

// Protobuf wire types and the field numbers of tensorflow.Event, Summary and Summary.Value.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const BYTES: u8 = 2;
const FIXED32: u8 = 5;
const EVENT_WALL_TIME: u32 = 1;
const EVENT_STEP: u32 = 2;
const EVENT_FILE_VERSION: u32 = 3;
const EVENT_SUMMARY: u32 = 5;
const SUMMARY_VALUE: u32 = 1;
const VALUE_TAG: u32 = 1;
const VALUE_SIMPLE_VALUE: u32 = 2;

fn key(out: &mut Vec<u8>, field: u32, wire: u8) {
    varint(out, ((field as u64) << 3) | wire as u64);
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn bytes_field(out: &mut Vec<u8>, field: u32, data: &[u8]) {
    key(out, field, BYTES);
    varint(out, data.len() as u64);
    out.extend_from_slice(data);
}

fn encode_event(e: &Event) -> Vec<u8> {
    let mut out = Vec::new();
    key(&mut out, EVENT_WALL_TIME, FIXED64);
    out.extend_from_slice(&e.wall_time.to_le_bytes());
    key(&mut out, EVENT_STEP, VARINT);
    varint(&mut out, e.step as u64);
    if let Some(version) = &e.file_version {
        bytes_field(&mut out, EVENT_FILE_VERSION, version.as_bytes());
        return out;
    }
    let mut summary = Vec::new();
    for (tag, value) in &e.scalars {
        let mut v = Vec::new();
        bytes_field(&mut v, VALUE_TAG, tag.as_bytes());
        key(&mut v, VALUE_SIMPLE_VALUE, FIXED32);
        v.extend_from_slice(&value.to_le_bytes());
        bytes_field(&mut summary, SUMMARY_VALUE, &v);
    }
    bytes_field(&mut out, EVENT_SUMMARY, &summary);
    out
}

/// One protobuf field: its number and its payload.
enum Field<'a> {
    Varint(u64),
    Fixed64([u8; 8]),
    Bytes(&'a [u8]),
    Fixed32([u8; 4]),
}

/// The fields of a message, in order; `None` if it is malformed.
fn fields(mut data: &[u8]) -> Option<Vec<(u32, Field<'_>)>> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let k = read_varint(&mut data)?;
        let field = u32::try_from(k >> 3).ok()?;
        let value = match (k & 7) as u8 {
            VARINT => Field::Varint(read_varint(&mut data)?),
            FIXED64 => Field::Fixed64(take(&mut data, 8)?.try_into().ok()?),
            BYTES => {
                let len = usize::try_from(read_varint(&mut data)?).ok()?;
                Field::Bytes(take(&mut data, len)?)
            }
            FIXED32 => Field::Fixed32(take(&mut data, 4)?.try_into().ok()?),
            _ => return None,
        };
        out.push((field, value));
    }
    Some(out)
}

fn take<'a>(data: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if data.len() < n {
        return None;
    }
    let (head, rest) = data.split_at(n);
    *data = rest;
    Some(head)
}

fn read_varint(data: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = data.split_first()?;
        *data = rest;
        v |= ((b & 0x7f) as u64) << shift;
        if b < 0x80 {
            return Some(v);
        }
    }
    None
}

fn decode_event(data: &[u8]) -> Option<Event> {
    let mut e = Event {
        wall_time: 0.0,
        step: 0,
        file_version: None,
        scalars: Vec::new(),
    };
    for (number, field) in fields(data)? {
        match (number, field) {
            (EVENT_WALL_TIME, Field::Fixed64(b)) => e.wall_time = f64::from_le_bytes(b),
            (EVENT_STEP, Field::Varint(v)) => e.step = v as i64,
            (EVENT_FILE_VERSION, Field::Bytes(b)) => {
                e.file_version = Some(String::from_utf8_lossy(b).into_owned())
            }
            (EVENT_SUMMARY, Field::Bytes(b)) => e.scalars.extend(decode_summary(b)?),
            _ => {}
        }
    }
    Some(e)
}

fn decode_summary(data: &[u8]) -> Option<Vec<(String, f32)>> {
    let mut out = Vec::new();
    for (number, field) in fields(data)? {
        let (SUMMARY_VALUE, Field::Bytes(value)) = (number, field) else {
            continue;
        };
        let (mut tag, mut simple) = (None, None);
        for (n, f) in fields(value)? {
            match (n, f) {
                (VALUE_TAG, Field::Bytes(b)) => tag = Some(String::from_utf8_lossy(b).into_owned()),
                (VALUE_SIMPLE_VALUE, Field::Fixed32(b)) => simple = Some(f32::from_le_bytes(b)),
                _ => {}
            }
        }
        if let (Some(tag), Some(value)) = (tag, simple) {
            out.push((tag, value));
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_values() {
        // The CRC-32C check value (RFC 3720, iSCSI) and its zero-block vector.
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn masked_crcs_match_tensorboards_own() {
        // Values of tensorboard 2.21's `pywrap_tensorflow.masked_crc32c`.
        assert_eq!(masked_crc(&[0u8; 8]), 0x0798_0329);
        assert_eq!(masked_crc(b"123456789"), 0xc78a_b0e5);
        let framed = frame(b"");
        assert_eq!(
            framed,
            [
                [0u8; 8].as_slice(),
                &0x0798_0329u32.to_le_bytes(),
                &masked_crc(b"").to_le_bytes()
            ]
            .concat()
        );
    }

    #[test]
    fn events_round_trip_and_resume_keeps_steps_through_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(EVENTS_FILE);
        let mut w = EventWriter::create(&path).unwrap();
        for step in 0..5 {
            let scalars = vec![
                ("train/loss".to_string(), 1.0 / (step as f32 + 1.0)),
                ("eval/rewards/accuracies".to_string(), step as f32 * 0.25),
            ];
            w.write_scalars(step, &scalars).unwrap();
        }
        drop(w);
        let events = read(&path).unwrap();
        assert_eq!(events.len(), 6);
        assert_eq!(events[0].file_version.as_deref(), Some(FILE_VERSION));
        assert_eq!(events[3].step, 2);
        assert_eq!(
            events[3].scalars,
            vec![
                ("train/loss".to_string(), 1.0 / 3.0),
                ("eval/rewards/accuracies".to_string(), 0.5)
            ]
        );
        assert!(events[3].wall_time > 1.7e9);

        // A torn record at the end (a crash mid-write) is dropped; a resume then cuts it off.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(&frame(&encode_event(&events[1]))[..10]);
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read(&path).unwrap().len(), 6);
        let mut w = EventWriter::resume(&path, 2).unwrap();
        w.write_scalars(3, &[("train/loss".to_string(), 9.0)])
            .unwrap();
        let steps: Vec<i64> = read(&path).unwrap().iter().map(|e| e.step).collect();
        assert_eq!(steps, vec![0, 0, 1, 2, 3]);

        // A flipped byte inside a record is found by its checksum.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[40] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        let err = read(&path).unwrap_err();
        assert!(err.to_string().contains("wrong checksum"), "{err}");
    }

    #[test]
    fn two_writes_differ_only_in_wall_time() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str| {
            let path = dir.path().join(name);
            let mut w = EventWriter::create(&path).unwrap();
            w.write_scalars(1, &[("train/loss".to_string(), 0.5)])
                .unwrap();
            read(&path).unwrap()
        };
        let (mut a, mut b) = (write("a"), write("b"));
        for e in a.iter_mut().chain(b.iter_mut()) {
            e.wall_time = 0.0;
        }
        assert_eq!(a, b);
    }

    #[test]
    fn tags_split_eval_from_train() {
        assert_eq!(tag("eval_loss"), "eval/loss");
        assert_eq!(tag("eval_rewards/accuracies"), "eval/rewards/accuracies");
        assert_eq!(tag("loss"), "train/loss");
        assert_eq!(tag("rewards/margins"), "train/rewards/margins");
    }
}
