//! The job JSON every worker receives (see DESIGN.md): written from a
//! [`Job`], and read back from ours or the Perl original's.

use base64::Engine as _;
use serde::Serialize;

use super::{gearman_unique, Flag, Job, Priority};
use crate::error::{Error, Result};

/// The job JSON as written: borrowed fields, so encoding allocates only the
/// output buffer.
#[derive(Serialize)]
struct JobJsonOut<'a> {
    jobid: u64,
    dbid: u32,
    funcname: &'a str,
    arg: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    arg_base64: Option<String>,
    uniqkey: Option<&'a str>,
    coalesce: Option<&'a str>,
    run_after: u32,
    flag: Flag,
    failcount: u8,
    priority: Priority,
}

/// What a JSON value is, for an error message that names the type and
/// never echoes the value (which may be megabytes, or private).
fn kind(value: &serde_json::Value) -> &'static str {
    use serde_json::Value;
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The fields of a job JSON object, read one by one so that an error names
/// the field that is wrong.
struct Fields(serde_json::Map<String, serde_json::Value>);

impl Fields {
    /// An unsigned integer given as a JSON number or as a string of digits
    /// (the Perl original sends `"jobid":"42"`). `None` when absent or null.
    fn number<T: TryFrom<u64>>(&self, key: &str) -> std::result::Result<Option<T>, String> {
        use serde_json::Value;
        let value = match self.0.get(key) {
            None | Some(Value::Null) => return Ok(None),
            Some(v) => v,
        };
        let n = match value {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.trim().parse::<u64>().ok(),
            _ => None,
        }
        .ok_or_else(|| {
            format!(
                "{key} must be an unsigned integer or a string of one, not {}",
                match value {
                    Value::Number(_) => "a negative or fractional number",
                    Value::String(_) => "a string of something else",
                    other => kind(other),
                }
            )
        })?;
        T::try_from(n)
            .map(Some)
            .map_err(|_| format!("{key} {n} is out of range"))
    }

    /// A number that must be there.
    fn required<T: TryFrom<u64>>(&self, key: &str) -> std::result::Result<T, String> {
        self.number(key)?.ok_or_else(|| format!("{key} is missing"))
    }

    /// A string, or `None` when absent or null.
    fn text(&mut self, key: &str) -> std::result::Result<Option<String>, String> {
        use serde_json::Value;
        match self.0.remove(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(format!(
                "{key} must be a string or null, not {}",
                kind(&other)
            )),
        }
    }
}

