#!/usr/bin/python3
"""Scale-out end to end, nothing mocked: a real throwaway Ceph cluster
(scripts/cluster), real `sinkserve serve` replicas sharing its pool, a real
nginx running the shipped deploy/nginx/sinkserve.conf in front of them.
Every process is started here and stopped by its pid.

- kill -9 of a replica while 24 sessions chat greedily through nginx: every
  session finishes its 6 turns (clients retry with the same turn_id) and
  its text equals the same conversation on a single server: nothing lost,
  nothing run twice.
- Scale 3 -> 4 -> 2 replicas (nginx reloads its list; the two that leave
  are SIGTERMed and drain) while 16 sessions chat: sessions move to the
  newcomer by live handoffs and off the drained ones, nothing is lost.
- Store faults (pool size 2): one OSD killed, turns keep completing; every
  OSD stopped, a turn fails with UNAVAILABLE in the store's op timeout (no
  crash, no hang) and, retried with its turn_id once they are back,
  completes once.
- SIGSTOP of a session's owner: another replica waits its lease out, takes
  the session and runs a turn; the first one, resumed, tries to write the
  session and RADOS refuses it (the epoch moved): the metric counts it and
  the session is the new owner's.
"""

import os
import signal
import threading
import time
import unittest

import grpc

from replicas_test import NGINX, Nginx
from server_testlib import CephServerTest, Stream, have_ceph, metrics, pb, routed

POLICY = "streaming(4,60)"
LEASE_SECONDS = "1"
SESSIONS = 24
TURNS = 6
MAX_TOKENS = 8
# What a client retries: the replica went away (UNAVAILABLE, or nginx's
# answer for a stream its upstream dropped), or the turn outlived its deadline.
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN,
             grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED,
             grpc.StatusCode.FAILED_PRECONDITION}
CONFIG = pb.SessionConfig(chat_template="raw")


def text_of(session, turn):
    return f"Once upon a time {session} had {turn} cats."


def run_turn(stub, session, turn, metadata=None):
    """One turn on a stream of its own: (token ids, replayed)."""
    stream = Stream(stub, timeout=30, metadata=metadata)
    stream.open(session, create=True, config=CONFIG)
    ids, _, end = stream.turn(text_of(session, turn), max_tokens=MAX_TOKENS,
                              turn_id=f"{session}/{turn}")
    stream.finish()
    return ids, end.replayed


def metric(server, name, **labels):
    key = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
                  if labels else "")
    return metrics(server.metrics_port).get(key, 0.0)


