"""Training memory with and without gradient checkpointing: the peak resident memory of one
process that builds a classifier and runs training steps at batch 64 (forward, backward, SGD),
once plain and once after `model.set_grad_checkpointing()`; each in a fresh process so that one
peak does not hide the other.

    python benchmarks/grad_checkpointing.py [--model mobilenet_v3_large] [--batch 64] [--resolution 224]

Writes benchmarks/results/grad_checkpointing_MODEL.json.
"""
import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def one_run(model_name: str, batch: int, resolution: int, checkpointing: bool, steps: int) -> dict:
    import torch

    import mobilenets
    torch.manual_seed(0)
    model = mobilenets.create_model(model_name).train()
    if checkpointing:
        model.set_grad_checkpointing()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, resolution, resolution)
    y = torch.randint(0, 1000, (batch,))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in KiB on Linux
    return {"grad_checkpointing": checkpointing, "peak_rss_mib": round(peak / 1024, 1),
            "rss_before_steps_mib": round(before / 1024, 1),
            "step_seconds": [round(t, 3) for t in times]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mobilenet_v3_large")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--child", choices=("plain", "checkpointed"), default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(one_run(args.model, args.batch, args.resolution, args.child == "checkpointed",
                                 args.steps)))
        return
    rows = []
    for mode in ("plain", "checkpointed"):
        out = subprocess.run([sys.executable, __file__, "--model", args.model, "--batch", str(args.batch),
                              "--resolution", str(args.resolution), "--steps", str(args.steps),
                              "--child", mode], check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    from mobilenets.core.machine import describe_machine
    result = {"model": args.model, "batch": args.batch, "resolution": args.resolution,
              "steps": args.steps, "rows": rows,
              "peak_rss_ratio": round(rows[1]["peak_rss_mib"] / rows[0]["peak_rss_mib"], 3),
              "machine": describe_machine(),
              "command": f"python benchmarks/grad_checkpointing.py --model {args.model} --batch "
                         f"{args.batch} --resolution {args.resolution} --steps {args.steps}"}
    path = ROOT / "benchmarks" / "results" / f"grad_checkpointing_{args.model}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1))


if __name__ == "__main__":
    main()
