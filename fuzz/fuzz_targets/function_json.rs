//! Function names, references and qualifiers (`ember::agent::ids`, `functions::validate`), and
//! the JSON bodies of CreateFunction and UpdateFunctionConfiguration, given straight to their
//! handlers (`api::functions::create`, `api::functions::update_configuration`) as
//! `serde_json::Value`s built from the input, member by member from the operations' tables in
//! `api::members`, so that the fuzzer reaches deep fields without having to find JSON syntax.
//! `api_request` covers the same handlers behind HTTP and its JSON parser.
//!
//! Nothing is written: a CreateFunction body's `Code.ZipFile` is made invalid base64 (decoded
//! after every other check), and an UpdateFunctionConfiguration body always carries a
//! `RevisionId` that is not the function's (checked before the store writes). The function
//! updated, `fuzz-fn`, is created once per process (its code image built then, once).
//!
//! Input: byte 0 mod 3 picks the mode. 0, names: the rest is text, a function reference up to
//! the first newline and a qualifier after it. 1, CreateFunction, and 2,
//! UpdateFunctionConfiguration: the rest drives the body's construction (which members, what
//! kind of value, which strings and numbers); for an update, one more byte first picks the
//! function (`fuzz-fn`, mostly, or a name from the input).
//!
//! It passes if nothing panics and:
//! - a reference that parses names a valid function name, in every form (`name[:q]`,
//!   `000000000000:function:name[:q]`, its ARN) the same, the text given ending with its short
//!   form; one that does not is refused as given (or its `$` qualifier as unsupported);
//! - a qualifier that parses displays as given (`$LATEST`, a number, an alias name), every
//!   alias name parses as an alias, and `validate::alias_version` agrees on versions;
//! - the `Qualifier` parameter joins a reference only when it parses and agrees with the one in
//!   the name; a layer name that is accepted is accepted again as itself and as its ARN;
//! - CreateFunction fails (it has no code) with a 4xx error, the members check's own when that
//!   check refuses the body; UpdateFunctionConfiguration fails with a 4xx error (the members
//!   check's when it refuses), and `fuzz-fn`'s revision never changes.
#![no_main]

#[path = "common/agent.rs"]
mod agent;
#[path = "common/input.rs"]
mod input;

use std::sync::OnceLock;

use ember::agent::api::members::{self, Rule};
use ember::agent::api::{self, ApiError, Req};
use ember::agent::functions::validate;
use ember::agent::ids::{self, FunctionRef, Qualifier, RefError};
use hyper::header::HeaderMap;
use input::Input;
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Map, Number, Value};

const FUNCTION: &str = "fuzz-fn";
/// A zip of `handler.py`, for the one function this target creates.
const CODE_ZIP: &str = "UEsDBBQAAAAAAAAAIVy0CHBpLgAAAC4AAAAKAAAAaGFuZGxlci5weWRlZiBoYW5kbGVyKGV2ZW50LCBjb250ZXh0KToKICAgIHJldHVybiBldmVudApQSwECFAMUAAAAAAAAACFctAhwaS4AAAAuAAAACgAAAAAAAAAAAAAApIEAAAAAaGFuZGxlci5weVBLBQYAAAAAAQABADgAAABWAAAAAAA=";
const NOT_THE_REVISION: &str = "00000000-0000-4000-8000-000000000000";
/// The most JSON values one body holds.
const MAX_NODES: usize = 256;
const MAX_DEPTH: usize = 4;

