"""Who may change the gateway: bearer tokens for admin calls, and the audit log of every one."""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.core.errors import PermissionDeniedError, UnauthenticatedError

audit_logger = logging.getLogger("gateway.audit")

BEARER = "bearer "


@dataclass(frozen=True, slots=True)
class AdminCall:
    """The credentials and origin of an admin call, as the front end received it."""

    authorization: str | None
    peer: str
    admin_elsewhere: str = ""
    """On a front end whose admin calls are served on a separate admin address: where."""
    repeated: bool = False
    """The call carried more than one Authorization value (refused: which one a proxy in front
    checked is anyone's guess)."""


@dataclass(frozen=True, slots=True)
class Admitted:
    """An admin call that passed the token check: who made it, and from where."""

    who: str
    peer: str


class AdminAuthorizer:
    """Checks `Authorization: Bearer <token>` against the configured tokens (token -> who).

    With no token configured every admin call is allowed (a gateway on loopback or behind an
    authenticating proxy); the audit log still records it."""

    def __init__(self, tokens: Mapping[str, str] | None = None) -> None:
        self._tokens = dict(tokens or {})

    @property
    def required(self) -> bool:
        return bool(self._tokens)

    def admit(self, call: AdminCall, action: str, target: str) -> Admitted:
        """Check the call's credentials before anything else is read; a refusal is audited."""
        try:
            who = self.authorize(call)
        except (UnauthenticatedError, PermissionDeniedError) as error:
            audit("?", call.peer, action, target, f"refused: {error.message}")
            raise
        return Admitted(who, call.peer)

    def authorize(self, call: AdminCall) -> str:
        """Who is calling, from the Authorization header or metadata; raises when refused."""
        authorization = call.authorization
        if call.admin_elsewhere:
            raise PermissionDeniedError(
                f"admin calls are served on the gateway's admin address only "
                f"({call.admin_elsewhere})"
            )
        if not self._tokens:
            return "anonymous"
        if call.repeated:
            raise UnauthenticatedError(
                "send one 'Authorization: Bearer <token>' header (gRPC: one 'authorization' "
                "metadata entry), not several"
            )
        if not authorization:
            raise UnauthenticatedError(
                "this admin call needs an 'Authorization: Bearer <token>' header (gRPC: "
                "'authorization' metadata)"
            )
        if not authorization[: len(BEARER)].lower() == BEARER:
            raise UnauthenticatedError("the Authorization value must be 'Bearer <token>'")
        # A header may carry any byte (decoded latin-1, or surrogate-escaped): never fails
        # here, it just matches no token.
        offered = authorization[len(BEARER) :].strip().encode("utf-8", "surrogateescape")
        who = None
        for token, name in self._tokens.items():
            if hmac.compare_digest(offered, token.encode()):
                who = name
        if who is None:
            raise PermissionDeniedError("the admin token is not valid")
        return who


def audit(who: str, peer: str, action: str, target: str, result: str) -> None:
    """One line per admin call: who, from where, what, on what, and how it ended."""
    # Names and messages come from clients: JSON-quoted (logfmt style), so no control
    # character reaches the log and no line can forge another.
    audit_logger.info(
        "audit who=%s peer=%s action=%s target=%s result=%s",
        who,
        peer,
        action,
        json.dumps(target),
        json.dumps(result),
    )


def read_token_file(text: str) -> dict[str, str]:
    """Tokens from a file: one per line, either `token` or `name token`; '#' starts a comment.
    Returns token -> name ('admin' when unnamed)."""
    tokens: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if len(words) > 2:
            raise ValueError(f"line {number}: expected 'token' or 'name token'")
        name, token = (words[0], words[1]) if len(words) == 2 else ("admin", words[0])
        if len(token) < 16:
            raise ValueError(f"line {number}: a token must have at least 16 characters")
        tokens[token] = name
    return tokens
