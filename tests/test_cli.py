"""The command line: encode, decode and stats, their output, exit statuses and error messages.

Most tests call the click group in process with CliRunner. Two run the installed `wcodec`
console script in a subprocess, because the package has no __main__ module.
"""

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from common import PNET, build_wbs, read_safetensors, write_safetensors
from wcodec.cli import cli
from wcodec.codec import residual_coding
from wcodec.formats import container

WCODEC_SCRIPT = Path(sys.executable).parent / "wcodec"
PNET_TENSORS = 13
PNET_WEIGHTS = 6632


def run(*args):
    return CliRunner().invoke(cli, [str(arg) for arg in args])


def assert_one_line_error(result, status, *fragments):
    """Check the exit status and that stderr is one 'wcodec: error:' line containing each fragment."""
    lines = result.stderr.splitlines()
    assert result.exit_code == status, result.output
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("wcodec: error: ")
    assert "Traceback" not in result.output
    assert result.stdout == ""
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture
def workdir(tmp_path):
    """Return a directory that contains a copy of the P-Net model as model.safetensors."""
    shutil.copyfile(PNET, tmp_path / "model.safetensors")
    return tmp_path


@pytest.fixture
def encoded(workdir):
    """Return the path of model.wbs, the P-Net model encoded at the default qp."""
    result = run("encode", workdir / "model.safetensors", "-o", workdir / "model.wbs")
    assert result.exit_code == 0, result.output
    return workdir / "model.wbs"


def damaged_payload(wbs: Path) -> Path:
    """Write a copy of `wbs` with one payload byte flipped, which the payload CRC catches."""
    data = bytearray(wbs.read_bytes())
    data[-1] ^= 0x10
    path = wbs.with_name("damaged.wbs")
    path.write_bytes(bytes(data))
    return path


def listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


# ---------------------------------------------------------------- happy paths


def test_encode_reports_sizes(workdir):
    result = run("encode", workdir / "model.safetensors", "-o", workdir / "model.wbs")
    size = (workdir / "model.wbs").stat().st_size

    assert result.exit_code == 0
    assert result.stderr == ""
    assert f"{PNET_TENSORS} tensors, {PNET_WEIGHTS} weights, {size} bytes" in result.stdout
    assert listing(workdir) == ["model.safetensors", "model.wbs"]


def test_decode_restores_model(encoded):
    restored = encoded.with_name("restored.safetensors")
    result = run("decode", encoded, "-o", restored)
    metadata, tensors = read_safetensors(restored)
    original_metadata, original = read_safetensors(PNET)

    assert result.exit_code == 0
    assert result.stderr == ""
    assert f"{PNET_TENSORS} tensors" in result.stdout
    assert metadata == original_metadata
    assert list(tensors) == list(original)
    # Half a step at qp -32, three halves for the 3x3 kernels of transform frames.
    for name, tensor in original.items():
        assert torch.allclose(tensors[name], tensor, rtol=0, atol=3 * 2**-9), name


def test_stats_table(encoded):
    result = run("stats", encoded)

    assert result.exit_code == 0
    assert result.stderr == ""
    for name in read_safetensors(PNET)[1]:
        assert name in result.stdout
    assert f"for {PNET_WEIGHTS} weights" in result.stdout
    assert "histogram of quantized levels (all quantized tensors" in result.stdout


def test_stats_json(encoded):
    result = run("stats", encoded, "--json")
    stats = json.loads(result.stdout)
    data = encoded.read_bytes()
    header_length = struct.unpack_from("<I", data, 12)[0]

    assert result.exit_code == 0
    assert stats["total_bits"] == 8 * len(data)
    assert stats["num_weights"] == PNET_WEIGHTS
    assert stats["bits_per_weight"] == pytest.approx(8 * len(data) / PNET_WEIGHTS)
    assert len(stats["tensors"]) == PNET_TENSORS
    for entry in stats["tensors"]:
        assert {"name", "shape", "dtype", "mode", "bits"} <= set(entry)
        assert entry["dtype"] == "F32"
        assert entry["mode"] == "quantized"
    assert sum(entry["bits"] for entry in stats["tensors"]) == 8 * (len(data) - 20 - header_length)
    assert [entry["name"] for entry in stats["tensors"]] == list(read_safetensors(PNET)[1])


def test_stats_json_shapes(encoded):
    stats = json.loads(run("stats", encoded, "--json").stdout)
    shapes = {entry["name"]: entry["shape"] for entry in stats["tensors"]}
    _, tensors = read_safetensors(PNET)

    assert shapes == {name: list(tensor.shape) for name, tensor in tensors.items()}


def test_stats_one_tensor(encoded):
    result = run("stats", encoded, "--json", "--tensor", "conv1.weight")
    histogram = json.loads(result.stdout)["histogram"]
    _, tensors = read_safetensors(PNET)

    assert result.exit_code == 0
    assert histogram["tensor"] == "conv1.weight"
    assert sum(entry["count"] for entry in histogram["bins"]) == tensors["conv1.weight"].numel()


