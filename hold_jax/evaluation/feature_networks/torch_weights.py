"""Reads a torch state_dict file (.pth) into numpy arrays, without torch and without running pickled code.

A .pth file is a pickle, and unpickling an untrusted pickle runs whatever callables it names. A state_dict
needs only a handful of them, so this reader's Unpickler resolves exactly those names (the tensor rebuild
functions, OrderedDict and the storage-type markers) to harmless local stand-ins and refuses every other
global with a ValueError before anything is called. The opcode stream is scanned first as well: the EXT
opcodes go through copyreg's extension cache, which can bypass find_class. Nothing from the file is ever
executed; tensors are rebuilt here from (storage, offset, shape, stride) with bounds checks.

Two container formats exist, and both occur in the wild:
  zip (torch >= 1.6): <archive>/data.pkl is the pickle, <archive>/data/<key> holds storage <key> as raw
    bytes, <archive>/byteorder says 'little' or 'big' (absent in old files: little).
  legacy (torch < 1.6, and torch.save(..., _use_new_zipfile_serialization=False)): five things back to back,
    pickle(MAGIC) pickle(1001) pickle(sys_info) pickle(obj) pickle(sorted storage keys), then for each key in
    that list: an int64 element count followed by the storage's raw bytes. The published FID Inception files
    (2019-2020) are in this format.
In both, a tensor pickles as _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks), where
`storage` is a persistent id ('storage', <dtype marker>, key, location, numel[, view]) and offset, size and
stride count elements, not bytes.

Bounds. A crafted file must cost no more memory than its bytes justify, so every size the pickle claims is
checked against the bytes actually there before anything is read or allocated:
  - zip members are read only after their uncompressed size (ZipInfo.file_size, which also caps what
    zipfile inflates) is checked: data.pkl at most MAX_PICKLE_BYTES, byteorder a few bytes, and each storage
    record exactly the numel x itemsize the pickle claims for it (zip bombs are refused unread);
  - the storages' claimed bytes together fit in the file (in what follows the pickle, for the legacy format),
    which also bounds compressed or overlapping zip members;
  - a tensor never has more elements than its storage (view) holds, and offset + extent stay inside it: a
    state_dict's tensors never exceed their storage, while a zero-stride or overlapping view could make a
    tiny file expand to any size;
  - the returned arrays together hold at most MAX_EXPANSION times the storages' bytes (tied weights and
    views share storage, but no state_dict reads its storage over and over);
  - each tensor's dtype is one the caller allows (`allowed_dtypes`; by default floating types and int64).
The stand-ins are shared by every read, so the pickle cannot change them: BUILD, the opcode that sets an
object's state, is refused on each of them (the OrderedDict holding a state_dict, whose `_metadata` torch
sets by BUILD, is a real OrderedDict made afresh for each file).
Each of these refusals is a ValueError of one line naming the tensor or storage, what it claims and what the
file holds; callers add the file's name (inception.py does).
"""
from __future__ import annotations

import collections
import dataclasses
import io
import math
import pickle
import pickletools
import zipfile
import zlib
from typing import Any, Callable, Iterable

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
MAX_PICKLE_BYTES = 64 * 2**20  # data.pkl of a state_dict is kilobytes; anything near this is a zip bomb
MAX_EXPANSION = 4  # returned bytes / storage bytes: views and tied weights read some bytes twice, not more
DEFAULT_DTYPES = frozenset({"float16", "bfloat16", "float32", "float64", "int64"})  # int64: num_batches_tracked

# torch's storage classes, as the pickle names them, and the element type of each.
_STORAGE_DTYPES = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16",
    "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool", "UntypedStorage": "uint8",
}
_REFUSED_OPCODES = frozenset({"EXT1", "EXT2", "EXT4"})
_MAX_BYTEORDER_BYTES = 16


def _dtype(name: str) -> np.dtype:
  if name == "bfloat16":
    import ml_dtypes  # pylint: disable=g-import-not-at-top  (ships with jax; only bf16 files need it)
    return np.dtype(ml_dtypes.bfloat16)
  return np.dtype(name)


