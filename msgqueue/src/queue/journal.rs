//! The framing shared by msgqueue's side files, the topic history (`history/file.rs`) and the schedule
//! (`schedule/file.rs`): each is an append-only list of records, read back whole at start, and replaced by a
//! compact copy once it is mostly dropped records.
//!
//! A record is `len: u32 LE | crc32: u32 LE | body[len]`, the CRC covering the body, whose first byte is the
//! record's kind. A record that is cut short, fails its checksum or is absurdly long ends the valid part of a file:
//! recovery keeps what comes before it.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::ops::DerefMut;
use std::path::Path;

use bytes::BufMut;

use super::storage::StorageError;

/// Bytes before a record's body: length and checksum.
const HEADER_LEN: usize = 8;
/// Largest body accepted; anything larger is treated as corruption rather than allocated.
const MAX_BODY_LEN: usize = 64 * 1024 * 1024;

/// Appends one record to `buf`, its body written by `body`.
pub(crate) fn frame<B>(buf: &mut B, body: impl FnOnce(&mut B))
where
    B: BufMut + DerefMut<Target = [u8]>,
{
    let start = buf.len();
    buf.put_u64_le(0);
    body(buf);
    let len = buf.len() - start - HEADER_LEN;
    let crc = crc32fast::hash(&buf[start + HEADER_LEN..]);
    buf[start..start + 4].copy_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The bodies of the whole, intact records at the start of `data`, each with the position just after it (the
/// valid length of the file if decoding stops there).
pub(crate) fn frames(data: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let header = data.get(at..at + HEADER_LEN)?;
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let start = at + HEADER_LEN;
        let body = data.get(start..start + len)?;
        if len == 0 || len > MAX_BODY_LEN || crc32fast::hash(body) != crc {
            return None;
        }
        at = start + len;
        Some((at, body))
    })
}

/// Replaces the file at `path` with `contents`: written to `temp` in `dir` and fsynced, renamed over `path`, the
/// directory fsynced. Returns the new file opened for appending.
pub(crate) fn replace(
    dir: &Path,
    path: &Path,
    temp: &Path,
    contents: &[u8],
) -> Result<File, StorageError> {
    let mut file = File::create(temp).map_err(|e| StorageError::io("cannot create", temp, e))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|e| StorageError::io("cannot write", temp, e))?;
    fs::rename(temp, path).map_err(|e| StorageError::io("cannot rename", temp, e))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::io("cannot fsync directory", dir, e))?;
    OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| StorageError::io("cannot open", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_back_up_to_a_torn_or_corrupt_one() {
        let mut buf = Vec::new();
        frame(&mut buf, |b| b.put_slice(b"\x01one"));
        let first = buf.len();
        frame(&mut buf, |b| b.put_slice(b"\x02two"));
        let bodies: Vec<_> = frames(&buf).collect();
        assert_eq!(
            bodies,
            [(first, &b"\x01one"[..]), (buf.len(), &b"\x02two"[..])]
        );
        assert_eq!(frames(&buf[..buf.len() - 1]).count(), 1, "a torn tail");
        let mut corrupt = buf.clone();
        let last = corrupt.len() - 1;
        corrupt[last] ^= 1;
        assert_eq!(frames(&corrupt).count(), 1, "a bad checksum");
        let mut bytes = bytes::BytesMut::new();
        frame(&mut bytes, |b| b.put_slice(b"\x01one"));
        assert_eq!(
            &bytes[..],
            &buf[..first],
            "the same framing on either buffer"
        );
    }
}
