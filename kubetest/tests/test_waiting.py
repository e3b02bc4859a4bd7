"""The one wait: it returns what the check found, or fails naming what it waited for."""

from __future__ import annotations

import pytest

from sessionpipe_kubetest.waiting import WaitTimedOut, wait_for


def test_the_first_truthy_answer_is_returned() -> None:
    answers = iter([None, 0, "", "ready"])
    assert wait_for(lambda: next(answers), 5, "an answer", interval=0) == "ready"


def test_a_timeout_names_what_was_awaited_and_is_both_an_assertion_and_a_timeout() -> None:
    with pytest.raises(WaitTimedOut, match="waiting for the moon") as caught:
        wait_for(lambda: False, 0, "the moon", interval=0)
    assert isinstance(caught.value, AssertionError)
    assert isinstance(caught.value, TimeoutError)
