#!/usr/bin/env python3
"""Low-latency mode, worker: runs FUNCNAME's jobs; returning completes the job
(the Controller then deletes its row), raising fails it (retried with backoff).

    pip install python3-gearman
    export GARIVINI_GEARMAND=...   # host:port
      (in this repository: eval "$(scripts/services up)")
    python3 lowlatency_worker.py [FUNCNAME]   # default: resize
"""
import json
import os
import sys

import python3_gearman


def run(worker, job):
    j = json.loads(job.data)  # the same job JSON as in throughput mode
    print(f"{j['funcname']} {j['arg']} (job {j['dbid']}/{j['jobid']})", flush=True)  # the work
    return "done"


funcname = sys.argv[1] if len(sys.argv) > 1 else "resize"
worker = python3_gearman.GearmanWorker([os.environ["GARIVINI_GEARMAND"].split(",")[0]])
worker.register_task(funcname, run)
worker.work()
