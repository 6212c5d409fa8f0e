#!/usr/bin/env python3
"""Throughput mode, worker: runs FUNCNAME's jobs and completes each with the
DELETE of its row (the QueueRunner dispatched it; nobody else deletes it).

    pip install python3-gearman pymysql
    export GARIVINI_DSN=... GARIVINI_GEARMAND=...   # mysql://user[:pass]@host:port/db; host:port
      (in this repository: eval "$(scripts/services up)")
    python3 throughput_worker.py [FUNCNAME]            # default: resize
"""
import json
import os
import sys
from urllib.parse import unquote, urlsplit

import pymysql
import python3_gearman


def connect(url):
    """A connection to one entry of GARIVINI_DSN (mysql://user[:pass]@host:port/db)."""
    u = urlsplit(url.split("|")[0])  # first node of a replicated shard
    return pymysql.connect(host=u.hostname, port=u.port or 3306,
                           user=unquote(u.username or "root"), password=unquote(u.password or ""),
                           database=u.path.lstrip("/"), autocommit=True)


dsns = os.environ["GARIVINI_DSN"].split(",")  # database ids 1..n in this order
dbs = {}


def run(worker, job):
    j = json.loads(job.data)  # the job JSON; numbers may come as strings
    jobid, dbid = int(j["jobid"]), int(j["dbid"])
    print(f"{j['funcname']} {j['arg']} (job {dbid}/{jobid})", flush=True)  # the work
    if dbid not in dbs:
        dbs[dbid] = connect(dsns[dbid - 1])
    with dbs[dbid].cursor() as cur:
        cur.execute("DELETE FROM job WHERE jobid = %s", (jobid,))  # done
    return "done"


funcname = sys.argv[1] if len(sys.argv) > 1 else "resize"
worker = python3_gearman.GearmanWorker([os.environ["GARIVINI_GEARMAND"].split(",")[0]])
worker.register_task(funcname, run)
worker.work()
