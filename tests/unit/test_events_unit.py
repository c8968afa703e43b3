"""Pure rules of the event plumbing (no broker, no database)."""


def test_a_failing_consumer_backs_off_but_never_past_the_visibility_timeout():
    from services.common.events import retry_countdown

    # doubling at first
    assert [retry_countdown(n, 300) for n in range(4)] == [1, 2, 4, 8]
    # a minute at most in production (300 s visibility)
    assert retry_countdown(10, 300) == 60
    # and below half the visibility timeout, or the broker redelivers the waiting retry
    # to another worker and each failure runs twice as often as the last
    assert retry_countdown(10, 10) == 5
    assert all(retry_countdown(n, 10) < 10 for n in range(30))


def test_batch_event_ids_are_distinct_version_4_uuids_as_text():
    import uuid

    from services.common.events import _uuid4_texts

    ids = _uuid4_texts(2000)
    assert len(set(ids)) == 2000
    for text in ids[:200]:
        u = uuid.UUID(text)
        assert (u.version, u.variant, str(u)) == (4, uuid.RFC_4122, text)
    assert _uuid4_texts(0) == []
