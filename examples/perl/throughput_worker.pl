#!/usr/bin/perl
# Throughput mode, worker: runs FUNCNAME's jobs and completes each with the
# DELETE of its row (the QueueRunner dispatched it; nobody else deletes it).
#
#   apt-get install libgearman-client-perl libdbd-mysql-perl
#   export GARIVINI_DSN=... GARIVINI_GEARMAND=...   # mysql://user[:pass]@host:port/db; host:port
#     (in this repository: eval "$(scripts/services up)")
#   perl throughput_worker.pl [FUNCNAME]            # default: resize
use strict;
use warnings;
use DBI;
use Gearman::Worker;
use JSON::PP qw(decode_json);

$| = 1;

# A handle on one entry of GARIVINI_DSN (mysql://user[:pass]@host:port/db).
sub db_connect {
    my ($url) = split /\|/, shift;    # first node of a replicated shard
    my ($user, $pass, $host, $port, $db) =
        $url =~ m{^mysql://([^:@/]+)(?::([^@]*))?@([^:/]+)(?::(\d+))?/([^?]+)}
        or die "not a mysql:// URL: $url\n";
    return DBI->connect("DBI:mysql:database=$db;host=$host;port=" . ($port // 3306),
        $user, $pass, { RaiseError => 1, AutoCommit => 1 });
}

my $funcname = shift // 'resize';
my @dsns     = split /,/, $ENV{GARIVINI_DSN};    # database ids 1..n in this order
my %dbs;
my $worker = Gearman::Worker->new(job_servers => [ (split /,/, $ENV{GARIVINI_GEARMAND})[0] ]);
$worker->register_function($funcname => sub {
    my $j = decode_json(${ $_[0]->argref });    # the job JSON; numbers may come as strings
    my ($jobid, $dbid) = ($j->{jobid} + 0, $j->{dbid} + 0);
    print "$j->{funcname} $j->{arg} (job $dbid/$jobid)\n";    # the work
    my $dbh = $dbs{$dbid} //= db_connect($dsns[ $dbid - 1 ]);
    $dbh->do("DELETE FROM job WHERE jobid = ?", undef, $jobid);    # done
    # Return a true, non-empty value: Gearman::Worker sends "" or "0" as a
    # malformed WORK_COMPLETE, gearmand drops the connection and requeues
    # the job, and it runs again, thousands of times a second.
    return "done";
});
$worker->work while 1;
