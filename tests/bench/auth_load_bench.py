#!/usr/bin/python3
"""The hidden cost of security on the hot path: `sinkserve bench load`
against a plaintext server without authentication, one with API keys (the
client sends its key on every call) and one with API keys over TLS, run
alternately so that all see the same machine, ROUNDS times each; prints the
median of each figure and its ratio to the first.

  SINKSERVE_BIN=build SINKSERVE_SHARED=../shared tests/bench/auth_load_bench.py [ROUNDS]
"""

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from server_testlib import SINKSERVE, Server  # noqa: E402

import grpc  # noqa: E402

LOAD = ["--sessions", "8", "--turns", "8", "--tokens", "32", "--temperature", "0"]
FIGURES = {
    "tokens/s": r"= ([\d.]+) tokens/s",
    "ttft p50 ms": r"time to first token: p50 ([\d.]+) ms",
    "itl p50 ms": r"inter-token latency: p50 ([\d.]+) ms",
}


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    tmp = tempfile.mkdtemp(prefix="sinkserve-auth-bench-")
    try:
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                "-nodes", "-keyout", "key.pem", "-out", "cert.pem", "-days", "1", "-subj",
                "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1", cwd=tmp)
        keys = os.path.join(tmp, "keys.txt")
        token = subprocess.run([SINKSERVE, "keys", "new", "--name", "bench", "--tenant", "bench",
                                "--append", keys], check=True, capture_output=True,
                               text=True).stdout.strip()
        with open(os.path.join(tmp, "token"), "w") as f:
            f.write(token + "\n")
        with open(os.path.join(tmp, "cert.pem"), "rb") as f:
            ca = f.read()
        plain = Server(os.path.join(tmp, "plain"))
        secure = Server(os.path.join(tmp, "secure"), "--tls-cert", os.path.join(tmp, "cert.pem"),
                        "--tls-key", os.path.join(tmp, "key.pem"), "--auth", "api-keys",
                        "--api-keys", keys, credentials=grpc.ssl_channel_credentials(ca))
        keyed = Server(os.path.join(tmp, "keyed"), "--auth", "api-keys", "--api-keys", keys)
        setups = {
            "none, plaintext": [plain.address],
            "api key, plaintext": [keyed.address, "--token-file", os.path.join(tmp, "token")],
            "api key, TLS": [secure.address, "--tls-ca", os.path.join(tmp, "cert.pem"),
                             "--token-file", os.path.join(tmp, "token")],
        }
        results = {name: {k: [] for k in FIGURES} for name in setups}
        for r in range(rounds):
            for name, args in setups.items():
                out = subprocess.run([SINKSERVE, "bench", "load", "--server", *args, *LOAD],
                                     check=True, capture_output=True, text=True).stdout
                for figure, pattern in FIGURES.items():
                    results[name][figure].append(float(re.search(pattern, out).group(1)))
                print(f"round {r + 1} {name}: " + ", ".join(
                    f"{k} {v[-1]}" for k, v in results[name].items()), file=sys.stderr)
        base = results["none, plaintext"]
        print(f"bench load {' '.join(LOAD)}, {rounds} rounds, medians")
        for name, figures in results.items():
            line = ", ".join(f"{k} {statistics.median(v):.2f}"
                             f" ({statistics.median(v) / statistics.median(base[k]):.3f}x)"
                             for k, v in figures.items())
            print(f"  {name}: {line}")
        for s in (plain, keyed, secure):
            s.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
