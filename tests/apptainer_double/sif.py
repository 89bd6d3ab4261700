"""Single-file images: the SIF container format (github.com/apptainer/sif v2, pkg/sif: sif.go,
descriptor.go, create.go, load.go) and plain SquashFS files, found the way Apptainer 1.4.5's
pkg/image (image.go Init, sif.go, squashfs.go) finds them.

A SIF file: a 128-byte global header (launch script `#!/usr/bin/env run-singularity`, magic
`SIF_MAGIC`, version `01`, architecture, UUID, times, descriptor and data extents), at 4096 a
table of 48 descriptors of 585 bytes each, then the data objects; the root file system is the
data object of type partition (0x4004) whose partition metadata says SquashFS (1), primary
system partition (2), aligned to 4096 bytes. Everything is little-endian, without padding
(Go's encoding/binary).
"""

from __future__ import annotations

import os
import struct
import time
import uuid

LAUNCH_SCRIPT = b"#!/usr/bin/env run-singularity\n"
LAUNCH_STRING = b" run-singularity"  # what squashfs.go looks for before a SquashFS
MAGIC = b"SIF_MAGIC\0"
VERSION = b"01\0"
HEADER = struct.Struct("<32s10s3s3s16s8q")  # 128 bytes
DESCRIPTOR = struct.Struct("<i?IIIqqqqqqq128s384s")  # 585 bytes
PARTITION = struct.Struct("<ii3s")  # FSType, PartType, arch
DESCRIPTORS_OFFSET = 4096
DESCRIPTOR_CAPACITY = 48
PARTITION_ALIGNMENT = 4096
GROUP_MASK = 0xF0000000
DEFAULT_GROUP = 1
DATA_DEFFILE, DATA_PARTITION, DATA_GENERIC_JSON = 0x4001, 0x4004, 0x4006
FS_SQUASH, PART_PRIMSYS = 1, 2
ARCHES = {
    "386": b"01\0",
    "amd64": b"02\0",
    "arm": b"03\0",
    "arm64": b"04\0",
    "ppc64": b"05\0",
    "ppc64le": b"06\0",
    "mips": b"07\0",
    "mipsle": b"08\0",
    "mips64": b"09\0",
    "mips64le": b"10\0",
    "s390x": b"11\0",
    "riscv64": b"12\0",
}
UNKNOWN_ARCH = b"00\0"
SQUASHFS_MAGIC = b"hsqs"
SQUASHFS_COMPRESSIONS = range(1, 7)  # zlib, lzma, lzo, xz, lz4, zstd
BUFFER_SIZE = 2048  # image.go reads this much to detect a format
CHUNK = 1 << 20


class ImageError(Exception):
    """What image.Init returns (its text follows `could not open image PATH: `)."""


class _NotThisFormat(Exception):
    """A debugError: the next format is tried."""


def _aligned(offset: int, alignment: int) -> int:
    return (
        offset
        if alignment <= 0 or offset % alignment == 0
        else offset + alignment - offset % alignment
    )


def write(out, deffile: bytes, json_objects: dict[str, bytes], squashfs, arch: str) -> None:
    """Write a SIF to the binary file OUT as Apptainer's SIF assembler does (assemblers/sif.go
    createSIF): the definition, the JSON objects by name, then the SquashFS file SQUASHFS as the
    primary system partition. Errors while writing (ENOSPC...) propagate as OSError."""
    sif_arch = ARCHES.get(arch, UNKNOWN_ARCH)
    objects = [(DATA_DEFFILE, deffile, b"", b"", 0)]
    objects += [
        (DATA_GENERIC_JSON, data, name.encode(), b"", 0)
        for name, data in sorted(json_objects.items())
        if data
    ]
    partition = PARTITION.pack(FS_SQUASH, PART_PRIMSYS, sif_arch)
    objects.append((DATA_PARTITION, squashfs, b"", partition, PARTITION_ALIGNMENT))
    now = int(time.time())
    write_objects(
        out, objects, arch=sif_arch, launch=LAUNCH_SCRIPT, ident=uuid.uuid4().bytes, now=now
    )