# ----------------------------------------------------------------------------------------------------------
# Stand-ins for the few globals a state_dict pickle names. They only record what the pickle says.


class _Sealed:
  """Base of every stand-in: the pickle's BUILD opcode calls __setstate__ when there is one (before it would
  touch __dict__ or setattr), and here it refuses, so no pickle can change a stand-in, shared or fresh."""
  __slots__ = ()

  def __setstate__(self, state) -> None:
    raise ValueError(f"refusing to set the state of a {type(self).__name__.lstrip('_')} (pickle opcode BUILD): "
                     "a state_dict sets state only on the OrderedDict holding it")


@dataclasses.dataclass(frozen=True)
class _StorageType(_Sealed):
  """What `torch.FloatStorage` etc. unpickle to: a marker carrying the element type."""
  name: str

  @property
  def dtype(self) -> np.dtype:
    return _dtype(_STORAGE_DTYPES[self.name])


@dataclasses.dataclass(frozen=True)
class _Function(_Sealed):
  """What the rebuild functions unpickle to: calls `function`, but cannot be changed by BUILD."""
  function: Callable[..., Any]

  def __call__(self, *args):
    return self.function(*args)


@dataclasses.dataclass(frozen=True)
class _StorageRef(_Sealed):
  """Storage `key` seen as `numel` elements of `dtype` starting at element `offset` (legacy views only)."""
  key: str
  dtype: np.dtype
  numel: int
  offset: int = 0


@dataclasses.dataclass(frozen=True)
class _TensorRef(_Sealed):
  """A tensor as the pickle describes it; materialised once the storages' bytes are known."""
  storage: _StorageRef
  offset: int
  shape: tuple[int, ...]
  stride: tuple[int, ...]


def _rebuild_tensor(storage, storage_offset, size, stride, *unused) -> _TensorRef:
  """torch._utils._rebuild_tensor(_v2): (storage, offset, size, stride[, requires_grad, hooks, metadata])."""
  if not isinstance(storage, _StorageRef):
    raise ValueError(f"a tensor's storage is {type(storage).__name__}, not a storage reference")
  shape, strides = tuple(size), tuple(stride)
  if not all(isinstance(v, int) and v >= 0 for v in (storage_offset, *shape, *strides)):
    raise ValueError(f"tensor with bad offset/size/stride: {storage_offset}, {shape}, {strides}")
  if len(shape) != len(strides):
    raise ValueError(f"tensor size {shape} and stride {strides} differ in length")
  return _TensorRef(storage, storage_offset, shape, strides)


def _rebuild_parameter(data, *unused):
  """torch._utils._rebuild_parameter(_with_state)(data, requires_grad, hooks[, state]): the tensor itself."""
  return data


_ALLOWED_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _Function(_rebuild_tensor),
    ("torch._utils", "_rebuild_tensor"): _Function(_rebuild_tensor),
    ("torch._utils", "_rebuild_parameter"): _Function(_rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"): _Function(_rebuild_parameter),
    ("collections", "OrderedDict"): collections.OrderedDict,  # a builtin type: BUILD cannot change it
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
}


