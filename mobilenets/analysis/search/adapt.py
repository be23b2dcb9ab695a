"""NetAdapt (Yang et al., ECCV 2018): cut a trained network, one width position at a time,
down to a latency budget measured on the engine it will ship on.

Each iteration asks for a latency `reduction` below the current model (a share of the starting
latency that decays per iteration). For every width position (a shortcut group's width, a
block's expansion or squeeze-excite, the last conv, the head layer) it finds in the latency table
the largest width that alone meets that target, cuts the model there keeping the filters with the
largest L2 norm, fine-tunes it for a few steps and scores it on the held-out val split. The
proposal with the best val top-1 becomes the model; its latency is measured on the engine. When
the budget is met a long fine-tune follows, and the test split is scored once, at the end.

A latency budget is in measured milliseconds, not in the table's: the table prices the widths,
and its miss on the current model (measured less predicted, re-measured every iteration) is
added to every proposal's price, so a table that is off by a constant or by a slope still steers
the cuts, and the run stops when the engine, not the table, says the budget is met. Each model
is timed in turns with the start model and put on the scale of the start's first measurement,
so that a machine slower or faster than when the run began does not move the verdict.

Every proposal and iteration is written to the run directory as it ends, so a killed run
resumes at the next proposal and ends as the uninterrupted run would: each proposal's
fine-tune is seeded by (fine-tune seed, iteration, position) alone. Under torchrun the proposals of an
iteration are spread over the ranks, which then all read every result and make the same choice.
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ...core.errors import MobileNetsError
from ...core.figures import new_figure, save_figure
from ...core.io import atomic_write_text
from ...models.cut import cut_to_plan, width_positions
from ...models.mobilenet import load_model
from ...models.plan import plan_of, shortcut_groups
from ...models.specs import AttentionSpec, BlockSpec
from ...models.profile import profile
from ...models.weights import save_weights
from ...train import distributed
from .finetune import long_finetune, open_search_data, short_finetune, top1
from .latency import (check_table, load_table, madds_table, measure_models, measure_table, predict,
                      save_table)

STATE = "adapt_state.json"
# The stop rule reads one number per iteration: on a shared machine one `_time` fell in a slow
# spell as often as not (0.59-1.2 ms for one model), the lowest of five did not.
MEASURE_PASSES = 5


@dataclass
class AdaptSettings:
    data: str = "fashion-mnist"
    data_dir: str | None = None
    engine: str = "onnxruntime"
    threads: int = 1
    batch: int = 1                      # the latency's batch size
    target_latency_ratio: float | None = None
    target_latency_ms: float | None = None
    target_madds: int | None = None
    initial_reduction: float = 0.04     # of the starting latency; NetAdapt's paper: 0.025
    reduction_decay: float = 0.96       # per iteration, as NetAdapt's paper
    short_steps: int = 50
    final_steps: int = 2000
    lr: float = 0.01
    final_lr: float = 0.02
    batch_size: int = 128
    val_fraction: int | float | None = None   # the split the model was trained with
    val_images: int | None = 2000
    seed: int = 0                       # the one the model was trained with: it draws the val split
    finetune_seed: int | None = None    # the fine-tunes' batch order (default: seed)
    step: int = 8                       # widths are multiples of it
    max_iterations: int = 50


def _positions(arch) -> list[tuple[str, str, list]]:
    """(position, label, where in the plan) for every width a proposal may cut."""
    out = []
    for g, members in enumerate(shortcut_groups(arch)):
        slots = [("stem", None) if m == "stem" else ("out", m) for m in members]
        out.append((f"g{g}", f"group {g} ({', '.join('stem' if m == 'stem' else f'block {m}' for m in members)})", slots))
    where = width_positions(arch)
    for i, (_inp, exp, se, _out) in enumerate(where["blocks"]):
        if exp == f"e{i}":
            out.append((exp, f"block {i} expansion", [("expand", i)]))
        if isinstance(arch.blocks[i], BlockSpec) and arch.blocks[i].se_ch:
            out.append((se, f"block {i} squeeze-excite", [("se", i)]))
    if arch.last_conv_ch:
        out.append(("last", "last 1×1 conv", [("last_conv", None)]))
    if arch.head_ch:
        out.append(("head", "head layer", [("head", None)]))
    return out


def _get(plan: dict, slots) -> int:
    key, i = slots[0]
    return plan[key] if i is None else plan[key][i]


def _set(plan: dict, slots, width: int) -> dict:
    new = json.loads(json.dumps(plan))
    for key, i in slots:
        if i is None:
            new[key] = width
        else:
            new[key][i] = width
    return new


class Cost:
    """What the budget is in: the latency table's prediction (ms), or multiply-adds."""

    def __init__(self, table: dict | None, model: nn.Module, resolution: int):
        self.table, self.model, self.resolution = table, model, resolution
        attention = any(isinstance(b, AttentionSpec) for b in model.arch.blocks)
        self.madds = None if table is not None or attention else madds_table(model, resolution)

    def __call__(self, plan: dict) -> float:
        if self.table is not None:
            return predict(self.table, plan)
        if self.madds is not None:
            return round(predict(self.madds, plan, corrected=False) * 1e6)
        from ...models.mobilenet import create_model
        with torch.device("meta"):
            m = create_model(self.model.model_name, **{**self.model.model_kwargs, "channel_plan": plan})
        return float(profile(m, self.resolution)["madds"])


