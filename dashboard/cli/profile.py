"""``moesim profile``, ``moesim import`` and ``moesim calibrate``: measured tables and the cost model."""

from __future__ import annotations

import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from moesim.dashboard.cli._common import emit_json, err, finite, out, progress_bar, seconds
from moesim.dashboard.cli.catalog import HardwareOpt, JsonOpt
from moesim.model import get_gpu
from moesim.model.errors import MoesimError
from moesim.model.limits import MAX_SEED


class Device(str, Enum):
    cpu = "cpu"
    cuda = "cuda"


class Format(str, Enum):
    auto = "auto"
    aiconfigurator = "aiconfigurator"
    trace = "trace"


def profile(
    device: Annotated[
        Device, typer.Option(help="Where to measure: cpu, or cuda (GPU 0; NCCL over all GPUs).")
    ] = Device.cpu,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the tables (created).")] = Path("profiles/local"),
    quick: Annotated[
        bool, typer.Option("--quick/--full", help="quick: a few minutes on a 2-core CPU; full: every preset shape.")
    ] = True,
    ops: Annotated[
        str,
        typer.Option(
            help="Comma-separated: gemm,moe,attention,router,permute,collective,memcpy and the engines' kernels "
            "between the GEMMs: norm,rope,activation,kv_write,topk_softmax,sampling; train: training's backward "
            "kernels and fp8 casts at training sizes (not in the default)."
        ),
    ] = "gemm,moe,attention,router,permute,collective,memcpy,norm,rope,activation,kv_write,topk_softmax,sampling",
    dtype: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated dtypes (fp32, fp16, bf16; fp8 GEMMs on CUDA). Default: fp32 on cpu, bf16 on cuda."
        ),
    ] = None,
    json_out: JsonOpt = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Write into an existing --out folder that moesim did not write, over files of the same names "
            "(other files are kept; never /, the home folder, the working folder or a folder holding .git). "
            "Without it such a folder is refused; tables are added to a folder of moesim tables.",
        ),
    ] = False,
) -> None:
    """Time this device's kernels over shape grids from the preset models; write parquet tables.

    Example: moesim profile --device cpu --quick --ops gemm,moe --out profiles/cpu
    """
    from moesim.profiling.runner import OP_GROUPS
    from moesim.profiling.runner import profile as run_profile

    op_list = [o.strip() for o in ops.split(",") if o.strip()]
    if not op_list:
        raise MoesimError(f"--ops {ops!r} names no op group", f"give --ops some of {','.join(OP_GROUPS)}")
    with progress_bar("profiling", quiet=False) as update:
        run = run_profile(
            device.value,
            out_dir,
            mode="quick" if quick else "full",
            ops=op_list,
            dtypes=[d.strip() for d in dtype.split(",")] if dtype else None,
            progress=update,
            force=force,
        )
    hw = run.hardware
    summary: dict[str, Any] = {
        "out": str(run.out),
        "device": run.meta.get("device"),
        "device_key": hw.key,
        "mode": run.meta.get("mode"),
        "threads": run.meta.get("threads"),
        "rows": run.rows,
        "tables": {k: str(v) for k, v in run.tables.items()},
        "peak_flops": hw.peak_flops,
        "memory_bandwidth": hw.memory_bandwidth,
        "skipped": run.skipped,
        "wall_s": round(run.wall_s, 2),
    }
    if json_out:
        emit_json(summary)
        return
    out.print(f"[bold]{summary['device']}[/bold] ({hw.key}, {summary['threads']} threads), {summary['mode']} grid")
    t = Table("table", "rows", "file")
    for kind, n in run.rows.items():
        t.add_row(kind, str(n), str(run.tables[kind]))
    out.print(t)
    peaks = ", ".join(f"{k} {v / 1e9:,.0f} GFLOP/s" for k, v in hw.peak_flops.items())
    bw = f"{hw.memory_bandwidth / 1e9:,.1f} GB/s" if hw.memory_bandwidth else "unknown"
    src = "measured" if hw.key in ("cpu", "cuda") else "datasheet"
    out.print(f"{src} peak: {peaks}; memory bandwidth {bw}; spec in {run.out / 'hardware.yaml'}")
    for s in run.skipped:
        err.print(f"[yellow]skipped[/yellow] {s}", markup=True, soft_wrap=True)
    out.print(
        f"done in {seconds(run.wall_s)}; next: moesim calibrate {run.out} --out {run.out / 'calibration.parquet'}"
    )


