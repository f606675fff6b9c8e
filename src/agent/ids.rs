//! Names and identifiers: ARNs, function references and their qualifiers, versions, request
//! ids and Lambda's timestamps. Pure functions of their arguments (and the clock, for the
//! times); no I/O.

use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// The account id in every ARN (there is one account per host).
pub const ACCOUNT_ID: &str = "000000000000";
/// The unpublished version's name.
pub const LATEST: &str = "$LATEST";

/// The region in ARNs: `AWS_REGION`, or `us-east-1`. Read once.
pub fn region() -> &'static str {
    static REGION: OnceLock<String> = OnceLock::new();
    REGION.get_or_init(|| {
        std::env::var("AWS_REGION").ok().filter(|r| !r.is_empty()).unwrap_or_else(|| "us-east-1".to_string())
    })
}

/// `arn:aws:lambda:<region>:000000000000:function:<name>`.
pub fn function_arn(name: &str) -> String {
    format!("arn:aws:lambda:{}:{ACCOUNT_ID}:function:{name}", region())
}

/// A function's ARN with a qualifier (a version or an alias): `...:function:<name>:<qualifier>`.
pub fn qualified_arn(name: &str, qualifier: impl fmt::Display) -> String {
    format!("{}:{qualifier}", function_arn(name))
}

/// `arn:aws:lambda:<region>:000000000000:layer:<name>`.
pub fn layer_arn(name: &str) -> String {
    format!("arn:aws:lambda:{}:{ACCOUNT_ID}:layer:{name}", region())
}

/// `arn:aws:lambda:<region>:000000000000:layer:<name>:<version>`.
pub fn layer_version_arn(name: &str, version: u32) -> String {
    format!("{}:{version}", layer_arn(name))
}

/// A function version: `$LATEST` (the one that changes) or a published number, from 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Version(u32);

impl Version {
    /// `$LATEST`.
    pub const LATEST: Version = Version(0);

    /// Published version `n` (n >= 1).
    pub fn published(n: u32) -> Version {
        debug_assert!(n >= 1, "published versions start at 1");
        Version(n)
    }

    /// The number as stored: 0 for `$LATEST`.
    pub fn from_stored(n: u32) -> Version {
        Version(n)
    }

    /// The number as stored: 0 for `$LATEST`.
    pub fn stored(self) -> u32 {
        self.0
    }

    /// Whether this is `$LATEST`.
    pub fn is_latest(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_latest() {
            f.write_str(LATEST)
        } else {
            write!(f, "{}", self.0)
        }
    }
}

/// What a qualifier names: a version (`$LATEST` or a number) or an alias.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Qualifier {
    /// `$LATEST` or a published version.
    Version(Version),
    /// An alias, by name.
    Alias(String),
}

impl fmt::Display for Qualifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Qualifier::Version(v) => v.fmt(f),
            Qualifier::Alias(a) => f.write_str(a),
        }
    }
}

/// Why a function reference or qualifier was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RefError {
    /// Not a function name, or an ARN of another account or region: no such function. Holds
    /// what was given.
    #[error("Function not found: {0}")]
    NoSuchFunction(String),
    /// The qualifier in the name and the `Qualifier` parameter differ.
    #[error("The derived qualifier from the function name does not match the specified qualifier.")]
    QualifierMismatch,
    /// A qualifier of a kind this host does not have (`$LATEST.PUBLISHED`).
    #[error("The qualifier {0} is not supported by this host.")]
    Unsupported(String),
}

/// The longest alias name.
pub const MAX_ALIAS_NAME: usize = 128;

/// An alias name: `[a-zA-Z0-9-_]{1,128}`, not all digits.
pub fn valid_alias_name(name: &str) -> bool {
    (1..=MAX_ALIAS_NAME).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !name.bytes().all(|b| b.is_ascii_digit())
}

/// A function name: `[a-zA-Z0-9-_]{1,64}`.
pub fn valid_function_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Qualifier {
    /// `$LATEST`, a version number (1 up, no leading zero) or an alias name.
    pub fn parse(s: &str) -> Result<Qualifier, RefError> {
        if s == LATEST {
            return Ok(Qualifier::Version(Version::LATEST));
        }
        if s.starts_with('$') {
            return Err(RefError::Unsupported(s.to_owned()));
        }
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return match s.parse::<u32>() {
                Ok(n) if n >= 1 && !s.starts_with('0') => Ok(Qualifier::Version(Version::published(n))),
                _ => Err(RefError::NoSuchFunction(s.to_owned())),
            };
        }
        if valid_alias_name(s) {
            return Ok(Qualifier::Alias(s.to_owned()));
        }
        Err(RefError::NoSuchFunction(s.to_owned()))
    }
}

/// A function as a request names it: its name and, if given, a qualifier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FunctionRef {
    /// The function's name.
    pub name: String,
    /// The version or alias, if one was named.
    pub qualifier: Option<Qualifier>,
}

