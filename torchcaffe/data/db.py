"""Caffe's key-value databases: LMDB (the ``lmdb`` package) and LevelDB (``plyvel``).

    open_database(path, backend) -> Database        read-only; .cursor(), .first(), .count()
    RecordCycle(database)                           Caffe's DataLayer cursor: wraps to the start
    create_database(path, backend) -> DatabaseWriter   (a context manager: .put(key, value))
    imageset_key(index, filename) / feature_key(index) -> bytes

Both backends keep records sorted by key (byte order), and a cursor walks them in that order,
which is the order a data layer serves them. ``convert_imageset`` keys are
``"%08d_" + filename`` (the line number, so the list order survives the sorting);
``extract_features`` keys are ``"%010d"``. Values are serialized ``Datum`` messages.

A database is a folder (LMDB: ``data.mdb`` and ``lock.mdb``; LevelDB: ``CURRENT``, ``*.ldb``...).
Caffe's ``data_param.backend`` defaults to LEVELDB; opening an LMDB folder as LevelDB (or the
reverse) is refused with a message saying which backend the folder holds.

Writers work as Caffe's ``db::Transaction``: ``put`` collects records, a commit every 1000
records writes them (LMDB's map grows by doubling when full, as Caffe's ``LMDBTransaction``
does). Differs from Caffe: the database is written into a temporary folder next to ``path``
and renamed onto it only when complete, so a failure leaves no half-written database. An
existing ``path`` is refused, as Caffe's ``db::NEW`` mode refuses it.

Within one process each database is opened once and shared by every reader (the train and test
nets may read the same one): LMDB forbids opening an environment twice in a process and LevelDB
locks its folder. Read transactions are not tied to a thread (LMDB's ``MDB_NOTLS``), so a
cursor made while a layer is set up can be used by its prefetch thread.
"""
from __future__ import annotations

import atexit
import os
import secrets
import shutil
import threading
import weakref
from contextlib import contextmanager
from typing import Iterator

from ..proto import caffe_pb2
from .errors import DataError

LMDB = "lmdb"
LEVELDB = "leveldb"
BACKENDS = (LMDB, LEVELDB)
COMMIT_EVERY = 1000  # Caffe's convert_imageset and extract_features commit every 1000 records
_INITIAL_MAP_SIZE = 1 << 26


def backend_name(backend) -> str:
    """``"lmdb"`` or ``"leveldb"`` from a name (any case) or ``DataParameter.DB`` value."""
    if isinstance(backend, int):
        return LMDB if backend == caffe_pb2.DataParameter.LMDB else LEVELDB
    name = str(backend).lower()
    if name not in BACKENDS:
        raise DataError(f"unknown database backend {backend!r}; Caffe knows lmdb and leveldb")
    return name


def imageset_key(index: int, filename: str) -> bytes:
    """``convert_imageset``'s key: the line number on 8 digits, ``_``, the file name."""
    return f"{index:08d}_{filename}".encode("utf-8", "surrogateescape")


def feature_key(index: int) -> bytes:
    """``extract_features``'s key: the image number on 10 digits."""
    return f"{index:010d}".encode()


def describe_key(key: bytes) -> str:
    """A key as messages print it."""
    return repr(key.decode("utf-8", "backslashreplace"))


# -- reading ----------------------------------------------------------------------------------

class Database:
    """A database opened for reading (Caffe's ``db::READ``)."""

    def __init__(self, path: str, backend: str, handle):
        self.path = path
        self.backend = backend
        self._handle = handle
        self._release = weakref.finalize(self, _SHARED.release, backend, path)

    def __repr__(self) -> str:
        return f"<{self.backend.upper()} database {self.path!r}>"

    def cursor(self) -> "Cursor":
        """A cursor on the first record (invalid when the database is empty)."""
        return _LmdbCursor(self) if self.backend == LMDB else _LevelDbCursor(self)

    def first(self) -> tuple[bytes, bytes] | None:
        """The first ``(key, value)``, or None for an empty database."""
        cursor = self.cursor()
        return (cursor.key(), cursor.value()) if cursor.valid() else None

    def count(self) -> int:
        """The number of records."""
        if self.backend == LMDB:
            return int(self._handle.stat()["entries"])
        return sum(1 for _ in self._handle.iterator(include_value=False))

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Every ``(key, value)`` in key order."""
        cursor = self.cursor()
        while cursor.valid():
            yield cursor.key(), cursor.value()
            cursor.next()

    def close(self) -> None:
        self._release()


class Cursor:
    """Caffe's ``db::Cursor``: ``valid``, ``key``, ``value``, ``next``, ``seek_to_first``."""

    def valid(self) -> bool:  # pragma: no cover - interface
        raise NotImplementedError


