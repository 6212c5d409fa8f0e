//! Checking an existing `job` table against what the roles need.
//!
//! Teams coming from the original Perl Garivini keep their table. This
//! module reads a table's description from `information_schema` (COLUMNS,
//! STATISTICS, TABLES), compares it with the table of schema.sql column by
//! column and index by index ([`compare`], a pure function), and says for
//! each difference whether the roles need it mended (with the statement
//! that mends it) or it is only worth knowing (a note).
//!
//! The mends only add (a column, an index, the table) or loosen (a longer
//! type, NULL allowed, a missing ENUM value, a default) — never drop, never
//! make a column stricter — so that every statement of the original
//! client keeps working: `INSERT IGNORE INTO job (funcname, run_after,
//! uniqkey, coalesce, arg, flag) VALUES (...)` with flag NULL,
//! `DELETE FROM job WHERE jobid=?` and `UPDATE job SET run_after=?,
//! failcount=? WHERE jobid=?`.
//!
//! Two tables are ours: schema.sql's, and schema-cluster.sql's for a
//! replicated cluster, which dedups unique keys with UNIQUE dedup_key
//! (keyed_funcname, uniqkey) on a generated column instead of UNIQUE
//! (funcname, uniqkey) (see [`cluster_variant`]). Either is healthy. On a
//! Galera server (`wsrep_on=ON`, [`wsrep_enabled`]) or when asked for
//! ([`Expect::cluster`]), the check offers the conversion to the cluster
//! variant; [`Store::apply_schema`] runs it only when told to. The reverse
//! is never offered.

use mysql_async::prelude::Queryable;
use serde::Serialize;

use super::Store;
use crate::error::{Error, Result};

/// schema.sql: its CREATE TABLE makes a missing table.
const SCHEMA_SQL: &str = include_str!("../../schema.sql");
/// schema-cluster.sql: the table for a replicated cluster.
const SCHEMA_CLUSTER_SQL: &str = include_str!("../../schema-cluster.sql");

/// schema.sql's CREATE TABLE of one of our side tables (`garivini_claimer`,
/// `garivini_periodic`, `garivini_paused`, `garivini_dispatches`), without
/// its `;`.
fn side_table(name: &str) -> &'static str {
    let start = SCHEMA_SQL
        .find(&format!("CREATE TABLE IF NOT EXISTS {name} ("))
        .unwrap_or_else(|| panic!("schema.sql creates {name}"));
    let len = SCHEMA_SQL[start..].find(';').expect("a statement ends");
    &SCHEMA_SQL[start..start + len]
}

fn claimer_table() -> &'static str {
    side_table("garivini_claimer")
}

/// The cluster variant's generated column: funcname for a row with a
/// uniqkey, NULL for a keyless one.
pub const KEYED_FUNCNAME: &str = "keyed_funcname";
/// The cluster variant's unique index, on (keyed_funcname, uniqkey).
pub const DEDUP_KEY: &str = "dedup_key";
/// keyed_funcname's expression, as our statements write it.
const KEYED_FUNCNAME_EXPR: &str = "IF(uniqkey IS NULL, NULL, funcname)";

/// Seconds an ALTER waits for the table's metadata lock before it gives
/// up. The server's default is a day, and an ALTER waiting for a lock
/// (behind a long transaction) blocks every statement on the table that
/// comes after it: the roles would stall instead of the ALTER failing.
const ALTER_LOCK_WAIT_SECS: u32 = 10;

/// The largest `arg` the roles store (MEDIUMBLOB).
const ARG_BYTES: u64 = 16_777_215;
/// The flag values, in the order of schema.sql.
const FLAG_VALUES: [&str; 2] = ["controller", "shim"];

/// A `job` table as `information_schema` describes it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Table {
    /// `TABLE_TYPE`: `BASE TABLE` (or `SYSTEM VERSIONED`), `VIEW`, ...
    pub kind: String,
    /// `ENGINE`, e.g. `InnoDB`.
    pub engine: Option<String>,
    /// The table's default collation, e.g. `latin1_swedish_ci`.
    pub collation: Option<String>,
    /// Its columns, in order.
    pub columns: Vec<Column>,
    /// Its indexes.
    pub indexes: Vec<Index>,
}

/// One column, as `information_schema.COLUMNS` describes it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Column {
    /// `COLUMN_NAME`.
    pub name: String,
    /// `DATA_TYPE`, lower case: `varchar`, `int`, `enum`, ...
    pub data_type: String,
    /// `COLUMN_TYPE`: `varchar(200)`, `int(10) unsigned`, `enum('a','b')`.
    pub column_type: String,
    /// `IS_NULLABLE = 'YES'`.
    pub nullable: bool,
    /// `COLUMN_DEFAULT`, unquoted; `None` for no default or NULL.
    pub default: Option<String>,
    /// `CHARACTER_MAXIMUM_LENGTH`: characters of a text type, bytes of a
    /// binary one.
    pub max_length: Option<u64>,
    /// `CHARACTER_SET_NAME` (text types only).
    pub charset: Option<String>,
    /// `COLLATION_NAME` (text types only).
    pub collation: Option<String>,
    /// `EXTRA`: `auto_increment`, `VIRTUAL GENERATED`, ...
    pub extra: String,
    /// `COLUMN_COMMENT` (kept by a MODIFY).
    pub comment: String,
    /// `GENERATION_EXPRESSION` of a generated column, as the server
    /// writes it (``if(`uniqkey` is null,NULL,`funcname`)``); `None` for a
    /// column that is not generated, or a server too old to say.
    pub generation: Option<String>,
}

/// One index, from the rows of `information_schema.STATISTICS`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Index {
    /// `INDEX_NAME` (`PRIMARY` for the primary key).
    pub name: String,
    /// `NON_UNIQUE = 0`.
    pub unique: bool,
    /// Its columns in order; a prefix as `uniqkey(100)`, an expression as
    /// `(expression)`.
    pub columns: Vec<String>,
}

/// Whether a difference has to be mended for the roles to work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The roles (or the original client) go wrong until it is mended.
    Needs,
    /// Different from schema.sql but fine as it is: worth knowing.
    Note,
}

/// One difference between a table and schema.sql's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Needs mending, or a note.
    pub kind: Kind,
    /// What differs and what that does, in one sentence.
    pub message: String,
    /// The statement that mends it (`ALTER TABLE job ...` or schema.sql's
    /// `CREATE TABLE`), without the final `;`. `None` for a need that no
    /// safe statement mends (it is for a person to do), and for a note,
    /// except that of a missing optional side table: its CREATE TABLE,
    /// which [`Store::apply_schema`] runs too.
    pub mend: Option<String>,
    /// The mend makes the cluster variant of an existing table (it copies
    /// the table: writes to it wait meanwhile): [`Store::apply_schema`]
    /// runs it only when told to (`--apply --cluster`).
    pub cluster_only: bool,
}

impl Finding {
    fn needs(message: String, mend: Option<String>) -> Finding {
        Finding {
            kind: Kind::Needs,
            message,
            mend,
            cluster_only: false,
        }
    }

    fn conversion(message: String, mend: String) -> Finding {
        Finding {
            kind: Kind::Needs,
            message,
            mend: Some(mend),
            cluster_only: true,
        }
    }

    fn note(message: String) -> Finding {
        Finding {
            kind: Kind::Note,
            message,
            mend: None,
            cluster_only: false,
        }
    }

    /// A note whose statement `--apply` runs all the same: a missing
    /// side table that only adds to what works without it.
    fn optional(message: String, mend: String) -> Finding {
        Finding {
            kind: Kind::Note,
            message,
            mend: Some(mend),
            cluster_only: false,
        }
    }
}

/// What the check expects of the table's unique-key dedup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Expect {
    /// The server replicates with Galera (`wsrep_on=ON`): the plain
    /// UNIQUE (funcname, uniqkey) is a hot certification key, and the
    /// check offers the conversion to the cluster variant.
    pub galera: bool,
    /// The cluster variant was asked for (`--cluster`): on any server, the
    /// check offers the conversion (and a missing table is made as
    /// schema-cluster.sql makes it).
    pub cluster: bool,
}

impl Expect {
    /// Whether the cluster variant is the table to have.
    pub fn wants_cluster(self) -> bool {
        self.galera || self.cluster
    }
}

/// How to check a database: see [`Store::check_schema_with`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckOptions {
    /// `--cluster`: the cluster variant is wanted on any server.
    pub cluster: bool,
    /// Whether the server is a Galera node; `None`: ask it (`wsrep_on`).
    pub galera: Option<bool>,
}

/// Whether a server's `wsrep_on` (the value of `SHOW VARIABLES LIKE
/// 'wsrep_on'`; `None` when the server has no such variable, as MySQL
/// without Galera) says it replicates with Galera.
pub fn wsrep_enabled(value: Option<&str>) -> bool {
    value.is_some_and(|v| {
        let v = v.trim();
        v.eq_ignore_ascii_case("ON") || v == "1" || v.eq_ignore_ascii_case("TRUE")
    })
}

/// What [`Store::check_schema`] found in one database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SchemaReport {
    /// The database id.
    pub dbid: u32,
    /// Its URL, password masked.
    pub dsn: String,
    /// What the check expected: whether the server is a Galera node, and
    /// whether the cluster variant was asked for.
    pub expect: Expect,
    /// The differences: needs first, in the order their mends must run,
    /// then notes. Empty when the table is schema.sql's (or
    /// schema-cluster.sql's).
    pub findings: Vec<Finding>,
}

impl SchemaReport {
    /// The findings that need mending.
    pub fn needs(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| f.kind == Kind::Needs)
    }

    /// Whether anything needs mending.
    pub fn needs_mending(&self) -> bool {
        self.needs().next().is_some()
    }

    /// The statements that mend the table, in the order to run them
    /// (those that convert to the cluster variant included).
    pub fn mends(&self) -> impl Iterator<Item = &str> {
        self.needs().filter_map(|f| f.mend.as_deref())
    }

    /// The statements [`Store::apply_schema`] runs: all of [`Self::mends`]
    /// with `cluster`, those that do not convert to the cluster variant
    /// without; then those of the notes that have one (an optional side
    /// table).
    pub fn mends_for(&self, cluster: bool) -> impl Iterator<Item = &str> {
        let notes = self.findings.iter().filter(|f| f.kind == Kind::Note);
        self.needs()
            .chain(notes)
            .filter(move |f| cluster || !f.cluster_only)
            .filter_map(|f| f.mend.as_deref())
    }

    /// Whether a mend is left that runs only with `--cluster`.
    pub fn has_cluster_only(&self) -> bool {
        self.needs().any(|f| f.cluster_only && f.mend.is_some())
    }
}

/// What [`Store::apply_schema`] did.
#[derive(Debug)]
pub struct Applied {
    /// The statements that ran, in order.
    pub statements: Vec<String>,
    /// The statement that failed, and why; those after it did not run.
    pub failed: Option<(String, Error)>,
}

impl Store {
    /// Reads the `job` table of database `dbid` from `information_schema`;
    /// `None` when there is no such table.
    pub async fn describe_job_table(&self, dbid: u32) -> Result<Option<Table>> {
        let db = self.db(dbid)?;
        self.attempt(db, || async {
            let mut conn = db.pool().get_conn().await?;
            read_table(&mut conn).await
        })
        .await
    }

    /// Whether the server of database `dbid` replicates with Galera
    /// (`wsrep_on=ON`; see [`wsrep_enabled`]).
    pub async fn is_galera(&self, dbid: u32) -> Result<bool> {
        let db = self.db(dbid)?;
        self.attempt(db, || async {
            let mut conn = db.pool().get_conn().await?;
            read_wsrep_on(&mut conn).await
        })
        .await
    }