impl FunctionRef {
    /// Parses every form Lambda accepts: `name`, `name:qualifier`,
    /// `000000000000:function:name[:qualifier]` and
    /// `arn:aws:lambda:<region>:000000000000:function:name[:qualifier]`, and checks the
    /// account and region of an ARN.
    pub fn parse(reference: &str) -> Result<FunctionRef, RefError> {
        let missing = || RefError::NoSuchFunction(reference.to_owned());
        let parts: Vec<&str> = reference.split(':').collect();
        let (name, qualifier) = match parts.as_slice() {
            ["arn", partition, "lambda", region_part, account, "function", rest @ ..] => {
                if !partition.starts_with("aws") || *region_part != region() || *account != ACCOUNT_ID {
                    return Err(missing());
                }
                split_rest(rest).ok_or_else(missing)?
            }
            // `<12 digits>:function:name[:qualifier]`, as Lambda's pattern has it; anything
            // else of two parts (`00000:function`) is a name and a qualifier.
            [account, "function", rest @ ..]
                if !rest.is_empty() && account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit()) =>
            {
                if *account != ACCOUNT_ID {
                    return Err(missing());
                }
                split_rest(rest).ok_or_else(missing)?
            }
            [name] => (*name, None),
            [name, q] => (*name, Some(*q)),
            _ => return Err(missing()),
        };
        if !valid_function_name(name) {
            return Err(missing());
        }
        let qualifier = qualifier.map(Qualifier::parse).transpose().map_err(|e| match e {
            RefError::NoSuchFunction(_) => missing(),
            other => other,
        })?;
        Ok(FunctionRef { name: name.to_owned(), qualifier })
    }

    /// Adds the `Qualifier` parameter of a request: it must agree with a qualifier in the name.
    pub fn with_qualifier(mut self, param: Option<&str>) -> Result<FunctionRef, RefError> {
        let Some(param) = param else { return Ok(self) };
        let parsed = Qualifier::parse(param).map_err(|e| match e {
            RefError::NoSuchFunction(_) => RefError::NoSuchFunction(qualified_arn(&self.name, param)),
            other => other,
        })?;
        match &self.qualifier {
            Some(q) if *q != parsed => Err(RefError::QualifierMismatch),
            _ => {
                self.qualifier = Some(parsed);
                Ok(self)
            }
        }
    }

    /// The ARN this reference names: the function's, qualified if it has a qualifier.
    pub fn arn(&self) -> String {
        match &self.qualifier {
            Some(q) => qualified_arn(&self.name, q),
            None => function_arn(&self.name),
        }
    }
}

fn split_rest<'a>(rest: &[&'a str]) -> Option<(&'a str, Option<&'a str>)> {
    match rest {
        [name] => Some((name, None)),
        [name, q] => Some((name, Some(q))),
        _ => None,
    }
}

/// A random id shaped like a UUID (version 4): revision ids and request ids. Unique, cheap (no
/// system call), not secret.
pub fn random_uuid() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // Every RandomState has fresh keys (seeded from the OS once per thread, then stepped).
    let state = std::collections::hash_map::RandomState::new();
    let hi = state.hash_one((n, 0u8)) & 0xffff_ffff_ffff_0fff | 0x4000;
    let lo = state.hash_one((n, 1u8)) & 0x3fff_ffff_ffff_ffff | 0x8000_0000_0000_0000;
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xffff,
        hi & 0xffff,
        lo >> 48,
        lo & 0xffff_ffff_ffff
    )
}

/// A random id of 32 hex digits (instance ids, trace ids, temporary names).
pub fn random_hex() -> String {
    random_uuid().replace('-', "")
}

/// A random number in `[0, 1)`, from the same source as [`random_uuid`] (alias routing).
pub fn random_fraction() -> f64 {
    let state = std::collections::hash_map::RandomState::new();
    (state.hash_one(0u8) >> 11) as f64 / (1u64 << 53) as f64
}

/// An X-Ray style trace id.
pub fn trace_id() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    format!("Root=1-{secs:08x}-{};Parent={};Sampled=0", &random_hex()[..24], &random_hex()[..16])
}

