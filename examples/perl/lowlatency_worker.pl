#!/usr/bin/perl
# Low-latency mode, worker: runs FUNCNAME's jobs; returning completes the job
# (the Controller then deletes its row); returning undef, or dying, fails it
# (retried with backoff).
#
#   apt-get install libgearman-client-perl
#   export GARIVINI_GEARMAND=...   # host:port
#     (in this repository: eval "$(scripts/services up)")
#   perl lowlatency_worker.pl [FUNCNAME]   # default: resize
use strict;
use warnings;
use Gearman::Worker;
use JSON::PP qw(decode_json);

$| = 1;
my $funcname = shift // 'resize';
my $worker = Gearman::Worker->new(job_servers => [ (split /,/, $ENV{GARIVINI_GEARMAND})[0] ]);
$worker->register_function($funcname => sub {
    my $j = decode_json(${ $_[0]->argref });    # the same job JSON as in throughput mode
    print "$j->{funcname} $j->{arg} (job $j->{dbid}/$j->{jobid})\n";    # the work
    # Return a true, non-empty value: Gearman::Worker sends "" or "0" as a
    # malformed WORK_COMPLETE, gearmand drops the connection and requeues
    # the job, and it runs again, thousands of times a second.
    return "done";
});
$worker->work while 1;
