"""Property tests of the arithmetic coder (wcodec.codec.cabac) and of residual coding on top of it.

A pure-Python range coder written from docs/bitstream.md serves as the reference: the
jitted engine must produce the same bytes, and its ESTIMATE mode must report the ideal
adaptive code length of the bins.
"""

import math

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from numba import njit

from common import ONET, qp_step, read_safetensors
from wcodec.codec import cabac, level_decoder, residual_coding
from wcodec.codec.cabac import code_bin, code_bypass, decode_bin, decode_bypass_bits
from wcodec.codec.frames import frame_geometry

MAX_LEVEL = 2**50
PROB_ONE = 1 << 16
MASK32 = 0xFFFFFFFF


# ---------------------------------------------------------------- reference coder from the spec


class ReferenceModel:
    """One context model of docs/bitstream.md: two estimates of P(1), at shifts 4 and 7."""

    def __init__(self):
        self.fast = 32768
        self.slow = 32768

    def p1(self):
        return (self.fast + self.slow) >> 1

    def update(self, bit):
        if bit:
            self.fast += (PROB_ONE - self.fast) >> 4
            self.slow += (PROB_ONE - self.slow) >> 7
        else:
            self.fast -= self.fast >> 4
            self.slow -= self.slow >> 7


class ReferenceEncoder:
    """The range encoder of docs/bitstream.md, in plain Python integers."""

    def __init__(self):
        self.low = 0
        self.range = MASK32
        self.cache = 0
        self.pending = 1
        self.out = bytearray()
        self.first_byte = True

    def _emit(self, byte):
        if self.first_byte:
            assert byte == 0, "the first byte out of shift_low must be 0"
            self.first_byte = False
            return
        self.out.append(byte)

    def _shift_low(self):
        if self.low < 0xFF000000 or self.low >= 2**32:
            carry = self.low >> 32
            self._emit((self.cache + carry) & 0xFF)
            for _ in range(self.pending - 1):
                self._emit((0xFF + carry) & 0xFF)
            self.cache = (self.low >> 24) & 0xFF
            self.pending = 0
        self.pending += 1
        self.low = (self.low & 0x00FFFFFF) << 8

    def _code(self, split, bit):
        if bit:
            self.low += split
            self.range -= split
        else:
            self.range = split
        while self.range < 2**24:
            self.range <<= 8
            self._shift_low()

    def encode(self, model, bit):
        self._code((self.range * (PROB_ONE - model.p1())) >> 16, bit)
        model.update(bit)

    def bypass(self, bit):
        self._code(self.range >> 1, bit)

    def finish(self):
        for bits in (32, 24, 16, 8, 0):
            unit = 1 << bits
            value = -(-self.low // unit) * unit  # the smallest multiple of unit >= low
            if value < self.low + self.range:
                self.low = value
                break
        for _ in range(5):
            self._shift_low()
        return bytes(self.out).rstrip(b"\x00")


def reference_encode(bins, contexts, n_contexts):
    models = [ReferenceModel() for _ in range(n_contexts)]
    encoder = ReferenceEncoder()
    for bit, ctx in zip(bins, contexts):
        if ctx < 0:
            encoder.bypass(bit)
        else:
            encoder.encode(models[ctx], bit)
    return encoder.finish()


def ideal_code_length(bins, contexts, n_contexts):
    """Return sum of -log2 P(bin) under the adaptive models, with bypass bins at 1 bit."""
    models = [ReferenceModel() for _ in range(n_contexts)]
    bits = 0.0
    for bit, ctx in zip(bins, contexts):
        if ctx < 0:
            bits += 1.0
            continue
        p1 = models[ctx].p1()
        bits -= math.log2((p1 if bit else PROB_ONE - p1) / PROB_ONE)
        models[ctx].update(bit)
    return bits


# ---------------------------------------------------------------- reference residual coder from the spec

CTX_SIG, CTX_SIGN, CTX_GT, CTX_ESCAPE, CTX_LOW, CTX_RUN = 0, 16, 25, 121, 217, 265
N_CONTEXTS = 299
ACTIVITY_CAP = 2**20


def _sign(value):
    return (value > 0) - (value < 0)


class ReferenceResidualEncoder:
    """The residual syntax of docs/bitstream.md over ReferenceEncoder, for frames (O, R) with blocks of K."""

    def __init__(self, levels, block_size):
        self.levels = [list(map(int, row)) for row in levels]
        self.rows = len(self.levels)
        self.row_length = len(self.levels[0]) if self.rows else 0
        self.block_size = block_size
        self.encoder = ReferenceEncoder()
        self.models = [ReferenceModel() for _ in range(N_CONTEXTS)]

    def level(self, o, p):
        if 0 <= o < self.rows and 0 <= p < self.row_length:
            return self.levels[o][p]
        return 0

    def context_bin(self, ctx, bit):
        self.encoder.encode(self.models[ctx], int(bit))

    def activity_class(self, o, p):
        left = abs(self.level(o, p - 1))
        left2 = abs(self.level(o, p - 2))
        up = abs(self.level(o - 1, p))
        prev = abs(self.level(o, p - self.block_size)) if self.block_size > 1 else abs(self.level(o - 1, p + 1))
        s = 2 * min(left, ACTIVITY_CAP) + min(left2, ACTIVITY_CAP) + min(up, ACTIVITY_CAP) + min(prev, ACTIVITY_CAP)
        return 0 if s == 0 else min(s.bit_length(), 15)

    def code_value(self, o, p, c):
        value = self.level(o, p)
        self.context_bin(CTX_SIGN + 3 * (_sign(self.level(o, p - 1)) + 1) + _sign(self.level(o - 1, p)) + 1,
                         value < 0)
        m = abs(value) - 1
        k = max(0, c - 4)
        q = m >> k
        t = 0
        while t < 6:
            self.context_bin(CTX_GT + 6 * c + t, q > t)
            if not q > t:
                break
            t += 1
        if t == 6:
            e = q - 6
            g = min(c // 4, 3)
            j = (e + 1).bit_length() - 1
            for i in range(j):
                self.context_bin(CTX_ESCAPE + 24 * g + min(i, 23), 1)
            self.context_bin(CTX_ESCAPE + 24 * g + min(j, 23), 0)
            suffix = e - (2**j - 1)
            for b in range(j - 1, -1, -1):
                self.encoder.bypass((suffix >> b) & 1)
        low = m & ((1 << k) - 1)
        first = None
        for b in range(k - 1, -1, -1):
            bit = (low >> b) & 1
            if b == k - 1:
                self.context_bin(CTX_LOW + 3 * c, bit)
                first = bit
            elif b == k - 2:
                self.context_bin(CTX_LOW + 3 * c + 1 + first, bit)
            else:
                self.encoder.bypass(bit)

    def code_run(self, run, remaining, row_start):
        end_of_row = run == remaining
        self.context_bin(CTX_RUN + (0 if row_start else 1), end_of_row)
        if end_of_row:
            return
        run_max = remaining - 1
        if run_max == 0:
            return

        self.context_bin(CTX_RUN + 2, run >= 1)
        if run == 0:
            return
        x = 1
        while 2**x <= run_max:
            more = run >= 2**x
            self.context_bin(CTX_RUN + 2 + min(x, 15), more)
            if not more:
                break
            x += 1
        if x < 2:
            return

        base = 2 ** (x - 1)
        offset = run - base
        result = 0
        first = True
        for b in range(x - 2, -1, -1):
            candidate = result | (1 << b)
            if candidate > run_max - base:
                continue  # a 1 here would overshoot run_max, so the bit is 0 and not coded
            bit = (offset >> b) & 1
            if first:
                self.context_bin(CTX_RUN + 18 + min(x, 15), bit)
                first = False
            else:
                self.encoder.bypass(bit)
            if bit:
                result = candidate

    def encode(self):
        for o in range(self.rows):
            p = 0
            while p < self.row_length:
                c = self.activity_class(o, p)
                if c > 0:
                    self.context_bin(CTX_SIG + c, self.level(o, p) != 0)
                    if self.level(o, p) != 0:
                        self.code_value(o, p, c)
                    p += 1
                    continue
                run = 0
                while p + run < self.row_length and self.level(o, p + run) == 0:
                    run += 1
                self.code_run(run, self.row_length - p, p == 0)
                p += run
                if p < self.row_length:
                    self.code_value(o, p, self.activity_class(o, p))
                    p += 1
        return self.encoder.finish()


# ---------------------------------------------------------------- the jitted engine


@njit
def _code_bins(coder, buf, probs, shifts, bins, contexts):
    """Code bins[i] with context contexts[i], or as a bypass bin where the context is -1."""
    out = np.empty(bins.shape[0], dtype=np.int64)
    for i in range(bins.shape[0]):
        if contexts[i] < 0:
            out[i] = code_bypass(coder, buf, bins[i])
        else:
            out[i] = code_bin(coder, buf, probs, shifts, contexts[i], bins[i])
    return out


def engine_encode(bins, contexts, n_contexts):
    coder = cabac.new_coder(cabac.ENCODE)
    probs, shifts = cabac.new_contexts(n_contexts)
    # No bin costs more than about 10 bits, so two bytes per bin always suffice.
    buf = np.zeros(2 * len(bins) + 16, dtype=np.uint8)
    _code_bins(coder, buf, probs, shifts, bins, contexts)
    length = cabac.finish_encoder(coder, buf)
    assert length <= buf.size
    return buf[:length].tobytes()


def engine_decode(data, contexts, n_contexts):
    coder = cabac.new_coder(cabac.DECODE)
    probs, shifts = cabac.new_contexts(n_contexts)
    buf = np.frombuffer(data, dtype=np.uint8).copy()
    cabac.start_decoder(coder, buf)
    decoded = _code_bins(coder, buf, probs, shifts, np.zeros(len(contexts), dtype=np.int64), contexts)
    return decoded, coder


def engine_estimate(bins, contexts, n_contexts):
    coder = cabac.new_coder(cabac.ESTIMATE)
    probs, shifts = cabac.new_contexts(n_contexts)
    _code_bins(coder, np.zeros(1, dtype=np.uint8), probs, shifts, bins, contexts)
    return coder


@st.composite
def bin_streams(draw):
    """Draw (bins, contexts, n_contexts): short streams of any mix of bins and contexts."""
    n_contexts = draw(st.integers(1, 12))
    pairs = draw(st.lists(st.tuples(st.integers(-1, n_contexts - 1), st.integers(0, 1)), max_size=400))
    contexts = np.array([ctx for ctx, _ in pairs], dtype=np.int64)
    bins = np.array([bit for _, bit in pairs], dtype=np.int64)
    return bins, contexts, n_contexts


@st.composite
def skewed_streams(draw):
    """Draw long streams whose contexts have fixed, often extreme, probabilities of a 1 bin."""
    n_contexts = draw(st.integers(1, 8))
    length = draw(st.integers(1, 6000))
    seed = draw(st.integers(0, 2**32 - 1))
    probabilities = draw(st.lists(st.sampled_from([0.0, 1e-4, 0.01, 0.2, 0.5, 0.9, 0.999, 1.0]),
                                  min_size=n_contexts + 1, max_size=n_contexts + 1))
    rng = np.random.default_rng(seed)
    contexts = rng.integers(-1, n_contexts, size=length, dtype=np.int64)
    p = np.array(probabilities)[contexts + 1]  # entry 0 is the probability of bypass bins
    bins = (rng.random(length) < p).astype(np.int64)
    return bins, contexts, n_contexts


@njit
def _decode_bins_in_locals(buf, probs, contexts):
    """Decode bins with decode_bin and decode_bypass_bits; return (bins, low, range, pos)."""
    low = np.int64(0)
    for pos in range(4):
        low = (low << 8) | (np.int64(buf[pos]) if pos < buf.shape[0] else np.int64(0))
    rng = np.int64(MASK32)
    pos = np.int64(4)
    out = np.empty(contexts.shape[0], dtype=np.int64)
    for i in range(contexts.shape[0]):
        if contexts[i] < 0:
            out[i], low, rng, pos = decode_bypass_bits(buf, 1, low, rng, pos)
        else:
            out[i], low, rng, pos = decode_bin(buf, probs.reshape(-1), contexts[i], low, rng, pos)
    return out, low, rng, pos


# ---------------------------------------------------------------- engine properties


@given(bin_streams())
def test_engine_roundtrip(stream):
    bins, contexts, n_contexts = stream
    data = engine_encode(bins, contexts, n_contexts)
    decoded, coder = engine_decode(data, contexts, n_contexts)

    assert decoded.tolist() == bins.tolist()
    assert coder[cabac.ERROR] == 0
    assert coder[cabac.POS] >= len(data)


@given(skewed_streams())
def test_engine_roundtrip_skewed(stream):
    bins, contexts, n_contexts = stream
    data = engine_encode(bins, contexts, n_contexts)
    decoded, coder = engine_decode(data, contexts, n_contexts)

    assert np.array_equal(decoded, bins)
    assert coder[cabac.ERROR] == 0
    assert coder[cabac.POS] >= len(data)


@given(skewed_streams())
def test_local_state_decoder_matches_engine(stream):
    bins, contexts, n_contexts = stream
    data = engine_encode(bins, contexts, n_contexts)
    buf = np.frombuffer(data, dtype=np.uint8).copy()
    probs, shifts = cabac.new_contexts(n_contexts)
    decoded, low, rng, pos = _decode_bins_in_locals(buf, probs, contexts)
    engine_bins, coder = engine_decode(data, contexts, n_contexts)
    # ESTIMATE adapts the models as the engine's decoder does on the same bins.
    expected_probs, _ = cabac.new_contexts(n_contexts)
    _code_bins(cabac.new_coder(cabac.ESTIMATE), np.zeros(1, dtype=np.uint8), expected_probs, shifts, bins, contexts)

    assert np.array_equal(decoded, bins)
    assert np.array_equal(decoded, engine_bins)
    assert (low, rng, pos) == (coder[cabac.LOW], coder[cabac.RANGE], coder[cabac.POS])
    assert np.array_equal(probs, expected_probs)


@given(bin_streams())
@example((np.ones(300, dtype=np.int64), np.zeros(300, dtype=np.int64), 1))  # carries through 0xFF bytes
@example((np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), 1))
def test_engine_matches_spec_bytes(stream):
    bins, contexts, n_contexts = stream
    assert engine_encode(bins, contexts, n_contexts) == reference_encode(bins.tolist(), contexts.tolist(), n_contexts)


@settings(max_examples=10)
@given(skewed_streams())
def test_engine_matches_spec_bytes_skewed(stream):
    bins, contexts, n_contexts = stream
    assert engine_encode(bins, contexts, n_contexts) == reference_encode(bins.tolist(), contexts.tolist(), n_contexts)


@given(skewed_streams())
def test_estimate_equals_ideal_length(stream):
    bins, contexts, n_contexts = stream
    coder = engine_estimate(bins, contexts, n_contexts)
    estimate = coder[cabac.COST] / 2**cabac.COST_BITS
    ideal = ideal_code_length(bins.tolist(), contexts.tolist(), n_contexts)

    # The cost table rounds each bin's cost to 2**-16 bit.
    assert abs(estimate - ideal) <= len(bins) * 2**-17
    assert coder[cabac.BINS] == len(bins)


@given(skewed_streams())
def test_coded_length_near_ideal(stream):
    bins, contexts, n_contexts = stream
    data = engine_encode(bins, contexts, n_contexts)
    ideal = ideal_code_length(bins.tolist(), contexts.tolist(), n_contexts)

    # The bound leaves 32 bits for the final flush and 1% for the coder's rounding.
    assert 8 * len(data) <= ideal * 1.01 + 32


def test_estimate_leaves_models_as_encode():
    rng = np.random.default_rng(3)
    contexts = rng.integers(-1, 4, size=500, dtype=np.int64)
    bins = rng.integers(0, 2, size=500, dtype=np.int64)
    estimate_probs, shifts = cabac.new_contexts(4)
    _code_bins(cabac.new_coder(cabac.ESTIMATE), np.zeros(1, dtype=np.uint8), estimate_probs, shifts, bins, contexts)
    encode_probs, shifts = cabac.new_contexts(4)
    _code_bins(cabac.new_coder(cabac.ENCODE), np.zeros(2000, dtype=np.uint8), encode_probs, shifts, bins, contexts)

    assert np.array_equal(estimate_probs, encode_probs)


# ---------------------------------------------------------------- residual coding of level frames


@st.composite
def level_frames(draw):
    """Draw (levels, K): frames of random geometry, density and magnitude, with all-zero rows."""
    rows = draw(st.integers(1, 8))
    block_size = draw(st.sampled_from([1, 1, 2, 4, 9]))
    blocks = draw(st.integers(1, 12))
    magnitude_bits = draw(st.integers(0, 50))
    density = draw(st.sampled_from([0.0, 0.02, 0.2, 0.7, 1.0]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    shape = (rows, blocks * block_size)
    magnitudes = np.minimum(rng.integers(1, 2**magnitude_bits + 1, size=shape, dtype=np.int64), MAX_LEVEL)
    signs = rng.choice(np.array([-1, 1], dtype=np.int64), size=shape)
    levels = np.where(rng.random(shape) < density, signs * magnitudes, 0)
    zero_rows = rng.random(rows) < draw(st.sampled_from([0.0, 0.3]))
    levels[zero_rows] = 0
    return levels.astype(np.int64), block_size


@given(level_frames())
@example((np.array([[MAX_LEVEL, -MAX_LEVEL, 0, 1, -1, 0]], dtype=np.int64), 1))
@example((np.array([[0, 0, 0, 0], [0, 0, 0, 7], [0, 0, 0, 0]], dtype=np.int64), 2))
@example((np.zeros((3, 9), dtype=np.int64), 9))
def test_levels_roundtrip(frame):
    levels, block_size = frame
    data = residual_coding.encode_levels(levels, block_size)
    decoded, coder = residual_coding.decode_levels(data, levels.shape, block_size)

    assert np.array_equal(decoded, levels)
    assert coder[cabac.ERROR] == 0
    assert coder[cabac.POS] >= len(data)


@given(level_frames())
@example((np.array([[0] * 40 + [5] + [0] * 30], dtype=np.int64), 1))
@example((np.array([[2**50, -(2**49), 3, 0, 0, 0, 1]], dtype=np.int64), 1))
def test_levels_match_spec_bytes(frame):
    levels, block_size = frame
    assert residual_coding.encode_levels(levels, block_size) == ReferenceResidualEncoder(levels, block_size).encode()


@given(level_frames())
def test_levels_coded_length_near_estimate(frame):
    levels, block_size = frame
    data = residual_coding.encode_levels(levels, block_size)
    estimate = residual_coding.estimate_bits(levels, block_size)

    assert 8 * len(data) <= estimate * 1.01 + 32


def onet_frames():
    """Yield (name, frame levels, K, qp) for the conv and dense weights of O-Net at four qps."""
    _, tensors = read_safetensors(ONET)
    for qp in (-38, -32, -26, -20):
        step = qp_step(qp)
        for name, tensor in tensors.items():
            if tensor.dim() < 2:
                continue
            geometry = frame_geometry(tuple(tensor.shape))
            values = tensor.double().numpy().reshape(geometry.rows, geometry.row_length)
            levels = (np.sign(values) * np.floor(np.abs(values) / step + 0.5)).astype(np.int64)
            yield name, levels, geometry.block_size, qp


def test_real_weights_near_ideal_length():
    ratios = []
    for name, levels, block_size, qp in onet_frames():
        data = residual_coding.encode_levels(levels, block_size)
        ideal = residual_coding.estimate_bits(levels, block_size)
        ratio = 8 * len(data) / ideal
        ratios.append(ratio)
        print(f"{name} qp {qp}: {len(data)} bytes, ideal {ideal / 8:.1f} bytes, ratio {ratio:.4f}")
        assert ratio <= 1.01, f"{name} at qp {qp}: coded size is {ratio:.4f} times the ideal"

        decoded, coder = residual_coding.decode_levels(data, levels.shape, block_size)
        assert np.array_equal(decoded, levels), f"{name} at qp {qp}"
    assert len(ratios) == 32


@pytest.mark.parametrize("block_size", [1, 9])
def test_all_zero_frame_few_bytes(block_size):
    levels = np.zeros((256, 1152), dtype=np.int64)
    data = residual_coding.encode_levels(levels, block_size)
    decoded, coder = residual_coding.decode_levels(data, levels.shape, block_size)

    assert len(data) <= 8
    assert not decoded.any()
    assert coder[cabac.ERROR] == 0


def test_zero_rows_cost_little():
    row = np.random.default_rng(4).integers(-3, 4, size=(1, 1152), dtype=np.int64)
    padded = np.concatenate([np.zeros((255, 1152), dtype=np.int64), row])
    # Each all-zero row costs one end_of_row bin, whose model soon expects it.
    row_size = len(residual_coding.encode_levels(row, 1))
    padded_size = len(residual_coding.encode_levels(padded, 1))

    assert padded_size <= row_size + 8


# ---------------------------------------------------------------- decode-only level decoder


def decode_both(data, shape, block_size, block_coded, dependent):
    """Decode a payload with code_levels in DECODE mode and with decode_levels_into.

    Returns two (levels, coder state, context models) triples: generic, then decode-only.
    """
    results = []
    for decode in ("generic", "decode-only"):
        levels = np.zeros(shape, dtype=np.int64)
        buf = np.frombuffer(data, dtype=np.uint8).copy()
        coder = cabac.new_coder(cabac.DECODE)
        cabac.start_decoder(coder, buf)
        probs, shifts = cabac.new_contexts(residual_coding.N_CONTEXTS)
        if decode == "generic":
            residual_coding.code_levels(coder, buf, probs, shifts, levels, block_size, block_coded,
                                        residual_coding._NO_TARGETS, 0.0, dependent)
        else:
            level_decoder.decode_levels_into(coder, buf, probs, levels, block_size, block_coded, dependent)
        results.append((levels, coder, probs))
    return results


def assert_same_decoding(data, shape, block_size, block_coded, dependent):
    (levels, coder, probs), (fast_levels, fast_coder, fast_probs) = decode_both(data, shape, block_size,
                                                                                 block_coded, dependent)
    assert np.array_equal(fast_levels, levels)
    assert fast_coder.tolist() == coder.tolist()
    assert np.array_equal(fast_probs, probs)


@given(level_frames())
@example((np.array([[MAX_LEVEL, -MAX_LEVEL, 0, 1, -1, 0]], dtype=np.int64), 1))
@example((np.array([[0] * 40 + [5] + [0] * 30], dtype=np.int64), 1))
def test_decode_only_matches_generic_on_valid_frames(frame):
    levels, block_size = frame
    data = residual_coding.encode_levels(levels, block_size)
    all_blocks = np.ones((levels.shape[0], levels.shape[1] // block_size), dtype=np.uint8)

    assert_same_decoding(data, levels.shape, block_size, all_blocks, False)


def test_decode_only_matches_generic_on_real_weights():
    for name, levels, block_size, qp in onet_frames():
        data = residual_coding.encode_levels(levels, block_size)
        all_blocks = np.ones((levels.shape[0], levels.shape[1] // block_size), dtype=np.uint8)
        for dependent in (False, True):
            assert_same_decoding(data, levels.shape, block_size, all_blocks, dependent)


def test_decode_only_matches_generic_on_garbage():
    # Random bytes reach every branch of the syntax, the failure paths included; skipped
    # blocks and dependent quantization change which contexts and positions are read.
    rng = np.random.default_rng(11)
    for case in range(3000):
        rows = int(rng.integers(1, 7))
        block_size = int(rng.choice([1, 2, 3, 9]))
        blocks = int(rng.integers(1, 12))
        length = int(rng.integers(0, 160))
        style = case % 3
        if style == 0:
            data = rng.integers(0, 256, length, dtype=np.uint8).tobytes()
        elif style == 1:  # mostly zero bytes: long zero runs
            data = (rng.integers(0, 256, length) * (rng.random(length) < 0.1)).astype(np.uint8).tobytes()
        else:  # mostly 0xFF bytes: large magnitudes, long escapes
            data = (255 - rng.integers(0, 256, length) * (rng.random(length) < 0.2)).astype(np.uint8).tobytes()
        block_coded = (rng.random((rows, blocks)) < 0.8).astype(np.uint8)
        dependent = bool(case & 4)

        assert_same_decoding(data, (rows, blocks * block_size), block_size, block_coded, dependent)


def long_escape_payload(prefix_length, suffix_bit):
    """Return a payload of a frame (1, 2) with K = 1 whose second level has a long escape.

    The first level, 2**21 + 6, puts the second in class 15 (k = 11). The second level's
    Exp-Golomb prefix has ``prefix_length`` 1 bins, its suffix ``prefix_length`` bypass
    bins equal to ``suffix_bit``, and its low bits are all 1.
    """
    rc = residual_coding
    bins_and_contexts = [(0, rc.CTX_RUN), (0, rc.CTX_RUN + 2), (0, rc.CTX_SIGN + 4)]
    bins_and_contexts += [(1, rc.CTX_GT + t) for t in range(rc.N_GT)]
    bins_and_contexts += [(1, rc.CTX_ESCAPE + i) for i in range(21)] + [(0, rc.CTX_ESCAPE + 21)]
    bins_and_contexts += [(0, -1)] * 21
    escape_base = rc.CTX_ESCAPE + 3 * rc.N_ESCAPE_PREFIX
    bins_and_contexts += [(1, rc.CTX_SIG + 15), (0, rc.CTX_SIGN + 7)]
    bins_and_contexts += [(1, rc.CTX_GT + 15 * rc.N_GT + t) for t in range(rc.N_GT)]
    bins_and_contexts += [(1, escape_base + min(i, 23)) for i in range(prefix_length)]
    bins_and_contexts += [(0, escape_base + min(prefix_length, 23))]
    bins_and_contexts += [(suffix_bit, -1)] * prefix_length
    bins_and_contexts += [(1, rc.CTX_LOW + 45), (1, rc.CTX_LOW + 47)] + [(1, -1)] * 9
    bins = np.array([bit for bit, _ in bins_and_contexts], dtype=np.int64)
    contexts = np.array([ctx for _, ctx in bins_and_contexts], dtype=np.int64)
    return engine_encode(bins, contexts, rc.N_CONTEXTS)


@pytest.mark.parametrize("prefix_length", [20, 51, 52, 53])
@pytest.mark.parametrize("suffix_bit", [0, 1])
def test_long_escapes_decode_alike(prefix_length, suffix_bit):
    data = long_escape_payload(prefix_length, suffix_bit)
    all_blocks = np.ones((1, 2), dtype=np.uint8)
    assert_same_decoding(data, (1, 2), 1, all_blocks, False)

    levels, coder = residual_coding.decode_levels(data, (1, 2), 1)
    assert levels[0, 0] == 2**21 + 6
    if prefix_length == 20:
        assert coder[cabac.ERROR] == 0
        assert levels[0, 1] == (((6 + 2**20 - 1 + suffix_bit * (2**20 - 1)) << 11) | 2047) + 1
    else:
        # A quotient of 2**51 or more shifted by 11 exceeds MAX_LEVEL, and with a prefix of
        # 52 and a suffix of ones it would overflow int64 back to a small magnitude.
        assert coder[cabac.ERROR] == 1


@pytest.mark.parametrize("data", [b"\xff" * 4096, b"\xff\xff\xff\xff", b""])
def test_decode_only_matches_generic_on_edge_payloads(data):
    # Four 0xFF bytes start the decoder with code >= range, which the generic decoder
    # flags at the first bin. With one row, that bin ends the row and the frame.
    for rows in (1, 2):
        for block_size in (1, 3):
            all_blocks = np.ones((rows, 4), dtype=np.uint8)
            assert_same_decoding(data, (rows, 4 * block_size), block_size, all_blocks, False)


# ---------------------------------------------------------------- hostile payloads


@st.composite
def garbage_payloads(draw):
    data = draw(st.binary(max_size=300))
    rows = draw(st.integers(1, 24))
    block_size = draw(st.sampled_from([1, 2, 4, 9]))
    blocks = draw(st.integers(1, 64))
    return data, (rows, blocks * block_size), block_size


@settings(deadline=10_000)
@given(garbage_payloads())
@example((b"\xff" * 300, (4, 64), 1))
@example((b"", (24, 576), 9))
@example((b"\x80" + b"\x00" * 40, (1, 1), 1))
def test_garbage_payload_bounded(case):
    data, shape, block_size = case
    levels, coder = residual_coding.decode_levels(data, shape, block_size)

    assert levels.shape == shape
    if coder[cabac.ERROR] == 0:
        assert np.abs(levels).max() <= MAX_LEVEL


def test_long_escape_prefix_sets_error():
    # Only 1 bins in every context: the Exp-Golomb prefix of the first level never ends,
    # and the decoder must stop it after 52 bins instead of building a huge magnitude.
    data = b"\xff" * 4096
    levels, coder = residual_coding.decode_levels(data, (1, 4), 1)

    assert coder[cabac.ERROR] == 1
    assert np.abs(levels).max() <= MAX_LEVEL
