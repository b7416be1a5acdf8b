//! A store file with faults switched on and off by a test: writes that fail as on a full
//! disk, and syncs that block until let go (a slow disk). Tests register it for a persistence
//! directory; the broker started on that directory then opens its store through it.
//!
//! Owns: the test registry and `FaultyFile`. Test builds only; must not be reachable from a
//! release build.

use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use redb::backends::FileBackend;
use redb::{DatabaseError, StorageBackend};

/// The faults of one store, switched by the test.
#[derive(Debug, Default)]
pub struct Faults {
    failing: AtomicBool,
    /// Syncs wait while this is true.
    held: Mutex<bool>,
    released: Condvar,
    /// Syncs that have started waiting, for a test to know the commit is under way.
    pub syncs_held: AtomicU64,
}

impl Faults {
    /// From now on (`true`) every write and sync fails with "no space left on device".
    pub fn fail(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    /// From now on (`true`) every sync blocks until `hold_syncs(false)`.
    pub fn hold_syncs(&self, hold: bool) {
        *self.held.lock().expect("faults lock") = hold;
        self.released.notify_all();
    }

    fn check(&self) -> io::Result<()> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(io::Error::from(io::ErrorKind::StorageFull));
        }
        Ok(())
    }
}

static REGISTRY: Mutex<Vec<(PathBuf, Arc<Faults>)>> = Mutex::new(Vec::new());

/// Makes the store in `dir` open through a `FaultyFile` with the returned faults.
pub fn register(dir: &Path) -> Arc<Faults> {
    let faults = Arc::new(Faults::default());
    let file = dir.join(super::STORE_FILE);
    REGISTRY
        .lock()
        .expect("registry lock")
        .push((file, Arc::clone(&faults)));
    faults
}

/// The faulty file registered for the store file `path`, if any.
pub(super) fn open(path: &Path) -> Result<Option<FaultyFile>, DatabaseError> {
    let faults = REGISTRY
        .lock()
        .expect("registry lock")
        .iter()
        .find(|(file, _)| file == path)
        .map(|(_, faults)| Arc::clone(faults));
    let Some(faults) = faults else {
        return Ok(None);
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    Ok(Some(FaultyFile {
        inner: FileBackend::new(file)?,
        faults,
    }))
}

#[derive(Debug)]
pub(super) struct FaultyFile {
    inner: FileBackend,
    faults: Arc<Faults>,
}

impl StorageBackend for FaultyFile {
    fn len(&self) -> Result<u64, io::Error> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.faults.check()?;
        self.inner.set_len(len)
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        let mut held = self.faults.held.lock().expect("faults lock");
        if *held {
            self.faults.syncs_held.fetch_add(1, Ordering::SeqCst);
        }
        while *held {
            held = self.faults.released.wait(held).expect("faults lock");
        }
        drop(held);
        self.faults.check()?;
        self.inner.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.faults.check()?;
        self.inner.write(offset, data)
    }

    fn close(&self) -> Result<(), io::Error> {
        self.inner.close()
    }
}
