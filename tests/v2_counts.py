"""MobileNetV2's multiply-adds and parameters derived from the paper's Table 2, independently of
the library's builder: the expected numbers of tests that train or ablate small V2 models."""

# V2 Table 2: (t, c, n, s) after the 3×3/s2 stem of 32 channels; then 1×1 to 1280, pool, classes.
TABLE2 = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
          (6, 160, 3, 2), (6, 320, 1, 1)]


def round_channels(v: float, divisor: int = 8) -> int:
    """The reference code's rounding (V2 §4; `make_divisible` in TF-slim)."""
    n = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return n + divisor if n < 0.9 * v else n


def v2_counts(width: float, size: int, in_chans: int = 3, classes: int = 1000,
              small_input: bool = False) -> tuple[int, int]:
    """(parameters with batch norm, multiply-adds). small_input: the stem and the first
    stride-2 row run at stride 1. Every 3×3 conv pads by 1, so a stride-2 map of n is (n+1)//2."""
    params = madds = 0

    def conv(cin, cout, k, groups=1):
        nonlocal params, madds
        params += cout * (cin // groups) * k * k + 2 * cout     # weights + BN scale, offset
        madds += size * size * cout * (cin // groups) * k * k

    stem = round_channels(32 * width)
    size = size if small_input else (size + 1) // 2
    conv(in_chans, stem, 3)
    cin, first_stride_kept = stem, not small_input
    for t, c, n, s in TABLE2:
        cout = round_channels(c * width)
        for i in range(n):
            stride = s if i == 0 else 1
            if stride == 2 and not first_stride_kept:
                stride, first_stride_kept = 1, True
            exp = cin * t
            if t != 1:
                conv(cin, exp, 1)
            size = (size + 1) // 2 if stride == 2 else size
            conv(exp, exp, 3, groups=exp)
            conv(exp, cout, 1)
            cin = cout
    last = round_channels(1280 * max(1.0, width))
    conv(cin, last, 1)
    params += last * classes + classes
    madds += last * classes
    return params, madds
