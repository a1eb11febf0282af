"""Zip files as an attacker writes them: byte by byte, sizes and flags as they please.

`Member` is one entry; `write_zip` lays the entries out (local headers, data, central
directory, end record) with whatever sizes, CRCs, methods and flags the members say,
true or not. `deflate_bomb` is a deflate stream of gigabytes of one byte built in
well under a second (a 1 MiB block compressed once after a full flush repeats
byte for byte), with its true CRC.
"""
import struct
import zipfile
import zlib
from dataclasses import dataclass, replace

MiB = 1 << 20


@dataclass
class Member:
    name: str
    data: bytes              # the bytes as stored (already compressed for deflate)
    method: int = zipfile.ZIP_STORED
    file_size: int = None    # declared inflated size (default: len(data), for stored)
    crc: int = None          # declared CRC (default: of data, for stored)
    flags: int = 0
    compress_size: int = None  # declared stored size (default: len(data))

    def declared(self):
        return (self.file_size if self.file_size is not None else len(self.data),
                self.crc if self.crc is not None else zlib.crc32(self.data),
                self.compress_size if self.compress_size is not None else len(self.data))


def stored(name, data):
    return Member(name, data)


def deflated(name, data, level=9):
    c = zlib.compressobj(level, zlib.DEFLATED, -15)
    return Member(name, c.compress(data) + c.flush(), zipfile.ZIP_DEFLATED, len(data), zlib.crc32(data))


def members_of(path):
    """The members of a zip file written by zipfile, as stored `Member`s (method and data as they are)."""
    out = []
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            out.append(stored(info.filename, zf.read(info.filename)))
    return out


def write_zip(path, members):
    """Write `members` as a zip file, every size, CRC, method and flag as declared."""
    with open(path, "wb") as fh:
        central = []
        for m in members:
            offset = fh.tell()
            name = m.name.encode("utf-8")
            size, crc, csize = m.declared()
            fh.write(struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, m.flags | 0x800, m.method, 0, 0x21,
                                 crc, csize, size, len(name), 0) + name + m.data)
            central.append(struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, m.flags | 0x800, m.method, 0, 0x21,
                                       crc, csize, size, len(name), 0, 0, 0, 0, 0o100644 << 16, offset) + name)
        start = fh.tell()
        directory = b"".join(central)
        fh.write(directory)
        fh.write(struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(members), len(members), len(directory), start, 0))


def deflate_bomb(name, prefix: bytes, total: int, fill: bytes = b" ") -> Member:
    """`prefix` then `fill` up to `total` bytes, deflated: about 1 KB per MiB. Declares its true size and CRC."""
    block = fill * MiB
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = c.compress(prefix) + c.flush(zlib.Z_FULL_FLUSH)
    first = c.compress(block) + c.flush(zlib.Z_FULL_FLUSH)
    again = c.compress(block) + c.flush(zlib.Z_FULL_FLUSH)
    assert first == again  # the state was reset: every further block is the same bytes
    blocks, rest = divmod(total - len(prefix), MiB)
    tail = c.compress(fill * rest) + c.flush()
    crc = zlib.crc32(prefix)
    for _ in range(blocks):
        crc = zlib.crc32(block, crc)
    crc = zlib.crc32(fill * rest, crc)
    return Member(name, head + first * blocks + tail, zipfile.ZIP_DEFLATED, total, crc)


def lying(member: Member, **declared) -> Member:
    """The same bytes, declaring other sizes, CRC, method or flags."""
    return replace(member, **declared)
