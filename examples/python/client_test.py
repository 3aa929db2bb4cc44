#!/usr/bin/python3
"""Generates the Python stubs the way the build does, imports them, and drives
sinkserve_client.py against an in-process fake SinkServe servicer.

The fake checks the client's side of the protocol (open first, turns, paging,
status codes); the real server is tested end to end elsewhere.

Environment: SINKSERVE_PROTOC, SINKSERVE_GRPC_PYTHON_PLUGIN (default: from
PATH), SINKSERVE_PROTO_ROOT (default: ../../proto next to this file).
"""

import contextlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import unittest
from concurrent import futures

HERE = os.path.dirname(os.path.abspath(__file__))
CLIENT = os.path.join(HERE, "sinkserve_client.py")


def generate_stubs(out_dir):
    protoc = os.environ.get("SINKSERVE_PROTOC") or shutil.which("protoc")
    plugin = (os.environ.get("SINKSERVE_GRPC_PYTHON_PLUGIN")
              or shutil.which("grpc_python_plugin"))
    root = os.environ.get("SINKSERVE_PROTO_ROOT",
                          os.path.join(HERE, "..", "..", "proto"))
    if not protoc or not plugin:
        raise unittest.SkipTest("protoc or grpc_python_plugin not installed")
    subprocess.run([protoc, f"--proto_path={root}", f"--python_out={out_dir}",
                    f"--grpc_python_out={out_dir}",
                    f"--plugin=protoc-gen-grpc_python={plugin}",
                    os.path.join(root, "sinkserve", "v1", "sinkserve.proto")],
                   check=True)


STUBS = tempfile.mkdtemp(prefix="sinkserve_stubs_")
generate_stubs(STUBS)
sys.path.insert(0, STUBS)
sys.path.insert(0, HERE)
import grpc  # noqa: E402
from sinkserve.v1 import sinkserve_pb2 as pb  # noqa: E402
from sinkserve.v1 import sinkserve_pb2_grpc as pb_grpc  # noqa: E402
import sinkserve_client  # noqa: E402


class FakeSinkServe(pb_grpc.SinkServeServicer):
    """Echoes each turn back word by word; sessions live in a dict."""

    def __init__(self):
        self.sessions = {}
        self.turns = []
        self.headers = []      # x-session-id of every call
        self.break_turns = 0   # break this many streams after reading a turn

    def _note_header(self, context):
        self.headers.append(dict(context.invocation_metadata()).get("x-session-id"))

    def Chat(self, request_iterator, context):
        self._note_header(context)
        first = next(request_iterator)
        if first.WhichOneof("kind") != "open":
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "open first")
        session_id = first.open.session_id
        if session_id not in self.sessions:
            if not first.open.create_if_missing:
                context.abort(grpc.StatusCode.NOT_FOUND, session_id)
            self.sessions[session_id] = pb.SessionInfo(
                session_id=session_id, config=first.open.config,
                chat_template="raw")
        yield pb.ChatResponse(opened=pb.SessionOpened(
            session=self.sessions[session_id], warnings=["fake server"]))
        for request in request_iterator:
            if request.WhichOneof("kind") != "turn":
                continue
            self.turns.append(request.turn)
            if self.break_turns > 0:
                self.break_turns -= 1
                context.abort(grpc.StatusCode.UNAVAILABLE, "fake broken stream")
            words = request.turn.text.split()
            for i, word in enumerate(words):
                yield pb.ChatResponse(delta=pb.TokenDelta(
                    text=(" " if i else "") + word, token_ids=[i]))
            self.sessions[session_id].rounds += 1
            yield pb.ChatResponse(turn_end=pb.TurnEnd(
                stop_reason=pb.STOP_REASON_EOS,
                usage=pb.Usage(prompt_tokens=len(words),
                               generated_tokens=len(words))))

    def CreateSession(self, request, context):
        info = pb.SessionInfo(session_id=request.session_id,
                              config=request.config)
        self.sessions[request.session_id] = info
        return info

    def GetSession(self, request, context):
        self._note_header(context)
        if request.session_id not in self.sessions:
            context.abort(grpc.StatusCode.NOT_FOUND, request.session_id)
        return self.sessions[request.session_id]

    def ListSessions(self, request, context):
        ids = sorted(self.sessions)
        start = int(request.page_token or 0)
        size = request.page_size or 100
        page = ids[start:start + size]
        next_token = str(start + size) if start + size < len(ids) else ""
        return pb.ListSessionsResponse(
            sessions=[self.sessions[i] for i in page],
            next_page_token=next_token)

    def DeleteSession(self, request, context):
        if self.sessions.pop(request.session_id, None) is None:
            context.abort(grpc.StatusCode.NOT_FOUND, request.session_id)
        return pb.DeleteSessionResponse()


