"""Progress and cancellation for workers (``core.progress``)."""

from __future__ import annotations

import signal
import sys

from core.progress import cancel_flag


def test_the_cancel_handler_takes_no_lock_so_a_second_sigterm_inside_it_cannot_hang():
    """Cancel reaches a worker twice (SIGTERM to its process group, and passed on by its supervisor); Python can run
    the second handler inside the first. The former handler, ``threading.Event.set``, took the event's lock: a
    second one inside it waited for that lock for ever (caught in CI: a cancelled visual job hung, its main thread
    in two nested handlers). The handler makes no call that can block: no lock is acquired, and running it
    inside itself works."""
    previous = signal.getsignal(signal.SIGTERM)
    try:
        asked = cancel_flag()
        handler = signal.getsignal(signal.SIGTERM)
        calls = []

        def watch(frame, event, arg):
            if event == "c_call":
                calls.append(getattr(arg, "__qualname__", repr(arg)))

        sys.setprofile(watch)
        try:
            handler(signal.SIGTERM, None)
        finally:
            sys.setprofile(None)
        assert asked()
        assert not [c for c in calls if "acquire" in c or "__enter__" in c or "wait" in c], calls

        nested = [False]

        def inside(*_):  # the second signal while the first handler runs
            nested[0] = True
            handler(signal.SIGTERM, None)

        inside()
        assert nested[0] and asked()
    finally:
        signal.signal(signal.SIGTERM, previous)
