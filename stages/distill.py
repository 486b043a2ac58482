"""distill: Hinton knowledge distillation of a smaller student, and the same student trained without KD.

Both students share seed, recipe and data, so `kd_gain_points` is the measured effect of distillation alone.
"""
from __future__ import annotations

import sys

from edgeopt.candidates import input_shape
from edgeopt.models import build_model, config_for, load_checkpoint, save_checkpoint
from edgeopt.params import Params
from edgeopt.paths import Paths
from edgeopt.stage import stage, stage_main
from edgeopt.stats import model_stats
from edgeopt.training import Splits, evaluate, fit, fit_options, set_seed


def _train_student(params: Params, paths: Paths, splits: Splits, cfg: dict, teacher, name: str) -> dict:
    d = params.distill
    set_seed(params.seed, params.train.threads)  # same init and batch order for the KD and no-KD students
    student = build_model(cfg)
    result = fit(student, splits, d, seed=params.seed, **fit_options(params.train),
                 patience=params.train.early_stopping_patience, teacher=teacher, temperature=d.temperature,
                 alpha=d.alpha, live_dir=paths.live("distill" if teacher is not None else "distill_nokd"),
                 desc=name, precision=d.precision)
    val, test = evaluate(student, splits, "val"), evaluate(student, splits, "test")
    info = {"stage": "distill", "kd": teacher is not None, "val_accuracy": val["accuracy"],
            "test_accuracy": test["accuracy"], "data_hash": splits.meta["content_hash"]}
    path = save_checkpoint(paths.checkpoint(name), student, cfg, info)
    return {"val_accuracy": val["accuracy"], "test_accuracy": test["accuracy"], "best_epoch": result.best_epoch,
            "epochs_run": len(result.history), **result.summary(), **model_stats(student, input_shape(cfg), path)}


@stage("distill")
def run(params: Params, paths: Paths) -> dict:
    d = params.distill
    splits = Splits.load(paths.prepared)
    teacher_path = paths.checkpoint(d.teacher)
    teacher, tcfg, _ = load_checkpoint(teacher_path)
    cfg = config_for(d.student_arch, d.student_width, tcfg["small_input"], splits.meta)
    teacher_test = evaluate(teacher, splits, "test")["accuracy"]
    for name in ("distill", "distill_nokd"):  # dvc.yaml plots: present even when a student is not trained
        (paths.live(name) / "plots" / "metrics").mkdir(parents=True, exist_ok=True)
    if not d.enabled:
        # DVC outs must exist: ship the teacher under the student names, and say so.
        for name in ("student", "student_nokd"):
            save_checkpoint(paths.checkpoint(name), teacher, tcfg, {"stage": "distill", "skipped": True})
        return {"enabled": False, "note": "distill.enabled is false: student checkpoints are copies of the teacher",
                "teacher": d.teacher, "teacher_test_accuracy": teacher_test}
    kd = _train_student(params, paths, splits, cfg, teacher, "student")
    result = {"enabled": True, "teacher": d.teacher, "teacher_test_accuracy": teacher_test,
              "teacher_params": model_stats(teacher, input_shape(cfg))["params"],
              "student_arch": d.student_arch, "student_width": d.student_width,
              "temperature": d.temperature, "alpha": d.alpha,
              "test_accuracy": kd["test_accuracy"], "val_accuracy": kd["val_accuracy"], "student": kd}
    if d.also_without_kd:
        plain = _train_student(params, paths, splits, cfg, None, "student_nokd")
        result["student_nokd"] = plain
        result["kd_gain_points"] = kd["test_accuracy"] - plain["test_accuracy"]
    else:
        save_checkpoint(paths.checkpoint("student_nokd"), build_model(cfg), cfg, {"stage": "distill", "skipped": True})
    print(f"distill: student {d.student_arch}x{d.student_width} test {kd['test_accuracy']:.2f}% with KD"
          + (f", {result['student_nokd']['test_accuracy']:.2f}% without (gain {result['kd_gain_points']:+.2f} pt)"
             if "student_nokd" in result else "") + f"; teacher {teacher_test:.2f}%")
    return result


if __name__ == "__main__":  # what dvc.yaml runs: python -m stages.<name>
    sys.exit(stage_main(run))
