//! Instance logs: rotated by size, and removed some time after their revision is deleted.
//!
//! A program writes its stdout and stderr straight into its log file (no copy through
//! Rouse), so rotation copies the file aside and truncates it in place (the program's
//! descriptor appends, so its next write lands at the new start); a line written in the
//! instant between the copy and the truncation can be lost.

use std::io;
use std::path::{Path, PathBuf};

/// The `n`th rotated file of a log (`x.log.1` is the newest).
pub(crate) fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// Rotates `path` if it is larger than `max_bytes`, keeping `max_files` files in all (the live
/// one and `max_files - 1` rotated ones). Returns whether it rotated.
pub(crate) fn rotate_if_big(path: &Path, max_bytes: u64, max_files: u32) -> io::Result<bool> {
    let len = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if len <= max_bytes {
        return Ok(false);
    }
    let keep = max_files.saturating_sub(1);
    if keep > 0 {
        match std::fs::remove_file(rotated(path, keep)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        for n in (1..keep).rev() {
            match std::fs::rename(rotated(path, n), rotated(path, n + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        std::fs::copy(path, rotated(path, 1))?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .set_len(0)?;
    Ok(true)
}

/// The directory of a revision's logs.
pub(crate) fn revision_dir(data_dir: &Path, namespace: &str, revision: &str) -> PathBuf {
    data_dir.join("logs").join(namespace).join(revision)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_shifts_and_keeps_at_most_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a.log");
        std::fs::write(&log, "small").unwrap();
        assert!(!rotate_if_big(&log, 10, 3).unwrap());
        for round in 0..4 {
            std::fs::write(&log, format!("round {round} is long enough")).unwrap();
            assert!(rotate_if_big(&log, 10, 3).unwrap());
            assert_eq!(std::fs::metadata(&log).unwrap().len(), 0);
        }
        assert_eq!(
            std::fs::read_to_string(rotated(&log, 1)).unwrap(),
            "round 3 is long enough"
        );
        assert_eq!(
            std::fs::read_to_string(rotated(&log, 2)).unwrap(),
            "round 2 is long enough"
        );
        assert!(!rotated(&log, 3).exists());
        // One file in all: truncation only.
        std::fs::write(&log, "long enough again").unwrap();
        assert!(rotate_if_big(&log, 10, 1).unwrap());
        assert_eq!(std::fs::metadata(&log).unwrap().len(), 0);
        assert!(rotate_if_big(&dir.path().join("missing.log"), 1, 3).is_ok());
    }
}
