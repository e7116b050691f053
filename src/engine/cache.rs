//! This tool's own cache (see [`crate::remote::registry::cache_dir`]): `builds/` holds converted adapters and
//! merged models keyed by what went into them (each with a `.sha256` sidecar), `blobs/` the base
//! models pulled from a registry, `digests/` the sha256 of base files given as paths, keyed by what
//! build tools key a file on (path, size, modification time, inode), so an unchanged base is not
//! hashed again. The Hugging Face cache is the Hub's and is left alone.
//!
//! Policy: a build is kept so that a re-run costs nothing, and marked used (its sidecar's
//! modification time) whenever a run takes it. After every create, builds and blobs unused for
//! [`MAX_AGE_DAYS`] days are removed; `create-from-base --no-keep-build` drops the run's own build
//! once Ollama holds it; `ollama-tools cache` lists, prunes and clears.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::progress::{Progress, check_cancelled};
use sha2::{Digest, Sha256};

/// Entries unused this long are pruned after each create.
pub(crate) const MAX_AGE_DAYS: u64 = 30;

/// One cached file (a build with its sidecar counts as one).
#[derive(Debug, Serialize)]
pub(crate) struct Entry {
    pub(crate) path: PathBuf,
    /// `build`, `blob` or `digest`.
    pub(crate) kind: &'static str,
    pub(crate) bytes: u64,
    /// When a run last made or took it.
    #[serde(serialize_with = "unix_seconds")]
    pub(crate) last_used: SystemTime,
}

fn unix_seconds<S: serde::Serializer>(t: &SystemTime, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_u64(t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()))
}

/// What a prune or clear removed.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Removed {
    pub(crate) files: usize,
    pub(crate) bytes: u64,
}

/// Every entry under `dir` (the cache root), oldest use first.
pub(crate) fn list(dir: &Path) -> Result<Vec<Entry>> {
    let mut entries = Vec::new();
    for (sub, kind) in [("builds", "build"), ("blobs", "blob"), ("digests", "digest")] {
        let folder = dir.join(sub);
        let Ok(read) = std::fs::read_dir(&folder) else { continue };
        for item in read {
            let item = item.map_err(|e| Error::io(&folder, e))?;
            let path = item.path();
            let name = item.file_name().to_string_lossy().into_owned();
            // Sidecars go with their build; hidden files are other runs' temporaries.
            if name.ends_with(".sha256") || name.starts_with('.') {
                continue;
            }
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_file() {
                // A reuse marks the sidecar, so the build's own time still says when it was written.
                let marked = std::fs::metadata(sidecar(&path)).and_then(|m| m.modified()).ok();
                let last_used = meta.modified().ok().max(marked).unwrap_or(SystemTime::UNIX_EPOCH);
                entries.push(Entry {
                    path,
                    kind,
                    bytes: meta.len(),
                    last_used,
                });
            }
        }
    }
    entries.sort_by_key(|e| e.last_used);
    Ok(entries)
}

/// Removes entries not used for `max_age`.
pub(crate) fn prune(dir: &Path, max_age: Duration) -> Result<Removed> {
    let now = SystemTime::now();
    let stale = list(dir)?
        .into_iter()
        .filter(|e| now.duration_since(e.last_used).is_ok_and(|age| age > max_age));
    remove_all(stale)
}

/// Removes every entry.
pub(crate) fn clear(dir: &Path) -> Result<Removed> {
    remove_all(list(dir)?.into_iter())
}

fn remove_all(entries: impl Iterator<Item = Entry>) -> Result<Removed> {
    let mut removed = Removed::default();
    for e in entries {
        remove(&e.path)?;
        removed.files += 1;
        removed.bytes += e.bytes;
    }
    Ok(removed)
}

/// Removes one cached file and its sidecar.
pub(crate) fn remove(path: &Path) -> Result<()> {
    let sidecar = sidecar(path);
    for p in [path, sidecar.as_path()] {
        match std::fs::remove_file(p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io(p, e)),
            _ => {}
        }
    }
    Ok(())
}

/// Marks a build used now, so pruning keeps it: its sidecar's time is set, the build itself is left
/// as written (best effort: a read-only cache still works).
pub(crate) fn touch(path: &Path) {
    if let Ok(f) = std::fs::File::options().append(true).open(sidecar(path)) {
        let _ = f.set_modified(SystemTime::now());
    }
}

/// Whether `path` is a build in the cache at `dir` (and so may be removed; a user's own file never).
pub(crate) fn is_build(dir: &Path, path: &Path) -> bool {
    path.parent().is_some_and(|p| p == dir.join("builds"))
}

/// The digest sidecar of a build: `X.gguf` -> `X.gguf.sha256`.
pub(crate) fn sidecar(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".sha256");
    PathBuf::from(s)
}

