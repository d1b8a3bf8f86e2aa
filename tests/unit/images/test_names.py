"""The image name cache's rules (sans-IO): when it may answer a name without an RPC."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from actors.containerd.pb.containerd.events import image_pb2
from actors.images._names import ImageNameCache, decode_image_event
from actors.images._types import Descriptor, ImageRecord

NAME = "docker.io/library/app:1"


def record(digest_char: str = "a", name: str = NAME) -> ImageRecord:
    target = Descriptor(
        media_type="application/vnd.oci.image.manifest.v1+json",
        digest="sha256:" + digest_char * 64,
        size=10,
    )
    return ImageRecord(name=name, target=target, labels={})


def live_cache() -> ImageNameCache:
    cache = ImageNameCache()
    cache.set_live(True)
    return cache


def test_it_answers_nothing_until_the_event_stream_is_live() -> None:
    cache = ImageNameCache()
    cache.fill(record(), cache.generation)
    assert cache.lookup(NAME) is None
    cache.set_live(True)
    cache.fill(record(), cache.generation)
    assert cache.lookup(NAME) == record()
    cache.set_live(False)  # the stream broke: events may be missed, so forget everything
    assert cache.lookup(NAME) is None
    cache.set_live(True)
    assert cache.lookup(NAME) is None


@pytest.mark.parametrize("topic", ["/images/create", "/images/update", "/images/delete"])
def test_any_image_event_for_the_name_drops_it(topic: str) -> None:
    cache = live_cache()
    cache.fill(record(), cache.generation)
    cache.fill(record(name="docker.io/library/other:1"), cache.generation)
    cache.image_event(topic, NAME)
    assert cache.lookup(NAME) is None
    assert cache.lookup("docker.io/library/other:1") is not None


def test_a_get_answer_older_than_an_event_is_not_kept() -> None:
    cache = live_cache()
    generation = cache.generation  # an Images.Get starts...
    cache.image_event("/images/update", NAME)  # ...another client re-points the name...
    cache.fill(record("a"), generation)  # ...and the (old) answer lands
    assert cache.lookup(NAME) is None


def test_the_echo_of_our_own_write_keeps_what_we_wrote() -> None:
    cache = live_cache()
    generation = cache.begin_write(NAME)
    cache.end_write(NAME, generation, record("b"))
    assert cache.lookup(NAME) is None, "not served while our write's event is outstanding"
    cache.image_event("/images/create", NAME)  # the echo
    assert cache.lookup(NAME) == record("b")
    cache.image_event("/images/update", NAME)  # someone else's, later
    assert cache.lookup(NAME) is None


def test_a_foreign_write_racing_ours_is_decided_by_event_order() -> None:
    cache = live_cache()
    generation = cache.begin_write(NAME)
    cache.image_event("/images/update", NAME)  # theirs, published before ours
    cache.end_write(NAME, generation, record("b"))
    cache.image_event("/images/update", NAME)  # ours, last: but taken as foreign
    assert cache.lookup(NAME) is None  # conservative: one Images.Get more, never stale


def test_a_failed_own_write_expects_no_echo() -> None:
    cache = live_cache()
    cache.fill(record("a"), cache.generation)
    generation = cache.begin_write(NAME)
    cache.end_write(NAME, generation, None)
    assert cache.lookup(NAME) is None
    cache.fill(record("a"), cache.generation)
    cache.image_event("/images/update", NAME)  # a foreign write is not taken for an echo
    assert cache.lookup(NAME) is None


async def test_wait_forgotten_returns_on_the_event() -> None:
    cache = live_cache()
    cache.fill(record(), cache.generation)
    done = trio.Event()

    async def waiter() -> None:
        await cache.wait_forgotten(NAME)
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert not done.is_set()
        cache.image_event("/images/delete", NAME)
        with trio.fail_after(5):
            await done.wait()


def test_decode_reads_the_name_of_every_image_event() -> None:
    for message in (
        image_pb2.ImageCreate(name=NAME, labels={"a": "b"}),
        image_pb2.ImageUpdate(name=NAME),
        image_pb2.ImageDelete(name=NAME),
    ):
        assert decode_image_event(message.SerializeToString()) == NAME
    with pytest.raises(ValueError, match="undecodable"):
        decode_image_event(b"\xff\xff")
