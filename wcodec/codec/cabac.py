"""Binary arithmetic coding engine with adaptive context models, in the style of CABAC.

Every syntax element of the bitstream is binarized elsewhere and reaches this module as
bins: context-coded bins, whose probability comes from an adaptive context model, and
bypass bins, coded with probability 1/2.

The engine is a byte-oriented range coder with carry propagation (the scheme of LZMA's
range coder), run in one of three modes so that the syntax is written once for all of them:

- ``ENCODE`` writes bins into a byte buffer,
- ``DECODE`` reads them back from a byte buffer,
- ``ESTIMATE`` adds the cost of each bin, in units of 2**-16 bit, to ``coder[COST]``
  without writing anything; the rate-distortion decisions use it.
- ``PEEK`` adds costs as ``ESTIMATE`` does but leaves the context models unchanged, so
  an encoder can price alternatives for one symbol before coding the one it picks.

All arithmetic is on integers, so the same bins give the same bytes on every machine.

Coder state is one ``int64`` array (indexes below) so that a caller can keep and inspect
it; the jitted syntax code works on a copy in a tuple (see ``load_state``). ``RANGE`` stays in [2**24, 2**32); ``LOW`` needs 33 bits
for the carry. The first byte LZMA's scheme emits is always zero and is not stored.

Context models: ``probs`` is an ``int32`` array of shape (n_contexts, 2) with two
estimates of P(bin = 1) in units of 2**-16, updated at the speeds in ``rates``
(shift amounts, shape (n_contexts, 2)). The probability used for coding is their mean,
which stays within [71, 65465] / 65536 for the default shifts 4 and 7, so no bin ever
costs more than about 10 bits.

Decoding is safe on arbitrary bytes: reads past the end of the buffer return zero bytes
(the encoder strips trailing zero bytes, so a valid stream relies on this), and every
loop that calls the engine is bounded by the caller, so garbage input decodes to garbage
bins but never reads out of bounds or loops forever.
"""

import numpy as np
from numba import njit

ENCODE = 0
DECODE = 1
ESTIMATE = 2
PEEK = 3

# Indexes into the coder state array.
LOW = 0  # encoder: low end of the interval; decoder: the code value
RANGE = 1
CACHE = 2  # encoder: the byte held back until its carry is known
PENDING = 3  # encoder: count of held-back bytes (the cache and any 0xFF bytes after it)
POS = 4  # bytes written (encoder) or read (decoder); may exceed the buffer size
MODE = 5
COST = 6  # ESTIMATE: accumulated cost in units of 2**-16 bit
BINS = 7  # number of bins coded, context-coded and bypass
ERROR = 8  # nonzero when a decoder found the stream inconsistent
STATE_SIZE = 9

PROB_BITS = 16
PROB_ONE = 1 << PROB_BITS
DEFAULT_RATES = (4, 7)
COST_BITS = 16  # the cost table's unit is 2**-COST_BITS bit

_TOP = 1 << 24
_MASK32 = 0xFFFFFFFF


def _make_cost_table():
    """Return the cost in 2**-16 bit of a bin whose probability is p / 65536, for every p."""
    p = np.arange(PROB_ONE + 1, dtype=np.float64)
    p[0] = 0.5  # never used: the models keep p >= 71
    cost = -np.log2(p / PROB_ONE) * (1 << COST_BITS)
    return np.round(cost).astype(np.int64)


COST_TABLE = _make_cost_table()


def new_coder(mode):
    """Return a fresh coder state for ENCODE, DECODE or ESTIMATE (DECODE still needs start_decoder)."""
    coder = np.zeros(STATE_SIZE, dtype=np.int64)
    coder[RANGE] = _MASK32
    coder[PENDING] = 1
    coder[POS] = -1  # the first byte out of shift_low is always zero and is not stored
    coder[MODE] = mode
    return coder


