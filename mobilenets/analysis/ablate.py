"""The MobileNetV2 / V3 ablations retrained on Fashion-MNIST, several seeds each.

- projection: linear vs ReLU6 after the 1×1 projection (V2 Fig. 6a);
- shortcut: between bottlenecks vs between expansions vs none (V2 Fig. 6b);
- expansion: t ∈ {1, 2, 4, 6} (V2 §3.3–4 uses 6);
- family: V1 vs V2 vs V3-Small at matched multiply-adds (V2 Table 4, V3 Table 3).

Every arm is a model family plus create_model options (e.g. proj_act="relu6"), trained by the
trainer (`mobilenets.train.train`) on the `fashion-mnist` recipe with the same schedule, so each
run's best.safetensors reloads in any process (`mobilenets.weights.load_model`, `mobilenets
eval`). A configuration shared by several ablations (the published V2 is the linear,
bottleneck-shortcut, t = 6 arm) is trained once per seed. Each finished run is appended to
`results.jsonl` in the output directory, so an interrupted ablation continues where it
stopped. The summary (mean ± std of test top-1), a bar chart and the verdict
on each of the papers' orderings go to docs/ablations.md.
"""
from __future__ import annotations

import functools
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import MobileNetsError
from ..train import loop as trainer
from ..train.recipes import DEFAULTS, load_recipe
from ..models.mobilenet import create_model
from ..models.profile import profile
from ..models.weights import load_weights, write_weights
from ..core.figures import new_figure, save_figure
from ..core.io import atomic_write_text

# The ablated V2. Its α is 0.5, not the fashion-mnist recipe's 0.35; only the recipe's optimiser
# and augmentation are shared.
BASE = {"family": "mobilenet_v2", "width_mult": 0.5}
RESOLUTION = 28
TASK_KWARGS = {"small_input": True, "in_chans": 1, "num_classes": 10}


@dataclass(frozen=True)
class Arm:
    label: str
    options: dict = field(default_factory=dict)   # create_model options beyond BASE
    family: str = BASE["family"]


@dataclass(frozen=True)
class Ablation:
    name: str
    title: str
    arms: tuple[Arm, ...]
    claim: str
    better: tuple[tuple[str, str], ...]   # (label that should win, label it should beat)
    claim_source: str = "the paper"       # whose expectation `better` encodes


ABLATIONS = (
    Ablation("projection", "Bottleneck projection: linear vs ReLU6 (V2 Fig. 6a)",
             (Arm("linear"), Arm("ReLU6", {"proj_act": "relu6"})),
             "the linear bottleneck beats ReLU6", (("linear", "ReLU6"),)),
    # Fig. 6b names its arms only; "expansion" (the shortcut joins the expanded tensors, around
    # the depthwise conv) is one reading of its shortcut between expansions.
    Ablation("shortcut", "Shortcut placement (V2 Fig. 6b; 'expansion' is our reading of its shortcut between expanded layers)",
             (Arm("bottleneck"), Arm("expansion", {"shortcut": "expansion"}),
              Arm("none", {"shortcut": "none"})),
             "a shortcut between bottlenecks beats one between expansions and none",
             (("bottleneck", "expansion"), ("bottleneck", "none"))),
    Ablation("expansion", "Expansion ratio t",
             (Arm("t=1", {"expand_ratio": 1}), Arm("t=2", {"expand_ratio": 2}),
              Arm("t=4", {"expand_ratio": 4}), Arm("t=6")),
             "accuracy rises with t from 1 to 6. V2 uses t = 6 and reports only that t = 5 to 10 "
             "give nearly identical performance curves (§3.4); it has no arm below 5",
             (("t=2", "t=1"), ("t=4", "t=2"), ("t=6", "t=4")),
             claim_source="our expectation, not the paper's"),
    Ablation("family", "V1 vs V2 vs V3-Small at matched multiply-adds",
             (Arm("V1", family="mobilenet_v1"), Arm("V2"), Arm("V3-Small", family="mobilenet_v3_small")),
             "at equal cost V3-Small beats V2 and V2 beats V1", (("V3-Small", "V2"), ("V2", "V1"))),
)


