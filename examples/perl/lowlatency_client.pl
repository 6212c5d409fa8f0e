#!/usr/bin/perl
# Low-latency mode, client: submits a job to `inject_jobs` in the foreground
# and prints the answer, sent once the row is committed: {"jobid":..,"dbid":..}.
#
#   apt-get install libgearman-client-perl
#   export GARIVINI_GEARMAND=...   # host:port
#     (in this repository: eval "$(scripts/services up)")
#   perl lowlatency_client.pl [FUNCNAME [ARG]]   # default: resize img-1.png
use strict;
use warnings;
use Gearman::Client;
use JSON::PP qw(encode_json);

my ($funcname, $arg) = (shift // 'resize', shift // 'img-1.png');
my $client = Gearman::Client->new(job_servers => [ (split /,/, $ENV{GARIVINI_GEARMAND})[0] ]);
my $answer = $client->do_task(inject_jobs => encode_json({ funcname => $funcname, arg => $arg }),
    { timeout => 30 })
    or die "inject_jobs failed\n";
print "$$answer\n";    # {"jobid":42,"dbid":1}