def iteration_target(now: float, reduction: float, budget: float, widths_for, halvings: int = 6):
    """(target, widths) of one iteration: `now` less `reduction`, never below `budget`. A cut no
    single position can make alone is halved until one can (NetAdapt's 2.5% first cut is always
    reachable; the larger cuts that fit a CPU's time may not be), the capped last cut included.
    `widths_for(target)` gives each position's largest width that meets it (None: none does)."""
    cut = min(reduction, now - budget)
    for _ in range(halvings):
        widths = widths_for(now - cut)
        if any(w is not None for w in widths):
            break
        cut /= 2
    return now - cut, widths


def largest_width(plan: dict, slots, target: float, cost: Cost, step: int) -> int | None:
    """The largest multiple of `step` below the current width whose plan costs at most
    `target`; None when even `step` channels do not."""
    current = _get(plan, slots)
    w = (current - 1) // step * step
    while w >= step:
        if cost(_set(plan, slots, w)) <= target:
            return w
        w -= step
    return None


def adapt(weights: str, out: str | Path, settings: AdaptSettings, table_path: str | None = None,
          resume: bool = False, progress=None, log=print) -> dict:
    """Run NetAdapt on a trained classifier's weights file; returns the report (also written
    to `out`/report.json)."""
    out = Path(out)
    ctx = distributed.setup("cpu")
    state_path = out / STATE
    if resume:
        if not state_path.exists():
            raise MobileNetsError(f"{out}: no {STATE} to resume from; start without --resume")
        state = json.loads(state_path.read_text())
        settings = AdaptSettings(**state["settings"])
        weights = state["weights"]
    elif state_path.exists():
        raise MobileNetsError(f"{out}: holds an adapt run already; --resume it or choose another --out")
    _check_targets(settings)
    start, _meta = load_model(weights)
    start.eval()
    resolution = start.pretrained_cfg.get("resolution", 224)
    train_split, scoring, val, test, classes = open_search_data(
        settings.data, start, settings.data_dir, settings.val_fraction, settings.seed, settings.val_images)
    table = _table(start, settings, out, table_path, resume, ctx, progress, log) if settings.target_madds is None else None
    cost = Cost(table, start, resolution)
    if not resume:
        out.mkdir(parents=True, exist_ok=True)
        if ctx.main:
            start_cost = cost(plan_of(start.arch))
            measured = _measure(start, settings, resolution)
            state = {"settings": asdict(settings), "weights": str(weights), "iteration": 0, "done": False,
                     "start": {"cost": start_cost, "measured_ms": measured,
                               "val_top1": top1(start, scoring, len(classes))},
                     "current": str(out / "start.safetensors"), "current_measured_ms": measured}
            state["target"] = _final_target(settings, state["start"])
            now, floor = _budget_terms(state["start"]), _floor(start, settings, cost, resolution)
            unit = "measured latency (ms)" if table else "multiply-adds"
            if state["target"] >= now:
                raise MobileNetsError(f"target {state['target']:.4g} is not below the model's current "
                                      f"{unit} {now:.4g}")
            if state["target"] < floor:
                raise MobileNetsError(f"target {state['target']:.4g} is below anything reachable: the narrowest "
                                      f"plan ({settings.step} channels everywhere) has {unit} {floor:.4g}")
            state["floor"] = floor
            _save(start, out / "start.safetensors", classes)
            atomic_write_text(state_path, json.dumps(state, indent=1))
            log(f"start: {_describe(state['start'], table)}; target {state['target']:.4g}")
        distributed.barrier(ctx)
        state = json.loads(state_path.read_text())
    while not state["done"]:
        state = _iteration(state, out, settings, cost, train_split, scoring, classes, resolution, ctx,
                           progress, log)
    report_path = out / "report.json"
    if ctx.main and not report_path.exists():
        _finish(state, out, settings, train_split, val, test, classes, resolution, table, progress, log)
    distributed.barrier(ctx)
    return json.loads(report_path.read_text())