def test_stats_one_tensor_table(encoded):
    result = run("stats", encoded, "--tensor", "conv1.weight")

    assert result.exit_code == 0
    assert "histogram of quantized levels (conv1.weight, 270 levels)" in result.stdout


def test_encode_options(workdir):
    source = workdir / "model.safetensors"
    coarse = run("encode", source, "-o", workdir / "coarse.wbs", "--qp", "-20", "--keep", "conv1.*",
                 "--keep", r"prelu\d\.weight")
    stats = json.loads(run("stats", workdir / "coarse.wbs", "--json").stdout)
    modes = {entry["name"]: (entry["mode"], entry["qp"]) for entry in stats["tensors"]}

    assert coarse.exit_code == 0
    assert modes["conv1.weight"] == ("raw", None)
    assert modes["conv1.bias"] == ("raw", None)
    assert modes["prelu1.weight"] == ("raw", None)
    assert modes["conv2.weight"] == ("quantized", -20)
    assert modes["conv2.bias"] == ("quantized", -44)


def test_force_replaces_output(encoded):
    result = run("encode", encoded.with_name("model.safetensors"), "-o", encoded, "--qp", "-20", "--force")

    assert result.exit_code == 0
    assert json.loads(run("stats", encoded, "--json").stdout)["tensors"][1]["qp"] == -20


def test_stats_inter_frames(tmp_path):
    generator = torch.Generator().manual_seed(0)
    base = 0.1 * torch.randn(32, 16, 3, 3, generator=generator)
    tensors = {"layer1.weight": base, "layer2.weight": base + 0.001 * torch.randn(32, 16, 3, 3, generator=generator)}
    write_safetensors(tmp_path / "model.safetensors", tensors)
    assert run("encode", tmp_path / "model.safetensors", "-o", tmp_path / "model.wbs").exit_code == 0

    result = run("stats", tmp_path / "model.wbs", "--json")
    entries = json.loads(result.stdout)["tensors"]

    assert result.exit_code == 0, result.output
    assert entries[1]["mode"] == "quantized"
    assert entries[1]["frame_mode"] != "intra"


def test_version():
    result = run("--version")

    assert result.exit_code == 0
    assert "0.1.0" in result.stdout


# ---------------------------------------------------------------- input errors: exit status 1


@pytest.mark.parametrize("command", ["encode", "decode", "stats"])
def test_missing_input(tmp_path, command):
    args = [command, tmp_path / "absent.file"] + ([] if command == "stats" else ["-o", tmp_path / "out"])
    result = run(*args)

    assert_one_line_error(result, 1, "absent.file")
    assert listing(tmp_path) == []


def test_encode_existing_output(encoded):
    before = encoded.read_bytes()
    result = run("encode", encoded.with_name("model.safetensors"), "-o", encoded)

    assert_one_line_error(result, 1, "exists", "--force")
    assert encoded.read_bytes() == before
    assert listing(encoded.parent) == ["model.safetensors", "model.wbs"]


def test_decode_existing_output(encoded):
    target = encoded.with_name("restored.safetensors")
    target.write_bytes(b"keep me")
    result = run("decode", encoded, "-o", target)

    assert_one_line_error(result, 1, "exists", "--force")
    assert target.read_bytes() == b"keep me"


@pytest.mark.parametrize("command", ["encode", "decode"])
def test_output_is_input(encoded, command):
    source = encoded.with_name("model.safetensors") if command == "encode" else encoded
    before = source.read_bytes()
    result = run(command, source, "-o", source, "--force")

    assert_one_line_error(result, 1, "is the input")
    assert source.read_bytes() == before
    assert listing(encoded.parent) == ["model.safetensors", "model.wbs"]


def test_stats_unknown_tensor(encoded):
    result = run("stats", encoded, "--tensor", "no.such.weight")

    assert_one_line_error(result, 1, "no.such.weight")


@pytest.mark.parametrize("qp", ["1000", "-257"])
def test_encode_invalid_qp(workdir, qp):
    result = run("encode", workdir / "model.safetensors", "-o", workdir / "model.wbs", "--qp", qp)

    assert_one_line_error(result, 1, "qp")
    assert listing(workdir) == ["model.safetensors"]


def test_encode_invalid_safetensors(tmp_path):
    source = tmp_path / "broken.safetensors"
    source.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
    result = run("encode", source, "-o", tmp_path / "out.wbs")

    assert_one_line_error(result, 1, "broken.safetensors")
    assert listing(tmp_path) == ["broken.safetensors"]


# ---------------------------------------------------------------- damaged .wbs: exit status 2


@pytest.mark.parametrize("command", ["decode", "stats"])
def test_damaged_payload(encoded, command):
    damaged = damaged_payload(encoded)
    before = listing(encoded.parent)
    args = ["decode", damaged, "-o", encoded.with_name("out.safetensors")] if command == "decode" \
        else ["stats", damaged]
    result = run(*args)

    assert_one_line_error(result, 2, "damaged.wbs", "payload_crc32")
    assert listing(encoded.parent) == before


