//! Property and fuzz targets for everything that parses client input:
//! phone numbers, page tokens, field-mask paths, free text, `llm_config`
//! structs, and tokens (arbitrary bytes, arbitrary header and payload JSON,
//! signed and unsigned).
//!
//! Every target checks: no panic; bounded time per call; bounded allocation
//! per call (a counting allocator, per thread); and what a successful parse
//! promises (canonical output, round trips, bounds).
//!
//! A short run is part of `cargo test` (256 cases per target, proptest's
//! default). A long run: `PROPTEST_CASES=100000 cargo test --release --test fuzz -- --nocapture`
//! (each test prints, when its own run ends, how many calls it made, its
//! slowest call and its largest allocation: no test depends on another's
//! order).

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    collections::BTreeMap,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use jsonwebtoken::{Algorithm, EncodingKey};
use proptest::{
    prelude::*,
    test_runner::{FileFailurePersistence, TestRunner},
};
use prost::Message;
use prost_types::{value::Kind, ListValue, Struct, Value as PbValue};
use serde_json::{json, Map, Value};
use switchboard::{
    auth::{DbRole, Jwks, JwtVerifier},
    domain::{model::parse_text, AgentField, LlmConfig, Page, PageRequest, PhoneNumber},
};
use switchboard_testkit::keys;
use uuid::Uuid;

// ---- Measuring each call ---------------------------------------------------

/// Counts the bytes each thread allocates, so a target can bound what one
/// call allocates while other tests run on other threads.
struct CountingAllocator;

