"""Who may act: the token of WEB_TOKEN, sent as `Authorization: Bearer <token>` or typed once
into the login form, which gives a session cookie and a CSRF token that every form carries.

Without a token the dashboard is read-only: every action is refused (403). Tokens are compared
in constant time (hmac.compare_digest). Sessions live in this process's memory: a restart logs
everyone out.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from dataclasses import dataclass

COOKIE = "workqueue_session"
SESSION_SECONDS = 8 * 3600
MOST_SESSIONS = 1000  # past this, the oldest session ends at each login


@dataclass(frozen=True)
class Refusal:
    """Why an action is refused, with the HTTP status that says so."""

    status: int
    reason: str


READ_ONLY = Refusal(403, "this dashboard is read-only: start it with WEB_TOKEN set to allow actions")
WRONG_TOKEN = Refusal(401, "wrong token")
NOT_LOGGED_IN = Refusal(401, "log in first, or send the header Authorization: Bearer <token>")
BAD_CSRF = Refusal(403, "the form's CSRF token is missing or stale: reload the page and try again")


@dataclass(frozen=True)
class Session:
    csrf: str
    expires: float  # time.monotonic()


def same(given: str, expected: str) -> bool:
    """Whether two secrets are equal, in time that does not depend on where they differ."""
    return hmac.compare_digest(given.encode(errors="surrogatepass"), expected.encode(errors="surrogatepass"))


class Guard:
    """The token, and the sessions of those who logged in with it."""

    def __init__(self, token: str) -> None:
        self.token = token  # never logged nor shown
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    @property
    def read_only(self) -> bool:
        return not self.token

    def login(self, given: str) -> str | None:
        """A new session's id when `given` is the token, else None."""
        if self.read_only or not same(given, self.token):
            return None
        session_id = secrets.token_urlsafe(32)
        with self._lock:
            self._forget_expired()
            while len(self._sessions) >= MOST_SESSIONS:
                del self._sessions[next(iter(self._sessions))]  # dicts keep insertion order: the oldest
            self._sessions[session_id] = Session(secrets.token_urlsafe(32), time.monotonic() + SESSION_SECONDS)
        return session_id

    def logout(self, session_id: str | None) -> None:
        with self._lock:
            self._sessions.pop(session_id or "", None)

    def session(self, session_id: str | None) -> Session | None:
        """The live session of this cookie, if any."""
        if not session_id:
            return None
        with self._lock:
            found = self._sessions.get(session_id)
            if found is not None and found.expires < time.monotonic():
                del self._sessions[session_id]
                return None
            return found

    def refusal(self, authorization: str | None, session_id: str | None, csrf: str | None) -> Refusal | None:
        """None when the request may act: a right bearer token, or a live session whose CSRF
        token the request carries; else why not."""
        if self.read_only:
            return READ_ONLY
        if authorization is not None:
            scheme, _, given = authorization.partition(" ")
            return None if scheme.lower() == "bearer" and same(given.strip(), self.token) else WRONG_TOKEN
        session = self.session(session_id)
        if session is None:
            return NOT_LOGGED_IN
        return None if csrf is not None and same(csrf, session.csrf) else BAD_CSRF

    def _forget_expired(self) -> None:
        now = time.monotonic()
        for session_id in [s for s, session in self._sessions.items() if session.expires < now]:
            del self._sessions[session_id]
