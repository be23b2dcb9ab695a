"""Cut a trained MobileNet down to a smaller channel plan, keeping trained weights: NetAdapt's
choice of filters, those with the largest L2 norm.

Every tensor dimension that carries channels belongs to one *width position*: the output width
of a shortcut group ("g3"), a block's expansion ("e5"), its squeeze-excite ("s5"), the last 1×1
conv ("last") or the head layer ("head"). A position's filters are ranked by the summed L2 norms
of the conv or linear weights that produce it (in a shortcut group, every block's projection and
the layer that starts the group); the kept ones, in their original order, are selected in every
tensor that reads or writes that position: convolutions, batch norm, squeeze-excite, layer
scale, attention projections and the classifier.
"""
from __future__ import annotations

import torch
from torch import nn

from ..core.errors import MobileNetsError
from .layers import ConvBNAct, InvertedResidual, MultiQueryAttention
from .mobilenet import create_model
from .plan import check_plan, has_expansion, plan_of, shortcut_groups


def width_positions(arch) -> dict:
    """Per block its (input, expansion, squeeze-excite, output) positions, and the stem's,
    last conv's and head's: {"stem": pos, "blocks": [(in, exp, se, out), ...], "last", "head"}."""
    group_of = {}
    for g, members in enumerate(shortcut_groups(arch)):
        for m in members:
            group_of[m] = f"g{g}"
    blocks, current = [], group_of["stem"]
    for i, spec in enumerate(arch.blocks):
        out = group_of[i]
        exp = f"e{i}" if has_expansion(spec) else current
        blocks.append((current, exp, f"s{i}", out))
        current = out
    return {"stem": group_of["stem"], "blocks": blocks, "final": current,
            "last": "last" if arch.last_conv_ch else None, "head": "head" if arch.head_ch else None}


def _conv_unit(prefix: str, unit: ConvBNAct, out, inp) -> dict:
    """Positions of a conv-BN unit's tensors: (dim 0, dim 1) for the weight, (dim 0,) for BN."""
    depthwise = unit.conv.groups > 1
    found = {f"{prefix}.conv.weight": (out, None if depthwise else inp),
             f"{prefix}.conv.bias": (out,)}
    for name in ("weight", "bias", "running_mean", "running_var"):
        found[f"{prefix}.bn.{name}"] = (out,)
    return found


def tensor_positions(model: nn.Module) -> tuple[dict, dict]:
    """(positions of every state-dict tensor, by dimension; which weights produce each position)."""
    arch = model.arch
    where = width_positions(arch)
    pos = _conv_unit("stem", model.stem, where["stem"], None)
    producers = {where["stem"]: ["stem.conv.weight"]}
    for i, (block, (inp, exp, se, out)) in enumerate(zip(model.blocks, where["blocks"])):
        p = f"blocks.{i}"
        if isinstance(block, InvertedResidual):
            if isinstance(block.start, ConvBNAct):
                pos.update(_conv_unit(f"{p}.start", block.start, inp, None))
            if isinstance(block.expand, ConvBNAct):
                pos.update(_conv_unit(f"{p}.expand", block.expand, exp, inp))
                producers.setdefault(exp, []).append(f"{p}.expand.conv.weight")
            if isinstance(block.depthwise, ConvBNAct):
                pos.update(_conv_unit(f"{p}.depthwise", block.depthwise, exp, None))
            if not isinstance(block.se, nn.Identity):
                pos.update({f"{p}.se.fc1.weight": (se, exp), f"{p}.se.fc1.bias": (se,),
                            f"{p}.se.fc2.weight": (exp, se), f"{p}.se.fc2.bias": (exp,)})
                producers.setdefault(se, []).append(f"{p}.se.fc1.weight")
            pos.update(_conv_unit(f"{p}.project", block.project, out, exp))
            pos[f"{p}.layer_scale.gamma"] = (out,)
            producers.setdefault(out, []).append(f"{p}.project.conv.weight")
        elif isinstance(block, MultiQueryAttention):
            for name in ("weight", "bias", "running_mean", "running_var"):
                pos[f"{p}.norm.{name}"] = (inp,)
            for side in ("key", "value"):
                if isinstance(getattr(block, f"{side}_down"), ConvBNAct):
                    pos.update(_conv_unit(f"{p}.{side}_down", getattr(block, f"{side}_down"), inp, None))
                pos[f"{p}.{side}.weight"] = (None, inp)
            pos[f"{p}.query.weight"] = (None, inp)
            pos[f"{p}.output.weight"] = (out, None)
            pos[f"{p}.layer_scale.gamma"] = (out,)
            producers.setdefault(out, []).append(f"{p}.output.weight")
        else:
            pos.update(_conv_unit(p, block, out, inp))
            producers.setdefault(out, []).append(f"{p}.conv.weight")
    feed = where["final"]
    if isinstance(getattr(model, "last_conv", None), ConvBNAct):
        pos.update(_conv_unit("last_conv", model.last_conv, "last", feed))
        producers["last"] = ["last_conv.conv.weight"]
        feed = "last"
    head = getattr(model, "head", None)
    if isinstance(head, nn.Sequential):
        pos.update({"head.0.weight": ("head", feed), "head.0.bias": ("head",)})
        for name in ("weight", "bias", "running_mean", "running_var"):
            pos[f"head.1.{name}"] = ("head",)
        producers["head"] = ["head.0.weight"]
        feed = "head"
    if isinstance(getattr(model, "classifier", None), nn.Linear):
        pos["classifier.weight"] = (None, feed)
    return pos, producers


