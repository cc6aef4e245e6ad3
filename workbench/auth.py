"""A shared secret in front of every page, for a server reachable from other machines.

``workbench app --host 0.0.0.0`` starts Streamlit with ``$WORKBENCH_TOKEN`` set (given with ``--token``, or
made up and printed); ``gate()`` runs in the entry file before any page and stops the script until the
visitor gave the token, once per browser session: typed into the form, or in the link as ``?token=...``
(it is then removed from the address bar). On 127.0.0.1 (the default) no token is set and nothing is asked.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
import time
from collections import deque

import streamlit as st

from workbench import state

TOKEN_ENV = "WORKBENCH_TOKEN"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


COOKIE = "workbench_auth"  # set by workbench.server's gate: an HMAC of the token, never the token


def cookie_value(token: str) -> str:
    return hmac.new(token.encode(), b"cot-drift-workbench session", hashlib.sha256).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(18)


def is_loopback(host: str) -> bool:
    return host in LOOPBACK or host.startswith("127.")


# Wrong tokens, server-wide (every session and tab together): after MAX_FAILURES within WINDOW seconds, no
# token is checked until the window has passed, so guessing costs time whatever the number of tabs
MAX_FAILURES, WINDOW = 5, 30.0
_failures: deque[float] = deque(maxlen=MAX_FAILURES)
_failures_lock = threading.Lock()


def wait_seconds(now: float | None = None) -> float:
    """Seconds until the next token may be checked (0: now)."""
    now = time.monotonic() if now is None else now
    with _failures_lock:
        if len(_failures) < MAX_FAILURES:
            return 0.0
        return max(0.0, _failures[0] + WINDOW - now)


def _record_failure() -> None:
    with _failures_lock:
        _failures.append(time.monotonic())


def _matches(given: object, token: str) -> bool:
    return isinstance(given, str) and hmac.compare_digest(given.encode(), token.encode())


def check(given: object, token: str) -> bool | None:
    """True or False for a checked token; None while wrong tokens wait (``wait_seconds``)."""
    if wait_seconds() > 0:
        return None
    if _matches(given, token):
        return True
    _record_failure()
    return False


def gate() -> None:
    """Return when this session may see the pages; otherwise show the token form and stop the script."""
    token = os.environ.get(TOKEN_ENV, "")
    if not token or st.session_state.get(state.AUTH_OK):
        return
    if hmac.compare_digest(str(st.context.cookies.get(COOKIE) or ""), cookie_value(token)):
        st.session_state[state.AUTH_OK] = True  # the server's gate took the token already (workbench.server)
        return
    in_link = st.query_params.get("token")
    if in_link is not None and check(in_link, token):
        st.session_state[state.AUTH_OK] = True
        del st.query_params["token"]  # not left in the address bar or a shared link
        return
    st.title("CoT Drift Workbench")
    with st.form("auth_form"):
        given = st.text_input("Access token", type="password", key="auth_token",
                              help="printed by `workbench app` when it started, or given with --token")
        submitted = st.form_submit_button("Open")
    verdict = check(given, token) if submitted else False
    if verdict:
        st.session_state[state.AUTH_OK] = True
        st.rerun()
    if submitted and verdict is None:
        st.error(f"Too many wrong tokens: try again in {wait_seconds():.0f} s.")
    elif submitted:
        st.error("That token is not the one this server was started with.")
    st.stop()
