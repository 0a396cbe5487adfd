"""Benchmark section 34: the achievable model's A100, L40S, H200 and B200 kernels against AIConfigurator's measured
tables (issue 19).

Why: on the four real vLLM A100 runs of section 33 moesim's decode step was 12% too fast at light load and 22% at
busy load, while the same models on the H100 were right. AIConfigurator (ai-dynamo/aiconfigurator, Apache-2.0)
publishes kernel tables measured with vLLM 0.14.0 on an A100-SXM4-80GB: GEMMs (``gemm_perf``) and the FA2 paged
decode attention (``generation_attention_perf``). They show what the A100 figures of ``model/presets/
achievable.yaml`` were missing: memory-bound GEMMs stream at 1.45 TB/s, not the 1.76 TB/s of a STREAM triad; and
FA2's decode kernel holds two CTAs per SM that cannot each draw the device's bandwidth, and splits keys only
where it packs query heads. The L40S's runs of section 12 were 10% too fast in the same way; its own tables (vLLM
0.14.0 on an L40S, ``--aic-l40s``) show its GEMMs and its FA2 decode streaming at 0.70-0.71 TB/s, not the L40's
0.80 TB/s triad the preset borrowed, and its 16-bit GEMMs reaching 73.8% of the peak, not the H100's 84% (its fp8
rows are shown but not adopted: the same collector's H100 fp8 rows are no faster than its 16-bit ones). The H200's
(``--aic-h200``, vLLM 0.12.0) show its GEMMs of a few rows streaming at 4.09 TB/s, above the 3.90 TB/s store
stream its preset had for every kernel; the B200's (``--aic-b200``, vLLM 0.14.0), which had no preset of its own,
its GEMMs streaming at 6.57 TB/s and reaching 75.0% of the peak on its 148 SMs.

What it does: fits the measured figures (A100: ``gemm_bw``, least squares in relative error of ``4 us + bytes /
bw`` over the GEMMs of m <= 16 moving 8 MB or more; ``attention_sm_bw``, the same over the decode rows of context
128 or more, through `model.achievable.decode_attention`; ``attention_fraction`` over the prefill rows of 1,024
tokens or more. L40S: ``gemm_bw`` over the GEMMs of m <= 16 with weights of 32 MB or more, ``dram_bw`` over the
decode rows reading 256 MB or more (its table keeps smaller weights and caches in the 96 MB L2 between repeats),
16-bit ``gemm_fraction`` over the GEMMs of m, n, k >= 2,048, ``attention_fraction`` as the A100's. H200: ``gemm_bw``
over the GEMMs of m <= 16 with weights of 64 MB or more, past its 50 MB L2; B200: the same at 256 MB, and its
16-bit ``gemm_fraction``), checks that they are
the ones in the preset, and prints the achievable model's error on those rows before and after.

The tables are not in this repository. Fetch them (about 72 MB, once)::

    pip download aiconfigurator==0.8.0 --no-deps -d /tmp/aic
    unzip -q /tmp/aic/aiconfigurator-0.8.0-py3-none-any.whl \\
        'aiconfigurator/systems/data/a100_sxm/vllm/0.14.0/*' \\
        'aiconfigurator/systems/data/l40s/vllm/0.14.0/*' \\
        'aiconfigurator/systems/data/h200_sxm/vllm/0.12.0/*' \\
        'aiconfigurator/systems/data/b200_sxm/vllm/0.14.0/*' -d /tmp/aic

Run: ``python -m benchmarks.a100_kernels --aic /tmp/aic/aiconfigurator/systems/data/a100_sxm/vllm/0.14.0
[--aic-h100 .../h100_sxm/vllm/0.14.0] [--aic-l40s .../l40s/vllm/0.14.0] [--aic-h200 .../h200_sxm/vllm/0.12.0]
[--aic-b200 .../b200_sxm/vllm/0.14.0] [--print]`` (a few seconds; the H100 tables,
unzipped the same way, add a check row of the H100's FA3 decode, whose figures this does not change); writes section
34 of RESULTS.md (``--out FILE`` to write elsewhere). Without the tables (``--aic`` absent or not a folder with them)
it says so and exits 0; it exits 1 where the fitted figures are not the preset's.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.serving_validation import replace_section  # noqa: E402

TITLE = "## 34. The A100's, L40S's, H200's and B200's kernels against AIConfigurator's measured tables (issue 19)"
GPU = "A100-SXM-80GB"
FILES = ("gemm_perf.txt", "generation_attention_perf.txt", "context_attention_perf.txt")


def _stats(err: np.ndarray) -> str:
    """``median |error| / P90 |error| / signed median`` of relative errors, in percent."""
    return (
        f"{np.median(np.abs(err)):.1%} / {np.percentile(np.abs(err), 90):.1%} / {np.median(err):+.1%}"
        if err.size
        else "-"
    )


def _gemm_rows(aic: Path, dtype: str = "float16"):
    """AIConfigurator's GEMM rows of ``dtype`` (its ``gemm_dtype``) with their bytes at 16 bits (``bytes``), their
    weights' bytes in ``dtype`` (``weight_bytes``) and seconds."""
    import pandas as pd

    g = pd.read_csv(aic / "gemm_perf.txt")
    g = g[g.gemm_dtype == dtype].copy()
    g["bytes"] = (g.m * g.k + g.k * g.n + g.m * g.n) * 2.0
    g["weight_bytes"] = g.k * g.n * (1.0 if dtype == "fp8" else 2.0)
    g["seconds"] = g.latency / 1e3
    return g