class _RestrictedUnpickler(pickle.Unpickler):
  """Resolves only `_ALLOWED_GLOBALS`; storages become `_StorageRef`s through persistent ids."""

  def __init__(self, file, legacy: bool):
    super().__init__(file)
    self._legacy = legacy
    self.root_numel: dict[str, int] = {}  # storage key -> element count of the whole storage
    self.root_dtype: dict[str, np.dtype] = {}

  def find_class(self, module: str, name: str) -> Any:
    try:
      return _ALLOWED_GLOBALS[(module, name)]
    except KeyError:
      raise ValueError(f"refusing to unpickle the global {module}.{name}: a state_dict file needs only "
                       "tensors, and anything else could run code") from None

  def persistent_load(self, pid) -> _StorageRef:
    expected = 6 if self._legacy else 5
    if not (isinstance(pid, tuple) and len(pid) == expected and pid[0] in ("storage", b"storage")):
      raise ValueError(f"unexpected persistent id {pid!r}: only storages are allowed")
    storage_type, key, numel = pid[1], str(pid[2]), pid[4]
    view = pid[5] if self._legacy else None
    if not isinstance(storage_type, _StorageType) or not isinstance(numel, int) or numel < 0:
      raise ValueError(f"unexpected storage description {pid!r}")
    if self.root_dtype.setdefault(key, storage_type.dtype) != storage_type.dtype:
      raise ValueError(f"storage {key} is used with two element types")
    if self.root_numel.setdefault(key, numel) != numel:
      raise ValueError(f"storage {key} is given two sizes")
    if view is None:
      return _StorageRef(key, storage_type.dtype, numel)
    _, view_offset, view_numel = view  # (view key, offset, size), in elements of the root storage
    if not (isinstance(view_offset, int) and isinstance(view_numel, int) and view_offset >= 0 and view_numel >= 0
            and view_offset + view_numel <= numel):
      raise ValueError(f"storage view {view!r} lies outside storage {key} of {numel} elements")
    return _StorageRef(key, storage_type.dtype, view_numel, view_offset)


def _refuse_extension_opcodes(stream: io.BytesIO) -> None:
  """Scans the next pickle of `stream` (up to its STOP) without running it, and rewinds; EXT opcodes are
  refused."""
  start = stream.tell()
  try:
    for opcode, _, _ in pickletools.genops(stream):
      if opcode.name in _REFUSED_OPCODES:
        raise ValueError(f"refusing pickle opcode {opcode.name}: it looks up callables outside find_class")
  except ValueError:
    raise
  except Exception as error:  # pylint: disable=broad-except  (truncated or malformed pickles)
    raise ValueError(f"not a readable torch pickle: {type(error).__name__}: {error}") from error
  stream.seek(start)


def _unpickle(stream: io.BytesIO, legacy: bool) -> tuple[Any, _RestrictedUnpickler]:
  """The next object of `stream`, through the restricted unpickler (returned too: it knows the storages)."""
  _refuse_extension_opcodes(stream)
  unpickler = _RestrictedUnpickler(stream, legacy)
  try:
    return unpickler.load(), unpickler
  except ValueError:
    raise
  except Exception as error:  # pylint: disable=broad-except  (truncated or malformed pickles)
    raise ValueError(f"not a readable torch pickle: {type(error).__name__}: {error}") from error


# ----------------------------------------------------------------------------------------------------------
# Checking every claimed size, then materialising tensors.


def _tensors(obj: Any) -> dict[str, _TensorRef]:
  if not isinstance(obj, dict):
    raise ValueError(f"the file holds a {type(obj).__name__}, not a state_dict (a mapping of names to tensors)")
  for key, value in obj.items():
    if not isinstance(value, _TensorRef):
      raise ValueError(f"state_dict entry {key!r} is a {type(value).__name__}, not a tensor")
  return {str(key): value for key, value in obj.items()}


