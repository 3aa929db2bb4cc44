#!/usr/bin/python3
"""End-to-end tests of exactly-once turns (turn_id replay), pipelined turns
and the x-session-id routing header, against real `sinkserve serve`
processes on loopback ports (see server_testlib.py). Greedy decoding makes
every reply a pure function of the session's history, so "the same result"
is checked by comparing token ids.
"""

import os
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

import grpc

from server_testlib import (SINKSERVE, Server, Stream, code_of, free_port, metrics, pb,
                            reattach, routed)

C = grpc.StatusCode
POLICY = "streaming(4,60)"
TEXTS = ["Once upon a time", " Tom had a red ball.", " The sun was hot.", " Lily and Ben"]


def read_until_end(stream):
    """Responses up to and including the next TurnEnd, TurnErrors aside:
    (deltas, TurnEnd, [TurnError...])."""
    deltas, errors = [], []
    while True:
        response = stream.recv()
        kind = response.WhichOneof("kind")
        if kind == "delta":
            deltas.append(response.delta)
        elif kind == "turn_error":
            errors.append(response.turn_error)
        elif kind == "turn_end":
            return deltas, response.turn_end, errors


def ids_of(deltas):
    return [i for d in deltas for i in d.token_ids]


class TurnsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="sinkserve-turns-")
        cls.server = Server(os.path.join(cls.tmp, "db"), "--default-policy", POLICY,
                            "--max-tokens-limit", "100000", "--metrics-listen", "127.0.0.1:0")
        cls.stub = cls.server.stub

    @classmethod
    def tearDownClass(cls):
        cls.server.close()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def info(self, session_id):
        return self.stub.GetSession(pb.GetSessionRequest(session_id=session_id))

    def test_turn_id_replays_without_running_again(self):
        stream = Stream(self.stub)
        stream.open("replay")
        ids, text, end = stream.turn("Once upon a time", max_tokens=24, turn_id="t-1",
                                     logprobs=True)
        self.assertFalse(end.replayed)
        self.assertEqual(end.turn_id, "t-1")
        self.assertEqual(len(ids), 24)
        before = self.info("replay")
        # Resent on the same stream: the stored result, nothing run.
        stream.send(turn=pb.UserTurn(text="Once upon a time", max_tokens=24, turn_id="t-1",
                                     logprobs=True))
        deltas, again, _ = read_until_end(stream)
        self.assertTrue(again.replayed)
        self.assertEqual(again.turn_id, "t-1")
        self.assertEqual(ids_of(deltas), ids)
        self.assertEqual("".join(d.text for d in deltas), text)
        self.assertEqual(len([p for d in deltas for p in d.logprobs]), 24)
        self.assertEqual(again.stop_reason, end.stop_reason)
        self.assertEqual(again.usage, end.usage)
        after = self.info("replay")
        self.assertEqual((after.rounds, after.tokens_seen, after.cells_cached),
                         (before.rounds, before.tokens_seen, before.cells_cached))
        stream.finish()
        # On a new stream too (a client that lost the first one).
        stream, _ = reattach(self.stub, "replay")
        ids2, text2, end2 = stream.turn("Once upon a time", max_tokens=24, turn_id="t-1")
        self.assertTrue(end2.replayed)
        self.assertEqual((ids2, text2), (ids, text))
        self.assertEqual(self.info("replay").rounds, before.rounds)
        # Another id runs, and then only the newest id replays.
        ids3, _, end3 = stream.turn(" The end.", max_tokens=8, turn_id="t-2")
        self.assertFalse(end3.replayed)
        self.assertEqual(self.info("replay").rounds, before.rounds + 1)
        _, _, end4 = stream.turn(" The end.", max_tokens=8, turn_id="t-2")
        self.assertTrue(end4.replayed)
        _, _, end5 = stream.turn("Once upon a time", max_tokens=8, turn_id="t-1")
        self.assertFalse(end5.replayed)
        self.assertEqual(self.info("replay").rounds, before.rounds + 2)
        # A turn without an id forgets the last id.
        stream.turn(" Again.", max_tokens=4)
        _, _, end6 = stream.turn("Once upon a time", max_tokens=8, turn_id="t-1")
        self.assertFalse(end6.replayed)
        stream.finish()
        values = metrics(self.server.metrics_port)
        self.assertGreaterEqual(values["sinkserve_replayed_turns_total"], 3)

    def test_pipelined_turns_equal_turns_one_by_one(self):
        alone = Stream(self.stub)
        alone.open("one-by-one")
        expected = [alone.turn(t, max_tokens=16) for t in TEXTS]
        alone.finish()

        stream = Stream(self.stub)
        stream.open("pipelined")
        for i, text in enumerate(TEXTS):
            stream.send(turn=pb.UserTurn(text=text, max_tokens=16, turn_id=f"p{i}"))
        for i, (ids, text, end) in enumerate(expected):
            deltas, got, errors = read_until_end(stream)
            self.assertEqual(errors, [])
            self.assertEqual(got.turn_id, f"p{i}")  # in the order sent
            self.assertEqual(ids_of(deltas), ids)
            self.assertEqual("".join(d.text for d in deltas), text)
            self.assertEqual(got.usage.prompt_tokens, end.usage.prompt_tokens)
        stream.finish()
        self.assertEqual(self.info("pipelined").rounds, len(TEXTS))
        self.assertEqual(self.info("pipelined").tokens_seen, self.info("one-by-one").tokens_seen)

    def test_half_close_after_pipelined_turns_runs_them_all(self):
        stream = Stream(self.stub)
        stream.open("half-close")
        for i, text in enumerate(TEXTS[:3]):
            stream.send(turn=pb.UserTurn(text=text, max_tokens=8, turn_id=f"h{i}"))
        stream.close()  # the client is done sending
        ends = [r.turn_end.turn_id for r in stream.call if r.HasField("turn_end")]
        self.assertEqual(ends, ["h0", "h1", "h2"])
        self.assertEqual(self.info("half-close").rounds, 3)

    def test_fifth_waiting_turn_is_refused_and_the_rest_complete(self):
        stream = Stream(self.stub)
        stream.open("queue-full")
        # A long first turn holds the stream while five more arrive: four
        # wait, the fifth is refused.
        stream.send(turn=pb.UserTurn(text="Once upon a time", max_tokens=90000,
                                     ignore_eos=True, turn_id="long"))
        for i in range(1, 6):
            stream.send(turn=pb.UserTurn(text=TEXTS[i % len(TEXTS)], max_tokens=6,
                                         turn_id=f"w{i}"))
        refused = None
        while refused is None:
            response = stream.recv()
            if response.HasField("turn_error"):
                refused = response.turn_error
            self.assertFalse(response.HasField("turn_end"), response)
        self.assertEqual(refused.code, C.RESOURCE_EXHAUSTED.value[0])
        self.assertEqual(refused.turn_id, "w5")
        self.assertIn("4 turns already wait", refused.message)
        stream.send(cancel=pb.CancelTurn())  # end the long turn early
        _, end, errors = read_until_end(stream)
        self.assertEqual((end.turn_id, end.stop_reason), ("long", pb.STOP_REASON_CANCELLED))
        self.assertEqual(errors, [])
        for i in range(1, 5):
            deltas, end, errors = read_until_end(stream)
            self.assertEqual(errors, [])
            self.assertEqual(end.turn_id, f"w{i}")
            self.assertEqual(end.stop_reason, pb.STOP_REASON_MAX_TOKENS)
            self.assertEqual(len(ids_of(deltas)), 6)
        # The stream goes on: the refused turn can be sent again.
        ids, _, end = stream.turn(TEXTS[1], max_tokens=6, turn_id="w5")
        self.assertEqual((end.turn_id, len(ids)), ("w5", 6))
        stream.finish()
        self.assertEqual(self.info("queue-full").rounds, 6)

    def test_routing_header_must_match(self):
        stream = Stream(self.stub, metadata=routed("alpha"))
        stream.open("alpha")  # matching header: fine
        stream.turn("Once", max_tokens=2)
        stream.finish()
        wrong = Stream(self.stub, metadata=routed("beta"))
        with self.assertRaises(grpc.RpcError) as caught:
            wrong.open("alpha")
        self.assertEqual(caught.exception.code(), C.INVALID_ARGUMENT)
        self.assertIn("'beta'", caught.exception.details())
        self.assertIn("'alpha'", caught.exception.details())
        # Unary calls: a mismatch is refused, a match or no header works.
        get = pb.GetSessionRequest(session_id="alpha")
        self.assertEqual(code_of(lambda: self.stub.GetSession(get, metadata=routed("beta"))),
                         C.INVALID_ARGUMENT)
        self.assertEqual(self.stub.GetSession(get, metadata=routed("alpha")).session_id, "alpha")
        self.assertEqual(self.stub.GetSession(get).session_id, "alpha")
        self.assertEqual(code_of(lambda: self.stub.CreateSession(
            pb.CreateSessionRequest(session_id="gamma"), metadata=routed("delta"))),
            C.INVALID_ARGUMENT)
        self.assertEqual(code_of(lambda: self.stub.DeleteSession(
            pb.DeleteSessionRequest(session_id="alpha"), metadata=routed("beta"))),
            C.INVALID_ARGUMENT)
        self.assertEqual(self.stub.GetSession(get).session_id, "alpha")  # not deleted

    def test_cli_message_with_turn_id_replays(self):
        def chat():
            return subprocess.run(
                [SINKSERVE, "chat", "--server", self.server.address, "--session", "cli-replay",
                 "--create", "--chat-template", "raw", "--message", "Once upon a time",
                 "--max-tokens", "12", "--turn-id", "cli-1"],
                capture_output=True, text=True, timeout=60)
        first, second = chat(), chat()
        self.assertEqual(first.returncode, 0, first.stderr)
        self.assertEqual(second.returncode, 0, second.stderr)
        self.assertEqual(first.stdout, second.stdout)
        self.assertNotIn("replayed", first.stderr)
        self.assertIn("replayed", second.stderr)
        self.assertEqual(self.info("cli-replay").rounds, 1)


