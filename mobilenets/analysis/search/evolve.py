"""Platform-aware architecture search as MobileNetV3's was (MnasNet's objective), sized for a
CPU: maximise ACC(m) × [LAT(m) / TAR]^w over V3's per-stage choices.

MnasNet and V3 trained a reinforcement-learning controller on thousands of sampled models; on
two cores that is out of reach, so the search is regularised evolution (Real et al., 2019):
a population of candidates, each cycle a tournament among a few of them picks a parent, one
mutation of one stage's choice makes a child, the child is scored and the oldest member
leaves. It needs no controller, works with few samples, and its ageing keeps one lucky
proxy score from ruling the population. Accuracy is a short training from scratch (the
proxy), scored on the held-out val split; latency comes from a table of pieces timed on the
target engine (`latency.piece_book_latency`), and every candidate's exported model is measured
as well, so the log shows the table's error beside each reward.

The result is written as V3 table rows (kernel, exp size, out, SE, NL, s), the format of
`tables.V3_SMALL_BLOCKS`, which `create_model("mobilenet_v3_small", blocks=rows)` builds and
`mobilenets train --model FILE.json` trains.
"""
from __future__ import annotations

import json
import random
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ...core.errors import MobileNetsError
from ...core.figures import new_figure, save_figure
from ...core.io import atomic_write_text
from ...core.machine import describe_machine
from ...models.mobilenet import create_model
from ...models.specs import make_divisible
from .engines import check_engine
from .finetune import long_finetune, open_search_data, top1
from .latency import measure_model, piece_book_latency

# The search space, stage by stage, as V3-Small's table (Table 2) lays its stages out:
# (output width, stride of the stage's first block, its number of blocks in the table).
V3_SMALL_STAGES = ((16, 2, 1), (24, 2, 2), (40, 2, 3), (48, 1, 2), (96, 2, 3))
CHOICES = {"kernel": (3, 5), "expansion": (1, 3, 4.5, 6), "se": (False, True), "act": ("RE", "HS"),
           "width": (0.5, 0.75, 1.0, 1.25), "depth": (1, 2, 3, 4)}
# V3-Small itself in these terms (its expansion per stage rounded to a choice): the first member.
V3_SMALL_GENOME = ({"kernel": 3, "expansion": 1, "se": True, "act": "RE", "width": 1.0, "depth": 1},
                   {"kernel": 3, "expansion": 4.5, "se": False, "act": "RE", "width": 1.0, "depth": 2},
                   {"kernel": 5, "expansion": 6, "se": True, "act": "HS", "width": 1.0, "depth": 3},
                   {"kernel": 5, "expansion": 3, "se": True, "act": "HS", "width": 1.0, "depth": 2},
                   {"kernel": 5, "expansion": 6, "se": True, "act": "HS", "width": 1.0, "depth": 3})
STEM = 16


@dataclass
class SearchSettings:
    data: str = "fashion-mnist"
    data_dir: str | None = None
    engine: str = "onnxruntime"
    threads: int = 1
    batch: int = 1
    target_latency_ms: float = 0.3
    latency_weight: float = -0.07      # MnasNet's w; the V3 paper used -0.15 for its small models
    population: int = 8
    sample: int = 3
    candidates: int = 24
    proxy_steps: int = 300
    proxy_lr: float = 0.1
    batch_size: int = 128
    val_fraction: int | float | None = None
    val_images: int | None = 2000
    seed: int = 0
    resolution: int = 28
    in_chans: int = 1
    small_input: bool = True


def rows_of(genome) -> list[list]:
    """V3 table rows (kernel, exp size, out, SE, NL, s) of a genome."""
    rows, in_ch = [], STEM
    for (base, stride, _depth), stage in zip(V3_SMALL_STAGES, genome):
        out = make_divisible(base * stage["width"])
        for d in range(stage["depth"]):
            exp = in_ch if stage["expansion"] == 1 else make_divisible(in_ch * stage["expansion"])
            rows.append([stage["kernel"], exp, out, stage["se"], stage["act"], stride if d == 0 else 1])
            in_ch = out
    return rows