thread_local! {
    static ALLOCATED: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATED.try_with(|a| a.set(a.get() + layout.size() as u64));
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let grown = new_size.saturating_sub(layout.size()) as u64;
        let _ = ALLOCATED.try_with(|a| a.set(a.get() + grown));
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// No single call may take longer than this: a generous bound for a loaded
/// CI machine and a debug build, far above any honest parse.
const MAX_CALL_TIME: Duration = Duration::from_millis(500);

/// Runs of one test: how many calls, the slowest, the largest allocation.
struct Target {
    name: &'static str,
    runs: AtomicU64,
    slowest_ns: AtomicU64,
    most_bytes: AtomicU64,
}

impl Target {
    const fn new(name: &'static str) -> Self {
        Target {
            name,
            runs: AtomicU64::new(0),
            slowest_ns: AtomicU64::new(0),
            most_bytes: AtomicU64::new(0),
        }
    }

    /// Calls `f` once, and fails the case if it took too long or allocated
    /// more than `max_bytes`.
    fn call<R>(&self, max_bytes: u64, f: impl FnOnce() -> R) -> Result<R, TestCaseError> {
        let before = ALLOCATED.with(Cell::get);
        let started = Instant::now();
        let result = f();
        let took = started.elapsed();
        let bytes = ALLOCATED.with(Cell::get) - before;
        self.runs.fetch_add(1, Ordering::Relaxed);
        self.slowest_ns
            .fetch_max(took.as_nanos() as u64, Ordering::Relaxed);
        self.most_bytes.fetch_max(bytes, Ordering::Relaxed);
        prop_assert!(
            took < MAX_CALL_TIME,
            "{}: one call took {took:?}",
            self.name
        );
        prop_assert!(
            bytes <= max_bytes,
            "{}: one call allocated {bytes} bytes (bound {max_bytes})",
            self.name
        );
        Ok(result)
    }

    fn report(&self) {
        // `--nocapture` shows it; libtest keeps it with the test otherwise.
        println!(
            "fuzz {}: {} calls, slowest {:?}, most allocated in one call {} bytes",
            self.name,
            self.runs.load(Ordering::Relaxed),
            Duration::from_nanos(self.slowest_ns.load(Ordering::Relaxed)),
            self.most_bytes.load(Ordering::Relaxed)
        );
    }
}

/// proptest's defaults (256 cases, or `PROPTEST_CASES`), with failures kept
/// in one file beside this one so a found input is replayed first next time.
fn config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/fuzz.proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

/// Runs one property over `strategy` with proptest's runner (replayed
/// regressions first, then `PROPTEST_CASES` new cases, shrinking on
/// failure), then prints the figures of this run, pass or fail.
fn check<S>(target: &Target, strategy: S, property: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S: Strategy,
    S::Value: std::fmt::Debug,
{
    let result = TestRunner::new(config()).run(&strategy, property);
    target.report();
    if let Err(failure) = result {
        panic!("{}: {failure}", target.name);
    }
}

// ---- Phone numbers ---------------------------------------------------------

fn is_e164(s: &str) -> bool {
    let b = s.as_bytes();
    (3..=16).contains(&b.len())
        && b[0] == b'+'
        && (b'1'..=b'9').contains(&b[1])
        && b[2..].iter().all(u8::is_ascii_digit)
}

/// The first number of a country compiles that country's patterns (about
/// 2.5 MB, once per process); a parse after that allocates a few kB.
const PHONE_MAX_BYTES: u64 = 8 * 1024 * 1024;

/// libphonenumber loads its metadata on first use (about 2.5 MB and, in a
/// debug build, over a second): once per process, not per call.
fn phone_warm_up() {
    static WARM: std::sync::Once = std::sync::Once::new();
    WARM.call_once(|| {
        let _ = PhoneNumber::parse("+1 (800) 555-0100");
        let _ = PhoneNumber::parse_for_write("+1 (800) 555-0100");
    });
}

/// A lookup's parse.
fn phone_parse(target: &Target, input: &str) -> Result<Result<String, String>, TestCaseError> {
    phone_warm_up();
    target.call(PHONE_MAX_BYTES, || {
        PhoneNumber::parse(input)
            .map(|n| n.to_string())
            .map_err(|e| e.to_string())
    })
}

/// Validation compiles the patterns of each number type of the country
/// whenever they are not in the crate's regex cache (100 entries, so they
/// are compiled again as countries come and go): seen up to 12 MB allocated
/// (and freed) in one call, for Italy, in a 20 000-case run. Writes only.
const PHONE_WRITE_MAX_BYTES: u64 = 16 * 1024 * 1024;

/// A write's parse (validated).
fn phone_parse_for_write(
    target: &Target,
    input: &str,
) -> Result<Result<String, String>, TestCaseError> {
    phone_warm_up();
    target.call(PHONE_WRITE_MAX_BYTES, || {
        PhoneNumber::parse_for_write(input)
            .map(|n| n.to_string())
            .map_err(|e| e.to_string())
    })
}

/// What may reach a log of a number: never all of its digits, at most four.
fn assert_redacted(number: &PhoneNumber) -> Result<(), TestCaseError> {
    let digits = number.as_str().trim_start_matches('+');
    for shown in [format!("{number:?}"), number.redacted()] {
        prop_assert!(!shown.contains(digits), "{} shows {}", shown, digits);
        let shown_digits = shown.chars().filter(char::is_ascii_digit).count();
        prop_assert!(
            shown_digits <= 4 && shown_digits < digits.len(),
            "{}",
            shown
        );
    }
    Ok(())
}

fn any_phone_input() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,80}",
        "[+( ]{0,2}[0-9A-Za-z ().+-]{0,40}",
        "\\PC{0,200}",
        "\\+[1-9][0-9]{0,15}",
    ]
}

#[test]
fn phone_any_input_is_canonical_or_refused() {
    let target = Target::new("phone lookup: any input");
    check(&target, any_phone_input(), |input| {
        if let Ok(number) = phone_parse(&target, &input)? {
            prop_assert!(is_e164(&number), "{input:?} gave {number}");
            // Parsing is idempotent: the output is a fixed point.
            prop_assert_eq!(phone_parse(&target, &number)?, Ok(number.clone()));
            if let Ok(parsed) = PhoneNumber::parse(&number) {
                assert_redacted(&parsed)?;
            }
        }
        Ok(())
    });
}