const STRINGS: &[&str] = &[
    "",
    " ",
    "fuzz-fn",
    "f",
    "a b",
    "python3.11",
    "provided.al2023",
    "nodejs20.x",
    "handler.handler",
    "arn:aws:iam::000000000000:role/fuzz",
    "admin",
    "x86_64",
    "arm64",
    "PassThrough",
    "Active",
    "Zip",
    "Image",
    "Text",
    "JSON",
    "INFO",
    "PublishedVersions",
    "None",
    "arn:aws:lambda:us-east-1:000000000000:layer:l:1",
    "arn:aws:lambda:us-east-1:000000000000:layer:l:2",
    "arn:aws:lambda:us-east-1:000000000000:layer:m:1",
    "arn:aws:sqs:us-east-1:000000000000:q",
    "arn:aws:lambda:us-east-1:000000000000:function:f",
    "$LATEST",
    "MY_VAR",
    "AWS_REGION",
    "X",
    "1X",
    "aws:key",
    "team",
    "subnet-1",
    "\t",
    "\u{0}",
    "é",
    "🦀",
];
const NUMBERS: &[i64] =
    &[0, 1, -1, 2, 3, 60, 127, 128, 129, 511, 512, 513, 900, 901, 10_240, 10_241, 1 << 31, i64::MAX, i64::MIN];
const LONG: &[usize] = &[63, 64, 65, 128, 129, 256, 257, 513, 2049, 4097];

struct Setup {
    fx: &'static agent::Fixture,
    /// `fuzz-fn`'s revision, if it could be created.
    revision: Option<String>,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let fx = agent::fixture("json");
        let body = json!({
            "FunctionName": FUNCTION,
            "Runtime": "python3.11",
            "Role": "arn:aws:iam::000000000000:role/fuzz",
            "Handler": "handler.handler",
            "Code": { "ZipFile": CODE_ZIP },
        });
        let headers = HeaderMap::new();
        let req = Req { params: Vec::new(), query: None, headers: &headers, body };
        let revision = match fx.runtime.block_on(api::functions::create(&fx.agent, req)) {
            Ok(_) => Some(revision(fx)),
            Err(e) => {
                eprintln!("function_json: cannot create {FUNCTION} ({e}): updates stop at its lookup");
                None
            }
        };
        Setup { fx, revision }
    })
}

fn revision(fx: &agent::Fixture) -> String {
    let r = FunctionRef { name: FUNCTION.to_owned(), qualifier: None };
    fx.agent.control.get(&r).expect("the function exists").config.revision_id.clone()
}

/// Builds JSON values from the input.
struct Gen<'a> {
    input: Input<'a>,
    nodes: usize,
}

impl Gen<'_> {
    fn string(&mut self) -> String {
        match self.input.u8() {
            s @ 0..=159 => STRINGS[usize::from(s) % STRINGS.len()].to_owned(),
            160..=199 => {
                let n = usize::from(self.input.u8() % 64);
                String::from_utf8_lossy(self.input.bytes(n)).into_owned()
            }
            200..=229 => "a".repeat(self.input.pick(LONG)),
            _ => format!("{}{}", self.input.pick(STRINGS), self.input.pick(STRINGS)),
        }
    }

    fn number(&mut self) -> Value {
        match self.input.u8() % 8 {
            0..=4 => Value::from(self.input.pick(NUMBERS)),
            5 => Value::from(self.input.u64() as i64),
            6 => Value::from(self.input.u64()),
            _ => Number::from_f64(f64::from_bits(self.input.u64())).map_or(Value::Null, Value::Number),
        }
    }

    /// Any JSON value.
    fn value(&mut self, depth: usize) -> Value {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return Value::Null;
        }
        let kind = self.input.u8() % 8;
        match kind {
            5 | 6 if depth >= MAX_DEPTH => Value::Null,
            0 => Value::Null,
            1 => Value::Bool(self.input.bool()),
            2 | 3 => self.number(),
            4 | 7 => Value::String(self.string()),
            5 => {
                let n = self.input.u8() % 4;
                Value::Array((0..n).map(|_| self.value(depth + 1)).collect())
            }
            _ => {
                let n = self.input.u8() % 4;
                Value::Object((0..n).map(|_| (self.string(), self.value(depth + 1))).collect())
            }
        }
    }

    /// A value of the kind member `name` takes, mostly.
    fn value_for(&mut self, name: &str, depth: usize) -> Value {
        if self.input.u8() % 8 == 0 {
            return self.value(depth);
        }
        self.nodes += 1;
        match name {
            "Timeout" | "MemorySize" | "Size" => self.number(),
            "Publish" | "DryRun" | "Ipv6AllowedForDualStack" => Value::Bool(self.input.bool()),
            "Variables" | "Tags" => {
                let n = self.input.u8() % 5;
                Value::Object((0..n).map(|_| (self.string(), Value::String(self.string()))).collect())
            }
            "Layers" | "Architectures" | "SubnetIds" | "SecurityGroupIds" => {
                let n = self.input.u8() % 7;
                Value::Array((0..n).map(|_| Value::String(self.string())).collect())
            }
            _ => Value::String(self.string()),
        }
    }

    /// An object with members from `rules` (and now and then one that is not).
    fn object_for(&mut self, rules: &[(&str, Rule)], depth: usize) -> Value {
        let mut map = Map::new();
        for _ in 0..self.input.u8() % 10 {
            if self.nodes > MAX_NODES {
                break;
            }
            match self.input.u8() {
                s @ 0..=239 => {
                    let (name, rule) = &rules[usize::from(s) % rules.len()];
                    let value = match rule {
                        Rule::Struct(inner) if depth < MAX_DEPTH && self.input.u8() % 8 != 0 => {
                            self.object_for(inner, depth + 1)
                        }
                        _ => self.value_for(name, depth + 1),
                    };
                    map.insert((*name).to_owned(), value);
                }
                _ => {
                    let name = self.string();
                    let value = self.value(depth + 1);
                    map.insert(name, value);
                }
            }
        }
        Value::Object(map)
    }
}

