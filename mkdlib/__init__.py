"""mkdlib: Multiresolution Knowledge Distillation for Anomaly Detection (Salehi et al., CVPR 2021).

The method in one import: a frozen VGG-16 `Source`, a small bias-free `Cloner`, the `MKDLoss` (value +
direction terms) that trains it (`fit`), scores images (`score`) and is differentiated to localise
anomalies (`localize`); `get_dataset` reads every dataset of the paper; `paper_config` gives the paper's
settings (`MKDConfig`: what is trained; `Execution`: how it is computed).

    cfg = mkdlib.paper_config("mnist")
    train = mkdlib.get_dataset("mnist", split="train", normal_class=0)
    source, cloner, loss = mkdlib.build(cfg)
    mkdlib.fit(cloner, source, train, cfg, loss)
    scores = mkdlib.score(cloner, mkdlib.MKDLoss.from_config(cfg, cfg.score_layers), test, source=source)

A finished run applied to new images: `mkdlib.Detector.from_run(run_dir).predict(images, maps=True)`.
Runs with their cache (`mkdlib.runs`), the paper's tables (`mkdlib.paper`) and the applications (`mkd`,
predict, bench, demo) are built on it; nothing here imports them.
"""

__version__ = "0.1.0"

# name -> the module that defines it; imported on first use, so that `mkd --help` or `mkd runs` does not
# load torch before it needs it.
_FACE = {"Detector": "detector", "Execution": "config", "MKDConfig": "config", "paper_config": "config",
         "get_dataset": "datasets", "localize": "localization", "MKDLoss": "losses", "Cloner": "models",
         "Source": "models", "evaluate_checkpoints": "scoring", "score": "scoring", "build": "train", "fit": "train"}
__all__ = sorted(_FACE)


def __getattr__(name: str):
    if name in _FACE:
        import importlib

        return getattr(importlib.import_module(f"mkdlib.{_FACE[name]}"), name)
    raise AttributeError(f"module 'mkdlib' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_FACE])
