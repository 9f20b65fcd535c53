# -*- test-case-name: tests.test_spool -*-
"""
The file operations a spool commit is made of, as one replaceable object.

Every step of a commit goes through :class:`FileSystem`, so tests can make any
step fail (or "crash": raise and stop) and then check what recovery finds.
All of these block: call them only from the spool's I/O thread pool.
"""

from __future__ import annotations

import array
import fcntl
import os

# linux/fs.h: the inode flags ioctl, and the Orlov allocator's "top of a directory hierarchy" flag
FS_IOC_GETFLAGS = 0x80086601
FS_IOC_SETFLAGS = 0x40086602
FS_TOPDIR_FL = 0x00020000
#: The most buffers one writev takes.
_IOV_MAX = max(16, os.sysconf("SC_IOV_MAX"))  # -1 where the system sets no limit


def read_queued(path: str) -> bytes:
    """
    The whole of a queued file, or FileNotFoundError when it was removed
    meanwhile. A removed file's inode may be reused for another message (see
    L{gomail.spool.spares}), so a read counts only if the name still leads to
    the inode that was read once the read is done. For readers running beside
    the server (the C{gomail queue} command's reads).
    """
    with open(path, "rb") as f:
        data = f.read()
        if os.fstat(f.fileno()).st_ino != os.stat(path).st_ino:
            raise FileNotFoundError(2, "removed while being read", path)
    return data


class FileSystem:
    """Thin wrappers over the os calls a spool uses."""

    def create(self, path: str) -> int:
        """Create a new file for writing (never reusing one) and return its descriptor."""
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)

    def write(self, fd: int, chunks: list[bytes]) -> None:
        """Write all of C{chunks}: one C{writev} for them all (a message arrives in many), looping over short writes."""
        views = [memoryview(chunk) for chunk in chunks if chunk]
        first = 0
        while first < len(views):
            written = os.writev(fd, views[first:first + _IOV_MAX])
            while first < len(views) and written >= len(views[first]):
                written -= len(views[first])
                first += 1
            if written:
                views[first] = views[first][written:]

    def open_existing(self, path: str) -> int:
        """Open an existing file for writing from its start (nothing truncated yet: see L{trim})."""
        return os.open(path, os.O_WRONLY | os.O_CLOEXEC)

    def open_appending(self, path: str) -> int:
        """Open an existing file for writing at its end (the rest of a message another process began)."""
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)

    def trim(self, fd: int, length: int) -> None:
        """Cut the file to C{length}, the bytes just written (what a reused file had beyond them goes)."""
        os.ftruncate(fd, length)

    def empty(self, path: str) -> None:
        """Cut a file to nothing (its blocks are freed; the inode stays)."""
        os.truncate(path, 0)

    def links_and_size(self, path: str) -> tuple[int, int]:
        """How many names the file has (a Maildir hard link is one more), and its size."""
        stat = os.stat(path)
        return stat.st_nlink, stat.st_size

    def fsync(self, fd: int) -> None:
        """Flush a file's data and size to stable storage."""
        os.fsync(fd)

    def close(self, fd: int) -> None:
        os.close(fd)

    def rename(self, source: str, target: str) -> None:
        os.rename(source, target)

    def link(self, source: str, target: str) -> None:
        """Make C{target} another name for C{source} (a hard link)."""
        os.link(source, target)

    def fsync_directory(self, path: str) -> None:
        """Make renames and unlinks in a directory durable."""
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def spread_subdirectories(self, path: str) -> bool:
        """
        Ask the file system to place new subdirectories of C{path} where there
        is room (ext4's C{chattr +T}: the Orlov allocator treats C{path} as a
        top directory). Files are allocated near their directory, and on a
        crowded part of a disk creating one cost up to 600 us of CPU against
        30 us elsewhere (bench/README.md). Best effort: returns whether the
        flag is set; file systems without it are left alone.
        """
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            flags = array.array("i", [0])
            fcntl.ioctl(fd, FS_IOC_GETFLAGS, flags, True)
            if not flags[0] & FS_TOPDIR_FL:
                flags[0] |= FS_TOPDIR_FL
                fcntl.ioctl(fd, FS_IOC_SETFLAGS, flags, True)
            return True
        except OSError:
            return False
        finally:
            os.close(fd)

    def unlink(self, path: str) -> None:
        """Remove a file; a file already gone is fine."""
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def write_file(self, path: str, data: bytes) -> None:
        """Create C{path} with C{data}, fsynced (not yet renamed anywhere)."""
        fd = self.create(path)
        try:
            self.write(fd, [data])
            self.fsync(fd)
        finally:
            self.close(fd)
