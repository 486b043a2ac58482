"""train: the baseline model (model.*, train.*) -> models/baseline.pt, metrics/train.json, DVCLive curves."""
from __future__ import annotations

import sys

from edgeopt.candidates import input_shape
from edgeopt.models import build_model, config_for, save_checkpoint
from edgeopt.params import Params
from edgeopt.paths import Paths
from edgeopt.stage import stage, stage_main
from edgeopt.stats import model_stats
from edgeopt.training import Splits, evaluate, fit, fit_options, set_seed


@stage("train")
def run(params: Params, paths: Paths) -> dict:
    set_seed(params.seed, params.train.threads)
    splits = Splits.load(paths.prepared)
    cfg = config_for(params.model.arch, params.model.width, params.model.small_input, splits.meta)
    model = build_model(cfg)
    result = fit(model, splits, params.train, seed=params.seed, **fit_options(params.train),
                 patience=params.train.early_stopping_patience, live_dir=paths.live("train"), desc="train",
                 precision=params.train.precision)
    val = evaluate(model, splits, "val")
    test = evaluate(model, splits, "test")
    info = {"stage": "train", "val_accuracy": val["accuracy"], "test_accuracy": test["accuracy"],
            "data_hash": splits.meta["content_hash"], "classes": splits.meta["classes"]}
    path = save_checkpoint(paths.checkpoint("baseline"), model, cfg, info)
    print(f"train: {cfg['arch']} test accuracy {test['accuracy']:.2f}% (val {val['accuracy']:.2f}%, "
          f"best epoch {result.best_epoch}/{len(result.history)}, {result.device['device']}, "
          f"{'converged' if result.convergence['converged'] else 'NOT converged'}: best val "
          f"{result.convergence['val_gain_last_20pct']} pt higher after the last 20 % of epochs)")
    return {"arch": cfg["arch"], "test_accuracy": test["accuracy"], "val_accuracy": val["accuracy"],
            "test_loss": test["loss"], "best_epoch": result.best_epoch, "epochs_run": len(result.history),
            "stopped_early": result.stopped_early, "train_images_per_s": round(result.images_per_s, 1),
            **result.summary(),
            **model_stats(model, input_shape(cfg), path), "history": result.history}


if __name__ == "__main__":  # what dvc.yaml runs: python -m stages.<name>
    sys.exit(stage_main(run))