#[test]
fn phone_writes_store_what_a_lookup_finds() {
    let target = Target::new("phone write: any input");
    check(&target, any_phone_input(), |input| {
        let stored = phone_parse_for_write(&target, &input)?;
        if let Ok(number) = &stored {
            prop_assert!(is_e164(number), "{input:?} gave {number}");
            // A lookup of what was sent, or of what was stored, names the
            // stored number: the write path never stores another key.
            prop_assert_eq!(phone_parse(&target, &input)?, Ok(number.clone()));
            prop_assert_eq!(phone_parse(&target, number)?, Ok(number.clone()));
            prop_assert_eq!(phone_parse_for_write(&target, number)?, Ok(number.clone()));
        }
        // What a write refuses, a lookup refuses or simply will not find;
        // what a lookup refuses, a write refuses.
        if phone_parse(&target, &input)?.is_err() {
            prop_assert!(stored.is_err(), "{input:?} stored, not looked up");
        }
        Ok(())
    });
}

#[test]
fn phone_e164_stays_itself() {
    let target = Target::new("phone lookup: E.164");
    check(
        &target,
        ("\\+[1-9][0-9]{1,14}", "[ \t]{0,3}"),
        |(number, pad)| {
            let parsed = phone_parse(&target, &format!("{pad}{number}{pad}"))?;
            prop_assert_eq!(parsed, Ok(number));
            Ok(())
        },
    );
}

#[test]
fn phone_impossible_e164_is_never_stored() {
    let target = Target::new("phone write: impossible E.164");
    // Too short for any plan, an unassigned NANP area code (N9X is reserved
    // for expansion, 37X/96X unused), or a NANP number too long.
    let impossible = prop_oneof![
        "\\+[1-9][0-9]{1,2}",
        "\\+1[2-9]9[0-9][2-9][0-9]{6}",
        "\\+1(37|96)[0-9][2-9][0-9]{6}",
        "\\+1[2-9][0-9]{10,13}",
    ];
    check(&target, impossible, |number| {
        let stored = phone_parse_for_write(&target, &number)?;
        prop_assert!(stored.is_err(), "{} stored as {:?}", number, stored);
        // A lookup still takes it as it is, and finds nothing.
        prop_assert_eq!(phone_parse(&target, &number)?, Ok(number));
        Ok(())
    });
}

#[test]
fn phone_nanp_written_forms_normalise() {
    let target = Target::new("phone: NANP written forms");
    let forms = ("[2-9][0-9]{2}", "[2-9][0-9]{2}", "[0-9]{4}", 0usize..5);
    check(&target, forms, |(area, exchange, line, form)| {
        let written = match form {
            0 => format!("+1 ({area}) {exchange}-{line}"),
            1 => format!("+1.{area}.{exchange}.{line}"),
            2 => format!("+1-{area}-{exchange}-{line}"),
            3 => format!("(+1) {area} {exchange} {line}"),
            _ => format!("+1 {area}{exchange}{line}"),
        };
        let canonical = format!("+1{area}{exchange}{line}");
        prop_assert_eq!(
            phone_parse(&target, &written)?,
            Ok(canonical.clone()),
            "{}",
            written
        );
        // A write decides the same for every form of one number.
        prop_assert_eq!(
            phone_parse_for_write(&target, &written)?,
            phone_parse_for_write(&target, &canonical)?,
            "{}",
            written
        );
        Ok(())
    });
}

#[test]
fn phone_toll_free_numbers_are_stored() {
    let target = Target::new("phone write: NANP toll-free");
    let numbers = ("8(00|33|44|55|66|77|88)", "[2-9][0-9]{6}", any::<bool>());
    check(&target, numbers, |(prefix, rest, written)| {
        let canonical = format!("+1{prefix}{rest}");
        let input = if written {
            format!("+1 ({prefix}) {}-{}", &rest[..3], &rest[3..])
        } else {
            canonical.clone()
        };
        prop_assert_eq!(phone_parse_for_write(&target, &input)?, Ok(canonical));
        Ok(())
    });
}