@dataclass(frozen=True)
class Schedule:
    """How long each arm trains: epochs over (a subset of) the training set.

    The default, one epoch of all 60,000 images for each of the 9 configurations × 3 seeds, is
    1.62 M training images. On the project's 2-core machine (2 threads, otherwise idle) it took
    38 min: about 100 s per run for the α 0.5 V2 arms, V1 and V3-Small (~600 img/s), 30 / 47 /
    75 s for t = 1 / 2 / 4. The one test-set evaluation per run is ~3 % of that (a batch of 128
    costs 0.06 s to evaluate against 0.40 s to train, on one thread).
    """
    epochs: int = 1
    batch_size: int = 128
    limit_train: int = 0    # 0 = all 60,000 images
    limit_test: int = 0     # 0 = all 10,000 test images

    def tag(self) -> str:
        """A directory name per schedule, so runs of another schedule are never resumed."""
        return (f"e{self.epochs}-b{self.batch_size}-train{self.limit_train or 'all'}"
                f"-test{self.limit_test or 'all'}")

    def check(self) -> "Schedule":
        for key, low in (("epochs", 1), ("batch_size", 1), ("limit_train", 0), ("limit_test", 0)):
            v = getattr(self, key)
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise MobileNetsError(f"{key}={v!r} is out of range; allowed: integer >= {low}")
        if self.limit_train and self.limit_train < self.batch_size:
            raise MobileNetsError(f"limit_train={self.limit_train} is smaller than one batch "
                                  f"({self.batch_size}); allowed: >= batch_size or 0 (all)")
        return self


@functools.lru_cache(maxsize=None)   # the width search asks for the same widths repeatedly
def _madds(family: str, width: float) -> int:
    return profile(create_model(family, width_mult=width, **TASK_KWARGS), RESOLUTION)["madds"]


def match_width(family: str, target_madds: int, step: float = 0.01) -> float:
    """The width (a multiple of `step`) whose MAdds at the ablation's input are closest to
    `target_madds`; MAdds grow with width, so a bisection over the multiples finds it."""
    lo, hi = 1, int(round(4.0 / step))
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _madds(family, mid * step) < target_madds:
            lo = mid
        else:
            hi = mid
    return min((round(k * step, 4) for k in (lo, hi)), key=lambda w: abs(_madds(family, w) - target_madds))


def arm_configs(ablations=ABLATIONS) -> dict[str, dict]:
    """Unique trained configurations: key → {"family", "width_mult", "options"}.

    Arms of other families get the width that matches the base model's multiply-adds.
    """
    target = _madds(BASE["family"], BASE["width_mult"])
    widths = {BASE["family"]: BASE["width_mult"]}
    configs = {}
    for ab in ablations:
        for arm in ab.arms:
            if arm.family not in widths:
                widths[arm.family] = match_width(arm.family, target)
            key = config_key(arm)
            configs[key] = {"family": arm.family, "width_mult": widths[arm.family],
                            "options": dict(arm.options)}
    return configs


def config_key(arm: Arm) -> str:
    opts = "-".join(f"{k}={v}" for k, v in sorted(arm.options.items()))
    return arm.family + (f"-{opts}" if opts else "")


def train_arm(key: str, config: dict, seed: int, schedule: Schedule, run_dir: Path,
              data_dir: str | None = None, progress: bool = False) -> dict:
    """Train one configuration with one seed; returns its record for results.jsonl."""
    # The family's own name plus options, not a variant registered here: best.safetensors then
    # names "mobilenet_v2" and {"proj_act": "relu6", ...} and loads in any process.
    cfg = {**DEFAULTS, **load_recipe("fashion-mnist"), "recipe": "fashion-mnist",
           "model": config["family"], "model_options": dict(config["options"]),
           "width_mult": config["width_mult"], "small_input": True, "in_chans": 1,
           "resolution": RESOLUTION, "data": "fashion-mnist", "data_dir": data_dir, "seed": seed,
           "epochs": schedule.epochs, "batch_size": schedule.batch_size,
           "limit_train": schedule.limit_train, "limit_test": schedule.limit_test,
           "val_fraction": 0}   # every image trains; the final model is scored on the test set
    resume = str(run_dir) if (run_dir / "last.pt").exists() else None
    report = trainer.train(cfg, run_dir, resume=resume, progress=progress)
    if report.get("interrupted"):
        raise KeyboardInterrupt
    return {"key": key, "seed": seed, "schedule": schedule.__dict__, "top1": report["top1"],
            "madds": report["madds"], "params": report["params"], "width_mult": config["width_mult"],
            "train_seconds": report["train_seconds"]}


