"""Server configuration and client material for each way of authenticating to nats-server, made at test time.

* user/password and token: ``authorization { ... }`` snippets;
* NKEY: a user key pair (``nkeys``), the server trusting its public key, the client holding a seed file;
* credentials file: a decentralized-auth chain (operator -> account -> user) of NATS JWTs (v2) signed here with
  ``nkeys``, the server trusting the operator and preloading the account (``resolver: MEMORY``), the client
  holding a standard ``.creds`` file;
* TLS: a CA and a server certificate for 127.0.0.1/localhost made with ``cryptography``.

Nothing here talks to the network; every secret is fresh per call.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import json
import os
import secrets
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nkeys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "JwtChain",
    "NKey",
    "TlsMaterial",
    "client_ssl_context",
    "creds_text",
    "jwt_server_config",
    "make_jwt_chain",
    "make_tls_material",
    "new_nkey",
    "nkey_server_config",
    "token_server_config",
    "tls_server_config",
    "user_password_server_config",
    "write_creds",
    "write_seed",
]


def _quote(value: str) -> str:
    """A nats-server config string literal (JSON quoting is a subset the config parser accepts)."""
    return json.dumps(value)


# ------------------------------------------------------------------------------------------ user/password, token

def user_password_server_config(user: str, password: str) -> str:
    return f"authorization {{\n  user: {_quote(user)}\n  password: {_quote(password)}\n}}\n"


def token_server_config(token: str) -> str:
    return f"authorization {{\n  token: {_quote(token)}\n}}\n"


# ------------------------------------------------------------------------------------------------------ NKEYs

@dataclass(frozen=True)
class NKey:
    """An nkey pair: ``seed`` (``S...``, secret) and ``public`` (``U...``, ``A...``, ``O...``)."""

    seed: str
    public: str

    def sign(self, data: bytes) -> bytes:
        key_pair = nkeys.from_seed(bytearray(self.seed.encode()))
        try:
            return bytes(key_pair.sign(data))
        finally:
            key_pair.wipe()


_PREFIXES = {
    "user": nkeys.PREFIX_BYTE_USER,
    "account": nkeys.PREFIX_BYTE_ACCOUNT,
    "operator": nkeys.PREFIX_BYTE_OPERATOR,
}


def new_nkey(kind: str = "user") -> NKey:
    """A fresh nkey pair of ``kind`` ("user", "account" or "operator")."""
    seed = nkeys.encode_seed(os.urandom(32), _PREFIXES[kind])
    key_pair = nkeys.from_seed(bytearray(seed))
    try:
        public = key_pair.public_key.decode()
    finally:
        key_pair.wipe()
    return NKey(seed=seed.decode(), public=public)


def nkey_server_config(public_key: str) -> str:
    return f"authorization {{\n  users = [\n    {{ nkey: {_quote(public_key)} }}\n  ]\n}}\n"


def write_seed(path: Path, seed: str) -> Path:
    """nats-py's ``nkeys_seed`` option is a path to a file holding the seed (``nkeys_seed_str`` is the string)."""
    path.write_text(seed + "\n")
    path.chmod(0o600)
    return path


# ------------------------------------------------------------------------------------------- JWT (creds file)

def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims_hash(claims: dict[str, Any]) -> str:
    """The ``jti``: base32 (no padding) of SHA-512/256 over the claims without ``jti``, like nats-io/jwt."""
    data = json.dumps({k: v for k, v in claims.items() if k != "jti"}, separators=(",", ":")).encode()
    try:
        digest = hashlib.new("sha512_256", data).digest()
    except ValueError:  # an OpenSSL without SHA-512/256: the server does not check the jti, any unique id does
        digest = hashlib.sha256(data).digest()
    return base64.b32encode(digest).rstrip(b"=").decode()


