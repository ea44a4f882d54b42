"""The audio path's frame splitter and writer, checked against websockets' own parser and
serializer: whatever the library would read from a stream, in order, however TCP cuts it."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode
from websockets.protocol import OPEN
from websockets.server import ServerProtocol
from websockets.streams import StreamReader

from voicebridge.wsframes import FrameSplitter, FrameWriter

MAX_SIZE = 70_000

texts = st.text(max_size=300) | st.just("x" * 66_000)
plain_frames = st.builds(lambda t: Frame(Opcode.TEXT, t.encode()), texts)
other_frames = st.one_of(
    st.builds(lambda b: Frame(Opcode.PING, b), st.binary(max_size=125)),
    st.builds(lambda b: Frame(Opcode.PONG, b), st.binary(max_size=125)),
    st.builds(lambda b: Frame(Opcode.BINARY, b), st.binary(max_size=300)),
)


@st.composite
def fragmented(draw: st.DrawFn) -> list[Frame]:
    """A text message in pieces: the splitter must leave every piece to the library,
    including a final frame that looks like a whole message on its own."""
    parts = draw(st.lists(st.binary(max_size=50), min_size=2, max_size=4))
    frames = [Frame(Opcode.TEXT, parts[0], fin=False)]
    frames += [Frame(Opcode.CONT, part, fin=False) for part in parts[1:-1]]
    frames.append(Frame(Opcode.CONT, parts[-1], fin=True))
    return frames


streams = st.lists(
    st.one_of(plain_frames.map(lambda f: [f]), other_frames.map(lambda f: [f]), fragmented()),
    max_size=12,
).map(lambda groups: [frame for group in groups for frame in group])


def library_frames(raw: bytes, masked: bool) -> list[Frame]:
    """What websockets' parser reads from `raw` (a stream of whole frames)."""
    reader = StreamReader()
    reader.feed_data(raw)
    frames: list[Frame] = []
    while reader.buffer:
        parser = Frame.parse(reader.read_exact, mask=masked, max_size=None)
        try:
            next(parser)
        except StopIteration as done:
            frames.append(done.value)
        else:
            raise AssertionError("the library wanted more bytes: a frame was cut")
    return frames


def split(splitter: FrameSplitter, data: bytes) -> list[tuple[bool, bytes]]:
    """As the sockets read: the shortcut first, then the general path."""
    payload = splitter.whole_text(data)
    return [(True, payload)] if payload is not None else splitter.feed(data)


@given(frames=streams, masked=st.booleans(), cuts=st.lists(st.integers(0, 200_000), max_size=8))
def test_splitting_reads_what_the_library_reads_however_the_stream_is_cut(
    frames: list[Frame], masked: bool, cuts: list[int]
) -> None:
    stream = b"".join(frame.serialize(mask=masked, extensions=[]) for frame in frames)
    points = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    splitter = FrameSplitter(masked=masked, max_size=MAX_SIZE)
    seen: list[tuple[Opcode, bool, bytes]] = []
    for start, stop in itertools.pairwise(points):
        for whole, chunk in split(splitter, stream[start:stop]):
            if whole:
                seen.append((Opcode.TEXT, True, chunk))
            else:
                seen += [(f.opcode, f.fin, bytes(f.data)) for f in library_frames(chunk, masked)]
    assert seen == [(f.opcode, f.fin, bytes(f.data)) for f in frames]
    assert not splitter.handed_over


@pytest.mark.parametrize("masked", [True, False])
def test_a_frame_over_the_limit_and_all_after_it_go_to_the_library(masked: bool) -> None:
    small = Frame(Opcode.TEXT, b"ok").serialize(mask=masked, extensions=[])
    big = Frame(Opcode.TEXT, b"x" * 100).serialize(mask=masked, extensions=[])
    splitter = FrameSplitter(masked=masked, max_size=50)
    assert splitter.feed(small + big[:10]) == [(True, b"ok"), (False, big[:10])]
    assert splitter.handed_over
    assert splitter.feed(big[10:] + small) == [(False, big[10:] + small)]


@pytest.mark.parametrize("masked", [True, False])
def test_the_shortcut_for_one_whole_frame_keeps_the_limit(masked: bool) -> None:
    """A read holding exactly one whole medium-sized text frame (the usual read) takes a
    shortcut; the size limit holds there too, and later reads go the long way."""
    fits = Frame(Opcode.TEXT, b"y" * 200).serialize(mask=masked, extensions=[])
    over = Frame(Opcode.TEXT, b"x" * 300).serialize(mask=masked, extensions=[])
    splitter = FrameSplitter(masked=masked, max_size=250)
    assert splitter.whole_text(fits) == b"y" * 200
    assert splitter.whole_text(over) is None
    assert splitter.feed(over) == [(False, over)]
    assert splitter.handed_over
    assert splitter.whole_text(fits) is None
    assert splitter.feed(fits) == [(False, fits)]


def test_a_frame_masked_the_wrong_way_is_left_for_the_library_to_refuse() -> None:
    unmasked = Frame(Opcode.TEXT, b"hi").serialize(mask=False, extensions=[])
    splitter = FrameSplitter(masked=True, max_size=MAX_SIZE)
    assert splitter.feed(unmasked) == [(False, unmasked)]
    assert splitter.handed_over


def test_held_back_bytes_are_handed_over_whole() -> None:
    frame = FrameWriter(masked=True).frames(["hello"])
    splitter = FrameSplitter(masked=True, max_size=MAX_SIZE)
    assert splitter.feed(frame[:4]) == []
    assert splitter.hand_over() == frame[:4]
    assert splitter.feed(frame[4:]) == [(False, frame[4:])]


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 200_000])
@pytest.mark.parametrize("masked", [True, False])
def test_written_frames_read_back_as_the_text_sent(size: int, masked: bool) -> None:
    text = "é" * (size // 2) + "x" * (size % 2)
    frame = FrameWriter(masked=masked).frames([text])
    [parsed] = library_frames(frame, masked)
    assert (parsed.opcode, parsed.fin, bytes(parsed.data)) == (Opcode.TEXT, True, text.encode())


@pytest.mark.parametrize("masked", [True, False])
def test_several_texts_are_written_as_frames_in_order(masked: bool) -> None:
    texts = ["first", "x" * 300, ""]
    parsed = library_frames(FrameWriter(masked=masked).frames(texts), masked)
    assert [(f.opcode, f.fin, bytes(f.data)) for f in parsed] == [
        (Opcode.TEXT, True, text.encode()) for text in texts
    ]


def test_a_server_protocol_accepts_our_client_frames() -> None:
    server = ServerProtocol(state=OPEN, max_size=None)
    server.receive_data(FrameWriter(masked=True).frames(['{"type":"x"}']))
    [frame] = server.events_received()
    assert bytes(frame.data) == b'{"type":"x"}'
    assert server.state is OPEN


def test_mask_keys_are_fresh_across_pool_refills() -> None:
    writer = FrameWriter(masked=True)
    drawn = [writer.frames(["x"])[2:6] for _ in range(3 * FrameWriter.POOL_BYTES // 4)]
    pools = [b"".join(drawn[i : i + 1024]) for i in range(0, len(drawn), 1024)]
    assert len(set(pools)) == 3  # a refill draws new randomness, never replays the pool
