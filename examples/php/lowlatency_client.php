<?php
// Low-latency mode, client: submits a job to `inject_jobs` in the foreground
// and prints the answer, sent once the row is committed: {"jobid":..,"dbid":..}.
//
//   apt-get install php-cli php-gearman
//   export GARIVINI_GEARMAND=...   # host:port
//     (in this repository: eval "$(scripts/services up)")
//   php lowlatency_client.php [FUNCNAME [ARG]]   # default: resize img-1.png

[$funcname, $arg] = [$argv[1] ?? 'resize', $argv[2] ?? 'img-1.png'];
[$host, $port] = explode(':', explode(',', getenv('GARIVINI_GEARMAND'))[0]);
$client = new GearmanClient();
$client->addServer($host, (int) $port);
$client->setTimeout(30000); // ms
$answer = $client->doNormal('inject_jobs', json_encode(['funcname' => $funcname, 'arg' => $arg]));
if ($client->returnCode() != GEARMAN_SUCCESS) {
    fwrite(STDERR, "inject_jobs failed: {$client->error()}\n");
    exit(1);
}
echo "$answer\n"; // {"jobid":42,"dbid":1}