def mutate(genome, rng: random.Random):
    """One stage's one choice changed to another value."""
    child = [dict(s) for s in genome]
    stage = rng.randrange(len(child))
    key = rng.choice(sorted(CHOICES))
    child[stage][key] = rng.choice([v for v in CHOICES[key] if v != child[stage][key]])
    return child


def random_genome(rng: random.Random):
    return [{k: rng.choice(v) for k, v in sorted(CHOICES.items())} for _ in V3_SMALL_STAGES]


def reward(acc: float, latency: float, target: float, w: float) -> float:
    return acc * (latency / target) ** w


def search(out: str | Path, settings: SearchSettings, resume: bool = False, progress=None, log=print) -> dict:
    """Run the search into `out` (log.jsonl, latency_book.json, arch.json, candidates.png);
    returns the summary written to `out`/report.json."""
    out = Path(out)
    s = settings
    if resume:
        try:
            s = SearchSettings(**json.loads((out / "settings.json").read_text()))
        except (OSError, ValueError, TypeError) as e:
            raise MobileNetsError(f"{out}: no search to resume ({type(e).__name__}); start without --resume") from None
    elif (out / "settings.json").exists():
        raise MobileNetsError(f"{out}: holds a search already; --resume it or choose another --out")
    check_engine(s.engine)
    if not s.target_latency_ms > 0 or s.population < 2 or s.candidates < s.population or not 1 <= s.sample <= s.population:
        raise MobileNetsError("search needs target > 0, population >= 2, candidates >= population and "
                              "1 <= sample <= population")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "settings.json", json.dumps(asdict(s), indent=1))
    torch.set_num_threads(s.threads)
    book_path = out / "latency_book.json"
    book = json.loads(book_path.read_text())["pieces"] if book_path.exists() else {}
    logged = [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines()] if (out / "log.jsonl").exists() else []
    probe = _build(V3_SMALL_GENOME, s)
    train, scoring, _val, _test, classes = open_search_data(s.data, probe, s.data_dir, s.val_fraction, s.seed,
                                                            s.val_images)
    rng = random.Random(s.seed)
    history: list[dict] = []
    population: list[dict] = []
    bar = progress(total=s.candidates, desc="search") if progress else None
    while len(history) < s.candidates:
        if len(history) == 0:
            genome = [dict(g) for g in V3_SMALL_GENOME]
        elif len(history) < s.population:
            genome = random_genome(rng)
        else:
            parent = max(rng.sample(population, s.sample), key=lambda c: c["reward"])
            genome = mutate(parent["genome"], rng)
        k = len(history)
        if k < len(logged):
            entry = logged[k]             # scored before a resume: the same genome, its result
        else:
            entry = _score(k, genome, s, book, train, scoring, len(classes))
            with open(out / "log.jsonl", "a") as f:
                f.write(json.dumps(entry) + "\n")
            atomic_write_text(book_path, json.dumps({"engine": s.engine, "threads": s.threads, "batch": s.batch,
                                                     "machine": describe_machine(s.threads) if not book_path.exists()
                                                     else json.loads(book_path.read_text())["machine"],
                                                     "pieces": book}))
            log(f"candidate {k}: table {entry['table_ms']:.3f} ms, measured {entry['measured_ms']:.3f} ms, "
                f"val top-1 {entry['val_top1']:.4f}, reward {entry['reward']:.4f}")
        history.append(entry)
        population.append(entry)
        if len(population) > s.population:
            population.pop(0)             # the oldest leaves (ageing)
        if bar:
            bar.update(1)
    if bar:
        bar.close()
    best = max(history, key=lambda c: c["reward"])
    arch = {"model": "mobilenet_v3_small",
            "model_kwargs": {"blocks": best["rows"], "small_input": s.small_input, "in_chans": s.in_chans,
                             "num_classes": len(classes), "resolution": s.resolution},
            "table_ms": best["table_ms"], "measured_ms": best["measured_ms"], "val_top1_proxy": best["val_top1"],
            "reward": best["reward"], "candidate": best["index"]}
    arch["train_command"] = ("mobilenets train --data fashion-mnist --model mobilenet_v3_small "
                             f"--width-mult 1.0{' --small-input' if s.small_input else ''} --in-chans {s.in_chans} "
                             f"--set model_options='{json.dumps({'blocks': best['rows']})}' --out runs/searched")
    atomic_write_text(out / "arch.json", json.dumps(arch, indent=1) + "\n")
    atomic_write_text(out / "arch.txt", format_rows(best["rows"]))
    plot_candidates(history, s, out / "candidates.png")
    report = {"best": arch, "candidates": len(history), "settings": asdict(s)}
    atomic_write_text(out / "report.json", json.dumps(report, indent=1) + "\n")
    return report


