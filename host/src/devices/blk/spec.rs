//! What an operator asks for with `--disk path=FILE[,ro]`: parsed and
//! checked here, so the CLI and the library agree and every refusal is
//! tested. The file itself is checked when it is opened
//! ([`DiskFile::open`](super::DiskFile::open)), before the VM boots.

use std::path::PathBuf;

/// A disk to give a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    /// The raw image file.
    pub path: PathBuf,
    /// Refuse the guest's writes (the file is opened read-only).
    pub read_only: bool,
}

/// Why a `--disk` value was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DiskSpecError {
    /// No `path=FILE`.
    #[error("--disk needs path=FILE (a raw image, e.g. from `truncate -s 64M FILE`)")]
    NoPath,
    /// An item Tandem does not know.
    #[error("--disk: unknown item {0:?} (expected path=FILE or ro)")]
    Unknown(String),
    /// A key given twice.
    #[error("--disk: {0} given twice")]
    Twice(&'static str),
    /// An empty path.
    #[error("--disk: path= is empty")]
    EmptyPath,
}

impl std::str::FromStr for DiskSpec {
    type Err = DiskSpecError;

    /// ```
    /// use tandem::devices::DiskSpec;
    /// let spec: DiskSpec = "path=/tmp/d.img,ro".parse().unwrap();
    /// assert!(spec.read_only);
    /// assert!("ro".parse::<DiskSpec>().is_err());
    /// ```
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (mut path, mut ro) = (None, false);
        for item in s.split(',').filter(|i| !i.is_empty()) {
            match item.split_once('=') {
                Some(("path", v)) => {
                    if v.is_empty() {
                        return Err(DiskSpecError::EmptyPath);
                    }
                    if path.replace(PathBuf::from(v)).is_some() {
                        return Err(DiskSpecError::Twice("path"));
                    }
                }
                None if item == "ro" => {
                    if ro {
                        return Err(DiskSpecError::Twice("ro"));
                    }
                    ro = true;
                }
                _ => return Err(DiskSpecError::Unknown(item.into())),
            }
        }
        Ok(Self {
            path: path.ok_or(DiskSpecError::NoPath)?,
            read_only: ro,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<DiskSpec, DiskSpecError> {
        s.parse()
    }

    #[test]
    fn parses_path_and_ro() {
        assert_eq!(
            parse("path=a.img").unwrap(),
            DiskSpec {
                path: "a.img".into(),
                read_only: false
            }
        );
        assert!(parse("ro,path=/x/y").unwrap().read_only);
    }

    #[test]
    fn refuses_bad_values_by_name() {
        assert_eq!(parse(""), Err(DiskSpecError::NoPath));
        assert_eq!(parse("ro"), Err(DiskSpecError::NoPath));
        assert_eq!(parse("path="), Err(DiskSpecError::EmptyPath));
        assert_eq!(parse("path=a,path=b"), Err(DiskSpecError::Twice("path")));
        assert_eq!(parse("path=a,ro,ro"), Err(DiskSpecError::Twice("ro")));
        assert!(matches!(parse("path=a,rw"), Err(DiskSpecError::Unknown(_))));
        assert!(matches!(parse("file=a"), Err(DiskSpecError::Unknown(_))));
    }
}
