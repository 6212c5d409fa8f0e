//! `garivini schema check [--apply]`: the job table of every database
//! compared with schema.sql's, as text or JSON, and mended on request.

use garivini::store::schema::{Applied, CheckOptions, Kind, SchemaReport};
use garivini::Store;

use crate::servers::Servers;

#[derive(clap::Subcommand, Debug)]
pub enum SchemaCommand {
    /// Compares the `job` table of every database with schema.sql's,
    /// column by column and index by index, and prints each difference.
    ///
    /// `needs:` is a difference the roles (or the original client) go
    /// wrong with, followed by the statement that mends it; `note:` is
    /// different but fine as it is (a missing optional side table, such as
    /// garivini_dispatches, is a note with the CREATE TABLE that --apply
    /// runs). The statements only add (a column, an
    /// index, the table) or loosen (a longer type, NULL allowed, a missing
    /// ENUM value): nothing is dropped, and the original client's
    /// statements keep working. Exits 1 when something needs mending and
    /// --apply was not given (or did not mend it).
    ///
    /// Two tables are healthy: schema.sql's and schema-cluster.sql's (the
    /// cluster variant, for Galera). On a Galera node (wsrep_on=ON), or
    /// with --cluster on any server, a table with the plain UNIQUE
    /// (funcname, uniqkey) gets the conversion to the cluster variant,
    /// which --apply runs only with --cluster. Nothing converts back.
    Check(SchemaCheck),
}

