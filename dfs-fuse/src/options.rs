//! Command line of `dfs-fuse` and of the mount helper `mount.fuse.dfs`, which
//! mount(8) runs as `mount.fuse.dfs SOURCE MOUNTPOINT [-n] [-s] [-v] -o OPTS`.

use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq)]
pub struct MountOptions {
    /// Metadata server addresses, in order of preference.
    pub meta_addrs: Vec<String>,
    pub mountpoint: PathBuf,
    pub foreground: bool,
    pub allow_other: bool,
    pub allow_root: bool,
    pub read_only: bool,
    /// Let the kernel buffer writes in its page cache (FUSE writeback cache).
    pub writeback_cache: bool,
    /// Every unlink waits for meta, none is answered early (`deferred.rs`).
    pub sync_unlink: bool,
    /// Every create waits for meta, none is answered early (`deferred.rs`).
    pub sync_create: bool,
    /// Bytes of chunk data kept in memory.
    pub cache_size: u64,
    pub metrics: Option<String>,
    pub log: Option<PathBuf>,
    /// The source as given, shown in /proc/mounts.
    pub source: String,
    /// How long a request waits for some meta to answer (retrying, failing
    /// over) before the application gets ETIMEDOUT.
    pub meta_timeout: std::time::Duration,
    /// How long the kernel may keep entries and attributes while meta's
    /// invalidations reach this mount (see `coherence.rs`); 1 s otherwise.
    pub cache_timeout: std::time::Duration,
    /// This mount's certificate, key and the cluster CA (`-o cert=,key=,ca=`,
    /// by default `/etc/dfs/client.*`); None with `-o insecure` (plaintext).
    pub tls: Option<dfs_auth::TlsFiles>,
}

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum OptionsError {
    #[error("usage: dfs-fuse [-f] [-o OPTIONS] META_HOST:PORT[,HOST:PORT...] MOUNTPOINT")]
    Usage,
    #[error("unknown mount option '{0}'")]
    Unknown(String),
    #[error("bad value in '{0}'")]
    BadValue(String),
}

/// Options mount(8) and fstab pass that concern the kernel or mount itself; accepted and ignored.
const GENERIC: &[&str] = &[
    "rw",
    "defaults",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "owner",
    "group",
    "dev",
    "nodev",
    "suid",
    "nosuid",
    "exec",
    "noexec",
    "atime",
    "noatime",
    "relatime",
    "norelatime",
    "strictatime",
    "diratime",
    "nodiratime",
    "async",
    "sync",
    "dirsync",
    "_netdev",
    "nofail",
    "default_permissions",
    "lazytime",
    "nolazytime",
    "silent",
    "loud",
];

/// Parses a size like `512M`, `2G`, `1048576`.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (digits, mult) = match s.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let mult = match s[i..]
                .to_ascii_uppercase()
                .trim_end_matches('B')
                .trim_end_matches('I')
            {
                "K" => 1u64 << 10,
                "M" => 1 << 20,
                "G" => 1 << 30,
                "T" => 1 << 40,
                "" => 1,
                _ => return None,
            };
            (&s[..i], mult)
        }
        None => (s, 1),
    };
    digits.parse::<u64>().ok()?.checked_mul(mult)
}

pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<MountOptions, OptionsError> {
    let mut positional = Vec::new();
    let mut option_lists = Vec::new();
    let mut foreground = false;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-f" | "--foreground" => foreground = true,
            "-o" => option_lists.push(args.next().ok_or(OptionsError::Usage)?),
            // mount(8): -n no mtab, -s sloppy, -v verbose; -t names the type.
            "-n" | "-s" | "-v" => {}
            "-t" => {
                args.next();
            }
            s if s.starts_with("-o") && s.len() > 2 => option_lists.push(s[2..].to_string()),
            s if s.starts_with('-') => return Err(OptionsError::Unknown(s.to_string())),
            _ => positional.push(arg),
        }
    }
    let [source, mountpoint] =
        <[String; 2]>::try_from(positional).map_err(|_| OptionsError::Usage)?;
    let mut opts = MountOptions {
        meta_addrs: source
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        mountpoint: PathBuf::from(mountpoint),
        foreground,
        allow_other: false,
        allow_root: false,
        read_only: false,
        writeback_cache: false,
        sync_unlink: false,
        sync_create: false,
        cache_size: 512 << 20,
        metrics: None,
        log: None,
        source,
        meta_timeout: std::time::Duration::from_secs(60),
        cache_timeout: std::time::Duration::from_secs(30),
        tls: Some(dfs_auth::TlsFiles::under(
            std::path::Path::new(dfs_auth::tls::DEFAULT_DIR),
            "client",
        )),
    };
    let mut insecure = false;
    if opts.meta_addrs.is_empty() {
        return Err(OptionsError::Usage);
    }
    for option in option_lists
        .iter()
        .flat_map(|l| l.split(','))
        .filter(|o| !o.is_empty())
    {
        let (key, value) = match option.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (option, None),
        };
        match (key, value) {
            ("allow_other", None) => opts.allow_other = true,
            ("allow_root", None) => opts.allow_root = true,
            ("ro", None) => opts.read_only = true,
            ("writeback_cache", None) => opts.writeback_cache = true,
            ("sync_unlink", None) => opts.sync_unlink = true,
            ("sync_create", None) => opts.sync_create = true,
            ("cache_size", Some(v)) => {
                opts.cache_size =
                    parse_size(v).ok_or_else(|| OptionsError::BadValue(option.into()))?
            }
            ("metrics", Some(v)) => opts.metrics = Some(v.to_string()),
            ("insecure", None) => insecure = true,
            ("ca", Some(v)) | ("cert", Some(v)) | ("key", Some(v)) if !v.is_empty() => {
                if let Some(tls) = opts.tls.as_mut() {
                    let path = PathBuf::from(v);
                    match key {
                        "ca" => tls.ca = path,
                        "cert" => tls.cert = path,
                        _ => tls.key = path,
                    }
                }
            }
            ("log", Some(v)) => opts.log = Some(PathBuf::from(v)),
            ("meta_timeout", Some(v)) => {
                let secs: u64 = v
                    .parse()
                    .ok()
                    .filter(|s| (1..=86_400).contains(s))
                    .ok_or_else(|| OptionsError::BadValue(option.into()))?;
                opts.meta_timeout = std::time::Duration::from_secs(secs);
            }
            ("cache_timeout", Some(v)) => {
                let secs: u64 = v
                    .parse()
                    .ok()
                    .filter(|s| *s <= 86_400)
                    .ok_or_else(|| OptionsError::BadValue(option.into()))?;
                opts.cache_timeout = std::time::Duration::from_secs(secs);
            }
            (k, None) if GENERIC.contains(&k) => {}
            (k, _) if k.starts_with("x-") || k == "comment" || k == "fsname" || k == "subtype" => {}
            _ => return Err(OptionsError::Unknown(option.to_string())),
        }
    }
    if insecure {
        opts.tls = None;
    }
    Ok(opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn mount_helper_form() {
        let o = parse(args(
            "127.0.0.1:7000 /mnt/dfs -o rw,allow_other,cache_size=512M,_netdev,x-systemd.automount",
        ))
        .unwrap();
        assert_eq!(o.meta_addrs, vec!["127.0.0.1:7000"]);
        assert_eq!(o.mountpoint, PathBuf::from("/mnt/dfs"));
        assert!(o.allow_other && !o.foreground);
        assert_eq!(o.cache_size, 512 << 20);
    }

    #[test]
    fn foreground_and_failover_list() {
        let o = parse(args(
            "-f -o cache_size=1G,metrics=127.0.0.1:9200 a:1,b:2 /m",
        ))
        .unwrap();
        assert!(o.foreground);
        assert_eq!(o.meta_addrs, vec!["a:1", "b:2"]);
        assert_eq!(o.cache_size, 1 << 30);
        assert_eq!(o.metrics.as_deref(), Some("127.0.0.1:9200"));
        assert_eq!(o.meta_timeout, std::time::Duration::from_secs(60));
        let o = parse(args("a:1 /m -o meta_timeout=5")).unwrap();
        assert_eq!(o.meta_timeout, std::time::Duration::from_secs(5));
        assert!(parse(args("a:1 /m -o meta_timeout=0")).is_err());
        assert_eq!(o.cache_timeout, std::time::Duration::from_secs(30));
        let o = parse(args("a:1 /m -o cache_timeout=600")).unwrap();
        assert_eq!(o.cache_timeout, std::time::Duration::from_secs(600));
        assert!(parse(args("a:1 /m -o cache_timeout=x")).is_err());
        assert!(!o.sync_unlink);
        assert!(parse(args("a:1 /m -o sync_unlink")).unwrap().sync_unlink);
        assert!(!o.sync_create);
        assert!(parse(args("a:1 /m -o sync_create")).unwrap().sync_create);
    }

    #[test]
    fn errors() {
        assert_eq!(parse(args("a:1")), Err(OptionsError::Usage));
        assert_eq!(
            parse(args("a:1 /m -o cache_sise=1G")),
            Err(OptionsError::Unknown("cache_sise=1G".into()))
        );
        assert_eq!(
            parse(args("a:1 /m -o cache_size=lots")),
            Err(OptionsError::BadValue("cache_size=lots".into()))
        );
        assert_eq!(parse_size("64KiB"), Some(64 << 10));
        assert_eq!(parse_size("3"), Some(3));
    }
}