def fit_gemm_bw(g, kernel_s: float, min_weight_bytes: float = 0.0) -> float:
    """Least squares in relative error of ``kernel_s + bytes / bw`` over the GEMMs of m <= 16 moving >= 8 MB (and
    with weights of ``min_weight_bytes`` or more: on a GPU whose table keeps smaller weights in its L2)."""
    from scipy.optimize import least_squares

    fit = g[(g.m <= 16) & (g.bytes >= 8e6) & (g.weight_bytes >= min_weight_bytes)]
    b, t = fit.bytes.to_numpy(), fit.seconds.to_numpy()
    res = least_squares(lambda p: (kernel_s + b / (p[0] * 1e12)) / t - 1.0, [1.5], bounds=([0.01], [100.0]))
    return float(res.x[0] * 1e12)


def gemm_errors(g, params, gpu, cluster, dtype: str = "fp16", decode: bool = True) -> np.ndarray:
    """The achievable model's relative error on every GEMM row of ``g`` of m <= 64 (decode sizes; every row when
    not ``decode``), its weights and activations in ``dtype``."""
    from moesim.model.achievable import AchievableCostModel
    from moesim.profiling.opshapes import row_op

    cm = AchievableCostModel({gpu.key: params})
    rows = g[g.m <= 64] if decode else g
    out = []
    for r in rows.itertuples():
        op = row_op("gemm", {"dtype": dtype, "m": r.m, "n": r.n, "k": r.k})
        out.append(cm.op_time(op, cluster).seconds / r.seconds - 1.0)
    return np.array(out)


def _attention_op(b: int, q_len: int, kv_len: int, heads: int, kv_heads: int, head_dim: int):
    """The attention op of ``b`` sequences of ``q_len`` new tokens over ``kv_len`` keys (16-bit; `row_op`)."""
    from moesim.profiling.opshapes import row_op

    shape = {"batch": b, "q_len": q_len, "kv_len": kv_len, "heads": heads, "kv_heads": kv_heads, "head_dim": head_dim}
    return row_op("attention", {"dtype": "fp16", **shape})


def _kv_write_s(cm, cluster, tokens: int, kv_heads: int, head_dim: int) -> float:
    """Seconds of the KV-cache write of ``tokens`` new tokens (`model.attention_ops.kv_write_op`, 16-bit), which
    AIConfigurator's attention timings hold: they time vLLM's ``FlashAttentionImpl.forward``,
    ``reshape_and_cache_flash`` and then the attention kernels, in a CUDA graph (ai-dynamo/aiconfigurator@
    collector/vllm/collect_attn.py)."""
    from moesim.model.attention_ops import kv_write_op

    return cm.op_time(kv_write_op("x", 1, tokens, kv_heads * 2 * head_dim, 2.0, 2.0, "fp16"), cluster).seconds


def _attention_rows(aic: Path):
    import pandas as pd

    g = pd.read_csv(aic / "generation_attention_perf.txt")
    g = g[g.kv_cache_dtype == "float16"].copy()  # 16-bit KV (the H100 table also has fp8 KV rows)
    g["ctx"] = g.step  # the sequence's length, its new token included (collect_attn.py logs seq_len as ``step``)
    return g[(g.ctx >= 128) & (g.batch_size * g.ctx <= 2048 * 1024)].copy()


