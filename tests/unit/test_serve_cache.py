"""The dashboard's answer cache: bounded in bytes, least recently used dropped first."""

from __future__ import annotations

from sessionpipe_runner.serve.cache import Answer, AnswerCache


def answer(size: int) -> Answer:
    return Answer(b"x" * size, "text/plain")


def test_the_least_recently_used_answers_go_first_when_bytes_run_out() -> None:
    cache = AnswerCache(max_bytes=100)
    cache.put("a", answer(40))
    cache.put("b", answer(40))
    assert cache.get("a") is not None  # now b is the least recently used
    cache.put("c", answer(40))
    assert (cache.get("a") is not None, cache.get("b"), cache.get("c") is not None) == (True, None, True)
    assert len(cache) == 2


def test_an_answer_larger_than_the_cache_is_not_kept_and_a_replaced_one_is_counted_once() -> None:
    cache = AnswerCache(max_bytes=100)
    cache.put("huge", answer(101))
    assert cache.get("huge") is None
    for _ in range(5):
        cache.put("same", answer(60))
    cache.put("other", answer(40))
    assert cache.get("same") is not None and cache.get("other") is not None