/// The sha256 (hex) of the file at `path`: remembered under `dir/digests` by the file's identity
/// (canonical path, size, modification time in nanoseconds, inode), as cargo and make decide
/// whether a file changed, and computed by `hash` only when that identity is new. A file rewritten
/// in place within the same nanosecond and size would be missed, as it would by those tools.
pub(crate) fn file_digest(dir: &Path, path: &Path, hash: impl FnOnce() -> Result<String>) -> Result<String> {
    let Some(key) = identity(path) else {
        return hash();
    };
    let name = hex(&Sha256::digest(key.as_bytes()));
    let memo = dir.join("digests").join(name);
    if let Ok(d) = std::fs::read_to_string(&memo)
        && d.len() == 64
        && d.bytes().all(|b| b.is_ascii_hexdigit())
    {
        // Used now, so pruning keeps it.
        if let Ok(f) = std::fs::File::options().append(true).open(&memo) {
            let _ = f.set_modified(SystemTime::now());
        }
        return Ok(d);
    }
    let digest = hash()?;
    // A lost memo only costs the next run a hash: written best-effort, atomically.
    let _ = std::fs::create_dir_all(memo.parent().unwrap_or(dir)).and_then(|()| {
        let tmp = tempfile::NamedTempFile::new_in(memo.parent().unwrap_or(dir))?;
        std::fs::write(tmp.path(), &digest)?;
        tmp.persist(&memo).map(|_| ()).map_err(|e| e.error)
    });
    Ok(digest)
}

/// "path\nsize\nmtime_ns\ninode" of a file, `None` when it cannot be read.
fn identity(path: &Path) -> Option<String> {
    let canonical = std::fs::canonicalize(path).ok()?;
    let meta = std::fs::metadata(&canonical).ok()?;
    let mtime = meta
        .modified()
        .ok()?
        .duration_since(SystemTime::UNIX_EPOCH)
        .ok()?
        .as_nanos();
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0u64;
    Some(format!("{}\n{}\n{mtime}\n{inode}", canonical.display(), meta.len()))
}

/// The sha256 of a file, in hex, read in large blocks (reported as a "hashing" stage).
pub(crate) fn sha256_file(path: &Path, ui: &dyn Progress) -> Result<String> {
    hash_file::<Sha256>(path, b"", ui)
}

/// The hex digest of `prefix` followed by the file's bytes, read in large blocks (a large file is
/// reported as a "hashing" stage, and Ctrl-C stops it).
pub(crate) fn hash_file<D: Digest>(path: &Path, prefix: &[u8], ui: &dyn Progress) -> Result<String> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let big = len > 64 << 20;
    if big {
        ui.stage("hashing", len);
    }
    let mut hasher = D::new();
    hasher.update(prefix);
    let mut buf = vec![0u8; 4 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        if big {
            ui.advance(n as u64);
            check_cancelled(ui)?;
        }
    }
    if big {
        ui.finish();
    }
    Ok(hex(&hasher.finalize()))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_removes_only_what_went_unused_and_clear_the_rest() {
        let d = tempfile::tempdir().unwrap();
        let builds = d.path().join("builds");
        std::fs::create_dir_all(&builds).unwrap();
        std::fs::create_dir_all(d.path().join("blobs")).unwrap();
        let old = builds.join("merge-a.gguf");
        let new = builds.join("merge-b.gguf");
        let blob = d.path().join("blobs").join("sha256-0123");
        for (p, n) in [(&old, 10), (&new, 20), (&blob, 30)] {
            std::fs::write(p, vec![0u8; n]).unwrap();
        }
        std::fs::write(sidecar(&old), "x 10\n").unwrap();
        std::fs::write(builds.join(".merge-c.gguf.1234.tmp"), "in progress").unwrap();
        let long_ago = SystemTime::now() - Duration::from_secs(90 * 86400);
        for f in [old.clone(), sidecar(&old)] {
            std::fs::File::options()
                .append(true)
                .open(f)
                .unwrap()
                .set_modified(long_ago)
                .unwrap();
        }

        let listed = list(d.path()).unwrap();
        assert_eq!(listed.iter().map(|e| e.bytes).sum::<u64>(), 60);
        assert_eq!(listed[0].path, old, "oldest first");
        let removed = prune(d.path(), Duration::from_secs(MAX_AGE_DAYS * 86400)).unwrap();
        assert_eq!((removed.files, removed.bytes), (1, 10));
        assert!(!old.exists() && !sidecar(&old).exists() && new.exists());
        assert!(is_build(d.path(), &new) && !is_build(d.path(), &blob));
        let removed = clear(d.path()).unwrap();
        assert_eq!((removed.files, removed.bytes), (2, 50));
        assert!(
            builds.join(".merge-c.gguf.1234.tmp").exists(),
            "another run's temporary file is not ours to remove"
        );
    }

    #[test]
    fn a_files_digest_is_hashed_once_until_the_file_changes() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("base.gguf");
        std::fs::write(&file, b"one").unwrap();
        let cache = d.path().join("cache");
        let hashes = std::cell::Cell::new(0);
        let digest = |text: &str| {
            let text = text.to_string();
            file_digest(&cache, &file, || {
                hashes.set(hashes.get() + 1);
                Ok(format!("{:064x}", text.len()))
            })
            .unwrap()
        };
        let first = digest("one");
        assert_eq!(digest("ignored"), first, "an unchanged file is not hashed again");
        assert_eq!(hashes.get(), 1);
        std::fs::write(&file, b"changed").unwrap();
        assert_ne!(digest("changed"), first, "a new size (and time) is a new identity");
        assert_eq!(hashes.get(), 2);
        assert_eq!(list(&cache).unwrap().iter().filter(|e| e.kind == "digest").count(), 2);
    }
}
