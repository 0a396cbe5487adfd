"""The serving DES's speed against commit 466109d, in one run: wall seconds per DES step and simulated seconds per
wall second on the Mixtral-8x7B EP8 and DeepSeek-V3 DP32/EP32 examples, and the key results side by side.

    python -m benchmarks.des_speed                      # both examples, the old code on fewer requests
    python -m benchmarks.des_speed --requests-old 1500  # more requests for the old code (slower)

Each version runs in a subprocess of its own with the same Python: the working tree imported as ``moesim`` (the
repository root, `pyproject.toml` maps it to ``moesim.*``); commit 466109d extracted with ``git archive`` into a
scratch folder and imported the way it was then laid out (top-level ``model``, ``sim``: its `pyproject.toml`'s
``packages.find``); and the last commit (``HEAD``, the code before the working tree's changes) extracted the same
way and imported as ``moesim``, so none sees another. All simulate the examples as they were at 466109d (the
scenarios the speed targets were measured on; the working tree's examples may have moved since) with the same seed.
The old code runs fewer requests (``--requests-old``); HEAD and the working tree also run that many, and the speed
ratios are per DES step (wall seconds / steps) on those runs of the same requests (a step's cost depends on its
batch, which grows as the queue builds up, so a longer run's steps cost more); their results can be compared
(equal within the DES's sampling noise: the working tree draws routing from banks and costs mixed steps from
tables). The wall time is the simulation's own (`SimResult.wall_s`: the event loop and the result tables), not
the scenario's build; the CPU time (``time.process_time`` of the worker, the build included) gives a second ratio
that other jobs on shared cores disturb less. Prints one table per example and, with ``--json``, one JSON object.

``--bank-ab`` (alone) compares the routing banks in one process instead: each example of the working tree run with
the banks of 91c4171 (`RoutingBank.LEGACY`: drawn in turn from one generator, first banks of up to 1,024 rows) and
with today's (each bank a function of its seed, pair count, generation and rows, first banks of at most 16,384
categories), each at two seeds, in alternating order: CPU seconds of each run (``time.process_time``, the build
included) and the key results, the seed-to-seed difference of one kind of bank being the sampling noise the other's
difference is to be judged against.

Units: seconds; simulated s per wall s is the run's makespan over its wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OLD_REV = "466109d"
EXAMPLES = ("mixtral-8x7b-ep8", "deepseek-v3-dp32-ep32")
#: Results compared side by side (summary keys of both versions).
KEYS = (
    "ttft_mean_s",
    "ttft_p90_s",
    "tpot_mean_s",
    "tpot_p90_s",
    "itl_mean_s",
    "itl_p90_s",
    "e2e_mean_s",
    "e2e_p90_s",
    "throughput_tok_s",
    "s_mbu",
    "s_mfu",
    "straggler_frac",
    "mean_batch",
    "steps",
    "simulated_s",
)

#: What a worker runs: one scenario (path, request count, seed) through the DES; prints one JSON line.
WORKER = r"""
import json, sys, time, yaml
path, requests, version = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if version == "old":
    import sim
    from sim.serve import run
    where = sim.__file__
else:
    import moesim
    from moesim.sim.serving.serve import run
    where = moesim.__file__
d = yaml.safe_load(open(path))
if requests > 0:
    d["workload"]["requests"] = requests
from pathlib import Path
t0, c0 = time.perf_counter(), time.process_time()
res = run(d, "des", base_dir=Path(path).parent)
total, cpu = time.perf_counter() - t0, time.process_time() - c0
s = res.summary
out = {k: s.get(k) for k in KEYS}
out.update(wall_s=s["wall_s"], total_wall_s=total, cpu_s=cpu, steps=int(len(res.steps)), module=where)
print(json.dumps(out))
"""


def _extract(rev: str, into: Path) -> Path:
    """``git archive rev`` unpacked into ``into`` (once)."""
    if not (into / "pyproject.toml").exists():
        into.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def _env(version: str, scratch: Path) -> tuple[dict[str, str], Path]:
    """(environment, the folder its code must come from) that make the worker import ``version``: ``new`` (the
    working tree), ``head`` (the last commit) or ``old`` (466109d)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if version == "old":
        tree = _extract(OLD_REV, scratch / "old466")
        env["PYTHONPATH"] = str(tree)
        return env, tree
    if version == "head":
        tree = _extract("HEAD", scratch / "head" / "moesim")
    else:
        tree = scratch / "new" / "moesim"
        tree.parent.mkdir(parents=True, exist_ok=True)
        if not tree.exists():
            tree.symlink_to(ROOT)
    env["PYTHONPATH"] = str(tree.parent)
    return env, tree


def scenario(name: str, scratch: Path) -> Path:
    """The example ``name`` as it was at 466109d."""
    return _extract(OLD_REV, scratch / "old466") / "examples" / f"{name}.yaml"