// ---- Page tokens -----------------------------------------------------------

#[test]
fn page_any_token_and_size_is_bounded_or_refused() {
    let target = Target::new("page token: any input");
    let inputs = (
        any::<i32>(),
        prop_oneof![".{0,100}", "[A-Za-z0-9_-]{0,90}", "\\PC{0,300}"],
    );
    check(&target, inputs, |(size, token)| {
        let parsed = target.call(16 * 1024, || PageRequest::<Uuid>::parse(size, &token))?;
        if let Ok(request) = parsed {
            prop_assert!((1..=500).contains(&request.size));
            prop_assert!(size >= 0);
            prop_assert_eq!(request.after.is_some(), !token.is_empty());
        }
        Ok(())
    });
}

#[test]
fn page_tokens_we_issue_parse_back() {
    let target = Target::new("page token: issued");
    let inputs = (
        prop::collection::vec(any::<u128>().prop_map(Uuid::from_u128), 1..30),
        1u32..20,
        any::<prop::sample::Index>(),
    );
    check(&target, inputs, |(ids, size, flip)| {
        let request = PageRequest { size, after: None };
        let page = Page::from_rows(ids.clone(), request, |id| *id);
        prop_assert_eq!(page.items.len(), ids.len().min(size as usize));
        if ids.len() > size as usize {
            let next = target.call(16 * 1024, || {
                PageRequest::<Uuid>::parse(size as i32, &page.next_page_token)
            })?;
            prop_assert_eq!(next.map(|r| r.after), Ok(Some(ids[size as usize - 1])));
            // A token changed in one place is refused or names some id; never a panic.
            let mut bytes = page.next_page_token.clone().into_bytes();
            let at = flip.index(bytes.len());
            bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
            let mangled = String::from_utf8_lossy(&bytes).into_owned();
            let _ = target.call(16 * 1024, || {
                PageRequest::<Uuid>::parse(size as i32, &mangled)
            })?;
        } else {
            prop_assert_eq!(page.next_page_token, "");
        }
        Ok(())
    });
}

// ---- Field masks and free text --------------------------------------------

/// An error message goes back in a gRPC trailer and into the log: it must not
/// grow with the input. (At most 40 echoed characters, each up to 10 bytes
/// when escaped, as `\u{10ffff}`, plus the fixed text.)
const MAX_MESSAGE_BYTES: usize = 512;

#[test]
fn mask_paths_are_known_names_or_a_short_error() {
    let target = Target::new("field mask path");
    let paths = prop_oneof![
        Just("name".to_owned()),
        Just("phone_number".to_owned()),
        Just("voiceId".to_owned()),
        "[a-z_A-Z.]{0,30}",
        ".{0,40}",
        "\\PC{0,3000}",
    ];
    check(&target, paths, |path| {
        match target.call(64 * 1024, || AgentField::parse_path(&path))? {
            Ok(field) => {
                prop_assert!(AgentField::ALL.contains(&field));
                prop_assert!(path.len() <= 12, "{path:?}");
            }
            Err(e) => prop_assert!(
                e.to_string().len() <= MAX_MESSAGE_BYTES,
                "{} bytes",
                e.to_string().len()
            ),
        }
        Ok(())
    });
}

#[test]
fn text_fields_are_bounded_and_storable() {
    let target = Target::new("text field");
    let inputs = (
        prop_oneof![".{0,300}", "\\PC{0,300}", "[ a-z\u{0}]{0,20}"],
        1usize..200,
    );
    check(&target, inputs, |(value, max)| {
        if let Ok(text) = target.call(64 * 1024, || parse_text("name", &value, max))? {
            prop_assert!(!text.is_empty() && text.chars().count() <= max);
            // Postgres text cannot hold U+0000: a value that parses must be storable.
            prop_assert!(!text.contains('\0'), "{text:?}");
        }
        Ok(())
    });
}

