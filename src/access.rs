//! The info_hash access list (`[access]`): allow or deny listed swarms, re-read from its
//! file while running (on a timer when the file changed, and at once on SIGHUP).
//! A file that fails to parse leaves the previous list in force.
//!
//! Read on every announce, written on reload: an `RwLock` around an `Arc` keeps readers
//! to one uncontended read lock.

use std::{
    collections::HashSet,
    fs::Metadata,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
};

use crate::{
    config::{AccessMode, AccessSettings},
    protocol::InfoHash,
};

pub struct AccessList {
    mode: AccessMode,
    path: PathBuf,
    hashes: RwLock<Arc<HashSet<InfoHash>>>,
    loaded: Mutex<Option<FileStamp>>,
}

/// What tells one version of the list file from the next without reading it. The
/// modification time alone does not: the kernel stamps files from a clock that advances
/// in ticks of a few milliseconds, so two writes within one tick look alike. The usual
/// way to replace such a file (write a new one, rename it over the old) also gives it a
/// new inode, and an edit in place changes its length or, at the latest on the next
/// tick, its change time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    inode: u64,
    len: u64,
    modified: (i64, i64),
    changed: (i64, i64),
}

impl FileStamp {
    fn of(path: &Path) -> Option<Self> {
        std::fs::metadata(path).ok().map(|meta| Self::from(&meta))
    }
}

