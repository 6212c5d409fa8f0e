-- The Garivini job table. Compatible with the original Perl Garivini's table:
-- an existing deployment and its clients keep working without a migration.
-- New columns may only be added with defaults, so old INSERTs still work.
--
-- utf8mb4_bin: unique keys and function names compare byte for byte, as
-- gearmand compares them; a case-insensitive collation would merge
-- "Key" and "key" into one job.
--
-- flag is nullable, as in the original: its client binds NULL unless told
-- otherwise, and NULL (or '') means shim. NOT NULL would make INSERT IGNORE
-- store that NULL as 'controller', the enum's first value, and send a
-- throughput job to run_queued_job. (`garivini schema check` finds and
-- mends a table made by an older schema.sql.)
--
-- funcname_run_after covers `garivini status` (counts per function and
-- state read index entries only: ~0.5 s per million rows instead of a
-- scan of the rows) and `garivini jobs list --funcname`. A table created
-- before it works without it, only slower; to add it:
--   ALTER TABLE job ADD INDEX funcname_run_after (funcname, run_after, failcount);
--
-- priority_run_after is the claim's index: one range per priority level,
-- high first. It takes the place of the original's INDEX (run_after),
-- which every lease would also rewrite (a claim cost ~40 % more with
-- both); a Perl Garivini QueueRunner, which claims by run_after alone,
-- would scan without it.
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
    PRIMARY KEY (jobid),
    UNIQUE funcname_uniqkey (funcname, uniqkey),
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