def upgrade_weights(path: Path, config: dict) -> bool:
    """Rewrite a run's best.safetensors from before arms were a family plus options: those name
    a variant registered only in the training process ("ablation:<key>") and lack its options.
    Returns whether the file was rewritten."""
    if not path.is_file():
        return False
    state, meta = load_weights(path)
    if not str(meta.get("model", "")).startswith("ablation:"):
        return False
    meta["model"] = config["family"]
    meta["model_kwargs"] = {**config["options"], **meta.get("model_kwargs", {})}
    write_weights(path, state, meta)
    return True


def _read_results(path: Path, schedule: Schedule) -> dict[tuple[str, int], dict]:
    done = {}
    if not path.exists():
        return done
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            key = (rec["key"], rec["seed"])
        except (json.JSONDecodeError, KeyError, TypeError):
            raise MobileNetsError(f"{path}:{n}: not a results record; move the file away to start over") from None
        if rec.get("schedule") == schedule.__dict__:
            done[key] = rec
    return done


def run_ablations(out: str | Path, seeds: int = 3, schedule: Schedule = Schedule(),
                  only=None, data_dir: str | None = None, progress: bool = True,
                  train_fn=train_arm) -> dict:
    """Train every arm of the chosen ablations for seeds 0..seeds-1; returns the summary.

    `train_fn(key, config, seed, schedule, run_dir, data_dir, progress) -> record` is the
    trainer call (replaceable, e.g. to reuse results from elsewhere).
    """
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise MobileNetsError(f"seeds={seeds!r} is out of range; allowed: integer >= 1")
    schedule = schedule.check()
    names = [a.name for a in ABLATIONS]
    chosen = list(only) if only else names
    unknown = [n for n in chosen if n not in names]
    if unknown:
        raise MobileNetsError(f"unknown ablation {unknown[0]!r}; known: {', '.join(names)}")
    if not chosen:
        raise MobileNetsError(f"no ablation chosen; known: {', '.join(names)}")
    ablations = [a for a in ABLATIONS if a.name in chosen]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.jsonl"
    done = _read_results(results_path, schedule)
    configs = arm_configs(ablations)
    runs = out / "runs" / schedule.tag()
    upgraded = sum(upgrade_weights(runs / f"{key}-seed{seed}" / "best.safetensors", configs[key])
                   for key, seed in done if key in configs)
    if upgraded and progress:
        print(f"rewrote the metadata of {upgraded} earlier weights file(s) to name the model family "
              "and its options", file=sys.stderr)
    todo = [(k, s) for s in range(seeds) for k in configs if (k, s) not in done]
    started = time.perf_counter()
    for i, (key, seed) in enumerate(todo, 1):
        if progress:
            eta = ""
            if i > 1:
                left = (time.perf_counter() - started) / (i - 1) * (len(todo) - i + 1)
                eta = f", about {left / 60:.0f} min left"
            print(f"[{i}/{len(todo)}] {key} (α={configs[key]['width_mult']:g}) seed {seed}{eta}",
                  file=sys.stderr, flush=True)
        rec = train_fn(key, configs[key], seed, schedule, runs / f"{key}-seed{seed}", data_dir, progress)
        with open(results_path, "a") as f:   # one line per finished run: appends stay whole
            f.write(json.dumps(rec) + "\n")
        done[(key, seed)] = rec
    return {**summarize(ablations, configs, done, seeds, schedule), "out": str(out)}


