"""A shared secret in front of every page, for a server reachable from other machines.

``workbench app --host 0.0.0.0`` starts Streamlit with ``$WORKBENCH_TOKEN`` set (given with ``--token``, or
made up and printed); ``gate()`` runs in the entry file before any page and stops the script until the
visitor gave the token, once per browser session: typed into the form, or in the link as ``?token=...``
(it is then removed from the address bar). On 127.0.0.1 (the default) no token is set and nothing is asked.
"""

from __future__ import annotations

import hmac
import os
import secrets

import streamlit as st

from workbench import state

TOKEN_ENV = "WORKBENCH_TOKEN"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def new_token() -> str:
    return secrets.token_urlsafe(18)


def is_loopback(host: str) -> bool:
    return host in LOOPBACK or host.startswith("127.")


def _matches(given: object, token: str) -> bool:
    return isinstance(given, str) and hmac.compare_digest(given.encode(), token.encode())


def gate() -> None:
    """Return when this session may see the pages; otherwise show the token form and stop the script."""
    token = os.environ.get(TOKEN_ENV, "")
    if not token or st.session_state.get(state.AUTH_OK):
        return
    if _matches(st.query_params.get("token"), token):
        st.session_state[state.AUTH_OK] = True
        del st.query_params["token"]  # not left in the address bar, the history or a shared link
        return
    st.title("CoT Drift Workbench")
    with st.form("auth_form"):
        given = st.text_input("Access token", type="password", key="auth_token",
                              help="printed by `workbench app` when it started, or given with --token")
        submitted = st.form_submit_button("Open")
    if submitted and _matches(given, token):
        st.session_state[state.AUTH_OK] = True
        st.rerun()
    if submitted:
        st.error("That token is not the one this server was started with.")
    st.stop()