def _check_targets(s: AdaptSettings) -> None:
    given = [k for k in ("target_latency_ratio", "target_latency_ms", "target_madds") if getattr(s, k) is not None]
    if len(given) != 1:
        raise MobileNetsError("give exactly one of --target-latency-ratio, --target-latency-ms, --target-madds")
    if s.target_latency_ratio is not None and not 0 < s.target_latency_ratio < 1:
        raise MobileNetsError(f"--target-latency-ratio {s.target_latency_ratio}: allowed: 0 < ratio < 1")
    for key in ("target_latency_ms", "target_madds"):
        if getattr(s, key) is not None and not getattr(s, key) > 0:
            raise MobileNetsError(f"--{key.replace('_', '-')} {getattr(s, key)}: allowed: > 0")
    if not 0 < s.initial_reduction < 1 or not 0 < s.reduction_decay <= 1:
        raise MobileNetsError("initial reduction must be in (0, 1) and its decay in (0, 1]")


def _final_target(s: AdaptSettings, start: dict) -> float:
    if s.target_latency_ratio is not None:
        return s.target_latency_ratio * _budget_terms(start)
    return float(s.target_latency_ms if s.target_latency_ms is not None else s.target_madds)


def _finetune_seed(s: AdaptSettings) -> int:
    return s.seed if s.finetune_seed is None else s.finetune_seed


def _budget_terms(entry: dict) -> float:
    """A model's size in the budget's unit: measured ms for a latency budget, else multiply-adds."""
    measured = entry["measured_ms"]
    return entry["cost"] if measured != measured else measured   # NaN: a multiply-add budget


def _floor(model, s: AdaptSettings, cost, resolution: int) -> float:
    """The narrowest plan's size in the budget's unit: every width position at `step` channels."""
    plan = plan_of(model.arch)
    for _pos, _label, slots in _positions(model.arch):
        plan = _set(plan, slots, s.step)
    if s.target_madds is not None:
        return cost(plan)
    from ...models.mobilenet import create_model
    narrow = create_model(model.model_name, **{**model.model_kwargs, "channel_plan": plan}).eval()
    return _measure(narrow, s, resolution)


def _table(model, s: AdaptSettings, out: Path, table_path, resume, ctx, progress, log) -> dict:
    path = Path(table_path) if table_path else out / "latency_table.json"
    if not path.exists():
        if table_path:
            raise MobileNetsError(f"{path}: no such latency table")
        if ctx.main:
            log(f"measuring a latency table on {s.engine} ({s.threads} thread(s), batch {s.batch})")
            out.mkdir(parents=True, exist_ok=True)
            save_table(measure_table(model, s.engine, s.threads, s.batch, progress=progress, log=log), path)
        distributed.barrier(ctx)
    table = load_table(path)
    check_table(table, path, s.engine, s.threads, s.batch, model)
    return table


def _measure(model, s: AdaptSettings, resolution: int) -> float:
    if s.target_madds is not None:
        return float("nan")
    with tempfile.TemporaryDirectory(prefix="mobilenets-adapt-") as tmp:
        return measure_models([model], s.engine, s.threads, s.batch, resolution, Path(tmp),
                              passes=MEASURE_PASSES)[0]


