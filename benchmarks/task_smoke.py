"""Does a detection / segmentation task learn? A fixed number of AdamW steps of the task's own
loss on a small scene set, then its evaluation; prints the loss every 10 steps.

A check of the task pieces (data, augmentation, loss, evaluation), not a trainer: real runs go
through `mobilenets train --task ...`.

    python benchmarks/task_smoke.py detection ssdlite_mobilenet_v2 --steps 100
    python benchmarks/task_smoke.py segmentation deeplabv3_mobilenet_v2 --steps 100
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mobilenets import create_model  # noqa: E402
from mobilenets.core.runtime import tune_allocator  # noqa: E402
from mobilenets.datasets.scenes import write_scenes  # noqa: E402
from mobilenets.train.tasks import build_task  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("task", choices=("detection", "segmentation"))
    p.add_argument("model")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--train", type=int, default=64, help="training scenes")
    p.add_argument("--val", type=int, default=16)
    p.add_argument("--size", type=int, default=64, help="scene and input size")
    p.add_argument("--width-mult", type=float, default=0.35)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (1 is best on a shared CPU)")
    args = p.parse_args()
    tune_allocator()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        write_scenes(tmp, args.train, args.val, size=args.size, progress=False)
        model = create_model(args.model, num_classes=11, width_mult=args.width_mult)
        cfg = model.pretrained_cfg
        data = Path(tmp) / ("coco" if args.task == "detection" else "voc")
        task = build_task(args.task, str(data), args.size, cfg["mean"], cfg["std"])
        loader = DataLoader(task.train_set, batch_size=args.batch_size, shuffle=True,
                            collate_fn=task.collate, drop_last=True)
        opt = torch.optim.AdamW(model.parameters(), args.lr)
        losses, step, start = [], 0, time.perf_counter()
        model.train()
        while step < args.steps:
            for batch in loader:
                loss, _ = task.loss(model, batch)
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(loss.item())
                step += 1
                if step % 10 == 0:
                    print(f"step {step:4d}  loss {sum(losses[-10:]) / 10:.3f}  "
                          f"{time.perf_counter() - start:.0f}s", flush=True)
                if step == args.steps:
                    break
        metrics = task.evaluate(model, DataLoader(task.val_set, batch_size=args.batch_size,
                                                  collate_fn=task.collate))
    print(json.dumps({"first10_loss": sum(losses[:10]) / 10, "last10_loss": sum(losses[-10:]) / 10,
                      "metric": metrics["metric"], "seconds": time.perf_counter() - start}))


if __name__ == "__main__":
    main()