impl Job {
    /// Encodes the job JSON that every real worker receives.
    ///
    /// `arg` is a JSON string when the payload is UTF-8 (the usual case:
    /// text, JSON). A payload that is not UTF-8 cannot be a JSON string
    /// without loss, so it goes as `"arg": null` plus `"arg_base64"`.
    pub fn to_json(&self) -> Vec<u8> {
        let (arg, arg_base64) = match std::str::from_utf8(&self.arg) {
            Ok(text) => (Some(text), None),
            Err(_) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(&self.arg)),
            ),
        };
        let out = JobJsonOut {
            jobid: self.jobid,
            dbid: self.dbid,
            funcname: &self.funcname,
            arg,
            arg_base64,
            uniqkey: self.uniqkey.as_deref(),
            coalesce: self.coalesce.as_deref(),
            run_after: self.run_after,
            flag: self.flag,
            failcount: self.failcount,
            priority: self.priority,
        };
        serde_json::to_vec(&out).expect("a struct of strings and integers always serializes")
    }

    /// The Gearman unique id the job is submitted in the background with:
    /// its unique key where gearmand can take it (a `shim` row: its
    /// function's namespace is the key's), otherwise `gv:DBID:JOBID`. A
    /// row submitted again while its first copy still waits in gearmand
    /// (its lease ran out, no worker took it) is then coalesced there,
    /// not queued twice. `controller` rows all go to `run_queued_job`,
    /// where keys of different functions could meet: they always take
    /// the row's id.
    pub fn dispatch_unique(&self) -> String {
        match gearman_unique(self.uniqkey.as_deref()) {
            key if !key.is_empty() && self.flag == Flag::Shim => key.to_string(),
            _ => format!("gv:{}:{}", self.dbid, self.jobid),
        }
    }

    /// Reads a job JSON document, as the Perl original or this crate wrote it.
    ///
    /// Numbers may come as strings (the Perl original sends `"jobid":"42"`)
    /// and unknown fields are ignored; anything else of the wrong type is
    /// refused with an [`Error::InvalidJobJson`] whose one line names the
    /// field. Never panics, whatever the bytes.
    pub fn from_json(data: &[u8]) -> Result<Job> {
        Job::read_json(data).map_err(|reason| Error::InvalidJobJson { reason })
    }

    fn read_json(data: &[u8]) -> std::result::Result<Job, String> {
        let value: serde_json::Value =
            serde_json::from_slice(data).map_err(|e| format!("not JSON: {e}"))?;
        let serde_json::Value::Object(map) = value else {
            return Err(format!("expected a JSON object, not {}", kind(&value)));
        };
        let mut f = Fields(map);
        let jobid = f.required("jobid")?;
        let dbid = f.required("dbid")?;
        let run_after = f.number("run_after")?.unwrap_or(0);
        let failcount = f.number("failcount")?.unwrap_or(0);
        let funcname = f.text("funcname")?.ok_or("funcname is missing")?;
        if funcname.is_empty() {
            return Err("funcname is empty".into());
        }
        let arg = match (f.text("arg")?, f.text("arg_base64")?) {
            (_, Some(b64)) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| format!("arg_base64 is not base64: {e}"))?,
            (Some(text), None) => text.into_bytes(),
            (None, None) => Vec::new(),
        };
        Ok(Job {
            dbid,
            jobid,
            funcname,
            arg,
            uniqkey: f.text("uniqkey")?,
            coalesce: f.text("coalesce")?,
            run_after,
            flag: Flag::from_column(f.text("flag")?.as_deref().map(str::as_bytes)),
            failcount,
            // Lenient, as for flag: a writer of ours or another's.
            priority: f
                .text("priority")
                .ok()
                .flatten()
                .and_then(|p| p.parse().ok())
                .unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::job;
    use super::*;

    #[test]
    fn job_json_round_trips() {
        let j = job();
        assert_eq!(Job::from_json(&j.to_json()).unwrap(), j);
    }

    #[test]
    fn job_json_has_the_contract_fields() {
        let v: serde_json::Value = serde_json::from_slice(&job().to_json()).unwrap();
        assert_eq!(v["jobid"], 42);
        assert_eq!(v["dbid"], 2);
        assert_eq!(v["funcname"], "resize");
        assert_eq!(v["arg"], "{\"w\":10}");
        assert_eq!(v["uniqkey"], "img-1");
        assert_eq!(v["coalesce"], serde_json::Value::Null);
        assert_eq!(v["flag"], "shim");
        assert_eq!(v["failcount"], 3);
        assert!(v.get("arg_base64").is_none());
    }

    #[test]
    fn job_json_accepts_numbers_as_strings_like_the_perl_original() {
        let j = Job::from_json(
            br#"{"jobid":"42","dbid":"1","funcname":"f","arg":"x","uniqkey":null,
                "coalesce":null,"run_after":"1790000000","flag":"controller","failcount":"2"}"#,
        )
        .unwrap();
        assert_eq!((j.jobid, j.dbid, j.failcount), (42, 1, 2));
        assert_eq!(j.run_after, 1_790_000_000);
        assert_eq!(j.flag, Flag::Controller);
    }

    #[test]
    fn job_json_as_the_perl_original_wrote_it_is_read() {
        // The Perl original encodes the row as DBI fetched it: every column a
        // string, NULL as null, and dbid added.
        let j = Job::from_json(
            br#"{"jobid":"7","dbid":"3","funcname":"resize","arg":"img-1.png","uniqkey":"img-1",
                "coalesce":null,"run_after":"1790000000","flag":"shim","failcount":"0"}"#,
        )
        .unwrap();
        assert_eq!(
            j,
            Job {
                dbid: 3,
                jobid: 7,
                funcname: "resize".into(),
                arg: b"img-1.png".to_vec(),
                uniqkey: Some("img-1".into()),
                coalesce: None,
                run_after: 1_790_000_000,
                flag: Flag::Shim,
                failcount: 0,
                priority: Priority::Normal,
            }
        );
        // Unknown fields (a newer or older writer's) are ignored; absent
        // optional ones take the column defaults.
        let j = Job::from_json(br#"{"jobid":1,"dbid":1,"funcname":"f","extra":[1]}"#).unwrap();
        assert_eq!((j.arg.len(), j.run_after, j.failcount), (0, 0, 0));
        assert_eq!((j.flag, j.uniqkey), (Flag::Shim, None));
    }

    fn refused(data: &[u8]) -> String {
        match Job::from_json(data) {
            Err(Error::InvalidJobJson { reason }) => reason,
            other => panic!("{}: {other:?}", String::from_utf8_lossy(data)),
        }
    }

    #[test]
    fn job_json_refuses_what_is_not_a_job() {
        for (bad, why) in [
            (&b"not json"[..], "not JSON: expected ident at line 1 column 2"),
            (br#"[1,2]"#, "expected a JSON object, not an array"),
            (br#"{"dbid":1,"funcname":"f"}"#, "jobid is missing"),
            (br#"{"jobid":1,"funcname":"f"}"#, "dbid is missing"),
            (br#"{"jobid":1,"dbid":1}"#, "funcname is missing"),
            (br#"{"jobid":1,"dbid":1,"funcname":""}"#, "funcname is empty"),
            (
                br#"{"jobid":-1,"dbid":1,"funcname":"f"}"#,
                "jobid must be an unsigned integer or a string of one, not a negative or fractional number",
            ),
            (
                br#"{"jobid":"x","dbid":1,"funcname":"f"}"#,
                "jobid must be an unsigned integer or a string of one, not a string of something else",
            ),
            (
                br#"{"jobid":1,"dbid":true,"funcname":"f"}"#,
                "dbid must be an unsigned integer or a string of one, not a boolean",
            ),
            (
                br#"{"jobid":1,"dbid":1,"funcname":"f","run_after":1.5}"#,
                "run_after must be an unsigned integer or a string of one, not a negative or fractional number",
            ),
            (
                br#"{"jobid":1,"dbid":1,"funcname":"f","failcount":300}"#,
                "failcount 300 is out of range",
            ),
            (
                br#"{"jobid":1,"dbid":"4294967296","funcname":"f"}"#,
                "dbid 4294967296 is out of range",
            ),
            (
                br#"{"jobid":1,"dbid":1,"funcname":7}"#,
                "funcname must be a string or null, not a number",
            ),
            (
                br#"{"jobid":1,"dbid":1,"funcname":"f","arg":{"a":1}}"#,
                "arg must be a string or null, not an object",
            ),
            (
                br#"{"jobid":1,"dbid":1,"funcname":"f","uniqkey":["k"]}"#,
                "uniqkey must be a string or null, not an array",
            ),
            (
                br#"{"jobid":1,"dbid":1,"funcname":"f","flag":1}"#,
                "flag must be a string or null, not a number",
            ),
            (
                br#"{"jobid":1,"dbid":1,"funcname":"f","arg_base64":"!!"}"#,
                "arg_base64 is not base64: Invalid symbol 33, offset 0.",
            ),
        ] {
            assert_eq!(refused(bad), why, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn job_json_errors_are_one_line_and_do_not_echo_the_value() {
        let secret = "s3cret-payload\nline two";
        let reason = refused(
            format!(r#"{{"jobid":1,"dbid":1,"funcname":"f","failcount":"{secret}"}}"#).as_bytes(),
        );
        assert!(!reason.contains("s3cret"), "{reason}");
        assert!(!reason.contains('\n'), "{reason}");
        let err = Job::from_json(b"{\"jobid\":\n\"x\"")
            .unwrap_err()
            .to_string();
        assert_eq!(err.lines().count(), 1, "{err}");
    }

    #[test]
    fn job_json_in_bytes_that_are_not_utf8_is_refused() {
        let mut data = br#"{"jobid":1,"dbid":1,"funcname":"f","uniqkey":"k"#.to_vec();
        data.extend([0xff, 0xfe]);
        data.extend(br#""}"#);
        assert!(refused(&data).starts_with("not JSON: invalid unicode code point"));
        let lone = refused(br#"{"jobid":1,"dbid":1,"funcname":"f","uniqkey":"\udcff"}"#);
        assert!(lone.starts_with("not JSON: "), "{lone}");
        assert_eq!(lone.lines().count(), 1, "{lone}");
    }

    #[test]
    fn binary_arg_travels_as_base64_without_loss() {
        let mut j = job();
        j.arg = vec![0xff, 0x00, 0xfe, b'a'];
        let v: serde_json::Value = serde_json::from_slice(&j.to_json()).unwrap();
        assert_eq!(v["arg"], serde_json::Value::Null);
        assert_eq!(Job::from_json(&j.to_json()).unwrap().arg, j.arg);
    }
}
