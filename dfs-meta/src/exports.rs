//! Exports: what each client certificate may do with files, in the manner of
//! NFS's `/etc/exports` and MooseFS's `mfsexports.cfg`. One rule per line:
//!
//! ```text
//! # CLIENT   PATH  OPTIONS
//! backup     /     ro
//! web-*      /     rw,all_squash,anonuid=33,anongid=33
//! *          /     rw,root_squash
//! ```
//!
//! CLIENT is a certificate name (CN), a prefix ending in `*`, or `*`; the
//! first rule that matches applies, and a client no rule matches may not
//! touch files. Options: `ro` or `rw` (default), `root_squash` (uid and gid 0
//! become the anonymous ones), `all_squash` (every uid and gid does),
//! `no_root_squash` (default), `anonuid=N`, `anongid=N` (default 65534),
//! `uids=A-B[:C-D...]` and `gids=...` (the only owners, after squashing, that
//! the client may give files; others are EPERM). Squashed clients may not
//! create device nodes. Admin certificates are
//! not subject to exports.
//!
//! PATH is the directory the client sees as its root. Below `/`, meta maps
//! that directory to inode 1 for the client and refuses (ENOENT) any inode
//! outside it; `..` at the client's root stays there. The path is looked up
//! again when it may have changed (see `view`), so renaming the exported
//! directory moves the export with the name.

use tonic::Status;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Squash {
    None,
    Root,
    All,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// A certificate name, or a prefix when it ends in `*`.
    pattern: String,
    /// The directory the client sees as its root (`/`: the whole tree).
    pub path: String,
    pub read_only: bool,
    pub squash: Squash,
    pub anon_uid: u32,
    pub anon_gid: u32,
    /// Owners the client may give files (None: any).
    uids: Option<Vec<(u32, u32)>>,
    gids: Option<Vec<(u32, u32)>>,
}

const NOBODY: u32 = 65534;

/// An exported path without repeated or trailing slashes; None unless it is
/// absolute and free of `.`, `..` and NUL.
fn normal_path(path: &str) -> Option<String> {
    let rest = path.strip_prefix('/')?;
    let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    if parts
        .iter()
        .any(|p| *p == "." || *p == ".." || p.contains('\0'))
    {
        return None;
    }
    Some(format!("/{}", parts.join("/")))
}

/// `A-B:C:D-E` as inclusive ranges.
fn parse_ranges(v: &str) -> Option<Vec<(u32, u32)>> {
    v.split(':')
        .map(|part| match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (a.parse().ok()?, b.parse().ok()?);
                (a <= b).then_some((a, b))
            }
            None => part.parse().ok().map(|n| (n, n)),
        })
        .collect()
}

impl Rule {
    /// `pattern` exporting `path` read-write, nothing squashed, any owner.
    fn new(pattern: &str, path: String) -> Rule {
        Rule {
            pattern: pattern.to_string(),
            path,
            read_only: false,
            squash: Squash::None,
            anon_uid: NOBODY,
            anon_gid: NOBODY,
            uids: None,
            gids: None,
        }
    }