// ---- Routing: business hours, splits, caller patterns, attributes ----------

fn hhmm() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u32..25, 0u32..60).prop_map(|(h, m)| format!("{h:02}:{m:02}")),
        "[0-9:]{0,6}",
        ".{0,8}",
    ]
}

fn hours_json() -> impl Strategy<Value = Value> {
    let zone = prop_oneof![
        Just("America/New_York".to_owned()),
        Just("UTC".to_owned()),
        Just("Asia/Kolkata".to_owned()),
        ".{0,70}",
    ];
    let day = prop_oneof![Just("mon".to_owned()), Just("sun".to_owned()), "[a-z]{0,4}",];
    let window =
        (day, hhmm(), hhmm()).prop_map(|(d, o, c)| json!({"day": d, "open": o, "close": c}));
    let date = prop_oneof![
        (2000i32..2100, 1u32..13, 1u32..29).prop_map(|(y, m, d)| format!("{y:04}-{m:02}-{d:02}")),
        ".{0,12}",
    ];
    let range = (hhmm(), hhmm()).prop_map(|(o, c)| json!({"open": o, "close": c}));
    let exception = (date, any::<bool>(), prop::collection::vec(range, 0..6))
        .prop_map(|(d, closed, hours)| json!({"date": d, "closed": closed, "hours": hours}));
    (
        zone,
        prop::collection::vec(window, 0..40),
        prop::collection::vec(exception, 0..10),
    )
        .prop_map(|(z, w, e)| json!({"time_zone": z, "weekly": w, "exceptions": e}))
}

#[test]
fn business_hours_parse_canonically_or_are_refused_briefly() {
    use switchboard::domain::BusinessHours;
    let target = Target::new("business hours");
    let at = (0i64..4_102_444_800).prop_map(|s| chrono::DateTime::from_timestamp(s, 0));
    check(&target, (hours_json(), at), |(json, at)| {
        match target.call(256 * 1024, || BusinessHours::parse("business_hours", &json))? {
            Ok(hours) => {
                // Canonical: parsing what it prints gives the same schedule.
                let again = BusinessHours::parse("business_hours", &hours.to_json());
                prop_assert_eq!(again.as_ref(), Ok(&hours));
                if let Some(at) = at {
                    // Evaluating never allocates.
                    let open = target.call(0, || hours.is_open(at))?;
                    prop_assert_eq!(open, hours.is_open(at));
                }
            }
            Err(e) => prop_assert!(e.to_string().len() <= 300, "{e}"),
        }
        Ok(())
    });
}

#[test]
fn version_splits_are_bounded_and_stable() {
    use switchboard::domain::VersionServing;
    let target = Target::new("version split");
    let arms = prop::collection::vec((any::<i32>(), prop_oneof![any::<i32>(), 0i32..200]), 0..8);
    check(&target, (arms, ".{0,40}"), |(arms, call_id)| {
        if let Ok(split) = target.call(4096, || VersionServing::split("serving", &arms))? {
            let picked = split.pick("aa000000-0000-4000-8000-000000000001", &call_id);
            // A split always names one of its versions, the same every time.
            prop_assert!(picked.is_some_and(|v| arms.iter().any(|(a, _)| *a as i64 == v as i64)));
            prop_assert_eq!(
                picked,
                split.pick("aa000000-0000-4000-8000-000000000001", &call_id)
            );
            prop_assert_eq!(VersionServing::from_json(split.to_json().as_ref()), split);
        }
        Ok(())
    });
}