#[derive(clap::Args, Debug)]
pub struct SchemaCheck {
    /// Run the statements, in the order shown (each waits at most 10 s
    /// for the table's lock, then fails rather than stall the roles),
    /// then check again and print the result.
    #[arg(long)]
    apply: bool,
    /// Want the cluster variant (schema-cluster.sql: the unique key on a
    /// generated column, so that Galera certifies no key for keyless
    /// rows; the same duplicates refused). Without --apply: check for it
    /// on any server. With --apply: also run the ALTER that converts the
    /// table to it (one statement; it copies the table, and writes wait
    /// meanwhile), or create a missing table as schema-cluster.sql does.
    #[arg(long)]
    cluster: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// One database's `schema check`: the report, what --apply ran, and the
/// check after it.
struct SchemaOutcome {
    dbid: u32,
    dsn: String,
    report: Result<SchemaReport, garivini::Error>,
    applied: Option<Applied>,
    after: Option<Result<SchemaReport, garivini::Error>>,
}

impl SchemaOutcome {
    /// The last word on the table: the check after --apply, or the first.
    fn last(&self) -> &Result<SchemaReport, garivini::Error> {
        self.after.as_ref().unwrap_or(&self.report)
    }
}

/// `garivini schema check [--apply]`.
pub async fn check(args: &SchemaCheck, servers: &Servers) -> anyhow::Result<()> {
    let dbs = garivini::config::parse_dsn_list(servers.dsn.as_deref().unwrap_or_default())?;
    let dsns: Vec<String> = dbs.iter().map(|db| db.masked()).collect();
    // Not `Servers::store`: its start-up check refuses a missing table,
    // which this command reports (and creates).
    let store = Store::open(dbs)?;
    let options = CheckOptions {
        cluster: args.cluster,
        galera: None,
    };
    let mut outcomes = Vec::new();
    for (dbid, dsn) in store.dbids().zip(dsns) {
        let report = store.check_schema_with(dbid, options).await;
        let (mut applied, mut after) = (None, None);
        if let (true, Ok(r)) = (args.apply, &report) {
            if r.mends_for(args.cluster).next().is_some() {
                applied = Some(store.apply_schema(r, args.cluster).await);
                after = Some(store.check_schema_with(dbid, options).await);
            }
        }
        outcomes.push(SchemaOutcome {
            dbid,
            dsn,
            report,
            applied,
            after,
        });
    }
    store.close().await;
    if args.json {
        let value: Vec<serde_json::Value> = outcomes.iter().map(schema_json).collect();
        crate::say!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        for (k, o) in outcomes.iter().enumerate() {
            if k > 0 {
                crate::say!();
            }
            crate::terminal::write_out(format_args!("{}", schema_text(o)));
        }
    }
    let mut problems = Vec::new();
    let (mut mendable, mut convertible) = (false, false);
    for o in &outcomes {
        match o.last() {
            Err(err) => problems.push(err.to_string()),
            Ok(r) if r.needs_mending() => {
                let n = r.needs().count();
                let changes = if n == 1 { "change" } else { "changes" };
                if args.apply {
                    problems.push(format!(
                        "database {} still needs {n} {changes} after --apply",
                        o.dbid
                    ));
                    // A conversion left for --apply --cluster.
                    convertible |= !args.cluster && r.has_cluster_only();
                } else {
                    mendable |= r.mends().next().is_some();
                    convertible |= r.has_cluster_only();
                    problems.push(format!("database {} needs {n} {changes}", o.dbid));
                }
            }
            Ok(_) => {}
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    if convertible {
        problems.push(
            "run `garivini schema check --apply --cluster` to convert to the cluster variant, \
             or the statements above"
                .into(),
        );
    } else if mendable {
        problems.push("run `garivini schema check --apply`, or the statements above".into());
    }
    anyhow::bail!("{}", problems.join("; "))
}

/// A report as lines, unindented.
fn findings_text(report: &SchemaReport) -> Vec<String> {
    let mut lines = Vec::new();
    for f in &report.findings {
        match f.kind {
            Kind::Needs => {
                lines.push(format!("needs: {}", f.message));
                match &f.mend {
                    Some(sql) => {
                        let sql = format!("{sql};");
                        lines.extend(sql.lines().map(|l| format!("  {l}")));
                        if f.cluster_only {
                            lines.push("  (run by --apply only with --cluster)".into());
                        }
                    }
                    None => lines.push("  (no statement mends it safely: by hand)".into()),
                }
            }
            Kind::Note => {
                lines.push(format!("note: {}", f.message));
                // An optional side table: --apply creates it too.
                if let Some(sql) = &f.mend {
                    let sql = format!("{sql};");
                    lines.extend(sql.lines().map(|l| format!("  {l}")));
                }
            }
        }
    }
    if report.findings.is_empty() {
        lines.push("ok".into());
    } else if !report.needs_mending() {
        lines.push("ok: nothing needs mending".into());
    }
    lines
}

fn schema_text(o: &SchemaOutcome) -> String {
    let mut out = format!("database {}  {}\n", o.dbid, o.dsn);
    let mut push = |indent: &str, line: &str| {
        out.push_str(indent);
        out.push_str(line);
        out.push('\n');
    };
    let report = match &o.report {
        Ok(r) => r,
        Err(err) => {
            push("  ", &format!("unreadable: {err}"));
            return out;
        }
    };
    if report.expect.galera {
        push("  ", "server: Galera node (wsrep_on=ON)");
    }
    for l in findings_text(report) {
        push("  ", &l);
    }
    if let Some(applied) = &o.applied {
        for sql in &applied.statements {
            push("  ", &format!("applied: {}", first_line(sql)));
        }
        if let Some((sql, err)) = &applied.failed {
            push("  ", &format!("failed: {}", first_line(sql)));
            push("    ", &err.to_string());
        }
    }
    match &o.after {
        None => {}
        Some(Ok(r)) => {
            push("  ", "checked again:");
            for l in findings_text(r) {
                push("    ", &l);
            }
        }
        Some(Err(err)) => push("  ", &format!("checked again: unreadable: {err}")),
    }
    out
}

/// A statement's first line, `…` standing for the rest (a CREATE TABLE).
fn first_line(sql: &str) -> String {
    let mut lines = sql.lines();
    let first = lines.next().unwrap_or_default();
    match lines.next() {
        Some(_) => format!("{first} …"),
        None => first.to_string(),
    }
}

fn schema_json(o: &SchemaOutcome) -> serde_json::Value {
    let report = |r: &Result<SchemaReport, garivini::Error>| match r {
        Ok(r) => serde_json::json!({
            "ok": !r.needs_mending(),
            "galera": r.expect.galera,
            "findings": r.findings,
        }),
        Err(err) => serde_json::json!({ "error": err.to_string() }),
    };
    let mut value = serde_json::json!({
        "dbid": o.dbid,
        "dsn": o.dsn,
        "check": report(&o.report),
    });
    if let Some(applied) = &o.applied {
        value["applied"] = serde_json::json!(applied.statements);
        if let Some((sql, err)) = &applied.failed {
            value["failed"] = serde_json::json!({ "statement": sql, "error": err.to_string() });
        }
    }
    if let Some(after) = &o.after {
        value["after"] = report(after);
    }
    value
}
