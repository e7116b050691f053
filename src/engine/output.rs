//! Writing outputs: never half-written (a temporary file beside the target, renamed into place), and
//! large ones without the page cache.
//!
//! A merged model is several gigabytes written once and read back at most once (by `ollama create`).
//! Through the page cache, every byte is copied into a freshly allocated cache page: on a 2-core VM
//! that costs 7 to 11 s of kernel time for a 4.9 GB file (`dd` of zeros: 7.4 s of system time), as
//! much as a third of the whole merge, and it evicts the user's other cached files. Direct I/O
//! (`O_DIRECT`) hands the buffer to the device instead (0.3 s of system time for the same file).
//! Where the file system refuses direct I/O (tmpfs, some network file systems), writes go through
//! the page cache as before: the bytes written are the same either way.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Alignment of direct I/O's offsets, lengths and memory: a multiple of every logical block size in
/// use (512 or 4096 bytes).
const ALIGN: usize = 4096;
/// Bytes handed to the device per write: large enough that the per-write cost disappears.
const CHUNK: usize = 8 << 20;

/// A sequential writer of a new file, with direct I/O where the file system allows it. Call
/// `finish` at the end: dropping it loses what is still buffered.
pub struct DirectWriter {
    /// The file opened with `O_DIRECT`, while direct writes work.
    direct: Option<File>,
    /// The same file opened normally: the fallback, and what sets the final length.
    plain: File,
    /// `CHUNK` bytes at an `ALIGN`-aligned address inside `storage`.
    storage: Vec<u8>,
    start: usize,
    filled: usize,
    /// Bytes already written to the file.
    written: u64,
}

impl DirectWriter {
    /// Writes `path` (an existing, empty file, e.g. a fresh temporary file) from its start, through
    /// `plain` (an open handle on it) when direct I/O is not available.
    pub(crate) fn new(path: &Path, plain: File) -> Self {
        let direct = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags_direct()
            .open(path)
            .ok();
        let storage = vec![0u8; CHUNK + ALIGN];
        let start = storage.as_ptr().align_offset(ALIGN);
        Self {
            direct,
            plain,
            storage,
            start,
            filled: 0,
            written: 0,
        }
    }

    /// Whether writes still go around the page cache: false where the file system refused direct I/O,
    /// at open or at the first write.
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// Writes the buffered bytes; `last` allows a length that is not a multiple of [`ALIGN`] (padded
    /// with zeros for the device, then cut off by setting the file's length).
    fn flush_buffer(&mut self, last: bool) -> io::Result<()> {
        let len = self.filled;
        if len == 0 {
            return Ok(());
        }
        let padded = if last { len.next_multiple_of(ALIGN) } else { len };
        let buf = &mut self.storage[self.start..self.start + padded];
        buf[len..].fill(0);
        if let Some(direct) = &self.direct {
            match direct.write_all_at(buf, self.written) {
                Ok(()) => {}
                // EINVAL: the file system takes direct I/O at open but not with this alignment.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    self.direct = None;
                    self.plain.write_all_at(&buf[..len], self.written)?;
                }
                Err(e) => return Err(e),
            }
        } else {
            self.plain.write_all_at(&buf[..len], self.written)?;
        }
        self.written += len as u64;
        self.filled = 0;
        Ok(())
    }

    /// Writes what is buffered and sets the file's length to the bytes written; returns that length.
    pub(crate) fn finish(mut self) -> io::Result<u64> {
        self.flush_buffer(true)?;
        self.plain.set_len(self.written)?;
        Ok(self.written)
    }
}

impl Write for DirectWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.filled);
        let at = self.start + self.filled;
        self.storage[at..at + n].copy_from_slice(&data[..n]);
        self.filled += n;
        if self.filled == CHUNK {
            self.flush_buffer(false)?;
        }
        Ok(n)
    }

    /// Buffered bytes stay until a whole chunk is full or `finish`: a partial block
    /// cannot be written directly.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `O_DIRECT` on the platforms that have it.
