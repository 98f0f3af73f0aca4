"""Bearer keys. vLLM's own `--api-key` middleware guards every `/v1` route (ours included); `--admin-key` is
added to the keys it accepts, and steering writes need it. Comparisons are constant-time."""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from fastapi import Request

from steering.errors import AuthenticationError, PermissionDeniedError


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _matches(token: str | None, key: str | None) -> bool:
    return token is not None and key is not None and hmac.compare_digest(token.encode(), key.encode())


class KeyPolicy:
    def __init__(self, api_keys: Sequence[str], admin_key: str | None) -> None:
        self.api_keys = [k for k in api_keys if k and k != admin_key]
        self.admin_key = admin_key

    def _api(self, token: str | None) -> bool:
        return any(_matches(token, key) for key in self.api_keys)

    def require_api(self, request: Request) -> None:
        """The same rule as vLLM's middleware (a second check for routes outside `/v1`)."""
        if not self.api_keys:
            return  # no --api-key: reads are open (writes still need the admin key when one is set)
        token = _bearer(request)
        if self._api(token) or _matches(token, self.admin_key):
            return
        raise AuthenticationError("missing or invalid API key (send 'Authorization: Bearer <key>')")

    def require_admin(self, request: Request) -> None:
        token = _bearer(request)
        if _matches(token, self.admin_key):
            return
        if self.admin_key is None:
            if not self.api_keys or self._api(token):
                return  # no admin key configured: the API key (or an open server) allows writes
            raise AuthenticationError("missing or invalid API key (send 'Authorization: Bearer <key>')")
        if self._api(token):
            raise PermissionDeniedError("this operation needs the admin key")
        raise AuthenticationError("missing or invalid admin key (send 'Authorization: Bearer <key>')")