    fn matches(&self, name: &str) -> bool {
        match self.pattern.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => self.pattern == name,
        }
    }

    /// Changes are refused on a read-only export (EROFS).
    pub fn check_write(&self) -> Result<(), Status> {
        if self.read_only {
            return Err(dfs_proto::status_from_errno(
                libc::EROFS,
                "read-only export",
            ));
        }
        Ok(())
    }

    /// The owner a file gets (or a chown sets) for a uid the client asked
    /// for; EPERM when the export does not allow it.
    pub fn uid(&self, uid: u32) -> Result<u32, Status> {
        self.owner("uid", uid, self.anon_uid, &self.uids)
    }

    pub fn gid(&self, gid: u32) -> Result<u32, Status> {
        self.owner("gid", gid, self.anon_gid, &self.gids)
    }

    /// `id` squashed to `anon` as the rule says, then checked against `allowed`.
    fn owner(
        &self,
        what: &str,
        id: u32,
        anon: u32,
        allowed: &Option<Vec<(u32, u32)>>,
    ) -> Result<u32, Status> {
        let id = match self.squash {
            Squash::All => anon,
            Squash::Root if id == 0 => anon,
            _ => id,
        };
        let ok = allowed
            .as_ref()
            .is_none_or(|r| r.iter().any(|(a, b)| (*a..=*b).contains(&id)));
        if !ok {
            return Err(dfs_proto::status_from_errno(
                libc::EPERM,
                format!("{what} {id} is not allowed by this export"),
            ));
        }
        Ok(id)
    }

    /// Whether every owner a client gives stays as it is (no squashing, no
    /// allowed ranges): then a client can tell a new file's owner itself.
    pub fn keeps_owners(&self) -> bool {
        self.squash == Squash::None && self.uids.is_none() && self.gids.is_none()
    }

    /// Whether this client may make character or block devices.
    pub fn may_create_devices(&self) -> bool {
        self.squash == Squash::None
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exports {
    rules: Vec<Rule>,
}

impl Default for Exports {
    /// No exports file: every client certificate may do everything.
    fn default() -> Exports {
        Exports {
            rules: vec![Rule::new("*", "/".into())],
        }
    }
}

impl Exports {
    pub fn load(path: &std::path::Path) -> Result<Exports, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Exports::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Exports, String> {
        let mut rules = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let at = |e: String| format!("line {}: {e}", n + 1);
            let mut fields = line.split_whitespace();
            let (Some(pattern), Some(path)) = (fields.next(), fields.next()) else {
                return Err(at("expected CLIENT PATH [OPTIONS]".into()));
            };
            let path = normal_path(path).ok_or_else(|| {
                at(format!(
                    "bad path {path:?}: absolute, without . or .. (a subtree's root)"
                ))
            })?;
            if pattern.strip_suffix('*').unwrap_or(pattern).contains('*') {
                return Err(at(format!("bad client pattern {pattern:?}")));
            }
            let mut rule = Rule::new(pattern, path);
            for option in fields.next().unwrap_or("rw").split(',') {
                let number = |v: &str| {
                    v.parse::<u32>()
                        .map_err(|_| at(format!("bad number in {option}")))
                };
                match option.split_once('=') {
                    None if option == "ro" => rule.read_only = true,
                    None if option == "rw" => rule.read_only = false,
                    None if option == "root_squash" => rule.squash = Squash::Root,
                    None if option == "all_squash" => rule.squash = Squash::All,
                    None if option == "no_root_squash" => rule.squash = Squash::None,
                    Some(("anonuid", v)) => rule.anon_uid = number(v)?,
                    Some(("anongid", v)) => rule.anon_gid = number(v)?,
                    Some(("uids", v)) => {
                        rule.uids = Some(
                            parse_ranges(v).ok_or_else(|| at(format!("bad ranges in {option}")))?,
                        )
                    }
                    Some(("gids", v)) => {
                        rule.gids = Some(
                            parse_ranges(v).ok_or_else(|| at(format!("bad ranges in {option}")))?,
                        )
                    }
                    _ => return Err(at(format!("unknown option {option:?}"))),
                }
            }
            if fields.next().is_some() {
                return Err(at("options are one comma-separated field".into()));
            }
            rules.push(rule);
        }
        Ok(Exports { rules })
    }

    /// The rule for a client certificate name (None: it may not touch files).
    pub fn for_client(&self, name: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.matches(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_matching_rule_applies() {
        let e = Exports::parse(
            "# comment\nbackup / ro\nweb-* / rw,all_squash,anonuid=33,anongid=34\n* / root_squash\n",
        )
        .unwrap();
        let backup = e.for_client("backup").unwrap();
        assert!(backup.check_write().is_err());
        let web = e.for_client("web-1").unwrap();
        assert!(web.check_write().is_ok());
        assert_eq!((web.uid(1000).unwrap(), web.gid(0).unwrap()), (33, 34));
        assert!(!web.may_create_devices());
        let other = e.for_client("laptop").unwrap();
        let ids = (
            other.uid(0).unwrap(),
            other.uid(1000).unwrap(),
            other.gid(0).unwrap(),
        );
        assert_eq!(ids, (NOBODY, 1000, NOBODY));
        let limited = Exports::parse("dev / rw,uids=1000-1999:3000,gids=100")
            .unwrap()
            .for_client("dev")
            .cloned()
            .unwrap();
        assert!(limited.uid(1500).is_ok() && limited.uid(3000).is_ok());
        assert!(limited.uid(0).is_err() && limited.uid(2000).is_err());
        assert!(limited.gid(100).is_ok() && limited.gid(101).is_err());
        let sub = Exports::parse("team /srv//team/ rw").unwrap();
        assert_eq!(sub.for_client("team").unwrap().path, "/srv/team");
        assert!(Exports::parse("only / ro")
            .unwrap()
            .for_client("else")
            .is_none());
    }

    proptest::proptest! {
        /// An exports file is read or refused with a line number: never a panic.
        #[test]
        fn any_text_parses_or_is_refused(text in "\\PC{0,200}") {
            if let Err(e) = Exports::parse(&text) {
                proptest::prop_assert!(e.starts_with("line "), "{}", e);
            }
        }
    }

    #[test]
    fn bad_lines_are_refused_with_their_number() {
        for bad in [
            "x",
            "x data ro",
            "x /a/../b ro",
            "x /a/./b ro",
            "x / rw,frobnicate",
            "x / anonuid=-1",
            "x / uids=5-1",
            "x / gids=a",
            "a*b / rw",
            "x / rw extra",
        ] {
            let e = Exports::parse(&format!("# ok\n{bad}\n")).unwrap_err();
            assert!(e.starts_with("line 2:"), "{bad}: {e}");
        }
        assert_eq!(Exports::parse("").unwrap().for_client("x"), None);
    }
}
