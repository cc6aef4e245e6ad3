"""A driver row of a researcher's own run opens what it names (issue 24): a context row filters by its whole
context, and every kind of row opens its most drifted trajectory, not the first in file order."""

import pandas as pd

from core.drift import explore
from core.io.trajectories import read_trajectories


def test_a_context_row_filters_by_its_whole_context_and_opens_the_most_drifted(foreign_run):
    records = read_trajectories(foreign_run["train"])  # the TRL run's conversations
    edema = [r["id"] for r in records if "kerley lines suggests" in r["completion"]]
    ids, note = explore.driver_trajectories("context", {"context": "lines suggests", "checkpoint": "checkpoint-4"},
                                            records)
    assert ids == edema and 0 < len(ids) < len(records)  # not every trajectory where "suggests" occurs
    assert note == "context 'lines suggests' under checkpoint-4"
    table = pd.DataFrame({"traj_id": list(reversed(edema)) + ["elsewhere"],
                          "drift": [-0.9 + 0.1 * i for i in range(len(edema))] + [0.0]})  # most detrimental first
    assert explore.most_drifted_first(ids, table)[0] == edema[-1]
    assert explore.most_drifted_first(["unknown", edema[0]], table) == [edema[0], "unknown"]
