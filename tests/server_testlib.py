"""Helpers of the server end-to-end tests: Python stubs generated from the
proto at test time (Debian's protoc + grpc_python_plugin), a real
`sinkserve serve` process on a loopback port, and a small Chat stream client.

Environment: SINKSERVE_BIN (the CMake build directory), SINKSERVE_SHARED
(models/stories260K.gguf), SINKSERVE_PROTO_ROOT (default: proto/ here).
"""

import os
import queue
import signal
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

import grpc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("SINKSERVE_BIN", os.path.join(ROOT, "build"))
SHARED = os.environ.get("SINKSERVE_SHARED", os.path.join(ROOT, "..", "shared"))
SINKSERVE = os.path.join(BIN, "service", "sinkserve")
MODEL = os.path.join(SHARED, "models", "stories260K.gguf")
MAKE_MODEL = os.path.join(BIN, "tests", "make_synthetic_model")
EXAMPLE_CLIENT = os.path.join(ROOT, "examples", "python", "sinkserve_client.py")

PROTO_ROOT = os.environ.get("SINKSERVE_PROTO_ROOT", os.path.join(ROOT, "proto"))
STUBS = tempfile.mkdtemp(prefix="sinkserve-stubs-")
subprocess.run(
    ["protoc", "--proto_path", PROTO_ROOT,
     "--python_out", STUBS, "--grpc_python_out", STUBS,
     "--plugin=protoc-gen-grpc_python=/usr/bin/grpc_python_plugin",
     os.path.join(PROTO_ROOT, "sinkserve", "v1", "sinkserve.proto")],
    check=True)
sys.path.insert(0, STUBS)
from sinkserve.v1 import sinkserve_pb2 as pb  # noqa: E402
from sinkserve.v1 import sinkserve_pb2_grpc as pb_grpc  # noqa: E402

SERVING, NOT_SERVING = 1, 2


def health(channel, timeout=2.0):
    """grpc.health.v1.Health/Check for the whole server, without generated
    health stubs: an empty request, and the response's field 1 (status)."""
    check = channel.unary_unary("/grpc.health.v1.Health/Check",
                                request_serializer=lambda b: b,
                                response_deserializer=lambda b: b)
    response = check(b"", timeout=timeout)
    if len(response) >= 2 and response[0] == 0x08:
        return response[1]
    return 0  # UNKNOWN


class Server:
    """`sinkserve serve` on 127.0.0.1:<free port> with a RocksDB directory, or
    with `store` (a --store URL) and `db` only naming its log file."""

    def __init__(self, db, *extra, model=MODEL, wait=True, listen="127.0.0.1:0", store=None,
                 credentials=None, channel_options=(), token=None):
        """`credentials`: grpc channel credentials of a TLS server (its own
        channel, self.channel, uses them; health needs no token). `token`:
        sent as a bearer token by self.stub's calls."""
        self.db = db
        self.log_path = db.rstrip("/") + f".{time.time_ns()}.log"
        self._log = open(self.log_path, "w")
        where = ["--store", store] if store else ["--db", db]
        args = [SINKSERVE, "serve", "--model", model, *where,
                "--listen", listen, "--threads", "1", "--temperature", "0",
                "--sync=false", *extra]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self._log,
                                     text=True)
        line = self.proc.stdout.readline()
        if "listening on " not in line:
            self.proc.wait(timeout=10)
            raise RuntimeError(f"server did not start: {line!r}\n{self.log()}")
        self.address = line.split("listening on ")[1].split()[0]
        self.metrics_port = (int(line.split("metrics on port ")[1].rstrip(")\n"))
                             if "metrics on port " in line else None)
        self.channel = (grpc.secure_channel(self.address, credentials, options=channel_options)
                        if credentials is not None else grpc.insecure_channel(self.address))
        self.stub = pb_grpc.SinkServeStub(
            grpc.intercept_channel(self.channel, BearerToken(token)) if token else self.channel)
        if wait:
            self.wait_serving()

    def wait_serving(self, timeout=20):
        end = time.time() + timeout
        while time.time() < end:
            try:
                if health(self.channel) == SERVING:
                    return
            except grpc.RpcError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log()}")
            time.sleep(0.02)
        raise RuntimeError(f"server not SERVING after {timeout} s: {self.log()}")

    def log(self):
        self._log.flush()
        with open(self.log_path) as f:
            return f.read()

    def terminate(self, timeout=30):
        """SIGTERM; returns the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self):
        self.proc.kill()
        self.proc.wait(timeout=10)

    def close(self):
        if self.proc.poll() is None:
            self.kill()
        self.proc.stdout.close()
        self.channel.close()
        self._log.close()


class BearerToken(grpc.UnaryUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds `authorization: Bearer <token>` to every call of a channel."""

    def __init__(self, token):
        self.metadata = (("authorization", f"Bearer {token}"),)

    def _details(self, details):
        metadata = tuple(details.metadata or ()) + self.metadata
        return details._replace(metadata=metadata) if hasattr(details, "_replace") else \
            _CallDetails(details.method, details.timeout, metadata, details.credentials,
                         getattr(details, "wait_for_ready", None),
                         getattr(details, "compression", None))

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_stream(self, continuation, details, requests):
        return continuation(self._details(details), requests)


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, method, timeout, metadata, credentials, wait_for_ready, compression):
        self.method, self.timeout, self.metadata = method, timeout, metadata
        self.credentials, self.wait_for_ready, self.compression = (credentials, wait_for_ready,
                                                                    compression)