impl From<&Metadata> for FileStamp {
    fn from(meta: &Metadata) -> Self {
        Self {
            dev: meta.dev(),
            inode: meta.ino(),
            len: meta.len(),
            modified: (meta.mtime(), meta.mtime_nsec()),
            changed: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

impl AccessList {
    /// Loads the list named by the settings; an unreadable or invalid file is an error at
    /// start (it would otherwise silently serve everything, or nothing).
    pub fn load(settings: &AccessSettings) -> Result<Self, String> {
        let list = Self {
            mode: settings.mode,
            path: settings.list_path.clone(),
            hashes: RwLock::new(Arc::new(HashSet::new())),
            loaded: Mutex::new(None),
        };
        if list.mode != AccessMode::Off {
            list.reload()?;
        }
        Ok(list)
    }

    pub fn mode(&self) -> AccessMode {
        self.mode
    }

    pub fn allows(&self, info_hash: &InfoHash) -> bool {
        match self.mode {
            AccessMode::Off => true,
            AccessMode::Allow => self.current().contains(info_hash),
            AccessMode::Deny => !self.current().contains(info_hash),
        }
    }

    fn current(&self) -> Arc<HashSet<InfoHash>> {
        self.hashes
            .read()
            .map(|guard| guard.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    /// Re-reads the file; returns how many entries are now in force.
    pub fn reload(&self) -> Result<usize, String> {
        if self.mode == AccessMode::Off {
            return Ok(0);
        }
        // Taken before the read: a change during the read is seen on the next check.
        let stamp = FileStamp::of(&self.path);
        let text = std::fs::read_to_string(&self.path)
            .map_err(|err| format!("cannot read access list {}: {err}", self.path.display()))?;
        let hashes = parse_list(&text)
            .map_err(|err| format!("access list {}: {err}", self.path.display()))?;
        let count = hashes.len();
        match self.hashes.write() {
            Ok(mut guard) => *guard = Arc::new(hashes),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(hashes),
        }
        if let Ok(mut loaded) = self.loaded.lock() {
            *loaded = stamp;
        }
        Ok(count)
    }

    /// Reloads if the file changed (see `FileStamp`); `Ok(None)` when it did not.
    pub fn reload_if_changed(&self) -> Result<Option<usize>, String> {
        if self.mode == AccessMode::Off {
            return Ok(None);
        }
        let stamp = FileStamp::of(&self.path);
        let unchanged = self
            .loaded
            .lock()
            .map(|loaded| *loaded == stamp)
            .unwrap_or(false);
        if unchanged {
            return Ok(None);
        }
        self.reload().map(Some)
    }
}

/// One info_hash per line: 40 hex digits or the 20-character wire form; blank lines and
/// `#` comments are skipped.
pub fn parse_list(text: &str) -> Result<HashSet<InfoHash>, String> {
    let mut hashes = HashSet::new();
    for (index, line) in text.lines().enumerate() {
        let entry = line.split('#').next().unwrap_or("").trim();
        if entry.is_empty() {
            continue;
        }
        let hash = InfoHash::from_hex(entry)
            .or_else(|| InfoHash::from_wire(entry).ok())
            .ok_or_else(|| {
                format!(
                    "line {}: {entry:?} is neither 40 hex digits nor a 20-character info_hash",
                    index + 1
                )
            })?;
        hashes.insert(hash);
    }
    Ok(hashes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hex_text_and_comments() {
        let hashes = parse_list(
            "# live channels\n\
             mpEl12vYXhoeA00v0wNE\n\
             \n\
             0123456789abcdef0123456789abcdef01234567  # a torrent\n",
        )
        .expect("valid list");
        assert_eq!(hashes.len(), 2);
        assert!(hashes.contains(&InfoHash::from_wire("mpEl12vYXhoeA00v0wNE").expect("id")));
    }

    #[test]
    fn reports_the_bad_line() {
        let err = parse_list("mpEl12vYXhoeA00v0wNE\nnope\n").expect_err("invalid");
        assert!(err.starts_with("line 2:"), "{err}");
    }

    #[test]
    fn allow_and_deny_modes_and_reload() {
        let dir = std::env::temp_dir().join(format!("p2pms-access-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("list.txt");
        std::fs::write(&path, "mpEl12vYXhoeA00v0wNE\n").expect("write");
        let listed = InfoHash::from_wire("mpEl12vYXhoeA00v0wNE").expect("id");
        let other = InfoHash([7; 20]);

        let allow = AccessList::load(&AccessSettings {
            mode: AccessMode::Allow,
            list_path: path.clone(),
            reload_interval_secs: 1,
        })
        .expect("load");
        assert!(allow.allows(&listed));
        assert!(!allow.allows(&other));

        let deny = AccessList::load(&AccessSettings {
            mode: AccessMode::Deny,
            list_path: path.clone(),
            reload_interval_secs: 1,
        })
        .expect("load");
        assert!(!deny.allows(&listed));
        assert!(deny.allows(&other));

        // A broken file keeps the old list; a fixed one takes effect.
        std::fs::write(&path, "garbage\n").expect("write");
        assert!(allow.reload().is_err());
        assert!(allow.allows(&listed));
        std::fs::write(&path, format!("{}\n", other.to_hex())).expect("write");
        assert_eq!(allow.reload(), Ok(1));
        assert!(allow.allows(&other));
        assert!(!allow.allows(&listed));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A file replaced by rename within one tick of the kernel's file clock has the old
    /// one's modification time (forced here, to make that tick certain): it is seen anyway.
    #[test]
    fn a_list_replaced_within_one_clock_tick_is_reloaded() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("list.txt");
        let first = InfoHash([1; 20]);
        let second = InfoHash([2; 20]);
        std::fs::write(&path, format!("{}\n", first.to_hex())).expect("write");
        let list = AccessList::load(&AccessSettings {
            mode: AccessMode::Allow,
            list_path: path.clone(),
            reload_interval_secs: 1,
        })
        .expect("load");
        assert_eq!(list.reload_if_changed(), Ok(None));

        let modified = std::fs::metadata(&path)
            .and_then(|meta| meta.modified())
            .expect("mtime");
        let next = dir.path().join("next.tmp");
        std::fs::write(&next, format!("{}\n", second.to_hex())).expect("write");
        std::fs::File::options()
            .write(true)
            .open(&next)
            .and_then(|file| file.set_modified(modified))
            .expect("set mtime");
        std::fs::rename(&next, &path).expect("rename");

        assert_eq!(list.reload_if_changed(), Ok(Some(1)));
        assert!(list.allows(&second));
        assert!(!list.allows(&first));
        assert_eq!(list.reload_if_changed(), Ok(None));
    }
}