    /// Compares the `job` table of database `dbid` with schema.sql's (or
    /// schema-cluster.sql's), asking the server whether it is a Galera
    /// node.
    pub async fn check_schema(&self, dbid: u32) -> Result<SchemaReport> {
        self.check_schema_with(dbid, CheckOptions::default()).await
    }

    /// [`Store::check_schema`] with options: `cluster` wants the cluster
    /// variant on any server; `galera` says whether the server is a Galera
    /// node instead of asking it.
    pub async fn check_schema_with(
        &self,
        dbid: u32,
        options: CheckOptions,
    ) -> Result<SchemaReport> {
        let table = self.describe_job_table(dbid).await?;
        let galera = match options.galera {
            Some(galera) => galera,
            None => self.is_galera(dbid).await?,
        };
        let expect = Expect {
            galera,
            cluster: options.cluster,
        };
        let mut findings = compare_with(table.as_ref(), expect);
        if expect.wants_cluster() && !self.has_claimer_table(dbid).await? {
            findings.push(Finding::needs(
                "no garivini_claimer table: QueueRunners on different nodes cannot elect one claimer, \
                 and fight over the same rows (FOR UPDATE SKIP LOCKED skips only rows locked on the same node)"
                    .into(),
                Some(claimer_table().to_string()),
            ));
        }
        // Needed whatever this host's config says: the QueueRunners that
        // run [[periodic]] entries may be configured elsewhere, any host may
        // `garivini functions pause`, and each mend is an empty small table.
        for (table, message) in [
            (
                "garivini_periodic",
                "no garivini_periodic table: QueueRunners do not run [[periodic]] entries \
                 (each logs a warning)",
            ),
            (
                "garivini_paused",
                "no garivini_paused table: functions cannot be paused \
                 (garivini functions pause fails; each role logs a warning)",
            ),
        ] {
            if !self.has_table(dbid, table).await? {
                let at = findings
                    .iter()
                    .position(|f| f.kind != Kind::Needs)
                    .unwrap_or(findings.len());
                findings.insert(
                    at,
                    Finding::needs(message.into(), Some(side_table(table).to_string())),
                );
            }
        }
        // A note: the roles and the dashboard work without it, and --apply
        // creates it all the same.
        if !self.has_table(dbid, "garivini_dispatches").await? {
            findings.push(Finding::optional(
                "no garivini_dispatches table: the dashboard's chart has no dispatched line \
                 (each dispatching role logs it once)"
                    .into(),
                side_table("garivini_dispatches").to_string(),
            ));
        }
        let db = self.db(dbid)?;
        Ok(SchemaReport {
            dbid,
            dsn: db.cfg.masked(),
            expect,
            findings,
        })
    }

    /// Whether database `dbid` has a table (or view) `name`.
    async fn has_table(&self, dbid: u32, name: &str) -> Result<bool> {
        let db = self.db(dbid)?;
        self.attempt(db, || async {
            let mut conn = db.pool().get_conn().await?;
            let found: Option<u8> = conn
                .exec_first(
                    "SELECT 1 FROM information_schema.TABLES \
                     WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?",
                    (name,),
                )
                .await?;
            Ok(found.is_some())
        })
        .await
    }

    /// Whether database `dbid` has the `garivini_claimer` table
    /// ([`Store::claim_turn`]).
    async fn has_claimer_table(&self, dbid: u32) -> Result<bool> {
        self.has_table(dbid, "garivini_claimer").await
    }

    /// Runs the mends of `report` on its database, in order, stopping at
    /// the first that fails. Those that convert the table to the cluster
    /// variant ([`Finding::cluster_only`]) run only with `cluster`.
    ///
    /// Each waits at most 10 s for the table's metadata lock (then fails
    /// rather than block the roles behind it), but is not otherwise timed:
    /// adding an index to a large table takes a while. The ALTERs are
    /// InnoDB's online ones where the server has them: the roles keep
    /// running meanwhile. The conversion to the cluster variant is not
    /// online (adding a stored generated column copies the table): reads
    /// go on, writes wait until it is done. Each ALTER is atomic: one that
    /// fails leaves the table as it was.
    pub async fn apply_schema(&self, report: &SchemaReport, cluster: bool) -> Applied {
        let mut applied = Applied {
            statements: Vec::new(),
            failed: None,
        };
        for statement in report.mends_for(cluster) {
            match self.run_mend(report.dbid, statement).await {
                Ok(()) => applied.statements.push(statement.to_string()),
                Err(err) => {
                    applied.failed = Some((statement.to_string(), err));
                    break;
                }
            }
        }
        applied
    }

    async fn run_mend(&self, dbid: u32, statement: &str) -> Result<()> {
        let db = self.db(dbid)?;
        let wrap = |source| Error::Db {
            dbid,
            dsn: db.cfg.masked(),
            source,
        };
        let connect = async {
            let mut conn = db.pool().get_conn().await?;
            conn.query_drop(format!(
                "SET SESSION lock_wait_timeout = {ALTER_LOCK_WAIT_SECS}"
            ))
            .await?;
            Ok(conn)
        };
        let mut conn = match tokio::time::timeout(self.op_timeout, connect).await {
            Ok(conn) => conn.map_err(wrap)?,
            Err(_) => {
                return Err(Error::DbTimeout {
                    dbid,
                    dsn: db.cfg.masked(),
                    timeout: self.op_timeout,
                })
            }
        };
        let outcome = conn.query_drop(statement).await;
        // Pooled connections keep their session: put the setting back.
        let restored = conn
            .query_drop("SET SESSION lock_wait_timeout = DEFAULT")
            .await;
        outcome.and(restored).map_err(wrap)
    }
}

/// A row of `information_schema`, every value as text (`None` for NULL).
/// Never fails to convert, unlike the driver's tuples, which panic on a
/// value of another type than asked for.
struct Texts(Vec<Option<String>>);

impl mysql_async::prelude::FromRow for Texts {
    fn from_row_opt(row: mysql_async::Row) -> Result<Self, mysql_async::FromRowError> {
        use mysql_async::Value;
        let values = row
            .unwrap_raw()
            .into_iter()
            .map(|v| match v.unwrap_or(Value::NULL) {
                Value::NULL => None,
                Value::Bytes(b) => Some(String::from_utf8_lossy(&b).into_owned()),
                Value::Int(n) => Some(n.to_string()),
                Value::UInt(n) => Some(n.to_string()),
                other => Some(other.as_sql(true)),
            })
            .collect();
        Ok(Texts(values))
    }
}

impl Texts {
    fn get(&self, i: usize) -> Option<String> {
        self.0.get(i).cloned().flatten()
    }

    fn text(&self, i: usize) -> String {
        self.get(i).unwrap_or_default()
    }

    fn number(&self, i: usize) -> Option<u64> {
        self.get(i).and_then(|s| s.trim().parse().ok())
    }
}

/// Reads the description of the `job` table of the connection's database.
async fn read_table(conn: &mut impl Queryable) -> mysql_async::Result<Option<Table>> {
    let tables: Vec<Texts> = conn
        .query(
            "SELECT TABLE_TYPE, ENGINE, TABLE_COLLATION FROM information_schema.TABLES \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'job'",
        )
        .await?;
    let Some(table) = tables.into_iter().next() else {
        return Ok(None);
    };
    let columns_sql = |generation: &str| {
        format!(
            "SELECT COLUMN_NAME, LOWER(DATA_TYPE), COLUMN_TYPE, IS_NULLABLE, COLUMN_DEFAULT, \
             CHARACTER_MAXIMUM_LENGTH, CHARACTER_SET_NAME, COLLATION_NAME, EXTRA, COLUMN_COMMENT, \
             {generation} FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'job' ORDER BY ORDINAL_POSITION"
        )
    };
    let rows: Vec<Texts> = match conn.query(columns_sql("GENERATION_EXPRESSION")).await {
        Ok(rows) => rows,
        // A server older than generated columns (MariaDB 10.1, MySQL 5.6)
        // has no GENERATION_EXPRESSION: ER_BAD_FIELD_ERROR.
        Err(mysql_async::Error::Server(e)) if e.code == 1054 => {
            conn.query(columns_sql("NULL")).await?
        }
        Err(e) => return Err(e),
    };
    let columns = rows
        .iter()
        .map(|r| Column {
            name: r.text(0),
            data_type: r.text(1),
            column_type: r.text(2),
            nullable: r.text(3).eq_ignore_ascii_case("YES"),
            default: r.get(4).and_then(|d| unquote_default(&d)),
            max_length: r.number(5),
            charset: r.get(6),
            collation: r.get(7),
            extra: r.text(8),
            comment: r.text(9),
            generation: r.get(10).filter(|g| !g.is_empty()),
        })
        .collect();
    let parts: Vec<Texts> = conn
        .query(
            "SELECT INDEX_NAME, NON_UNIQUE, COLUMN_NAME, SUB_PART FROM information_schema.STATISTICS \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'job' ORDER BY INDEX_NAME, SEQ_IN_INDEX",
        )
        .await?;
    let mut indexes: Vec<Index> = Vec::new();
    for r in &parts {
        let name = r.text(0);
        let part = match (r.get(2), r.number(3)) {
            (Some(c), Some(n)) => format!("{c}({n})"),
            (Some(c), None) => c,
            (None, _) => "(expression)".to_string(),
        };
        match indexes.last_mut() {
            Some(last) if last.name == name => last.columns.push(part),
            _ => indexes.push(Index {
                name,
                unique: r.number(1) == Some(0),
                columns: vec![part],
            }),
        }
    }
    Ok(Some(Table {
        kind: table.text(0),
        engine: table.get(1),
        collation: table.get(2),
        columns,
        indexes,
    }))
}

/// Reads `wsrep_on` of the connection's server (see [`wsrep_enabled`]).
async fn read_wsrep_on(conn: &mut impl Queryable) -> mysql_async::Result<bool> {
    let rows: Vec<Texts> = conn.query("SHOW VARIABLES LIKE 'wsrep_on'").await?;
    Ok(wsrep_enabled(
        rows.first().and_then(|r| r.get(1)).as_deref(),
    ))
}

/// A `COLUMN_DEFAULT` as its value. MariaDB quotes a string literal
/// (`'shim'`) and writes a NULL default as `NULL`; MySQL writes the value
/// bare (and a NULL default as SQL NULL).
fn unquote_default(raw: &str) -> Option<String> {
    if raw.eq_ignore_ascii_case("NULL") {
        return None;
    }
    match raw.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
        Some(inner) => Some(inner.replace("''", "'")),
        None => Some(raw.to_string()),
    }
}

/// A string as an SQL literal.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// A column name as our statements write it (`coalesce` is a function's
/// name: always in backquotes).
fn ident(name: &str) -> String {
    if name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') && name != "coalesce" {
        name.to_string()
    } else {
        format!("`{}`", name.replace('`', "``"))
    }
}

/// The CREATE TABLE statement of a schema file, without the final `;`.
fn create_statement(sql: &'static str) -> &'static str {
    let start = sql.find("\nCREATE TABLE").map_or(0, |at| at + 1);
    sql[start..].trim().trim_end_matches(';').trim_end()
}

/// schema.sql's CREATE TABLE statement, without the final `;`.
pub fn create_table_sql() -> &'static str {
    create_statement(SCHEMA_SQL)
}

/// schema-cluster.sql's CREATE TABLE statement, without the final `;`.
pub fn create_cluster_table_sql() -> &'static str {
    create_statement(SCHEMA_CLUSTER_SQL)
}

