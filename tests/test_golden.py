"""Golden files: .wbs files of each bitstream version that every later wcodec must decode unchanged.

tests/golden/v1 and tests/golden/v2 contain each golden .wbs file, the safetensors output
expected from decoding it, and manifest.json with each file's sha256, source model and
encode options. A missing
golden file fails these tests, which never skip and never regenerate. tests/golden/README.md
explains when and how to regenerate them by hand.
"""

import hashlib
import json
from pathlib import Path

import pytest

import wcodec
from common import read_safetensors
from wcodec.decoder import open_wbs
from wcodec.formats.dtypes import tensor_to_bytes

GOLDEN_ROOT = Path(__file__).resolve().parent / "golden"
REPOSITORY = Path(__file__).resolve().parents[1]
GOLDEN_VERSIONS = {"synthetic": 1, "pnet": 1, "synthetic_dq": 1,
                   "synthetic_v2": 2, "pnet_transform": 2, "pnet_transform_dq": 2}
GOLDEN_NAMES = tuple(GOLDEN_VERSIONS)
# The synthetic model must exercise every coding mode and every dtype of version 1.
SYNTHETIC_MODES = {"raw", "quantized", "integer", "alias"}
ALL_DTYPES = {"BOOL", "U8", "I8", "U16", "I16", "U32", "I32", "U64", "I64", "F16", "BF16", "F32", "F64",
              "F8_E4M3", "F8_E5M2"}


def golden_dir(name: str) -> Path:
    return GOLDEN_ROOT / f"v{GOLDEN_VERSIONS[name]}"


def manifest_entry(name: str) -> dict:
    manifest = json.loads((golden_dir(name) / "manifest.json").read_text())
    assert manifest["bitstream_version"] == GOLDEN_VERSIONS[name]
    return manifest["files"][f"{name}.wbs"]


def golden_path(name: str) -> Path:
    path = golden_dir(name) / f"{name}.wbs"
    assert path.is_file(), f"golden file {path} is missing; restore it from version control"
    return path


def assert_same_safetensors(actual: Path, expected: Path) -> None:
    actual_metadata, actual_tensors = read_safetensors(actual)
    expected_metadata, expected_tensors = read_safetensors(expected)
    assert actual_metadata == expected_metadata
    assert list(actual_tensors) == list(expected_tensors)
    for name, tensor in expected_tensors.items():
        assert actual_tensors[name].dtype == tensor.dtype, name
        assert actual_tensors[name].shape == tensor.shape, name
        assert tensor_to_bytes(actual_tensors[name]) == tensor_to_bytes(tensor), name


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_golden_sha256(name):
    data = golden_path(name).read_bytes()

    assert hashlib.sha256(data).hexdigest() == manifest_entry(name)["sha256"]


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_golden_decode_exact(tmp_path, name):
    expected = golden_dir(name) / manifest_entry(name)["expected"]
    restored = tmp_path / "restored.safetensors"
    wcodec.decode_file(golden_path(name), restored)

    assert expected.is_file()
    assert_same_safetensors(restored, expected)


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_golden_load_exact(name):
    expected_metadata, expected = read_safetensors(golden_dir(name) / manifest_entry(name)["expected"])
    loaded = wcodec.load(golden_path(name))

    assert list(loaded) == list(expected)
    for tensor_name, tensor in expected.items():
        assert tensor_to_bytes(loaded[tensor_name]) == tensor_to_bytes(tensor), tensor_name


# Dependent quantization is left out: its trellis search is encoder tuning that may
# change without touching the bitstream, so only decoding its golden file is pinned.
# Only files of the version that this wcodec writes can be written again.
@pytest.mark.parametrize("name", ("synthetic_v2", "pnet_transform"))
def test_golden_reencode_identical(tmp_path, name):
    entry = manifest_entry(name)
    source = REPOSITORY / entry["source"]
    output = tmp_path / f"{name}.wbs"
    wcodec.encode_file(source, output, **entry["encode_options"])

    assert output.read_bytes() == golden_path(name).read_bytes()


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_golden_version(name):
    data = golden_path(name).read_bytes()
    with open_wbs(golden_path(name)) as wbs:
        frame_modes = {record.frame_mode for record in wbs.header.tensors if record.coding_mode == 1}

    assert int.from_bytes(data[8:10], "little") == GOLDEN_VERSIONS[name]
    # Version 2 added transform frames (frame_mode 4).
    if GOLDEN_VERSIONS[name] == 1:
        assert 4 not in frame_modes
    if "transform" in name:
        assert 4 in frame_modes


@pytest.mark.parametrize("name", ("synthetic", "synthetic_v2"))
def test_golden_synthetic_coverage(name):
    with open_wbs(golden_path(name)) as wbs:
        records = wbs.header.tensors
        metadata = wbs.header.metadata

    assert {record.mode_name for record in records} == SYNTHETIC_MODES
    assert {record.dtype for record in records} == ALL_DTYPES
    assert any(record.coding_mode == 1 and record.frame_mode != 0 for record in records)
    assert any(record.shape == () for record in records)
    assert any(0 in record.shape for record in records)
    assert any(len(record.shape) == 4 for record in records)
    assert metadata
