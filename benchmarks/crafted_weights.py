"""Crafted torch state_dict files, written by hand without torch, for the bounds of the torch-free reader
(hold_jax/evaluation/feature_networks/torch_weights.py): tests/test_torch_weights_bounds.py and
benchmarks/fault_injection.py.

`tensor` emits the opcodes torch pickles for a tensor, and `zip_file` / `legacy_file` wrap a state_dict pickle
and its storages in the two formats; `cases()` names the crafted files a reader must refuse in bounded memory.
"""
from __future__ import annotations

import io
import pickle
import zipfile

from hold_jax.evaluation.feature_networks import torch_weights

MIB = 2**20


def fragment(value) -> bytes:
  """`value` (ints, strings, None, tuples and dicts of them) as protocol-2 opcodes, without PROTO and STOP."""
  return pickle.dumps(value, protocol=2)[2:-1]


def global_(module: str, name: str) -> bytes:
  return f"c{module}\n{name}\n".encode()


def tensor(key: str, numel: int, shape, stride, storage: str = "FloatStorage", legacy: bool = False,
           offset: int = 0) -> bytes:
  """_rebuild_tensor_v2(storage `key` of `numel` elements, offset, shape, stride, False, OrderedDict())."""
  pid = (b"(" + fragment("storage") + global_("torch", storage) + fragment(key) + fragment("cpu")
         + fragment(numel) + (fragment(None) if legacy else b"") + b"t")
  return (global_("torch._utils", "_rebuild_tensor_v2") + b"(" + pid + b"Q" + fragment(offset)
          + fragment(tuple(shape)) + fragment(tuple(stride)) + b"\x89" + global_("collections", "OrderedDict")
          + b")Rt" + b"R")


def state_dict_pickle(entries: dict[str, bytes], before: bytes = b"") -> bytes:
  """A dict of `entries` (name -> value opcodes), after the opcodes `before` (which leave the stack empty)."""
  return b"\x80\x02" + before + b"}(" + b"".join(fragment(k) + v for k, v in entries.items()) + b"u."


def zip_file(pickled: bytes, storages: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, "w", compression, compresslevel=1 if compression else None) as archive:
    archive.writestr("archive/data.pkl", pickled)
    archive.writestr("archive/byteorder", "little")
    for key, raw in storages.items():
      archive.writestr(f"archive/data/{key}", raw)
  return buffer.getvalue()


def legacy_file(pickled: bytes, storages: dict[str, bytes], itemsize: int = 4) -> bytes:
  header = b"".join(pickle.dumps(obj, protocol=2) for obj in (
      torch_weights.LEGACY_MAGIC, torch_weights.LEGACY_PROTOCOL, {"protocol_version": 1001, "little_endian": True}))
  return (header + pickled + pickle.dumps(sorted(storages), protocol=2)
          + b"".join((len(storages[k]) // itemsize).to_bytes(8, "little") + storages[k] for k in sorted(storages)))


def crafted(legacy: bool, entries: dict[str, bytes], storages: dict[str, bytes], before: bytes = b"") -> bytes:
  pickled = state_dict_pickle(entries, before)
  return legacy_file(pickled, storages) if legacy else zip_file(pickled, storages)


def cases() -> dict[str, bytes]:
  """{name: file bytes} of crafted files that claim more than they hold, or try to change the reader."""
  one_float = {"0": b"\0\0\x80?"}
  result = {}
  for legacy in (True, False):
    form = "legacy" if legacy else "zip"
    result[f"zero-stride tensor of 16M floats ({form})"] = crafted(
        legacy, {"w": tensor("0", 1, (16 * MIB,), (0,), legacy=legacy)}, one_float)
    result[f"2048 tensors over one 64 KiB storage ({form})"] = crafted(
        legacy, {f"w{i}": tensor("0", 16384, (16384,), (1,), legacy=legacy) for i in range(2048)},
        {"0": bytes(65536)})
  result["zip storage record of 32 MiB for 1 float"] = zip_file(
      state_dict_pickle({"w": tensor("0", 1, (1,), (1,))}), {"0": bytes(32 * MIB)}, zipfile.ZIP_DEFLATED)
  result["zip data.pkl of 65 MiB"] = zip_file(b"\x80\x02" + bytes(65 * MIB - 2), {}, zipfile.ZIP_DEFLATED)
  result["int8 weights"] = zip_file(
      state_dict_pickle({"fc.bias": tensor("0", 1008, (1008,), (1,), storage="CharStorage")}),
      {"0": bytes(1008)})
  before = global_("torch", "FloatStorage") + fragment({"name": "CharStorage"}) + b"b0"
  result["BUILD on the FloatStorage stand-in"] = zip_file(
      state_dict_pickle({"w": tensor("0", 1, (1,), (1,))}, before), one_float)
  return result