class RestartTest(unittest.TestCase):
    """Each test on a server and store of its own."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="sinkserve-turns-restart-")
        self.db = os.path.join(self.tmp, "db")
        self.servers = []

    def tearDown(self):
        for s in self.servers:
            s.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def start(self, **kw):
        server = Server(self.db, "--default-policy", POLICY, "--max-tokens-limit", "100000", **kw)
        self.servers.append(server)
        return server

    def test_replay_survives_restarts(self):
        server = self.start()
        stream = Stream(server.stub)
        stream.open("durable")
        stream.turn("Once upon a time", max_tokens=10, turn_id="a")
        ids, text, end = stream.turn(" Tom had a red ball.", max_tokens=20, turn_id="b")
        stream.finish()
        info = server.stub.GetSession(pb.GetSessionRequest(session_id="durable"))
        self.assertEqual(server.terminate(), 0)  # SIGTERM: drain, checkpoint, exit

        for stop in ("kill", None):
            server = self.start()
            stream, opened = reattach(server.stub, "durable")
            self.assertTrue(opened.restored)
            again_ids, again_text, again = stream.turn(" Tom had a red ball.", max_tokens=20,
                                                       turn_id="b")
            stream.finish()
            self.assertTrue(again.replayed)
            self.assertEqual((again_ids, again_text), (ids, text))
            self.assertEqual(again.usage, end.usage)
            after = server.stub.GetSession(pb.GetSessionRequest(session_id="durable"))
            self.assertEqual((after.rounds, after.tokens_seen), (info.rounds, info.tokens_seen))
            if stop == "kill":
                server.kill()  # a crash keeps it too

    def test_cli_retries_a_turn_across_a_server_crash(self):
        port = free_port()
        server = self.start(listen=f"127.0.0.1:{port}")
        server.stub.CreateSession(pb.CreateSessionRequest(
            session_id="crash", config=pb.SessionConfig(chat_template="raw")))
        chat = subprocess.Popen(
            [SINKSERVE, "chat", "--server", f"127.0.0.1:{port}", "--session", "crash",
             "--message", "Once upon a time", "--max-tokens", "40000", "--ignore-eos",
             "--retries", "12", "--turn-id", "crash-1"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            self.assertTrue(chat.stdout.read(64))  # the reply is streaming
            server.proc.send_signal(signal.SIGKILL)
            server.proc.wait(timeout=10)
            time.sleep(0.3)  # the client sees the break and starts retrying
            self.start(listen=f"127.0.0.1:{port}")
            out, err = chat.communicate(timeout=120)
        finally:
            if chat.poll() is None:
                chat.kill()
                chat.wait()
        self.assertEqual(chat.returncode, 0, err)
        self.assertIn("resending turn crash-1", err)
        info = self.servers[-1].stub.GetSession(pb.GetSessionRequest(session_id="crash"))
        self.assertEqual(info.rounds, 1)  # the crashed attempt never completed
        # And the completed turn is now replayed, not run again.
        again = subprocess.run(
            [SINKSERVE, "chat", "--server", f"127.0.0.1:{port}", "--session", "crash",
             "--message", "Once upon a time", "--turn-id", "crash-1", "--quiet"],
            capture_output=True, text=True, timeout=120)
        self.assertEqual(again.returncode, 0, again.stderr)
        self.assertEqual(self.servers[-1].stub.GetSession(
            pb.GetSessionRequest(session_id="crash")).rounds, 1)


if __name__ == "__main__":
    unittest.main(verbosity=2)
