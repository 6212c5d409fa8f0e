#!/usr/bin/perl
# Throughput mode, client: stores one job with one INSERT; the QueueRunner
# sends it to a worker of FUNCNAME.
#
#   apt-get install libdbd-mysql-perl
#   export GARIVINI_DSN=...   # mysql://user[:pass]@host:port/db
#     (in this repository: eval "$(scripts/services up)")
#   perl throughput_client.pl [FUNCNAME [ARG]]      # default: resize img-1.png
use strict;
use warnings;
use DBI;

# A handle on one entry of GARIVINI_DSN (mysql://user[:pass]@host:port/db).
sub db_connect {
    my ($url) = split /\|/, shift;    # first node of a replicated shard
    my ($user, $pass, $host, $port, $db) =
        $url =~ m{^mysql://([^:@/]+)(?::([^@]*))?@([^:/]+)(?::(\d+))?/([^?]+)}
        or die "not a mysql:// URL: $url\n";
    return DBI->connect("DBI:mysql:database=$db;host=$host;port=" . ($port // 3306),
        $user, $pass, { RaiseError => 1, AutoCommit => 1 });
}

my ($funcname, $arg) = (shift // 'resize', shift // 'img-1.png');
my $dbh = db_connect((split /,/, $ENV{GARIVINI_DSN})[0]);    # database id 1
$dbh->do("INSERT INTO job (funcname, arg, uniqkey, run_after, flag)"
        . " VALUES (?, ?, NULL, UNIX_TIMESTAMP(), 'shim')", undef, $funcname, $arg);
printf qq({"jobid":%d,"dbid":1}\n), $dbh->{mysql_insertid};
