//! Image references, as Lambda's `Code.ImageUri` takes them: `host[:port]/repository[:tag]`
//! or `host[:port]/repository@sha256:<64 hex>` (a tag and a digest together are allowed; the
//! digest wins). The registry host is required (Lambda has no default registry).

use std::fmt;

use super::ImageError;

/// A parsed image URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// `host` or `host:port`.
    pub registry: String,
    /// `path/components`, lower case.
    pub repository: String,
    /// The tag, when given (`latest` when neither a tag nor a digest is).
    pub tag: Option<String>,
    /// `sha256:<hex>`, when given.
    pub digest: Option<String>,
}

/// The longest URI accepted: Ember's bound (Docker's reference grammar caps a repository name
/// at 255 characters, a tag at 128, and a digest is 71).
const MAX_URI: usize = 1024;

impl ImageRef {
    /// Parses `uri`.
    pub fn parse(uri: &str) -> Result<ImageRef, ImageError> {
        let bad = |why: &str| ImageError::Invalid(format!("Source image {uri} is not valid: {why}."));
        if uri.is_empty() || uri.len() > MAX_URI {
            return Err(bad("it must be 1 to 1024 characters"));
        }
        let (rest, digest) = match uri.split_once('@') {
            Some((rest, digest)) => {
                check_digest(digest).map_err(|_| bad("a digest is sha256: and 64 lower-case hex digits"))?;
                (rest, Some(digest.to_owned()))
            }
            None => (uri, None),
        };
        let (registry, path) = rest.split_once('/').ok_or_else(|| bad("it names no registry"))?;
        if !valid_registry(registry) {
            return Err(bad("the registry must be a host name or address, with an optional port"));
        }
        // A tag follows the last ':' of the last path component.
        let (repository, tag) = match path.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => (repo, Some(tag)),
            _ => (path, None),
        };
        if !valid_repository(repository) {
            return Err(bad("the repository must be lower-case path components of [a-z0-9._-]"));
        }
        if let Some(tag) = tag {
            if !valid_tag(tag) {
                return Err(bad("a tag is 1 to 128 characters of [A-Za-z0-9_.-], not starting with . or -"));
            }
        }
        let tag = match (tag, &digest) {
            (Some(tag), _) => Some(tag.to_owned()),
            (None, None) => Some("latest".to_owned()),
            (None, Some(_)) => None,
        };
        Ok(ImageRef { registry: registry.to_owned(), repository: repository.to_owned(), tag, digest })
    }

    /// What to ask the registry's manifest endpoint for: the digest if there is one, else the tag.
    pub fn reference(&self) -> &str {
        self.digest.as_deref().or(self.tag.as_deref()).unwrap_or("latest")
    }

    /// The same repository pinned to `digest`: Lambda's `ResolvedImageUri`.
    pub fn resolved(&self, digest: &str) -> String {
        format!("{}/{}@{digest}", self.registry, self.repository)
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// `sha256:` and 64 lower-case hex digits: the only digest algorithm taken.
pub fn check_digest(digest: &str) -> Result<&str, ImageError> {
    match digest.strip_prefix("sha256:") {
        Some(hex) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) => {
            Ok(hex)
        }
        _ => Err(ImageError::Registry(format!("{digest:?} is not a sha256 digest"))),
    }
}

fn valid_registry(registry: &str) -> bool {
    let (host, port) = match registry.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (registry, None),
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.parse::<u16>().is_ok_and(|n| n > 0));
    // Docker's rule: a first component is a registry only with a '.' or a ':', or as localhost.
    host_ok && port_ok && (host.contains('.') || port.is_some() || host == "localhost")
}

fn valid_repository(repository: &str) -> bool {
    !repository.is_empty()
        && repository.len() <= 255
        && repository.split('/').all(|c| {
            !c.is_empty()
                && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
                && c.as_bytes()[0].is_ascii_alphanumeric()
                && c.as_bytes()[c.len() - 1].is_ascii_alphanumeric()
        })
}

fn valid_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= 128
        && tag.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && !tag.starts_with(['.', '-'])
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn parses_tags_digests_and_ports() {
        let r = ImageRef::parse("127.0.0.1:5000/fns/echo:v1").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("127.0.0.1:5000", "fns/echo", Some("v1"))
        );
        assert_eq!(r.reference(), "v1");
        assert_eq!(r.to_string(), "127.0.0.1:5000/fns/echo:v1");
        assert_eq!(r.resolved(D), format!("127.0.0.1:5000/fns/echo@{D}"));

        let r = ImageRef::parse("123456789012.dkr.ecr.us-east-1.amazonaws.com/repo").unwrap();
        assert_eq!((r.tag.as_deref(), r.reference()), (Some("latest"), "latest"));

        let r = ImageRef::parse(&format!("localhost/a/b@{D}")).unwrap();
        assert_eq!((r.tag.as_deref(), r.digest.as_deref(), r.reference()), (None, Some(D), D));
        let r = ImageRef::parse(&format!("localhost:5000/a:t@{D}")).unwrap();
        assert_eq!((r.tag.as_deref(), r.reference()), (Some("t"), D));
    }

    #[test]
    fn refuses_what_is_not_a_reference() {
        for bad in [
            "",
            "echo",
            "echo:latest",
            "library/echo",
            "host.example/Echo",
            "host.example/echo:",
            "host.example/echo:-x",
            "host.example//echo",
            "host.example/echo/",
            "host.example:0/echo",
            "host.example:99999/echo",
            "host.example:x/echo",
            "-host.example/echo",
            "host.example/echo@sha256:00",
            "host.example/echo@md5:0123456789abcdef0123456789abcdef",
            "host.example/echo@SHA256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "host example/echo",
            "host.example/ech o",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?} parsed");
        }
        assert!(ImageRef::parse(&format!("h.example/{}", "a".repeat(1100))).is_err());
        let e = ImageRef::parse("echo").unwrap_err().to_string();
        assert!(e.starts_with("Source image echo is not valid"), "{e}");
    }
}