def _measure_beside_start(model, state: dict, out: Path, s: AdaptSettings, resolution: int) -> dict:
    """`model`'s latency timed in turns with the start model's, on the scale of the start's first
    measurement: {"measured_ms" (that scale), "raw_ms", "start_now_ms"}. A machine that runs slower
    or faster than when the run began moves both alike, and not the budget's verdict."""
    if s.target_madds is not None:
        nan = float("nan")
        return {"measured_ms": nan, "raw_ms": nan, "start_now_ms": nan}
    start, _ = load_model(out / "start.safetensors")
    with tempfile.TemporaryDirectory(prefix="mobilenets-adapt-") as tmp:
        raw, start_now = measure_models([model.eval(), start.eval()], s.engine, s.threads, s.batch, resolution,
                                        Path(tmp), passes=MEASURE_PASSES)
    return {"measured_ms": state["start"]["measured_ms"] * raw / start_now, "raw_ms": raw, "start_now_ms": start_now}


def _describe(entry: dict, table) -> str:
    what = f"predicted {entry['cost']:.4g} ms" if table else f"{entry['cost']:.4g} MAdds"
    return f"{what}, measured {entry['measured_ms']:.4g} ms, val top-1 {entry['val_top1']:.4f}"


def _save(model, path: Path, classes) -> None:
    save_weights(path, model, {"classes": classes, "preprocessing": _preprocessing(model)})


def _preprocessing(model) -> dict:
    cfg = model.pretrained_cfg
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()
            if k in ("resolution", "resize", "mean", "std", "in_chans", "interpolation")}


def _iteration(state, out: Path, s: AdaptSettings, cost: Cost, train_split, scoring, classes,
               resolution, ctx, progress, log) -> dict:
    k = state["iteration"]
    current, _ = load_model(state["current"])
    current.eval()
    plan = plan_of(current.arch)
    if s.target_madds is None:   # the table's miss on the current model, added to every price
        now = state.get("current_measured_ms", state["start"]["measured_ms"])
        miss = now - cost(plan)
    else:
        now, miss = cost(plan), 0.0
    price = (lambda p: cost(p) + miss) if miss else cost
    reduction = s.initial_reduction * _budget_terms(state["start"]) * s.reduction_decay ** k
    positions = _positions(current.arch)
    def widths_for(target):
        return [largest_width(plan, slots, target, price, s.step) for _pos, _label, slots in positions]
    target, widths = iteration_target(now, reduction, state["target"], widths_for)
    pdir = out / "proposals" / f"{k:03d}"
    pdir.mkdir(parents=True, exist_ok=True)
    mine = [(j, p) for j, p in enumerate(positions) if j % ctx.world == ctx.rank]
    bar = progress(total=len(mine), desc=f"iteration {k + 1}: proposals") if progress else None
    for j, (pos, label, slots) in mine:
        result_path = pdir / f"{j:03d}.json"
        if not result_path.exists():
            width = widths[j]
            result = {"position": pos, "label": label, "from": _get(plan, slots), "width": width}
            if width is not None:
                proposal = _set(plan, slots, width)
                model = cut_to_plan(current, proposal)
                short_finetune(model, train_split, s.short_steps, s.batch_size, s.lr, _finetune_seed(s), epoch=k)
                result.update(cost=price(proposal), val_top1=top1(model, scoring, len(classes)),
                              plan=proposal)
                _save(model, pdir / f"{j:03d}.safetensors", classes)
            atomic_write_text(result_path, json.dumps(result))
        if bar:
            bar.update(1)
    if bar:
        bar.close()
    distributed.barrier(ctx)
    results = [json.loads((pdir / f"{j:03d}.json").read_text()) for j in range(len(positions))]
    scored = [(j, r) for j, r in enumerate(results) if r["width"] is not None]
    if not scored:
        raise MobileNetsError(f"iteration {k + 1}: no width position can reach {target:.4g} alone; "
                              f"the budget {state['target']:.4g} is below what this network can reach")
    # Best val top-1; among equals the cheaper proposal.
    j, best = max(scored, key=lambda jr: (jr[1]["val_top1"], -jr[1]["cost"]))
    if ctx.main:
        chosen, _ = load_model(pdir / f"{j:03d}.safetensors")
        timing = _measure_beside_start(chosen, state, out, s, resolution)
        measured = timing["measured_ms"]
        record = {"iteration": k + 1, "target": target, "chosen": best["position"], "label": best["label"],
                  "width": [best["from"], best["width"]], "cost": best["cost"], "table_miss": miss,
                  "measured_ms": measured, "measured_raw_ms": timing["raw_ms"],
                  "start_measured_now_ms": timing["start_now_ms"],
                  "val_top1": best["val_top1"],
                  "proposals": [{key: r.get(key) for key in ("position", "label", "from", "width", "cost", "val_top1")}
                                for r in results]}
        history = out / "history.jsonl"
        lines = history.read_text().splitlines() if history.exists() else []
        lines = [ln for ln in lines if json.loads(ln)["iteration"] <= k] + [json.dumps(record)]
        atomic_write_text(history, "\n".join(lines) + "\n")
        size = best["cost"] if s.target_madds is not None else measured
        state = {**state, "iteration": k + 1, "current": str(pdir / f"{j:03d}.safetensors"),
                 "current_measured_ms": measured,
                 "done": size <= state["target"] * (1 + 1e-9) or k + 1 >= s.max_iterations}
        atomic_write_text(out / STATE, json.dumps(state, indent=1))
        log(f"iteration {k + 1}: {best['label']} {best['from']} → {best['width']}: cost {best['cost']:.4g}, "
            f"measured {measured:.4g} ms, val top-1 {best['val_top1']:.4f}")
    distributed.barrier(ctx)
    return json.loads((out / STATE).read_text())


