//! Fuzzes the `inject_jobs` parser with arbitrary bytes. It must never
//! panic, and whatever it accepts must be storable and mean the same when
//! written back as a request.
#![no_main]

use garivini::injector::parse_request;
use garivini::job::Flag;
use libfuzzer_sys::fuzz_target;

const MAX_BATCH: usize = 10;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = parse_request(data, MAX_BATCH) else {
        return;
    };
    assert!(!request.jobs.is_empty() && request.jobs.len() <= MAX_BATCH);
    assert!(request.array || request.jobs.len() == 1);
    for job in &request.jobs {
        job.validate().expect("a parsed job passes validation");
        assert_eq!(job.flag, Flag::Controller);
        assert!(job.uniqkey.as_deref() != Some(""), "an empty key is no key");
    }
    // Written back as a request, the jobs parse to themselves.
    let items: Vec<serde_json::Value> = request
        .jobs
        .iter()
        .map(|job| {
            serde_json::json!({
                "funcname": job.funcname,
                "arg": String::from_utf8(job.arg.clone()).expect("a JSON string's bytes"),
                "uniqkey": job.uniqkey,
                "run_after": job.delay,
                "coalesce": job.coalesce,
            })
        })
        .collect();
    let again = if request.array {
        serde_json::Value::Array(items)
    } else {
        items.into_iter().next().unwrap()
    };
    let again = parse_request(&serde_json::to_vec(&again).unwrap(), MAX_BATCH)
        .expect("a request written back parses");
    assert_eq!(again, request);
});