def clearly_apart(gap: float, std_a: float | None, std_b: float | None) -> bool:
    """The ablations' "clearly": the gap between two arms' means exceeds one standard deviation
    of the seeds' results of each arm (3 seeds by default). A rule of thumb, not a test."""
    return std_a is not None and std_b is not None and abs(gap) > max(std_a, std_b)


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation; no deviation from a single run (None, valid JSON)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def summarize(ablations, configs, done, seeds: int, schedule: Schedule) -> dict:
    """Mean ± std of test top-1 per arm and whether each paper ordering held.

    An ordering "held" when every claimed winner has the higher mean; it is "clear" when, in
    addition, each gap exceeds the larger of the two standard deviations.
    """
    out = {"seeds": seeds, "schedule": schedule.__dict__, "ablations": []}
    used = {}   # (key, seed) → record: a configuration shared by ablations is one run
    for ab in ablations:
        arms = []
        for arm in ab.arms:
            key = config_key(arm)
            recs = [done[(key, s)] for s in range(seeds) if (key, s) in done]
            used.update({(key, r["seed"]): r for r in recs})
            mean, std = _mean_std([r["top1"] for r in recs])
            arms.append({"label": arm.label, "key": key, "width_mult": configs[key]["width_mult"],
                         "top1_mean": mean, "top1_std": std, "runs": len(recs),
                         "madds": recs[0]["madds"], "params": recs[0]["params"],
                         "top1": [r["top1"] for r in recs]})
        by = {a["label"]: a for a in arms}
        gaps = [(by[w]["top1_mean"] - by[l]["top1_mean"], by[w]["top1_std"], by[l]["top1_std"])
                for w, l in ab.better]
        held = all(g > 0 for g, _, _ in gaps)
        clear = held and all(clearly_apart(g, sw, sl) for g, sw, sl in gaps)
        out["ablations"].append({"name": ab.name, "title": ab.title, "claim": ab.claim,
                                 "claim_source": ab.claim_source,
                                 "better": [list(p) for p in ab.better], "arms": arms,
                                 "held": held, "clear": clear})
    out["runs"] = len(used)
    out["train_minutes"] = sum(r["train_seconds"] for r in used.values()) / 60
    return out


