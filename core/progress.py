"""Progress reporting and cancellation shared by every long job (scoring, probe, perturbation, the CLI).

    def job(..., progress: Progress | None = None, should_cancel: Callable[[], bool] | None = None): ...
        if should_cancel and should_cancel():
            raise Cancelled("scoring cancelled")
        progress(done, total, "base: batch 3/40")
"""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[float, float, str], None]  # (done, total, message)


class Cancelled(RuntimeError):
    """Raised when the caller's ``should_cancel`` returned True."""
