"""Verbs that design a network for a latency budget: `latency-table`, `adapt`, `search`."""
from __future__ import annotations

import json

from tqdm import tqdm

from ..core.errors import MobileNetsError
from ..deploy.export import resolve_model
from ..analysis.search.adapt import AdaptSettings, adapt
from ..analysis.search.evolve import SearchSettings, search
from ..analysis.search.engines import ENGINES
from ..analysis.search.latency import measure_table, save_table
from .common import add_model_options, count_or_fraction, model_kwargs


def add_commands(sub) -> None:
    p = sub.add_parser("latency-table", help="time every piece of a network on an engine (for adapt and search)")
    p.add_argument("--model", required=True, help="a model name or a .safetensors checkpoint")
    p.add_argument("--engine", required=True, choices=ENGINES)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--resolution", type=int, default=None, help="input size (default: the model's own)")
    p.add_argument("--step", type=int, default=8, help="widths are multiples of this")
    p.add_argument("--out", required=True, help="the table's .json file")
    add_model_options(p)
    p.set_defaults(func=_cmd_latency_table)

    p = sub.add_parser("adapt", help="NetAdapt: cut a trained model to a measured latency budget")
    p.add_argument("weights", nargs="?", help="the trained classifier's .safetensors")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--engine", default="onnxruntime", choices=ENGINES)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=1, help="the latency's batch size")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--target-latency-ratio", type=float, default=None)
    target.add_argument("--target-latency-ms", type=float, default=None)
    target.add_argument("--target-madds", type=float, default=None)
    p.add_argument("--table", default=None, help="a latency table from `latency-table` (default: measure one)")
    p.add_argument("--initial-reduction", type=float, default=AdaptSettings.initial_reduction,
                   help="first iteration's cut, as a share of the starting latency")
    p.add_argument("--reduction-decay", type=float, default=AdaptSettings.reduction_decay)
    p.add_argument("--short-steps", type=int, default=AdaptSettings.short_steps)
    p.add_argument("--final-steps", type=int, default=AdaptSettings.final_steps)
    p.add_argument("--batch-size", type=int, default=AdaptSettings.batch_size, help="fine-tuning batch")
    p.add_argument("--val-fraction", type=count_or_fraction, default=None,
                   help="the held-out split the model was trained with (default: the data's)")
    p.add_argument("--val-images", type=int, default=AdaptSettings.val_images,
                   help="val images that score each proposal")
    p.add_argument("--seed", type=int, default=0, help="the seed the model was trained with (it draws the val split)")
    p.add_argument("--finetune-seed", type=int, default=None,
                   help="the fine-tunes' batch order, for a second run of the same model (default: --seed)")
    p.add_argument("--out", required=True)
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.set_defaults(func=_cmd_adapt)

    p = sub.add_parser("search", help="platform-aware search over V3's stage choices for a latency target")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--engine", default="onnxruntime", choices=ENGINES)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=1, help="the latency's batch size")
    p.add_argument("--target-latency-ms", type=float, default=None)
    p.add_argument("--latency-weight", type=float, default=SearchSettings.latency_weight,
                   help="w in ACC × (LAT/TAR)^w (MnasNet -0.07, V3-Small -0.15)")
    p.add_argument("--population", type=int, default=SearchSettings.population)
    p.add_argument("--sample", type=int, default=SearchSettings.sample, help="tournament size")
    p.add_argument("--candidates", type=int, default=SearchSettings.candidates)
    p.add_argument("--proxy-steps", type=int, default=SearchSettings.proxy_steps,
                   help="training steps from scratch that score each candidate")
    p.add_argument("--batch-size", type=int, default=SearchSettings.batch_size)
    p.add_argument("--val-images", type=int, default=SearchSettings.val_images)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--resume", action="store_true", help="continue the search in --out")
    p.set_defaults(func=_cmd_search)


def _cmd_latency_table(args) -> int:
    if args.threads < 1 or args.batch < 1:
        raise MobileNetsError(f"--threads {args.threads} --batch {args.batch}: allowed: integers >= 1")
    model, _ = resolve_model(args.model, **model_kwargs(args))
    table = measure_table(model, args.engine, args.threads, args.batch, args.resolution, args.step,
                          progress=tqdm)
    save_table(table, args.out)
    print(f"{args.out}: {len(table['entries'])} pieces timed on {args.engine}; whole model measured "
          f"{table['correction']['fitted_on'][0]['measured_ms']:.3f} ms, sum of pieces "
          f"{table['correction']['fitted_on'][0]['sum_ms']:.3f} ms")
    return 0


def _cmd_adapt(args) -> int:
    if args.resume:
        report = adapt(args.weights or "", args.out, AdaptSettings(), args.table, resume=True, progress=tqdm)
    else:
        if not args.weights:
            raise MobileNetsError("adapt: give the trained model's weights file (or --resume)")
        settings = AdaptSettings(
            data=args.data, data_dir=args.data_dir, engine=args.engine, threads=args.threads, batch=args.batch,
            target_latency_ratio=args.target_latency_ratio, target_latency_ms=args.target_latency_ms,
            target_madds=int(args.target_madds) if args.target_madds else None,
            initial_reduction=args.initial_reduction, reduction_decay=args.reduction_decay,
            short_steps=args.short_steps, final_steps=args.final_steps, batch_size=args.batch_size,
            val_fraction=args.val_fraction,
            val_images=args.val_images, seed=args.seed, finetune_seed=args.finetune_seed)
        report = adapt(args.weights, args.out, settings, args.table, progress=tqdm)
    print(json.dumps({k: report[k] for k in ("weights", "measured_ms", "val_top1", "test_top1")}))
    return 0


def _cmd_search(args) -> int:
    if args.resume:
        report = search(args.out, SearchSettings(), resume=True, progress=tqdm)
    else:
        if args.target_latency_ms is None:
            raise MobileNetsError("search: give --target-latency-ms (measure the model you want to beat "
                                  "with `mobilenets bench` first)")
        settings = SearchSettings(
            data=args.data, data_dir=args.data_dir, engine=args.engine, threads=args.threads, batch=args.batch,
            target_latency_ms=args.target_latency_ms, latency_weight=args.latency_weight,
            population=args.population, sample=args.sample, candidates=args.candidates,
            proxy_steps=args.proxy_steps, batch_size=args.batch_size, val_images=args.val_images, seed=args.seed)
        report = search(args.out, settings, progress=tqdm)
    print(json.dumps(report["best"]))
    return 0