class _LmdbCursor(Cursor):
    def __init__(self, database: Database):
        self._database = database  # keeps the environment open while the cursor lives
        self._txn = database._handle.begin(write=False, buffers=False)
        self._cursor = self._txn.cursor()
        self._valid = self._cursor.first()

    def seek_to_first(self) -> None:
        self._valid = self._cursor.first()

    def valid(self) -> bool:
        return self._valid

    def next(self) -> None:
        self._valid = self._cursor.next()

    def key(self) -> bytes:
        return self._cursor.key()

    def value(self) -> bytes:
        return self._cursor.value()


class _LevelDbCursor(Cursor):
    def __init__(self, database: Database):
        self._database = database
        self._iterator = database._handle.raw_iterator(fill_cache=False)
        self._iterator.seek_to_first()

    def seek_to_first(self) -> None:
        self._iterator.seek_to_first()

    def valid(self) -> bool:
        return self._iterator.valid()

    def next(self) -> None:
        self._iterator.next()

    def key(self) -> bytes:
        return self._iterator.key()

    def value(self) -> bytes:
        return self._iterator.value()


def open_database(path: str, backend) -> Database:
    """Open the database at ``path`` for reading; a missing, empty-named or wrong-backend
    folder raises :class:`DataError` saying so."""
    backend = backend_name(backend)
    path = os.fspath(path)
    if not path:
        raise DataError("no database path given (data_param.source is empty)")
    if not os.path.isdir(path):
        raise DataError(f"{path}: no such database folder" if not os.path.exists(path)
                        else f"{path}: is a file; an {backend.upper()} database is a folder")
    _check_backend(path, backend)
    handle = _SHARED.acquire(backend, path)
    return Database(path, backend, handle)


def _check_backend(path: str, backend: str) -> None:
    has_lmdb = os.path.isfile(os.path.join(path, "data.mdb"))
    has_leveldb = os.path.isfile(os.path.join(path, "CURRENT"))
    if backend == LEVELDB and has_lmdb and not has_leveldb:
        raise DataError(f"{path}: is an LMDB database but is being opened as LevelDB (Caffe's "
                        f"default backend); set 'backend: LMDB' in data_param")
    if backend == LMDB and has_leveldb and not has_lmdb:
        raise DataError(f"{path}: is a LevelDB database but is being opened as LMDB; set "
                        f"'backend: LEVELDB' in data_param")
    if backend == LMDB and not has_lmdb:
        raise DataError(f"{path}: holds no data.mdb, so it is not an LMDB database")