/// What a column's type is, as far as the roles care.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Family {
    /// An integer of so many bytes.
    Int { bytes: u8, unsigned: bool },
    /// CHAR, VARCHAR or a TEXT, of so many characters.
    Text { len: u64 },
    /// BINARY, VARBINARY or a BLOB, of so many bytes.
    Binary { len: u64 },
    /// An ENUM of these values.
    Enum(Vec<String>),
    /// Anything else.
    Other,
}

impl Column {
    fn family(&self) -> Family {
        let len = self.max_length.unwrap_or(0);
        let unsigned = self.column_type.to_ascii_lowercase().contains("unsigned");
        match self.data_type.as_str() {
            "tinyint" => Family::Int { bytes: 1, unsigned },
            "smallint" => Family::Int { bytes: 2, unsigned },
            "mediumint" => Family::Int { bytes: 3, unsigned },
            "int" | "integer" => Family::Int { bytes: 4, unsigned },
            "bigint" => Family::Int { bytes: 8, unsigned },
            "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" => {
                Family::Text { len }
            }
            "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => {
                Family::Binary { len }
            }
            "enum" => Family::Enum(enum_values(&self.column_type)),
            _ => Family::Other,
        }
    }

    fn auto_increment(&self) -> bool {
        self.extra.to_ascii_lowercase().contains("auto_increment")
    }

    fn generated(&self) -> bool {
        self.extra.to_ascii_lowercase().contains("generated")
    }
}

/// The values of `enum('a','b''c')`.
fn enum_values(column_type: &str) -> Vec<String> {
    let mut values = Vec::new();
    let Some(open) = column_type.find('(') else {
        return values;
    };
    let mut chars = column_type[open + 1..].chars().peekable();
    let mut current: Option<String> = None;
    while let Some(c) = chars.next() {
        match (&mut current, c) {
            (None, '\'') => current = Some(String::new()),
            (None, _) => {}
            (Some(v), '\'') if chars.peek() == Some(&'\'') => {
                chars.next();
                v.push('\'');
            }
            (Some(v), '\\') => {
                if let Some(n) = chars.next() {
                    v.push(n);
                }
            }
            (Some(_), '\'') => values.push(current.take().unwrap_or_default()),
            (Some(v), c) => v.push(c),
        }
    }
    values
}

/// A MODIFY of one column: its current definition, with what has to
/// change changed and everything else (charset, default, comment) kept.
struct Modify<'a> {
    table: &'a Table,
    col: &'a Column,
    ty: Option<String>,
    nullable: Option<bool>,
    default: Option<Option<String>>,
    auto_increment: bool,
    why: Vec<String>,
}

impl<'a> Modify<'a> {
    fn new(table: &'a Table, col: &'a Column) -> Modify<'a> {
        Modify {
            table,
            col,
            ty: None,
            nullable: None,
            default: None,
            auto_increment: col.auto_increment(),
            why: Vec::new(),
        }
    }

    fn sql(&self) -> String {
        let col = self.col;
        let mut sql = format!(
            "ALTER TABLE job MODIFY {} {}",
            ident(&col.name),
            self.ty.as_deref().unwrap_or(&col.column_type)
        );
        // Without a charset a MODIFY takes the table's; keep the column's.
        if let (Some(charset), Some(collation)) = (&col.charset, &col.collation) {
            if self.table.collation.as_ref() != Some(collation) {
                sql.push_str(&format!(" CHARACTER SET {charset} COLLATE {collation}"));
            }
        }
        let nullable = self.nullable.unwrap_or(col.nullable);
        sql.push_str(if nullable { " NULL" } else { " NOT NULL" });
        let default = self.default.clone().unwrap_or_else(|| col.default.clone());
        if let Some(value) = default {
            sql.push_str(&format!(" DEFAULT {}", quote(&value)));
        }
        if self.auto_increment {
            sql.push_str(" AUTO_INCREMENT");
        }
        if !col.comment.is_empty() {
            sql.push_str(&format!(" COMMENT {}", quote(&col.comment)));
        }
        sql
    }

    fn finding(self) -> Option<Finding> {
        if self.why.is_empty() {
            return None;
        }
        Some(Finding::needs(self.why.join("; "), Some(self.sql())))
    }
}

/// The findings, in groups whose mends run in this order.
#[derive(Default)]
struct Findings {
    /// The table as a whole (engine).
    table: Vec<Finding>,
    /// Missing columns.
    add_columns: Vec<Finding>,
    /// The primary key.
    primary: Vec<Finding>,
    /// Columns to change.
    modify: Vec<Finding>,
    /// Missing indexes.
    add_indexes: Vec<Finding>,
    /// The conversion to the cluster variant (a copy of the table: after
    /// the cheap ones).
    convert: Vec<Finding>,
    /// Needs with no statement to mend them.
    by_hand: Vec<Finding>,
    notes: Vec<Finding>,
}

impl Findings {
    fn note(&mut self, message: String) {
        self.notes.push(Finding::note(message));
    }

    fn by_hand(&mut self, message: String) {
        self.by_hand.push(Finding::needs(message, None));
    }

    fn add_column(&mut self, name: &str, definition: &str, why: &str) {
        self.add_columns.push(Finding::needs(
            format!("column {name} is missing: {why}"),
            Some(format!("ALTER TABLE job ADD COLUMN {definition}")),
        ));
    }

    fn modify(&mut self, m: Modify<'_>) {
        self.modify.extend(m.finding());
    }

    fn into_vec(self) -> Vec<Finding> {
        [
            self.table,
            self.add_columns,
            self.primary,
            self.modify,
            self.add_indexes,
            self.convert,
            self.by_hand,
            self.notes,
        ]
        .concat()
    }
}

/// Compares a `job` table (`None`: there is none) with schema.sql's and
/// says what differs: needs first, in the order their mends must run,
/// then notes. The cluster variant's dedup key is healthy too; see
/// [`compare_with`].
pub fn compare(table: Option<&Table>) -> Vec<Finding> {
    compare_with(table, Expect::default())
}

/// [`compare`], expecting of the unique-key dedup what `expect` says: on a
/// Galera server or when the cluster variant is asked for, a plain UNIQUE
/// (funcname, uniqkey) gets the conversion to the cluster variant (a
/// [`Finding::cluster_only`] mend), a missing dedup key is added as the
/// cluster variant's, and a missing table is made as schema-cluster.sql
/// makes it.
pub fn compare_with(table: Option<&Table>, expect: Expect) -> Vec<Finding> {
    let Some(t) = table else {
        return vec![if expect.wants_cluster() {
            Finding::needs(
                "table job is missing: create it as schema-cluster.sql does (the cluster variant)"
                    .to_string(),
                Some(create_cluster_table_sql().to_string()),
            )
        } else {
            Finding::needs(
                "table job is missing: create it as schema.sql does".to_string(),
                Some(create_table_sql().to_string()),
            )
        }];
    };
    let mut f = Findings::default();
    if !matches!(
        t.kind.to_ascii_uppercase().as_str(),
        "BASE TABLE" | "SYSTEM VERSIONED"
    ) {
        f.by_hand(format!(
            "job is a {}, not a table: check the table it stands for",
            t.kind
        ));
        return f.into_vec();
    }
    if let Some(engine) = &t.engine {
        if !engine.eq_ignore_ascii_case("InnoDB") {
            f.table.push(Finding::needs(
                format!(
                    "engine is {engine}: the roles need transactions and row locks (claims lock \
                     rows with FOR UPDATE SKIP LOCKED), so a job could run twice at once"
                ),
                Some("ALTER TABLE job ENGINE=InnoDB".to_string()),
            ));
        }
    }
    check_jobid(&mut f, t);
    check_funcname(&mut f, t);
    check_arg(&mut f, t);
    check_key_column(&mut f, t, "uniqkey");
    check_run_after(&mut f, t);
    check_key_column(&mut f, t, "coalesce");
    check_flag(&mut f, t);
    check_failcount(&mut f, t);
    check_priority(&mut f, t);
    check_history(&mut f, t);
    check_extra_columns(&mut f, t);
    check_indexes(&mut f, t, expect);
    check_charset(&mut f, t);
    f.into_vec()
}

fn column<'a>(t: &'a Table, name: &str) -> Option<&'a Column> {
    t.columns.iter().find(|c| c.name.eq_ignore_ascii_case(name))
}

fn primary(t: &Table) -> Option<&Index> {
    t.indexes.iter().find(|i| i.name == "PRIMARY")
}

fn cols(columns: &[String]) -> String {
    columns.join(", ")
}

fn check_jobid(f: &mut Findings, t: &Table) {
    let Some(col) = column(t, "jobid") else {
        match primary(t) {
            None => f.add_column(
                "jobid",
                "jobid BIGINT UNSIGNED NOT NULL AUTO_INCREMENT FIRST, ADD PRIMARY KEY (jobid)",
                "every statement names a job by its jobid",
            ),
            Some(pk) => f.by_hand(format!(
                "column jobid is missing and the primary key is on ({}): make jobid BIGINT \
                 UNSIGNED NOT NULL AUTO_INCREMENT the primary key by hand",
                cols(&pk.columns)
            )),
        }
        return;
    };
    match col.family() {
        Family::Int { bytes, unsigned } => {
            if (bytes, unsigned) != (8, true) {
                f.note(format!(
                    "jobid is {} (schema.sql: BIGINT UNSIGNED): readable, with fewer ids",
                    col.column_type
                ));
            }
            if !col.auto_increment() {
                let mut m = Modify::new(t, col);
                m.auto_increment = true;
                m.nullable = Some(false);
                m.why.push(
                    "jobid is not AUTO_INCREMENT: our INSERTs and the original's give no jobid"
                        .to_string(),
                );
                f.modify(m);
            }
        }
        _ => f.by_hand(format!(
            "jobid is {} (schema.sql: BIGINT UNSIGNED NOT NULL AUTO_INCREMENT): change it by hand",
            col.column_type
        )),
    }
}

/// A text column's kind of string and its length in schema.sql.
fn widen(col: &Column, want: u64) -> Option<String> {
    match col.family() {
        Family::Text { len } if len < want => Some(format!("VARCHAR({want})")),
        Family::Binary { len } if len < want => Some(format!("VARBINARY({want})")),
        _ => None,
    }
}

fn check_funcname(f: &mut Findings, t: &Table) {
    let Some(col) = column(t, "funcname") else {
        f.add_column(
            "funcname",
            "funcname VARCHAR(200) NOT NULL",
            "every job names its function",
        );
        return;
    };
    match col.family() {
        Family::Text { .. } | Family::Binary { .. } => {
            let mut m = Modify::new(t, col);
            if let Some(ty) = widen(col, 200) {
                m.why.push(format!(
                    "funcname is {}: function names of up to 200 bytes are refused",
                    col.column_type
                ));
                m.ty = Some(ty);
            } else if col.data_type == "varbinary" && col.max_length == Some(200) {
                f.note(
                    "funcname is varbinary(200) (schema.sql: VARCHAR(200)): compared byte for \
                     byte, as gearmand compares names; no change needed"
                        .to_string(),
                );
            } else if !(col.data_type == "varchar" && col.max_length == Some(200)) {
                f.note(format!(
                    "funcname is {} (schema.sql: VARCHAR(200)): wider, readable",
                    col.column_type
                ));
            }
            if col.nullable {
                f.note(
                    "funcname is nullable (schema.sql: NOT NULL): harmless, every INSERT gives it"
                        .to_string(),
                );
            }
            f.modify(m);
        }
        _ => f.by_hand(format!(
            "funcname is {} (schema.sql: VARCHAR(200) NOT NULL): change it by hand",
            col.column_type
        )),
    }
}

