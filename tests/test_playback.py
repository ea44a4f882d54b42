"""Playback accounting: what the caller heard, from Twilio's mark echoes."""

from voicebridge.call.playback import PlaybackTracker


def test_marks_echoed_in_order_count_as_heard() -> None:
    tracker = PlaybackTracker()
    first = tracker.queued("item", 800, now=0.0)  # 100 ms
    tracker.queued("item", 800, now=0.0)
    tracker.mark_played(first, now=0.1)
    assert tracker.heard_ms("item", now=0.1) == 100
    assert tracker.playing


def test_heard_interpolates_within_the_playing_chunk_but_never_past_it() -> None:
    tracker = PlaybackTracker()
    first = tracker.queued("item", 800, now=0.0)
    tracker.queued("item", 800, now=0.0)
    tracker.mark_played(first, now=0.1)
    assert tracker.heard_ms("item", now=0.15) == 150
    assert tracker.heard_ms("item", now=5.0) == 200  # clamped to what was produced


def test_late_chunk_starts_playing_when_it_arrives_not_at_the_last_echo() -> None:
    tracker = PlaybackTracker()
    first = tracker.queued("item", 800, now=0.0)
    tracker.mark_played(first, now=0.1)
    tracker.queued("item", 800, now=0.5)  # the queue ran dry in between
    assert tracker.heard_ms("item", now=0.55) == 150


def test_interrupt_reports_each_queued_item_and_forgets_the_queue() -> None:
    tracker = PlaybackTracker()
    first = tracker.queued("a", 1600, now=0.0)
    tracker.queued("a", 1600, now=0.0)
    tracker.queued("b", 800, now=0.0)
    tracker.mark_played(first, now=0.2)
    cuts = tracker.interrupt(now=0.25)
    assert [(c.item_id, c.heard_ms, c.produced_ms) for c in cuts] == [
        ("a", 250, 400),
        ("b", 0, 100),
    ]
    assert not tracker.playing


def test_marks_echoed_because_of_a_clear_do_not_count_as_played() -> None:
    tracker = PlaybackTracker()
    tracker.queued("a", 800, now=0.0)
    pending = tracker.queued("a", 800, now=0.0)
    tracker.interrupt(now=0.05)
    tracker.mark_played(pending, now=0.06)  # Twilio echoes pending marks on clear
    assert tracker.heard_ms("a", now=1.0) == 50


def test_small_deltas_share_one_mark_and_a_new_item_closes_the_group() -> None:
    tracker = PlaybackTracker()
    marks = [tracker.queued("a", 160, now=0.0) for _ in range(7)]  # 7 x 20 ms
    assert marks == [None, None, None, None, "1", None, None]
    assert tracker.close_group() == "2"  # the item ended: its last 40 ms get a mark too
    tracker.queued("b", 160, now=0.0)
    tracker.mark_played("2", now=0.14)
    assert tracker.heard_ms("a", now=0.14) == 140
    assert tracker.playing  # b's audio is still unmarked, so still playing
    assert [c.item_id for c in tracker.interrupt(now=0.15)] == ["b"]
