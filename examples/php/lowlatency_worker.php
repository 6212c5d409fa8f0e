<?php
// Low-latency mode, worker: runs FUNCNAME's jobs; returning completes the job
// (the Controller then deletes its row), GEARMAN_WORK_FAIL fails it (retried with backoff).
//
//   apt-get install php-cli php-gearman
//   export GARIVINI_GEARMAND=...   # host:port
//     (in this repository: eval "$(scripts/services up)")
//   php lowlatency_worker.php [FUNCNAME]   # default: resize

$funcname = $argv[1] ?? 'resize';
[$host, $port] = explode(':', explode(',', getenv('GARIVINI_GEARMAND'))[0]);
$worker = new GearmanWorker();
$worker->addServer($host, (int) $port);
$worker->addFunction($funcname, function (GearmanJob $job) {
    $j = json_decode($job->workload(), true); // the same job JSON as in throughput mode
    echo "{$j['funcname']} {$j['arg']} (job {$j['dbid']}/{$j['jobid']})\n"; // the work
    return 'done';
});
while ($worker->work());