trait DirectFlag {
    fn custom_flags_direct(&mut self) -> &mut Self;
}

impl DirectFlag for std::fs::OpenOptions {
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    fn custom_flags_direct(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::custom_flags(self, libc::O_DIRECT)
    }

    /// macOS has no `O_DIRECT` (its `F_NOCACHE` is a hint on an open file): the page cache it is.
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
    fn custom_flags_direct(&mut self) -> &mut Self {
        self
    }
}

/// A temporary file beside `output` (same filesystem, so the final rename is atomic), readable by
/// others as a normal file would be (tempfile creates 0600; llama.cpp or Ollama may run as another user).
pub(crate) fn temp_beside(output: &Path) -> Result<tempfile::NamedTempFile> {
    let dir = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let prefix = format!(".{}.", output.file_name().map_or("out".into(), |n| n.to_string_lossy()));
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".tmp");
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    let tmp = builder.tempfile_in(dir).map_err(|e| Error::io(dir, e))?;
    temporaries().push(tmp.path().to_path_buf());
    Ok(tmp)
}

/// Temporary outputs this process has made and not yet renamed into place. Dropping a
/// `NamedTempFile` deletes it, but a process ended by a second signal does not unwind: the CLI's
/// handler calls [`remove_temporaries`] first.
fn temporaries() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    static TEMPORARIES: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    TEMPORARIES.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Deletes every temporary output still on disk, for a process about to exit without unwinding.
pub(crate) fn remove_temporaries() {
    for path in temporaries().drain(..) {
        let _ = std::fs::remove_file(path);
    }
}

/// Renames the finished temporary file into place; without `force` an existing file is kept.
pub(crate) fn persist(tmp: tempfile::NamedTempFile, output: &Path, force: bool) -> Result<()> {
    let tmp_path = tmp.path().to_path_buf();
    let done = if force {
        tmp.persist(output)
    } else {
        tmp.persist_noclobber(output)
    };
    temporaries().retain(|p| *p != tmp_path);
    done.map(|_| ()).map_err(|e| match e.error.kind() {
        // Checked before the work started, so another process made it meanwhile.
        std::io::ErrorKind::AlreadyExists => Error::Refused {
            path: output.to_path_buf(),
            msg: "appeared while this run was writing it; the new result was discarded".into(),
            hint: Some("pass --force to replace it, or choose another -o".into()),
            kind: crate::ErrorKind::Usage,
        },
        _ => Error::io(output, e.error),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 4096) as u8).collect()
    }

    /// Every length around the chunk and block boundaries, written in uneven pieces, reads back as
    /// written, with the file exactly as long, on the test's file system (direct or not).
    #[test]
    fn writes_exactly_the_bytes_given() {
        let dir = tempfile::tempdir().unwrap();
        for n in [0, 1, 4095, 4096, 4097, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 12345] {
            let path = dir.path().join(format!("out-{n}"));
            let file = File::create(&path).unwrap();
            let mut w = DirectWriter::new(&path, file);
            let data = pattern(n);
            for piece in data.chunks(1_000_003) {
                w.write_all(piece).unwrap();
            }
            assert_eq!(w.finish().unwrap(), n as u64);
            assert_eq!(std::fs::read(&path).unwrap(), data, "length {n}");
        }
    }

    /// tmpfs takes `O_DIRECT` as a no-op (Linux 6.6+) or refuses it at open (before): either way
    /// the bytes arrive.
    #[test]
    fn works_on_tmpfs() {
        let Ok(dir) = tempfile::tempdir_in("/dev/shm") else {
            return;
        };
        let path = dir.path().join("out");
        let mut w = DirectWriter::new(&path, File::create(&path).unwrap());
        let data = pattern(CHUNK + 5);
        w.write_all(&data).unwrap();
        assert_eq!(w.finish().unwrap(), data.len() as u64);
        assert_eq!(std::fs::read(&path).unwrap(), data);
    }
}