def attention_errors(g, params, gpu) -> np.ndarray:
    """The achievable model's relative error on every decode-attention row: `decode_attention` and its launches,
    plus the KV-cache write the timing holds (`_kv_write_s`)."""
    from moesim.model.achievable import AchievableCostModel, decode_attention
    from moesim.model.hardware import make_cluster

    rate = gpu.peak("fp16") * params.attention_fraction.value
    sms = int(params.sms.value)
    cm, cluster = AchievableCostModel({gpu.key: params}), make_cluster(gpu, num_gpus=1)
    out = []
    for r in g.itertuples():
        b, ctx, h, kvh, d = r.batch_size, r.ctx, r.num_heads, r.num_key_value_heads, r.head_dim
        op = _attention_op(b, 1, ctx, h, kvh, d)
        dec = decode_attention(op, params.dram_bw.value, sms, params.attention_cta_blocks.value, rate,
                               params.fa2_decode())  # fmt: skip
        t = dec.seconds + dec.combine_s + dec.kernels * params.kernel_s.value + _kv_write_s(cm, cluster, b, kvh, d)
        out.append(t / (r.latency / 1e3) - 1.0)
    return np.array(out)


def _context_rows(aic: Path):
    import pandas as pd

    g = pd.read_csv(aic / "context_attention_perf.txt")
    return g[(g.kv_cache_dtype == "float16") & (g.head_dim == 128) & (g.isl >= 256)].copy()


def context_errors(g, params, gpu) -> np.ndarray:
    """The achievable model's relative error on every prefill-attention row (whole prompts of ``isl`` tokens, causal;
    `attention_compute_s` through the cost model), plus the KV-cache write the timing holds (`attention_errors`)."""
    from moesim.model.achievable import AchievableCostModel
    from moesim.model.hardware import make_cluster

    cm, cluster = AchievableCostModel({gpu.key: params}), make_cluster(gpu, num_gpus=1)
    out = []
    for r in g.itertuples():
        b, n, h, kvh, d = r.batch_size, r.isl, r.num_heads, r.num_key_value_heads, r.head_dim
        t = cm.op_time(_attention_op(b, n, n, h, kvh, d), cluster).seconds + _kv_write_s(cm, cluster, b * n, kvh, d)
        out.append(t / (r.latency / 1e3) - 1.0)
    return np.array(out)


def fit_attention_fraction(g, params, gpu) -> float:
    """``attention_fraction`` by least squares in relative error over the prefill rows of 1,024 tokens or more."""
    from scipy.optimize import minimize_scalar

    from moesim.model.hardware import AchievedFigure

    long = g[g.isl >= 1024]

    def sse(frac: float) -> float:
        fig = AchievedFigure(value=frac, source="fit")
        return float((context_errors(long, dataclasses.replace(params, attention_fraction=fig), gpu) ** 2).sum())

    return float(minimize_scalar(sse, bounds=(0.2, 1.0), method="bounded", options={"xatol": 1e-4}).x)


def fit_sm_bw(g, params, gpu) -> float:
    """``attention_sm_bw`` (bytes/s) by least squares in relative error over the decode rows."""
    from scipy.optimize import minimize_scalar

    from moesim.model.hardware import AchievedFigure

    def sse(gbs: float) -> float:
        fig = AchievedFigure(value=gbs * 1e9, source="fit")
        return float((attention_errors(g, dataclasses.replace(params, attention_sm_bw=fig), gpu) ** 2).sum())

    res = minimize_scalar(sse, bounds=(5.0, 100.0), method="bounded", options={"xatol": 0.01})
    return float(res.x * 1e9)


def fit_gemm_fraction(g, params, gpu, cluster, dtype: str) -> float:
    """``gemm_fraction[dtype]`` (and bf16's with fp16's) by least squares in relative error over the compute-bound
    GEMMs of ``g`` (m, n and k of 2,048 or more), through the achievable model's tiles and waves."""
    from scipy.optimize import minimize_scalar

    from moesim.model.hardware import AchievedFigure

    rows = g[(g.m >= 2048) & (g.n >= 2048) & (g.k >= 2048)]

    def sse(frac: float) -> float:
        figs = dict(params.gemm_fraction)
        figs[dtype] = AchievedFigure(value=frac, source="fit")
        if dtype == "fp16":
            figs["bf16"] = figs[dtype]
        p = dataclasses.replace(params, gemm_fraction=figs)
        return float((gemm_errors(rows, p, gpu, cluster, dtype, decode=False) ** 2).sum())

    return float(minimize_scalar(sse, bounds=(0.1, 1.0), method="bounded", options={"xatol": 1e-4}).x)