def run_one(path: Path, requests: int, version: str, scratch: Path) -> dict:
    """One DES run in a subprocess: the summary's `KEYS`, wall_s, total_wall_s, steps and the imported module."""
    env, tree = _env(version, scratch)
    code = f"KEYS = {KEYS!r}\n" + WORKER
    proc = subprocess.run(
        [sys.executable, "-c", code, str(path), str(requests), "old" if version == "old" else "new"],
        cwd=scratch,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"the {version} run of {path.name} failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if not Path(out["module"]).resolve().is_relative_to(tree.resolve()):
        raise RuntimeError(f"the {version} worker imported {out['module']}, not the code in {tree}")
    return out


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def bank_ab(requests: int = 0, seeds: tuple[int, int] = (0, 1), only: str | None = None) -> dict:
    """``--bank-ab`` (see the module docstring): per example, per bank kind and seed, the CPU seconds and `KEYS`;
    prints one markdown table per example."""
    import time

    import yaml

    from moesim.sim.serving.serve import run
    from moesim.sim.serving.steptime import RoutingBank

    report: dict[str, dict] = {}
    for name in EXAMPLES:
        if only and name != only:
            continue
        path = ROOT / "examples" / f"{name}.yaml"
        runs: dict[str, dict] = {}
        warm = yaml.safe_load(path.read_text())
        warm["workload"]["requests"] = 20
        run(warm, "des", base_dir=path.parent)  # imports and module-level tables, outside the timing
        # alternating: the first seed's legacy run first, the second's last
        pairs = ((True, False), (False, True))
        order = [(legacy, seed) for j, seed in enumerate(seeds) for legacy in pairs[j % 2]]
        for legacy, seed in order:
            d = yaml.safe_load(path.read_text())
            if requests:
                d["workload"]["requests"] = requests
            d["seed"] = seed
            RoutingBank.LEGACY = legacy
            try:
                c0 = time.process_time()
                res = run(d, "des", base_dir=path.parent)
                cpu = time.process_time() - c0
            finally:
                RoutingBank.LEGACY = False
            label = f"{'91c4171' if legacy else 'now'} seed {seed}"
            runs[label] = {k: res.summary.get(k) for k in KEYS} | {"cpu_s": cpu}
            print(f"{name}: {label} {cpu:.2f} CPU s", file=sys.stderr, flush=True)
        report[name] = runs
        labels = sorted(runs)
        print(f"\n## {name} (working tree example, {requests or 'all its'} requests)")
        print("| | " + " | ".join(labels) + " |")
        print("|---|" + "---|" * len(labels))
        for k in ("cpu_s", *KEYS):
            print(f"| {k} | " + " | ".join(_fmt(runs[lab].get(k)) for lab in labels) + " |")
    return report


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--requests", type=int, default=0, help="requests for the current code (0: the example's)")
    ap.add_argument(
        "--requests-old", type=int, default=0, help="requests for 466109d (0: 2000 for Mixtral, 400 for DeepSeek-V3)"
    )
    ap.add_argument("--only", choices=EXAMPLES, help="one example only")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--bank-ab", action="store_true", help="compare the routing banks of 91c4171 and now, one process")
    args = ap.parse_args(argv)
    if args.bank_ab:
        return bank_ab(args.requests, only=args.only)
    report: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="des_speed_") as tmp:
        scratch = Path(tmp)
        for name in EXAMPLES:
            if args.only and name != args.only:
                continue
            path = scenario(name, scratch)
            n_old = args.requests_old or (2000 if name.startswith("mixtral") else 400)
            runs = {}
            for label, version, n in (
                ("new", "new", args.requests),
                ("old", "old", n_old),
                ("head", "head", n_old),
                ("new_same", "new", n_old),
            ):
                print(f"{name}: {version} on {n or 'all the example'} requests ...", file=sys.stderr, flush=True)
                runs[label] = run_one(path, n, version, scratch)
            new, old, head, same = runs["new"], runs["old"], runs["head"], runs["new_same"]
            per = {k: v["wall_s"] / v["steps"] for k, v in runs.items()}
            # CPU seconds of the whole run (build included) per step: less sensitive to other jobs on shared cores
            per_cpu = {k: v["cpu_s"] / v["steps"] for k, v in runs.items()}
            entry = {
                "runs": runs,
                "ms_per_step": {k: v * 1e3 for k, v in per.items()},
                "sim_s_per_wall_s": {k: v["simulated_s"] / v["wall_s"] for k, v in runs.items()},
                # same requests: a step's cost depends on the batch, which grows as the queue builds up
                "speedup_per_step_vs_old": per["old"] / per["new_same"],
                "speedup_per_step_vs_head": per["head"] / per["new_same"],
                "cpu_speedup_per_step_vs_old": per_cpu["old"] / per_cpu["new_same"],
                "cpu_speedup_per_step_vs_head": per_cpu["head"] / per_cpu["new_same"],
            }
            report[name] = entry
            if not args.json:
                print(f"\n## {name} (the example as at {OLD_REV})")
                print(f"| | working tree | {OLD_REV} | HEAD (before) | working tree |")
                print("|---|---|---|---|---|")
                rows = [
                    ("requests", args.requests or "example", n_old, n_old, n_old),
                    ("wall s (simulation)", *(runs[k]["wall_s"] for k in ("new", "old", "head", "new_same"))),
                    ("ms per DES step", *(entry["ms_per_step"][k] for k in ("new", "old", "head", "new_same"))),
                    ("CPU s (whole run, with build)", *(runs[k]["cpu_s"] for k in ("new", "old", "head", "new_same"))),
                    ("simulated s per wall s",
                     *(entry["sim_s_per_wall_s"][k] for k in ("new", "old", "head", "new_same"))),
                ]  # fmt: skip
                rows += [(k, new.get(k), old.get(k), head.get(k), same.get(k)) for k in KEYS]
                for label, *vals in rows:
                    print(f"| {label} | " + " | ".join(_fmt(v) for v in vals) + " |")
                print(
                    f"\nspeed-up per DES step (same requests): {entry['speedup_per_step_vs_old']:.2f}x against "
                    f"{OLD_REV}, {entry['speedup_per_step_vs_head']:.2f}x against HEAD (wall); CPU: "
                    f"{entry['cpu_speedup_per_step_vs_old']:.2f}x, {entry['cpu_speedup_per_step_vs_head']:.2f}x"
                )
    if args.json:
        print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