def plot_ablations(summary: dict, path) -> None:
    """One panel per ablation: mean test top-1 with ±1 std error bars."""
    abls = summary["ablations"]
    fig = new_figure((3.2 * len(abls), 3.4))
    axes = fig.subplots(1, len(abls), squeeze=False)
    for ax, ab in zip(axes[0], abls):
        labels = [a["label"] for a in ab["arms"]]
        means = [100 * a["top1_mean"] for a in ab["arms"]]
        stds = [100 * (a["top1_std"] or 0.0) for a in ab["arms"]]
        ax.bar(labels, means, yerr=stds, capsize=4, color="tab:blue", alpha=0.8)
        low = min(m - s for m, s in zip(means, stds))
        high = max(m + s for m, s in zip(means, stds))
        pad = max(0.5, 0.15 * (high - low))
        ax.set_ylim(low - pad, high + pad)   # the differences are what matters, not the zero
        ax.set_title(ab["title"], fontsize=8)
        ax.set_ylabel("test top-1 (%)")
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(f"Fashion-MNIST, mean ± std over {count_text(summary['seeds'], 'seed')}", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def percent_text(mean: float, std: float | None) -> str:
    return f"{100 * mean:.2f}" + ("" if std is None else f" ± {100 * std:.2f}")


def count_text(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def verdict(ab: dict) -> str:
    """Plain sentences: did the paper's ordering hold here, and is each gap larger than the noise?"""
    by = {a["label"]: a for a in ab["arms"]}

    def pct(label):
        return f"{percent_text(by[label]['top1_mean'], by[label]['top1_std'])}%"

    def beyond_noise(w, l):
        return clearly_apart(by[w]["top1_mean"] - by[l]["top1_mean"], by[w]["top1_std"],
                             by[l]["top1_std"])

    pairs = [tuple(p) for p in ab["better"]]
    single = any(by[w]["top1_std"] is None for pair in pairs for w in pair)
    if ab["held"]:
        shown = "; ".join(f"{w} {pct(w)} vs {l} {pct(l)}" for w, l in pairs)
        if ab["clear"]:
            return f"yes, clearly ({shown}); every gap is larger than one standard deviation"
        if single:
            return f"yes in the means ({shown}), but one seed gives no spread to judge the gaps by"
        close = " and ".join(f"{w} vs {l}" for w, l in pairs if not beyond_noise(w, l))
        return f"only in the means ({shown}); {close} is within one standard deviation, so this is not a clear result"
    broken = [(w, l) for w, l in pairs if by[w]["top1_mean"] <= by[l]["top1_mean"]]
    kept = [(w, l) for w, l in pairs if (w, l) not in broken]
    text = "no, " + "; ".join(f"{w} did not beat {l} ({pct(w)} vs {pct(l)})" for w, l in broken) + ". "
    gaps = "the gap is" if len(broken) == 1 else "the gaps are"
    far = sum(beyond_noise(w, l) for w, l in broken)
    if single:
        text += "With one seed there is no spread to tell this from noise"
    elif far == len(broken):
        text += f"{gaps.capitalize()} larger than one standard deviation: on this data the order is reversed"
    elif far:
        text += "At least one of these gaps is larger than one standard deviation: on this data the order is partly reversed"
    else:
        text += (f"But {gaps} within one standard deviation, so this data neither confirms nor "
                 "clearly contradicts the paper")
    if kept:
        text += ". The rest held: " + "; ".join(f"{w} beat {l}" for w, l in kept)
    return text


def render_markdown(summary: dict, command: str, chart_name: str) -> str:
    s = summary["schedule"]
    train_desc = (count_text(s["limit_train"], "training image") if s["limit_train"]
                  else "all 60,000 training images")
    test_desc = count_text(s["limit_test"], "test image") if s["limit_test"] else "the 10,000 test images"
    lines = [
        "# Ablations on Fashion-MNIST",
        "",
        "The MobileNetV2/V3 papers' ablations retrained on Fashion-MNIST (28 px, grayscale) with "
        f"the `fashion-mnist` recipe: MobileNetV2 α={BASE['width_mult']} with total stride 8, "
        f"{count_text(s['epochs'], 'epoch')} over {train_desc}, batch {s['batch_size']}, "
        f"{count_text(summary['seeds'], 'seed')} per arm; accuracy is top-1 on {test_desc} after the "
        "last epoch (no checkpoint selection). Other families get the width that matches the V2 "
        f"model's multiply-adds. The {count_text(summary['runs'], 'run')} trained for "
        f"{summary['train_minutes']:.0f} min in all.",
        "",
        "Reproduce with:",
        "",
        "```",
        command,
        "```",
        "",
        f"Each run's weights are kept as `{summary['out']}/runs/<schedule>/<arm>-seed<k>/best.safetensors`; "
        "they name the base model and its options, so `mobilenets eval <file> --data fashion-mnist` "
        "re-scores one in any process.",
        "",
        f"![test top-1 per ablation]({chart_name})",
        "",
        "| ablation | arm | α | MAdds | params | test top-1 (%) | runs |",
        "|---|---|---|---|---|---|---|",
    ]
    for ab in summary["ablations"]:
        for a in ab["arms"]:
            lines.append(f"| {ab['name']} | {a['label']} | {a['width_mult']:g} | {a['madds'] / 1e6:.1f}M | "
                         f"{a['params'] / 1e6:.2f}M | {percent_text(a['top1_mean'], a['top1_std'])} | {a['runs']} |")
    lines += ["", "## Did the papers' orderings hold?", "",
              f"\"Clearly\" means every gap in the expected order is larger than one standard deviation of "
              f"the {summary['seeds']} seeds' results of each arm (`ablate.clearly_apart`); it is a rule of "
              "thumb, not a significance test.", ""]
    for ab in summary["ablations"]:
        source = ab.get("claim_source", "the paper")
        lines.append(f"- **{ab['title']}** — {source}: {ab['claim']}. Here: {verdict(ab)}.")
    lines += ["", "The papers trained on ImageNet for hundreds of epochs; a short schedule on "
              "28 px grayscale images can rank the variants differently, which is what this "
              "page measures.", ""]
    return "\n".join(lines)


def write_report(summary: dict, docs: str | Path, command: str) -> tuple[Path, Path]:
    """docs/ablations.md, its chart (.png) and every run's result (.json) beside it: the page
    quotes a committed file, and a reader can recompute each mean from the seeds' figures."""
    docs = Path(docs)
    chart = docs.with_suffix(".png")
    plot_ablations(summary, chart)
    atomic_write_text(docs.with_suffix(".json"), json.dumps({"command": command, **summary}, indent=1))
    atomic_write_text(docs, render_markdown(summary, command, chart.name))
    return docs, chart
