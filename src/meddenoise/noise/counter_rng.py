"""A counter-based random generator in plain torch integer ops, identical on every device.

Why not `torch.Generator`: its streams differ between CPU and CUDA, depend on how a batch is composed and
cannot be addressed per image. Here every random number is a pure function of (key, counter), so the noise of
one pixel of one image is the same whether the image is generated alone or in a batch, on a CPU or a GPU, in
any process.

The bits come from Threefry-2x32 with 20 rounds (Salmon et al., "Parallel Random Numbers: As Easy as 1, 2,
3", SC 2011), which uses only 32-bit add, rotate and xor. torch has no unsigned 32-bit arithmetic on every
version, so 32-bit words live in int64 tensors and are masked after each add; nothing ever overflows int64.

Floating-point results are identical across devices too: uniforms and normals are made with +, -, *, /, sqrt
and comparisons only (IEEE correctly rounded on CPU and CUDA; each torch op is its own kernel, so no fused
multiply-add), with log and sin/cos evaluated as series after exact range reduction, instead of the library
`log`/`cos`, whose last bit differs between CPU and CUDA implementations.
"""

from __future__ import annotations

import hashlib
import math

import torch

MASK32 = 0xFFFFFFFF
THREEFRY_ROUNDS = 20
# Random123's rotation constants for Threefry-2x32 and the Skein key-schedule parity constant.
_ROTATIONS = (13, 15, 26, 6, 17, 29, 16, 24)
_KEY_PARITY = 0x1BD11BDA

_LN2 = math.log(2.0)
_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_TWO_POW_M32 = 2.0**-32
_TWO_POW_M53 = 2.0**-53
# ln(m) = 2 atanh(s) = 2 s (1 + s^2/3 + s^4/5 + ...), s = (m-1)/(m+1); |s| <= 0.172 after range reduction,
# so terms up to s^20 leave an error below 1e-18.
_ATANH_SERIES = tuple(1.0 / (2 * k + 1) for k in range(11))
# sin/cos on |x| <= pi/4: Taylor terms up to x^17 / x^18 leave an error below 1e-16.
_SIN_SERIES = tuple((-1) ** k / math.factorial(2 * k + 1) for k in range(9))
_COS_SERIES = tuple((-1) ** k / math.factorial(2 * k) for k in range(10))
# exp(-y) for 0 <= y <= 0.5: Taylor terms up to y^17 leave an error below 1e-21.
_EXP_SERIES = tuple((-1) ** k / math.factorial(k) for k in range(18))


def derive_key(*parts: object) -> tuple[int, int]:
    """A 64-bit key (two 32-bit words) from any printable parts, computed on the host with sha256.

    Parts are joined by their `repr`, so (1, "a") and ("1", "a") give different keys.
    """
    text = "\x1f".join(repr(part) for part in parts)
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[0:4], "little"), int.from_bytes(digest[4:8], "little")


def _as_words(value: torch.Tensor | int, device: torch.device) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.to(device=device, dtype=torch.int64)
    return torch.tensor(int(value) & MASK32, dtype=torch.int64, device=device)