def new_contexts(n_contexts, rates=DEFAULT_RATES):
    """Return context models at probability 1/2 and their adaptation shifts."""
    probs = np.full((n_contexts, 2), PROB_ONE // 2, dtype=np.int32)
    shifts = np.empty((n_contexts, 2), dtype=np.int32)
    shifts[:, 0] = rates[0]
    shifts[:, 1] = rates[1]
    return probs, shifts


# The hot path works on the coder state as a tuple of integers rather than on the
# array: Numba keeps a tuple in registers once the helpers are inlined, while every
# array access would go to memory (about four times slower per bin). The entry points
# of the syntax modules load the tuple from the array with ``load_state`` and store it
# back with ``store_state``. Tuple layout: (low, range, cache, pending, pos, cost, bins,
# error), the array indexes above in that order without MODE.


@njit(cache=True, nogil=True, inline="always")
def load_state(coder):
    """Return the coder state array as a tuple for the ``*_t`` functions."""
    return (coder[LOW], coder[RANGE], coder[CACHE], coder[PENDING], coder[POS], coder[COST],
            coder[BINS], coder[ERROR])


@njit(cache=True, nogil=True, inline="always")
def store_state(coder, st):
    """Write a state tuple back into the coder state array."""
    coder[LOW] = st[0]
    coder[RANGE] = st[1]
    coder[CACHE] = st[2]
    coder[PENDING] = st[3]
    coder[POS] = st[4]
    coder[COST] = st[5]
    coder[BINS] = st[6]
    coder[ERROR] = st[7]


@njit(cache=True, nogil=True, inline="always")
def fail_t(st):
    """Return the state with the error flag set: the decoder found the stream inconsistent."""
    return (st[0], st[1], st[2], st[3], st[4], st[5], st[6], np.int64(1))


@njit(cache=True, nogil=True, inline="always")
def _code_split_t(st, mode, buf, split, bit):
    """Code one bin whose zero-subinterval has size ``split``; return (bin, state)."""
    low, rng, cache, pending, pos, cost, bins, error = st
    if mode == ENCODE:
        if bit == 0:
            rng = split
        else:
            low += split
            rng -= split
        while rng < _TOP:
            rng <<= 8
            if low < 0xFF000000 or low > _MASK32:
                carry = low >> 32
                held = cache
                while True:
                    if 0 <= pos < buf.shape[0]:
                        buf[pos] = (held + carry) & 0xFF
                    pos += 1
                    held = 0xFF
                    pending -= 1
                    if pending == 0:
                        break
                cache = (low >> 24) & 0xFF
            pending += 1
            low = (low & 0x00FFFFFF) << 8
    else:
        if low < split:
            bit = 0
            rng = split
        else:
            bit = 1
            low -= split
            rng -= split
        if low >= rng:
            error = 1
        while rng < _TOP:
            rng <<= 8
            byte = np.int64(buf[pos]) if pos < buf.shape[0] else np.int64(0)
            pos += 1
            low = ((low << 8) | byte) & _MASK32
    return bit, (low, rng, cache, pending, pos, cost, bins + 1, error)


@njit(cache=True, nogil=True, inline="always")
def bin_t(st, mode, buf, probs, shifts, ctx, bit):
    """Code one context-coded bin with context ``ctx`` and adapt the context; return (bin, state).

    ENCODE and ESTIMATE code ``bit``; DECODE ignores it and returns the decoded bin;
    PEEK adds the cost of ``bit`` and leaves the context unchanged.
    """
    p1 = (probs[ctx, 0] + probs[ctx, 1]) >> 1
    if mode >= ESTIMATE:
        cost = COST_TABLE[p1] if bit else COST_TABLE[PROB_ONE - p1]
        st = (st[0], st[1], st[2], st[3], st[4], st[5] + cost, st[6] + 1, st[7])
        if mode == PEEK:
            return bit, st
    else:
        split = (st[1] * (PROB_ONE - p1)) >> PROB_BITS
        bit, st = _code_split_t(st, mode, buf, split, bit)
    if bit:
        probs[ctx, 0] += (PROB_ONE - probs[ctx, 0]) >> shifts[ctx, 0]
        probs[ctx, 1] += (PROB_ONE - probs[ctx, 1]) >> shifts[ctx, 1]
    else:
        probs[ctx, 0] -= probs[ctx, 0] >> shifts[ctx, 0]
        probs[ctx, 1] -= probs[ctx, 1] >> shifts[ctx, 1]
    return bit, st


@njit(cache=True, nogil=True, inline="always")
def bypass_t(st, mode, buf, bit):
    """Code one bin with probability 1/2; return (bin, state)."""
    if mode >= ESTIMATE:
        return bit, (st[0], st[1], st[2], st[3], st[4], st[5] + (1 << COST_BITS), st[6] + 1,
                     st[7])
    return _code_split_t(st, mode, buf, st[1] >> 1, bit)


@njit(cache=True, nogil=True, inline="always")
def bypass_bits_t(st, mode, buf, value, n_bits):
    """Code the ``n_bits`` low bits of ``value`` as bypass bins, most significant first.

    Returns (the bits as an integer, state).
    """
    result = np.int64(0)
    for b in range(n_bits - 1, -1, -1):
        bit, st = bypass_t(st, mode, buf, (value >> b) & 1)
        result |= np.int64(bit) << b
    return result, st


# Decode-only forms of the engine. The coder state is the caller's local variables (code
# value, range, read position), which a decode loop keeps in registers, while the generic
# ``*_t`` functions above carry the whole state tuple and a runtime mode through every
# bin. The tests compare the two bin for bin. These forms leave out the ``code >= range``
# check because a bin keeps code < range once it holds. Callers check it once, before
# the first bin (see ``wcodec.codec.level_decoder``).
#
# ``models`` is ``probs.reshape(-1)``, adapted at DEFAULT_RATES, which the bitstream
# fixes. Indexes are converted to unsigned integers, for which Numba leaves out the
# handling of negative indexes.

FAST_RATE, SLOW_RATE = DEFAULT_RATES


@njit(cache=True, nogil=True, inline="always")
def _renormalize_decoder(buf, low, rng, pos):
    while rng < _TOP:
        rng <<= 8
        byte = np.int64(buf[np.uint64(pos)]) if pos < buf.shape[0] else np.int64(0)
        pos += 1
        low = ((low << 8) | byte) & _MASK32
    return low, rng, pos


@njit(cache=True, nogil=True, inline="always")
def decode_bin(buf, models, ctx, low, rng, pos):
    """Decode one context-coded bin and adapt its context; return (bin, low, range, pos)."""
    fast_index = np.uint64(2 * ctx)
    slow_index = np.uint64(2 * ctx + 1)
    fast = np.int64(models[fast_index])
    slow = np.int64(models[slow_index])
    split = (rng * (PROB_ONE - ((fast + slow) >> 1))) >> PROB_BITS
    if low < split:
        bit = np.int64(0)
        rng = split
        models[fast_index] = fast - (fast >> FAST_RATE)
        models[slow_index] = slow - (slow >> SLOW_RATE)
    else:
        bit = np.int64(1)
        low -= split
        rng -= split
        models[fast_index] = fast + ((PROB_ONE - fast) >> FAST_RATE)
        models[slow_index] = slow + ((PROB_ONE - slow) >> SLOW_RATE)
    low, rng, pos = _renormalize_decoder(buf, low, rng, pos)
    return bit, low, rng, pos


@njit(cache=True, nogil=True, inline="always")
def decode_bypass_bits(buf, n_bits, low, rng, pos):
    """Decode ``n_bits`` bypass bins, most significant first; return (bits, low, range, pos)."""
    result = np.int64(0)
    for _ in range(n_bits):
        split = rng >> 1
        if low < split:
            result <<= 1
            rng = split
        else:
            result = (result << 1) | 1
            low -= split
            rng -= split
        low, rng, pos = _renormalize_decoder(buf, low, rng, pos)
    return result, low, rng, pos


@njit(cache=True, nogil=True)
def start_decoder(coder, buf):
    """Load the first four bytes of ``buf`` into a DECODE coder."""
    code = np.int64(0)
    for pos in range(4):
        byte = np.int64(buf[pos]) if pos < buf.shape[0] else np.int64(0)
        code = (code << 8) | byte
    coder[POS] = 4
    coder[LOW] = code
    coder[RANGE] = _MASK32


@njit(cache=True, nogil=True)
def code_bin(coder, buf, probs, shifts, ctx, bit):
    """Array-state form of :func:`bin_t`, for callers outside the syntax modules."""
    bit, st = bin_t(load_state(coder), coder[MODE], buf, probs, shifts, ctx, bit)
    store_state(coder, st)
    return bit


@njit(cache=True, nogil=True)
def code_bypass(coder, buf, bit):
    """Array-state form of :func:`bypass_t`."""
    bit, st = bypass_t(load_state(coder), coder[MODE], buf, bit)
    store_state(coder, st)
    return bit


@njit(cache=True, nogil=True)
def code_bypass_bits(coder, buf, value, n_bits):
    """Array-state form of :func:`bypass_bits_t`."""
    result, st = bypass_bits_t(load_state(coder), coder[MODE], buf, value, n_bits)
    store_state(coder, st)
    return result


@njit(cache=True, nogil=True)
def _shift_low(coder, buf):
    low = coder[LOW]
    if low < 0xFF000000 or low > _MASK32:
        carry = low >> 32
        held = coder[CACHE]
        while True:
            pos = coder[POS]
            if 0 <= pos < buf.shape[0]:
                buf[pos] = (held + carry) & 0xFF
            coder[POS] = pos + 1
            held = 0xFF
            coder[PENDING] -= 1
            if coder[PENDING] == 0:
                break
        coder[CACHE] = (low >> 24) & 0xFF
    coder[PENDING] += 1
    coder[LOW] = (low & 0x00FFFFFF) << 8


@njit(cache=True, nogil=True)
def finish_encoder(coder, buf):
    """Flush an ENCODE coder; return the stream length in bytes (trailing zero bytes stripped).

    The returned length can exceed ``buf.shape[0]``: the buffer was too small and the
    caller must encode again with a buffer of at least that size.
    """
    low = coder[LOW]
    rng = coder[RANGE]
    # Pick the value in [low, low + range) with the most trailing zero bytes, so that
    # the bytes a decoder pads with zeros after the end are the ones it would read.
    for bits in (32, 24, 16, 8, 0):
        mask = (np.int64(1) << bits) - 1
        value = (low + mask) & ~mask
        if value < low + rng:
            coder[LOW] = value
            break
    for _ in range(5):
        _shift_low(coder, buf)
    length = coder[POS]
    if length > buf.shape[0]:
        return length
    while length > 0 and buf[length - 1] == 0:
        length -= 1
    return length
