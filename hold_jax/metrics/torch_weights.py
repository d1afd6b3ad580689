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
"""
from __future__ import annotations

import collections
import dataclasses
import io
import pickle
import pickletools
import zipfile
from typing import Any

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# torch's storage classes, as the pickle names them, and the element type of each.
_STORAGE_DTYPES = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16",
    "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool", "UntypedStorage": "uint8",
}
_REFUSED_OPCODES = frozenset({"EXT1", "EXT2", "EXT4"})


def _dtype(name: str) -> np.dtype:
  if name == "bfloat16":
    import ml_dtypes  # pylint: disable=g-import-not-at-top  (ships with jax; only bf16 files need it)
    return np.dtype(ml_dtypes.bfloat16)
  return np.dtype(name)


# ----------------------------------------------------------------------------------------------------------
# Stand-ins for the few globals a state_dict pickle names. They only record what the pickle says.


@dataclasses.dataclass(frozen=True)
class _StorageType:
  """What `torch.FloatStorage` etc. unpickle to: a marker carrying the element type."""
  name: str

  @property
  def dtype(self) -> np.dtype:
    return _dtype(_STORAGE_DTYPES[self.name])


@dataclasses.dataclass(frozen=True)
class _StorageRef:
  """Storage `key` seen as `numel` elements of `dtype` starting at element `offset` (legacy views only)."""
  key: str
  dtype: np.dtype
  numel: int
  offset: int = 0


@dataclasses.dataclass(frozen=True)
class _TensorRef:
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
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
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
# Materialising tensors.


def _as_array(raw: bytes, dtype: np.dtype, big_endian: bool) -> np.ndarray:
  """Raw storage bytes -> 1-D native-endian array of `dtype`."""
  if dtype.itemsize > 1:
    return np.frombuffer(raw, dtype=dtype.newbyteorder(">" if big_endian else "<")).astype(dtype)
  return np.frombuffer(raw, dtype=dtype).copy()


def _materialise(ref: _TensorRef, roots: dict[str, np.ndarray]) -> np.ndarray:
  """The (contiguous, owned) array of `ref`; every element it touches must lie inside its storage view."""
  view = ref.storage
  storage = roots[view.key][view.offset:view.offset + view.numel]
  if 0 in ref.shape:
    return np.zeros(ref.shape, view.dtype)
  last = ref.offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride))
  if last >= storage.shape[0]:
    raise ValueError(f"tensor of shape {ref.shape} (offset {ref.offset}, stride {ref.stride}) reaches "
                     f"element {last} of a storage of {storage.shape[0]}")
  strides = tuple(s * storage.itemsize for s in ref.stride)
  return np.lib.stride_tricks.as_strided(storage[ref.offset:], ref.shape, strides, writeable=False).copy()


def _state_dict(obj: Any, roots: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  if not isinstance(obj, dict):
    raise ValueError(f"the file holds a {type(obj).__name__}, not a state_dict (a mapping of names to tensors)")
  result = {}
  for key, value in obj.items():
    if not isinstance(value, _TensorRef):
      raise ValueError(f"state_dict entry {key!r} is a {type(value).__name__}, not a tensor")
    result[str(key)] = _materialise(value, roots)
  return result


# ----------------------------------------------------------------------------------------------------------
# The two container formats.


def _read_zip(data: bytes) -> dict[str, np.ndarray]:
  with zipfile.ZipFile(io.BytesIO(data)) as archive:
    names = archive.namelist()
    pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
      raise ValueError(f"a torch zip file has exactly one <archive>/data.pkl; this one has {pickles}")
    prefix = pickles[0][:-len("data.pkl")]
    big_endian = f"{prefix}byteorder" in names and archive.read(f"{prefix}byteorder").strip() == b"big"
    pickled = archive.read(pickles[0])
    obj, unpickler = _unpickle(io.BytesIO(pickled), legacy=False)
    roots = {}
    for key, numel in unpickler.root_numel.items():
      dtype = unpickler.root_dtype[key]
      record = f"{prefix}data/{key}"
      if record not in names:
        raise ValueError(f"storage record {record} is missing")
      raw = archive.read(record)
      if len(raw) != numel * dtype.itemsize:
        raise ValueError(f"storage {record} has {len(raw)} bytes, expected {numel} x {dtype.itemsize}")
      roots[key] = _as_array(raw, dtype, big_endian)
  return _state_dict(obj, roots)


def _read_legacy(data: bytes) -> dict[str, np.ndarray]:
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
  return _state_dict(obj, roots)


def read_state_dict(data: bytes) -> dict[str, np.ndarray]:
  """{name: array} of a torch state_dict file's bytes, zip or legacy format, read without torch.

  Arrays keep the tensors' dtypes (bfloat16 through ml_dtypes) and shapes, and are contiguous copies.
  Raises ValueError for anything that is not a plain state_dict of tensors, in particular for any pickle
  that names a callable outside the allowed few (nothing in it is run).
  """
  if data[:4] == b"PK\x03\x04":
    try:
      return _read_zip(data)
    except zipfile.BadZipFile as error:
      raise ValueError(f"damaged torch zip file: {error}") from error
  return _read_legacy(data)
