#!/usr/bin/python3
"""Several `sinkserve serve` replicas behind a real nginx running the shipped
deploy/nginx/sinkserve.conf, unmodified: nginx routes every call by its
x-session-id metadata onto a consistent hash ring, so all turns of a session
reach one replica. Also runs scripts/replicas (the local demo) start/stop.

nginx runs as a plain process of this test (`daemon off`, its own main
nginx.conf in a temp dir that includes the shipped file and writes the two
files it includes) and is stopped by its pid. Skipped where nginx is not
installed (scripts/setup installs it).
"""

import os
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

import grpc

from server_testlib import (MODEL, ROOT, SINKSERVE, Server, Stream, free_port, health, pb,
                            pb_grpc, routed)

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx")
                                  else None)
CONF = os.path.join(ROOT, "deploy", "nginx", "sinkserve.conf")
POLICY = "streaming(4,60)"


def main_conf(run_dir):
    """A main nginx.conf for an unprivileged nginx that includes the shipped
    file; its relative includes then resolve in `run_dir`."""
    # As root nginx chowns its temp dirs to `nobody`, which a user namespace
    # (Bazel's sandbox) may not map: keep the workers as the caller.
    user = "user root root;\n" if os.geteuid() == 0 else ""
    return user + f"""daemon off;
worker_processes 1;
pid {run_dir}/nginx.pid;
error_log {run_dir}/error.log;
events {{ worker_connections 256; }}
http {{
    access_log {run_dir}/access.log;
    client_body_temp_path {run_dir}/body;
    proxy_temp_path {run_dir}/proxy;
    fastcgi_temp_path {run_dir}/fastcgi;
    uwsgi_temp_path {run_dir}/uwsgi;
    scgi_temp_path {run_dir}/scgi;
    include {CONF};
}}
"""


class Nginx:
    def __init__(self, run_dir, upstreams):
        os.makedirs(run_dir, exist_ok=True)
        self.port = free_port()
        self.run_dir = run_dir
        self._write_upstreams(upstreams)
        with open(os.path.join(run_dir, "sinkserve-listen.conf"), "w") as f:
            f.write(f"listen 127.0.0.1:{self.port} http2;\n")
        conf = os.path.join(run_dir, "nginx.conf")
        with open(conf, "w") as f:
            f.write(main_conf(run_dir))
        self.error_log = os.path.join(run_dir, "error.log")
        self.proc = subprocess.Popen([NGINX, "-e", self.error_log, "-c", conf],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True)
        self.address = f"127.0.0.1:{self.port}"
        # Wait for the port with plain sockets: a gRPC channel that saw a
        # refused connection backs off for seconds before trying again.
        deadline = time.time() + 30
        while not _accepts(self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {self.proc.stderr.read()}")
            if time.time() > deadline:
                raise RuntimeError(f"nginx not listening on {self.address} after 30 s")
            time.sleep(0.05)
        self.channel = grpc.insecure_channel(self.address)
        self.stub = pb_grpc.SinkServeStub(self.channel)
        health(self.channel, timeout=10)

    def _write_upstreams(self, addresses):
        with open(os.path.join(self.run_dir, "sinkserve-upstreams.conf"), "w") as f:
            for address in addresses:
                f.write(f"server {address} max_fails=1 fail_timeout=30s;\n")

    def set_upstreams(self, addresses):
        """Replaces the replica list and reloads nginx (SIGHUP to its pid),
        as the Kubernetes manifest's reloader does; a reload also clears its
        marks of failed replicas."""
        self._write_upstreams(addresses)
        self.proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)  # new workers up, old ones finishing their calls

    def stop(self):
        self.channel.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful shutdown, by its pid
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stderr.close()


def sessions_on(server):
    return {s.session_id: s for s in server.stub.ListSessions(pb.ListSessionsRequest()).sessions}


