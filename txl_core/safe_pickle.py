"""Reading the reference's pickled vocabularies without running any code they name.

A Hugging Face `vocab.pkl` is `pickle.dump(tokenizer.__dict__)`: besides the word lists it names sacremoses
classes, `re._compile`, a `Trie` and `AddedToken`s. The historic wt103 vocabulary is a legacy (non-zip)
`torch.save` file: four pickles in a row (magic number, protocol version, sys_info, the object). A pickle
runs whatever callables it names, so `safe_load` reads all of these with an unpickler whose `find_class`
returns real callables only for plain containers and scalars; every other global becomes an `Inert`
placeholder that remembers its name and ignores its arguments and state. Nothing is imported or called.
"""
from __future__ import annotations

import _compat_pickle
import collections
import copyreg
import io
import os
import pickle
import zipfile

TORCH_LEGACY_MAGIC = 119547037146038801333356  # torch/serialization.py MAGIC_NUMBER
TORCH_LEGACY_PROTOCOL = 1001

_TYPES = (dict, list, tuple, set, frozenset, str, bytes, int, float, bool,
          collections.OrderedDict, collections.Counter)


class Inert:
    """Stands in for a refused global. `module` and `name` say what the file asked for.

    The class itself is what `find_class` returns (NEWOBJ needs a type); calling it or an instance,
    `__new__`, BUILD and the container opcodes (SETITEMS, APPENDS) accept anything and do nothing.
    """

    module = "?"
    name = "?"

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):  # what a refused `getattr(module, name)` returned gets called
        return self

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, item):
        pass

    def extend(self, items):
        pass

    def __repr__(self) -> str:
        return f"<inert {self.module}.{self.name}>"


def is_inert(obj: object) -> bool:
    """True for a placeholder, whether the file only named the global or also called it."""
    return isinstance(obj, Inert) or (isinstance(obj, type) and issubclass(obj, Inert))


def _placeholder(module: str, name: str) -> type[Inert]:
    return type(f"Inert[{module}.{name}]", (Inert,), {"module": module, "name": name})


def _bytes(*args):
    # `bytes(n)` with a huge int would allocate n zero bytes: a pickle only needs bytes() and bytes(list)
    if args and isinstance(args[0], int):
        return _placeholder("builtins", "bytes")()
    return bytes(*args)


def _latin1_bytes(text, encoding="latin1"):
    """Protocol < 3 pickles `bytes` as `_codecs.encode(text, 'latin1')`; nothing else is let through."""
    if isinstance(text, str) and encoding in ("latin1", "latin-1"):
        return text.encode("latin1")
    return _placeholder("_codecs", "encode")()


def _reconstructor(cls, base, state):
    """copyreg._reconstructor (protocols 0 and 1), only for the allowed container types."""
    if cls in _TYPES and base in _TYPES:
        return copyreg._reconstructor(cls, base, state)
    return _placeholder("copyreg", "_reconstructor")()


_ALLOWED = {("builtins", t.__name__): t for t in (dict, list, tuple, set, frozenset, str, int, float, bool)}
_ALLOWED |= {
    ("builtins", "bytes"): _bytes,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "Counter"): collections.Counter,
    ("_codecs", "encode"): _latin1_bytes,
    ("copyreg", "_reconstructor"): _reconstructor,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that hands out `_ALLOWED` callables and an `Inert` placeholder for anything else."""

    def find_class(self, module: str, name: str):
        # Python 2 names (`__builtin__.unicode`, `copy_reg`), mapped as pickle's own find_class does
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        return _ALLOWED.get((module, name)) or _placeholder(module, name)

    def persistent_load(self, pid):
        # torch.save refers to tensor storages this way; their bytes are never needed for a vocabulary
        return _placeholder("torch", "storage")()


def _load_one(stream: io.BytesIO) -> object:
    return RestrictedUnpickler(stream, encoding="utf-8").load()  # utf-8 for Python 2 strings, as torch.load


def _load_torch_legacy(stream: io.BytesIO, magic: int) -> object:
    """The rest of a legacy torch.save file whose first pickle was `magic`."""
    if magic != TORCH_LEGACY_MAGIC:
        raise pickle.UnpicklingError(f"the file holds the bare number {magic}, not a vocabulary")
    protocol = _load_one(stream)
    if protocol != TORCH_LEGACY_PROTOCOL:
        raise pickle.UnpicklingError(f"unknown torch.save protocol {protocol!r}")
    _load_one(stream)  # sys_info: byte order and type sizes, which matter only for tensor storages
    return _load_one(stream)


def _load_torch_zip(data: bytes) -> object:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = sorted(n for n in archive.namelist() if n.count("/") == 1 and n.endswith("/data.pkl"))
        if not names:
            raise pickle.UnpicklingError("a zip file without the data.pkl of a torch.save archive")
        return _load_one(io.BytesIO(archive.read(names[0])))


def _read(source: str | os.PathLike | bytes) -> tuple[bytes, str]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), "pickle data"
    path = os.fspath(source)
    try:
        with open(path, "rb") as f:
            return f.read(), path
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror or e}") from None


def safe_load(source: str | os.PathLike | bytes) -> object:
    """Load a pickle, a legacy torch.save file or a zip torch.save file without executing anything.

    Args:
        source: a path, or the file's bytes.
    Returns:
        The object, with every global other than plain containers and scalars replaced by an `Inert`.
    Raises:
        ValueError: one line saying why the source could not be read.
    """
    data, where = _read(source)
    try:
        if data.startswith(b"PK\x03\x04"):
            return _load_torch_zip(data)
        stream = io.BytesIO(data)
        obj = _load_one(stream)
        if type(obj) is int:  # as the reference does: an int first means a legacy torch.save file
            obj = _load_torch_legacy(stream, obj)
        return obj
    except Exception as e:  # unpickling raises many types for damaged input; all mean "unreadable"
        detail = " ".join(str(e).split()) or type(e).__name__
        raise ValueError(f"{where} is not a readable pickle or torch.save file: {detail}") from e