def fit_dram_bw(g, params, gpu) -> float:
    """``dram_bw`` (bytes/s) by least squares in relative error over the decode-attention rows ``g``
    (`attention_errors`)."""
    from scipy.optimize import minimize_scalar

    from moesim.model.hardware import AchievedFigure

    def sse(tbs: float) -> float:
        fig = AchievedFigure(value=tbs * 1e12, source="fit")
        return float((attention_errors(g, dataclasses.replace(params, dram_bw=fig), gpu) ** 2).sum())

    return float(minimize_scalar(sse, bounds=(0.2, 5.0), method="bounded", options={"xatol": 1e-5}).x * 1e12)


#: The L40S's tables keep a GEMM's weights and an attention's cache in its 96 MB L2 between repeats when they are
#: small (weights of 24 MB or less stream at up to 2.3 TB/s, caches of 24-96 MB at a median 1.44 TB/s, where the
#: device's GDDR6 moves 0.864 TB/s): its streaming rates are fitted on the rows past that, which a serving step
#: streams from DRAM as well (the other layers' weights evict them).
L40S_MIN_WEIGHTS = 32e6
#: Decode caches past every GPU's L2 here (the L40S's 96 MB, the B200's 126 MB): the rows its streaming is read on.
MIN_KV = 256e6
# Why the L40S's fp8 fraction is not taken from these tables: the same collector's H100 fp8 rows (vLLM 0.12 and
# 0.14) run 8,192^3 at 802-806 TFLOP/s, no faster than its 16-bit rows, where AIConfigurator's vLLM 0.19 H100 table
# (../shared/data/aiconfigurator-h100-sxm) measures 1,435 TFLOP/s: those rows time more than vLLM's fp8 GEMM.


def _streaming(f16, floor: float, before, now, gpu, cluster) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """(``gemm_bw`` fitted on the 16-bit GEMMs ``f16`` of m <= 16 with weights of ``floor`` bytes or more, which of
    the rows of m <= 16 those are, and every such row's error before and after) (`fit_gemm_bw`, `gemm_errors`)."""
    gemm_bw = fit_gemm_bw(f16, now.kernel_s.value, floor)
    dec = f16[f16.m <= 16]
    streamed = (dec.weight_bytes >= floor).to_numpy()
    errs = [gemm_errors(dec, p, gpu, cluster, "fp16", decode=False) for p in (before, now)]
    return gemm_bw, streamed, errs[0], errs[1]


