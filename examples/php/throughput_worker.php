<?php
// Throughput mode, worker: runs FUNCNAME's jobs and completes each with the
// DELETE of its row (the QueueRunner dispatched it; nobody else deletes it).
//
//   apt-get install php-cli php-gearman php-mysql
//   export GARIVINI_DSN=... GARIVINI_GEARMAND=...   # mysql://user[:pass]@host:port/db; host:port
//     (in this repository: eval "$(scripts/services up)")
//   php throughput_worker.php [FUNCNAME]            # default: resize

// A connection to one entry of GARIVINI_DSN (mysql://user[:pass]@host:port/db).
function db_connect(string $url): PDO
{
    $u = parse_url(explode('|', $url)[0]); // first node of a replicated shard
    return new PDO(sprintf('mysql:host=%s;port=%d;dbname=%s', $u['host'], $u['port'] ?? 3306, ltrim($u['path'], '/')),
        urldecode($u['user'] ?? 'root'), urldecode($u['pass'] ?? ''), [PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION]);
}

$funcname = $argv[1] ?? 'resize';
$dsns = explode(',', getenv('GARIVINI_DSN')); // database ids 1..n in this order
$dbs = [];
[$host, $port] = explode(':', explode(',', getenv('GARIVINI_GEARMAND'))[0]);
$worker = new GearmanWorker();
$worker->addServer($host, (int) $port);
$worker->addFunction($funcname, function (GearmanJob $job) use ($dsns, &$dbs) {
    $j = json_decode($job->workload(), true); // the job JSON; numbers may come as strings
    [$jobid, $dbid] = [(int) $j['jobid'], (int) $j['dbid']];
    echo "{$j['funcname']} {$j['arg']} (job $dbid/$jobid)\n"; // the work
    $dbs[$dbid] ??= db_connect($dsns[$dbid - 1]);
    $dbs[$dbid]->prepare('DELETE FROM job WHERE jobid = ?')->execute([$jobid]); // done
    return 'done';
});
while ($worker->work());
