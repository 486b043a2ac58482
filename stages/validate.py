"""validate: a Great Expectations gate on the prepared data, before any training.

Two tables: one row per image (split, label, shape, dtype, pixel range, content hash, whether a val/test image
duplicates a train image) and one row per class of the train split (count, share of the largest class). A failed
expectation stops the pipeline with a report naming the expectation and how many rows failed.
"""
from __future__ import annotations

import hashlib
import logging
import sys

import numpy as np

from edgeopt.arrays import SPLITS, load_meta, open_split
from edgeopt.errors import ValidationFailed
from edgeopt.io import atomic_write_text
from edgeopt.params import Params
from edgeopt.paths import Paths
from edgeopt.stage import stage, stage_main


def image_table(paths: Paths):
    import pandas as pd

    meta = load_meta(paths.prepared)
    rows = []
    train_hashes: set[str] = set()
    for split in SPLITS:
        images, labels = open_split(paths.prepared, split)
        for i in range(len(labels)):
            img = np.asarray(images[i])
            h = hashlib.sha1(img.tobytes()).hexdigest()
            if split == "train":
                train_hashes.add(h)
            rows.append({"split": split, "index": i, "label": int(labels[i]), "height": img.shape[0],
                         "width": img.shape[1], "channels": img.shape[2] if img.ndim == 3 else 0,
                         "dtype": str(img.dtype), "pixel_min": int(img.min()), "pixel_max": int(img.max()),
                         "sha1": h})
    df = pd.DataFrame(rows)
    df["duplicates_train"] = (df["split"] != "train") & df["sha1"].isin(train_hashes)
    return df, meta


def class_table(df, meta):
    import pandas as pd

    counts = df[df["split"] == "train"].groupby("label").size().reindex(range(meta["num_classes"]), fill_value=0)
    top = max(int(counts.max()), 1)
    return pd.DataFrame({"class": [meta["classes"][i] for i in counts.index], "count": counts.values,
                         "share_of_largest": counts.values / top})


def _suites(params: Params, meta: dict):
    import great_expectations as gx

    v = params.validate_
    E = gx.expectations
    size, ch = meta["image_size"], meta["channels"]
    per_image = [
        E.ExpectColumnValuesToBeInSet(column="label", value_set=list(range(meta["num_classes"]))),
        E.ExpectColumnValuesToBeBetween(column="height", min_value=size, max_value=size),
        E.ExpectColumnValuesToBeBetween(column="width", min_value=size, max_value=size),
        E.ExpectColumnValuesToBeInSet(column="channels", value_set=[ch]),
        E.ExpectColumnValuesToBeInSet(column="dtype", value_set=["uint8"]),
        E.ExpectColumnValuesToBeBetween(column="pixel_min", min_value=v.pixel_min, max_value=v.pixel_max),
        E.ExpectColumnValuesToBeBetween(column="pixel_max", min_value=v.pixel_min, max_value=v.pixel_max),
        E.ExpectColumnValuesToBeInSet(column="duplicates_train", value_set=[False]),
    ]
    per_class = [
        E.ExpectTableRowCountToEqual(value=meta["num_classes"]),
        E.ExpectColumnValuesToBeBetween(column="count", min_value=v.min_images_per_class),
        E.ExpectColumnValuesToBeBetween(column="share_of_largest", min_value=1.0 / v.max_class_imbalance, max_value=1.0),
    ]
    return {"per_image": per_image, "per_class": per_class}


def run_expectations(tables: dict, suites: dict) -> list[dict]:
    import great_expectations as gx

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    source = context.data_sources.add_pandas("prepared")
    results = []
    for name, df in tables.items():
        batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("all").get_batch(
            batch_parameters={"dataframe": df})
        suite = context.suites.add(gx.ExpectationSuite(name=f"edgeopt_{name}", expectations=suites[name]))
        outcome = batch.validate(suite, result_format="SUMMARY")
        for r in outcome.results:
            cfg = r.expectation_config
            res = r.result or {}
            results.append({
                "table": name, "expectation": cfg.type, "column": cfg.kwargs.get("column"),
                "kwargs": {k: v for k, v in cfg.kwargs.items() if k not in ("batch_id", "column")},
                "success": bool(r.success), "rows": int(res.get("element_count", len(df))),
                "failed_rows": int(res.get("unexpected_count", 0) or 0) if not r.success else 0,
                "observed": res.get("observed_value"),
                "examples": [str(x) for x in (res.get("partial_unexpected_list") or [])[:5]],
            })
            if not r.success and "unexpected_count" not in res:  # table-level expectation: the table failed
                results[-1]["failed_rows"] = int(len(df))
    return results


def _summary(results: list[dict], ok: bool) -> str:
    lines = ["# Data validation (Great Expectations)", "",
             f"**{'PASSED' if ok else 'FAILED'}**: {sum(r['success'] for r in results)}/{len(results)} expectations met.",
             "", "| table | expectation | column | result | failed rows | observed / examples |", "|---|---|---|---|---|---|"]
    for r in results:
        seen = r["examples"] or ([r["observed"]] if r["observed"] is not None else [])
        lines.append(f"| {r['table']} | {r['expectation']} | {r['column'] or ''} | {'pass' if r['success'] else '**FAIL**'} "
                     f"| {r['failed_rows']}/{r['rows']} | {', '.join(map(str, seen))[:80]} |")
    return "\n".join(lines) + "\n"


@stage("validate")
def run(params: Params, paths: Paths) -> dict:
    df, meta = image_table(paths)
    tables = {"per_image": df, "per_class": class_table(df, meta)}
    results = run_expectations(tables, _suites(params, meta))
    ok = all(r["success"] for r in results)
    report = {"success": ok, "expectations": len(results), "failed": sum(not r["success"] for r in results),
              "images": int(len(df)), "content_hash": meta["content_hash"], "results": results}
    atomic_write_text(paths.report("validation.md"), _summary(results, ok))
    if not ok:
        failed = [f"{r['expectation']}({r['column'] or r['table']}) failed on {r['failed_rows']} of {r['rows']} rows"
                  + (f", e.g. {', '.join(r['examples'][:3])}" if r["examples"] else "")
                  for r in results if not r["success"]]
        raise ValidationFailed("data validation failed; training is blocked:\n  - " + "\n  - ".join(failed)
                               + f"\nSee {paths.report('validation.md')} and {paths.metrics('validate')}.",
                               metrics=report)  # the stage decorator records it as metrics/validate.json
    print(f"validate: all {len(results)} expectations met on {len(df)} images")
    return report


if __name__ == "__main__":  # what dvc.yaml runs: python -m stages.<name>
    sys.exit(stage_main(run))