def write_objects(out, objects, *, arch: bytes, launch: bytes, ident: bytes, now: int) -> None:
    """create.go createContainer: OBJECTS as (data type, bytes or binary file, name, extra,
    alignment), in group 1, one after the other from the end of the descriptor table."""
    table = DESCRIPTOR.size * DESCRIPTOR_CAPACITY
    data_offset = DESCRIPTORS_OFFSET + table
    descriptors, placed, end = [], [], data_offset
    for n, (dtype, data, name, extra, alignment) in enumerate(objects):
        size = len(data) if isinstance(data, bytes) else os.fstat(data.fileno()).st_size
        offset = _aligned(end, alignment)
        group = DEFAULT_GROUP | GROUP_MASK
        padded = offset - end + size
        descriptors.append(
            DESCRIPTOR.pack(dtype, True, n + 1, group, 0, offset, size, padded, now, now, 0, 0,
                            name, extra)
        )  # fmt: skip
        placed.append((offset, data))
        end = offset + size
    descriptors += [b"\0" * DESCRIPTOR.size] * (DESCRIPTOR_CAPACITY - len(objects))
    header = HEADER.pack(
        launch, MAGIC, VERSION, arch, ident, now, now, DESCRIPTOR_CAPACITY - len(objects),
        DESCRIPTOR_CAPACITY, DESCRIPTORS_OFFSET, table, data_offset, end - data_offset,
    )  # fmt: skip
    out.write(header + b"\0" * (DESCRIPTORS_OFFSET - HEADER.size) + b"".join(descriptors))
    position = data_offset
    for offset, data in placed:
        out.write(b"\0" * (offset - position))
        position = offset
        if isinstance(data, bytes):
            out.write(data)
            position += len(data)
            continue
        data.seek(0)
        while chunk := data.read(CHUNK):
            out.write(chunk)
            position += len(chunk)
    out.flush()


def _squashfs_offset(head: bytes) -> int:
    """squashfs.go parseSquashfsHeader/CheckSquashfsHeader: the SquashFS after a launch script."""
    found = head.find(LAUNCH_STRING)
    offset = found + len(LAUNCH_STRING) + 1 if found > 0 else 0
    if offset + 8 >= len(head):
        raise _NotThisFormat("can't find squashfs information header")
    if head[offset : offset + 4] != SQUASHFS_MAGIC:
        raise _NotThisFormat("not a valid squashfs image")
    (compression,) = struct.unpack_from("<H", head, offset + 20)
    if compression not in SQUASHFS_COMPRESSIONS:
        raise ImageError(f"corrupted image: unknown compression algorithm value {compression}")
    return offset


def _sif_rootfs(handle, head: bytes) -> tuple[int, int]:
    if b"SIF_MAGIC" not in head:
        raise _NotThisFormat("SIF magic not found")
    fields = HEADER.unpack(head[: HEADER.size])
    if fields[1] != MAGIC:
        raise ImageError("invalid SIF magic")
    if fields[2] != VERSION:
        raise ImageError("incompatible SIF version")
    total, offset, size = fields[8], fields[9], fields[10]
    handle.seek(offset)
    table = handle.read(size)
    if len(table) < total * DESCRIPTOR.size:
        raise ImageError("reading descriptors: unexpected EOF")
    for n in range(total):
        desc = DESCRIPTOR.unpack_from(table, n * DESCRIPTOR.size)
        dtype, used, d_offset, d_size, extra = desc[0], desc[1], desc[5], desc[6], desc[13]
        if not used or dtype != DATA_PARTITION:
            continue
        fstype, parttype, _arch = PARTITION.unpack_from(extra)
        if parttype != PART_PRIMSYS:
            continue
        if fstype != FS_SQUASH:
            raise ImageError(
                f"while checking system partition header: unknown filesystem type {fstype}"
            )
        handle.seek(d_offset)
        try:
            _squashfs_offset(handle.read(BUFFER_SIZE))
        except _NotThisFormat as err:
            raise ImageError(
                "while checking system partition header: error while checking squashfs header: "
                f"while parsing squashfs super block: {err}"
            ) from None
        return d_offset, d_size
    raise ImageError("no root filesystem found")


def rootfs(path: str) -> tuple[str, int, int]:
    """The root file system of the image file PATH as ("sif" or "squashfs", offset, size), as
    image.Init detects the formats (sandbox, SIF, SquashFS, ext3 in that order; ext3 is not
    emulated). Raises ImageError with Apptainer's text."""
    try:
        handle = open(path, "rb")  # noqa: SIM115 (closed below)
    except OSError:
        raise ImageError("image format not recognized") from None
    with handle:
        head = handle.read(BUFFER_SIZE)
        if len(head) != BUFFER_SIZE:
            raise ImageError("image format not recognized")
        try:
            return ("sif", *_sif_rootfs(handle, head))
        except _NotThisFormat:
            pass
        try:
            offset = _squashfs_offset(head)
        except _NotThisFormat:
            raise ImageError("image format not recognized") from None
        return ("squashfs", offset, os.fstat(handle.fileno()).st_size - offset)


def is_sif(path: str) -> bool:
    try:
        return rootfs(path)[0] == "sif"
    except ImageError:
        return False
