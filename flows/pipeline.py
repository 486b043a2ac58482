"""Kept for imports of the sweep: the pipeline definition lives in edgeopt.pipeline (read from dvc.yaml)."""
from edgeopt.params import project_params  # noqa: F401
from edgeopt.pipeline import (PipelineError, StageSpec, closure, dvc_file, execution_order,  # noqa: F401
                              load_pipeline, upstream)