#[test]
fn caller_patterns_and_attributes_are_bounded() {
    use switchboard::domain::routing::{parse_attributes, parse_pattern};
    let target = Target::new("caller pattern, attributes");
    let attributes = prop::collection::vec(("[A-Za-z_0-9\\-]{0,70}", ".{0,200}"), 0..60);
    check(&target, (".{0,40}", attributes), |(pattern, attributes)| {
        if let Ok(p) = target.call(4096, || parse_pattern("rule.pattern", &pattern))? {
            prop_assert!(p.starts_with('+') && p.len() <= 16, "{p}");
            prop_assert!(p[1..].bytes().all(|b| b.is_ascii_digit()));
        }
        let given = attributes.len();
        if let Ok(map) = target.call(256 * 1024, || {
            parse_attributes("customer.attributes", attributes.clone())
        })? {
            prop_assert!(map.len() <= 50 && map.len() <= given);
            let bytes = serde_json::to_string(&map).map_or(usize::MAX, |s| s.len());
            prop_assert!(bytes <= 16 * 1024, "{bytes}");
            prop_assert!(map.values().all(|v| !v.contains('\0')));
        }
        Ok(())
    });
}

// ---- llm_config ------------------------------------------------------------

/// The limits `llm_config` documents in its error messages.
const LLM_MAX_DEPTH: usize = 16;
const LLM_MAX_BYTES: usize = 64 * 1024;

fn pb_value() -> impl Strategy<Value = PbValue> {
    let leaf = prop_oneof![
        Just(None),
        Just(Some(Kind::NullValue(0))),
        any::<bool>().prop_map(|b| Some(Kind::BoolValue(b))),
        any::<f64>().prop_map(|n| Some(Kind::NumberValue(n))),
        (-1e6f64..1e6).prop_map(|n| Some(Kind::NumberValue(n))),
        "\\PC{0,30}".prop_map(|s| Some(Kind::StringValue(s))),
        ".{0,10}".prop_map(|s| Some(Kind::StringValue(s))),
    ]
    .prop_map(|kind| PbValue { kind });
    leaf.prop_recursive(24, 256, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(|values| PbValue {
                kind: Some(Kind::ListValue(ListValue { values })),
            }),
            prop::collection::btree_map("\\PC{0,8}", inner, 0..6).prop_map(|fields| PbValue {
                kind: Some(Kind::StructValue(Struct {
                    fields: fields.into_iter().collect(),
                })),
            }),
        ]
    })
}

fn pb_struct() -> impl Strategy<Value = Struct> {
    prop::collection::btree_map("\\PC{0,8}", pb_value(), 0..6).prop_map(|fields| Struct {
        fields: fields.into_iter().collect(),
    })
}

/// Nesting depth counting the top struct and each struct or list as a level.
fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn nested(levels: usize, list_every: usize) -> Struct {
    let mut value = PbValue {
        kind: Some(Kind::StringValue("leaf".into())),
    };
    for level in 1..levels {
        let kind = if list_every > 0 && level % list_every == 0 {
            Kind::ListValue(ListValue {
                values: vec![value],
            })
        } else {
            Kind::StructValue(Struct {
                fields: BTreeMap::from([("k".to_owned(), value)])
                    .into_iter()
                    .collect(),
            })
        };
        value = PbValue { kind: Some(kind) };
    }
    Struct {
        fields: BTreeMap::from([("k".to_owned(), value)])
            .into_iter()
            .collect(),
    }
}

fn llm_from_struct(
    target: &Target,
    config: Struct,
    wire_len: usize,
) -> Result<Result<LlmConfig, String>, TestCaseError> {
    target.call(64 * wire_len as u64 + 256 * 1024, || {
        LlmConfig::from_struct(Some(config)).map_err(|e| e.to_string())
    })
}

#[test]
fn llm_config_is_bounded_storable_and_round_trips() {
    let target = Target::new("llm_config: any struct");
    check(&target, pb_struct(), |config| {
        let wire = config.encode_to_vec();
        // What a client can send is what prost decodes (it has its own recursion limit).
        let Ok(decoded) = Struct::decode(wire.as_slice()) else {
            return Ok(());
        };
        if let Ok(parsed) = llm_from_struct(&target, decoded, wire.len())? {
            let json = parsed.as_json();
            prop_assert!(depth(&json) <= LLM_MAX_DEPTH, "depth {}", depth(&json));
            let text = serde_json::to_string(&json).unwrap_or_default();
            prop_assert!(text.len() <= LLM_MAX_BYTES);
            // jsonb cannot hold U+0000: a config that parses must be storable.
            prop_assert!(!text.contains("\\u0000"), "{text}");
            let again = LlmConfig::from_struct(Some(parsed.to_struct()));
            prop_assert_eq!(again, Ok(parsed));
        }
        Ok(())
    });
}

