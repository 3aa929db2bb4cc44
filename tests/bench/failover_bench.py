#!/usr/bin/python3
"""Failover figure: from `kill -9` of a session's owner to the first token of
the retried turn on another replica, through nginx, over N trials.

Starts a throwaway Ceph cluster (scripts/cluster), R replicas sharing its
pool (`serve --store rados://... --lease-seconds L`) and nginx running the
shipped deploy/nginx/sinkserve.conf, all as processes of this script. Each
trial: a fresh session chats one turn through nginx; its owner (the replica
whose log says it took the session) is killed with SIGKILL; the client
retries the next turn at once (same turn_id rules as any client: retry on
UNAVAILABLE) and the clock stops at its first token. The killed replica is
replaced by a new one on a new port (nginx reloads its list) before the
next trial.

    SINKSERVE_BIN=build SINKSERVE_SHARED=../shared \\
        python3 tests/bench/failover_bench.py --trials 30 --lease-seconds 2
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import grpc  # noqa: E402

from replicas_test import Nginx  # noqa: E402
from server_testlib import CephCluster, Server, Stream, pb, routed  # noqa: E402

CONFIG = pb.SessionConfig(chat_template="raw")


def percentile(values, q):
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1)))))
    return ordered[rank]


def first_token_after(stub, session, text, turn_id):
    """Retries one turn until it streams; returns the time of its first token."""
    while True:
        try:
            stream = Stream(stub, timeout=30, metadata=routed(session))
            stream.open(session, create=False)
            stream.send(turn=pb.UserTurn(text=text, max_tokens=8, turn_id=turn_id))
            while True:
                response = stream.recv()
                if response.HasField("delta") and response.delta.token_ids:
                    at = time.monotonic()
                    stream.read_turn()
                    stream.finish()
                    return at
                if response.HasField("turn_end"):
                    raise RuntimeError("turn ended without a token")
        except grpc.RpcError as e:
            if e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL,
                                grpc.StatusCode.UNKNOWN, grpc.StatusCode.FAILED_PRECONDITION):
                raise
            time.sleep(0.005)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--lease-seconds", default="2")
    args = parser.parse_args()

    tmp = tempfile.mkdtemp(prefix="failover-bench-")
    cluster = CephCluster()
    replicas, nginx = [], None
    extra = ("--lease-seconds", args.lease_seconds, "--default-policy", "streaming(4,60)")
    try:
        url = cluster.url("bench")
        replicas = [Server(os.path.join(tmp, f"r{i}"), *extra, store=url)
                    for i in range(args.replicas)]
        nginx = Nginx(os.path.join(tmp, "nginx"), [r.address for r in replicas])
        times = []
        for trial in range(args.trials):
            session = f"trial-{trial}"
            stream = Stream(nginx.stub, timeout=30, metadata=routed(session))
            stream.open(session, create=True, config=CONFIG)
            stream.turn("Once upon a time", max_tokens=8, turn_id=f"{session}/0")
            stream.finish()
            owner = next(i for i, r in enumerate(replicas)
                         if f"took over session {session} " in r.log())
            victim = replicas[owner]
            start = time.monotonic()
            victim.kill()
            first = first_token_after(nginx.stub, session, " The dog barked.", f"{session}/1")
            times.append(first - start)
            victim.close()
            # A replacement on a new port, as a new pod gets a new IP;
            # nginx reloads its upstream list (what the Kubernetes
            # manifest's reloader does), which also clears its failure marks.
            replicas[owner] = Server(os.path.join(tmp, f"r{owner}-{trial}"), *extra,
                                     store=url)
            nginx.set_upstreams([r.address for r in replicas])
            print(f"trial {trial + 1}/{args.trials}: owner r{owner}, "
                  f"{1e3 * times[-1]:.0f} ms to the first token", flush=True)
        ms = [1e3 * t for t in times]
        print(f"\nkill -9 of the owner -> first token of the retried turn, "
              f"{args.replicas} replicas, lease {args.lease_seconds} s, {len(ms)} trials: "
              f"median {statistics.median(ms):.0f} ms, p99 {percentile(ms, 99):.0f} ms, "
              f"max {max(ms):.0f} ms")
    finally:
        if nginx is not None:
            nginx.stop()
        for r in replicas:
            r.close()
        cluster.stop()


if __name__ == "__main__":
    main()