def test_decode_truncated_header(encoded):
    truncated = encoded.with_name("cut.wbs")
    truncated.write_bytes(encoded.read_bytes()[:30])
    result = run("decode", truncated, "-o", encoded.with_name("out.safetensors"))

    assert_one_line_error(result, 2, "cut.wbs", "truncated")
    assert "out.safetensors" not in listing(encoded.parent)


def test_decode_truncated_payload(encoded):
    data = encoded.read_bytes()
    truncated = encoded.with_name("cut.wbs")
    truncated.write_bytes(data[:len(data) // 2])
    result = run("decode", truncated, "-o", encoded.with_name("out.safetensors"))

    assert_one_line_error(result, 2, "cut.wbs", "truncated")
    assert "out.safetensors" not in listing(encoded.parent)


def test_decode_not_wbs(workdir):
    result = run("decode", workdir / "model.safetensors", "-o", workdir / "out.safetensors")

    assert_one_line_error(result, 2, "magic")
    assert listing(workdir) == ["model.safetensors"]


def test_decode_empty_file(tmp_path):
    (tmp_path / "empty.wbs").write_bytes(b"")
    result = run("decode", tmp_path / "empty.wbs", "-o", tmp_path / "out.safetensors")

    assert_one_line_error(result, 2, "empty")
    assert listing(tmp_path) == ["empty.wbs"]


def test_stats_qp_out_of_range(tmp_path):
    payload = residual_coding.encode_levels(np.array([[2, 1]], dtype=np.int64), 1)
    path = tmp_path / "qp.wbs"
    path.write_bytes(build_wbs([dict(name="w", dtype="F32", shape=(1, 2), mode=1, qp=300, payload=payload)]))
    result = run("stats", path)

    assert_one_line_error(result, 2, "qp")


def test_stats_damaged_header(encoded):
    data = bytearray(encoded.read_bytes())
    data[25] ^= 0x01  # inside the header: the header CRC no longer matches
    damaged = encoded.with_name("damaged.wbs")
    damaged.write_bytes(bytes(data))
    result = run("stats", damaged)

    assert_one_line_error(result, 2, "header_crc32")


# ---------------------------------------------------------------- the installed console script


def test_script_encodes(workdir):
    completed = subprocess.run([str(WCODEC_SCRIPT), "encode", str(workdir / "model.safetensors"), "-o",
                                str(workdir / "model.wbs")], capture_output=True, text=True, timeout=120)

    assert completed.returncode == 0, completed.stderr
    assert f"{PNET_TENSORS} tensors" in completed.stdout
    assert container.read_preamble((workdir / "model.wbs").read_bytes(), "model.wbs") > 0


def test_script_error_one_line(workdir):
    damaged = workdir / "damaged.wbs"
    damaged.write_bytes(container.MAGIC + b"\x01\x00\x00\x00" + b"\xff" * 8)
    completed = subprocess.run([str(WCODEC_SCRIPT), "decode", str(damaged), "-o", str(workdir / "out.safetensors")],
                               capture_output=True, text=True, timeout=120)

    assert completed.returncode == 2
    assert completed.stdout == ""
    assert len(completed.stderr.splitlines()) == 1
    assert completed.stderr.startswith("wcodec: error: ")
    assert "header_length" in completed.stderr
    assert listing(workdir) == ["damaged.wbs", "model.safetensors"]


def test_force_never_replaces_special_files(tmp_path):
    import os

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    source = Path(__file__).parent / "data" / "facenet_pnet.safetensors"
    result = CliRunner().invoke(cli, ["encode", str(source), "-o", str(fifo), "--force"])

    assert result.exit_code == 1
    assert "not a regular file" in result.output
    assert fifo.is_fifo()


@pytest.mark.parametrize("value, status", [("nan", 1), ("inf", 0)])
def test_max_output_size_nan_and_inf(encoded, value, status):
    result = run("decode", encoded, "-o", encoded.with_name(f"{value}.safetensors"),
                 "--max-output-size", value)

    if status:
        assert_one_line_error(result, status, "--max-output-size")
    else:
        assert result.exit_code == 0, result.output


def test_closed_stdout_still_succeeds(encoded, tmp_path):
    # stdout is a pipe whose reader is already gone, so printing the summary fails.
    output = tmp_path / "piped.safetensors"
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        command = [str(Path(sys.executable).with_name("wcodec")), "decode", str(encoded), "-o",
                   str(output)]
        completed = subprocess.run(command, stdout=write_end, stderr=subprocess.PIPE, text=True,
                                   timeout=120)
    finally:
        os.close(write_end)

    assert completed.returncode == 0, completed.stderr
    assert completed.stderr == ""
    assert output.is_file()