fn check_reference(s: &str) {
    match FunctionRef::parse(s) {
        Ok(r) => {
            assert!(ids::valid_function_name(&r.name), "{s:?} names {:?}", r.name);
            assert!(validate::function_name(&r.name).is_ok());
            let q = r.qualifier.as_ref().map(ToString::to_string);
            let short = match &q {
                Some(q) => format!("{}:{q}", r.name),
                None => r.name.clone(),
            };
            let partial = format!("{}:function:{short}", ids::ACCOUNT_ID);
            for form in [&short, &partial, &r.arn()] {
                assert_eq!(FunctionRef::parse(form).as_ref(), Ok(&r), "{s:?} as {form:?}");
            }
            assert!(s.ends_with(&short), "{s:?} parsed as {short:?}");
        }
        Err(RefError::NoSuchFunction(given)) => assert_eq!(given, s),
        Err(RefError::Unsupported(q)) => assert!(q.starts_with('$') && s.ends_with(&format!(":{q}")), "{s:?}: {q:?}"),
        Err(e @ RefError::QualifierMismatch) => panic!("{s:?}: {e}"),
    }
}

fn check_qualifier(p: &str) {
    match Qualifier::parse(p) {
        Ok(q) => {
            assert_eq!(q.to_string(), p);
            match &q {
                Qualifier::Version(v) => assert_eq!(validate::alias_version(p).ok(), Some(*v)),
                Qualifier::Alias(a) => {
                    assert!(ids::valid_alias_name(a));
                    assert!(validate::alias_version(p).is_err());
                }
            }
        }
        Err(RefError::NoSuchFunction(given)) => {
            assert_eq!(given, p);
            assert!(validate::alias_version(p).is_err());
        }
        Err(RefError::Unsupported(given)) => assert!(given == p && p.starts_with('$')),
        Err(e @ RefError::QualifierMismatch) => panic!("{p:?}: {e}"),
    }
    if ids::valid_alias_name(p) {
        assert_eq!(Qualifier::parse(p), Ok(Qualifier::Alias(p.to_owned())));
    }
    assert_eq!(validate::alias_name(p).is_ok(), ids::valid_alias_name(p));
}