fn check_arg(f: &mut Findings, t: &Table) {
    let Some(col) = column(t, "arg") else {
        f.add_column("arg", "arg MEDIUMBLOB", "it holds every job's payload");
        return;
    };
    let mut m = Modify::new(t, col);
    match col.family() {
        Family::Binary { len } if len < ARG_BYTES => {
            m.why.push(format!(
                "arg is {}: args of up to 16 MiB - 1 (MEDIUMBLOB) are refused",
                col.column_type
            ));
            m.ty = Some("MEDIUMBLOB".to_string());
        }
        Family::Binary { len } if len > ARG_BYTES => f.note(format!(
            "arg is {} (schema.sql: MEDIUMBLOB): wider, readable",
            col.column_type
        )),
        Family::Binary { .. } => {}
        Family::Text { len } => {
            f.note(format!(
                "arg is {} (schema.sql: MEDIUMBLOB): an arg that is not valid {} text is refused \
                 or changed",
                col.column_type,
                col.charset.as_deref().unwrap_or("character set")
            ));
            if len < ARG_BYTES {
                m.why.push(format!(
                    "arg is {}: args of up to 16 MiB - 1 are refused",
                    col.column_type
                ));
                m.ty = Some("MEDIUMTEXT".to_string());
            }
        }
        _ => f.by_hand(format!(
            "arg is {} (schema.sql: MEDIUMBLOB): change it by hand",
            col.column_type
        )),
    }
    if !col.nullable {
        f.note("arg is NOT NULL (schema.sql: NULL): harmless, every INSERT gives it".to_string());
    }
    f.modify(m);
}

/// `uniqkey` and `coalesce`: VARCHAR(255) NULL, and both clients store
/// NULL in them.
fn check_key_column(f: &mut Findings, t: &Table, name: &str) {
    let Some(col) = column(t, name) else {
        f.add_column(
            name,
            &format!("{} VARCHAR(255) NULL", ident(name)),
            "every INSERT names it",
        );
        return;
    };
    match col.family() {
        Family::Text { .. } | Family::Binary { .. } => {
            let mut m = Modify::new(t, col);
            if let Some(ty) = widen(col, 255) {
                m.why.push(format!(
                    "{name} is {}: values of up to 255 bytes are refused",
                    col.column_type
                ));
                m.ty = Some(ty);
            } else if !(col.data_type == "varchar" && col.max_length == Some(255)) {
                f.note(format!(
                    "{name} is {} (schema.sql: VARCHAR(255)): wider, readable",
                    col.column_type
                ));
            }
            if !col.nullable {
                m.why.push(if name == "uniqkey" {
                    "uniqkey is NOT NULL: a job without a key is stored with '' (the original \
                     client's INSERT IGNORE) or refused (ours), and UNIQUE (funcname, uniqkey) \
                     keeps one keyless job per function"
                        .to_string()
                } else {
                    format!("{name} is NOT NULL: our INSERTs store NULL in it and are refused")
                });
                m.nullable = Some(true);
            }
            f.modify(m);
        }
        _ => f.by_hand(format!(
            "{name} is {} (schema.sql: VARCHAR(255) NULL): change it by hand",
            col.column_type
        )),
    }
}

fn check_run_after(f: &mut Findings, t: &Table) {
    let Some(col) = column(t, "run_after") else {
        f.add_column(
            "run_after",
            "run_after INT UNSIGNED NOT NULL",
            "it says when each job is due (existing rows become due now)",
        );
        return;
    };
    match col.family() {
        Family::Int { bytes, .. } if bytes < 4 => {
            let mut m = Modify::new(t, col);
            m.why.push(format!(
                "run_after is {}: it cannot hold a unix time",
                col.column_type
            ));
            m.ty = Some("INT UNSIGNED".to_string());
            f.modify(m);
        }
        Family::Int {
            bytes: 4,
            unsigned: false,
        } => f.note(format!(
            "run_after is {} (signed; schema.sql: INT UNSIGNED): holds times up to 2147483647, \
             which is `never` (dead), so readable until 2038",
            col.column_type
        )),
        Family::Int { bytes: 4, .. } => {}
        Family::Int { .. } => f.note(format!(
            "run_after is {} (schema.sql: INT UNSIGNED): wider, readable",
            col.column_type
        )),
        _ => f.by_hand(format!(
            "run_after is {} (schema.sql: INT UNSIGNED NOT NULL, a unix time): change it by hand",
            col.column_type
        )),
    }
    if col.nullable {
        f.note(
            "run_after is nullable (schema.sql: NOT NULL): harmless while every INSERT gives it; \
             a row with NULL would never run"
                .to_string(),
        );
    }
}

fn check_flag(f: &mut Findings, t: &Table) {
    let target = "ENUM('controller','shim') NULL DEFAULT 'shim'";
    let Some(col) = column(t, "flag") else {
        f.add_column(
            "flag",
            &format!("flag {target}"),
            "low-latency jobs are told from throughput ones by it (existing rows get 'shim')",
        );
        return;
    };
    match col.family() {
        Family::Enum(values) => {
            let mut m = Modify::new(t, col);
            let missing: Vec<&str> = FLAG_VALUES
                .into_iter()
                .filter(|v| !values.iter().any(|have| have == v))
                .collect();
            let extra: Vec<&String> = values
                .iter()
                .filter(|v| !FLAG_VALUES.contains(&v.as_str()))
                .collect();
            for value in &missing {
                m.why.push(format!(
                    "flag's ENUM lacks '{value}': {}",
                    if *value == "shim" {
                        "throughput jobs cannot be stored"
                    } else {
                        "low-latency jobs cannot be stored"
                    }
                ));
            }
            if !col.nullable {
                let first = values.first().map_or("", String::as_str);
                let mut why = format!(
                    "flag is NOT NULL: the original client's NULL flag would be stored as '{first}'"
                );
                if first != "shim" {
                    why.push_str(" and a throughput job would go to the wrong function");
                }
                m.why.push(why);
            }
            match col.default.as_deref() {
                Some("shim") => {}
                Some(other) => m.why.push(format!(
                    "flag defaults to '{other}': a row inserted without a flag would go to the \
                     wrong function"
                )),
                None if !col.nullable => m
                    .why
                    .push("flag has no default: INSERTs without a flag are refused".into()),
                None => f.note(
                    "flag defaults to NULL (schema.sql: 'shim'): NULL means shim, harmless"
                        .to_string(),
                ),
            }
            if !extra.is_empty() {
                let list: Vec<String> = extra.iter().map(|v| quote(v)).collect();
                f.note(format!(
                    "flag's ENUM has {} besides 'controller' and 'shim': kept",
                    list.join(", ")
                ));
            }
            if !m.why.is_empty() {
                // Every value stays: a MODIFY that dropped one would blank
                // the rows holding it.
                let all: Vec<String> = FLAG_VALUES
                    .iter()
                    .map(|v| quote(v))
                    .chain(extra.iter().map(|v| quote(v)))
                    .collect();
                m.ty = Some(format!("ENUM({})", all.join(",")));
                m.nullable = Some(true);
                m.default = Some(Some("shim".to_string()));
            }
            f.modify(m);
        }
        Family::Text { len } if len >= 10 => f.note(format!(
            "flag is {} (schema.sql: {target}): readable",
            col.column_type
        )),
        _ => f.by_hand(format!(
            "flag is {} (schema.sql: {target}): change it by hand",
            col.column_type
        )),
    }
}

/// `priority` (ours, not the original's): which due jobs go first.
fn check_priority(f: &mut Findings, t: &Table) {
    let Some(col) = column(t, "priority") else {
        f.add_column(
            "priority",
            "priority TINYINT UNSIGNED NOT NULL DEFAULT 1",
            "jobs are claimed oldest first whatever their priority, and a high or low one is refused",
        );
        return;
    };
    if !matches!(col.family(), Family::Int { .. }) {
        f.by_hand(format!(
            "priority is {} (schema.sql: TINYINT UNSIGNED NOT NULL DEFAULT 1): change it by hand",
            col.column_type
        ));
    }
}

/// Our history columns (not the original's): what happened to a job, and
/// the exact in flight and retrying of `garivini status` and `jobs`.
const HISTORY_COLUMNS: [(&str, &str, &str); 4] = [
    (
        "created_at",
        "created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP",
        "jobs show cannot say when a job was stored",
    ),
    (
        "attempted_at",
        "attempted_at INT UNSIGNED NOT NULL DEFAULT 0",
        "in flight is only told by the lease window, and jobs show cannot say when a job last ran",
    ),
    (
        "failed_at",
        "failed_at INT UNSIGNED NOT NULL DEFAULT 0",
        "a failed job waiting out its backoff is not told apart (retrying), and jobs retry wants --force for it",
    ),
    (
        "last_error",
        "last_error VARCHAR(1000) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL DEFAULT NULL",
        "jobs show cannot say why a job failed",
    ),
];

fn check_history(f: &mut Findings, t: &Table) {
    for (name, definition, why) in HISTORY_COLUMNS {
        let Some(col) = column(t, name) else {
            f.add_column(name, definition, why);
            continue;
        };
        let family = col.family();
        let fits = match name {
            "created_at" => {
                matches!(family, Family::Int { .. })
                    || matches!(col.data_type.as_str(), "timestamp" | "datetime")
            }
            "last_error" => matches!(family, Family::Text { .. } | Family::Binary { .. }),
            _ => matches!(family, Family::Int { .. }),
        };
        let schema_sql = definition.split_once(' ').map_or("", |(_, d)| d);
        if !fits {
            f.by_hand(format!(
                "{name} is {} (schema.sql: {schema_sql}): the roles leave it alone; change it by hand",
                col.column_type
            ));
        } else if !col.nullable && col.default.is_none() && name != "created_at" {
            f.by_hand(format!(
                "{name} is NOT NULL without a default: the original's INSERTs are refused; \
                 change it by hand to {schema_sql}"
            ));
        }
    }
}

fn check_failcount(f: &mut Findings, t: &Table) {
    let Some(col) = column(t, "failcount") else {
        f.add_column(
            "failcount",
            "failcount TINYINT UNSIGNED NOT NULL DEFAULT 0",
            "the retry backoff counts failures in it",
        );
        return;
    };
    match col.family() {
        Family::Int { bytes, unsigned } => {
            if bytes == 1 && !unsigned {
                f.note(format!(
                    "failcount is {} (signed; schema.sql: TINYINT UNSIGNED): holds up to 127 \
                     failures",
                    col.column_type
                ));
            } else if bytes > 1 {
                f.note(format!(
                    "failcount is {} (schema.sql: TINYINT UNSIGNED): wider, readable",
                    col.column_type
                ));
            }
            let zero = col
                .default
                .as_deref()
                .and_then(|d| d.trim().parse::<i64>().ok())
                == Some(0);
            if !zero {
                let mut m = Modify::new(t, col);
                m.why.push(match &col.default {
                    None if col.nullable => {
                        "failcount defaults to NULL: new rows would have no failure count".into()
                    }
                    None => "failcount has no default: INSERTs that leave it out (every client's) \
                             are refused"
                        .into(),
                    Some(d) => format!(
                        "failcount defaults to {d}: new rows would count failures they never had"
                    ),
                });
                m.default = Some(Some("0".to_string()));
                f.modify(m);
            }
            if col.nullable {
                f.note(
                    "failcount is nullable (schema.sql: NOT NULL): harmless, every statement \
                     gives it or its default"
                        .to_string(),
                );
            }
        }
        _ => f.by_hand(format!(
            "failcount is {} (schema.sql: TINYINT UNSIGNED NOT NULL DEFAULT 0): change it by hand",
            col.column_type
        )),
    }
}