def _position_widths(arch, plan: dict) -> dict:
    where = width_positions(arch)
    widths = {where["stem"]: plan["stem"], "last": plan["last_conv"], "head": plan["head"]}
    for i, (_inp, exp, se, out) in enumerate(where["blocks"]):
        widths[out] = plan["out"][i]
        if plan["expand"][i] is not None:
            widths[exp] = plan["expand"][i]
        if plan["se"][i]:
            widths[se] = plan["se"][i]
    return widths


def kept_channels(model: nn.Module, plan: dict) -> dict[str, torch.Tensor]:
    """For each width position that `plan` narrows, the indices it keeps (ascending): the filters
    whose producing weights have the largest summed L2 norm."""
    state = model.state_dict()
    _, producers = tensor_positions(model)
    old, new = _position_widths(model.arch, plan_of(model.arch)), _position_widths(model.arch, plan)
    kept = {}
    for p, width in new.items():
        if width is None or width == old[p]:
            continue
        if width > old[p]:
            raise MobileNetsError(f"cannot cut position {p} from {old[p]} to {width} channels: a cut "
                                  "only removes channels")
        norms = sum(state[name].flatten(1).norm(dim=1) for name in producers[p])
        kept[p] = norms.topk(width).indices.sort().values
    return kept


def cut_to_plan(model: nn.Module, plan: dict) -> nn.Module:
    """A new model of `plan` (narrower than `model`'s own) holding `model`'s weights for the
    channels with the largest L2 norm; the model's other options are kept."""
    if not hasattr(model, "arch") or getattr(model, "features_only", False):
        raise MobileNetsError("cut_to_plan needs a MobileNet classifier built by create_model")
    plan = check_plan(model.arch, plan)
    kept = kept_channels(model, plan)
    kwargs = {**getattr(model, "model_kwargs", {}), "channel_plan": plan}
    cut = create_model(model.model_name, **kwargs)
    positions, _ = tensor_positions(model)
    state = {}
    for name, tensor in model.state_dict().items():
        for dim, p in enumerate(positions.get(name, ())):
            if p in kept and dim < tensor.ndim:
                tensor = tensor.index_select(dim, kept[p])
        state[name] = tensor
    cut.load_state_dict(state)
    for attr in ("classes", "pretrained_cfg"):
        if hasattr(model, attr):
            setattr(cut, attr, getattr(model, attr))
    return cut.train(model.training)