def _check_sizes(tensors: dict[str, _TensorRef], unpickler: _RestrictedUnpickler, available: int,
                 records: dict[str, int] | None, allowed: frozenset[str] | None) -> None:
  """Refuses, before any storage is read, every claim the bytes do not back (see the module docstring).

  `available`: the bytes the storages can come from; `records`: {storage key: uncompressed size of its zip
  record} (None for the legacy format, whose per-storage counts are checked as they are read).
  """
  users = {}  # storage key -> the first tensor on it, to name in errors
  for name, ref in tensors.items():
    users.setdefault(ref.storage.key, name)
  stored = 0
  for key, numel in unpickler.root_numel.items():
    itemsize = unpickler.root_dtype[key].itemsize
    user = f" (tensor {users[key]!r})" if key in users else ""
    if records is not None and records[key] != numel * itemsize:
      raise ValueError(f"storage {key}{user} claims {numel} x {itemsize} bytes, but its zip record holds "
                       f"{records[key]} bytes")
    stored += numel * itemsize
  if stored > available:
    raise ValueError(f"the storages claim {stored} bytes in all, but the file holds only {available} bytes for "
                     "them (truncated or crafted file)")
  returned = 0
  for name, ref in tensors.items():
    view, numel = ref.storage, math.prod(ref.shape)
    if allowed is not None and view.dtype.name not in allowed:
      raise ValueError(f"tensor {name!r} has dtype {view.dtype.name}; allowed here: {', '.join(sorted(allowed))}")
    if numel > view.numel:
      raise ValueError(f"tensor {name!r} claims shape {ref.shape} ({numel} elements), but its storage {view.key} "
                       f"holds {view.numel} elements: a state_dict's tensors never exceed their storage")
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride))
    if numel and last >= view.numel:
      raise ValueError(f"tensor {name!r} of shape {ref.shape} (offset {ref.offset}, stride {ref.stride}) reaches "
                       f"element {last} of its storage {view.key}, which holds {view.numel} elements")
    returned += numel * view.dtype.itemsize
  if returned > MAX_EXPANSION * stored:
    raise ValueError(f"the tensors claim {returned} bytes in all, more than {MAX_EXPANSION} times the {stored} "
                     "bytes their storages hold: no state_dict reads its storage over and over")


def _as_array(raw: bytes, dtype: np.dtype, big_endian: bool) -> np.ndarray:
  """Raw storage bytes -> 1-D native-endian array of `dtype`."""
  if dtype.itemsize > 1:
    return np.frombuffer(raw, dtype=dtype.newbyteorder(">" if big_endian else "<")).astype(dtype)
  return np.frombuffer(raw, dtype=dtype).copy()


def _materialise(ref: _TensorRef, roots: dict[str, np.ndarray]) -> np.ndarray:
  """The (contiguous, owned) array of `ref`, whose bounds `_check_sizes` has checked."""
  view = ref.storage
  storage = roots[view.key][view.offset:view.offset + view.numel]
  if 0 in ref.shape:
    return np.zeros(ref.shape, view.dtype)
  strides = tuple(s * storage.itemsize for s in ref.stride)
  return np.lib.stride_tricks.as_strided(storage[ref.offset:], ref.shape, strides, writeable=False).copy()


# ----------------------------------------------------------------------------------------------------------
# The two container formats.


def _read_member(archive: zipfile.ZipFile, name: str, limit: int) -> bytes:
  """Zip member `name`, refused unread when its uncompressed size is over `limit` bytes."""
  size = archive.getinfo(name).file_size
  if size > limit:
    raise ValueError(f"zip record {name} is {size} bytes uncompressed, more than the {limit} it may have")
  return archive.read(name)


def _read_zip(data: bytes, allowed: frozenset[str] | None) -> dict[str, np.ndarray]:
  with zipfile.ZipFile(io.BytesIO(data)) as archive:
    names = set(archive.namelist())
    pickles = sorted(n for n in names if n.endswith("/data.pkl") and n.count("/") == 1)
    if len(pickles) != 1:
      raise ValueError(f"a torch zip file has exactly one <archive>/data.pkl; this one has {pickles}")
    prefix = pickles[0][:-len("data.pkl")]
    big_endian = (f"{prefix}byteorder" in names
                  and _read_member(archive, f"{prefix}byteorder", _MAX_BYTEORDER_BYTES).strip() == b"big")
    obj, unpickler = _unpickle(io.BytesIO(_read_member(archive, pickles[0], MAX_PICKLE_BYTES)), legacy=False)
    tensors = _tensors(obj)
    missing = sorted(f"{prefix}data/{key}" for key in unpickler.root_numel if f"{prefix}data/{key}" not in names)
    if missing:
      raise ValueError(f"storage record {missing[0]} is missing")
    records = {key: archive.getinfo(f"{prefix}data/{key}").file_size for key in unpickler.root_numel}
    _check_sizes(tensors, unpickler, len(data), records, allowed)
    roots = {}
    for key, numel in unpickler.root_numel.items():
      dtype = unpickler.root_dtype[key]
      raw = _read_member(archive, f"{prefix}data/{key}", numel * dtype.itemsize)
      if len(raw) != numel * dtype.itemsize:
        raise ValueError(f"storage {key} has {len(raw)} bytes, expected {numel} x {dtype.itemsize}")
      roots[key] = _as_array(raw, dtype, big_endian)
  return {name: _materialise(ref, roots) for name, ref in tensors.items()}