def encode_jwt(issuer: NKey, subject: str, name: str, nats: dict[str, Any]) -> str:
    """A NATS JWT v2 (``alg: ed25519-nkey``) for ``subject``, signed by ``issuer`` over ``header.payload``."""
    header = _b64url(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}, separators=(",", ":")).encode())
    claims: dict[str, Any] = {"iat": int(time.time()), "iss": issuer.public, "name": name, "sub": subject}
    claims["jti"] = _claims_hash(claims)
    claims["nats"] = nats
    payload = _b64url(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = f"{header}.{payload}"
    return f"{signing_input}.{_b64url(issuer.sign(signing_input.encode()))}"


@dataclass(frozen=True)
class JwtChain:
    operator: NKey
    system_account: NKey
    account: NKey
    user: NKey
    operator_jwt: str
    system_account_jwt: str
    account_jwt: str
    user_jwt: str


_UNLIMITED = -1


def make_jwt_chain(*, account_name: str = "PBUFFER", user_name: str = "relay") -> JwtChain:
    """Operator -> account (JetStream enabled, no limits) -> user, all self-made: what ``nsc`` would produce.

    A system account is part of it: a server in operator mode cannot start JetStream without one ("setting up
    internal jetstream subscriptions failed: system account not setup").
    """
    operator, system, account, user = (new_nkey("operator"), new_nkey("account"), new_nkey("account"),
                                       new_nkey("user"))
    operator_jwt = encode_jwt(operator, operator.public, "pbuffer-test-operator",
                              {"system_account": system.public, "type": "operator", "version": 2})
    system_jwt = encode_jwt(operator, system.public, "SYS", {
        "limits": {"subs": _UNLIMITED, "data": _UNLIMITED, "payload": _UNLIMITED, "imports": _UNLIMITED,
                   "exports": _UNLIMITED, "wildcards": True, "conn": _UNLIMITED, "leaf": _UNLIMITED},
        "default_permissions": {"pub": {}, "sub": {}},
        "type": "account",
        "version": 2,
    })
    limits = {
        # NATS limits
        "subs": _UNLIMITED, "data": _UNLIMITED, "payload": _UNLIMITED,
        # account limits
        "imports": _UNLIMITED, "exports": _UNLIMITED, "wildcards": True, "conn": _UNLIMITED, "leaf": _UNLIMITED,
        # JetStream limits: any non-zero storage enables JetStream for the account
        "mem_storage": _UNLIMITED, "disk_storage": _UNLIMITED, "streams": _UNLIMITED, "consumer": _UNLIMITED,
    }
    account_jwt = encode_jwt(operator, account.public, account_name, {
        "limits": limits,
        "default_permissions": {"pub": {}, "sub": {}},
        "type": "account",
        "version": 2,
    })
    user_jwt = encode_jwt(account, user.public, user_name, {
        "pub": {}, "sub": {},
        "subs": _UNLIMITED, "data": _UNLIMITED, "payload": _UNLIMITED,
        "type": "user",
        "version": 2,
    })
    return JwtChain(operator, system, account, user, operator_jwt, system_jwt, account_jwt, user_jwt)


def jwt_server_config(chain: JwtChain) -> str:
    """Trust the chain's operator and preload its accounts (memory resolver: no resolver service needed)."""
    return (
        f"operator: {_quote(chain.operator_jwt)}\n"
        f"system_account: {chain.system_account.public}\n"
        "resolver: MEMORY\n"
        "resolver_preload: {\n"
        f"  {chain.system_account.public}: {_quote(chain.system_account_jwt)}\n"
        f"  {chain.account.public}: {_quote(chain.account_jwt)}\n"
        "}\n"
    )


def creds_text(user_jwt: str, user_seed: str) -> str:
    """The standard ``.creds`` layout (what ``nsc generate creds`` writes)."""
    return (
        "-----BEGIN NATS USER JWT-----\n"
        f"{user_jwt}\n"
        "------END NATS USER JWT------\n"
        "\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n"
        "NKEYs are sensitive and should be treated as secrets.\n"
        "\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{user_seed}\n"
        "------END USER NKEY SEED------\n"
        "\n"
        "*************************************************************\n"
    )


def write_creds(path: Path, user_jwt: str, user_seed: str) -> Path:
    path.write_text(creds_text(user_jwt, user_seed))
    path.chmod(0o600)
    return path


# ------------------------------------------------------------------------------------------------------- TLS

@dataclass(frozen=True)
class TlsMaterial:
    ca_cert: Path
    server_cert: Path
    server_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pbuffer tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_tls_material(directory: Path, *, hosts: tuple[str, ...] = ("localhost", "127.0.0.1")) -> TlsMaterial:
    """A throwaway CA and a server certificate (signed by it) valid for ``hosts``, written as PEM files."""
    now = datetime.datetime.now(datetime.timezone.utc)
    not_before, not_after = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(f"pbuffer test CA {secrets.token_hex(4)}")
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before).not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    server_key = ec.generate_private_key(ec.SECP256R1())
    alt_names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt_names.append(x509.DNSName(host))
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0])).issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before).not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=True,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    directory.mkdir(parents=True, exist_ok=True)
    material = TlsMaterial(directory / "ca.pem", directory / "server.pem", directory / "server-key.pem")
    material.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    material.server_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    material.server_key.write_bytes(server_key.private_bytes(serialization.Encoding.PEM,
                                                             serialization.PrivateFormat.PKCS8,
                                                             serialization.NoEncryption()))
    material.server_key.chmod(0o600)
    return material


def tls_server_config(material: TlsMaterial, *, timeout: float = 5) -> str:
    """TLS required for every client; no client certificates asked for."""
    return (
        "tls {\n"
        f"  cert_file: {_quote(str(material.server_cert))}\n"
        f"  key_file: {_quote(str(material.server_key))}\n"
        f"  timeout: {timeout}\n"
        "}\n"
    )


def client_ssl_context(ca_cert: Path | None) -> ssl.SSLContext:
    """A client context that verifies the server against ``ca_cert`` (``None``: the system's CAs only)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if ca_cert is not None:
        context.load_verify_locations(cafile=str(ca_cert))
    return context