/// The contract's columns and ours (checked one by one above).
const CONTRACT_COLUMNS: [&str; 13] = [
    "jobid",
    "funcname",
    "arg",
    "uniqkey",
    "run_after",
    "coalesce",
    "flag",
    "failcount",
    "priority",
    "created_at",
    "attempted_at",
    "failed_at",
    "last_error",
];

fn check_extra_columns(f: &mut Findings, t: &Table) {
    for col in &t.columns {
        // The cluster variant's column is checked with its index.
        if CONTRACT_COLUMNS
            .iter()
            .any(|c| c.eq_ignore_ascii_case(&col.name))
            || is_keyed_funcname(col)
        {
            continue;
        }
        if !col.nullable && col.default.is_none() && !col.auto_increment() && !col.generated() {
            f.by_hand(format!(
                "column {} ({}) is NOT NULL without a default: INSERTs that leave it out (every \
                 client's) are refused in strict mode; give it a default by hand",
                col.name, col.column_type
            ));
        } else {
            f.note(format!(
                "column {} ({}) is not in schema.sql: kept, and left to its default by every INSERT",
                col.name, col.column_type
            ));
        }
    }
}

/// The indexes the roles need: name, unique, columns, and why.
///
/// The original's INDEX (run_after) is not among them: the claim's index is
/// priority_run_after, and a plain run_after index beside it only costs
/// every lease a write (see [`check_indexes`]'s note for it).
const WANTED_INDEXES: [(&str, bool, &[&str], &str); 3] = [
    (
        "funcname_uniqkey",
        true,
        &["funcname", "uniqkey"],
        "jobs with the same unique key are stored twice (adding it fails while such duplicates \
         exist)",
    ),
    (
        "funcname_run_after",
        false,
        &["funcname", "run_after", "failcount"],
        "`garivini status` and `garivini jobs list --funcname` scan the table instead of the index",
    ),
    (
        "priority_run_after",
        false,
        &["priority", "run_after"],
        "every claim of due rows scans the table",
    ),
];

fn same_columns(have: &[String], want: &[&str]) -> bool {
    have.len() == want.len()
        && have
            .iter()
            .zip(want)
            .all(|(h, w)| h.eq_ignore_ascii_case(w))
}

fn check_indexes(f: &mut Findings, t: &Table, expect: Expect) {
    let mut used = vec![false; t.indexes.len()];
    // PRIMARY (jobid).
    match t.indexes.iter().position(|i| i.name == "PRIMARY") {
        Some(k) if same_columns(&t.indexes[k].columns, &["jobid"]) => used[k] = true,
        Some(k) => {
            used[k] = true;
            f.by_hand(format!(
                "the primary key is ({}), not (jobid): change it by hand",
                cols(&t.indexes[k].columns)
            ));
        }
        // A missing jobid column gets its primary key with it.
        None if column(t, "jobid").is_none() => {}
        None => f.primary.push(Finding::needs(
            "there is no primary key: jobid must be one".to_string(),
            Some("ALTER TABLE job ADD PRIMARY KEY (jobid)".to_string()),
        )),
    }
    for (name, unique, want, why) in WANTED_INDEXES {
        if name == "funcname_uniqkey" && !check_dedup(f, t, expect, &mut used) {
            continue;
        }
        // A unique index is the same constraint whatever its columns'
        // order; a plain one serves when it starts with the columns.
        let serves = |i: &Index| {
            if unique {
                let mut have: Vec<String> =
                    i.columns.iter().map(|c| c.to_ascii_lowercase()).collect();
                have.sort();
                let mut want: Vec<&str> = want.to_vec();
                want.sort();
                i.unique && same_columns(&have, &want)
            } else {
                i.columns.len() >= want.len() && same_columns(&i.columns[..want.len()], want)
            }
        };
        let found: Vec<usize> = (0..t.indexes.len())
            .filter(|&k| serves(&t.indexes[k]))
            .collect();
        if found.is_empty() {
            let mut index_name = name.to_string();
            let mut n = 2;
            while t
                .indexes
                .iter()
                .any(|i| i.name.eq_ignore_ascii_case(&index_name))
            {
                index_name = format!("{name}_{n}");
                n += 1;
            }
            let what = if unique { "UNIQUE" } else { "INDEX" };
            let list = want.join(", ");
            let kind = if unique { "UNIQUE index" } else { "index" };
            f.add_indexes.push(Finding::needs(
                format!("{kind} {name} ({list}) is missing: {why}"),
                Some(format!("ALTER TABLE job ADD {what} {index_name} ({list})")),
            ));
        }
        for k in found {
            used[k] = true;
        }
    }
    for (k, i) in t.indexes.iter().enumerate() {
        if used[k] {
            continue;
        }
        if !i.unique && same_columns(&i.columns, &["run_after"]) {
            f.note(format!(
                "index {} (run_after) is the original's claim index; ours is priority_run_after, \
                 and every lease rewrites both: `ALTER TABLE job DROP INDEX {}` saves that write, \
                 unless a Perl Garivini QueueRunner still claims from this table",
                i.name, i.name
            ));
            continue;
        }
        if i.unique {
            f.note(format!(
                "UNIQUE {} ({}) is not in schema.sql: kept; an INSERT that repeats its columns \
                 is refused or merged with the existing row",
                i.name,
                cols(&i.columns)
            ));
        } else {
            f.note(format!(
                "index {} ({}) is not in schema.sql: kept",
                i.name,
                cols(&i.columns)
            ));
        }
    }
}

/// A generation expression without what servers write differently:
/// case, quotes, spaces and parentheses (MariaDB writes
/// ``if(`uniqkey` is null,NULL,`funcname`)``, MySQL
/// ``if((`uniqkey` is null),NULL,`funcname`)``).
fn normalized_expr(expr: &str) -> String {
    expr.chars()
        .filter(|c| !matches!(c, '`' | '(' | ')') && !c.is_whitespace())
        .flat_map(char::to_lowercase)
        .collect()
}

/// Whether `col` is the cluster variant's column: generated as
/// `IF(uniqkey IS NULL, NULL, funcname)`, whatever its name.
fn is_keyed_funcname(col: &Column) -> bool {
    col.generated()
        && col.generation.as_deref().map(normalized_expr).as_deref()
            == Some("ifuniqkeyisnull,null,funcname")
}

/// An index's column name, without a prefix length (`uniqkey(100)`).
fn part_name(part: &str) -> &str {
    part.split('(').next().unwrap_or(part)
}

/// Whether index `i` is the cluster variant's: UNIQUE (keyed_funcname,
/// uniqkey) in either order, keyed_funcname being the generated column.
fn is_cluster_dedup(t: &Table, i: &Index) -> bool {
    if !i.unique || i.columns.len() != 2 || i.columns.iter().any(|c| c.contains('(')) {
        return false;
    }
    let keyed = |c: &String| column(t, c).is_some_and(is_keyed_funcname);
    let uniqkey = |c: &String| c.eq_ignore_ascii_case("uniqkey");
    (keyed(&i.columns[0]) && uniqkey(&i.columns[1]))
        || (uniqkey(&i.columns[0]) && keyed(&i.columns[1]))
}

/// Whether index `i` is UNIQUE (funcname, uniqkey), in either order.
fn is_plain_dedup(i: &Index) -> bool {
    let mut have: Vec<String> = i.columns.iter().map(|c| c.to_ascii_lowercase()).collect();
    have.sort();
    i.unique && same_columns(&have, &["funcname", "uniqkey"])
}

/// A unique index of our own making on a generated column computed from
/// funcname and uniqkey (a CONCAT of the two, say): a dedup key, but one
/// this check cannot vouch for.
fn is_other_generated_dedup(t: &Table, i: &Index) -> bool {
    i.unique
        && i.columns.iter().any(|c| {
            column(t, part_name(c)).is_some_and(|col| {
                col.generated()
                    && col.generation.as_deref().is_some_and(|g| {
                        let g = normalized_expr(g);
                        g.contains("funcname") && g.contains("uniqkey")
                    })
            })
        })
}

/// The definition of keyed_funcname for table `t`: funcname's type (as
/// the MODIFYs before it leave it), charset and collation, so that it
/// compares function names exactly as funcname does; Err says why there
/// is none.
fn keyed_funcname_definition(t: &Table) -> std::result::Result<String, String> {
    let ty = match column(t, "funcname") {
        // Added before it (ADD COLUMN) with the table's charset, which
        // this one takes too.
        None => "VARCHAR(200)".to_string(),
        Some(col) => {
            let ty = match col.data_type.as_str() {
                "varchar" | "char" | "varbinary" | "binary" => {
                    widen(col, 200).unwrap_or_else(|| col.column_type.clone())
                }
                _ => {
                    return Err(format!(
                        "funcname is {}, which a unique index cannot hold whole",
                        col.column_type
                    ))
                }
            };
            match (&col.charset, &col.collation) {
                (Some(charset), Some(collation)) => {
                    format!("{ty} CHARACTER SET {charset} COLLATE {collation}")
                }
                _ => ty,
            }
        }
    };
    Ok(format!(
        "{KEYED_FUNCNAME} {ty} AS ({KEYED_FUNCNAME_EXPR}) STORED"
    ))
}

/// A name for a new index: `name`, or `name_2`, ... when taken.
fn free_index_name(t: &Table, name: &str) -> String {
    let mut index_name = name.to_string();
    let mut n = 2;
    while t
        .indexes
        .iter()
        .any(|i| i.name.eq_ignore_ascii_case(&index_name))
    {
        index_name = format!("{name}_{n}");
        n += 1;
    }
    index_name
}

/// The ALTER that makes the cluster variant: adds keyed_funcname and
/// UNIQUE dedup_key (keyed_funcname, uniqkey), and drops `drop` (the plain
/// UNIQUE (funcname, uniqkey)), in one statement, so that the table is
/// never without a dedup key. Err says why no statement does it safely.
fn conversion_sql(t: &Table, drop: &[&Index]) -> std::result::Result<String, String> {
    let index = free_index_name(t, DEDUP_KEY);
    let mut sql = match t.columns.iter().find(|c| is_keyed_funcname(c)) {
        // Half made: the column is there, its index is not.
        Some(keyed) => format!(
            "ALTER TABLE job ADD UNIQUE {index} ({}, uniqkey)",
            ident(&keyed.name)
        ),
        None => {
            if let Some(taken) = column(t, KEYED_FUNCNAME) {
                return Err(format!(
                    "a column {} ({}) already exists and is not the cluster variant's ({})",
                    taken.name, taken.column_type, KEYED_FUNCNAME_EXPR
                ));
            }
            let definition = keyed_funcname_definition(t)?;
            format!(
                "ALTER TABLE job ADD COLUMN {definition}, ADD UNIQUE {index} ({KEYED_FUNCNAME}, \
                 uniqkey)"
            )
        }
    };
    for i in drop {
        sql.push_str(&format!(", DROP INDEX {}", ident(&i.name)));
    }
    Ok(sql)
}

/// What a cluster variant does for a Galera cluster, and that it dedups
/// as the plain index does.
const CLUSTER_VARIANT: &str = "the cluster variant (schema-cluster.sql) has UNIQUE dedup_key \
     (keyed_funcname, uniqkey) instead, keyed_funcname being funcname for a row with a uniqkey \
     and NULL for a keyless one: no certification key for keyless rows, and exactly the same \
     duplicates refused";