fn check_with_qualifier(r: &FunctionRef, param: &str) {
    assert_eq!(r.clone().with_qualifier(None).as_ref(), Ok(r));
    let parsed = Qualifier::parse(param);
    match r.clone().with_qualifier(Some(param)) {
        Ok(joined) => {
            let parsed = parsed.expect("a qualifier taken parses");
            assert_eq!(joined.name, r.name);
            assert_eq!(joined.qualifier.as_ref(), Some(&parsed));
            if let Some(q) = &r.qualifier {
                assert_eq!(q, &parsed);
            }
        }
        Err(RefError::QualifierMismatch) => {
            let parsed = parsed.expect("a mismatched qualifier parses");
            assert!(r.qualifier.as_ref().is_some_and(|q| *q != parsed));
        }
        Err(RefError::NoSuchFunction(arn)) => {
            assert!(matches!(parsed, Err(RefError::NoSuchFunction(_))));
            assert_eq!(arn, ids::qualified_arn(&r.name, param));
        }
        Err(RefError::Unsupported(q)) => assert_eq!(q, param),
    }
}

fn names(text: &str) {
    let (reference, param) = text.split_once('\n').unwrap_or((text, ""));
    check_reference(reference);
    check_qualifier(param);
    if let Ok(r) = FunctionRef::parse(reference) {
        check_with_qualifier(&r, param);
    }
    assert_eq!(validate::function_name(reference).is_ok(), ids::valid_function_name(reference));
    if let Ok(name) = validate::layer_name(reference) {
        assert_eq!(validate::layer_name(&name).ok().as_ref(), Some(&name));
        assert_eq!(validate::layer_name(&ids::layer_arn(&name)).ok().as_ref(), Some(&name));
    }
    let _ = validate::layers(&text.lines().map(str::to_owned).collect::<Vec<_>>());
}

fn create(setup: &Setup, gen: &mut Gen) {
    let mut body = gen.object_for(members::CREATE_FUNCTION, 0);
    // No code: nothing may be stored.
    if let Some(Value::String(zip)) = body.pointer_mut("/Code/ZipFile") {
        zip.insert(0, '!');
    }
    let refused = members::check(&body, members::CREATE_FUNCTION, "CreateFunction").err();
    let headers = HeaderMap::new();
    let req = Req { params: Vec::new(), query: None, headers: &headers, body };
    let fx = setup.fx;
    let e: ApiError = match fx.runtime.block_on(api::functions::create(&fx.agent, req)) {
        Ok(_) => panic!("CreateFunction succeeded without code"),
        Err(e) => e,
    };
    assert!((400..500).contains(&e.status), "{e:?}");
    if let Some(refused) = refused {
        assert_eq!(e, refused);
    }
}

fn update(setup: &Setup, gen: &mut Gen) {
    let name = match gen.input.u8() % 8 {
        0 => gen.string(),
        _ => FUNCTION.to_owned(),
    };
    let mut body = gen.object_for(members::UPDATE_FUNCTION_CONFIGURATION, 0);
    // A stale revision: the update is refused before the store writes. A value that is no
    // string fails the body's shape, earlier still.
    if body.get("RevisionId").is_none_or(|v| v.is_string() || v.is_null()) {
        body["RevisionId"] = Value::from(NOT_THE_REVISION);
    }
    let refused = members::check(&body, members::UPDATE_FUNCTION_CONFIGURATION, "UpdateFunctionConfiguration").err();
    let headers = HeaderMap::new();
    let req = Req { params: vec![name.clone()], query: None, headers: &headers, body };
    let fx = setup.fx;
    let e: ApiError = match fx.runtime.block_on(api::functions::update_configuration(&fx.agent, req)) {
        Ok(_) => panic!("UpdateFunctionConfiguration went through with a stale RevisionId"),
        Err(e) => e,
    };
    assert!((400..500).contains(&e.status), "{e:?}");
    if let (Some(refused), true) = (refused, name == FUNCTION) {
        assert_eq!(e, refused);
    }
    if let Some(before) = &setup.revision {
        assert_eq!(&revision(fx), before, "{FUNCTION} changed");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode % 3 {
        0 => names(&String::from_utf8_lossy(rest)),
        1 => create(setup(), &mut Gen { input: Input(rest), nodes: 0 }),
        _ => update(setup(), &mut Gen { input: Input(rest), nodes: 0 }),
    }
});
