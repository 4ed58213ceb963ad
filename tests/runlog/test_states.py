"""The state a run's files record (what collect, report and analyze show): no scheduler asked."""

from __future__ import annotations

import pytest

from deconcnn.runlog.records import RunStatus, RunSubmission
from deconcnn.runlog.states import recorded_job_state, recorded_state

SUBMISSION = RunSubmission("s2", "local", 100.0, None, None, (), None)


@pytest.mark.parametrize(
    ("submission", "run", "cancelled", "state"),
    [
        (None, None, None, "missing"),
        (
            None,
            RunStatus.from_json({"status": "completed"}),
            None,
            "completed",
        ),  # a result stands whatever the manifest says
        (SUBMISSION, RunStatus.from_json({"status": "diverged", "diverged_step": 7}), (200.0, "cancel"), "diverged"),
        (SUBMISSION, None, None, "pending"),
        (
            SUBMISSION,
            RunStatus.from_json({"status": "failed", "submission_id": "s1"}),
            None,
            "pending",
        ),  # an earlier attempt's
        (SUBMISSION, RunStatus.from_json({"status": "running", "submission_id": "s1"}), None, "pending"),
        (SUBMISSION, RunStatus.from_json({"status": "running", "submission_id": "s2"}), None, "running"),
        (SUBMISSION, RunStatus.from_json({"status": "failed", "submission_id": "s2", "error": "E: x"}), None, "failed"),
        (SUBMISSION, RunStatus.from_json({"status": "running", "submission_id": "s2"}), (150.0, "cancel"), "cancelled"),
        (
            SUBMISSION,
            RunStatus.from_json({"status": "running", "submission_id": "s2"}),
            (50.0, "cancel"),
            "running",
        ),  # before it
    ],
)
def test_recorded_state(submission, run, cancelled, state):
    assert recorded_state(submission, run, cancelled)[0] == state


def test_reasons_say_what_the_files_cannot():
    assert (
        recorded_state(SUBMISSION, RunStatus.from_json({"status": "diverged", "diverged_step": 7}), None)[1]
        == "diverged at step 7"
    )
    assert (
        recorded_state(
            SUBMISSION, RunStatus.from_json({"status": "failed", "submission_id": "s2", "error": "E: x"}), None
        )[1]
        == "E: x"
    )
    for state, reason in (recorded_state(SUBMISSION, None, None), recorded_job_state(RunStatus("running"))):
        assert "deconcnn-sweep status" in (reason or ""), state
    assert recorded_job_state(None)[0] == "missing"
