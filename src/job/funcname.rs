//! Which function names a job may have: what gearmand's admin protocol
//! can carry, and not one of the names Garivini's roles serve.

use super::MAX_FUNCNAME_LEN;
use crate::error::{Error, Result};

/// What keeps a function name from being dispatched, if anything: a
/// control character (newline, tab, ESC, ...). gearmand takes such a name,
/// but its line-based admin protocol then prints a `status` line that no
/// reader can parse, so no depth can be read for it (and, before readers
/// skipped such lines, for any function of that server). Rows of the
/// table are held to this; new jobs to the stricter [`check_job_funcname`].
/// A [reserved](crate::names::RESERVED) name is unsendable too: a job sent
/// to it would reach one of our roles, never a worker.
pub fn unsendable_funcname(funcname: &str) -> Option<String> {
    if funcname.is_empty() {
        return Some("funcname is empty".into());
    }
    if crate::names::is_reserved(funcname) {
        return Some(
            Error::ReservedFuncname {
                name: funcname.to_string(),
            }
            .to_string(),
        );
    }
    let (at, c) = funcname.char_indices().find(|(_, c)| c.is_control())?;
    Some(format!(
        "funcname has {} at byte {at}: gearmand's admin protocol cannot carry it",
        describe_char(c)
    ))
}

/// Checks a new job's function name: not empty, at most
/// [`MAX_FUNCNAME_LEN`] bytes, and no whitespace or control character
/// (gearmand's admin protocol splits lines on them: `status` output and
/// commands such as `drop function` cannot carry them).
pub fn check_funcname(funcname: &str) -> Result<()> {
    if funcname.is_empty() {
        return Err(Error::EmptyFuncname);
    }
    if funcname.len() > MAX_FUNCNAME_LEN {
        return Err(Error::FuncnameTooLong {
            len: funcname.len(),
            max: MAX_FUNCNAME_LEN,
        });
    }
    if let Some(at) = funcname.find('\0') {
        // Gearman separates a packet's fields with NUL: such a name
        // would reach gearmand cut short, with the rest taken for the
        // next field, and no worker could ever run the job.
        return Err(Error::FuncnameHasNul { at });
    }
    match funcname
        .char_indices()
        .find(|(_, c)| c.is_control() || c.is_whitespace())
    {
        Some((at, c)) => Err(Error::FuncnameHasBadChar {
            at,
            what: describe_char(c),
        }),
        None => Ok(()),
    }
}

/// Checks a new job's function name: [`check_funcname`], and not one of
/// the names Garivini's roles serve ([`crate::names::RESERVED`]:
/// [`Error::ReservedFuncname`]). Every entrance of a job (`inject_jobs`,
/// the web API, `Client`, `gv_inject`, periodic entries) goes through
/// [`NewJob::validate`], which calls this.
pub fn check_job_funcname(funcname: &str) -> Result<()> {
    check_funcname(funcname)?;
    if crate::names::is_reserved(funcname) {
        return Err(Error::ReservedFuncname {
            name: funcname.to_string(),
        });
    }
    Ok(())
}

/// A character as a message names it: "a newline", "a space", "U+001B".
pub(crate) fn describe_char(c: char) -> String {
    match c {
        '\n' => "a newline".into(),
        '\r' => "a carriage return".into(),
        '\t' => "a tab".into(),
        ' ' => "a space".into(),
        other => format!("the character U+{:04X}", u32::from(other)),
    }
}
