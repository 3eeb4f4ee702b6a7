//! The archive entry validator: every entry of a bundle passes here before a byte of it is
//! used. Only regular files and directories under `trident-offline/`, with plain relative
//! paths, are accepted; links, devices, FIFOs, `..`, absolute paths and odd names are refused.
//!
//! The `tar` crate resolves GNU long names and PAX `path` records before it hands out an
//! entry, so the path checked here is the one the entry would be written under: nothing can
//! rename it after the check. The reader (`reader`) adds the manifest-level rules (listed,
//! once, of the listed size).

use std::path::Path;

use super::manifest::ROOT;

/// Longest accepted relative path, and path component.
const MAX_PATH: usize = 1024;
const MAX_COMPONENT: usize = 255;

/// What an entry is, once accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// A directory (only ever created implicitly; nothing else is done with it).
    Dir,
    /// A regular file at this path relative to the bundle root.
    File(String),
}

/// Checks a path relative to the bundle root: non-empty, `/`-separated plain components, no
/// `.`/`..`, no absolute path, no NUL, control characters or backslashes.
pub fn check_relative(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("empty path".into());
    }
    if path.len() > MAX_PATH {
        return Err(format!("path longer than {MAX_PATH} bytes"));
    }
    if path.starts_with('/') {
        return Err("absolute path".into());
    }
    if path.chars().any(|c| c.is_control() || c == '\\') {
        return Err("control character or backslash in path".into());
    }
    for c in path.split('/') {
        match c {
            "" => return Err("empty path component ('//' or trailing '/')".into()),
            "." | ".." => return Err(format!("'{c}' component")),
            c if c.len() > MAX_COMPONENT => {
                return Err(format!("path component longer than {MAX_COMPONENT} bytes"))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Checks one archive entry's type and path (as the `tar` crate resolved it).
pub fn check(entry_type: tar::EntryType, path: &Path) -> Result<Accepted, String> {
    let Some(text) = path.to_str() else {
        return Err("path is not UTF-8".into());
    };
    let rest = match text.strip_prefix(ROOT) {
        Some("") | Some("/") => None,
        Some(r) if r.starts_with('/') => Some(r[1..].trim_end_matches('/')),
        _ => return Err(format!("entry outside '{ROOT}/'")),
    };
    match entry_type {
        tar::EntryType::Directory => {
            if let Some(r) = rest {
                check_relative(r)?;
            }
            Ok(Accepted::Dir)
        }
        tar::EntryType::Regular | tar::EntryType::Continuous => {
            let Some(r) = rest.filter(|_| !text.ends_with('/')) else {
                return Err("regular file with a directory's name".into());
            };
            check_relative(r)?;
            Ok(Accepted::File(r.to_string()))
        }
        other => Err(format!("{} entries are not allowed", type_name(other))),
    }
}

fn type_name(t: tar::EntryType) -> &'static str {
    match t {
        tar::EntryType::Symlink => "symbolic link",
        tar::EntryType::Link => "hard link",
        tar::EntryType::Char => "character device",
        tar::EntryType::Block => "block device",
        tar::EntryType::Fifo => "FIFO",
        tar::EntryType::GNUSparse => "sparse file",
        _ => "special",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tar::EntryType as T;

    fn ok(t: T, p: &str) -> Accepted {
        check(t, Path::new(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
    }
    fn bad(t: T, p: &str) -> String {
        check(t, Path::new(p)).expect_err(p)
    }

    #[test]
    fn accepts_plain_files_and_dirs() {
        assert_eq!(
            ok(T::Regular, "trident-offline/models/chat/a.gguf"),
            Accepted::File("models/chat/a.gguf".into())
        );
        assert_eq!(ok(T::Directory, "trident-offline/"), Accepted::Dir);
        assert_eq!(ok(T::Directory, "trident-offline/models/"), Accepted::Dir);
        assert_eq!(
            ok(T::Regular, "trident-offline/.env.example"),
            Accepted::File(".env.example".into())
        );
    }

    #[test]
    fn refuses_escapes_and_odd_names() {
        for p in [
            "trident-offline/../x",
            "trident-offline/a/../../x",
            "trident-offline/./x",
            "/etc/passwd",
            "trident-offline//x",
            "other/x",
            "trident-offlinex/y",
            "trident-offline/a\\b",
            "trident-offline/a\u{1}b",
            "x",
        ] {
            bad(T::Regular, p);
        }
        assert!(bad(T::Regular, "trident-offline/").contains("directory"));
        let long = format!("trident-offline/{}", "a".repeat(300));
        assert!(bad(T::Regular, &long).contains("component"));
    }

    #[test]
    fn refuses_links_devices_and_fifos() {
        for (t, what) in [
            (T::Symlink, "symbolic link"),
            (T::Link, "hard link"),
            (T::Char, "character device"),
            (T::Block, "block device"),
            (T::Fifo, "FIFO"),
        ] {
            assert!(bad(t, "trident-offline/x").contains(what));
        }
    }

    #[test]
    fn relative_rules() {
        assert!(check_relative("a/b.c").is_ok());
        for p in ["", "/a", "a/", "a//b", "..", "a/./b", "a\0b"] {
            assert!(check_relative(p).is_err(), "{p:?}");
        }
    }
}
