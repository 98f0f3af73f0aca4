"""Bearer-key checks: the API key on every /v1 route; the admin key for steering writes (and it grants API use)."""

from __future__ import annotations

import hmac

from fastapi import Request

from server.errors import AuthenticationError, PermissionDeniedError


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _matches(token: str | None, key: str | None) -> bool:
    return token is not None and key is not None and hmac.compare_digest(token.encode(), key.encode())


class KeyPolicy:
    def __init__(self, api_key: str | None, admin_key: str | None) -> None:
        self.api_key = api_key
        self.admin_key = admin_key

    def require_api(self, request: Request) -> None:
        if self.api_key is None and self.admin_key is None:
            return
        token = _bearer(request)
        if self.api_key is None and token is None:
            return  # only an admin key is set: reads stay open, writes need the admin key
        if _matches(token, self.api_key) or _matches(token, self.admin_key):
            return
        raise AuthenticationError("missing or invalid API key (send 'Authorization: Bearer <key>')")

    def require_admin(self, request: Request) -> None:
        token = _bearer(request)
        if _matches(token, self.admin_key):
            return
        if self.admin_key is None:
            if self.api_key is None or _matches(token, self.api_key):
                return  # no admin key configured: the API key (or an open server) allows writes
            raise AuthenticationError("missing or invalid API key (send 'Authorization: Bearer <key>')")
        if _matches(token, self.api_key):
            raise PermissionDeniedError("this operation needs the admin key")
        raise AuthenticationError("missing or invalid admin key (send 'Authorization: Bearer <key>')")