def threefry2x32(
    counter0: torch.Tensor | int,
    counter1: torch.Tensor | int,
    key0: torch.Tensor | int,
    key1: torch.Tensor | int,
    rounds: int = THREEFRY_ROUNDS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Threefry-2x32-`rounds` of a 2-word counter under a 2-word key; all values are 32-bit words in int64.

    Arguments broadcast against each other (e.g. counters (1, P) with keys (B, 1) give (B, P) outputs).
    """
    device = next((v.device for v in (counter0, counter1, key0, key1) if isinstance(v, torch.Tensor)), None)
    if device is None:
        device = torch.device("cpu")
    c0, c1, k0, k1 = (_as_words(v, device) for v in (counter0, counter1, key0, key1))
    k2 = k0 ^ k1 ^ _KEY_PARITY
    schedule = (k0, k1, k2)
    shape = torch.broadcast_shapes(c0.shape, c1.shape, k0.shape, k1.shape)
    x0 = (c0 + k0).bitwise_and_(MASK32).expand(shape).contiguous()
    x1 = (c1 + k1).bitwise_and_(MASK32).expand(shape).contiguous()
    for round_index in range(rounds):
        rotation = _ROTATIONS[round_index % 8]
        x0.add_(x1).bitwise_and_(MASK32)
        high_bits = x1 >> (32 - rotation)
        x1.bitwise_left_shift_(rotation).bitwise_and_(MASK32).bitwise_or_(high_bits)
        x1.bitwise_xor_(x0)
        if round_index % 4 == 3:
            injection = (round_index + 1) // 4
            x0.add_(schedule[injection % 3]).bitwise_and_(MASK32)
            x1.add_(schedule[(injection + 1) % 3]).add_(injection).bitwise_and_(MASK32)
    return x0, x1


def image_stream_keys(
    image_keys: torch.Tensor, stream_key: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image generator keys (B, 1) + (B, 1): Threefry of the 63-bit image key under the stream key.

    `stream_key` (from `derive_key`) carries everything else the noise depends on (seed, noise level, epoch).
    """
    keys = image_keys.to(torch.int64).reshape(-1, 1)  # (B,) -> (B, 1)
    return threefry2x32(keys & MASK32, (keys >> 32) & MASK32, stream_key[0], stream_key[1])


def random_words(
    key0: torch.Tensor, key1: torch.Tensor, count: int, stream: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent (B, count) tensors of 32-bit words for counters 0..count-1 of `stream`."""
    if count >= 2**32:
        raise ValueError(f"at most 2**32 - 1 random pairs per image, asked for {count}")
    counters = torch.arange(count, dtype=torch.int64, device=key0.device).reshape(1, -1)  # (1, count)
    return threefry2x32(counters, stream, key0, key1)


def uniform_open(key0: torch.Tensor, key1: torch.Tensor, count: int, stream: int) -> torch.Tensor:
    """(B, count) float64 uniforms in the open interval (0, 1) with 53 random bits each."""
    high, low = random_words(key0, key1, count, stream)
    mantissa = (high << 21) | (low >> 11)  # 53 bits, exact in float64
    return (mantissa.to(torch.float64) + 0.5) * _TWO_POW_M53


def _polynomial(x: torch.Tensor, coefficients: tuple[float, ...]) -> torch.Tensor:
    """sum(c_k x^k) by Horner's rule, one correctly rounded op at a time."""
    result = torch.full_like(x, coefficients[-1])
    for coefficient in reversed(coefficients[:-1]):
        result = result * x + coefficient
    return result


def minus_two_log_uniform(words: torch.Tensor) -> torch.Tensor:
    """-2 ln u for u = (w + 0.5) / 2^32, w a 32-bit word; float64, reproducible across devices."""
    value = words.to(torch.float64) + 0.5  # exact
    mantissa, exponent = torch.frexp(value)  # value = mantissa * 2^exponent, mantissa in [0.5, 1)
    # Move the mantissa into [sqrt(1/2), sqrt(2)) so the series argument stays small.
    low = mantissa < _INV_SQRT2
    mantissa = torch.where(low, mantissa * 2.0, mantissa)
    exponent = exponent.to(torch.float64) - low.to(torch.float64) - 32.0
    s = (mantissa - 1.0) / (mantissa + 1.0)
    log_mantissa = 2.0 * s * _polynomial(s * s, _ATANH_SERIES)
    return -2.0 * (log_mantissa + exponent * _LN2)


def cos_sin_turn(words: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the angle 2 pi (w + 0.5) / 2^32, float64, with exact integer range reduction."""
    quadrant = words >> 30
    fraction = ((words & (2**30 - 1)).to(torch.float64) + 0.5) * 2.0**-30  # in (0, 1)
    # angle within the quadrant = pi/4 + x with |x| < pi/4
    x = (fraction - 0.5) * (math.pi / 2.0)
    x2 = x * x
    sin_x = x * _polynomial(x2, _SIN_SERIES)
    cos_x = _polynomial(x2, _COS_SERIES)
    cos_q = (cos_x - sin_x) * _INV_SQRT2
    sin_q = (cos_x + sin_x) * _INV_SQRT2
    # rotate by quadrant * pi/2: (c, s) -> (-s, c) for odd quadrants, then negate both for quadrants 2 and 3
    odd = (quadrant & 1) == 1
    cos_t = torch.where(odd, -sin_q, cos_q)
    sin_t = torch.where(odd, cos_q, sin_q)
    flip = 1.0 - 2.0 * (quadrant >= 2).to(torch.float64)  # +1 or -1, exactly
    return cos_t * flip, sin_t * flip


def standard_normal(key0: torch.Tensor, key1: torch.Tensor, count: int, stream: int) -> torch.Tensor:
    """(B, count) float64 standard normals (Box-Muller on Threefry words); one pair per counter."""
    pairs = (count + 1) // 2
    radius_words, angle_words = random_words(key0, key1, pairs, stream)
    radius = torch.sqrt(minus_two_log_uniform(radius_words))
    cos_t, sin_t = cos_sin_turn(angle_words)
    normals = torch.stack((radius * cos_t, radius * sin_t), dim=-1)  # (B, pairs, 2)
    return normals.reshape(normals.shape[0], -1)[:, :count]


def exp_negative(y: torch.Tensor) -> torch.Tensor:
    """exp(-y) for 0 <= y <= 32 in float64, reproducible across devices: series at y/64, squared 6 times."""
    result = _polynomial(y * (1.0 / 64.0), _EXP_SERIES)
    for _ in range(6):
        result = result * result
    return result