def load_arch(path, **overrides):
    """The model an `arch.json` from `search` describes (random weights), with `overrides`
    (e.g. num_classes) over its options."""
    try:
        arch = json.loads(Path(path).read_text())
        name, kwargs = arch["model"], dict(arch["model_kwargs"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise MobileNetsError(f"{path}: not an architecture file from `mobilenets search` ({type(e).__name__})") from None
    return create_model(name, **{**kwargs, **overrides})


def _build(genome, s: SearchSettings, num_classes: int = 10):
    return create_model("mobilenet_v3_small", blocks=rows_of(genome), num_classes=num_classes,
                        in_chans=s.in_chans, small_input=s.small_input, resolution=s.resolution)


def _score(k: int, genome, s: SearchSettings, book: dict, train, scoring, classes: int) -> dict:
    torch.manual_seed(s.seed * 7919 + k)
    model = _build(genome, s, classes)
    table_ms = piece_book_latency(model, s.engine, s.threads, s.batch, s.resolution, book)
    with tempfile.TemporaryDirectory(prefix="mobilenets-search-") as tmp:
        measured = measure_model(model, s.engine, s.threads, s.batch, s.resolution, Path(tmp))
    long_finetune(model, train, s.proxy_steps, s.batch_size, s.proxy_lr, s.seed, epoch=k, weight_decay=4e-5)
    acc = top1(model, scoring, classes)
    return {"index": k, "genome": genome, "rows": rows_of(genome), "table_ms": table_ms, "measured_ms": measured,
            "val_top1": acc, "reward": reward(acc, table_ms, s.target_latency_ms, s.latency_weight)}


def format_rows(rows) -> str:
    """Rows as `tables.py` writes V3's: one tuple a line."""
    lines = ["# (kernel, exp size, out, SE, NL, s), as tables.V3_SMALL_BLOCKS", "SEARCHED_BLOCKS = ["]
    lines += [f"    ({k}, {e}, {c}, {se}, \"{nl}\", {st})," for k, e, c, se, nl, st in rows]
    return "\n".join(lines + ["]"]) + "\n"


def plot_candidates(history: list[dict], s: SearchSettings, path: Path) -> None:
    fig = new_figure((6, 4))
    ax = fig.subplots()
    sc = ax.scatter([c["measured_ms"] for c in history], [c["val_top1"] for c in history],
                    c=range(len(history)), cmap="viridis", s=18)
    best = max(history, key=lambda c: c["reward"])
    ax.plot([best["measured_ms"]], [best["val_top1"]], "r*", ms=14, label="best reward")
    ax.plot([history[0]["measured_ms"]], [history[0]["val_top1"]], "ks", label="V3-Small's stages")
    ax.axvline(s.target_latency_ms, color="grey", ls=":", label="target")
    fig.colorbar(sc, ax=ax, label="candidate")
    ax.set_xlabel(f"measured latency on {s.engine} (ms)"), ax.set_ylabel("val top-1 after the proxy training")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
