"""Is an Ogg file complete? A walk over its page headers, without decoding.

libsndfile decodes a cut or damaged Ogg Vorbis/Opus file up to the damage and reports only the samples
it could reach as the file's length, so the short result looks like a whole, shorter clip. The page
headers tell the truth: a complete stream ends exactly at the end of a page flagged end-of-stream, and
that page's granule position is the stream's length in samples (for Opus: at 48 kHz, after a pre-skip).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

CAPTURE = b"OggS"
HEADER = struct.Struct("<4sBBqIIIB")  # capture, version, flags, granule, serial, sequence, crc, segments
END_OF_STREAM = 0x04
NO_GRANULE = -1  # a page on which no packet ends


class OggDamage(Exception):
    """The page structure shows the file is cut short or broken; the message says where."""


OPUS_RATE = 48000  # Opus granule positions count samples at 48 kHz whatever the stream's rate


@dataclass
class OggLength:
    samples: int | None  # total samples the last page declares; None when the codec is not known
    pages: int
    granule_rate: int | None = None  # the rate `samples` counts at; None = the stream's own rate

    def at_rate(self, rate: int) -> int | None:
        """The declared length in samples at `rate` (the rate the decoder reports)."""
        if self.samples is None:
            return None
        return self.samples if self.granule_rate is None else round(self.samples * rate / self.granule_rate)


def is_ogg(handle: BinaryIO) -> bool:
    """True when the content (not the file name) starts an Ogg stream; leaves the position at 0."""
    handle.seek(0)
    start = handle.read(4)
    handle.seek(0)
    return start == CAPTURE


def ogg_length(handle: BinaryIO) -> OggLength:
    """Walk every page header to the end of the file; raises OggDamage on a broken or cut stream.

    Leaves the position at 0 so the file can be handed to a decoder afterwards.
    """
    handle.seek(0, 2)
    size = handle.tell()
    position, pages, flags, granule, serials, first_packet = 0, 0, 0, NO_GRANULE, set(), b""
    while position < size:
        handle.seek(position)
        raw = handle.read(HEADER.size)
        if len(raw) < HEADER.size:
            raise OggDamage(f"the file ends inside the header of Ogg page {pages + 1} (byte {position})")
        capture, _, flags, granule, serial, _, _, count = HEADER.unpack(raw)
        if capture != CAPTURE:
            raise OggDamage(f"Ogg page {pages + 1} at byte {position} has no page marker (corrupt data)")
        table = handle.read(count)
        body = sum(table)
        end = position + HEADER.size + count + body
        if len(table) < count or end > size:
            raise OggDamage(f"the file ends inside Ogg page {pages + 1}: {size} bytes of the {end} it needs")
        if pages == 0:
            first_packet = handle.read(min(body, 19))
        serials.add(serial)
        position, pages = end, pages + 1
    handle.seek(0)
    if pages == 0:
        raise OggDamage("the file holds no Ogg page")
    if not flags & END_OF_STREAM:
        raise OggDamage(f"the last of {pages} Ogg pages is not marked end-of-stream (the file is cut short)")
    if len(serials) > 1 or granule == NO_GRANULE:  # chained streams: no single length to check
        return OggLength(None, pages)
    if first_packet.startswith(b"\x01vorbis"):
        return OggLength(granule, pages)
    if first_packet.startswith(b"OpusHead") and len(first_packet) >= 12:
        pre_skip = struct.unpack_from("<H", first_packet, 10)[0]
        return OggLength(granule - pre_skip, pages, OPUS_RATE)
    return OggLength(None, pages)
