#!/usr/bin/env python3
"""Low-latency mode, client: submits a job to `inject_jobs` in the foreground
and prints the answer, sent once the row is committed: {"jobid":..,"dbid":..}.

    pip install python3-gearman
    export GARIVINI_GEARMAND=...   # host:port
      (in this repository: eval "$(scripts/services up)")
    python3 lowlatency_client.py [FUNCNAME [ARG]]   # default: resize img-1.png
"""
import json
import os
import sys

import python3_gearman

funcname = sys.argv[1] if len(sys.argv) > 1 else "resize"
arg = sys.argv[2] if len(sys.argv) > 2 else "img-1.png"
client = python3_gearman.GearmanClient([os.environ["GARIVINI_GEARMAND"].split(",")[0]])
req = client.submit_job("inject_jobs", json.dumps({"funcname": funcname, "arg": arg}),
                        poll_timeout=30)
if req.state != python3_gearman.constants.JOB_COMPLETE:
    sys.exit(f"inject_jobs failed: {req.state}")
print(req.result)  # {"jobid":42,"dbid":1}
