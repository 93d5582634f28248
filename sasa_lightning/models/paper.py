"""The paper's parameter and FLOP columns (Tables 1-7), each row with the model that reproduces it.

Classifiers are measured on 224x224 images, the detectors of Table 2 on 640x640."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class PaperRow:
    table: int
    row: str
    model: str
    overrides: dict[str, Any] = field(default_factory=dict)
    paper_params_m: float | None = None
    paper_gflops: float | None = None
    image_size: int = 224


def _table1() -> list[PaperRow]:
    numbers = {  # depth: (baseline, conv stem + attention, full attention) as (GFLOPs, params M)
        26: ((4.7, 13.7), (4.5, 10.3), (4.7, 10.3)),
        38: ((6.5, 19.6), (5.7, 14.1), (6.0, 14.1)),
        50: ((8.2, 25.6), (7.0, 18.0), (7.2, 18.0)),
    }
    rows = []
    for depth, (baseline, conv_stem, full) in numbers.items():
        rows.append(PaperRow(1, f"ResNet-{depth} baseline", f"resnet{depth}", {}, baseline[1], baseline[0]))
        rows.append(PaperRow(1, f"ResNet-{depth} conv-stem + attention", f"sasa_resnet{depth}", {}, conv_stem[1], conv_stem[0]))
        rows.append(PaperRow(1, f"ResNet-{depth} full attention", f"sasa_resnet{depth}", {"stem": "attention"}, full[1], full[0]))
    return rows


def _table2() -> list[PaperRow]:
    rows = []
    for fpn_heads, backbone, gflops, params in [
        ("conv", "baseline", 182, 33.4),
        ("conv", "conv-stem + attention", 173, 25.9),
        ("conv", "full attention", 173, 25.9),
        ("attention", "conv-stem + attention", 111, 22.0),
        ("attention", "full attention", 110, 22.0),
    ]:
        model = "retinanet_resnet50" if backbone == "baseline" else "retinanet_sasa_resnet50"
        overrides = {"stem": "attention"} if backbone == "full attention" else {}
        if fpn_heads == "attention":
            overrides.update(fpn="attention", heads="attention")
        rows.append(PaperRow(2, f"{fpn_heads} FPN + heads, {backbone}", model, overrides, params, gflops, 640))
    return rows


def _table3() -> list[PaperRow]:
    rows = []
    for attention_stages, gflops, params in [
        ((1, 2, 3, 4), 7.0, 18.0),
        ((2, 3, 4), 7.3, 18.1),
        ((3, 4), 7.5, 18.5),
        ((4,), 8.0, 20.8),
        ((), 8.2, 25.6),
        ((1,), 7.9, 25.5),
        ((1, 2), 7.8, 25.0),
        ((1, 2, 3), 7.2, 22.7),
    ]:
        conv = [s for s in (1, 2, 3, 4) if s not in attention_stages]
        label = f"conv {','.join(map(str, conv)) or '-'} / attention {','.join(map(str, attention_stages)) or '-'}"
        rows.append(PaperRow(3, label, "sasa_resnet50", {"attention_stages": list(attention_stages)}, params, gflops))
    return rows


def _table4() -> list[PaperRow]:
    gflops = {3: 6.6, 5: 6.7, 7: 7.0, 9: 7.3, 11: 7.7}
    return [PaperRow(4, f"k = {k}", "sasa_resnet50", {"kernel_size": k}, 18.0, g) for k, g in gflops.items()]


def _table5() -> list[PaperRow]:
    gflops = {"none": 6.9, "absolute": 6.9, "relative": 7.0}
    return [PaperRow(5, f"{mode} positions", "sasa_resnet50", {"positional": mode}, 18.0, g) for mode, g in gflops.items()]


def _table6() -> list[PaperRow]:
    return [
        PaperRow(6, "q.r logits only", "sasa_resnet50", {"logits": "qr"}, 16.7, 6.1),
        PaperRow(6, "q.k + q.r logits", "sasa_resnet50", {"logits": "qk+qr"}, 18.0, 7.0),
    ]


def _table7() -> list[PaperRow]:
    gflops = {"plain": 7.1, "conv": 7.4, "spatially_aware": 7.2}  # the paper gives no params here
    names = {"plain": "stand-alone attention", "conv": "spatial convolution for values", "spatially_aware": "spatially-aware values"}
    return [
        PaperRow(7, f"stem: {names[v]}", "sasa_resnet50", {"stem": "attention", "stem_values": v}, None, g)
        for v, g in gflops.items()
    ]


PAPER_TABLES: dict[int, list[PaperRow]] = {
    1: _table1(),
    2: _table2(),
    3: _table3(),
    4: _table4(),
    5: _table5(),
    6: _table6(),
    7: _table7(),
}
