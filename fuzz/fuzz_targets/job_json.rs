//! Fuzzes the job JSON reader with arbitrary bytes. It must never panic,
//! and a job it accepts must survive being written and read again.
#![no_main]

use garivini::Job;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(job) = Job::from_json(data) else {
        return;
    };
    assert!(!job.funcname.is_empty());
    let again = Job::from_json(&job.to_json()).expect("our own JSON reads back");
    assert_eq!(again, job);
});