def l40s_lines(aic: Path) -> tuple[list[str], bool]:
    """The L40S's rows of the section (AIConfigurator's ``l40s/vllm/0.14.0`` tables in ``aic``) and whether every
    fitted figure is the preset's (within 0.5%)."""
    from moesim.model.achievable import ACHIEVABLE
    from moesim.model.hardware import AchievedFigure, get_gpu, make_cluster

    gpu = get_gpu("L40S")
    cluster = make_cluster(gpu, num_gpus=1)
    now = ACHIEVABLE["L40S"]
    h100 = ACHIEVABLE["H100-SXM"].gemm_fraction
    before = dataclasses.replace(  # the figures this replaces: the L40's STREAM triad, the H100's GEMM fractions
        now,
        dram_bw=AchievedFigure(value=0.80e12, source="github.com/te42kyfo/gpu-benches gpu-stream/l40.txt triad"),
        gemm_bw=None,
        gemm_fraction={"bf16": h100["bf16"], "fp16": h100["bf16"], "fp8": h100["fp8"]},
        attention_fraction=AchievedFigure(value=0.6302, source="the same fit with the KV write at 0.80 TB/s"),
    )
    f16, f8 = _gemm_rows(aic, "float16"), _gemm_rows(aic, "fp8")
    print(f"[a100_kernels] L40S: {len(f16)} + {len(f8)} GEMM rows", file=sys.stderr, flush=True)
    gemm_bw, streamed, g_before, g_after = _streaming(f16, L40S_MIN_WEIGHTS, before, now, gpu, cluster)
    fracs, frac_rows = {}, []
    for dtype, rows in (("fp16", f16), ("fp8", f8)):
        fracs[dtype] = fit_gemm_fraction(rows, now, gpu, cluster, dtype)
        cb = rows[(rows.m >= 2048) & (rows.n >= 2048) & (rows.k >= 2048)]
        b, a = (gemm_errors(cb, p, gpu, cluster, dtype, decode=False) for p in (before, now))
        shipped = now.gemm_fraction[dtype].value
        # the fp8 rows of these collections are not vLLM's fp8 GEMM alone (above): shown, not adopted
        name = "float16" if dtype == "fp16" else "per-tensor fp8 (not adopted: the note below)"
        frac_rows.append(
            f"| {len(cb)} L40S {name} GEMMs of m, n, k >= 2,048 | `gemm_fraction.{dtype}` | {fracs[dtype]:.4f} | "
            f"{shipped:.4f} | {_stats(b)} | {_stats(a)} |"
        )
    attn = _attention_rows(aic)
    attn = attn.assign(kv_bytes=attn.batch_size * attn.ctx * attn.num_key_value_heads * attn.head_dim * 4.0)
    big = attn[attn.kv_bytes >= MIN_KV]
    mid = attn[(attn.kv_bytes >= 96e6) & (attn.kv_bytes < MIN_KV)]
    print(f"[a100_kernels] L40S: {len(attn)} decode-attention rows", file=sys.stderr, flush=True)
    dram = fit_dram_bw(big, now, gpu)
    ctx = _context_rows(aic)
    frac_attn = fit_attention_fraction(ctx, now, gpu)
    long = ctx[ctx.isl >= 1024]
    shipped = {
        "gemm_bw": now.gemm_bw.value, "dram_bw": now.dram_bw.value, "fp16": now.gemm_fraction["fp16"].value,
        "attn": now.attention_fraction.value,
    }  # fmt: skip
    fitted = {"gemm_bw": gemm_bw, "dram_bw": dram, "fp16": fracs["fp16"], "attn": frac_attn}  # fp8: shown, not adopted
    same = all(math.isclose(fitted[k], shipped[k], rel_tol=0.005) for k in shipped)
    lines = [
        f"| {int(streamed.sum())} L40S float16 GEMMs of m <= 16, weights of 32 MB or more | `gemm_bw` | "
        f"{gemm_bw / 1e12:.4f} TB/s | {shipped['gemm_bw'] / 1e12:.4f} TB/s | {_stats(g_before[streamed])} | "
        f"{_stats(g_after[streamed])} |",
        f"| {int((~streamed).sum())} of m <= 16 with smaller weights (held in the L2 between the table's repeats) | | "
        f"| | {_stats(g_before[~streamed])} | {_stats(g_after[~streamed])} |",
        *frac_rows,
        f"| {len(big)} L40S FA2 decode rows reading 256 MB or more | `dram_bw` | {dram / 1e12:.4f} TB/s | "
        f"{shipped['dram_bw'] / 1e12:.4f} TB/s | {_stats(attention_errors(big, before, gpu))} | "
        f"{_stats(attention_errors(big, now, gpu))} |",
        f"| {len(mid)} of them reading 96-256 MB | | | | {_stats(attention_errors(mid, before, gpu))} | "
        f"{_stats(attention_errors(mid, now, gpu))} |",
        f"| {len(long)} L40S FA2 prefill rows, 1,024 to 16,384 tokens | `attention_fraction` | {frac_attn:.4f} | "
        f"{shipped['attn']:.4f} | {_stats(context_errors(long, before, gpu))} | "
        f"{_stats(context_errors(long, now, gpu))} |",
    ]
    return lines, same


#: Weights past each GPU's L2 (H200 50 MB, B200 126 MB): smaller ones stay in it between the table's repeats, as the
#: L40S's do.
MIN_WEIGHTS = {"H200-SXM": 64e6, "B200": 256e6}


