"""Shared pieces of the security end-to-end tests: a test PKI made with the
openssl CLI, API keys from `sinkserve keys new`, a JWT issuer independent of
the server's code, TLS stubs, and a base class that makes them once per
class (used by server_security_test.py and server_rados_test.py).
"""

import json
import os
import shutil
import subprocess
import tempfile
import time
import unittest

import grpc

from server_testlib import SINKSERVE, BearerToken, Server, pb, pb_grpc

C = grpc.StatusCode
POLICY = "streaming(4,60)"


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


class Pki:
    """Two CAs, server certificates (one expired), client certificates."""

    CA_CONF = """[ca]
default_ca = ca_default
[ca_default]
database = index.txt
new_certs_dir = .
serial = serial
default_md = sha256
policy = policy_any
copy_extensions = copy
[policy_any]
commonName = supplied
"""

    def __init__(self, root):
        self.root = root
        for ca in ("ca1", "ca2"):
            openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-days", "30",
                    "-subj", f"/CN=sinkserve test {ca}", cwd=root)
        self.server("srv1", "ca1")
        self.server("srv2", "ca2")
        self.server("expired", "ca1", expired=True)
        self.client("client1", "ca1")
        self.client("client2", "ca2")

    def path(self, name):
        return os.path.join(self.root, name)

    def read(self, name):
        with open(self.path(name), "rb") as f:
            return f.read()

    def _csr(self, name, cn, san):
        openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}",
                *(["-addext", f"subjectAltName={san}"] if san else []), cwd=self.root)

    def server(self, name, ca, expired=False):
        self._csr(name, "localhost", "DNS:localhost,IP:127.0.0.1")
        if expired:
            with open(self.path("ca.cnf"), "w") as f:
                f.write(self.CA_CONF)
            open(self.path("index.txt"), "w").close()
            with open(self.path("serial"), "w") as f:
                f.write("01\n")
            openssl("ca", "-batch", "-config", "ca.cnf", "-cert", f"{ca}.pem", "-keyfile",
                    f"{ca}.key", "-in", f"{name}.csr", "-out", f"{name}.pem", "-notext",
                    "-startdate", "20200101000000Z", "-enddate", "20200102000000Z",
                    cwd=self.root)
        else:
            with open(self.path(f"{name}.ext"), "w") as f:
                f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
            openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey",
                    f"{ca}.key", "-CAcreateserial", "-days", "30", "-out", f"{name}.pem",
                    "-extfile", f"{name}.ext", cwd=self.root)

    def client(self, name, ca):
        self._csr(name, name, None)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
                "-CAcreateserial", "-days", "30", "-out", f"{name}.pem", cwd=self.root)

    def credentials(self, ca="ca1", client=None):
        return grpc.ssl_channel_credentials(
            root_certificates=self.read(f"{ca}.pem"),
            private_key=self.read(f"{client}.key") if client else None,
            certificate_chain=self.read(f"{client}.pem") if client else None)


def new_key(name, tenant, role="user"):
    """(key, key-file line) from `sinkserve keys new`."""
    out = subprocess.run([SINKSERVE, "keys", "new", "--name", name, "--tenant", tenant,
                          "--role", role], check=True, capture_output=True, text=True)
    return out.stdout.strip(), out.stderr.strip().splitlines()[-1]


def stub_for(server, credentials, token=None):
    channel = grpc.secure_channel(server.address, credentials)
    if token:
        channel = grpc.intercept_channel(channel, BearerToken(token))
    return pb_grpc.SinkServeStub(channel)


def config():
    c = pb.SessionConfig()
    c.policy.kind = pb.POLICY_STREAMING
    c.policy.sinks, c.policy.window = 4, 60
    return c


def error_of(fn):
    """(code, details) of the gRPC error `fn` raises."""
    try:
        fn()
    except grpc.RpcError as e:
        return e.code(), e.details()
    raise AssertionError("no error")


def can_call(stub, timeout=5):
    """Whether a ListSessions call gets through (an answer of any status
    other than UNAVAILABLE means the TLS handshake passed)."""
    try:
        stub.ListSessions(pb.ListSessionsRequest(), timeout=timeout)
        return True
    except grpc.RpcError as e:
        return e.code() != C.UNAVAILABLE


class SecurityTestBase(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="sinkserve-security-")
        cls.pki = Pki(cls.tmp)
        cls.keys = {}
        lines = []
        for name, tenant, role in (("alpha-app", "alpha", "user"), ("beta-app", "beta", "user"),
                                   ("ops", "ops", "admin"), ("legacy", "default", "user")):
            cls.keys[name], line = new_key(name, tenant, role)
            lines.append(line)
        cls.key_file = os.path.join(cls.tmp, "keys.txt")
        with open(cls.key_file, "w") as f:
            f.write("# test keys\n" + "\n".join(lines) + "\n")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def tls_server(self, db, *extra, client_ca=None, cert="srv1", **kw):
        args = ["--tls-cert", self.pki.path(f"{cert}.pem"), "--tls-key", self.pki.path(f"{cert}.key"),
                "--default-policy", POLICY, *extra]
        if client_ca:
            args += ["--tls-client-ca", self.pki.path(f"{client_ca}.pem")]
        creds = self.pki.credentials("ca1", "client1" if client_ca else None)
        server = Server(db, *args, credentials=creds, **kw)
        self.addCleanup(server.close)
        return server


def b64url(data):
    import base64
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class JwtIssuer:
    """An identity provider: an EC P-256 and an RSA key, its JWKS, and JWTs
    signed by python3-cryptography (independent of the server's OpenSSL code)."""

    def __init__(self):
        from cryptography.hazmat.primitives.asymmetric import ec, rsa
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwks(self):
        ec_pub = self.ec.public_key().public_numbers()
        rsa_pub = self.rsa.public_key().public_numbers()
        return json.dumps({"keys": [
            {"kty": "EC", "crv": "P-256", "kid": "ec", "use": "sig",
             "x": b64url(ec_pub.x.to_bytes(32, "big")), "y": b64url(ec_pub.y.to_bytes(32, "big"))},
            {"kty": "RSA", "kid": "rsa", "alg": "RS256",
             "n": b64url(rsa_pub.n.to_bytes((rsa_pub.n.bit_length() + 7) // 8, "big")),
             "e": b64url(rsa_pub.e.to_bytes(3, "big"))}]})

    def token(self, alg="ES256", **overrides):
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec, padding
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
        claims = {"iss": "https://idp.test", "aud": "sinkserve", "sub": "svc-1",
                  "tenant": "alpha", "exp": int(time.time()) + 300}
        claims.update(overrides)
        header = {"alg": alg, "typ": "JWT", "kid": "ec" if alg == "ES256" else "rsa"}
        signing_input = (b64url(json.dumps(header).encode()) + "." +
                         b64url(json.dumps(claims).encode())).encode()
        if alg == "ES256":
            r, s = decode_dss_signature(self.ec.sign(signing_input, ec.ECDSA(hashes.SHA256())))
            signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        else:
            signature = self.rsa.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        return signing_input.decode() + "." + b64url(signature)
