"""The paper's tables as runnable suites, with the paper's numbers to print beside ours.

Numbers from Wu et al., Bioengineering 2024, 11(7), 673, Tables 3-5 (TCIA data,
slice-level 8:2 split, 224 px, 50 epochs). A dash in the paper is ``None``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class Suite:
    name: str
    title: str
    rows: tuple[tuple[str, str], ...]  # (the paper's row label, hashbench method)
    bits: tuple[int, ...]
    metrics: tuple[str, ...]
    paper: dict[tuple[str, str, int], float | None]  # (row label, metric, bits) -> value; empty: not a paper's table
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # method -> options it runs with
    freeze_backbone: bool = False  # its deep methods train their heads on the backbone's cached features

    @property
    def methods(self) -> list[str]:
        return [method for _, method in self.rows]

    def with_baselines(self) -> "Suite":
        """The same table with the training-free floor as reference rows below the paper's (the paper has no numbers for them)."""
        extra = tuple(
            (f"{method.upper()} (training-free)", method) for method in TRAINING_FREE if method not in self.methods
        )
        return replace(self, rows=self.rows + extra)


TRAINING_FREE = ("lsh", "pcah", "itq", "sh")  # the floor `--with-baselines` adds


def _by_bits(metric: str, table: dict[str, tuple[float | None, ...]], bits: tuple[int, ...]) -> dict:
    return {(row, metric, b): value for row, values in table.items() for b, value in zip(bits, values)}


SUITES = {
    "paper-table3": Suite(
        "paper-table3",
        "Table 3: methods, MAP@10",
        (("HashNet", "hashnet"), ("DSH", "dsh"), ("DPSH", "dpsh"), ("DPN", "dpn"), ("DAFH", "dafh")),
        (16, 32, 48),
        ("map@10",),
        _by_bits(
            "map@10",
            {
                "HashNet": (0.550, 0.727, 0.736),
                "DSH": (0.578, 0.581, 0.596),
                "DPSH": (0.540, 0.717, 0.740),
                "DPN": (0.679, 0.670, 0.681),
                "DAFH": (0.711, 0.754, 0.762),
            },
            (16, 32, 48),
        ),
    ),
    "paper-table4": Suite(
        "paper-table4",
        "Table 4: backbones inside DAFH, MAP@10",
        (
            ("ResNet-50", "dafh-resnet50"),
            ("ResNet-50 + Attention", "dafh-resnet50-at"),
            ("ViT + ResNet-50 (feature fusion)", "dafh-vit-resnet50"),
            ("EfficientNet", "dafh"),
        ),
        (16, 32, 48),
        ("map@10",),
        _by_bits(
            "map@10",
            {
                "ResNet-50": (None, 0.658, None),
                "ResNet-50 + Attention": (0.584, 0.685, 0.705),
                "ViT + ResNet-50 (feature fusion)": (0.670, 0.685, 0.691),
                "EfficientNet": (0.711, 0.754, 0.762),
            },
            (16, 32, 48),
        ),
    ),
    "paper-table5": Suite(
        "paper-table5",
        "Table 5: ablation at 32 bits (AT = CBAM attention, LF = inter-layer fusion, Ptanh = learnable tanh)",
        (
            ("EfficientNet", "dafh-ab-base"),
            ("EfficientNet + Ptanh", "dafh-ab-ptanh"),
            ("EfficientNet + AT", "dafh-ab-at"),
            ("EfficientNet + LF", "dafh-ab-lf"),
            ("EfficientNet + Ptanh + AT", "dafh-ab-ptanh-at"),
            ("EfficientNet + Ptanh + LF", "dafh-ab-ptanh-lf"),
            ("EfficientNet + AT + LF", "dafh-ab-at-lf"),
            ("Proposed (all)", "dafh"),
        ),
        (32,),
        ("map@1", "map@10"),
        {
            **_by_bits(
                "map@1",
                {
                    "EfficientNet": (0.370,),
                    "EfficientNet + Ptanh": (0.405,),
                    "EfficientNet + AT": (0.718,),
                    "EfficientNet + LF": (0.716,),
                    "EfficientNet + Ptanh + AT": (0.653,),
                    "EfficientNet + Ptanh + LF": (0.704,),
                    "EfficientNet + AT + LF": (0.691,),
                    "Proposed (all)": (0.745,),
                },
                (32,),
            ),
            **_by_bits(
                "map@10",
                {
                    "EfficientNet": (0.498,),
                    "EfficientNet + Ptanh": (0.532,),
                    "EfficientNet + AT": (0.734,),
                    "EfficientNet + LF": (0.742,),
                    "EfficientNet + Ptanh + AT": (0.695,),
                    "EfficientNet + Ptanh + LF": (0.705,),
                    "EfficientNet + AT + LF": (0.728,),
                    "Proposed (all)": (0.754,),
                },
                (32,),
            ),
        },
    ),
}


FROZEN_FEATURES = {"features": "backbone"}
SUITES["foundation"] = Suite(
    "foundation",
    "Frozen foundation features: hashed without training, and heads trained on them",
    (
        ("Float cosine on frozen features, unhashed", "float-cosine"),
        ("PCA-RR on frozen features", "pcarr"),
        ("ITQ on frozen features", "itq"),
        ("LSH on frozen features", "lsh"),
        ("HashNet head on frozen features", "hashnet"),
        ("CSQ head on frozen features", "csq"),
    ),
    (16, 32, 48, 64),
    ("map@10", "map@all"),
    {},
    {method: FROZEN_FEATURES for method in ("float-cosine", "pcarr", "itq", "lsh")},
    freeze_backbone=True,
)


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        raise KeyError(f"unknown suite {name!r}; valid: {', '.join(SUITES)}")
    return SUITES[name]
