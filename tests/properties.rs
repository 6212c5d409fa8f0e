//! Property tests of the two readers of bytes from outside: the
//! `inject_jobs` request parser and the job JSON reader. Neither panics,
//! whatever the bytes or JSON; what they accept is storable; and a valid
//! request parses to exactly the jobs sent. A bounded sample for every
//! run (the fuzz targets in fuzz/ go further). Needs no services.

use garivini::injector::parse_request;
use garivini::job::{MAX_DELAY, MAX_FUNCNAME_LEN, MAX_UNIQKEY_LEN};
use garivini::{Flag, Job, NewJob};
use proptest::prelude::*;
use serde_json::{json, Value};

const MAX_BATCH: usize = 8;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        // Failures are reported with their input; no files left behind.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// The first `max` bytes of `s`, cut at a character boundary.
fn at_most(mut s: String, max: usize) -> String {
    while s.len() > max {
        s.pop();
    }
    s
}

/// Field names the readers know, and others, so that generated objects
/// reach every path.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "funcname", "arg", "unique", "uniqkey", "run_after", "coalesce", "jobid",
            "dbid", "failcount", "flag", "arg_base64",
        ])
        .prop_map(String::from),
        1 => any::<String>(),
    ]
}

/// Any JSON value, weighted towards what the readers look for.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        any::<String>().prop_map(Value::String),
        prop::sample::select(vec!["42", " 7 ", "-1", "", "4294967296", "1e3", "f", "\0"])
            .prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(3, 48, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..10).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..10)
                .prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    })
}

/// One job of a valid request, as sent.
#[derive(Debug, Clone)]
struct Sent {
    funcname: String,
    arg: Option<String>,
    key: Option<(bool, String)>,
    run_after: Option<(bool, u32)>,
    coalesce: Option<String>,
}

fn sent() -> impl Strategy<Value = Sent> {
    // What a new job's name may hold: no NUL, whitespace or control
    // character (gearmand's protocols cannot carry them).
    let name = any::<String>().prop_map(|s| {
        let s: String = s
            .chars()
            .filter(|c| !c.is_control() && !c.is_whitespace())
            .collect();
        at_most(s, MAX_FUNCNAME_LEN)
    });
    let text = |max| any::<String>().prop_map(move |s| at_most(s, max));
    (
        name.prop_filter("a funcname", |s| !s.is_empty()),
        prop::option::of(any::<String>()),
        prop::option::of((any::<bool>(), text(MAX_UNIQKEY_LEN))),
        prop::option::of((any::<bool>(), 0..=MAX_DELAY)),
        prop::option::of(text(MAX_UNIQKEY_LEN)),
    )
        .prop_map(|(funcname, arg, key, run_after, coalesce)| Sent {
            funcname,
            arg,
            key,
            run_after,
            coalesce,
        })
}

impl Sent {
    fn to_json(&self) -> Value {
        let mut o = json!({ "funcname": self.funcname });
        if let Some(arg) = &self.arg {
            o["arg"] = json!(arg);
        }
        if let Some((unique, key)) = &self.key {
            o[if *unique { "unique" } else { "uniqkey" }] = json!(key);
        }
        if let Some((as_string, secs)) = self.run_after {
            // As the Perl original's clients may send it: a string.
            o["run_after"] = if as_string {
                json!(secs.to_string())
            } else {
                json!(secs)
            };
        }
        if let Some(c) = &self.coalesce {
            o["coalesce"] = json!(c);
        }
        o
    }

    fn expected(&self) -> NewJob {
        NewJob {
            funcname: self.funcname.clone(),
            arg: self.arg.clone().unwrap_or_default().into_bytes(),
            uniqkey: self
                .key
                .as_ref()
                .map(|(_, k)| k.clone())
                .filter(|k| !k.is_empty()),
            delay: self.run_after.map_or(0, |(_, secs)| secs),
            flag: Flag::Controller,
            coalesce: self.coalesce.clone(),
            priority: Default::default(),
            leased: false,
        }
    }
}

/// What parse_request must hold to whenever it accepts a request.
fn check_accepted(data: &[u8]) {
    if let Ok(request) = parse_request(data, MAX_BATCH) {
        assert!(!request.jobs.is_empty() && request.jobs.len() <= MAX_BATCH);
        for job in &request.jobs {
            job.validate().expect("an accepted job passes validation");
            assert_eq!(job.flag, Flag::Controller);
        }
    }
}

/// What Job::from_json must hold to whenever it accepts a document.
fn check_job_json(data: &[u8]) {
    if let Ok(job) = Job::from_json(data) {
        assert!(!job.funcname.is_empty());
        assert_eq!(Job::from_json(&job.to_json()).unwrap(), job);
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn neither_reader_panics_on_any_bytes(data in prop::collection::vec(any::<u8>(), 0..256)) {
        check_accepted(&data);
        check_job_json(&data);
    }

    #[test]
    fn neither_reader_panics_on_any_json(value in json_value()) {
        let document = serde_json::to_vec(&value).unwrap();
        check_accepted(&document);
        check_accepted(&serde_json::to_vec(&json!([value])).unwrap());
        check_job_json(&document);
    }

    #[test]
    fn a_valid_request_parses_to_exactly_the_jobs_sent(
        jobs in prop::collection::vec(sent(), 1..=MAX_BATCH),
        as_array in any::<bool>(),
    ) {
        let (body, array) = if jobs.len() == 1 && !as_array {
            (jobs[0].to_json(), false)
        } else {
            (Value::Array(jobs.iter().map(Sent::to_json).collect()), true)
        };
        let request = parse_request(&serde_json::to_vec(&body).unwrap(), MAX_BATCH)
            .unwrap_or_else(|e| panic!("{e}: {body}"));
        prop_assert_eq!(request.array, array);
        let expected: Vec<NewJob> = jobs.iter().map(Sent::expected).collect();
        prop_assert_eq!(request.jobs, expected);
    }

    #[test]
    fn any_job_survives_its_json_with_numbers_as_numbers_or_strings(
        dbid in any::<u32>(),
        jobid in any::<u64>(),
        funcname in any::<String>().prop_filter("a funcname", |s| !s.is_empty()),
        arg in prop::collection::vec(any::<u8>(), 0..64),
        uniqkey in prop::option::of(any::<String>()),
        coalesce in prop::option::of(any::<String>()),
        run_after in any::<u32>(),
        controller in any::<bool>(),
        failcount in any::<u8>(),
        level in 0u64..3,
    ) {
        let job = Job {
            dbid, jobid, funcname, arg, uniqkey, coalesce, run_after, failcount,
            flag: if controller { Flag::Controller } else { Flag::Shim },
            priority: garivini::Priority::from_column(level),
        };
        prop_assert_eq!(Job::from_json(&job.to_json()).unwrap(), job.clone());
        // As the Perl original writes it: every number a string.
        let mut perl: Value = serde_json::from_slice(&job.to_json()).unwrap();
        for field in ["jobid", "dbid", "run_after", "failcount"] {
            perl[field] = json!(perl[field].to_string());
        }
        prop_assert_eq!(Job::from_json(&serde_json::to_vec(&perl).unwrap()).unwrap(), job);
    }
}
