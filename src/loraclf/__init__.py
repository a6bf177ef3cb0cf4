"""loraclf: fine-tune pretrained encoders for text classification with LoRA under a hard budget of
trainable parameters.

The public API is small:
    cfg = loraclf.load_config("agnews-quick", overrides=["train.epochs=1"])
    result = loraclf.train_run(cfg, ["train.csv"], "runs/x", test_data=["test.csv"])
    loraclf.count(cfg, ["World", "Sports", "Business", "Sci/Tech"])   # exact budget, no weights loaded
    loraclf.predict_file("runs/x", "unlabelled.pkl", "submission.csv")
"""
__version__ = "0.1.0"

from .config import Config
from .config import load as load_config
from .errors import UserError


def train_run(cfg, data, out, **kw):
    """Train, evaluate and predict into the run directory `out`; returns the final metrics."""
    from . import pipeline
    return pipeline.train_run(cfg, list(data), out, **kw)


def count(cfg, label_names):
    """Exact trainable/total parameter counts of a config, from a meta-device build."""
    from .budget import count_config
    return count_config(cfg, list(label_names))


def predict_file(run_dir, source, out, **kw):
    """Write ID,Label predictions of a finished run for every row of `source`."""
    from .predict import write_predictions
    return write_predictions(run_dir, source, out, **kw)


def evaluate_run(run_dir, data, **kw):
    """Score a finished run on labelled data."""
    from . import pipeline
    return pipeline.evaluate_run(run_dir, list(data), **kw)


__all__ = ["Config", "UserError", "load_config", "train_run", "count", "predict_file", "evaluate_run", "__version__"]
