#!/usr/bin/python3
"""End-to-end tests of pinned memory: a session's pinned system prompt and
pinned turns, against real `sinkserve serve` processes (see
server_testlib.py). Greedy decoding makes every reply a pure function of the
cache, so "the cache kept the same cells" is checked by comparing token ids.
"""

import os
import shutil
import tempfile
import unittest

import grpc

from server_testlib import Server, Stream, code_of, metrics, pb

C = grpc.StatusCode
POLICY = "streaming(4,60)"
MIN_WINDOW = 16
SYSTEM = "Tom is a little dog. He likes his red ball."
FILLER = [" Once upon a time, there was a girl named Lily.",
          " She liked to run and jump in the sun.",
          " One day, she saw a big tree with a bird in it.",
          " The bird sang a happy song and Lily smiled."]


def read_until_end(stream):
    """(deltas, TurnEnd or None, [TurnError...]) up to the next TurnEnd or
    Unpinned (returned in place of the TurnEnd)."""
    deltas, errors = [], []
    while True:
        response = stream.recv()
        kind = response.WhichOneof("kind")
        if kind == "delta":
            deltas.append(response.delta)
        elif kind == "turn_error":
            errors.append(response.turn_error)
            return deltas, None, errors
        elif kind in ("turn_end", "unpinned"):
            return deltas, getattr(response, kind), errors


def pinned_turn(stream, text, turn_id, max_tokens=4):
    """Sends a pinned turn; its TurnEnd (fails the test on a TurnError)."""
    stream.send(turn=pb.UserTurn(text=text, max_tokens=max_tokens, turn_id=turn_id, pin=True))
    _, end, errors = read_until_end(stream)
    assert not errors, errors
    return end


def config(system=SYSTEM, pin=None, max_pinned=0):
    c = pb.SessionConfig(system_prompt=system)
    c.policy.kind = pb.POLICY_STREAMING
    c.policy.sinks, c.policy.window, c.policy.max_pinned_cells = 4, 60, max_pinned
    if pin is not None:
        c.pin_system_prompt = pin
    return c


class PinsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="sinkserve-pins-")
        cls.db = os.path.join(cls.tmp, "db")
        cls.server = cls.start()

    @classmethod
    def start(cls):
        return Server(cls.db, "--default-policy", POLICY, "--min-window", str(MIN_WINDOW),
                      "--metrics-listen", "127.0.0.1:0")

    @classmethod
    def tearDownClass(cls):
        cls.server.close()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def info(self, session_id):
        return self.server.stub.GetSession(pb.GetSessionRequest(session_id=session_id))

    def chat(self, session_id, texts, cfg=None, max_tokens=16):
        stream = Stream(self.server.stub)
        stream.open(session_id, config=cfg)
        results = [stream.turn(t, max_tokens=max_tokens) for t in texts]
        stream.finish()
        return results

    def test_system_prompt_is_pinned_by_default_and_outlives_the_window(self):
        results = self.chat("sys-pinned", FILLER * 2, config())
        info = self.info("sys-pinned")
        self.assertTrue(info.config.pin_system_prompt)
        self.assertEqual(len(info.pins), 1)
        self.assertEqual(info.pins[0].turn_id, "")
        pinned = info.pins[0].cells
        # BOS + the system prompt's tokens: well past the 4 sinks.
        self.assertGreater(pinned, 10)
        self.assertEqual(info.pinned_cells, pinned)
        # The conversation is far past the budget: evictions happened, the
        # budget held, and the pinned cells were never among the evicted.
        self.assertGreater(info.tokens_seen, 3 * 64)
        self.assertEqual(info.cells_cached, 64)
        for _, _, end in results:
            self.assertEqual(end.usage.cells_pinned, pinned)
        # The same conversation with the prompt left unpinned forgets it: the
        # caches differ, and so do the greedy replies once it was evicted.
        unpinned = self.chat("sys-unpinned", FILLER * 2, config(pin=False))
        self.assertEqual(self.info("sys-unpinned").pinned_cells, 0)
        self.assertEqual([r[0] for r in unpinned[:1]], [r[0] for r in results[:1]])
        self.assertNotEqual([r[0] for r in unpinned], [r[0] for r in results])

    def test_system_prompt_that_leaves_too_small_a_window_is_refused(self):
        long_prompt = " ".join(["The cat sat on the mat."] * 12)
        create = lambda c: self.server.stub.CreateSession(
            pb.CreateSessionRequest(session_id="too-long", config=c))
        with self.assertRaises(grpc.RpcError) as e:
            create(config(system=long_prompt))
        self.assertEqual(e.exception.code(), C.INVALID_ARGUMENT)
        message = e.exception.details()
        self.assertIn("cells with its template markup", message)
        self.assertIn(f"at least {MIN_WINDOW}", message)
        self.assertIn("window of 60", message)
        self.assertEqual(code_of(lambda: self.info("too-long")), C.NOT_FOUND)
        # Opening a stream that would create it: refused the same way, nothing stored.
        stream = Stream(self.server.stub)
        with self.assertRaises(grpc.RpcError) as e:
            stream.open("too-long-stream", config=config(system=long_prompt))
        self.assertEqual(e.exception.code(), C.INVALID_ARGUMENT)
        self.assertEqual(code_of(lambda: self.info("too-long-stream")), C.NOT_FOUND)
        # Over the policy's own max_pinned_cells: refused, naming it.
        with self.assertRaises(grpc.RpcError) as e:
            create(config(max_pinned=5))
        self.assertEqual(e.exception.code(), C.INVALID_ARGUMENT)
        self.assertIn("max_pinned_cells", e.exception.details())
        # Unpinned, the same long prompt is fine.
        info = create(config(system=long_prompt, pin=False))
        self.assertFalse(info.config.pin_system_prompt)

    def test_pinned_turn_stays_until_unpinned(self):
        stream = Stream(self.server.stub)
        stream.open("fact", config=config(system=""))
        end = pinned_turn(stream, " The secret word is Zubix.", "fact-1")
        pinned = end.usage.cells_pinned
        self.assertGreater(pinned, 5)
        for text in FILLER * 2:
            _, _, end = stream.turn(text, max_tokens=16)
            self.assertEqual(end.usage.cells_pinned, pinned)
        info = self.info("fact")
        self.assertEqual([(p.turn_id, p.cells) for p in info.pins], [("fact-1", pinned)])
        self.assertEqual(info.cells_cached, 64)
        # Unpin: acknowledged with the numbers; GetSession no longer lists it.
        stream.send(unpin=pb.UnpinTurn(turn_id="fact-1"))
        _, unpinned, errors = read_until_end(stream)
        self.assertEqual(errors, [])
        self.assertEqual((unpinned.turn_id, unpinned.cells, unpinned.pinned_cells),
                         ("fact-1", pinned, 0))
        self.assertEqual(self.info("fact").pinned_cells, 0)
        # Its cells are ordinary again: the next turns evict them.
        for text in FILLER:
            _, _, end = stream.turn(text, max_tokens=16)
            self.assertEqual(end.usage.cells_pinned, 0)
        # Unknown id: NOT_FOUND for that request only; the stream goes on.
        stream.send(unpin=pb.UnpinTurn(turn_id="fact-1"))
        _, none, errors = read_until_end(stream)
        self.assertIsNone(none)
        self.assertEqual([(e.code, e.turn_id) for e in errors],
                         [(C.NOT_FOUND.value[0], "fact-1")])
        ids, _, end = stream.turn(" Lily", max_tokens=4)
        self.assertEqual(len(ids), 4)
        stream.finish()

    def test_pin_over_the_limit_refuses_that_turn_only(self):
        stream = Stream(self.server.stub)
        stream.open("limit", config=config(system="", max_pinned=12))
        pinned_turn(stream, " Hi.", "a", max_tokens=2)
        before = self.info("limit")
        self.assertEqual(before.pinned_cells, before.pins[0].cells)
        # 12 cells at most: a long pinned turn is refused with the numbers.
        stream.send(turn=pb.UserTurn(text=FILLER[0] + FILLER[1], max_tokens=4, turn_id="b",
                                     pin=True))
        _, end, errors = read_until_end(stream)
        self.assertIsNone(end)
        self.assertEqual(len(errors), 1)
        self.assertEqual(errors[0].code, C.RESOURCE_EXHAUSTED.value[0])
        self.assertEqual(errors[0].turn_id, "b")
        self.assertIn("over the limit of 12", errors[0].message)
        # Nothing of it ran: the session is as before.
        after = self.info("limit")
        self.assertEqual((after.tokens_seen, after.pinned_cells),
                         (before.tokens_seen, before.pinned_cells))
        # A pin without a turn id cannot be unpinned: refused too.
        stream.send(turn=pb.UserTurn(text=" Yes.", max_tokens=2, pin=True))
        _, end, errors = read_until_end(stream)
        self.assertEqual([e.code for e in errors], [C.INVALID_ARGUMENT.value[0]])
        self.assertIn("turn_id", errors[0].message)
        # The stream and the session go on.
        ids, _, end = stream.turn(" Yes.", max_tokens=3)
        self.assertEqual(len(ids), 3)
        stream.finish()
        values = metrics(self.server.metrics_port)
        self.assertGreaterEqual(values["sinkserve_pin_refusals_total"], 1)
        self.assertGreaterEqual(values['sinkserve_pins_total{what="turn"}'], 1)

    def test_pins_survive_a_restart_exactly(self):
        # Two identical sessions; one lives through a server restart.
        for sid in ("restart-a", "restart-b"):
            stream = Stream(self.server.stub)
            stream.open(sid, config=config())
            stream.turn(FILLER[0], max_tokens=8)
            pinned_turn(stream, " The ball is red.", "keep")
            stream.turn(FILLER[1], max_tokens=8)
            stream.finish()
        before = self.info("restart-a")
        # b goes on here, a after a restart: far past the window, the pinned
        # cells decide the replies, so equal replies mean equal pins.
        b = self.chat("restart-b", FILLER * 2)
        self.__class__.server.terminate()
        self.__class__.server = self.start()
        after = self.info("restart-a")
        self.assertEqual([(p.turn_id, p.cells) for p in after.pins],
                         [(p.turn_id, p.cells) for p in before.pins])
        self.assertEqual([p.turn_id for p in after.pins], ["", "keep"])
        a = self.chat("restart-a", FILLER * 2)
        self.assertEqual([r[0] for r in a], [r[0] for r in b])
        self.assertEqual(self.info("restart-a").pinned_cells, before.pinned_cells)


if __name__ == "__main__":
    unittest.main()