@unittest.skipIf(NGINX is None, "nginx is not installed (scripts/setup)")
class ReplicasTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="sinkserve-replicas-")
        self.replicas = [Server(os.path.join(self.tmp, f"db{i}"), "--default-policy", POLICY)
                         for i in range(2)]
        self.nginx = Nginx(os.path.join(self.tmp, "nginx"), [r.address for r in self.replicas])

    def tearDown(self):
        self.nginx.stop()
        for r in self.replicas:
            r.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def chat_turn(self, session_id, text, turn_id):
        """One turn on a stream of its own through nginx: every turn is
        routed afresh."""
        stream = Stream(self.nginx.stub, metadata=routed(session_id))
        stream.open(session_id, create=True, config=pb.SessionConfig(chat_template="raw"))
        ids, _, end = stream.turn(text, max_tokens=8, turn_id=turn_id)
        stream.finish()
        return ids, end

    def test_sessions_stick_to_one_replica_and_spread(self):
        turns = 3
        names = [f"user-{i}" for i in range(8)]
        for t in range(turns):
            for name in names:
                self.chat_turn(name, f"Once upon a time {t}", f"{name}-{t}")
        placed = [sessions_on(r) for r in self.replicas]
        # With a ring drawn from this run's ports, all eight may land on one
        # replica (about 1 run in 100): add sessions until they spread.
        while not all(placed) and len(names) < 40:
            name = f"user-{len(names)}"
            names.append(name)
            for t in range(turns):
                self.chat_turn(name, f"Once upon a time {t}", f"{name}-{t}")
            placed = [sessions_on(r) for r in self.replicas]
        for name in names:
            holders = [i for i, p in enumerate(placed) if name in p]
            # On exactly one replica, and every turn of it landed there (a
            # turn routed elsewhere would have created a second session).
            self.assertEqual(len(holders), 1, (name, holders))
            self.assertEqual(placed[holders[0]][name].rounds, turns, name)
        self.assertTrue(all(placed), [sorted(p) for p in placed])
        # A retried turn id replays on the same replica through nginx.
        ids, end = self.chat_turn(names[0], "again", f"{names[0]}-{turns - 1}")
        self.assertTrue(end.replayed)
        # Unary calls route by the header too.
        holder = next(i for i, p in enumerate(placed) if names[0] in p)
        info = self.nginx.stub.GetSession(pb.GetSessionRequest(session_id=names[0]),
                                          metadata=routed(names[0]))
        self.assertEqual(info.rounds, turns)

        # A replica that goes away: nginx passes its sessions to the other
        # one (connection refused -> next upstream; a new session there,
        # since the stores are not shared yet).
        gone = self.replicas[holder]
        self.assertEqual(gone.terminate(), 0)
        ids, end = self.chat_turn(names[0], "Once upon a time", "after-failover")
        self.assertFalse(end.replayed)
        self.assertEqual(len(ids), 8)
        self.assertIn(names[0], sessions_on(self.replicas[1 - holder]))


@unittest.skipIf(NGINX is None, "nginx is not installed (scripts/setup)")
class ReplicasScriptTest(unittest.TestCase):
    def test_start_chat_stop(self):
        run_dir = tempfile.mkdtemp(prefix="sinkserve-replicas-script-")
        # nginx on PORT, replicas on PORT+1.., metrics on PORT+101..: find a
        # base with all of them free.
        for _ in range(50):
            port = free_port()
            if port > 60000:
                continue
            ports = [port, port + 1, port + 2, port + 101, port + 102]
            if all(p == port or _is_free(p) for p in ports):
                break
        env = dict(os.environ, RUN_DIR=run_dir, PORT=str(port), BIN=SINKSERVE, MODEL=MODEL,
                   SERVE_ARGS="--temperature 0 --threads 1 --sync=false")
        script = os.path.join(ROOT, "scripts", "replicas")
        pids = {}
        try:
            start = subprocess.run([script, "start", "2"], env=env, capture_output=True,
                                   text=True, timeout=120)
            self.assertEqual(start.returncode, 0, start.stdout + start.stderr)
            pids = {}
            for name in ("nginx", "replica-1", "replica-2"):
                with open(os.path.join(run_dir, "pids", f"{name}.pid")) as f:
                    pids[name] = int(f.read())
                os.kill(pids[name], 0)  # alive
            chat = subprocess.run(
                [SINKSERVE, "chat", "--server", f"127.0.0.1:{port}", "--session", "demo",
                 "--create", "--chat-template", "raw", "--message", "Once upon a time",
                 "--max-tokens", "8"], capture_output=True, text=True, timeout=60)
            self.assertEqual(chat.returncode, 0, chat.stderr)
            self.assertTrue(chat.stdout.strip())
            status = subprocess.run([script, "status"], env=env, capture_output=True,
                                    text=True, timeout=30)
            self.assertIn("replica-2: pid", status.stdout)
        finally:
            stop = subprocess.run([script, "stop"], env=env, capture_output=True, text=True,
                                  timeout=120)
        self.assertEqual(stop.returncode, 0, stop.stderr)
        for name, pid in pids.items():
            self.assertFalse(_alive(pid), name)
        self.assertEqual(os.listdir(os.path.join(run_dir, "pids")), [])
        shutil.rmtree(run_dir, ignore_errors=True)


def _accepts(port):
    import socket
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _is_free(port):
    import socket
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes (its parent, the script, exited).
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ")[1][0] != "Z"


if __name__ == "__main__":
    unittest.main(verbosity=2)