/// What the conversion costs.
const CONVERSION_COST: &str = "the ALTER copies the table: reads go on, writes wait until it is \
     done, and on Galera the whole cluster waits for it";

/// The dedup by unique key: schema.sql's UNIQUE (funcname, uniqkey), or
/// the cluster variant's (see schema-cluster.sql), whichever the table
/// has, checked against `expect`. Marks the indexes it accounts for in
/// `used`. Returns true when the plain index is to be checked (and added
/// when missing) as schema.sql's, false when this has said all there is.
fn check_dedup(f: &mut Findings, t: &Table, expect: Expect, used: &mut [bool]) -> bool {
    let plain: Vec<usize> = (0..t.indexes.len())
        .filter(|&k| is_plain_dedup(&t.indexes[k]))
        .collect();
    let cluster: Vec<usize> = (0..t.indexes.len())
        .filter(|&k| is_cluster_dedup(t, &t.indexes[k]))
        .collect();
    let where_ = if expect.galera {
        "on a Galera cluster (wsrep_on=ON)"
    } else {
        "and --cluster asks for the cluster variant"
    };
    if let Some(&k) = cluster.first() {
        for &k in plain.iter().chain(&cluster) {
            used[k] = true;
        }
        let index = &t.indexes[k];
        check_keyed_funcname(f, t, index);
        if !plain.is_empty() {
            let names: Vec<&str> = plain.iter().map(|&k| t.indexes[k].name.as_str()).collect();
            if expect.wants_cluster() {
                let drops: Vec<String> = names
                    .iter()
                    .map(|n| format!("DROP INDEX {}", ident(n)))
                    .collect();
                f.convert.push(Finding::conversion(
                    format!(
                        "UNIQUE {} (funcname, uniqkey) is kept beside the cluster variant's {} \
                         {where_}: it still gives every keyless row of a function the one \
                         certification key (funcname, NULL); dropping it refuses no fewer \
                         duplicates ({} refuses the same)",
                        names.join(", "),
                        index.name,
                        index.name
                    ),
                    format!("ALTER TABLE job {}", drops.join(", ")),
                ));
            } else {
                f.note(format!(
                    "UNIQUE {} (funcname, uniqkey) and the cluster variant's {} refuse the same \
                     duplicates: one of them is enough; kept",
                    names.join(", "),
                    index.name
                ));
            }
        }
        return false;
    }
    if !plain.is_empty() {
        for &k in &plain {
            used[k] = true;
        }
        if expect.wants_cluster() {
            let drop: Vec<&Index> = plain.iter().map(|&k| &t.indexes[k]).collect();
            let names: Vec<&str> = drop.iter().map(|i| i.name.as_str()).collect();
            let why = if expect.galera {
                "Galera certifies every write by its unique keys and leaves a key out only when \
                 all its columns are NULL, so every keyless row of a function has the same one, \
                 (funcname, NULL): keyless inserts and completions of one function on different \
                 nodes conflict, and one of each pair fails (retries, and rows left leased until \
                 their lease ends)"
            } else {
                "on a Galera cluster every keyless row of a function would have the one \
                 certification key (funcname, NULL)"
            };
            let message = format!(
                "UNIQUE {} (funcname, uniqkey) {where_}: {why}; {CLUSTER_VARIANT}; \
                 `garivini schema check --apply --cluster` converts the table ({CONVERSION_COST})",
                names.join(", ")
            );
            match conversion_sql(t, &drop) {
                Ok(sql) => f.convert.push(Finding::conversion(message, sql)),
                Err(why) => f.by_hand(format!("{message}; convert it by hand: {why}")),
            }
        }
        return false;
    }
    let others: Vec<usize> = (0..t.indexes.len())
        .filter(|&k| is_other_generated_dedup(t, &t.indexes[k]))
        .collect();
    if let Some(&k) = others.first() {
        for &k in &others {
            used[k] = true;
        }
        let i = &t.indexes[k];
        f.note(format!(
            "UNIQUE {} ({}) on a generated column is taken for the dedup by unique key, but this \
             check cannot tell whether it refuses exactly what UNIQUE (funcname, uniqkey) \
             refuses (a CONCAT of the two does not: under utf8mb4_unicode_ci, which ignores \
             NUL, ('ab', 'c') and ('a', 'bc') are one job, and 'f ' and 'f' with one key are \
             two); the cluster variant's (schema-cluster.sql) does by construction",
            i.name,
            cols(&i.columns)
        ));
        return false;
    }
    if expect.wants_cluster() {
        let message = format!(
            "the dedup by unique key is missing {where_}: jobs with the same unique key are \
             stored twice; {CLUSTER_VARIANT}; `garivini schema check --apply --cluster` adds it \
             ({CONVERSION_COST}; it fails while such duplicates exist)"
        );
        match conversion_sql(t, &[]) {
            Ok(sql) => f.convert.push(Finding::conversion(message, sql)),
            Err(why) => f.by_hand(format!("{message}; add it by hand: {why}")),
        }
        return false;
    }
    true
}

/// The cluster variant's column must compare function names as funcname
/// does: its type, charset and collation.
fn check_keyed_funcname(f: &mut Findings, t: &Table, index: &Index) {
    let Some(keyed) = index
        .columns
        .iter()
        .filter_map(|c| column(t, c))
        .find(|c| is_keyed_funcname(c))
    else {
        return;
    };
    if !keyed.extra.to_ascii_lowercase().contains("stored") {
        f.note(format!(
            "{} is {} (schema-cluster.sql: STORED): it refuses the same duplicates; Galera \
             computes certification keys from the stored row, so STORED is the form measured",
            keyed.name, keyed.extra
        ));
    }
    let Some(funcname) = column(t, "funcname") else {
        return;
    };
    let same_type = keyed
        .column_type
        .eq_ignore_ascii_case(&funcname.column_type);
    if same_type && keyed.collation == funcname.collation {
        return;
    }
    let described = |c: &Column| match &c.collation {
        Some(collation) => format!("{} {collation}", c.column_type),
        None => c.column_type.clone(),
    };
    let definition = keyed_funcname_definition(t).unwrap_or_default();
    f.by_hand(format!(
        "{} is {} and funcname {}: {} does not compare function names as UNIQUE (funcname, \
         uniqkey) would (a longer name is refused, or names another collation tells apart are \
         merged, or the reverse); make it funcname's by hand (ALTER TABLE job MODIFY {definition}, \
         which fails while rows it would merge exist)",
        keyed.name,
        described(keyed),
        described(funcname),
        index.name,
    ));
}

/// The charset of a collation: the name up to its first `_`
/// (`latin1_swedish_ci` is latin1's).
fn charset_of(collation: &str) -> &str {
    collation.split('_').next().unwrap_or(collation)
}

fn is_binary_collation(collation: &str) -> bool {
    collation == "binary" || collation.ends_with("_bin")
}

