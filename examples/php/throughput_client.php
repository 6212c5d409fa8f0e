<?php
// Throughput mode, client: stores one job with one INSERT; the QueueRunner
// sends it to a worker of FUNCNAME.
//
//   apt-get install php-cli php-mysql
//   export GARIVINI_DSN=...   # mysql://user[:pass]@host:port/db
//     (in this repository: eval "$(scripts/services up)")
//   php throughput_client.php [FUNCNAME [ARG]]      # default: resize img-1.png

// A connection to one entry of GARIVINI_DSN (mysql://user[:pass]@host:port/db).
function db_connect(string $url): PDO
{
    $u = parse_url(explode('|', $url)[0]); // first node of a replicated shard
    return new PDO(sprintf('mysql:host=%s;port=%d;dbname=%s', $u['host'], $u['port'] ?? 3306, ltrim($u['path'], '/')),
        urldecode($u['user'] ?? 'root'), urldecode($u['pass'] ?? ''), [PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION]);
}

[$funcname, $arg] = [$argv[1] ?? 'resize', $argv[2] ?? 'img-1.png'];
$db = db_connect(explode(',', getenv('GARIVINI_DSN'))[0]); // database id 1
$db->prepare("INSERT INTO job (funcname, arg, uniqkey, run_after, flag) VALUES (?, ?, NULL, UNIX_TIMESTAMP(), 'shim')")
    ->execute([$funcname, $arg]);
printf("{\"jobid\":%d,\"dbid\":1}\n", $db->lastInsertId());