#[test]
fn llm_config_depth_limit_is_exact() {
    let target = Target::new("llm_config: nesting");
    check(&target, (1usize..120, 0usize..4), |(levels, list_every)| {
        let config = nested(levels, list_every);
        let wire = config.encode_to_vec();
        let Ok(decoded) = Struct::decode(wire.as_slice()) else {
            return Ok(());
        };
        let parsed = llm_from_struct(&target, decoded, wire.len())?;
        prop_assert_eq!(
            parsed.is_ok(),
            levels <= LLM_MAX_DEPTH,
            "levels {} list_every {}: {:?}",
            levels,
            list_every,
            parsed.as_ref().err()
        );
        Ok(())
    });
}

// ---- Tokens ----------------------------------------------------------------

const SECRET: &str = "fuzz-secret-with-at-least-32-characters-long";
fn verifier() -> &'static (JwtVerifier, keys::TestKey) {
    static SETUP: std::sync::OnceLock<(JwtVerifier, keys::TestKey)> = std::sync::OnceLock::new();
    SETUP.get_or_init(|| {
        let key = keys::ec_key("ec-fuzz");
        let jwks = Jwks::from_document(keys::jwks_document(&[&key]).as_bytes())
            .unwrap_or_else(|e| panic!("jwks: {e}"));
        (JwtVerifier::new(SECRET).with_jwks(jwks), key)
    })
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,20}".prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A value for a well-known claim: mostly plausible, sometimes anything.
fn claim(plausible: Vec<Value>) -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        3 => prop::sample::select(plausible).prop_map(Some),
        1 => json_value().prop_map(Some),
        1 => Just(None),
    ]
}

fn payload() -> impl Strategy<Value = Value> {
    let now = jsonwebtoken::get_current_timestamp() as i64;
    (
        claim(vec![
            json!("anon"),
            json!("authenticated"),
            json!("service_role"),
            json!("postgres"),
            json!("supabase_admin"),
            json!(""),
        ]),
        claim(vec![
            json!(now + 600),
            json!(now - 10),
            json!(now - 100),
            json!(i64::MAX),
            json!(-1),
            json!(1.5e300),
        ]),
        claim(vec![
            json!(now),
            json!(now + 20),
            json!(now + 100),
            json!(u64::MAX),
        ]),
        claim(vec![json!(now - 5), json!(now + 100)]),
        claim(vec![
            json!(Uuid::new_v4().to_string()),
            json!("nobody"),
            json!("a0000000-0000-4000-8000-000000000001"),
        ]),
        prop::collection::btree_map(".{0,10}", json_value(), 0..4),
    )
        .prop_map(|(role, exp, iat, nbf, sub, extra)| {
            let mut claims: Map<String, Value> = extra.into_iter().collect();
            for (name, value) in [
                ("role", role),
                ("exp", exp),
                ("iat", iat),
                ("nbf", nbf),
                ("sub", sub),
            ] {
                if let Some(value) = value {
                    claims.insert(name.into(), value);
                }
            }
            Value::Object(claims)
        })
}

