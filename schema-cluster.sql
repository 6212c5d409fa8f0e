-- The Garivini job table for a replicated cluster (MariaDB Galera, Percona
-- XtraDB Cluster): schema.sql's table, the same columns and indexes, with
-- one difference in how unique keys are deduplicated.
--
-- Galera certifies a write by the values of every unique index of the row,
-- and leaves out an index only when all of its columns are NULL. schema.sql's
-- UNIQUE funcname_uniqkey (funcname, uniqkey) therefore gives every keyless
-- row of a function (uniqkey NULL) the one key (funcname, NULL): each keyless
-- insert and each completion of that function conflicts with every other
-- one committed meanwhile on another node, and one of them fails.
--
-- Here the unique index is on (keyed_funcname, uniqkey), where
-- keyed_funcname is funcname for a row with a uniqkey and NULL for a keyless
-- row: a keyless row has no unique key for Galera to certify, and a keyed row
-- has the same values, in the same collations, as in (funcname, uniqkey), so
-- the index refuses exactly what schema.sql's refuses (case, trailing spaces,
-- '' and NULL alike). keyed_funcname must have funcname's type, charset and
-- collation (here the table's, utf8mb4_bin).
--
-- Every client statement works unchanged on it (a generated column is never
-- named by an INSERT). `garivini schema check --apply --cluster` converts an
-- existing table to it (one ALTER; it copies the table, and writes to it wait
-- meanwhile). It is a plain InnoDB table: a single server runs it as well.
-- Its other indexes are schema.sql's (see there for priority_run_after).
-- created_at, attempted_at, failed_at and last_error say what happened to
-- a job (garivini jobs show) and make in flight and retrying exact
-- (garivini status); each has a default, so the original's statements and
-- foreign workers work unchanged, and a table without them works as before.
CREATE TABLE IF NOT EXISTS job (
    jobid      BIGINT UNSIGNED  NOT NULL AUTO_INCREMENT,
    funcname   VARCHAR(200)     NOT NULL,
    arg        MEDIUMBLOB,
    uniqkey    VARCHAR(255)     NULL,
    run_after  INT UNSIGNED     NOT NULL,
    `coalesce` VARCHAR(255)     NULL,
    flag       ENUM('controller','shim') NULL DEFAULT 'shim',
    failcount  TINYINT UNSIGNED NOT NULL DEFAULT 0,
    priority   TINYINT UNSIGNED NOT NULL DEFAULT 1,
    created_at   TIMESTAMP      NOT NULL DEFAULT CURRENT_TIMESTAMP,
    attempted_at INT UNSIGNED   NOT NULL DEFAULT 0,
    failed_at    INT UNSIGNED   NOT NULL DEFAULT 0,
    last_error   VARCHAR(1000)  NULL DEFAULT NULL,
    keyed_funcname VARCHAR(200) AS (IF(uniqkey IS NULL, NULL, funcname)) STORED,
    PRIMARY KEY (jobid),
    UNIQUE dedup_key (keyed_funcname, uniqkey),
    INDEX funcname_run_after (funcname, run_after, failcount),
    INDEX priority_run_after (priority, run_after)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Which QueueRunner claims, where QueueRunners elect one claimer per
-- database: on a Galera cluster (whose SKIP LOCKED skips only the rows
-- locked on the same node, and which refuses GET_LOCK), or where the DSN
-- says `single_claimer=true`. One row; without the table every
-- QueueRunner claims, as before.
CREATE TABLE IF NOT EXISTS garivini_claimer (
    name       VARCHAR(64)      NOT NULL,
    owner      VARCHAR(128)     NOT NULL,
    expires    INT UNSIGNED     NOT NULL,
    PRIMARY KEY (name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Periodic jobs ([[periodic]] in the config file): each entry's newest tick
-- that a QueueRunner inserted, per database. A QueueRunner inserts a tick's
-- job only in the transaction that moves last_tick forwards to it, so that
-- each tick is inserted once however many QueueRunners run. Without the
-- table, periodic entries are not run (one warning); nothing else changes.
CREATE TABLE IF NOT EXISTS garivini_periodic (
    name       VARCHAR(64)      NOT NULL,
    last_tick  INT UNSIGNED     NOT NULL,
    PRIMARY KEY (name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Paused functions (`garivini functions pause F`): their due jobs stay in
-- the table, not dispatched, until `garivini functions resume F`. Every
-- role reads it about once a second; `functions pause` writes the row to
-- every database, and a pause found on any database holds for all. Without
-- the table nothing is paused (one warning per role process and database).
CREATE TABLE IF NOT EXISTS garivini_paused (
    funcname   VARCHAR(200)     NOT NULL,
    since      INT UNSIGNED     NOT NULL,
    PRIMARY KEY (funcname)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Jobs dispatched per minute (minute = unix time DIV 60, the database's
-- clock), for the dashboard's chart: the job table keeps no record of a
-- dispatch, and the web role may run in another process than the roles
-- that dispatch. The QueueRunners and Injectors add their counts about
-- once a second (one upsert per minute), and rows older than a day are
-- deleted. Without the table everything works as before; the chart just
-- has no dispatched line (one log line per role process and database).
CREATE TABLE IF NOT EXISTS garivini_dispatches (
    minute     INT UNSIGNED     NOT NULL,
    dispatched BIGINT UNSIGNED  NOT NULL DEFAULT 0,
    PRIMARY KEY (minute)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