class Stream:
    """One Chat call; requests go through a queue so that a cancel can be
    sent while responses stream back."""

    def __init__(self, stub, timeout=60, metadata=None):
        self._requests = queue.Queue()
        self.call = stub.Chat(iter(self._requests.get, None), timeout=timeout,
                              metadata=metadata)

    def send(self, **kind):
        self._requests.put(pb.ChatRequest(**kind))

    def recv(self):
        return next(self.call)

    def close(self):
        self._requests.put(None)

    def open(self, session_id, create=True, config=None):
        self.send(open=pb.OpenSession(session_id=session_id, create_if_missing=create,
                                      config=config))
        response = self.recv()
        assert response.HasField("opened"), response
        return response.opened

    def turn(self, text, max_tokens=24, **fields):
        """Sends a turn; returns (token ids, text, TurnEnd)."""
        self.send(turn=pb.UserTurn(text=text, max_tokens=max_tokens, **fields))
        return self.read_turn()

    def read_turn(self):
        deltas, end = self.read_deltas()
        ids = [i for d in deltas for i in d.token_ids]
        return ids, "".join(d.text for d in deltas), end

    def read_deltas(self):
        """The turn's TokenDelta messages and its TurnEnd."""
        deltas = []
        while True:
            response = self.recv()
            if response.HasField("delta"):
                deltas.append(response.delta)
            elif response.HasField("turn_end"):
                return deltas, response.turn_end

    def finish(self):
        """Half-closes and waits for the end of the call (raises on error)."""
        self.close()
        for _ in self.call:
            pass


def reattach(stub, session_id, timeout=5.0):
    """Opens `session_id` on a new stream, retrying while the server still
    holds it for a stream that ended (FAILED_PRECONDITION); returns (stream,
    SessionOpened). Raises AssertionError when it is not released in time."""
    deadline = time.time() + timeout
    while True:
        stream = Stream(stub)
        try:
            return stream, stream.open(session_id, create=False)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.FAILED_PRECONDITION:
                raise
            if time.time() > deadline:
                raise AssertionError(f"session {session_id} not released in {timeout} s")
            time.sleep(0.02)


def free_port():
    """A loopback TCP port nobody listens on right now."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def routed(session_id):
    """gRPC metadata routing a call to the session's replica."""
    return (("x-session-id", session_id),)


def metrics(port):
    """The server's /metrics as {'name{labels}': value}."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def rss_kb(pid):
    """Resident set size of process `pid` (kB), from /proc."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def code_of(fn):
    """The gRPC status code `fn` raises (None when it returns)."""
    try:
        fn()
    except grpc.RpcError as e:
        return e.code()
    return None


def turns_alone(stub, session_id, texts, max_tokens=20, config=None):
    """Token ids of each turn, the session alone on its stream."""
    stream = Stream(stub)
    stream.open(session_id, config=config)
    ids = [stream.turn(t, max_tokens=max_tokens)[0] for t in texts]
    stream.finish()
    return ids


CLUSTER_SCRIPT = os.path.join(ROOT, "scripts", "cluster")


def have_ceph():
    import shutil
    return all(shutil.which(b) for b in ("ceph-mon", "ceph-osd", "ceph", "rados"))


class CephCluster:
    """A throwaway Ceph cluster (scripts/cluster): one mon and `osds` memstore
    OSDs as processes of this test, stopped by the pids the script recorded."""

    def __init__(self, osds=3, pool_size=1):
        import shutil
        # Short: the daemons' admin sockets live in it (107-byte path limit).
        self.dir = tempfile.mkdtemp(prefix="ss-ceph-", dir="/tmp")
        out = subprocess.run([CLUSTER_SCRIPT, "start", self.dir, "--osds", str(osds),
                              "--pool-size", str(pool_size)],
                             capture_output=True, text=True, timeout=180)
        if out.returncode != 0:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise RuntimeError(f"scripts/cluster start failed: {out.stderr}")
        self.conf = out.stdout.strip().splitlines()[-1]

    def url(self, namespace):
        """The --store URL of `namespace` in the pool `sessions`."""
        return f"rados://sessions?conf={self.conf}&ns={namespace}"

    def rados(self, namespace, *args):
        """`rados` on the pool `sessions`, namespace `namespace`: stdout."""
        out = subprocess.run(["rados", "-c", self.conf, "-p", "sessions", "-N", namespace,
                              *args], capture_output=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"rados {args}: {out.stderr.decode()}")
        return out.stdout

    def script(self, *args):
        return subprocess.run([CLUSTER_SCRIPT, *args[:1], self.dir, *args[1:]],
                              capture_output=True, text=True, timeout=180)

    def stop(self):
        import shutil
        subprocess.run([CLUSTER_SCRIPT, "stop", self.dir], timeout=180)
        shutil.rmtree(self.dir, ignore_errors=True)


class CephServerTest(unittest.TestCase):
    """A test class with one Ceph cluster (CLUSTER_ARGS for CephCluster) and
    servers on it, each stopped by its pid at the end of its test (a paused
    one is resumed first)."""

    CLUSTER_ARGS = {}

    @classmethod
    def setUpClass(cls):
        cls.cluster = CephCluster(**cls.CLUSTER_ARGS)

    @classmethod
    def tearDownClass(cls):
        cls.cluster.stop()

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="sinkserve-ceph-test-")
        self.servers = []

    def tearDown(self):
        import shutil
        for s in self.servers:
            if s.proc.poll() is None:
                os.kill(s.proc.pid, signal.SIGCONT)  # a test that failed while it was paused
            s.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def start_server(self, namespace, *extra):
        """`sinkserve serve` on the cluster's pool, namespace `namespace`."""
        server = Server(os.path.join(self.tmp, f"r{len(self.servers)}"), *extra,
                        store=self.cluster.url(namespace))
        self.servers.append(server)
        return server
