//! What a directory entry name may be: what Linux allows, checked once at every edge.

/// Longest name component in bytes (NAME_MAX).
pub const MAX_NAME_LEN: usize = 255;
/// Longest path in bytes (PATH_MAX, including the terminating NUL in C).
pub const MAX_PATH_LEN: usize = 4095;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("name is empty")]
    Empty,
    #[error("name is {0} bytes, the limit is 255")]
    TooLong(usize),
    #[error("name contains '/' or NUL")]
    BadByte,
    #[error("'.' and '..' are not valid entry names")]
    Dot,
}

impl NameError {
    pub fn errno(&self) -> i32 {
        match self {
            NameError::TooLong(_) => libc::ENAMETOOLONG,
            NameError::Empty => libc::ENOENT,
            NameError::BadByte | NameError::Dot => libc::EINVAL,
        }
    }
}

/// Checks one path component for use as a new or looked-up entry name.
pub fn validate_name(name: &[u8]) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong(name.len()));
    }
    if name.iter().any(|&b| b == b'/' || b == 0) {
        return Err(NameError::BadByte);
    }
    if name == b"." || name == b".." {
        return Err(NameError::Dot);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits() {
        assert!(validate_name(&[b'a'; 255]).is_ok());
        assert_eq!(validate_name(&[b'a'; 256]), Err(NameError::TooLong(256)));
        assert_eq!(validate_name(b"a/b"), Err(NameError::BadByte));
        assert_eq!(validate_name(b".."), Err(NameError::Dot));
        assert_eq!(validate_name(b""), Err(NameError::Empty));
    }
}
