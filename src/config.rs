//! What every config file shares: loading TOML with errors that name the
//! file, the key and the reason, collecting every validation problem at once,
//! and secrets that never print.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};

/// One problem with one key of a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub reason: String,
}

/// A config file that cannot be used. `Display` lists every problem as
/// `file: key: reason`, one per line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}: {key}: {reason}")]
    Parse {
        file: PathBuf,
        key: String,
        reason: String,
    },
    #[error("{}", .problems.iter().map(|p| format!("{}: {}: {}", .file.display(), p.key, p.reason)).collect::<Vec<_>>().join("\n"))]
    Invalid {
        file: PathBuf,
        problems: Vec<Problem>,
    },
}

/// Collects validation problems so a user sees all of them in one run.
#[derive(Debug, Default)]
pub struct Problems(Vec<Problem>);

impl Problems {
    pub fn add(&mut self, key: &str, reason: impl Into<String>) {
        self.0.push(Problem {
            key: key.to_owned(),
            reason: reason.into(),
        });
    }

    pub fn check(&mut self, ok: bool, key: &str, reason: impl Into<String>) {
        if !ok {
            self.add(key, reason);
        }
    }

    /// A path the config names must be an existing file.
    pub fn check_file(&mut self, key: &str, path: &Path) {
        self.check(
            path.is_file(),
            key,
            format!("{} is not a readable file", path.display()),
        );
    }

    pub fn into_result(self, file: &Path) -> Result<(), ConfigError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid {
                file: file.to_owned(),
                problems: self.0,
            })
        }
    }
}

/// Parse TOML text; `file` only names the source in errors.
pub fn parse<T: DeserializeOwned>(file: &Path, text: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let key = e
            .span()
            .map(|s| key_at(text, s.start))
            .unwrap_or_else(|| "(top level)".to_owned());
        ConfigError::Parse {
            file: file.to_owned(),
            key,
            reason: e.message().to_owned(),
        }
    })
}

/// Read and parse a TOML file.
pub fn load<T: DeserializeOwned>(file: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
        file: file.to_owned(),
        source,
    })?;
    parse(file, &text)
}

/// Read, parse and validate a config file: what every `Config::load` does.
pub fn load_checked<T: DeserializeOwned>(
    file: &Path,
    validate: impl FnOnce(&T, &Path) -> Result<(), ConfigError>,
) -> Result<T, ConfigError> {
    let c = load(file)?;
    validate(&c, file)?;
    Ok(c)
}

/// Parse and validate config text; `file` only names the source in errors.
pub fn parse_checked<T: DeserializeOwned>(
    file: &Path,
    text: &str,
    validate: impl FnOnce(&T, &Path) -> Result<(), ConfigError>,
) -> Result<T, ConfigError> {
    let c = parse(file, text)?;
    validate(&c, file)?;
    Ok(c)
}

/// The dotted key (with its table) at a byte offset, for error messages;
/// toml's own errors carry a span, not a key path.
fn key_at(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line_no = before.matches('\n').count() + 1;
    let mut table = String::new();
    for line in before.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            table = t.trim_matches(|c| c == '[' || c == ']').trim().to_owned();
        }
    }
    let line = text.lines().nth(line_no - 1).unwrap_or("").trim();
    let key = line
        .split('=')
        .next()
        .filter(|_| line.contains('=') && !line.starts_with('['))
        .map(|k| k.trim().to_owned());
    match (table.is_empty(), key) {
        (true, Some(k)) => format!("{k} (line {line_no})"),
        (false, Some(k)) => format!("{table}.{k} (line {line_no})"),
        (false, None) => format!("[{table}] (line {line_no})"),
        (true, None) => format!("line {line_no}"),
    }
}

/// A string that is never printed: `Debug` and `Display` show `***`.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

/// Where systemd's `LoadCredential=` puts a service's credentials.
const CREDENTIALS: &str = "${CREDENTIALS_DIRECTORY}";

/// `path` with a leading `${CREDENTIALS_DIRECTORY}` replaced by that
/// directory (set by systemd for a unit with `LoadCredential=`).
pub fn expand_credentials(
    path: &Path,
    credentials_dir: Option<&std::ffi::OsStr>,
) -> Result<PathBuf, String> {
    let Ok(rest) = path.strip_prefix(CREDENTIALS) else {
        return Ok(path.to_owned());
    };
    match credentials_dir {
        Some(dir) if !dir.is_empty() => Ok(Path::new(dir).join(rest)),
        _ => Err(format!(
            "{} names systemd's credentials, but CREDENTIALS_DIRECTORY is not set (run it from a unit with LoadCredential=, or give a plain path)",
            path.display()
        )),
    }
}

/// Fill `inline` from `file` (`key_file` in the config) when it is given
/// instead: exactly one of the two, and a file that reads.
pub fn secret_or_file(p: &mut Problems, key: &str, inline: &mut Secret, file: &Option<PathBuf>) {
    let Some(file) = file else {
        if inline.0.is_empty() {
            p.add(
                key,
                format!("set {key}, or {key}_file naming a file that holds it"),
            );
        }
        return;
    };
    let file_key = format!("{key}_file");
    if !inline.0.is_empty() {
        p.add(&file_key, format!("{key} or {key}_file, not both"));
        return;
    }
    let dir = std::env::var_os("CREDENTIALS_DIRECTORY");
    match expand_credentials(file, dir.as_deref()).and_then(|path| {
        std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))
    }) {
        Ok(text) => inline.0 = text.trim().to_owned(),
        Err(why) => p.add(&file_key, why),
    }
}

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct T {
        server: S,
    }
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct S {
        listen: String,
        key: Secret,
    }

    #[test]
    fn parse_errors_name_file_and_key() {
        let f = Path::new("/etc/x.toml");
        let e = parse::<T>(
            f,
            "[server]\nlisten = \"a\"\nkey = \"k\"\nlisten_typo = 3\n",
        )
        .unwrap_err();
        let s = e.to_string();
        assert!(
            s.starts_with("/etc/x.toml: server.listen_typo (line 4): unknown field"),
            "{s}"
        );
        let e = parse::<T>(f, "[server]\nlisten = 5\nkey = \"k\"\n").unwrap_err();
        assert!(e.to_string().contains("server.listen (line 2)"), "{e}");
    }

    #[test]
    fn secrets_never_print_and_problems_are_all_listed() {
        let t: T = parse(
            Path::new("a"),
            "[server]\nlisten = \"a\"\nkey = \"hunter2\"\n",
        )
        .unwrap();
        assert!(!format!("{t:?}").contains("hunter2"));
        let mut p = Problems::default();
        p.check(false, "a.b", "bad");
        p.add("c", "worse");
        let e = p.into_result(Path::new("f.toml")).unwrap_err().to_string();
        assert_eq!(e, "f.toml: a.b: bad\nf.toml: c: worse");
    }
}