def hbm_lines(key: str, aic: Path, before, adopt_fraction: bool) -> tuple[list[str], bool]:
    """The rows of GPU ``key`` (AIConfigurator's vLLM tables in ``aic``): its GEMMs' own streaming rate, fitted on the
    GEMMs of m <= 16 with weights past its L2 (`MIN_WEIGHTS`); its 16-bit GEMM fraction, fitted (``adopt_fraction``)
    or a check; its decode and prefill attention against the preset's figures, checks not adopted (section 34's
    notes). ``before``: the figures this replaces. Returns the rows and whether the fitted figures are the preset's
    (within 0.5%)."""
    from moesim.model.achievable import ACHIEVABLE
    from moesim.model.hardware import get_gpu, make_cluster

    gpu = get_gpu(key)
    cluster = make_cluster(gpu, num_gpus=1)
    now = ACHIEVABLE[key]
    name, floor = key.removesuffix("-SXM"), MIN_WEIGHTS[key]
    f16 = _gemm_rows(aic, "float16")
    print(f"[a100_kernels] {name}: {len(f16)} GEMM rows", file=sys.stderr, flush=True)
    gemm_bw, streamed, g_before, g_after = _streaming(f16, floor, before, now, gpu, cluster)
    frac = fit_gemm_fraction(f16, now, gpu, cluster, "fp16")
    cb = f16[(f16.m >= 2048) & (f16.n >= 2048) & (f16.k >= 2048)]
    c_b, c_a = (gemm_errors(cb, p, gpu, cluster, "fp16", decode=False) for p in (before, now))
    largest = (2.0 * cb.m * cb.n * cb.k >= 2.0**42).to_numpy()
    attn = _attention_rows(aic)
    attn = attn.assign(kv_bytes=attn.batch_size * attn.ctx * attn.num_key_value_heads * attn.head_dim * 4.0)
    big = attn[attn.kv_bytes >= MIN_KV]
    a_err = attention_errors(big, now, gpu)
    ctx = _context_rows(aic)
    long = ctx[ctx.isl >= 1024]
    p_err = context_errors(long, now, gpu)
    frac_attn = fit_attention_fraction(ctx, now, gpu)
    same = math.isclose(gemm_bw, now.gemm_bw.value, rel_tol=0.005)
    if adopt_fraction:
        same = same and math.isclose(frac, now.gemm_fraction["fp16"].value, rel_tol=0.005)
    adopted = "" if adopt_fraction else " (check, not adopted)"
    lines = [
        f"| {int(streamed.sum())} {name} float16 GEMMs of m <= 16, weights of {floor / 1e6:.0f} MB or more | "
        f"`gemm_bw` | {gemm_bw / 1e12:.4f} TB/s | {now.gemm_bw.value / 1e12:.4f} TB/s | {_stats(g_before[streamed])} | "
        f"{_stats(g_after[streamed])} |",
        f"| {int((~streamed).sum())} of m <= 16 with smaller weights (the L2 holds some between repeats) | | | | "
        f"{_stats(g_before[~streamed])} | {_stats(g_after[~streamed])} |",
        f"| {len(cb)} {name} float16 GEMMs of m, n, k >= 2,048{adopted} | `gemm_fraction.fp16` | {frac:.4f} | "
        f"{now.gemm_fraction['fp16'].value:.4f} | {_stats(c_b)} | {_stats(c_a)} |",
        f"| {int(largest.sum())} of them of 2^42 FLOP or more | | | | {_stats(c_b[largest])} | "
        f"{_stats(c_a[largest])} |",
        f"| {len(big)} {name} decode-attention rows reading 256 MB or more (check) | | | | {_stats(a_err)} | "
        f"{_stats(a_err)} |",
        f"| {len(long)} {name} prefill-attention rows, 1,024 to 16,384 tokens (check, not adopted) | "
        f"`attention_fraction` | {frac_attn:.4f} | {now.attention_fraction.value:.4f} | {_stats(p_err)} | "
        f"{_stats(p_err)} |",
    ]
    return lines, same


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--aic", type=Path, help="folder of AIConfigurator's a100_sxm/vllm/0.14.0 tables")
    ap.add_argument("--aic-h100", type=Path, help="optional: AIConfigurator's h100_sxm/vllm/0.14.0 tables, a check row")
    ap.add_argument("--aic-l40s", type=Path, help="optional: AIConfigurator's l40s/vllm/0.14.0 tables, the L40S's rows")
    ap.add_argument("--aic-h200", type=Path, help="optional: AIConfigurator's h200_sxm/vllm/0.12.0 tables")
    ap.add_argument("--aic-b200", type=Path, help="optional: AIConfigurator's b200_sxm/vllm/0.14.0 tables")
    ap.add_argument("--print", action="store_true", help="print the section instead of writing RESULTS.md")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    args = ap.parse_args(argv)
    if args.aic is None or not all((args.aic / f).is_file() for f in FILES):
        print("skipped: AIConfigurator's A100 tables not given (--aic DIR; see this module's docstring to fetch "
              "them)", file=sys.stderr)  # fmt: skip
        return 0
    from moesim.model.achievable import ACHIEVABLE
    from moesim.model.hardware import get_gpu, make_cluster

    t0 = time.perf_counter()
    gpu = get_gpu(GPU)
    cluster = make_cluster(gpu, num_gpus=1)
    now = ACHIEVABLE[GPU]
    from moesim.model.hardware import AchievedFigure

    before = dataclasses.replace(
        now,
        gemm_bw=None,
        attention_kernel="fa3",
        attention_ctas_per_sm=None,
        attention_sm_bw=None,
        attention_fraction=AchievedFigure(value=0.73, source="FlashAttention-2's 'up to 73%' (arXiv:2307.08691)"),
    )
    gemms = _gemm_rows(args.aic)
    print(f"[a100_kernels] {len(gemms)} GEMM rows", file=sys.stderr, flush=True)
    gemm_bw = fit_gemm_bw(gemms, now.kernel_s.value)
    g_before, g_after = gemm_errors(gemms, before, gpu, cluster), gemm_errors(gemms, now, gpu, cluster)
    big = (gemms[gemms.m <= 64].bytes >= 8e6).to_numpy()
    # a check of the A100's GEMM fraction (ml-engineering's MAMF figure, not fitted here) on the compute-bound rows
    gemm_frac = fit_gemm_fraction(gemms, now, gpu, cluster, "fp16")
    bound = gemms[(gemms.m >= 2048) & (gemms.n >= 2048) & (gemms.k >= 2048)]
    bound_err = gemm_errors(bound, now, gpu, cluster, "fp16", decode=False)
    ctx = _context_rows(args.aic)
    print(f"[a100_kernels] {len(ctx)} prefill-attention rows", file=sys.stderr, flush=True)
    frac = fit_attention_fraction(ctx, now, gpu)
    c_before, c_after = context_errors(ctx, before, gpu), context_errors(ctx, now, gpu)
    long = (ctx.isl >= 1024).to_numpy()
    attn = _attention_rows(args.aic)
    print(f"[a100_kernels] {len(attn)} decode-attention rows", file=sys.stderr, flush=True)
    sm_bw = fit_sm_bw(attn, now, gpu)
    a_before, a_after = attention_errors(attn, before, gpu), attention_errors(attn, now, gpu)
    mha = (attn.num_heads == attn.num_key_value_heads).to_numpy()
    check = []
    if args.aic_h100 is not None and (args.aic_h100 / "generation_attention_perf.txt").is_file():
        h100 = _attention_rows(args.aic_h100)
        h_err = attention_errors(h100, ACHIEVABLE["H100-SXM"], get_gpu("H100-SXM"))
        check = [f"| {len(h100)} H100 SXM FA3 decode rows (check, figures unchanged) | | | | {_stats(h_err)} | "
                 f"{_stats(h_err)} |"]  # fmt: skip
    l40s: list[str] = []
    l40s_same = True
    if args.aic_l40s is not None and all((args.aic_l40s / f).is_file() for f in FILES):
        l40s, l40s_same = l40s_lines(args.aic_l40s)
    h200: list[str] = []
    if args.aic_h200 is not None and all((args.aic_h200 / f).is_file() for f in FILES):
        h200_now = ACHIEVABLE["H200-SXM"]
        h200, h200_same = hbm_lines("H200-SXM", args.aic_h200, dataclasses.replace(h200_now, gemm_bw=None), False)
        l40s_same = l40s_same and h200_same
    b200: list[str] = []
    if args.aic_b200 is not None and all((args.aic_b200 / f).is_file() for f in FILES):
        from moesim.model.achievable import _fallback

        b200_gpu = get_gpu("B200")
        b200, b200_same = hbm_lines("B200", args.aic_b200, _fallback("B200", b200_gpu.memory_bandwidth), True)
        l40s_same = l40s_same and b200_same
    wall = time.perf_counter() - t0
    shipped_g, shipped_a, shipped_f = now.gemm_bw.value, now.attention_sm_bw.value, now.attention_fraction.value
    shipped_gf = now.gemm_fraction["fp16"].value
    same = l40s_same and all(
        math.isclose(x, y, rel_tol=0.005)
        for x, y in ((gemm_bw, shipped_g), (sm_bw, shipped_a), (frac, shipped_f), (gemm_frac, shipped_gf))
    )
    lines = [
        TITLE,
        "",
        "AIConfigurator's kernel tables measured with vLLM 0.14.0 on an A100-SXM4-80GB (ai-dynamo/aiconfigurator "
        "0.8.0 wheel, `systems/data/a100_sxm/vllm/0.14.0`, Apache-2.0; not in this repository: the module docstring "
        "says how to fetch them), against the achievable model's A100 figures (`python -m benchmarks.a100_kernels "
        "--aic DIR`). Before: the copy rate for every kernel and FA3's decode rules (splits for MHA, no per-SM cap); "
        "after: the preset's `gemm_bw`, `attention_fraction`, `attention_kernel: fa2`, `attention_ctas_per_sm` and "
        "`attention_sm_bw`. "
        "The L40S's rows (`--aic-l40s DIR`, its `l40s/vllm/0.14.0` tables, vLLM 0.14.0 on an L40S): before, the L40's "
        "STREAM triad (0.80 TB/s) for every kernel and the H100's GEMM fractions; after, the preset's `dram_bw`, "
        "`gemm_bw` and `gemm_fraction`. The H200's rows (`--aic-h200 DIR`, `h200_sxm/vllm/0.12.0`): before, its "
        "store stream (3.90 TB/s) for every kernel; after, the preset's `gemm_bw`. The B200's (`--aic-b200 DIR`, "
        "`b200_sxm/vllm/0.14.0`): before, the figures a GPU without a preset took (the H100's fractions and SM count "
        "on the B200's datasheet); after, the preset's `gemm_bw`, `gemm_fraction` and `sms`. "
        "Errors are predicted / measured - 1: median |error| / P90 |error| / signed median.",
        "",
        "| rows | what | fitted here | in the preset | before | after |",
        "|---|---|---|---|---|---|",
        f"| {int((gemms.m <= 64).sum())} GEMMs of m <= 64 (float16) | `gemm_bw` | {gemm_bw / 1e12:.3f} TB/s | "
        f"{shipped_g / 1e12:.3f} TB/s | {_stats(g_before)} | {_stats(g_after)} |",
        f"| {int(big.sum())} of them moving 8 MB or more | | | | {_stats(g_before[big])} | {_stats(g_after[big])} |",
        f"| {int((~big).sum())} of them moving less | | | | {_stats(g_before[~big])} | {_stats(g_after[~big])} |",
        f"| {len(bound)} GEMMs of m, n, k >= 2,048 (float16; a check of ml-engineering's MAMF figure) | "
        f"`gemm_fraction.fp16` | {gemm_frac:.4f} | {shipped_gf:.4f} | {_stats(bound_err)} | {_stats(bound_err)} |",
        f"| {int(long.sum())} FA2 prefill rows (causal, 16-bit), 1,024 to 16,384 tokens | `attention_fraction` | "
        f"{frac:.4f} | {shipped_f:.4f} | {_stats(c_before[long])} | {_stats(c_after[long])} |",
        f"| {int((~long).sum())} of 256 to 1,023 tokens | | | | {_stats(c_before[~long])} | {_stats(c_after[~long])} |",
        f"| {len(attn)} FA2 decode rows, context 128 or more | `attention_sm_bw` | {sm_bw / 1e9:.2f} GB/s | "
        f"{shipped_a / 1e9:.2f} GB/s | {_stats(a_before)} | {_stats(a_after)} |",
        f"| {int(mha.sum())} of them MHA (no split under FA2) | | | | {_stats(a_before[mha])} | "
        f"{_stats(a_after[mha])} |",
        f"| {int((~mha).sum())} of them GQA/MQA | | | | {_stats(a_before[~mha])} | {_stats(a_after[~mha])} |",
        *check,
        *l40s,
        *h200,
        *b200,
        "",
        f"The fitted figures {'are' if same else 'are NOT'} the preset's (within 0.5%). Computed in {wall:.0f} s of "
        "wall time.",
        "",
    ]
    text = "\n".join(lines)
    if args.print:
        print(text)
        return 0 if same else 1
    replace_section(args.out, 34, text)
    print(f"wrote {TITLE!r} to {args.out}", file=sys.stderr)
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
