//! Which repository URLs Ferry fetches from (pure, table-tested).
//!
//! * `https://`, `http://` and `git://` URLs are fetched over the network into a bare cache.
//! * `file://` URLs and absolute local paths are opened in place (read-only) — only when the
//!   caller allows local sources ([`Policy::allow_file`]): a server would otherwise let its users
//!   read any repository on its disk.
//! * Credentials in a URL (`https://user:token@host/…`) are refused rather than stored, shown and
//!   sent to agents; ssh (`ssh://`, `git@host:path`) is refused too (it needs keys Ferry does not
//!   manage).

use std::fmt;
use std::path::PathBuf;

use crate::GitError;

/// The longest URL accepted.
pub const MAX_URL_LEN: usize = 2048;

/// What a caller allows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    /// Allow `file://` URLs and absolute local paths.
    pub allow_file: bool,
}

/// A repository URL that passed [`RepoUrl::parse`].
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RepoUrl {
    raw: String,
    location: Location,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Location {
    /// Fetched over the network into the cache.
    Remote,
    /// A repository on this machine, opened in place.
    Local(PathBuf),
}

impl RepoUrl {
    /// Checks `raw` against the policy: the URL is kept exactly as given (it names the cache).
    pub fn parse(raw: &str, policy: Policy) -> Result<Self, GitError> {
        let bad = |why: &str| GitError::BadUrl(format!("{why} (got {:?})", truncate(raw)));
        if raw.is_empty() {
            return Err(GitError::BadUrl("the repository URL is empty".into()));
        }
        if raw.len() > MAX_URL_LEN {
            return Err(GitError::BadUrl(format!("the repository URL is longer than {MAX_URL_LEN} bytes")));
        }
        if raw.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(bad("the repository URL contains whitespace or control characters"));
        }
        if raw.starts_with('/') {
            return local(raw, PathBuf::from(raw), policy);
        }
        let Some((scheme, rest)) = raw.split_once("://") else {
            if raw.contains('@') && raw.contains(':') {
                return Err(GitError::Refused(
                    "ssh repositories (user@host:path) are not supported: use an https:// or git:// URL".into(),
                ));
            }
            return Err(bad("give an https://, http://, git:// or file:// URL"));
        };
        match scheme.to_ascii_lowercase().as_str() {
            "https" | "http" | "git" => {}
            "file" => {
                if !rest.starts_with('/') {
                    return Err(bad("a file:// URL names an absolute path (file:///path/to/repo)"));
                }
                return local(raw, PathBuf::from(rest), policy);
            }
            "ssh" | "git+ssh" | "ssh+git" => {
                return Err(GitError::Refused(
                    "ssh repositories are not supported: use an https:// or git:// URL".into(),
                ));
            }
            _ => return Err(bad("give an https://, http://, git:// or file:// URL")),
        }
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if authority.contains('@') {
            return Err(GitError::Refused(
                "credentials in repository URLs are refused (they would be stored and shown): \
                 use a public repository"
                    .into(),
            ));
        }
        let host = authority
            .rsplit_once(':')
            .map_or(authority, |(h, port)| if port.parse::<u16>().is_ok() || h.ends_with(']') { h } else { authority });
        if host.is_empty() {
            return Err(bad("the repository URL has no host"));
        }
        let path = &rest[authority.len()..];
        if path.len() <= 1 {
            return Err(bad("the repository URL has no path"));
        }
        if rest.contains(['?', '#']) {
            return Err(bad("the repository URL must not have a query or fragment"));
        }
        // gix must understand it the same way.
        gix::url::parse(gix::bstr::BStr::new(raw)).map_err(|e| bad(&format!("not a Git URL: {e}")))?;
        Ok(Self { raw: raw.to_string(), location: Location::Remote })
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// Whether the repository is on this machine (opened in place, never fetched).
    pub fn is_local(&self) -> bool {
        matches!(self.location, Location::Local(_))
    }

    pub(crate) fn location(&self) -> &Location {
        &self.location
    }

    /// A stable, file-name-safe key for this URL (names its cache and checkout directories).
    pub fn key(&self) -> String {
        key_of(&self.raw)
    }
}

/// The key of a URL: 32 hex digits of its SHA-256.
pub fn key_of(url: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, url.as_bytes());
    digest.as_ref()[..16].iter().map(|b| format!("{b:02x}")).collect()
}

fn local(raw: &str, path: PathBuf, policy: Policy) -> Result<RepoUrl, GitError> {
    if !policy.allow_file {
        return Err(GitError::Refused(
            "local repositories (file:// URLs and paths) are not allowed on this server \
             (start it with --allow-file-sources to allow them)"
                .into(),
        ));
    }
    if path.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
        return Err(GitError::BadUrl(format!("the path must not contain '..' (got {:?})", truncate(raw))));
    }
    Ok(RepoUrl { raw: raw.to_string(), location: Location::Local(path) })
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(200) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

impl fmt::Debug for RepoUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl fmt::Display for RepoUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPEN: Policy = Policy { allow_file: true };
    const STRICT: Policy = Policy { allow_file: false };

    #[test]
    fn network_urls_are_accepted_whatever_the_policy() {
        for url in [
            "https://github.com/example/app",
            "https://github.com/example/app.git",
            "http://127.0.0.1:8080/repo.git",
            "git://127.0.0.1:9418/repo",
            "git://[::1]:9418/repo",
            "HTTPS://example.com/a/b",
        ] {
            let u = RepoUrl::parse(url, STRICT).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert!(!u.is_local());
            assert_eq!(u.as_str(), url);
        }
    }

    #[test]
    fn local_sources_need_the_policy() {
        for url in ["file:///srv/repo", "/srv/repo", "file:///srv/repo/.git"] {
            assert!(matches!(RepoUrl::parse(url, STRICT), Err(GitError::Refused(_))), "{url}");
            assert!(RepoUrl::parse(url, OPEN).unwrap().is_local(), "{url}");
        }
        assert!(matches!(RepoUrl::parse("file://host/srv/repo", OPEN), Err(GitError::BadUrl(_))));
        assert!(matches!(RepoUrl::parse("/srv/../etc", OPEN), Err(GitError::BadUrl(_))));
    }

    #[test]
    fn credentials_and_ssh_are_refused() {
        for url in [
            "https://user:token@github.com/example/app",
            "https://token@github.com/example/app",
            "git@github.com:example/app.git",
            "ssh://git@github.com/example/app",
            "git+ssh://github.com/example/app",
        ] {
            assert!(matches!(RepoUrl::parse(url, OPEN), Err(GitError::Refused(_))), "{url}");
        }
    }

    #[test]
    fn malformed_urls_are_bad() {
        for url in [
            "",
            "github.com/example/app",
            "ftp://example.com/repo",
            "https://",
            "https:///path",
            "https://example.com",
            "https://example.com/",
            "https://example.com/a b",
            "https://example.com/a\n",
            "https://example.com/a?x=1",
            "https://example.com/a#frag",
            &format!("https://example.com/{}", "a".repeat(MAX_URL_LEN)),
        ] {
            assert!(matches!(RepoUrl::parse(url, OPEN), Err(GitError::BadUrl(_))), "{url:?}");
        }
    }

    #[test]
    fn keys_are_stable_and_distinct() {
        assert_eq!(key_of("https://a/b"), key_of("https://a/b"));
        assert_ne!(key_of("https://a/b"), key_of("https://a/c"));
        assert_eq!(key_of("x").len(), 32);
    }
}