class ClientTest(unittest.TestCase):
    def setUp(self):
        self.fake = FakeSinkServe()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        pb_grpc.add_SinkServeServicer_to_server(self.fake, self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        self.address = f"127.0.0.1:{port}"

    def tearDown(self):
        self.server.stop(None)

    def run_client(self, *argv):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = sinkserve_client.main(
                ["--server", self.address, "--stubs", STUBS, "--timeout", "30",
                 *argv])
        return code, out.getvalue(), err.getvalue()

    def test_help_runs_without_stubs(self):
        env = dict(os.environ)
        env.pop("SINKSERVE_PY_STUBS", None)
        result = subprocess.run([sys.executable, CLIENT, "--help"],
                                capture_output=True, text=True, env=env)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("chat", result.stdout)

    def test_missing_stubs_is_a_clear_error(self):
        result = subprocess.run(
            [sys.executable, CLIENT, "--stubs", "/nonexistent", "list"],
            capture_output=True, text=True, cwd=tempfile.gettempdir())
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("sinkserve_python_stubs", result.stderr)

    def test_chat_streams_turns(self):
        code, out, err = self.run_client(
            "chat", "--session", "s1", "--create", "--policy", "sirllm",
            "--window", "64", "--system-prompt", "be brief",
            "--message", "hello there", "--message", "and again",
            "--max-tokens", "9", "--stop", "END")
        self.assertEqual(code, 0, err)
        self.assertEqual(out, "hello there\nand again\n")
        self.assertIn("warning: fake server", err)
        self.assertEqual([t.text for t in self.fake.turns],
                         ["hello there", "and again"])
        self.assertEqual(self.fake.turns[0].max_tokens, 9)
        self.assertEqual(list(self.fake.turns[0].stop), ["END"])
        config = self.fake.sessions["s1"].config
        self.assertEqual(config.policy.kind, pb.POLICY_SIRLLM)
        self.assertEqual(config.policy.window, 64)
        self.assertEqual(config.system_prompt, "be brief")
        self.assertEqual(self.fake.sessions["s1"].rounds, 2)
        # Every call carries the routing header; every turn its own id.
        self.assertEqual(self.fake.headers, ["s1"])
        ids = [t.turn_id for t in self.fake.turns]
        self.assertTrue(all(ids), ids)
        self.assertEqual(len(set(ids)), 2)

    def test_chat_resends_the_same_turn_id_after_a_broken_stream(self):
        self.fake.break_turns = 2
        code, out, err = self.run_client(
            "chat", "--session", "r1", "--create", "--message", "one two",
            "--turn-id", "tid-1")
        self.assertEqual(code, 0, err)
        self.assertTrue(out.endswith("one two\n"), out)
        self.assertEqual([t.turn_id for t in self.fake.turns], ["tid-1"] * 3)
        self.assertEqual(err.count("resending turn tid-1"), 2)
        self.assertEqual(self.fake.headers, ["r1"] * 3)

    def test_chat_gives_up_after_its_retries(self):
        self.fake.break_turns = 10
        code, _, err = self.run_client(
            "chat", "--session", "r2", "--create", "--message", "x", "--retries", "1")
        self.assertEqual(code, 1)
        self.assertIn("UNAVAILABLE", err)
        self.assertEqual(len(self.fake.turns), 2)
        self.assertEqual(self.fake.turns[0].turn_id, self.fake.turns[1].turn_id)

    def test_chat_unknown_session_reports_code(self):
        code, _, err = self.run_client("chat", "--session", "nope",
                                       "--message", "hi")
        self.assertEqual(code, 1)
        self.assertIn("NOT_FOUND", err)

    def test_names_cover_the_proto_enums(self):
        """Every PolicyKind and StopReason value has the client's name for it."""
        for value in pb.StopReason.values():
            self.assertEqual(
                sinkserve_client.STOP_REASONS.get(value),
                pb.StopReason.Name(value).removeprefix("STOP_REASON_").lower())
        self.assertEqual(len(sinkserve_client.STOP_REASONS),
                         len(pb.StopReason.values()))
        self.assertEqual(
            sinkserve_client.POLICIES,
            tuple(pb.PolicyKind.Name(v).removeprefix("POLICY_").lower()
                  for v in sorted(pb.PolicyKind.values())))

    def test_admin_commands_send_the_routing_header(self):
        self.run_client("create", "--session", "h1")
        self.fake.headers.clear()
        code, _, err = self.run_client("get", "--session", "h1")
        self.assertEqual(code, 0, err)
        self.assertEqual(self.fake.headers, ["h1"])

    def test_admin_commands(self):
        for i in range(5):
            self.assertEqual(self.run_client("create", "--session", f"s{i}")[0],
                             0)
        code, out, _ = self.run_client("list", "--page-size", "2")
        self.assertEqual(code, 0)
        self.assertEqual([line.split(":")[0] for line in out.splitlines()],
                         [f"s{i}" for i in range(5)])
        self.assertEqual(self.run_client("delete", "--session", "s3")[0], 0)
        code, _, err = self.run_client("get", "--session", "s3")
        self.assertEqual(code, 1)
        self.assertIn("NOT_FOUND", err)


if __name__ == "__main__":
    try:
        unittest.main()
    finally:
        shutil.rmtree(STUBS, ignore_errors=True)