def _read_legacy(data: bytes, allowed: frozenset[str] | None) -> dict[str, np.ndarray]:
  stream = io.BytesIO(data)
  magic, _ = _unpickle(stream, legacy=True)
  if magic != LEGACY_MAGIC:
    raise ValueError("neither a torch zip file nor a legacy torch file (wrong magic number)")
  protocol, _ = _unpickle(stream, legacy=True)
  if protocol != LEGACY_PROTOCOL:
    raise ValueError(f"legacy torch file of protocol {protocol}, expected {LEGACY_PROTOCOL}")
  sys_info, _ = _unpickle(stream, legacy=True)
  big_endian = isinstance(sys_info, dict) and sys_info.get("little_endian") is False
  obj, unpickler = _unpickle(stream, legacy=True)
  keys, _ = _unpickle(stream, legacy=True)
  if not isinstance(keys, list) or sorted(map(str, keys)) != sorted(unpickler.root_numel):
    raise ValueError(f"the storage key list {keys!r} does not match the storages the pickle uses")
  tensors = _tensors(obj)
  _check_sizes(tensors, unpickler, max(0, len(data) - stream.tell() - 8 * len(keys)), None, allowed)
  roots = {}
  for key in map(str, keys):  # each: int64 element count, then the raw bytes, in the list's order
    dtype, numel = unpickler.root_dtype[key], unpickler.root_numel[key]
    header = stream.read(8)
    count = int.from_bytes(header, "big" if big_endian else "little", signed=True) if len(header) == 8 else -1
    if count != numel:
      raise ValueError(f"storage {key}: the file says {count} elements, the pickle {numel} (truncated file?)")
    raw = stream.read(numel * dtype.itemsize)
    if len(raw) != numel * dtype.itemsize:
      raise ValueError(f"storage {key} is truncated: {len(raw)} of {numel * dtype.itemsize} bytes")
    roots[key] = _as_array(raw, dtype, big_endian)
  return {name: _materialise(ref, roots) for name, ref in tensors.items()}


def read_state_dict(data: bytes, allowed_dtypes: Iterable[str] | None = DEFAULT_DTYPES) -> dict[str, np.ndarray]:
  """{name: array} of a torch state_dict file's bytes, zip or legacy format, read without torch.

  Arrays keep the tensors' dtypes (bfloat16 through ml_dtypes) and shapes, and are contiguous copies.
  `allowed_dtypes`: the dtype names ('float32', 'bfloat16', ...) a tensor may have, as the caller's network
  needs them (None: any torch storage type); by default floating types and int64 (batch norm counters).
  Raises ValueError for anything that is not a plain state_dict of such tensors, in particular for any pickle
  that names a callable outside the allowed few (nothing in it is run), and for any size the file's bytes do
  not back (module docstring: Bounds), before reading or allocating it.
  """
  allowed = None if allowed_dtypes is None else frozenset(allowed_dtypes)
  if allowed is not None and not allowed <= set(_STORAGE_DTYPES.values()):
    raise ValueError(f"allowed_dtypes {sorted(allowed - set(_STORAGE_DTYPES.values()))} are no torch storage "
                     f"types; use names among {sorted(set(_STORAGE_DTYPES.values()))}")
  if data[:4] == b"PK\x03\x04":
    try:
      return _read_zip(data, allowed)
    except (zipfile.BadZipFile, EOFError, NotImplementedError, zlib.error) as error:
      raise ValueError(f"damaged torch zip file: {type(error).__name__}: {error}") from error
  return _read_legacy(data, allowed)