def import_tables(
    source: Annotated[
        Path,
        typer.Argument(
            help="An AIConfigurator folder (*_perf.parquet, or the *_perf.txt tables its PyPI wheel ships per GPU) "
            "or a torch.profiler trace (.json[.gz])."
        ),
    ],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the converted tables (created).")],
    fmt: Annotated[
        Format, typer.Option("--format", help="auto: a folder, .parquet or .txt is AIConfigurator, .json a trace.")
    ] = Format.auto,
    gpu: Annotated[
        str | None,
        typer.Option(help="Trace only: the GPU preset the trace was taken on (its roofline is the reference)."),
    ] = None,
    hardware: HardwareOpt = None,
    json_out: JsonOpt = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Write into an existing --out folder that moesim did not write, over files of the same names "
            "(other files are kept; never /, the home folder, the working folder or a folder holding .git). "
            "Without it such a folder is refused; tables are added to a folder of moesim tables.",
        ),
    ] = False,
) -> None:
    """Convert measurements made elsewhere into moesim tables.

    Example: moesim import ../shared/data/aiconfigurator-h100-sxm --out profiles/h100-aic

    An L40S's tables from AIConfigurator's wheel (pip download aiconfigurator==0.8.0 --no-deps, unzipped):
    moesim import aiconfigurator/systems/data/l40s/vllm/0.14.0 --out profiles/l40s-aic
    """
    if not source.exists():
        raise MoesimError(f"{source}: no such file or folder", "give an AIConfigurator folder or table, or a trace")
    kind = fmt.value
    if kind == "auto":
        kind = "aiconfigurator" if source.is_dir() or source.suffix in (".parquet", ".txt") else "trace"
    if kind == "aiconfigurator":
        from moesim.profiling.aiconfigurator import import_aiconfigurator

        summary = import_aiconfigurator(source, out_dir, force=force) | {"format": kind}
    else:
        summary = _import_trace(source, out_dir, gpu, hardware, force)
    if json_out:
        emit_json(summary)
        return
    out.print(f"imported {source} ({kind}) into {out_dir}:")
    for k, n in summary["rows"].items():
        out.print(f"  {k}: {n:,} rows")
    if kind == "trace":
        out.print(
            f"mapped {seconds(summary['mapped_s'])} of kernel time; unmapped {seconds(summary['unmapped_s'])} "
            f"({summary['unmapped_names']} names, listed in {summary['unmapped_csv']})"
        )
        for stack, c in summary["coverage"].get("by_stack", {}).items():
            out.print(f"  {stack}: {c['share']:.1%} of kernel time, {c['tabled_share']:.0%} of it in tables")


def _import_trace(
    source: Path, out_dir: Path, gpu: str | None, hardware: Path | None, force: bool = False
) -> dict[str, Any]:
    from moesim.profiling.trace_import import import_trace

    spec = get_gpu(gpu, hardware) if gpu else None
    return import_trace(source, out_dir, spec if spec is None or spec.peak_flops else None, force=force)


def is_report_folder(folder: Path) -> bool:
    """Whether ``folder`` is a ``--report`` an older ``moesim calibrate`` wrote (before output markers): only
    ``errors.csv``, ``errors.md`` and ``<kind>.png`` files."""
    try:
        names = [e.name for e in folder.iterdir() if e.is_file() and not e.is_symlink()]
        return (
            "errors.csv" in names
            and len(names) == len(list(folder.iterdir()))
            and all(n in ("errors.csv", "errors.md") or n.endswith(".png") for n in names)
        )
    except OSError:
        return False


