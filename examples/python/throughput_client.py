#!/usr/bin/env python3
"""Throughput mode, client: stores one job with one INSERT; the QueueRunner
sends it to a worker of FUNCNAME.

    pip install pymysql
    export GARIVINI_DSN=...   # mysql://user[:pass]@host:port/db
      (in this repository: eval "$(scripts/services up)")
    python3 throughput_client.py [FUNCNAME [ARG]]      # default: resize img-1.png
"""
import os
import sys
from urllib.parse import unquote, urlsplit

import pymysql


def connect(url):
    """A connection to one entry of GARIVINI_DSN (mysql://user[:pass]@host:port/db)."""
    u = urlsplit(url.split("|")[0])  # first node of a replicated shard
    return pymysql.connect(host=u.hostname, port=u.port or 3306,
                           user=unquote(u.username or "root"), password=unquote(u.password or ""),
                           database=u.path.lstrip("/"), autocommit=True)


funcname = sys.argv[1] if len(sys.argv) > 1 else "resize"
arg = sys.argv[2] if len(sys.argv) > 2 else "img-1.png"
db = connect(os.environ["GARIVINI_DSN"].split(",")[0])  # database id 1
with db.cursor() as cur:
    cur.execute("INSERT INTO job (funcname, arg, uniqkey, run_after, flag)"
                " VALUES (%s, %s, NULL, UNIX_TIMESTAMP(), 'shim')", (funcname, arg))
    print(f'{{"jobid":{cur.lastrowid},"dbid":1}}')