def _finish(state, out: Path, s: AdaptSettings, train_split, val, test, classes, resolution, table,
            progress, log) -> None:
    model, _ = load_model(state["current"])
    adapted_val = top1(model, val, len(classes))
    long_finetune(model, train_split, s.final_steps, s.batch_size, s.final_lr, _finetune_seed(s),
                  progress=progress)
    final = out / "adapted.safetensors"
    _save(model, final, classes)
    model, _ = load_model(final)
    timing = _measure_beside_start(model, state, out, s, resolution)
    report = {"weights": str(final), "start": state["start"], "target": state["target"],
              "iterations": state["iteration"], "plan": plan_of(model.arch),
              "cost": Cost(table, model, resolution)(plan_of(model.arch)),
              "measured_ms": timing["measured_ms"], "measured_raw_ms": timing["raw_ms"],
              "start_measured_now_ms": timing["start_now_ms"],
              "val_top1_before_final_finetune": adapted_val,
              "val_top1": top1(model, val, len(classes)), "val_images": len(val),
              "test_top1": top1(model, test, len(classes)) if test is not None else None,
              "test_images": len(test) if test is not None else 0,
              "madds": profile(model, resolution)["madds"], "settings": asdict(s)}
    atomic_write_text(out / "report.json", json.dumps(report, indent=1))
    plot_history(out)
    log(f"adapted: measured {report['measured_ms']:.4g} ms (start {state['start']['measured_ms']:.4g}), "
        f"val top-1 {report['val_top1']:.4f}, test top-1 {report['test_top1']}; {final}")


def plot_history(out: Path, references: list[dict] | None = None) -> Path:
    """Val top-1 against measured latency: the start, each iteration, the final model, and
    `references` ({"label", "measured_ms", "val_top1"}: e.g. α-scaled models)."""
    state = json.loads((out / STATE).read_text())
    rows = [json.loads(ln) for ln in (out / "history.jsonl").read_text().splitlines()]
    fig = new_figure((6, 4))
    ax = fig.subplots()
    xs = [state["start"]["measured_ms"]] + [r["measured_ms"] for r in rows]
    ys = [state["start"]["val_top1"]] + [r["val_top1"] for r in rows]
    ax.plot(xs, ys, "o-", label="NetAdapt iterations (short fine-tune)")
    report = out / "report.json"
    if report.exists():
        r = json.loads(report.read_text())
        ax.plot([r["measured_ms"]], [r["val_top1"]], "*", ms=12, label="adapted, final fine-tune")
    for ref in references or []:
        ax.plot([ref["measured_ms"]], [ref["val_top1"]], "s", label=ref["label"])
    ax.set_xlabel("measured latency (ms)"), ax.set_ylabel("val top-1")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "adapt.png"
    save_figure(fig, path, dpi=100)
    return path