def calibrate(
    paths: Annotated[list[Path], typer.Argument(help="Table files or folders of them (profiled or imported).")],
    out_file: Annotated[Path, typer.Option("--out", help="The calibration file to write (.parquet).")],
    holdout: Annotated[
        float,
        typer.Option(callback=finite("--holdout", 0.0, 0.9), help="Share of shapes held out to measure the error."),
    ] = 0.2,
    seed: Annotated[
        int, typer.Option(min=0, max=MAX_SEED, help="Seed of the held-out split and the method choice.")
    ] = 0,
    report: Annotated[
        Path | None, typer.Option(help="Folder for an error table and measured-vs-predicted plots (PNG) per op kind.")
    ] = None,
    kinds: Annotated[str | None, typer.Option(help="Only these op kinds (comma-separated).")] = None,
    json_out: JsonOpt = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Overwrite an --out file that is not a moesim calibration, and replace a --report folder that "
            "moesim calibrate did not write (never /, the home folder, the working folder or a folder holding "
            ".git). Without it both are refused; an earlier calibration or report is replaced.",
        ),
    ] = False,
) -> None:
    """Fit a cost model to measured tables; report its error on held-out shapes.

    Example: moesim calibrate profiles/h100-aic --out h100.calibration.parquet --holdout 0.2 --report cal-report
    """
    from moesim.model.outputs import check_replaceable, output_dir
    from moesim.profiling.calibrate import calibrate as run_calibrate
    from moesim.profiling.calibrate import check_out, save

    check_out(out_file, force)  # before the fit, not after it
    if report is not None:
        if out_file.resolve().is_relative_to(report.resolve()):
            raise MoesimError(
                f"--out {out_file} is inside --report {report}, which is replaced whole",
                "write the calibration outside the report folder",
            )
        check_replaceable(report, "calibrate", force, legacy=is_report_folder, flag="--report")
    started = time.perf_counter()
    with progress_bar("calibrating") as update:
        cal = run_calibrate(
            list(paths),
            holdout=holdout,
            seed=seed,
            kinds=[k.strip() for k in kinds.split(",")] if kinds else None,
            progress=update,
        )
    written: list[str] = []
    if report is None:
        save(cal, out_file, force=force)
    else:  # the report and the calibration appear together or not at all
        from moesim.profiling.report import write_report

        with output_dir(report, "calibrate", force=force, legacy=is_report_folder, flag="--report") as tmp:
            written = [str(report / p.relative_to(tmp)) for p in write_report(cal, tmp)]
            save(cal, out_file, force=force)
    summary = cal.summary() | {
        "out": str(out_file),
        "report": written,
        "wall_s": round(time.perf_counter() - started, 2),
    }
    if json_out:
        emit_json(summary)
        return
    t = Table(title=f"Held-out error ({holdout:.0%} of shapes, seed {seed})")
    for col in ("kind", "dtype", "impl", "device", "method", "fitted", "held out", "MAPE", "P90 APE", "x reference"):
        t.add_column(
            col, justify="right" if col in ("fitted", "held out", "MAPE", "P90 APE", "x reference") else "left"
        )
    for f in cal.fits:
        t.add_row(
            f.kind, f.dtype, f.impl, f.device_key, f.predictor.label, str(f.rows_fit), str(f.rows_holdout),
            f"{f.mape:.1f}%", f"{f.p90:.1f}%" if f.p90 == f.p90 else "-", f"{f.median_ratio:.2f}",
        )  # fmt: skip
    out.print(t)
    if cal.skew:
        s = cal.skew
        out.print(
            f"skew model: {s['rows']} skewed grouped GEMMs predicted from balanced ones, MAPE {s['mape']:.1f}% "
            f"(assuming them balanced: {s['balanced_assumption_mape']:.1f}%)"
        )
    out.print(f"wrote {out_file}" + (f" and {len(written)} report files in {report}" if written else ""))
