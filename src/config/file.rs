//! Reads a mosquitto.conf from disk: the file itself and the `*.conf` files of each
//! `include_dir`, in name order, fed to the pure parser in `mosquitto_conf`.
//!
//! Owns: the file system side of configuration. Must not: interpret options (the parser does).

use std::fs;
use std::path::{Path, PathBuf};

use super::mosquitto_conf::{ConfError, Parsed};
use super::Config;

/// Reads `path` (and what it includes) on top of `base` (the environment's settings).
pub fn load(path: &Path, base: Config) -> Result<Parsed, ConfError> {
    let text = fs::read_to_string(path).map_err(|e| ConfError {
        file: path.to_path_buf(),
        line: 0,
        option: String::new(),
        message: format!("cannot read the configuration file: {e}"),
    })?;
    let mut parsed = Parsed::new(base);
    parsed.apply(path, &text, &mut read_conf_dir)?;
    parsed.check_last_bridge()?;
    Ok(parsed.finish())
}

/// The `*.conf` files of `dir`, sorted by name, with their text.
fn read_conf_dir(dir: &Path) -> Result<Vec<(PathBuf, String)>, String> {
    let entries =
        fs::read_dir(dir).map_err(|e| format!("cannot read directory {}: {e}", dir.display()))?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "conf") && path.is_file())
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| match fs::read_to_string(&path) {
            Ok(text) => Ok((path, text)),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        })
        .collect()
}
