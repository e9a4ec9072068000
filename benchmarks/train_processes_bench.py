"""A job's training stage in one process with every core's thread against one one-thread process per core
(data-parallel, ``worker/stages/train_ranks.py``), side by side on the same data, model and configuration.

The data is the demo's benign job (``cli.demo.benign_rows``), trained the way the demo's job is (its
OpenAI hyperparameters resolved for its size, ``DEMO_EPOCHS`` unless ``--epochs``), on the embedded aligned
base (``tunegate models prepare --aligned`` first). Alternates the two ``--repeats`` times, fresh output
directories each, and prints each one's wall time, the best of each, their ratio, the final training losses
and the largest difference between the two adapters' weights.

    python benchmarks/train_processes_bench.py [--model smollm2-135m-aligned] [--epochs 1] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from machine import print_machine


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-aligned")
    ap.add_argument("--epochs", type=int, default=0, help="0: the demo's")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    print_machine()
    import torch
    from safetensors.torch import load_file

    from cli.demo import DEMO_EPOCHS, benign_rows
    from tunegate.conversation import parse_example
    from tunegate.cpus import available_cpus
    from tunegate.settings import get_settings
    from worker.ml.stage_io import StageIO
    from worker.stages import train

    settings = get_settings()
    cores = available_cpus()
    examples = [parse_example(row, i + 1) for i, row in enumerate(benign_rows())]
    epochs = args.epochs or DEMO_EPOCHS
    cfg = train.config_from_openai(
        args.model, {"n_epochs": epochs}, len(examples), precision=settings.precision
    )
    arms = {"one process": (1, cores), "data-parallel": (cores, cores)}
    times: dict[str, list[float]] = {a: [] for a in arms}
    last: dict[str, train.TrainResult] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for arm, (processes, threads) in arms.items():
                torch.set_num_threads(threads)
                one = settings.model_copy(update={"torch_threads": threads})
                t0 = time.perf_counter()
                stamps: list[float] = []

                def stamp(
                    fraction: float, message: str, metrics: object, stamps: list[float] = stamps
                ) -> None:
                    stamps.append(time.perf_counter())

                io = StageIO(Path(tmp) / f"{arm}-{rep}", stage="train", progress=stamp)
                last[arm] = train.run(cfg, train.TrainInputs(examples, io, one, processes=processes))
                times[arm].append(time.perf_counter() - t0)
                steady = (stamps[-1] - stamps[0]) / max(1, len(stamps) - 1)
                print(
                    f"{arm} ({processes} x {threads // processes} threads): {times[arm][-1]:.1f} s, "
                    f"first step after {stamps[0] - t0:.1f} s, then {steady:.2f} s a step",
                    flush=True,
                )
        weights = {
            a: load_file(str(Path(r.adapter_dir) / "adapter_model.safetensors")) for a, r in last.items()
        }
        a, b = weights.values()
        diff = max(float((a[k] - b[k]).abs().max()) for k in a)
        scale = max(float(a[k].abs().max()) for k in a)
    best = {a: min(t) for a, t in times.items()}
    out = {
        "examples": len(examples),
        "epochs": epochs,
        "steps": last["one process"].steps,
        "best_s": best,
        "ratio": best["data-parallel"] / best["one process"],
        "train_loss": {a: r.metrics.get("train_loss") for a, r in last.items()},
        "adapter_max_abs_diff": diff,
        "adapter_max_abs": scale,
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