fn header() -> impl Strategy<Value = Value> {
    (
        claim(vec![
            json!("HS256"),
            json!("ES256"),
            json!("RS256"),
            json!("none"),
            json!("HS384"),
            json!("EdDSA"),
        ]),
        claim(vec![json!("ec-fuzz"), json!("other"), json!("")]),
        claim(vec![json!("JWT"), json!("at+jwt")]),
        prop::collection::btree_map(".{0,6}", json_value(), 0..3),
    )
        .prop_map(|(alg, kid, typ, extra)| {
            let mut header: Map<String, Value> = extra.into_iter().collect();
            for (name, value) in [("alg", alg), ("kid", kid), ("typ", typ)] {
                if let Some(value) = value {
                    header.insert(name.into(), value);
                }
            }
            Value::Object(header)
        })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Signer {
    Secret,
    EcKey,
    Garbage,
}

fn verify(
    target: &Target,
    token: &str,
) -> Result<Result<switchboard::auth::Claims, String>, TestCaseError> {
    target.call(32 * token.len() as u64 + 256 * 1024, || {
        verifier().0.verify(token).map_err(|e| e.to_string())
    })
}

#[test]
fn jwt_arbitrary_bytes_are_refused() {
    let target = Target::new("jwt verify: any bytes");
    let tokens = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..10_000),
        (
            "[A-Za-z0-9_-]{0,200}",
            "[A-Za-z0-9_-]{0,400}",
            "[A-Za-z0-9_-]{0,100}"
        )
            .prop_map(|(h, p, s)| format!("{h}.{p}.{s}").into_bytes()),
    ];
    check(&target, tokens, |bytes| {
        let text = String::from_utf8_lossy(&bytes);
        prop_assert!(verify(&target, &text)?.is_err());
        let mut header = b"Bearer ".to_vec();
        header.extend_from_slice(&bytes);
        let result = target.call(32 * header.len() as u64 + 256 * 1024, || {
            verifier().0.verify_header(Some(&header))
        })?;
        prop_assert!(result.is_err());
        Ok(())
    });
}

#[test]
fn jwt_arbitrary_header_and_payload() {
    let target = Target::new("jwt verify: any header and payload");
    let tokens = (
        header(),
        prop::option::weighted(0.1, "\\PC{0,40}"),
        payload(),
        prop::sample::select(vec![Signer::Secret, Signer::EcKey, Signer::Garbage]),
        prop::collection::vec(any::<u8>(), 0..300),
    );
    check(
        &target,
        tokens,
        |(header, raw_header, payload, signer, garbage)| {
            let header_text = raw_header.clone().unwrap_or_else(|| header.to_string());
            let signing_input = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(&header_text),
                URL_SAFE_NO_PAD.encode(payload.to_string())
            );
            let signature = match signer {
                Signer::Secret => jsonwebtoken::crypto::sign(
                    signing_input.as_bytes(),
                    &EncodingKey::from_secret(SECRET.as_bytes()),
                    Algorithm::HS256,
                )
                .unwrap_or_default(),
                Signer::EcKey => jsonwebtoken::crypto::sign(
                    signing_input.as_bytes(),
                    &verifier().1.signing,
                    Algorithm::ES256,
                )
                .unwrap_or_default(),
                Signer::Garbage => URL_SAFE_NO_PAD.encode(&garbage),
            };
            let token = format!("{signing_input}.{signature}");
            if let Ok(claims) = verify(&target, &token)? {
                // Only a token signed by a trusted key, with the alg of that key, passes.
                let alg = header.get("alg").and_then(Value::as_str);
                let kid = header.get("kid").and_then(Value::as_str);
                prop_assert!(raw_header.is_none());
                prop_assert!(
                    (signer == Signer::Secret && alg == Some("HS256"))
                        || (signer == Signer::EcKey
                            && alg == Some("ES256")
                            && kid == Some("ec-fuzz")),
                    "accepted {signer:?} with header {header}"
                );
                // What Postgres gets is a JSON object naming the verified role.
                let applied: Value = serde_json::from_str(&claims.json).unwrap_or_default();
                prop_assert_eq!(
                    applied.get("role").and_then(Value::as_str),
                    Some(claims.role.as_str())
                );
                prop_assert!(!claims.json.contains("\\u0000"));
                prop_assert!(payload.get("exp").is_some_and(Value::is_number));
                if claims.role == DbRole::Authenticated {
                    prop_assert!(claims.sub.is_some());
                }
            }
            Ok(())
        },
    );
}
