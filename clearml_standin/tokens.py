"""Who may call the stand-in: the stack's key pair (HTTP Basic, as `auth.login` is called) or a
session token issued for it (Bearer, as the SDK and the agent send on every other request, to the
API and to the file server alike).

Tokens are HS256 JWTs with a bounded life (a longer one asked for is cut to the longest, as
clearml-server caps it) and tied to the key pair they were issued for, so rotating the key revokes
every token issued before.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
from dataclasses import dataclass

import jwt

API_VERSION = "2.23"
SERVER_VERSION = "1.17.0"
TOKEN_TTL_S = 30 * 24 * 3600

# clearml-server's subcodes for a refused caller
NOT_AUTHORIZED = 10
TOKEN_EXPIRED = 21
TOKEN_INVALID = 22


@dataclass
class Credentials:
    access_key: str
    secret_key: str
    token_secret: str
    company: str = "local"
    user_id: str = "local-user"
    user_name: str = "Local User"


class Unauthorized(Exception):
    def __init__(self, msg: str, subcode: int = NOT_AUTHORIZED) -> None:
        super().__init__(msg)
        self.msg = msg
        self.subcode = subcode


class Authenticator:
    def __init__(self, creds: Credentials) -> None:
        self.creds = creds

    def issue(self, expiration_sec: int | None = None) -> str:
        now = int(time.time())
        claims = {
            "identity": {
                "company": self.creds.company,
                "company_name": self.creds.company,
                "user": self.creds.user_id,
                "user_name": self.creds.user_name,
                "role": "admin",
            },
            "api_version": API_VERSION,
            "server_version": SERVER_VERSION,
            "server_build": "standin",
            "feature_set": "basic",
            "env": "local",
            "iat": now,
            "exp": now + min(max(int(expiration_sec or TOKEN_TTL_S), 1), TOKEN_TTL_S),
            "key": self._key_tag(),
        }
        return jwt.encode(claims, self.creds.token_secret, algorithm="HS256")

    def _key_tag(self) -> str:
        return hashlib.sha256(f"{self.creds.access_key}:{self.creds.secret_key}".encode()).hexdigest()[:16]

    def check(self, authorization: str, what: str) -> None:
        """Accept the key pair (Basic) or a live token issued for it (Bearer); else Unauthorized."""
        scheme, _, value = authorization.partition(" ")
        scheme = scheme.lower()
        if scheme == "basic":
            try:
                key, _, secret = base64.b64decode(value, validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError, ValueError):
                raise Unauthorized("Unauthorized (malformed basic auth)") from None
            if key != self.creds.access_key or secret != self.creds.secret_key:
                raise Unauthorized("Unauthorized (invalid credentials)")
            return
        if scheme == "bearer":
            try:
                claims = jwt.decode(value, self.creds.token_secret, algorithms=["HS256"])
            except jwt.ExpiredSignatureError:
                raise Unauthorized("Unauthorized (token expired)", TOKEN_EXPIRED) from None
            except jwt.PyJWTError:
                raise Unauthorized("Unauthorized (invalid token)", TOKEN_INVALID) from None
            if claims.get("key") != self._key_tag():
                raise Unauthorized("Unauthorized (token issued for another key)", TOKEN_INVALID)
            return
        raise Unauthorized(f"Unauthorized (missing credentials) for {what}")