class _SharedHandles:
    """Each database opened once per process, with a count of the readers using it.

    A handle nobody uses any more is closed later — at the next open, or at exit — not at
    once: the last reader often dies inside a garbage collection together with its cursor, and
    closing a LevelDB while the collector tears its iterator down crashes plyvel.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._open: dict[tuple[str, str], list] = {}
        self._unused: dict[tuple[str, str], object] = {}
        atexit.register(self.close_unused)

    def acquire(self, backend: str, path: str):
        key = (backend, os.path.realpath(path))
        with self._lock:
            entry = self._open.get(key)
            if entry is None:
                handle = self._unused.pop(key, None)
                entry = self._open[key] = [handle if handle is not None else _open_handle(backend, path), 0]
            entry[1] += 1
            handle = entry[0]
        self.close_unused()
        return handle

    def release(self, backend: str, path: str) -> None:
        key = (backend, os.path.realpath(path))
        with self._lock:
            entry = self._open.get(key)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] <= 0:
                del self._open[key]
                self._unused[key] = entry[0]

    def close_unused(self) -> None:
        """Close the handles no reader uses (outside any garbage collection)."""
        with self._lock:
            unused, self._unused = self._unused, {}
        for handle in unused.values():
            handle.close()


_SHARED = _SharedHandles()


def _open_handle(backend: str, path: str):
    if backend == LMDB:
        import lmdb
        try:
            return lmdb.open(path, readonly=True, lock=False, subdir=True)
        except lmdb.Error as err:
            raise DataError(f"{path}: cannot open the LMDB database: {err}") from None
    import plyvel
    try:
        return plyvel.DB(path, create_if_missing=False, max_open_files=100)
    except plyvel.Error as err:
        detail = err.args[0].decode("utf-8", "replace") if err.args and isinstance(err.args[0], bytes) else err
        raise DataError(f"{path}: cannot open the LevelDB database: {detail}") from None


class RecordCycle:
    """Records in key order, forever: after the last comes the first again (Caffe's
    ``DataLayer::Next``, "Restarting data prefetching from start"). An empty database is an
    error here, at set-up, rather than a reader that waits forever."""

    def __init__(self, database: Database):
        self.database = database
        self._cursor = database.cursor()
        if not self._cursor.valid():
            raise DataError(f"{database.path}: the {database.backend.upper()} database is empty")

    def peek(self) -> tuple[bytes, bytes]:
        """The record the next call to :meth:`next` returns."""
        return self._cursor.key(), self._cursor.value()

    def next(self) -> tuple[bytes, bytes]:
        """The current ``(key, value)``; the cursor moves on (wrapping to the first)."""
        record = self.peek()
        self.skip(1)
        return record

    def skip(self, count: int) -> None:
        for _ in range(count):
            self._cursor.next()
            if not self._cursor.valid():
                self._cursor.seek_to_first()

    def where(self, key: bytes) -> "RecordPlace":
        """How messages name a record: ``<database> key '<key>'`` (formatted only if used)."""
        return RecordPlace(self.database.path, key)


class RecordPlace:
    """A record's name for error messages, built only when a message is: the loaders pass one
    along with every record, and most are never printed."""

    __slots__ = ("path", "key")

    def __init__(self, path: str, key: bytes):
        self.path = path
        self.key = key

    def __str__(self) -> str:
        return f"{self.path} key {describe_key(self.key)}"

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


# -- writing ----------------------------------------------------------------------------------

class DatabaseWriter:
    """Records written in batches of ``commit_every`` (Caffe's ``db::Transaction``)."""

    def __init__(self, path: str, backend: str, commit_every: int = COMMIT_EVERY):
        self.path = path
        self.backend = backend
        self.commit_every = commit_every
        self.count = 0
        self._pending: list[tuple[bytes, bytes]] = []
        if backend == LMDB:
            import lmdb
            os.mkdir(path)
            self._handle = lmdb.open(path, map_size=_INITIAL_MAP_SIZE, subdir=True, meminit=False)
        else:
            import plyvel
            self._handle = plyvel.DB(path, create_if_missing=True, error_if_exists=True,
                                     write_buffer_size=268435456, max_open_files=100)

    def put(self, key: bytes | str, value: bytes) -> None:
        """Add one record (committed with the next batch)."""
        if isinstance(key, str):
            key = key.encode("utf-8", "surrogateescape")
        self._pending.append((key, bytes(value)))
        self.count += 1
        if len(self._pending) >= self.commit_every:
            self.commit()

    def commit(self) -> None:
        """Write the pending records."""
        if not self._pending:
            return
        if self.backend == LMDB:
            self._commit_lmdb()
        else:
            with self._handle.write_batch() as batch:
                for key, value in self._pending:
                    batch.put(key, value)
        self._pending.clear()

    def _commit_lmdb(self) -> None:
        import lmdb
        while True:
            try:
                with self._handle.begin(write=True) as txn:
                    for key, value in self._pending:
                        txn.put(key, value)
                return
            except lmdb.MapFullError:
                self._handle.set_mapsize(self._handle.info()["map_size"] * 2)

    def close(self) -> None:
        self.commit()
        self._handle.close()


@contextmanager
def create_database(path: str, backend, commit_every: int = COMMIT_EVERY) -> Iterator[DatabaseWriter]:
    """A new database at ``path``, written into a temporary folder and renamed onto ``path``
    when the block ends without an error (on an error the temporary folder is removed)."""
    backend = backend_name(backend)
    path = os.fspath(path)
    if os.path.exists(path):
        raise DataError(f"{path}: already exists; Caffe does not overwrite a database (remove "
                        f"it or choose another name)")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise DataError(f"{path}: the folder {parent!r} does not exist")
    temp = os.path.join(parent, f".{os.path.basename(path)}.{secrets.token_hex(4)}.tmp")
    try:
        writer = DatabaseWriter(temp, backend, commit_every)
    except Exception as err:
        shutil.rmtree(temp, ignore_errors=True)
        raise DataError(f"{path}: cannot create the {backend.upper()} database: {err}") from None
    try:
        yield writer
        writer.close()
        os.rename(temp, path)
    except BaseException:
        try:
            writer._handle.close()
        finally:
            shutil.rmtree(temp, ignore_errors=True)
        raise