@unittest.skipUnless(have_ceph(), "Ceph binaries missing: run scripts/setup")
@unittest.skipIf(NGINX is None, "nginx is not installed (scripts/setup)")
class FailoverTest(CephServerTest):
    def setUp(self):
        super().setUp()
        self.nginx = None

    def tearDown(self):
        if self.nginx is not None:
            self.nginx.stop()
        super().tearDown()

    def replica(self, namespace, *extra):
        return self.start_server(namespace, "--default-policy", POLICY, "--lease-seconds",
                                 LEASE_SECONDS, "--metrics-listen", "127.0.0.1:0", *extra)

    def reference(self, sessions):
        """Each conversation alone on one server: its turns' token ids."""
        single = self.replica(f"single-{sessions}")
        want = {}
        for s in range(sessions):
            name = f"s{s}"
            want[name] = [run_turn(single.stub, name, t)[0] for t in range(TURNS)]
        self.assertEqual(single.terminate(), 0)
        return want

    def start_conversations(self, sessions, think=0.0):
        """Threads chatting TURNS turns per session through nginx, retrying
        each turn with its turn_id and waiting `think` seconds between turns;
        returns (threads, got, done, retries, errors)."""
        done, retries, errors = [], [], []
        got = {f"s{s}": [] for s in range(sessions)}
        lock = threading.Lock()

        def converse(name):
            try:
                for t in range(TURNS):
                    for attempt in range(60):
                        try:
                            ids, _ = run_turn(self.nginx.stub, name, t, metadata=routed(name))
                            break
                        except grpc.RpcError as e:
                            if e.code() not in RETRYABLE or attempt == 59:
                                raise
                            with lock:
                                retries.append((name, t, e.code(), e.details()))
                            time.sleep(0.05 * min(attempt + 1, 10))
                    with lock:
                        got[name].append(ids)
                        done.append((name, t))
                    time.sleep(think)
            except Exception as e:  # reported by the main thread
                with lock:
                    errors.append((name, repr(e)))

        threads = [threading.Thread(target=converse, args=(name,)) for name in got]
        for th in threads:
            th.start()
        return threads, got, done, retries, errors

    def wait_for(self, done, count, errors):
        deadline = time.time() + 120
        while len(done) < count and time.time() < deadline and not errors:
            time.sleep(0.01)

    def test_scale_3_to_4_to_2_moves_sessions_and_loses_no_turn(self):
        sessions = 16
        want = self.reference(sessions)
        replicas = [self.replica("scale") for _ in range(3)]
        self.nginx = Nginx(os.path.join(self.tmp, "nginx"), [r.address for r in replicas])
        # Users who think between turns: the ring changes twice mid-run.
        threads, got, done, retries, errors = self.start_conversations(sessions, think=0.5)
        total = sessions * TURNS
        self.wait_for(done, total // 3, errors)
        # Scale up: a fourth replica joins the ring; the sessions that now
        # map to it are handed over by their live owners.
        replicas.append(self.replica("scale"))
        self.nginx.set_upstreams([r.address for r in replicas])
        self.wait_for(done, 2 * total // 3, errors)
        up_at = len(done)
        # Scale down to two: out of the ring first, then SIGTERM (drain:
        # checkpoint, release every lease).
        leaving, replicas = replicas[:2], replicas[2:]
        newcomer = replicas[-1]
        held_by_leaving = sum(metric(r, "sinkserve_sessions_owned") for r in leaving)
        self.nginx.set_upstreams([r.address for r in replicas])
        for r in leaving:
            self.assertEqual(r.terminate(), 0)
        for th in threads:
            th.join(timeout=180)
        self.assertFalse(any(th.is_alive() for th in threads), "a conversation hung")
        self.assertEqual(errors, [])
        self.assertLess(up_at, total, "the scale-down came after the run")
        for name in want:
            self.assertEqual(got[name], want[name], name)
            info = self.nginx.stub.GetSession(pb.GetSessionRequest(session_id=name),
                                              metadata=routed(name))
            self.assertEqual(info.rounds, TURNS, name)
        # Sessions moved: the newcomer got sessions that existed before it
        # (handed off by live owners, or released by drained ones), and the
        # two that left held sessions when they left.
        causes = {c: metric(newcomer, "sinkserve_session_takeover_seconds_count", cause=c)
                  for c in ("free", "handed_off", "owner_gone", "expired")}
        self.assertGreater(sum(causes.values()), 0, causes)
        self.assertGreater(held_by_leaving, 0)
        print(f"\nscale 3 -> 4 -> 2: {len(retries)} retries; the leaving two held "
              f"{held_by_leaving:.0f} sessions; the newcomer took, by cause: {causes}")

    def test_kill9_mid_run_loses_and_repeats_no_turn(self):
        want = self.reference(SESSIONS)
        replicas = [self.replica("scaled") for _ in range(3)]
        self.nginx = Nginx(os.path.join(self.tmp, "nginx"), [r.address for r in replicas])
        threads, got, done, retries, errors = self.start_conversations(SESSIONS)

        # Mid-run: kill -9 the replica that owns the most sessions now.
        deadline = time.time() + 120
        while len(done) < SESSIONS * TURNS // 2 and time.time() < deadline and not errors:
            time.sleep(0.01)
        owned = [metric(r, "sinkserve_sessions_owned") for r in replicas]
        while sum(owned) == 0 and time.time() < deadline:  # published 4 times a second
            time.sleep(0.05)
            owned = [metric(r, "sinkserve_sessions_owned") for r in replicas]
        victim = max(range(3), key=lambda i: owned[i])
        replicas[victim].kill()
        killed_after = len(done)
        for th in threads:
            th.join(timeout=180)
        self.assertFalse(any(th.is_alive() for th in threads), "a conversation hung")
        self.assertEqual(errors, [])
        self.assertLess(killed_after, SESSIONS * TURNS, "the kill came after the run")
        survivors = [r for i, r in enumerate(replicas) if i != victim]

        # Nothing lost, nothing run twice: every session's turns are exactly
        # the single server's.
        for name in want:
            self.assertEqual(got[name], want[name], name)
        for name in want:
            info = self.nginx.stub.GetSession(pb.GetSessionRequest(session_id=name),
                                              metadata=routed(name))
            self.assertEqual(info.rounds, TURNS, name)
        # The dead replica's sessions were taken over by breaking its leases
        # at once (nothing answered at its address), not by waiting them out.
        taken = sum(metric(r, "sinkserve_session_takeover_seconds_count", cause="owner_gone")
                    for r in survivors)
        self.assertGreater(taken, 0, retries)
        print(f"\nkill -9 after {killed_after} of {SESSIONS * TURNS} turns "
              f"(victim owned {owned[victim]:.0f} sessions); {len(retries)} retries; "
              f"{taken:.0f} sessions taken from the dead replica")

    def test_paused_owner_is_fenced_out(self):
        a = self.replica("fence")
        b = self.replica("fence")
        name = "paused-owner"
        stream_a = Stream(a.stub, timeout=60, metadata=routed(name))
        stream_a.open(name, create=True, config=CONFIG)
        first, _, _ = stream_a.turn(text_of(name, 0), max_tokens=MAX_TOKENS, turn_id="a/0")
        # A long turn (8000 tokens: over a second here); A is frozen at its
        # first token, with the session in the middle of the turn.
        stream_a.send(turn=pb.UserTurn(text=text_of(name, 1), max_tokens=8000, turn_id="a/1"))
        self.assertTrue(stream_a.recv().HasField("delta"))
        os.kill(a.proc.pid, signal.SIGSTOP)
        try:
            # B asks A (no answer), waits A's lease out, takes the session.
            start = time.time()
            ids_b, replayed = run_turn(b.stub, name, 1, metadata=routed(name))
            took = time.time() - start
            self.assertFalse(replayed)
            self.assertEqual(
                metric(b, "sinkserve_session_takeover_seconds_count", cause="expired"), 1)
        finally:
            os.kill(a.proc.pid, signal.SIGCONT)
        # A wakes: its lease is gone, the turn it was running ends, and the
        # checkpoint it writes for it is refused by RADOS.
        with self.assertRaises(grpc.RpcError) as ended:
            while True:
                stream_a.recv()
        self.assertEqual(ended.exception.code(), grpc.StatusCode.UNAVAILABLE)
        deadline = time.time() + 10
        while metric(a, "sinkserve_fenced_writes_total") < 1 and time.time() < deadline:
            time.sleep(0.1)
        self.assertGreaterEqual(metric(a, "sinkserve_fenced_writes_total"), 1, a.log())
        self.assertGreaterEqual(metric(a, "sinkserve_lease_losses_total"), 1)
        self.assertIn("fenced", a.log())
        # The store: epoch 2 (A had 1), and the session is B's: two rounds,
        # the last one B's turn, which replays from the store.
        epoch = self.cluster.rados("fence", "getxattr", f"s.{name}", "epoch")
        self.assertEqual(epoch.strip(), b"2")
        info = b.stub.GetSession(pb.GetSessionRequest(session_id=name), metadata=routed(name))
        self.assertEqual(info.rounds, 2)
        again, replayed = run_turn(b.stub, name, 1, metadata=routed(name))
        self.assertTrue(replayed)
        self.assertEqual(again, ids_b)
        # A itself holds nothing now: asking it for the session takes it
        # back through the store, at a third epoch, B's turn included.
        stream = Stream(a.stub, timeout=30, metadata=routed(name))
        opened = stream.open(name, create=False)
        self.assertEqual(opened.session.rounds, 2)
        stream.finish()
        self.assertEqual(self.cluster.rados("fence", "getxattr", f"s.{name}", "epoch").strip(),
                         b"3")
        self.assertEqual(
            metric(a, "sinkserve_session_takeover_seconds_count", cause="handed_off"), 1)
        print(f"\ntakeover of a paused owner's session: {took:.2f} s "
              f"(lease {LEASE_SECONDS} s); first turn {len(first)} tokens")


@unittest.skipUnless(have_ceph(), "Ceph binaries missing: run scripts/setup")
class StoreFaultsTest(CephServerTest):
    """Pool size 2 on three OSDs: one OSD lost, then the whole store away."""

    CLUSTER_ARGS = {"osds": 3, "pool_size": 2}

    def server(self, namespace):
        return self.start_server(namespace, "--default-policy", POLICY,
                                 "--lease-seconds", LEASE_SECONDS)

    def osds(self, action, *ids):
        for i in ids:
            out = self.cluster.script(action, str(i))
            self.assertEqual(out.returncode, 0, out.stdout + out.stderr)

    def test_turns_survive_an_osd_and_fail_fast_without_the_store(self):
        name = "faulty"
        single = self.server("faults-single")
        want = [run_turn(single.stub, name, t)[0] for t in range(5)]
        self.assertEqual(single.terminate(), 0)

        server = self.server("faults")
        got = [run_turn(server.stub, name, 0, metadata=routed(name))[0]]
        # One OSD gone (its copies with it): the other copy serves.
        self.osds("kill-osd", 1)
        for t in (1, 2):
            got.append(run_turn(server.stub, name, t, metadata=routed(name))[0])
        # The whole store away: a turn fails with UNAVAILABLE in about the
        # store's op timeout (10 s), no crash, no hang.
        self.osds("stop-osd", 0, 2)
        start = time.time()
        with self.assertRaises(grpc.RpcError) as failed:
            run_turn(server.stub, name, 3, metadata=routed(name))
        took = time.time() - start
        self.assertEqual(failed.exception.code(), grpc.StatusCode.UNAVAILABLE,
                         failed.exception.details())
        self.assertLess(took, 30)
        self.assertIsNone(server.proc.poll())
        # Back: the same turn, retried with its turn_id, completes once.
        self.osds("start-osd", 0, 2)
        deadline = time.time() + 120
        while True:
            try:
                got.append(run_turn(server.stub, name, 3, metadata=routed(name))[0])
                break
            except grpc.RpcError as e:
                if e.code() not in RETRYABLE or time.time() > deadline:
                    raise
                time.sleep(0.5)
        got.append(run_turn(server.stub, name, 4, metadata=routed(name))[0])
        self.assertEqual(got, want)
        info = server.stub.GetSession(pb.GetSessionRequest(session_id=name),
                                      metadata=routed(name))
        self.assertEqual(info.rounds, 5)
        print(f"\nstore away: the turn failed after {took:.1f} s")


if __name__ == "__main__":
    unittest.main(verbosity=2)