/// A time as Lambda writes `LastModified`: `2026-11-22T08:30:00.000+0000` (UTC).
pub fn lambda_time(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}+0000",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// A time as API Gateway and function URL events write `requestContext.time`:
/// `03/Dec/2026:07:45:00 +0000` (UTC).
pub fn clf_time(t: SystemTime) -> String {
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{day:02}/{}/{year:04}:{:02}:{:02}:{:02} +0000",
        MONTHS[(month as usize - 1) % 12],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Now, in ms since the Unix epoch (the asynchronous queue's clock, stored with its events).
pub fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// Now, as Lambda writes `LastModified`.
pub fn now() -> String {
    lambda_time(SystemTime::now())
}

/// Now in UTC as log lines carry it: `2026-11-22T08:30:00.123Z`.
pub fn timestamp() -> String {
    lambda_time(SystemTime::now()).replace("+0000", "Z")
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn parse(s: &str) -> Result<(String, Option<String>), RefError> {
        FunctionRef::parse(s).map(|r| (r.name, r.qualifier.map(|q| q.to_string())))
    }

    #[test]
    fn function_references_in_every_form() {
        let arn = function_arn("my-fn");
        let ok = |n: &str, q: Option<&str>| Ok((n.to_owned(), q.map(str::to_owned)));
        assert_eq!(parse("my-fn"), ok("my-fn", None));
        assert_eq!(parse("my-fn:prod"), ok("my-fn", Some("prod")));
        assert_eq!(parse("my-fn:7"), ok("my-fn", Some("7")));
        assert_eq!(parse("my-fn:$LATEST"), ok("my-fn", Some("$LATEST")));
        assert_eq!(parse(&arn), ok("my-fn", None));
        assert_eq!(parse(&format!("{arn}:prod")), ok("my-fn", Some("prod")));
        assert_eq!(parse("000000000000:function:my-fn"), ok("my-fn", None));
        assert_eq!(parse("000000000000:function:my-fn:3"), ok("my-fn", Some("3")));
        // An alias may be named `function` (found by the function_json fuzz target: the
        // short form of `000000000000:function:00000:function` did not parse).
        assert_eq!(parse("00000:function"), ok("00000", Some("function")));
        assert_eq!(parse("000000000000:function:00000:function"), ok("00000", Some("function")));
        assert_eq!(parse("000000000000:function"), ok("000000000000", Some("function")));
        for bad in [
            "",
            "bad name",
            "a.b",
            "my-fn:",
            "my-fn:0",
            "my-fn:01",
            "my-fn:bad alias",
            "a:b:c",
            "111111111111:function:f",
            "arn:aws:lambda:xx-nowhere-1:000000000000:function:f",
            "arn:aws:lambda:us-east-1:000000000000:function:f:1:2",
            "arn:aws:s3:::bucket",
        ] {
            assert!(matches!(FunctionRef::parse(bad), Err(RefError::NoSuchFunction(_))), "{bad}");
        }
        assert_eq!(FunctionRef::parse("f:$LATEST.PUBLISHED"), Err(RefError::Unsupported("$LATEST.PUBLISHED".into())));
        assert_eq!(FunctionRef::parse(&"a".repeat(65)).unwrap_err(), RefError::NoSuchFunction("a".repeat(65)));
    }

    #[test]
    fn the_qualifier_parameter_must_agree() {
        let r = FunctionRef::parse("f").unwrap().with_qualifier(Some("2")).unwrap();
        assert_eq!(r.qualifier, Some(Qualifier::Version(Version::published(2))));
        assert_eq!(r.arn(), qualified_arn("f", 2));
        let r = FunctionRef::parse("f:2").unwrap().with_qualifier(Some("2")).unwrap();
        assert_eq!(r.qualifier, Some(Qualifier::Version(Version::published(2))));
        assert_eq!(FunctionRef::parse("f:2").unwrap().with_qualifier(Some("3")), Err(RefError::QualifierMismatch));
        let r = FunctionRef::parse("f").unwrap().with_qualifier(Some("live")).unwrap();
        assert_eq!(r.qualifier, Some(Qualifier::Alias("live".into())));
        assert_eq!(FunctionRef::parse("f").unwrap().with_qualifier(None).unwrap().arn(), function_arn("f"));
        assert!(matches!(
            FunctionRef::parse("f").unwrap().with_qualifier(Some("no good")),
            Err(RefError::NoSuchFunction(arn)) if arn == qualified_arn("f", "no good")
        ));
    }

    #[test]
    fn alias_names() {
        assert!(valid_alias_name("live") && valid_alias_name("v1_2-x") && valid_alias_name(&"a".repeat(128)));
        assert!(!valid_alias_name("12") && !valid_alias_name("") && !valid_alias_name("a.b"));
        assert!(!valid_alias_name(&"a".repeat(129)));
    }

    #[test]
    fn versions_display_as_lambda_writes_them() {
        assert_eq!(Version::LATEST.to_string(), "$LATEST");
        assert_eq!(Version::published(12).to_string(), "12");
        assert!(Version::LATEST < Version::published(1));
        assert_eq!(Version::from_stored(0), Version::LATEST);
    }

    #[test]
    fn time_format() {
        assert_eq!(lambda_time(UNIX_EPOCH), "1970-01-01T00:00:00.000+0000");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_336_200_123);
        assert_eq!(lambda_time(t), "2026-11-22T08:30:00.123+0000");
        assert_eq!(lambda_time(UNIX_EPOCH + Duration::from_secs(951_782_400)), "2000-02-29T00:00:00.000+0000");
        assert_eq!(timestamp().len(), "2026-11-22T08:30:00.123Z".len());
    }

    #[test]
    fn ids_have_their_shapes() {
        let a = random_uuid();
        assert_ne!(a, random_uuid());
        assert_eq!((a.len(), &a[14..15], a.matches('-').count()), (36, "4", 4));
        assert_eq!(random_hex().len(), 32);
        assert!(trace_id().starts_with("Root=1-"));
        let fractions: Vec<f64> = (0..1000).map(|_| random_fraction()).collect();
        assert!(fractions.iter().all(|f| (0.0..1.0).contains(f)));
        let low = fractions.iter().filter(|f| **f < 0.5).count();
        assert!((350..650).contains(&low), "{low} of 1000 below one half");
    }
}
