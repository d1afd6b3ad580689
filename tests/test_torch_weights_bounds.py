"""The torch-free .pth reader (hold_jax/evaluation/feature_networks/torch_weights.py) against crafted files: sizes the
bytes do not back, zip bombs, dtypes the network cannot use, and BUILD on the reader's stand-ins.

The files are written by hand (no torch; benchmarks/crafted_weights.py): `tensor` emits the opcodes torch
pickles for a tensor, and `zip_file` / `legacy_file` wrap a state_dict pickle and its storages in the two
formats. Memory is measured
with tracemalloc, which sees numpy's buffers too: a refused file must be refused before it costs more than a
few MB, not after.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import tracemalloc
import zipfile

import numpy as np
import pytest

from benchmarks.crafted_weights import (MIB, crafted, fragment, global_, legacy_file, state_dict_pickle, tensor,
                                        zip_file)
from hold_jax.evaluation.feature_networks import inception
from hold_jax.evaluation.feature_networks import torch_weights

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
FEW_MB = 4 * MIB  # the memory a refused file may cost, all told


def peak_memory_of_refusal(data: bytes, match: str) -> int:
  """Peak bytes allocated while `read_state_dict(data)` runs, which must raise ValueError matching `match`."""
  tracemalloc.start()
  try:
    with pytest.raises(ValueError, match=match):
      torch_weights.read_state_dict(data)
    return tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()


def read_genuine_fixture() -> dict[str, np.ndarray]:
  with open(os.path.join(FIXTURES, "torch_reader_zip.pth"), "rb") as f:
    return torch_weights.read_state_dict(f.read())


FORMATS = pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "zip"])


# ----------------------------------------------------------------------------------------------------------
# Sizes: no tensor beyond its storage, no storage beyond the file.


@FORMATS
def test_zero_stride_tensor_is_refused_in_bounded_memory(legacy):
  # One float32 in storage, seen as 16M elements of stride 0: 64 MB from a file of a few hundred bytes.
  data = crafted(legacy, {"w": tensor("0", 1, (16 * MIB,), (0,), legacy=legacy)}, {"0": b"\0\0\x80?"})
  assert len(data) < (300 if legacy else 1000)
  peak = peak_memory_of_refusal(data, r"tensor 'w' claims shape \(16777216,\) \(16777216 elements\), but its "
                                r"storage 0 holds 1 elements")
  assert peak < FEW_MB


@FORMATS
def test_overlapping_view_larger_than_its_storage_is_refused(legacy):
  # Shape (4, 4) with strides (1, 1) stays inside 7 elements but would materialise 16.
  data = crafted(legacy, {"w": tensor("0", 7, (4, 4), (1, 1), legacy=legacy)}, {"0": bytes(28)})
  with pytest.raises(ValueError, match=r"tensor 'w' claims shape \(4, 4\) \(16 elements\).*holds 7 elements"):
    torch_weights.read_state_dict(data)


@FORMATS
def test_tensor_reaching_past_its_storage_is_refused(legacy):
  data = crafted(legacy, {"w": tensor("0", 8, (2, 2), (4, 1), legacy=legacy, offset=3)}, {"0": bytes(32)})
  with pytest.raises(ValueError, match=r"tensor 'w' of shape \(2, 2\) \(offset 3.*reaches element 8 of its "
                     r"storage 0, which holds 8"):
    torch_weights.read_state_dict(data)


@FORMATS
def test_many_tensors_reading_one_storage_are_refused_in_bounded_memory(legacy):
  # 64 KiB of storage read 2048 times over: 128 MiB of arrays from a file of some 370 KB.
  entry = tensor("0", 16384, (16384,), (1,), legacy=legacy)
  data = crafted(legacy, {f"w{i}": entry for i in range(2048)}, {"0": bytes(65536)})
  peak = peak_memory_of_refusal(data, rf"the tensors claim {128 * MIB} bytes in all, more than "
                                rf"{torch_weights.MAX_EXPANSION} times the 65536 bytes their storages hold")
  assert peak < FEW_MB


@FORMATS
def test_storage_claiming_more_than_the_file_holds_is_refused_before_reading(legacy):
  numel = 2**40  # 4 TiB of float32, in a file of a few hundred bytes
  entries = {"w": tensor("0", numel, (2,), (1,), legacy=legacy)}
  if legacy:
    data = legacy_file(state_dict_pickle(entries), {}, 4)
    data = data.replace(pickle.dumps([], protocol=2), pickle.dumps(["0"], protocol=2))
    data += numel.to_bytes(8, "little") + bytes(8)
    match = rf"the storages claim {4 * numel} bytes in all, but the file holds only 8 bytes"
  else:
    data = zip_file(state_dict_pickle(entries), {"0": bytes(8)})
    match = rf"storage 0 \(tensor 'w'\) claims {numel} x 4 bytes, but its zip record holds 8 bytes"
  assert peak_memory_of_refusal(data, match) < FEW_MB


# ----------------------------------------------------------------------------------------------------------
# Zip bombs: members are sized before they are read.


def test_zip_storage_record_larger_than_its_storage_is_refused_unread():
  # A 32 MiB record of zeros deflates to some 32 KB; the pickle says the storage is one float32.
  data = zip_file(state_dict_pickle({"w": tensor("0", 1, (1,), (1,))}), {"0": bytes(32 * MIB)}, zipfile.ZIP_DEFLATED)
  assert len(data) < MIB
  peak = peak_memory_of_refusal(data, rf"storage 0 \(tensor 'w'\) claims 1 x 4 bytes, but its zip record holds "
                                rf"{32 * MIB} bytes")
  assert peak < FEW_MB


def test_oversized_zip_pickle_is_refused_unread():
  size = 65 * MIB  # over MAX_PICKLE_BYTES, 64 MiB
  data = zip_file(b"\x80\x02" + bytes(size - 2), {}, zipfile.ZIP_DEFLATED)
  assert len(data) < MIB
  peak = peak_memory_of_refusal(data, rf"zip record archive/data\.pkl is {size} bytes uncompressed, more than the "
                                rf"{64 * MIB} it may have")
  assert peak < FEW_MB and torch_weights.MAX_PICKLE_BYTES == 64 * MIB


# ----------------------------------------------------------------------------------------------------------
# Dtypes.


@pytest.mark.parametrize("storage, dtype", [("CharStorage", "int8"), ("BoolStorage", "bool")])
def test_reader_refuses_dtypes_not_allowed(storage, dtype):
  data = zip_file(state_dict_pickle({"w": tensor("0", 4, (4,), (1,), storage=storage)}), {"0": bytes(4)})
  with pytest.raises(ValueError, match=rf"tensor 'w' has dtype {dtype}; allowed here: bfloat16, float16, "
                     r"float32, float64, int64"):
    torch_weights.read_state_dict(data)
  assert torch_weights.read_state_dict(data, allowed_dtypes=[dtype])["w"].dtype == np.dtype(dtype)
  assert torch_weights.read_state_dict(data, allowed_dtypes=None)["w"].dtype == np.dtype(dtype)
  with pytest.raises(ValueError, match=r"allowed_dtypes \['float8'\] are no torch storage types"):
    torch_weights.read_state_dict(data, allowed_dtypes=["float8"])


def test_load_inception_refuses_a_pth_with_integer_weights(tmp_path):
  # Refused by the reader, before the network's keys are even looked at, with the file and tensor named.
  path = tmp_path / "int8_weights.pth"
  path.write_bytes(zip_file(state_dict_pickle({"fc.bias": tensor("0", 1008, (1008,), (1,), storage="CharStorage")}),
                            {"0": bytes(1008)}))
  digest = hashlib.sha256(path.read_bytes()).hexdigest()
  with pytest.raises(ValueError, match=r"int8_weights\.pth: tensor 'fc\.bias' has dtype int8; allowed here: "
                     r"bfloat16, float16, float32, float64, int64\. .*pytorch-fid"):
    inception.load_inception(str(path), expected_sha256=digest)


@pytest.mark.parametrize("dtype", [np.int64, np.int8, np.bool_])
def test_params_from_state_dict_refuses_non_floating_weights(dtype):
  # The .npz path and int64 (which the reader lets through for num_batches_tracked) meet this check.
  slots = inception._slots()  # pylint: disable=protected-access  (the shapes, without the calibration pass)
  state_dict = {key: np.zeros(slot.torch_shape, np.float32) for key, slot in slots.items()}
  state_dict["Conv2d_1a_3x3.bn.num_batches_tracked"] = np.zeros((), np.int64)  # ignored, whatever its dtype
  state_dict["fc.bias"] = state_dict["fc.bias"].astype(dtype)
  name = np.dtype(dtype).name
  with pytest.raises(ValueError, match=rf"1 problems.*key fc\.bias has dtype {name}, expected a floating type"):
    inception.params_from_state_dict(state_dict)
  state_dict["fc.bias"] = state_dict["fc.bias"].astype(np.float16)
  assert inception.params_from_state_dict(state_dict)["params"]["fc"]["bias"].dtype == np.float32


# ----------------------------------------------------------------------------------------------------------
# BUILD cannot change the reader's stand-ins.


@pytest.mark.parametrize("module, name", [
    ("torch", "FloatStorage"), ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
    ("collections", "OrderedDict")])
def test_build_on_a_stand_in_is_refused(module, name):
  # BUILD with a dict state updates the target's __dict__: FloatStorage would read as int8 from then on.
  before = global_(module, name) + fragment({"name": "CharStorage", "function": None}) + b"b0"
  data = zip_file(state_dict_pickle({"w": tensor("0", 1, (1,), (1,))}, before), {"0": b"\0\0\x80?"})
  with pytest.raises(ValueError, match="refusing to set the state|not a readable torch pickle"):
    torch_weights.read_state_dict(data)
  genuine = read_genuine_fixture()
  assert genuine["conv.weight"].dtype == np.float32 and genuine["conv.weight"].shape == (4, 3, 3, 3)


def test_build_on_a_tensor_is_refused():
  # BUILD on a rebuilt tensor would skip _rebuild_tensor's checks: here, 16M elements of stride 0.
  entry = tensor("0", 1, (1,), (1,)) + fragment({"shape": (16 * MIB,), "stride": (0,)}) + b"b"
  data = zip_file(state_dict_pickle({"w": entry}), {"0": b"\0\0\x80?"})
  assert peak_memory_of_refusal(data, r"refusing to set the state of a TensorRef") < FEW_MB


@FORMATS
def test_ordered_dict_with_metadata_still_reads(legacy):
  # What torch.save(model.state_dict()) writes: an OrderedDict whose _metadata is set by BUILD.
  pickled = (b"\x80\x02" + global_("collections", "OrderedDict") + b")R(" + fragment("w")
             + tensor("0", 6, (2, 3), (3, 1), legacy=legacy) + b"u" + fragment({"_metadata": {"": {"version": 1}}})
             + b"b.")
  storages = {"0": np.arange(6, dtype="<f4").tobytes()}
  data = legacy_file(pickled, storages) if legacy else zip_file(pickled, storages)
  state_dict = torch_weights.read_state_dict(data)
  assert list(state_dict) == ["w"] and state_dict["w"].dtype == np.float32
  np.testing.assert_array_equal(state_dict["w"], np.arange(6, dtype=np.float32).reshape(2, 3))