/// One note at most: text that utf8mb4 holds and the table does not, or
/// keys compared without case.
fn check_charset(f: &mut Findings, t: &Table) {
    let text: Vec<&Column> = ["funcname", "uniqkey", "coalesce"]
        .iter()
        .filter_map(|n| column(t, n))
        .filter(|c| c.charset.is_some())
        .collect();
    let table_charset = t.collation.as_deref().map(charset_of);
    let mut charsets: Vec<&str> = text
        .iter()
        .filter_map(|c| c.charset.as_deref())
        .chain(table_charset)
        .filter(|cs| *cs != "utf8mb4")
        .collect();
    charsets.dedup();
    let ci: Vec<&str> = text
        .iter()
        .filter(|c| c.name != "coalesce")
        .filter_map(|c| c.collation.as_deref())
        .filter(|c| !is_binary_collation(c))
        .collect();
    let case = ci.first().map(|collation| {
        format!(
            "collation {collation} compares function names and unique keys without case, so \
             'Key' and 'key' are one job"
        )
    });
    if let Some(charset) = charsets.first() {
        let whose = if table_charset == Some(charset) {
            format!("table charset {charset}")
        } else {
            let names: Vec<&str> = text
                .iter()
                .filter(|c| c.charset.as_deref() == Some(charset))
                .map(|c| c.name.as_str())
                .collect();
            format!("charset {charset} of {}", names.join(", "))
        };
        let mut message = format!(
            "{whose}: a function name or key with characters outside {charset} \
             is refused (strict sql_mode) or stored with '?' in their place"
        );
        if let Some(case) = case {
            message.push_str(&format!("; {case}"));
        }
        f.note(format!(
            "{message} (schema.sql: utf8mb4_bin); no change needed"
        ));
    } else if let Some(case) = case {
        f.note(format!(
            "{case} (schema.sql: utf8mb4_bin); no change needed"
        ));
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_side_tables_are_schema_sqls_and_schema_cluster_sqls() {
        for (table, column) in [
            ("garivini_claimer", None),
            (
                "garivini_periodic",
                Some("last_tick  INT UNSIGNED     NOT NULL"),
            ),
            (
                "garivini_paused",
                Some("funcname   VARCHAR(200)     NOT NULL"),
            ),
            (
                "garivini_dispatches",
                Some("dispatched BIGINT UNSIGNED  NOT NULL DEFAULT 0"),
            ),
        ] {
            let create = side_table(table);
            assert!(create.starts_with(&format!("CREATE TABLE IF NOT EXISTS {table} (")));
            if let Some(column) = column {
                assert!(create.contains(column), "{create}");
            }
            assert!(create.ends_with("COLLATE=utf8mb4_bin"), "{create}");
            assert!(SCHEMA_CLUSTER_SQL.contains(create));
        }
        assert_eq!(claimer_table(), side_table("garivini_claimer"));
    }

    use super::*;

    fn col(name: &str, column_type: &str, nullable: bool, default: Option<&str>) -> Column {
        let data_type = column_type.split(['(', ' ']).next().unwrap().to_string();
        let max_length = match data_type.as_str() {
            "varchar" | "varbinary" | "char" | "binary" => column_type
                .split(['(', ')'])
                .nth(1)
                .and_then(|n| n.parse().ok()),
            "tinyblob" | "tinytext" => Some(255),
            "blob" | "text" => Some(65_535),
            "mediumblob" | "mediumtext" => Some(ARG_BYTES),
            "longblob" | "longtext" => Some(4_294_967_295),
            "enum" => Some(10),
            _ => None,
        };
        let text = matches!(
            data_type.as_str(),
            "varchar" | "char" | "enum" | "text" | "mediumtext"
        );
        Column {
            name: name.into(),
            data_type,
            column_type: column_type.into(),
            nullable,
            default: default.map(String::from),
            max_length,
            charset: text.then(|| "utf8mb4".into()),
            collation: text.then(|| "utf8mb4_bin".into()),
            extra: if name == "jobid" {
                "auto_increment".into()
            } else {
                String::new()
            },
            comment: String::new(),
            generation: None,
        }
    }

    fn index(name: &str, unique: bool, columns: &[&str]) -> Index {
        Index {
            name: name.into(),
            unique,
            columns: columns.iter().map(|c| c.to_string()).collect(),
        }
    }

    /// The table schema.sql makes.
    fn ours() -> Table {
        Table {
            kind: "BASE TABLE".into(),
            engine: Some("InnoDB".into()),
            collation: Some("utf8mb4_bin".into()),
            columns: vec![
                col("jobid", "bigint(20) unsigned", false, None),
                col("funcname", "varchar(200)", false, None),
                col("arg", "mediumblob", true, None),
                col("uniqkey", "varchar(255)", true, None),
                col("run_after", "int(10) unsigned", false, None),
                col("coalesce", "varchar(255)", true, None),
                col("flag", "enum('controller','shim')", true, Some("shim")),
                col("failcount", "tinyint(3) unsigned", false, Some("0")),
                col("priority", "tinyint(3) unsigned", false, Some("1")),
                col(
                    "created_at",
                    "timestamp",
                    false,
                    Some("current_timestamp()"),
                ),
                col("attempted_at", "int(10) unsigned", false, Some("0")),
                col("failed_at", "int(10) unsigned", false, Some("0")),
                col("last_error", "varchar(1000)", true, None),
            ],
            indexes: vec![
                index("PRIMARY", true, &["jobid"]),
                index("funcname_uniqkey", true, &["funcname", "uniqkey"]),
                index(
                    "funcname_run_after",
                    false,
                    &["funcname", "run_after", "failcount"],
                ),
                index("priority_run_after", false, &["priority", "run_after"]),
            ],
        }
    }

    /// The original Perl Garivini's table, on a server whose default
    /// collation is `collation`.
    fn original(collation: &str) -> Table {
        let mut t = ours();
        t.collation = Some(collation.into());
        for c in &mut t.columns {
            if c.charset.is_some() {
                c.charset = Some(charset_of(collation).into());
                c.collation = Some(collation.into());
            }
        }
        t.columns
            .retain(|c| c.name != "priority" && !HISTORY.contains(&c.name.as_str()));
        t.indexes = vec![
            index("PRIMARY", true, &["jobid"]),
            index("run_after", false, &["run_after"]),
            index("funcname", true, &["funcname", "uniqkey"]),
        ];
        t
    }

    /// What the original's table needs besides the status index: ours.
    const ADD_PRIORITY: &str =
        "ALTER TABLE job ADD COLUMN priority TINYINT UNSIGNED NOT NULL DEFAULT 1";
    const ADD_PRIORITY_INDEX: &str =
        "ALTER TABLE job ADD INDEX priority_run_after (priority, run_after)";

    /// Our history columns, which the original's table lacks.
    const HISTORY: [&str; 4] = ["created_at", "attempted_at", "failed_at", "last_error"];

    /// What `--apply` adds for them, in order.
    const ADD_HISTORY: [&str; 4] = [
        "ALTER TABLE job ADD COLUMN created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP",
        "ALTER TABLE job ADD COLUMN attempted_at INT UNSIGNED NOT NULL DEFAULT 0",
        "ALTER TABLE job ADD COLUMN failed_at INT UNSIGNED NOT NULL DEFAULT 0",
        "ALTER TABLE job ADD COLUMN last_error VARCHAR(1000) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL DEFAULT NULL",
    ];

    /// `t` with our priority column, its index and the history columns, as
    /// `--apply` leaves it.
    fn with_priority(mut t: Table) -> Table {
        let history = ours().columns;
        t.columns.extend(
            history
                .into_iter()
                .filter(|c| HISTORY.contains(&c.name.as_str())),
        );
        t.columns
            .push(col("priority", "tinyint(3) unsigned", false, Some("1")));
        t.indexes.push(index(
            "priority_run_after",
            false,
            &["priority", "run_after"],
        ));
        t
    }

    fn column_mut<'a>(t: &'a mut Table, name: &str) -> &'a mut Column {
        t.columns.iter_mut().find(|c| c.name == name).unwrap()
    }

    fn needs(findings: &[Finding]) -> Vec<&Finding> {
        findings.iter().filter(|f| f.kind == Kind::Needs).collect()
    }

    fn notes(findings: &[Finding]) -> Vec<&str> {
        findings
            .iter()
            .filter(|f| f.kind == Kind::Note)
            .map(|f| f.message.as_str())
            .collect()
    }

    fn mends(findings: &[Finding]) -> Vec<&str> {
        findings.iter().filter_map(|f| f.mend.as_deref()).collect()
    }

    #[test]
    fn schema_sql_table_is_ok() {
        assert_eq!(compare(Some(&ours())), vec![]);
    }

    #[test]
    fn the_original_table_needs_the_status_index_and_the_priority_column() {
        let findings = compare(Some(&original("latin1_swedish_ci")));
        let mut want = vec![ADD_PRIORITY];
        want.extend(ADD_HISTORY);
        want.extend([
            "ALTER TABLE job ADD INDEX funcname_run_after (funcname, run_after, failcount)",
            ADD_PRIORITY_INDEX,
        ]);
        assert_eq!(mends(&findings), want);
        assert_eq!(needs(&findings).len(), 7);
        let notes = notes(&findings);
        assert_eq!(notes.len(), 2, "{notes:?}");
        // Its run_after index is kept: the check never drops, and says what
        // it costs.
        assert!(
            notes[0].starts_with("index run_after (run_after) is the original's claim index"),
            "{}",
            notes[0]
        );
        assert!(
            notes[1].starts_with("table charset latin1: "),
            "{}",
            notes[1]
        );
        assert!(notes[1].contains("'?'") && notes[1].contains("without case"));
        // Its unnamed UNIQUE (named `funcname` by the server) is ours.
        assert!(!findings.iter().any(|f| f.message.contains("UNIQUE")));
    }

    #[test]
    fn a_case_insensitive_utf8mb4_table_gets_the_collation_note_only() {
        let findings = compare(Some(&with_priority(original("utf8mb4_general_ci"))));
        assert_eq!(needs(&findings).len(), 1);
        let notes = notes(&findings);
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].starts_with("index run_after (run_after) is the original's"));
        assert!(notes[1].starts_with("collation utf8mb4_general_ci compares"));
    }

    #[test]
    fn a_not_null_flag_is_made_nullable() {
        let mut t = ours();
        column_mut(&mut t, "flag").nullable = false;
        let findings = compare(Some(&t));
        assert_eq!(findings.len(), 1);
        assert_eq!(
            findings[0].message,
            "flag is NOT NULL: the original client's NULL flag would be stored as 'controller' \
             and a throughput job would go to the wrong function"
        );
        assert_eq!(
            findings[0].mend.as_deref(),
            Some("ALTER TABLE job MODIFY flag ENUM('controller','shim') NULL DEFAULT 'shim'")
        );
    }

    #[test]
    fn a_flag_enum_missing_a_value_keeps_its_other_values() {
        let mut t = ours();
        let flag = column_mut(&mut t, "flag");
        flag.column_type = "enum('shim','legacy')".into();
        let findings = compare(Some(&t));
        assert_eq!(
            mends(&findings),
            vec!["ALTER TABLE job MODIFY flag ENUM('controller','shim','legacy') NULL DEFAULT 'shim'"]
        );
        assert!(findings[0].message.contains("lacks 'controller'"));
        assert!(notes(&findings)[0].contains("'legacy'"));
    }

    #[test]
    fn missing_columns_and_indexes_are_added_never_dropped() {
        let mut t = ours();
        t.columns
            .retain(|c| c.name != "coalesce" && c.name != "failcount");
        t.columns.push(col("note", "varchar(20)", true, None));
        t.indexes.retain(|i| i.name != "priority_run_after");
        t.indexes.push(index("by_note", false, &["note"]));
        let findings = compare(Some(&t));
        assert_eq!(
            mends(&findings),
            vec![
                "ALTER TABLE job ADD COLUMN `coalesce` VARCHAR(255) NULL",
                "ALTER TABLE job ADD COLUMN failcount TINYINT UNSIGNED NOT NULL DEFAULT 0",
                ADD_PRIORITY_INDEX,
            ]
        );
        assert_eq!(notes(&findings).len(), 2, "{findings:?}");
        assert!(!mends(&findings).iter().any(|m| m.contains("DROP")));
    }

    #[test]
    fn a_missing_table_is_created_as_schema_sql_does() {
        let findings = compare(None);
        assert_eq!(findings.len(), 1);
        let mend = findings[0].mend.as_deref().unwrap();
        assert!(mend.starts_with("CREATE TABLE"), "{mend}");
        assert!(mend.ends_with("COLLATE=utf8mb4_bin"), "{mend}");
    }

    #[test]
    fn readable_differences_are_notes() {
        let mut t = ours();
        column_mut(&mut t, "run_after").column_type = "int(11)".into();
        let f = column_mut(&mut t, "funcname");
        f.data_type = "varbinary".into();
        f.column_type = "varbinary(200)".into();
        f.charset = None;
        f.collation = None;
        let u = column_mut(&mut t, "uniqkey");
        u.column_type = "varchar(500)".into();
        u.max_length = Some(500);
        let findings = compare(Some(&t));
        assert_eq!(needs(&findings), Vec::<&Finding>::new());
        let notes = notes(&findings);
        assert_eq!(notes.len(), 3, "{notes:?}");
        assert!(notes
            .iter()
            .any(|n| n.starts_with("run_after is int(11) (signed")));
        assert!(notes
            .iter()
            .any(|n| n.starts_with("funcname is varbinary(200)")));
        assert!(notes
            .iter()
            .any(|n| n.starts_with("uniqkey is varchar(500)")));
    }

    #[test]
    fn narrow_or_strict_columns_are_loosened_keeping_their_charset() {
        let mut t = with_priority(original("utf8mb4_bin"));
        let u = column_mut(&mut t, "uniqkey");
        u.column_type = "varchar(64)".into();
        u.max_length = Some(64);
        u.nullable = false;
        u.charset = Some("latin1".into());
        u.collation = Some("latin1_bin".into());
        t.indexes.push(index(
            "funcname_run_after",
            false,
            &["funcname", "run_after", "failcount"],
        ));
        let findings = compare(Some(&t));
        assert_eq!(
            mends(&findings),
            vec![
                "ALTER TABLE job MODIFY uniqkey VARCHAR(255) CHARACTER SET latin1 COLLATE \
                 latin1_bin NULL"
            ]
        );
        assert!(findings[0].message.contains("values of up to 255 bytes"));
        assert!(findings[0].message.contains("one keyless job per function"));
    }

    #[test]
    fn indexes_are_compared_by_columns_not_names() {
        let mut t = ours();
        t.indexes = vec![
            index("PRIMARY", true, &["jobid"]),
            // Taken names: what is added gets another.
            index("run_after", false, &["failcount"]),
            index("due", false, &["run_after", "funcname"]),
            index("k", true, &["uniqkey", "funcname"]),
            index("funcname_run_after", false, &["funcname"]),
            index("priority_run_after", false, &["priority", "run_after"]),
        ];
        let findings = compare(Some(&t));
        assert_eq!(
            mends(&findings),
            vec!["ALTER TABLE job ADD INDEX funcname_run_after_2 (funcname, run_after, failcount)"]
        );
        assert_eq!(notes(&findings).len(), 3, "{findings:?}");
    }

    #[test]
    fn missing_defaults_and_keys_are_needs() {
        let mut t = ours();
        column_mut(&mut t, "failcount").default = None;
        column_mut(&mut t, "jobid").extra = String::new();
        t.indexes.retain(|i| i.name != "PRIMARY");
        t.engine = Some("MyISAM".into());
        let findings = compare(Some(&t));
        assert_eq!(
            mends(&findings),
            vec![
                "ALTER TABLE job ENGINE=InnoDB",
                "ALTER TABLE job ADD PRIMARY KEY (jobid)",
                "ALTER TABLE job MODIFY jobid bigint(20) unsigned NOT NULL AUTO_INCREMENT",
                "ALTER TABLE job MODIFY failcount tinyint(3) unsigned NOT NULL DEFAULT '0'",
            ]
        );
    }

    #[test]
    fn what_no_statement_mends_is_a_need_without_one() {
        let mut t = ours();
        let r = column_mut(&mut t, "run_after");
        r.data_type = "datetime".into();
        r.column_type = "datetime".into();
        t.columns.push(col("owner", "int(11)", false, None));
        let findings = compare(Some(&t));
        let needs = needs(&findings);
        assert_eq!(needs.len(), 2, "{findings:?}");
        assert!(needs.iter().all(|f| f.mend.is_none()));
    }

    /// `t` converted to the cluster variant as the conversion does it:
    /// keyed_funcname with funcname's type and collation, UNIQUE
    /// dedup_key instead of the plain index.
    fn converted(mut t: Table, generation: &str) -> Table {
        let funcname = column(&t, "funcname").unwrap().clone();
        t.columns.push(Column {
            name: KEYED_FUNCNAME.into(),
            nullable: true,
            extra: "STORED GENERATED".into(),
            generation: Some(generation.into()),
            ..funcname
        });
        t.indexes.retain(|i| !is_plain_dedup(i));
        t.indexes
            .push(index(DEDUP_KEY, true, &[KEYED_FUNCNAME, "uniqkey"]));
        t
    }

    const MARIADB_EXPR: &str = "if(`uniqkey` is null,NULL,`funcname`)";
    const MYSQL_EXPR: &str = "if((`uniqkey` is null),NULL,`funcname`)";

    fn galera() -> Expect {
        Expect {
            galera: true,
            cluster: false,
        }
    }

    fn cluster() -> Expect {
        Expect {
            galera: false,
            cluster: true,
        }
    }

    #[test]
    fn wsrep_on_is_read_from_the_variable() {
        assert!(wsrep_enabled(Some("ON")));
        assert!(wsrep_enabled(Some("on")));
        assert!(wsrep_enabled(Some("1")));
        assert!(!wsrep_enabled(Some("OFF")));
        assert!(!wsrep_enabled(Some("0")));
        assert!(!wsrep_enabled(Some("")));
        // MySQL without Galera has no such variable.
        assert!(!wsrep_enabled(None));
    }

    #[test]
    fn the_cluster_variant_is_healthy_on_any_server_and_never_converted_back() {
        for expr in [MARIADB_EXPR, MYSQL_EXPR] {
            let t = converted(ours(), expr);
            for expect in [Expect::default(), galera(), cluster()] {
                assert_eq!(compare_with(Some(&t), expect), vec![], "{expr} {expect:?}");
            }
        }
    }

    #[test]
    fn schema_cluster_sql_is_schema_sql_with_the_dedup_key_on_keyed_funcname() {
        let cluster =
            SCHEMA_CLUSTER_SQL[SCHEMA_CLUSTER_SQL.find("\nCREATE TABLE").unwrap()..].to_string();
        let back = cluster
            .replace(
                "    keyed_funcname VARCHAR(200) AS (IF(uniqkey IS NULL, NULL, funcname)) STORED,\n",
                "",
            )
            .replace(
                "UNIQUE dedup_key (keyed_funcname, uniqkey)",
                "UNIQUE funcname_uniqkey (funcname, uniqkey)",
            );
        assert_ne!(back, cluster);
        let plain = &SCHEMA_SQL[SCHEMA_SQL.find("\nCREATE TABLE").unwrap()..];
        assert_eq!(back, plain, "the two files differ elsewhere");
        assert!(create_cluster_table_sql().contains(KEYED_FUNCNAME_EXPR));
    }

    #[test]
    fn on_galera_the_plain_unique_key_gets_the_conversion_in_the_columns_collation() {
        let t = with_priority(original("latin1_swedish_ci"));
        let findings = compare_with(Some(&t), galera());
        let conversion = "ALTER TABLE job ADD COLUMN keyed_funcname varchar(200) CHARACTER SET \
                          latin1 COLLATE latin1_swedish_ci AS (IF(uniqkey IS NULL, NULL, \
                          funcname)) STORED, ADD UNIQUE dedup_key (keyed_funcname, uniqkey), \
                          DROP INDEX funcname";
        assert_eq!(
            mends(&findings),
            vec![
                "ALTER TABLE job ADD INDEX funcname_run_after (funcname, run_after, failcount)",
                conversion,
            ]
        );
        let f = findings.iter().find(|f| f.cluster_only).unwrap();
        assert!(f.message.starts_with(
            "UNIQUE funcname (funcname, uniqkey) on a Galera cluster (wsrep_on=ON): "
        ));
        assert!(f.message.contains("(funcname, NULL)"), "{}", f.message);
        assert!(f.message.contains("--apply --cluster"), "{}", f.message);
        assert_eq!(findings.iter().filter(|f| f.cluster_only).count(), 1);
        let report = SchemaReport {
            dbid: 1,
            dsn: String::new(),
            expect: galera(),
            findings,
        };
        // Plain --apply leaves it; --apply --cluster runs it, last.
        assert_eq!(report.mends_for(false).count(), 1);
        assert_eq!(report.mends_for(true).last(), Some(conversion));
        assert!(report.has_cluster_only());
        // On a server that is no Galera node, without --cluster: as before.
        assert_eq!(compare(Some(&t)), compare_with(Some(&t), Expect::default()));
        assert!(!compare(Some(&t)).iter().any(|f| f.cluster_only));
    }

    #[test]
    fn cluster_asked_for_on_a_single_server_offers_the_same_conversion() {
        let t = ours();
        let findings = compare_with(Some(&t), cluster());
        assert_eq!(findings.len(), 1, "{findings:?}");
        assert!(findings[0].cluster_only);
        assert!(findings[0]
            .message
            .starts_with("UNIQUE funcname_uniqkey (funcname, uniqkey) and --cluster asks"));
        assert_eq!(
            findings[0].mend.as_deref(),
            Some(
                "ALTER TABLE job ADD COLUMN keyed_funcname varchar(200) CHARACTER SET utf8mb4 \
                 COLLATE utf8mb4_bin AS (IF(uniqkey IS NULL, NULL, funcname)) STORED, ADD UNIQUE \
                 dedup_key (keyed_funcname, uniqkey), DROP INDEX funcname_uniqkey"
            )
        );
        // A funcname still to be widened: keyed_funcname gets the new width.
        let mut narrow = ours();
        let f = column_mut(&mut narrow, "funcname");
        f.column_type = "varchar(64)".into();
        f.max_length = Some(64);
        let findings = compare_with(Some(&narrow), cluster());
        let mends = mends(&findings);
        assert!(mends[0].starts_with("ALTER TABLE job MODIFY funcname VARCHAR(200)"));
        assert!(mends[1].contains("keyed_funcname VARCHAR(200) CHARACTER SET utf8mb4"));
    }

    #[test]
    fn a_missing_dedup_key_on_galera_is_added_as_the_cluster_variant() {
        let mut t = ours();
        t.indexes.retain(|i| !is_plain_dedup(i));
        t.indexes.push(index("dedup_key", false, &["run_after"]));
        let findings = compare_with(Some(&t), galera());
        let conversion: Vec<&Finding> = findings.iter().filter(|f| f.cluster_only).collect();
        assert_eq!(conversion.len(), 1, "{findings:?}");
        assert_eq!(
            conversion[0].mend.as_deref(),
            Some(
                "ALTER TABLE job ADD COLUMN keyed_funcname varchar(200) CHARACTER SET utf8mb4 \
                 COLLATE utf8mb4_bin AS (IF(uniqkey IS NULL, NULL, funcname)) STORED, ADD UNIQUE \
                 dedup_key_2 (keyed_funcname, uniqkey)"
            )
        );
        // Without Galera: schema.sql's index, as before.
        assert_eq!(
            mends(&compare(Some(&t))),
            vec!["ALTER TABLE job ADD UNIQUE funcname_uniqkey (funcname, uniqkey)"]
        );
        // A missing table on Galera is made as schema-cluster.sql does.
        let missing = compare_with(None, galera());
        assert_eq!(missing[0].mend.as_deref(), Some(create_cluster_table_sql()));
        assert!(!missing[0].cluster_only);
    }

    #[test]
    fn the_plain_key_beside_the_variant_is_dropped_only_for_a_cluster() {
        let mut t = converted(ours(), MARIADB_EXPR);
        t.indexes
            .push(index("funcname_uniqkey", true, &["funcname", "uniqkey"]));
        let findings = compare(Some(&t));
        assert_eq!(needs(&findings), Vec::<&Finding>::new());
        assert_eq!(notes(&findings).len(), 1, "{findings:?}");
        let findings = compare_with(Some(&t), galera());
        assert_eq!(
            mends(&findings),
            vec!["ALTER TABLE job DROP INDEX funcname_uniqkey"]
        );
        assert!(findings[0].cluster_only);
        // Half converted: the column without its index.
        let mut half = converted(ours(), MARIADB_EXPR);
        half.indexes.retain(|i| i.name != DEDUP_KEY);
        half.indexes
            .push(index("funcname_uniqkey", true, &["funcname", "uniqkey"]));
        assert_eq!(compare(Some(&half)), vec![]);
        assert_eq!(
            mends(&compare_with(Some(&half), galera())),
            vec![
                "ALTER TABLE job ADD UNIQUE dedup_key (keyed_funcname, uniqkey), DROP INDEX \
                 funcname_uniqkey"
            ]
        );
    }

    #[test]
    fn a_keyed_funcname_of_another_collation_is_a_need_by_hand() {
        let mut t = with_priority(converted(original("utf8mb4_bin"), MARIADB_EXPR));
        t.indexes.push(index(
            "funcname_run_after",
            false,
            &["funcname", "run_after", "failcount"],
        ));
        column_mut(&mut t, KEYED_FUNCNAME).collation = Some("utf8mb4_general_ci".into());
        let findings = compare(Some(&t));
        let needs = needs(&findings);
        assert_eq!(needs.len(), 1, "{findings:?}");
        assert!(needs[0].mend.is_none());
        assert!(needs[0]
            .message
            .starts_with("keyed_funcname is varchar(200) utf8mb4_general_ci and funcname varchar(200) utf8mb4_bin"));
    }

    #[test]
    fn another_generated_dedup_key_is_a_note_not_a_missing_index() {
        let mut t = ours();
        t.indexes.retain(|i| !is_plain_dedup(i));
        t.columns.push(Column {
            name: "dedup".into(),
            data_type: "varchar".into(),
            column_type: "varchar(456)".into(),
            nullable: true,
            extra: "STORED GENERATED".into(),
            generation: Some("concat(`funcname`,char(0 using utf8mb4),`uniqkey`)".into()),
            ..Column::default()
        });
        t.indexes.push(index("dedup_key", true, &["dedup"]));
        for expect in [Expect::default(), galera()] {
            let findings = compare_with(Some(&t), expect);
            assert_eq!(needs(&findings), Vec::<&Finding>::new(), "{findings:?}");
            let notes = notes(&findings);
            assert!(
                notes
                    .iter()
                    .any(|n| n.starts_with("UNIQUE dedup_key (dedup) on a generated column")),
                "{notes:?}"
            );
        }
    }

    #[test]
    fn defaults_and_enum_values_are_read_from_either_server() {
        assert_eq!(unquote_default("'shim'").as_deref(), Some("shim"));
        assert_eq!(unquote_default("shim").as_deref(), Some("shim"));
        assert_eq!(unquote_default("'it''s'").as_deref(), Some("it's"));
        assert_eq!(unquote_default("NULL"), None);
        assert_eq!(unquote_default("0").as_deref(), Some("0"));
        assert_eq!(
            enum_values("enum('controller','shim','it''s')"),
            vec!["controller", "shim", "it's"]
        );
    }
}
