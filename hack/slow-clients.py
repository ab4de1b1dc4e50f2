#!/usr/bin/env python3
"""Slow clients and a burst against a running runtime (docs/runtime.md, "Load and slow clients").

Usage: hack/slow-clients.py HOST PORT PID  (PID: the runtime process, for its thread count)

300 connections send a partial request head and go silent (how many are still open after
5, 12 and 36 s), then 1,000 searches at 500 concurrency (answered, shed, threads).
"""
import socket, time, threading, sys, json, os, http.client, concurrent.futures
host, port, pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def threads():
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("Threads:"): return int(l.split()[1])
# 1. 300 half-open connections: partial headers, then silence
socks=[]
for i in range(300):
    s=socket.create_connection((host,port)); s.sendall(b"GET /healthz HTTP/1.1\r\nX-A: "); s.setblocking(False); socks.append(s)
t0=time.time()
def open_count():
    n=0
    for s in socks:
        try:
            d=s.recv(1)
            if d==b"": continue
            n+=1
        except BlockingIOError: n+=1
        except OSError: pass
    return n
for wait in (5, 12, 36):
    time.sleep(max(0, wait-(time.time()-t0)))
    print(f"half-open after {wait}s: {open_count()} of 300 still open")
# healthz
t=time.time(); c=http.client.HTTPConnection(host,port,timeout=10); c.request("GET","/healthz"); r=c.getresponse(); print("healthz", r.status, f"{(time.time()-t)*1000:.0f} ms")
# 2. burst
before=threads(); most=[before]; stop=[False]
def sample():
    while not stop[0]:
        most[0]=max(most[0],threads()); time.sleep(0.02)
th=threading.Thread(target=sample); th.start()
def one(i):
    try:
        c=http.client.HTTPConnection(host,port,timeout=60)
        c.request("POST","/v1/retrieve",body=json.dumps({"query":f"refund after {i} days"}),headers={"content-type":"application/json"})
        r=c.getresponse(); r.read(); return r.status
    except Exception as e: return str(type(e).__name__)
t=time.time()
with concurrent.futures.ThreadPoolExecutor(500) as ex:
    res=list(ex.map(one, range(1000)))
stop[0]=True; th.join()
from collections import Counter
print("burst 1000 @500:", dict(Counter(res)), f"{time.time()-t:.1f}s", f"threads {before} -> max {most[0]}")
t=time.time(); c=http.client.HTTPConnection(host,port,timeout=10); c.request("GET","/healthz"); r=c.getresponse(); print("healthz after", r.status, f"{(time.time()-t)*1000:.0f} ms")
