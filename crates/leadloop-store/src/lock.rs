//! One daemon per state directory: an exclusive lock on `<dir>/lock`, held for the life of the
//! store and released by the kernel if the process dies. The file records the holder's pid so
//! the error can name it.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::StoreError;

#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    pub fn acquire(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join("lock");
        let dir_err = |source| StoreError::Dir { path: dir.to_path_buf(), source };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(dir_err)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(StoreError::Locked {
                    path: dir.to_path_buf(),
                    holder: if holder.is_empty() { String::new() } else { format!(" (pid {holder})") },
                });
            }
            Err(TryLockError::Error(source)) => return Err(dir_err(source)),
        }
        file.set_len(0).map_err(dir_err)?;
        file.seek(SeekFrom::Start(0)).map_err(dir_err)?;
        writeln!(file, "{}", std::process::id()).map_err(dir_err)?;
        file.sync_all().map_err(dir_err)?;
        Ok(Self { _file: file })
    }
}
